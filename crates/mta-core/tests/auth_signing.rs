//! The DKIM signer: key loading and its errors (what `check-config` shows), choice of key by the
//! From: domain, the signature's tags (relaxed/relaxed, oversigned From/To/Subject).

mod auth_support;

use std::sync::Arc;

use auth_support::{ed, fixture, key, message, rsa, signer};
use bytes::Bytes;
use mta_core::auth::{AuthError, KeyAlgorithm, KeyConfig, Signer};

fn tag<'a>(sig: &'a str, name: &str) -> &'a str {
    let flat: &'a str = Box::leak(sig.replace("\r\n\t", "").replace(' ', "").into_boxed_str());
    flat.split(';').find_map(|t| t.trim().strip_prefix(&format!("{name}="))).unwrap_or("")
}

#[test]
fn key_choice_by_from_domain() {
    let s = signer(&[rsa("example.test", "a"), ed("sub.example.test", "b"), rsa("other.test", "c")]);
    assert_eq!(s.signing_domain("example.test"), Some("example.test"));
    assert_eq!(s.signing_domain("EXAMPLE.Test."), Some("example.test"));
    assert_eq!(s.signing_domain("news.example.test"), Some("example.test"));
    assert_eq!(s.signing_domain("sub.example.test"), Some("sub.example.test"));
    assert_eq!(s.signing_domain("x.sub.example.test"), Some("sub.example.test"));
    assert_eq!(s.signing_domain("notexample.test"), None);
    assert_eq!(s.signing_domain("test"), None);

    let sig = s.sign(&message("a@x.sub.example.test", "hi", "b\r\n")).unwrap().unwrap();
    assert_eq!(tag(&sig, "d"), "sub.example.test");
    assert_eq!(tag(&sig, "s"), "b");
    assert_eq!(tag(&sig, "a"), "ed25519-sha256");
    let sig = s.sign(&message("a@news.example.test", "hi", "b\r\n")).unwrap().unwrap();
    assert_eq!((tag(&sig, "d"), tag(&sig, "a")), ("example.test", "rsa-sha256"));
    // no key for the From: domain, or no From: at all: not signed
    assert_eq!(s.sign(&message("a@elsewhere.test", "hi", "b\r\n")).unwrap(), None);
    assert_eq!(s.sign(b"Subject: no from\r\n\r\nbody\r\n").unwrap(), None);
}

#[test]
fn signature_tags_and_oversigning() {
    let s = signer(&[rsa("example.test", "sel")]);
    let sig = s.sign(&message("a@example.test", "hi", "b\r\n")).unwrap().unwrap();
    assert!(sig.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=sel; d=example.test; c=relaxed/relaxed;"), "{sig}");
    assert!(sig.ends_with(";\r\n") && sig.matches("\r\n").all(|_| true));
    assert!(sig.trim_end().split("\r\n").skip(1).all(|l| l.starts_with('\t')), "folded: {sig}");
    let h: Vec<String> = tag(&sig, "h").split(':').map(|x| x.to_ascii_lowercase()).collect();
    for (name, n) in [
        ("from", 2),
        ("to", 2),
        ("subject", 2),
        ("date", 1),
        ("message-id", 1),
        ("mime-version", 1),
        ("content-type", 1),
        ("reply-to", 1),
        ("cc", 1),
    ] {
        assert_eq!(h.iter().filter(|x| *x == name).count(), n, "{name} in h={h:?}");
    }
    assert!(!tag(&sig, "bh").is_empty() && !tag(&sig, "b").is_empty());
    assert!(!tag(&sig, "t").is_empty());
}

#[test]
fn configured_headers_and_fixed_domain() {
    let mut k = rsa("example.test", "sel");
    k.headers = vec!["Subject".into(), "Subject".into()];
    let s = Signer::load_keys(&[k]).unwrap();
    let sig = s.sign(&message("a@example.test", "hi", "b\r\n")).unwrap().unwrap();
    let mut h: Vec<String> = tag(&sig, "h").split(':').map(|x| x.to_ascii_lowercase()).collect();
    h.sort();
    assert_eq!(h, ["from", "subject", "subject"], "From is always signed");

    let s = signer(&[rsa("example.test", "a"), ed("esp.test", "e"), rsa("esp.test", "r")])
        .with_fixed_domain("esp.test")
        .unwrap();
    // From: example.test: its key and both of the fixed domain's
    let sig = s.sign(&message("a@example.test", "hi", "b\r\n")).unwrap().unwrap();
    assert_eq!(sig.matches("DKIM-Signature:").count(), 3, "{sig}");
    // From: anywhere: the fixed domain's keys
    let sig = s.sign(&message("a@customer.test", "hi", "b\r\n")).unwrap().unwrap();
    assert_eq!(sig.matches("DKIM-Signature:").count(), 2);
    assert_eq!(sig.matches("d=esp.test").count(), 2);
    assert!(signer(&[rsa("example.test", "a")]).with_fixed_domain("nokey.test").is_err());
}

#[test]
fn dns_records_to_publish() {
    let s = signer(&[rsa("example.test", "r"), ed("example.test", "e")]);
    let recs = s.dns_records();
    assert_eq!(recs[0].0, "r._domainkey.example.test");
    assert!(
        recs[0].1.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
        "SPKI: {}",
        recs[0].1
    );
    assert_eq!(recs[1].0, "e._domainkey.example.test");
    assert!(recs[1].1.starts_with("v=DKIM1; k=ed25519; p="));
    assert_eq!(recs[1].1.len(), "v=DKIM1; k=ed25519; p=".len() + 44, "raw 32-byte key");
    // the same public key openssl derives
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(fixture("rsa2048.pem"))
        .output();
    if let Some(out) = out.ok().filter(|o| o.status.success()) {
        use base64::Engine as _;
        let p = base64::engine::general_purpose::STANDARD.encode(out.stdout);
        assert_eq!(recs[0].1, format!("v=DKIM1; k=rsa; p={p}"));
    }
}

#[test]
fn pkcs1_rsa_keys_load() {
    let s = signer(&[key("example.test", "p1", KeyAlgorithm::RsaSha256, "rsa2048-pkcs1.pem")]);
    let s8 = signer(&[rsa("example.test", "p1")]);
    assert_eq!(s.dns_records(), s8.dns_records(), "same key, two encodings");
}

fn load_err(file: &str, alg: KeyAlgorithm) -> AuthError {
    Signer::load_keys(&[KeyConfig { key_file: fixture(file), ..key("example.test", "s", alg, file) }]).unwrap_err()
}

#[test]
fn key_errors_are_clear() {
    let cases = [
        ("does-not-exist.pem", KeyAlgorithm::RsaSha256, "cannot read DKIM key file"),
        ("", KeyAlgorithm::RsaSha256, "cannot read DKIM key file"), // a directory
        ("garbage.pem", KeyAlgorithm::RsaSha256, "no PEM private key"),
        ("p256.pem", KeyAlgorithm::RsaSha256, "holds an EC key, but algorithm = \"rsa-sha256\""),
        ("p256.pem", KeyAlgorithm::Ed25519Sha256, "holds an EC key, but algorithm = \"ed25519-sha256\""),
        ("ed25519.pem", KeyAlgorithm::RsaSha256, "holds an Ed25519 key, but algorithm = \"rsa-sha256\""),
        ("rsa2048.pem", KeyAlgorithm::Ed25519Sha256, "holds an RSA key, but algorithm = \"ed25519-sha256\""),
        ("rsa2048-pkcs1.pem", KeyAlgorithm::Ed25519Sha256, "holds an RSA key"),
        ("rsa1024.pem", KeyAlgorithm::RsaSha256, "at least 2048 bits are required"),
    ];
    for (file, alg, want) in cases {
        let e = load_err(file, alg);
        let msg = e.to_string();
        assert!(msg.contains(want), "{file}: {msg}");
        assert!(e.is_config());
        if !file.is_empty() {
            assert!(msg.contains(file), "names the file: {msg}");
        }
    }
    assert!(matches!(KeyAlgorithm::parse("rsa-sha1"), Err(AuthError::Config(_))));
    assert_eq!(KeyAlgorithm::parse("Ed25519-SHA256").unwrap(), KeyAlgorithm::Ed25519Sha256);
    let empty = Signer::load_keys(&[KeyConfig { selector: " ".into(), ..rsa("example.test", "x") }]).unwrap_err();
    assert!(matches!(empty, AuthError::Config(_)), "{empty}");
}

#[tokio::test]
async fn sign_blocking_runs_off_the_runtime() {
    let s = Arc::new(signer(&[rsa("example.test", "sel")]));
    let m = Bytes::from(message("a@example.test", "hi", "b\r\n"));
    let sig = s.sign_blocking(m).await.unwrap().unwrap();
    assert!(sig.starts_with("DKIM-Signature:"));
}

/// More concurrent signatures than the signing pool's threads and queue hold: the rest wait for a place
/// (sessions are the back-pressure), none is refused, and each message gets its own signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signatures_wait_for_the_pool_and_all_succeed() {
    let s = Arc::new(signer(&[rsa("example.test", "sel"), ed("example.test", "ed")]));
    let jobs: Vec<_> = (0..64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let m = Bytes::from(message("a@example.test", &format!("message {i}"), "b\r\n"));
                s.sign_blocking(m).await
            })
        })
        .collect();
    let mut signatures = std::collections::HashSet::new();
    for job in jobs {
        let sig = job.await.unwrap().unwrap().unwrap();
        assert_eq!(sig.matches("DKIM-Signature:").count(), 2, "{sig}");
        signatures.insert(tag(&sig, "b").to_string());
    }
    assert_eq!(signatures.len(), 64, "every message has a signature of its own");
    // A signer without keys needs no thread at all.
    assert_eq!(Arc::new(signer(&[])).sign_blocking(Bytes::from_static(b"From: a@b\r\n\r\n")).await.unwrap(), None);
}
