//! DKIM verification (RFC 6376) of signatures we make, against keys published in the
//! in-process DNS server: pass (RSA and Ed25519), body altered, header altered, a header added
//! on top of an oversigned one, key missing, key revoked; and `dkim=none` without a signature.

mod auth_support;

use auth_support::{ed, env, publish, rsa, signed, signer, txt, CLIENT, HOST};
use mta_core::auth::{AuthPolicy, Outcome, Policy, Signer, Verifier};
use mta_core::dns::testing::TestZone;

fn policy() -> AuthPolicy {
    AuthPolicy { spf: Policy::Off, dkim: Policy::Record, dmarc: Policy::Off }
}

struct Keys {
    rsa: Signer,
    ed: Signer,
    both: Signer,
    missing: Signer,
    revoked: Signer,
}

fn keys() -> Keys {
    Keys {
        rsa: signer(&[rsa("dkim.test", "sel-rsa")]),
        ed: signer(&[ed("dkim.test", "sel-ed")]),
        both: signer(&[rsa("dkim.test", "sel-rsa"), ed("dkim.test", "sel-ed")]),
        missing: signer(&[rsa("dkim.test", "missing")]),
        revoked: signer(&[rsa("dkim.test", "revoked")]),
    }
}

fn zones(k: &Keys) -> Vec<TestZone> {
    let z = TestZone::new("test");
    let z = publish(z, &k.both);
    let z = txt(z, "revoked._domainkey.dkim.test", "v=DKIM1; k=rsa; p=");
    vec![z]
}

fn msg() -> Vec<u8> {
    auth_support::message("alice@dkim.test", "Quarterly report", "Hello,\r\nthe numbers are in.\r\n")
}

async fn dkim(v: &Verifier, m: &[u8]) -> (Vec<(String, Outcome)>, String) {
    let verdict = v.verify(CLIENT, "mail.dkim.test", "alice@dkim.test", m).await;
    assert!(verdict.reject.is_none(), "DKIM never rejects by itself");
    (verdict.summary.dkim, verdict.header)
}

fn replace(m: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(m.to_vec()).unwrap();
    assert!(s.contains(from));
    s.replacen(from, to, 1).into_bytes()
}

#[tokio::test]
async fn rsa_and_ed25519_signatures_pass() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(), HOST);
    for s in [&k.rsa, &k.ed] {
        let (d, header) = dkim(&v, &signed(s, &msg())).await;
        assert_eq!(d, vec![("dkim.test".to_string(), Outcome::Pass)], "{header}");
        assert!(header.contains("dkim=pass header.d=dkim.test header.s=sel-"), "{header}");
    }
    // dual-signed: two results
    let (d, _) = dkim(&v, &signed(&k.both, &msg())).await;
    assert_eq!(d, vec![("dkim.test".into(), Outcome::Pass), ("dkim.test".into(), Outcome::Pass)]);
}

#[tokio::test]
async fn altered_body_fails() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(), HOST);
    for s in [&k.rsa, &k.ed] {
        let m = replace(&signed(s, &msg()), "numbers are in", "numbers are out");
        let (d, header) = dkim(&v, &m).await;
        // mail-auth reports a body hash mismatch as "neutral (body hash did not verify)": the
        // signature is unusable (RFC 6376 §6.1.3 PERMFAIL), which DMARC counts as no pass
        assert_eq!(d, vec![("dkim.test".to_string(), Outcome::Neutral)], "{header}");
        assert!(header.contains("dkim=neutral (body hash did not verify)"), "{header}");
    }
    // relaxed body canonicalisation: trailing whitespace changes do not break it
    let m = replace(&signed(&k.rsa, &msg()), "Hello,\r\n", "Hello,   \r\n");
    assert_eq!(dkim(&v, &m).await.0[0].1, Outcome::Pass);
}

#[tokio::test]
async fn altered_header_fails() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(), HOST);
    let m = replace(&signed(&k.rsa, &msg()), "Subject: Quarterly report", "Subject: [list] Quarterly report");
    assert_eq!(dkim(&v, &m).await.0[0].1, Outcome::Fail);
    // relaxed header canonicalisation: case of the name and folding whitespace do not matter
    let m = replace(&signed(&k.rsa, &msg()), "Subject: Quarterly report", "SUBJECT:   Quarterly    report");
    assert_eq!(dkim(&v, &m).await.0[0].1, Outcome::Pass);
}

#[tokio::test]
async fn oversigned_from_blocks_an_added_from() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(), HOST);
    let m = signed(&k.rsa, &msg());
    let pos = String::from_utf8_lossy(&m).find("From: Sender").unwrap();
    let mut forged = m[..pos].to_vec();
    forged.extend_from_slice(b"From: Mallory <ceo@dkim.test>\r\n");
    forged.extend_from_slice(&m[pos..]);
    assert_eq!(dkim(&v, &forged).await.0[0].1, Outcome::Fail);
    // a header that is not signed may be added
    let mut ok = b"X-Mailing-List: yes\r\n".to_vec();
    ok.extend_from_slice(&m);
    assert_eq!(dkim(&v, &ok).await.0[0].1, Outcome::Pass);
}

#[tokio::test]
async fn missing_and_revoked_keys() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(), HOST);
    let (d, header) = dkim(&v, &signed(&k.missing, &msg())).await;
    assert_eq!(d, vec![("dkim.test".to_string(), Outcome::PermError)], "{header}");
    assert!(header.contains("dkim=permerror"), "{header}");
    let (d, header) = dkim(&v, &signed(&k.revoked, &msg())).await;
    assert!(matches!(d[0].1, Outcome::PermError | Outcome::Fail), "{d:?} {header}");
    assert!(!header.contains("dkim=pass"), "{header}");
}

#[tokio::test]
async fn unsigned_message_reports_none() {
    let k = keys();
    let e = env(zones(&k)).await;
    let v = Verifier::new(e.auth.clone(), policy(), HOST);
    let (d, header) = dkim(&v, &msg()).await;
    assert!(d.is_empty());
    assert_eq!(
        header,
        format!("Authentication-Results: {HOST};\r\n\tdkim=none;\r\n\tarc=none smtp.remote-ip=192.0.2.1\r\n")
    );
}
