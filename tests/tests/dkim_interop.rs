//! Independent verification: messages we sign (RSA-SHA256 and Ed25519-SHA256) verify with
//! `dkimpy`, another implementation (Python; `python3 -m pip install dkimpy pynacl`). The key
//! records are handed to dkimpy through its `dnsfunc` hook: no network.
//!
//! Skips (with a message) when python3, dkimpy or PyNaCl is missing.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use mta_core::auth::{KeyAlgorithm, KeyConfig, Signer};

const VERIFY_PY: &str = r#"
import sys, dkim
msg = open(sys.argv[1], 'rb').read()
records = {}
for line in open(sys.argv[2], 'rb').read().decode().splitlines():
    name, value = line.split(' ', 1)
    records[name.lower()] = value.encode()
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.rstrip('.').lower())
d = dkim.DKIM(msg, minkey=2048)
n = int(sys.argv[3])
results = [bool(d.verify(idx=i, dnsfunc=dnsfunc)) for i in range(n)]
print(' '.join('pass' if r else 'fail' for r in results))
"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/mta-core/tests/fixtures/auth").join(name)
}

fn dkimpy_available() -> bool {
    match Command::new("python3").args(["-c", "import dkim, nacl"]).output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED dkim_interop: python3 with dkimpy and PyNaCl is needed \
                 (python3 -m pip install --quiet dkimpy pynacl)"
            );
            false
        }
    }
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

/// Sign `message` with `signer`, then let dkimpy verify each signature against the keys of
/// `published`; returns its verdicts.
fn dkimpy_verify_with(signer: &Signer, published: &Signer, message: &[u8]) -> Vec<String> {
    let sig = signer.sign(message).unwrap().expect("signed");
    let n = sig.matches("DKIM-Signature:").count();
    let mut signed = sig.into_bytes();
    signed.extend_from_slice(message);
    let dir = tempfile::tempdir().unwrap();
    let msg_path = dir.path().join("msg.eml");
    std::fs::write(&msg_path, &signed).unwrap();
    let dns_path = dir.path().join("dns.txt");
    let mut f = std::fs::File::create(&dns_path).unwrap();
    for (name, value) in published.dns_records() {
        writeln!(f, "{name} {value}").unwrap();
    }
    drop(f);
    let out = Command::new("python3")
        .args(["-c", VERIFY_PY])
        .arg(&msg_path)
        .arg(&dns_path)
        .arg(n.to_string())
        .output()
        .expect("python3");
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_string).collect()
}

fn dkimpy_verify(signer: &Signer, message: &[u8]) -> Vec<String> {
    dkimpy_verify_with(signer, signer, message)
}

fn message() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..40 {
        body.push_str(&format!("Line {i} of the body, with  double  spaces and a tab\there. \r\n"));
    }
    body.push_str("\r\n\r\n");
    format!(
        "Received: from client.example (client.example [192.0.2.1])\r\n\tby mta.interop.test with ESMTP id 01ABC; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         From: \"Interop Sender\" <sender@news.interop.test>\r\n\
         To: rcpt@example.net,\r\n  other@example.net\r\n\
         Subject: An interop test with a\r\n folded subject\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: <interop-1@interop.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n{body}"
    )
    .into_bytes()
}

#[test]
fn rsa_signatures_verify_with_dkimpy() {
    if !dkimpy_available() {
        return;
    }
    let s = Signer::load_keys(&[key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem")]).unwrap();
    assert_eq!(dkimpy_verify(&s, &message()), ["pass"]);
    // PKCS#1 PEM of the same key
    let s = Signer::load_keys(&[key("rsa", KeyAlgorithm::RsaSha256, "rsa2048-pkcs1.pem")]).unwrap();
    assert_eq!(dkimpy_verify(&s, &message()), ["pass"]);
}

#[test]
fn ed25519_signatures_verify_with_dkimpy() {
    if !dkimpy_available() {
        return;
    }
    let s = Signer::load_keys(&[key("ed", KeyAlgorithm::Ed25519Sha256, "ed25519.pem")]).unwrap();
    assert_eq!(dkimpy_verify(&s, &message()), ["pass"]);
}

#[test]
fn dual_signatures_verify_with_dkimpy_and_tampering_is_caught() {
    if !dkimpy_available() {
        return;
    }
    let s = Signer::load_keys(&[
        key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem"),
        key("ed", KeyAlgorithm::Ed25519Sha256, "ed25519.pem"),
    ])
    .unwrap();
    assert_eq!(dkimpy_verify(&s, &message()), ["pass", "pass"]);
    // sanity: dkimpy does fail a signature when the published key is another one
    let ours = Signer::load_keys(&[key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem")]).unwrap();
    let other = Signer::load_keys(&[key("rsa", KeyAlgorithm::RsaSha256, "rsa2048-b.pem")]).unwrap();
    assert_eq!(dkimpy_verify_with(&ours, &other, &message()), ["fail"]);
}

#[test]
fn a_large_message_signed_by_the_server_from_its_staged_bytes_verifies_with_dkimpy() {
    if !dkimpy_available() {
        return;
    }
    let extra = format!(
        "[[dkim.key]]\ndomain = \"interop.test\"\nselector = \"rsa\"\nalgorithm = \"rsa-sha256\"\nkey_file = \"{}\"\n",
        fixture("rsa2048.pem").display()
    );
    let mut server = mta_tests::TestServer::start(&extra);
    let (mut c, _) = mta_tests::RawSmtp::connect(server.smtp);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<sender@interop.test>", "250");
    c.cmd("RCPT TO:<rcpt@example.net>", "250");
    c.cmd("DATA", "354");
    // About 2 MiB: far past what a message may keep in memory, so its body is staged on disk.
    let mut m = b"From: <sender@interop.test>\r\nTo: <rcpt@example.net>\r\nSubject: big\r\n\r\n".to_vec();
    for i in 0..40_000 {
        m.extend_from_slice(format!("line {i} of a message signed from its staged bytes\r\n").as_bytes());
    }
    m.extend_from_slice(b".\r\n");
    c.send(&m);
    let id = mta_tests::queued_id(&c.reply()).expect("queued");
    c.cmd("QUIT", "221");
    server.sigterm();
    assert_eq!(server.wait_exit(std::time::Duration::from_secs(30)), Some(0));
    let stored = server.spool_raw(&id);
    assert!(stored.starts_with(b"DKIM-Signature:"), "not signed");
    let published = Signer::load_keys(&[key("rsa", KeyAlgorithm::RsaSha256, "rsa2048.pem")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let msg_path = dir.path().join("msg.eml");
    std::fs::write(&msg_path, &stored).unwrap();
    let dns_path = dir.path().join("dns.txt");
    let mut f = std::fs::File::create(&dns_path).unwrap();
    for (name, value) in published.dns_records() {
        writeln!(f, "{name} {value}").unwrap();
    }
    drop(f);
    let out = Command::new("python3").args(["-c", VERIFY_PY]).arg(&msg_path).arg(&dns_path).arg("1").output().unwrap();
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pass");
}
