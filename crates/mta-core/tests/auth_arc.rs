//! ARC (RFC 8617): a mailing list verifies a DKIM-signed message, rewrites its Subject (which
//! breaks DKIM) and seals it with mail-auth's `ArcSealer`; our verifier reports arc=pass. Edit
//! the body after the seal and the chain is broken: arc=fail.

mod auth_support;

use auth_support::{env, message, publish, rsa, signed, signer, CLIENT, HOST};
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::{AuthenticatedMessage, AuthenticationResults};
use mta_core::auth::{AuthPolicy, Outcome, Policy, Verifier};
use mta_core::dns::testing::TestZone;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

fn sealer_key() -> RsaKey<Sha256> {
    let pem = std::fs::read(auth_support::fixture("rsa2048-b.pem")).unwrap();
    RsaKey::from_key_der(PrivateKeyDer::from_pem_slice(&pem).unwrap()).unwrap()
}

fn replace(m: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(m.to_vec()).unwrap();
    assert!(s.contains(from), "{from:?} not in message");
    s.replacen(from, to, 1).into_bytes()
}

#[tokio::test]
async fn valid_chain_passes_and_a_broken_one_fails() {
    let origin = signer(&[rsa("dkim.test", "sel")]);
    // the list's sealing key, published like a DKIM key
    let list_key =
        signer(&[auth_support::key("arc.test", "arc", mta_core::auth::KeyAlgorithm::RsaSha256, "rsa2048-b.pem")]);
    let zone = publish(publish(TestZone::new("test"), &origin), &list_key);
    let e = env(vec![zone]).await;

    // 1. the list receives a signed message and verifies it
    let original = signed(&origin, &message("alice@dkim.test", "Report", "The numbers.\r\n"));
    let am = AuthenticatedMessage::parse(&original).unwrap();
    let dkim = e.auth.verify_dkim(&am).await;
    let arc = e.auth.verify_arc(&am).await;
    assert_eq!(dkim.len(), 1);
    let results = AuthenticationResults::new("lists.arc.test").with_dkim_results(&dkim, am.from());

    // 2. it rewrites the subject and seals what it sends
    let listed = replace(&original, "Subject: Report", "Subject: [team] Report");
    let am_listed = AuthenticatedMessage::parse(&listed).unwrap();
    let set = ArcSealer::from_key(sealer_key())
        .domain("arc.test")
        .selector("arc")
        .headers(["From", "To", "Subject", "Date", "Message-ID", "DKIM-Signature"])
        .seal(&am_listed, &results, &arc)
        .expect("seal");
    let mut sealed = set.to_header().into_bytes();
    sealed.extend_from_slice(&listed);
    assert!(String::from_utf8_lossy(&sealed).starts_with("ARC-Seal: i=1; a=rsa-sha256"));

    // 3. we receive it: DKIM broken by the list, the ARC chain intact
    let policy = AuthPolicy { spf: Policy::Off, dkim: Policy::Record, dmarc: Policy::Off };
    let v = Verifier::new(e.auth.clone(), policy, HOST);
    let verdict = v.verify(CLIENT, "lists.arc.test", "list-bounces@arc.test", &sealed).await;
    assert_eq!(verdict.summary.arc, Some(Outcome::Pass), "{}", verdict.header);
    assert_eq!(verdict.summary.dkim, vec![("dkim.test".to_string(), Outcome::Fail)], "{}", verdict.header);
    assert!(verdict.header.contains("arc=pass smtp.remote-ip=192.0.2.1"), "{}", verdict.header);

    // 4. someone edits the body after the seal: the chain is broken
    let broken = replace(&sealed, "The numbers.", "The other numbers.");
    let verdict = v.verify(CLIENT, "lists.arc.test", "list-bounces@arc.test", &broken).await;
    assert_eq!(verdict.summary.arc, Some(Outcome::Fail), "{}", verdict.header);
    assert!(verdict.header.contains("arc=fail"), "{}", verdict.header);

    // 5. an ARC set with a missing header (the seal removed) is a broken chain too
    let s = String::from_utf8(sealed.clone()).unwrap();
    let seal_end = s.find("\r\nARC-Message-Signature:").unwrap() + 2;
    let verdict = v.verify(CLIENT, "lists.arc.test", "list-bounces@arc.test", &s.as_bytes()[seal_end..]).await;
    assert_eq!(verdict.summary.arc, Some(Outcome::Fail), "{}", verdict.header);
}
