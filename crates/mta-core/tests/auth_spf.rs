//! SPF (RFC 7208) against real TXT records served by the in-process DNS server, through our
//! pool's stub: every result, include/redirect chains, the 10-lookup limit, and the enforce
//! mapping (RFC 7372 codes).

mod auth_support;

use std::time::{Duration, Instant};

use auth_support::{env, env_with, CLIENT, HOST, STRANGER};
use mta_core::auth::{AuthPolicy, Outcome, Policy, Verifier};
use mta_core::dns::testing::TestZone;

fn zones() -> Vec<TestZone> {
    let mut z = TestZone::new("test")
        .txt("helo.test", &["v=spf1 ip4:192.0.2.1 -all"])
        .txt("spf-pass.test", &["v=spf1 ip4:192.0.2.1 -all"])
        .txt("spf-softfail.test", &["v=spf1 ip4:198.51.100.1 ~all"])
        .txt("spf-neutral.test", &["v=spf1 ?all"])
        .a("spf-none.test", "192.0.2.50".parse().unwrap())
        .txt("spf-none.test", &["some other text record"])
        // include chain, 2 deep
        .txt("spf-include.test", &["v=spf1 include:_a.spf-include.test -all"])
        .txt("_a.spf-include.test", &["v=spf1 include:_b.spf-include.test -all"])
        .txt("_b.spf-include.test", &["v=spf1 ip4:192.0.2.1 -all"])
        // redirect
        .txt("spf-redirect.test", &["v=spf1 redirect=spf-pass.test"])
        // permanent errors
        .txt("spf-perm-include.test", &["v=spf1 include:spf-none.test -all"])
        .txt("spf-perm-redirect.test", &["v=spf1 redirect=spf-none.test"])
        .txt("spf-perm-syntax.test", &["v=spf1 ip4 -all"])
        // temporary error: the included name is in a zone nobody serves (REFUSED → SERVFAIL)
        .txt("spf-temp.test", &["v=spf1 include:spf.unserved.example -all"]);
    // the lookup limit: spf-eleven.test → l1 → ... → l11 (11 includes: permerror);
    // spf-ten.test → l2 → ... → l11 (10 includes: allowed)
    z = z.txt("spf-eleven.test", &["v=spf1 include:l1.chain.test -all"]);
    z = z.txt("spf-ten.test", &["v=spf1 include:l2.chain.test -all"]);
    for i in 1..11 {
        z = z.txt(&format!("l{i}.chain.test"), &[&format!("v=spf1 include:l{}.chain.test -all", i + 1)]);
    }
    z = z.txt("l11.chain.test", &["v=spf1 ip4:192.0.2.1 -all"]);
    vec![z]
}

fn policy(spf: Policy) -> AuthPolicy {
    AuthPolicy { spf, dkim: Policy::Off, dmarc: Policy::Off }
}

const MSG: &[u8] = b"From: a@example.test\r\nSubject: x\r\n\r\nhi\r\n";

async fn spf(v: &Verifier, ip: std::net::IpAddr, from: &str) -> Outcome {
    let verdict = v.verify(ip, "helo.test", from, MSG).await;
    verdict.summary.spf_mail_from.expect("spf reported")
}

#[tokio::test]
async fn every_spf_result() {
    let e = env(zones()).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Record), HOST);
    let cases = [
        (CLIENT, "u@spf-pass.test", Outcome::Pass),
        (STRANGER, "u@spf-pass.test", Outcome::Fail),
        (CLIENT, "u@spf-softfail.test", Outcome::SoftFail),
        (CLIENT, "u@spf-neutral.test", Outcome::Neutral),
        (CLIENT, "u@spf-none.test", Outcome::None),
        (CLIENT, "u@nonexistent.test", Outcome::None),
        (CLIENT, "u@spf-include.test", Outcome::Pass),
        (STRANGER, "u@spf-include.test", Outcome::Fail),
        (CLIENT, "u@spf-redirect.test", Outcome::Pass),
        (STRANGER, "u@spf-redirect.test", Outcome::Fail),
        (CLIENT, "u@spf-perm-include.test", Outcome::PermError),
        (CLIENT, "u@spf-perm-redirect.test", Outcome::PermError),
        (CLIENT, "u@spf-perm-syntax.test", Outcome::PermError),
        (CLIENT, "u@spf-ten.test", Outcome::Pass),
        (CLIENT, "u@spf-eleven.test", Outcome::PermError),
        (CLIENT, "u@spf-temp.test", Outcome::TempError),
        (CLIENT, "u@mail.unserved.example", Outcome::TempError),
    ];
    for (ip, from, want) in cases {
        assert_eq!(spf(&v, ip, from).await, want, "{from} from {ip}");
    }
}

#[tokio::test]
async fn helo_identity_and_null_sender() {
    let e = env(zones()).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Record), HOST);
    let verdict = v.verify(CLIENT, "helo.test", "", MSG).await;
    assert_eq!(verdict.summary.spf_helo, Some(Outcome::Pass));
    // the null sender's MAIL FROM identity is postmaster@<helo>
    assert_eq!(verdict.summary.spf_mail_from, Some(Outcome::Pass));
    assert!(verdict.header.contains("smtp.mailfrom=<>"), "{}", verdict.header);
    assert!(verdict.header.contains("smtp.helo=helo.test"), "{}", verdict.header);
    let verdict = v.verify(STRANGER, "helo.test", "", MSG).await;
    assert_eq!(verdict.summary.spf_helo, Some(Outcome::Fail));
    assert_eq!(verdict.summary.spf_mail_from, Some(Outcome::Fail));
    // an address literal as HELO: no HELO identity to check
    let verdict = v.verify(CLIENT, "[192.0.2.1]", "u@spf-pass.test", MSG).await;
    assert_eq!(verdict.summary.spf_helo, Some(Outcome::None));
    assert_eq!(verdict.summary.spf_mail_from, Some(Outcome::Pass));
}

#[tokio::test]
async fn enforce_maps_to_rfc7372_codes() {
    let e = env(zones()).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Enforce), HOST);
    let code = |r: Option<(u16, (u8, u16, u16), String)>| r.map(|(c, e, _)| (c, e));
    let cases = [
        (CLIENT, "u@spf-pass.test", None),
        (STRANGER, "u@spf-pass.test", Some((550, (5, 7, 23)))),
        (CLIENT, "u@spf-softfail.test", None),
        (CLIENT, "u@spf-neutral.test", None),
        (CLIENT, "u@spf-none.test", None),
        (CLIENT, "u@spf-eleven.test", Some((550, (5, 7, 24)))),
        (CLIENT, "u@spf-perm-syntax.test", Some((550, (5, 7, 24)))),
        (CLIENT, "u@spf-temp.test", Some((451, (4, 7, 24)))),
    ];
    for (ip, from, want) in cases {
        let verdict = v.verify(ip, "helo.test", from, MSG).await;
        assert_eq!(code(verdict.reject.clone()), want, "{from} from {ip}: {:?}", verdict.reject);
    }
    // record: the same failures only go into the header
    let v = Verifier::new(e.auth.clone(), policy(Policy::Record), HOST);
    let verdict = v.verify(STRANGER, "helo.test", "u@spf-pass.test", MSG).await;
    assert!(verdict.reject.is_none());
    assert!(verdict.header.contains("spf=fail"), "{}", verdict.header);
}

#[tokio::test]
async fn off_checks_nothing() {
    let e = env(zones()).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Off), HOST);
    let verdict = v.verify(STRANGER, "helo.test", "u@spf-pass.test", MSG).await;
    assert!(verdict.header.is_empty());
    assert!(verdict.reject.is_none());
    assert_eq!(verdict.summary, Default::default());
}

#[tokio::test]
async fn upstream_servfail_is_temperror_never_permanent() {
    let e = env_with(zones(), true).await;
    e.proxy.as_ref().unwrap().set_servfail_ratio(1.0);
    let v = Verifier::new(e.auth.clone(), policy(Policy::Enforce), HOST);
    let verdict = v.verify(CLIENT, "helo.test", "u@spf-pass.test", MSG).await;
    assert_eq!(verdict.summary.spf_mail_from, Some(Outcome::TempError));
    let (code, enhanced, _) = verdict.reject.expect("temporary reject");
    assert_eq!((code, enhanced), (451, (4, 7, 24)));
}

#[tokio::test]
async fn deadline_bounds_the_session() {
    let e = env_with(zones(), true).await;
    e.proxy.as_ref().unwrap().set_delay(Duration::from_secs(5));
    let v = Verifier::new(e.auth.clone(), policy(Policy::Enforce), HOST).with_deadline(Duration::from_millis(300));
    let t0 = Instant::now();
    let verdict = v.verify(CLIENT, "helo.test", "u@spf-pass.test", MSG).await;
    assert!(t0.elapsed() < Duration::from_millis(1500), "took {:?}", t0.elapsed());
    assert!(verdict.summary.timed_out);
    assert_eq!(verdict.summary.spf_mail_from, Some(Outcome::TempError));
    assert!(verdict.header.contains("spf=temperror"), "{}", verdict.header);
    assert_eq!(verdict.reject.map(|r| r.0), Some(451));
}

#[tokio::test]
async fn repeat_senders_hit_our_cache() {
    let e = env_with(zones(), true).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Record), HOST);
    let proxy = e.proxy.as_ref().unwrap();
    for _ in 0..5 {
        assert_eq!(spf(&v, CLIENT, "u@spf-include.test").await, Outcome::Pass);
    }
    for name in ["spf-include.test", "_a.spf-include.test", "_b.spf-include.test"] {
        assert_eq!(proxy.received_for(name), 1, "{name}: one upstream query, then the pool's cache");
    }
}

#[tokio::test]
async fn verify_future_is_send() {
    let e = env(zones()).await;
    let v = Verifier::new(
        e.auth.clone(),
        AuthPolicy { spf: Policy::Record, dkim: Policy::Record, dmarc: Policy::Record },
        HOST,
    );
    let h = tokio::spawn(async move { v.verify(CLIENT, "helo.test", "u@spf-pass.test", MSG).await });
    assert_eq!(h.await.unwrap().summary.spf_mail_from, Some(Outcome::Pass));
}
