//! DMARC with alignment, against `_dmarc` records in the in-process DNS server: SPF-aligned
//! pass, DKIM-aligned pass, relaxed alignment of a subdomain, unaligned SPF and DKIM passes that
//! fail DMARC, and what p=reject / p=quarantine / p=none do under `enforce` and `record`.

mod auth_support;

use auth_support::{env, message, publish, rsa, signed, signer, CLIENT, HOST, STRANGER};
use mta_core::auth::{AuthPolicy, DmarcPolicy, Outcome, Policy, Signer, Verifier};
use mta_core::dns::testing::TestZone;

struct Keys {
    reject: Signer,
    quarantine: Signer,
    none: Signer,
    other: Signer,
}

fn keys() -> Keys {
    Keys {
        reject: signer(&[rsa("dmarc-reject.test", "sel")]),
        quarantine: signer(&[rsa("dmarc-quarantine.test", "sel")]),
        none: signer(&[rsa("dmarc-none.test", "sel")]),
        // signs everything with d=other.test (a third-party signature, not aligned)
        other: signer(&[rsa("other.test", "sel")]).with_fixed_domain("other.test").unwrap(),
    }
}

fn zones(k: &Keys) -> Vec<TestZone> {
    let mut z = TestZone::new("test");
    for d in ["dmarc-reject.test", "dmarc-quarantine.test", "dmarc-none.test", "other.test"] {
        z = z.txt(d, &["v=spf1 ip4:192.0.2.1 -all"]);
    }
    z = z
        .txt("_dmarc.dmarc-reject.test", &["v=DMARC1; p=reject"])
        .txt("_dmarc.dmarc-quarantine.test", &["v=DMARC1; p=quarantine"])
        .txt("_dmarc.dmarc-none.test", &["v=DMARC1; p=none; rua=mailto:r@dmarc-none.test"])
        .a("news.dmarc-reject.test", "192.0.2.7".parse().unwrap());
    for s in [&k.reject, &k.quarantine, &k.none, &k.other] {
        z = publish(z, s);
    }
    vec![z]
}

fn policy(dmarc: Policy) -> AuthPolicy {
    AuthPolicy { spf: Policy::Record, dkim: Policy::Record, dmarc }
}

async fn run(
    v: &Verifier,
    ip: std::net::IpAddr,
    mail_from: &str,
    m: &[u8],
) -> (Outcome, DmarcPolicy, Option<(u16, (u8, u16, u16))>, String) {
    let verdict = v.verify(ip, "mail.other.test", mail_from, m).await;
    let (o, p, _) = verdict.summary.dmarc.clone().expect("dmarc reported");
    (o, p, verdict.reject.map(|(c, e, _)| (c, e)), verdict.header)
}

#[tokio::test]
async fn alignment_pass_and_fail_with_p_reject() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Enforce), HOST);
    let plain = message("alice@dmarc-reject.test", "hi", "body\r\n");

    // SPF passes for the From: domain itself: aligned
    let (o, p, rej, h) = run(&v, CLIENT, "bounce@dmarc-reject.test", &plain).await;
    assert_eq!((o, p, rej), (Outcome::Pass, DmarcPolicy::Reject, None), "{h}");
    assert!(h.contains("dmarc=pass header.from=dmarc-reject.test policy.dmarc=reject"), "{h}");

    // SPF passes for another domain, no DKIM: not aligned → fail → 550 5.7.1
    let (o, _, rej, h) = run(&v, CLIENT, "bounce@other.test", &plain).await;
    assert_eq!((o, rej), (Outcome::Fail, Some((550, (5, 7, 1)))), "{h}");
    assert!(h.contains("dmarc=fail"), "{h}");

    // DKIM d= the From: domain: aligned even though SPF is not
    let (o, _, rej, h) = run(&v, CLIENT, "bounce@other.test", &signed(&k.reject, &plain)).await;
    assert_eq!((o, rej), (Outcome::Pass, None), "{h}");

    // a valid DKIM signature of another domain is not aligned
    let (o, _, rej, h) = run(&v, STRANGER, "bounce@other.test", &signed(&k.other, &plain)).await;
    assert!(h.contains("dkim=pass header.d=other.test"), "{h}");
    assert_eq!((o, rej), (Outcome::Fail, Some((550, (5, 7, 1)))), "{h}");

    // relaxed alignment: From: a subdomain, SPF for the organisational domain
    let sub = message("alice@news.dmarc-reject.test", "hi", "body\r\n");
    let (o, _, rej, h) = run(&v, CLIENT, "bounce@dmarc-reject.test", &sub).await;
    assert_eq!((o, rej), (Outcome::Pass, None), "{h}");
}

#[tokio::test]
async fn quarantine_and_none_never_reject() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Enforce), HOST);
    let q = message("alice@dmarc-quarantine.test", "hi", "body\r\n");
    let (o, p, rej, h) = run(&v, CLIENT, "bounce@other.test", &q).await;
    assert_eq!((o, p, rej), (Outcome::Fail, DmarcPolicy::Quarantine, None), "{h}");
    assert!(h.contains("policy.dmarc=quarantine"), "{h}");
    let (o, _, _, _) = run(&v, CLIENT, "bounce@other.test", &signed(&k.quarantine, &q)).await;
    assert_eq!(o, Outcome::Pass);

    let n = message("alice@dmarc-none.test", "hi", "body\r\n");
    let (o, p, rej, h) = run(&v, CLIENT, "bounce@other.test", &n).await;
    assert_eq!((o, p, rej), (Outcome::Fail, DmarcPolicy::None, None), "{h}");
    let (o, _, _, _) = run(&v, CLIENT, "bounce@dmarc-none.test", &n).await;
    assert_eq!(o, Outcome::Pass);

    // no DMARC record at all
    let x = message("alice@nodmarc.test", "hi", "body\r\n");
    let (o, p, rej, _) = run(&v, CLIENT, "bounce@other.test", &x).await;
    assert_eq!((o, p, rej), (Outcome::None, DmarcPolicy::None, None));
}

#[tokio::test]
async fn record_only_reports() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(Policy::Record), HOST);
    let plain = message("alice@dmarc-reject.test", "hi", "body\r\n");
    let (o, p, rej, h) = run(&v, CLIENT, "bounce@other.test", &plain).await;
    assert_eq!((o, p, rej), (Outcome::Fail, DmarcPolicy::Reject, None), "{h}");
}

#[tokio::test]
async fn dmarc_works_with_spf_and_dkim_off() {
    // DMARC needs SPF and DKIM results: they are evaluated but not reported
    let k = keys();
    let e = env(zones(&k)).await;
    let p = AuthPolicy { spf: Policy::Off, dkim: Policy::Off, dmarc: Policy::Enforce };
    let v = Verifier::new(e.auth.clone(), p, HOST);
    let plain = message("alice@dmarc-reject.test", "hi", "body\r\n");
    let verdict = v.verify(CLIENT, "mail.other.test", "bounce@other.test", &signed(&k.reject, &plain)).await;
    assert_eq!(verdict.summary.dmarc.as_ref().map(|d| d.0), Some(Outcome::Pass));
    assert!(!verdict.header.contains("spf="), "{}", verdict.header);
    assert!(!verdict.header.contains("dkim="), "{}", verdict.header);
    let verdict = v.verify(CLIENT, "mail.other.test", "bounce@other.test", &plain).await;
    assert_eq!(verdict.reject.map(|r| r.0), Some(550));
}
