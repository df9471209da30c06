//! Our DKIM signatures (rsa-sha256, ed25519-sha256, both at once) verified by OpenDKIM, a second
//! independent implementation (C, Debian's `opendkim`), run in its offline test mode
//! (`opendkim -t FILE`) with the key records given through `TestPublicKeys`: no network. A body
//! changed after signing must fail there too.
//!
//! Skips (with a message) when `opendkim` is missing (`scripts/test.sh` installs it).

use std::path::PathBuf;
use std::process::Command;

use mta_core::auth::{KeyAlgorithm, KeyConfig, Signer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/mta-core/tests/fixtures/auth").join(name)
}

fn opendkim() -> Option<PathBuf> {
    let found = ["/usr/sbin/opendkim", "/usr/bin/opendkim"].into_iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        eprintln!("SKIPPED dkim_opendkim: opendkim is needed (apt-get install opendkim opendkim-tools)");
    }
    found
}

fn key(selector: &str, algorithm: KeyAlgorithm, file: &str) -> KeyConfig {
    KeyConfig {
        domain: "interop.test".into(),
        selector: selector.into(),
        algorithm,
        key_file: fixture(file),
        headers: Vec::new(),
    }
}

const MESSAGE: &str = "From: \"Interop\" <sender@interop.test>\r\nTo: rcpt@example.net\r\n\
    Subject: OpenDKIM interop with a\r\n folded subject\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
    Message-ID: <odk-1@interop.test>\r\n\r\nLine one,  with  spaces.\r\nLine two.\r\n";

/// OpenDKIM's verdict for each signature of `message` (`dkim=` values of the
/// Authentication-Results it would add).
fn opendkim_verdicts(bin: &PathBuf, signer: &Signer, message: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let keys: String = signer.dns_records().into_iter().map(|(name, value)| format!("{name} {value}\n")).collect();
    std::fs::write(dir.path().join("keys.txt"), keys).unwrap();
    std::fs::write(
        dir.path().join("opendkim.conf"),
        format!("Mode v\nSyslog no\nAlwaysAddARHeader yes\nTestPublicKeys {}\n", dir.path().join("keys.txt").display()),
    )
    .unwrap();
    std::fs::write(dir.path().join("msg.eml"), message).unwrap();
    let out = Command::new(bin)
        .arg("-x")
        .arg(dir.path().join("opendkim.conf"))
        .arg("-vvv")
        .arg("-t")
        .arg(dir.path().join("msg.eml"))
        .output()
        .expect("opendkim");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.split("dkim=")
        .skip(1)
        .map(|r| r.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("").to_string())
        .collect()
}

fn signed(signer: &Signer) -> Vec<u8> {
    let mut m = signer.sign(MESSAGE.as_bytes()).unwrap().expect("signed").into_bytes();
    m.extend_from_slice(MESSAGE.as_bytes());
    m
}

#[test]
fn our_signatures_verify_with_opendkim() {
    let Some(bin) = opendkim() else { return };
    let rsa = Signer::load_keys(&[key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem")]).unwrap();
    assert_eq!(opendkim_verdicts(&bin, &rsa, &signed(&rsa)), ["pass"]);
    let ed = Signer::load_keys(&[key("ed", KeyAlgorithm::Ed25519Sha256, "ed25519.pem")]).unwrap();
    assert_eq!(opendkim_verdicts(&bin, &ed, &signed(&ed)), ["pass"]);
    let both = Signer::load_keys(&[
        key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem"),
        key("ed", KeyAlgorithm::Ed25519Sha256, "ed25519.pem"),
    ])
    .unwrap();
    assert_eq!(opendkim_verdicts(&bin, &both, &signed(&both)), ["pass", "pass"]);

    // sanity: OpenDKIM does fail a signature whose body was changed
    let tampered = String::from_utf8(signed(&rsa)).unwrap().replace("Line two.", "Line 2.");
    let v = opendkim_verdicts(&bin, &rsa, tampered.as_bytes());
    assert_eq!(v, ["fail"], "{v:?}");
}
