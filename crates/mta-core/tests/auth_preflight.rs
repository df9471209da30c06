//! Sender pre-flight against records in the in-process DNS server: SPF authorises our source
//! addresses? the published DKIM key is ours? — per signing domain, with `should_hold`.

mod auth_support;

use std::net::IpAddr;
use std::sync::Arc;

use auth_support::{ed, env, key, publish, rsa, signer, txt};
use mta_core::auth::{KeyAlgorithm, Preflight, Signer};
use mta_core::dns::testing::TestZone;

const SOURCE: &str = "203.0.113.5";

fn ours() -> Signer {
    signer(&[
        rsa("good.test", "s1"),
        ed("good.test", "s2"),
        rsa("badspf.test", "s1"),
        rsa("wrongkey.test", "s1"),
        rsa("nokey.test", "s1"),
        rsa("revoked.test", "s1"),
        ed("wrongalg.test", "s1"),
    ])
}

fn zones(s: &Signer) -> Vec<TestZone> {
    let other = signer(&[key("wrongkey.test", "s1", KeyAlgorithm::RsaSha256, "rsa2048-b.pem")]);
    let mut z = TestZone::new("test")
        .txt("good.test", &["v=spf1 ip4:203.0.113.0/24 -all"])
        .txt("badspf.test", &["v=spf1 ip4:198.51.100.1 -all"])
        .txt("wrongkey.test", &["v=spf1 include:good.test -all"])
        .txt("nokey.test", &["v=spf1 ip4:203.0.113.99 ~all"])
        .txt("revoked.test", &["v=spf1 ip4:203.0.113.5 -all"])
        .txt("wrongalg.test", &["v=spf1 ip4:203.0.113.5 -all"]);
    // publish ours for good.test and badspf.test (RSA as SPKI and, for s1 of good.test, both)
    for (name, value) in s.dns_records() {
        if name.ends_with(".good.test") || name.ends_with(".badspf.test") {
            z = txt(z, &name, &value);
        }
    }
    z = publish(z, &other);
    z = txt(z, "s1._domainkey.revoked.test", "v=DKIM1; k=rsa; p=");
    z = txt(z, "s1._domainkey.wrongalg.test", &s.dns_records()[0].1);
    vec![z]
}

#[tokio::test]
async fn statuses_per_domain() {
    let s = Arc::new(ours());
    let e = env(zones(&s)).await;
    let source: IpAddr = SOURCE.parse().unwrap();
    let p = Preflight::new(e.auth.clone(), s.clone(), vec![source], "mta.good.test");

    // before the first check: unknown, never held
    let before = p.statuses();
    assert_eq!(before.len(), 6);
    assert!(before.iter().all(|x| x.last_checked.is_none() && x.spf_ok.is_none() && x.dkim_ok.is_none()));
    assert!(!p.should_hold("wrongkey.test"));

    let st = p.check_all().await;
    let get = |d: &str| st.iter().find(|x| x.domain == d).unwrap().clone();
    let row = |d: &str| {
        let x = get(d);
        (x.spf_ok, x.dkim_ok)
    };
    assert_eq!(row("good.test"), (Some(true), Some(true)), "{:?}", get("good.test"));
    assert_eq!(row("badspf.test"), (Some(false), Some(true)), "{:?}", get("badspf.test"));
    assert_eq!(row("wrongkey.test"), (Some(true), Some(false)), "{:?}", get("wrongkey.test"));
    assert_eq!(row("nokey.test"), (Some(false), Some(false)), "softfail is not authorised: {:?}", get("nokey.test"));
    assert_eq!(row("revoked.test"), (Some(true), Some(false)), "{:?}", get("revoked.test"));
    assert_eq!(row("wrongalg.test"), (Some(true), Some(false)), "{:?}", get("wrongalg.test"));
    assert!(get("wrongkey.test").detail.contains("published key differs from ours"), "{:?}", get("wrongkey.test"));
    assert!(get("nokey.test").detail.contains("no key published"), "{:?}", get("nokey.test"));
    assert!(get("revoked.test").detail.contains("revoked"), "{:?}", get("revoked.test"));
    assert!(get("badspf.test").detail.contains("203.0.113.5: fail"), "{:?}", get("badspf.test"));
    let checked = get("good.test").last_checked.unwrap();
    assert!(checked.len() >= 20 && checked.ends_with('Z') && checked.contains('T'), "RFC 3339: {checked}");
    // sorted by domain
    let names: Vec<_> = st.iter().map(|x| x.domain.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    // hold: by the signing domain of the From: domain
    assert!(p.should_hold("wrongkey.test"));
    assert!(p.should_hold("news.wrongkey.test"));
    assert!(!p.should_hold("good.test"));
    assert!(!p.should_hold("badspf.test"), "SPF alone does not hold");
    assert!(!p.should_hold("unsigned.test"));
    assert!(p.should_hold_message(&auth_support::message("a@wrongkey.test", "hi", "b\r\n")));
    assert!(!p.should_hold_message(&auth_support::message("a@good.test", "hi", "b\r\n")));
    assert!(!p.should_hold_message(b"Subject: no from\r\n\r\nb\r\n"));

    // JSON for GET /api/v1/senders
    let json = serde_json::to_value(get("good.test")).unwrap();
    for k in ["domain", "spf_ok", "dkim_ok", "last_checked", "detail"] {
        assert!(json.get(k).is_some(), "{k} in {json}");
    }
}

#[tokio::test]
async fn no_source_address_leaves_spf_unknown() {
    let s = Arc::new(ours());
    let e = env(zones(&s)).await;
    let p = Preflight::new(e.auth.clone(), s, vec![], "mta.good.test");
    let st = p.check_domain("good.test").await;
    assert_eq!((st.spf_ok, st.dkim_ok), (None, Some(true)));
    assert!(st.detail.contains("no source address"), "{}", st.detail);
}

#[tokio::test]
async fn temporary_failure_keeps_the_last_answer() {
    let s = Arc::new(ours());
    let e = auth_support::env_with(zones(&s), true).await;
    let p = Preflight::new(e.auth.clone(), s, vec![SOURCE.parse().unwrap()], "mta.good.test");
    let first = p.check_domain("wrongkey.test").await;
    assert_eq!(first.dkim_ok, Some(false));
    // every upstream query fails from now on (names already cached stay answered by the pool)
    e.proxy.as_ref().unwrap().set_servfail_ratio(1.0);
    let st = p.check_domain("nokey.test").await;
    assert_eq!((st.spf_ok, st.dkim_ok), (None, None), "{st:?}");
    assert!(st.detail.contains("temporary"), "{}", st.detail);
    assert!(!p.should_hold("nokey.test"));
    // the earlier mismatch is still known
    assert!(p.should_hold("wrongkey.test"));
}
