//! End to end: inbound SPF/DMARC enforcement for mail from outsiders, Authentication-Results, and DKIM signing
//! of mail from trusted clients, through the real binary and an in-process DNS server.

use std::time::Duration;

use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::{queued_id, RawSmtp, TestServer};

fn fixture(name: &str) -> String {
    format!("{}/../crates/mta-core/tests/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn dns() -> TestDnsServer {
    let zone = TestZone::new("test")
        .txt("fail.test", &["v=spf1 ip4:192.0.2.1 -all"])
        .txt("pass.test", &["v=spf1 ip4:127.0.0.1 -all"])
        .txt("_dmarc.pass.test", &["v=DMARC1; p=reject"]);
    TestDnsServer::start(vec![zone]).await.unwrap()
}

fn transaction(server: &TestServer, from: &str, rcpt: &str) -> String {
    tokio::task::block_in_place(|| {
        let (mut c, _) = RawSmtp::connect(server.smtp);
        c.cmd("EHLO client.example", "250");
        c.cmd(&format!("MAIL FROM:<{from}>"), "250");
        c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
        c.cmd("DATA", "354");
        c.send(
            format!(
                "From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: auth\r\nAuthentication-Results: mx.test; spf=pass (forged)\r\n\r\nhello\r\n"
            )
            .as_bytes(),
        );
        c.send(b".\r\n");
        c.reply()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outsiders_are_verified_and_spf_fail_is_rejected_under_enforce() {
    let dns = dns().await;
    let mut server = tokio::task::block_in_place(|| {
        TestServer::start(&format!(
            "[dns]\nnameservers = [\"{}\"]\n[smtp]\nrelay_networks = []\nrelay_domains = [\"inbound.test\"]\n\
             [[route]]\ndomain = \"inbound.test\"\nrelay = \"127.0.0.1:9\"\n\
             [auth]\nspf = \"enforce\"\ndmarc = \"enforce\"\n[delivery]\nenabled = false\n",
            dns.addr()
        ))
    });
    let r = transaction(&server, "someone@fail.test", "user@inbound.test");
    assert!(r.starts_with("550") && r.contains("5.7.23"), "SPF fail must be rejected: {r}");
    let r = transaction(&server, "someone@pass.test", "user@inbound.test");
    assert!(r.starts_with("250"), "{r}");
    let id = queued_id(&r).unwrap();
    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(20)));
    let stored = String::from_utf8(tokio::task::block_in_place(|| server.spool_raw(&id))).unwrap();
    assert!(stored.starts_with("Authentication-Results: mx.test;"), "{stored}");
    assert!(stored.contains("spf=pass"), "{stored}");
    assert!(!stored.contains("(forged)"), "a spoofed header claiming our authserv-id is removed: {stored}");
    let received = stored.find("Received: ").unwrap();
    assert!(received > 0, "Authentication-Results is above our Received:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trusted_mail_is_dkim_signed_at_reception() {
    let dns = dns().await;
    let mut server = tokio::task::block_in_place(|| {
        TestServer::start(&format!(
            "[dns]\nnameservers = [\"{}\"]\n[delivery]\nenabled = false\n\
             [[dkim.key]]\ndomain = \"pass.test\"\nselector = \"s1\"\nalgorithm = \"ed25519-sha256\"\nkey_file = \"{}\"\n",
            dns.addr(),
            fixture("ed25519.pem")
        ))
    });
    let r = transaction(&server, "app@pass.test", "someone@elsewhere.test");
    let id = queued_id(&r).unwrap_or_else(|| panic!("{r}"));
    server.sigterm();
    tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(20)));
    let stored = String::from_utf8(tokio::task::block_in_place(|| server.spool_raw(&id))).unwrap();
    assert!(stored.starts_with("DKIM-Signature: "), "{stored}");
    assert!(stored.contains("d=pass.test") && stored.contains("s=s1"), "{stored}");
    // Mail from trusted clients is not verified inbound (no Authentication-Results of ours).
    assert!(!stored.contains("Authentication-Results: mx.test; spf="), "{stored}");
}

#[test]
fn check_config_rejects_bad_dkim_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[[dkim.key]]\ndomain = \"a.test\"\nselector = \"s\"\nalgorithm = \"rsa-sha256\"\nkey_file = \"{}\"\n",
            fixture("garbage.pem")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(mta_tests::server_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dkim.key[0].key_file"), "{err}");
}
