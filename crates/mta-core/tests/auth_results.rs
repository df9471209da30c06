//! The `Authentication-Results:` header (RFC 8601) we produce, and the removal of headers that
//! claim our authserv-id (spoofing defence, RFC 8601 §5).

mod auth_support;

use auth_support::{env, message, publish, rsa, signed, signer, CLIENT, HOST};
use bytes::Bytes;
use mta_core::auth::{strip_spoofed_results, AuthPolicy, Policy, Verifier};
use mta_core::dns::testing::TestZone;

#[tokio::test]
async fn header_format() {
    let s = signer(&[rsa("example.test", "sel")]);
    let zone = publish(TestZone::new("test"), &s)
        .txt("example.test", &["v=spf1 ip4:192.0.2.1 -all"])
        .txt("_dmarc.example.test", &["v=DMARC1; p=reject"]);
    let e = env(vec![zone]).await;
    let p = AuthPolicy { spf: Policy::Record, dkim: Policy::Record, dmarc: Policy::Record };
    let v = Verifier::new(e.auth.clone(), p, HOST);
    let m = signed(&s, &message("alice@example.test", "hi", "body\r\n"));
    let verdict = v.verify(CLIENT, "mail.example.test", "bounce@example.test", &m).await;
    let h = verdict.header;
    assert!(h.starts_with(&format!("Authentication-Results: {HOST};\r\n\t")), "{h}");
    assert!(h.ends_with("\r\n") && !h.ends_with("\r\n\r\n"), "{h}");
    // folded: every line but the first starts with a tab, no bare LF or CR
    let lines: Vec<&str> = h.trim_end_matches("\r\n").split("\r\n").collect();
    assert!(lines[1..].iter().all(|l| l.starts_with('\t')), "{h}");
    assert!(!h.replace("\r\n", "").contains(['\r', '\n']), "{h}");
    let body = h.replace("\r\n\t", " ");
    for want in [
        "dkim=pass header.d=example.test header.s=sel header.b=",
        "spf=pass (mx.receiver.test: domain of bounce@example.test designates 192.0.2.1 as permitted sender) smtp.mailfrom=bounce@example.test",
        "spf=none",
        "smtp.helo=mail.example.test",
        "arc=none smtp.remote-ip=192.0.2.1",
        "dmarc=pass header.from=example.test policy.dmarc=reject",
    ] {
        assert!(body.contains(want), "missing {want:?} in {h}");
    }
    // parses as one header field
    let mut with = h.clone().into_bytes();
    with.extend_from_slice(&m);
    let parsed = mail_parser::MessageParser::new().parse(&with).unwrap();
    let ar: Vec<_> =
        parsed.headers().iter().filter(|x| x.name().eq_ignore_ascii_case("Authentication-Results")).collect();
    assert_eq!(ar.len(), 1);
}

fn strip(m: &str) -> String {
    String::from_utf8(strip_spoofed_results(Bytes::from(m.to_string()), HOST).to_vec()).unwrap()
}

#[test]
fn spoofed_results_are_removed() {
    let m = concat!(
        "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
        "Authentication-Results: mx.receiver.test; spf=pass smtp.mailfrom=ceo@bank.test\r\n",
        "Authentication-Results: other.test; dkim=pass header.d=x.test\r\n",
        "Authentication-Results:\r\n",
        "\tmx.receiver.test;\r\n",
        "\tdkim=pass header.d=bank.test\r\n",
        "authentication-results: (forged) MX.Receiver.Test. 1; dmarc=pass\r\n",
        "Authentication-Results: \"mx.receiver.test\"; arc=pass\r\n",
        "Authentication-Results: mx.receiver.test.evil.test; spf=pass\r\n",
        "Authentication-Results: mx.receiver.test\r\n",
        "X-Authentication-Results: mx.receiver.test; spf=pass\r\n",
        "From: a@b.test\r\n",
        "\r\n",
        "Authentication-Results: mx.receiver.test; in the body stays\r\n",
    );
    let out = strip(m);
    let want = concat!(
        "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
        "Authentication-Results: other.test; dkim=pass header.d=x.test\r\n",
        "Authentication-Results: mx.receiver.test.evil.test; spf=pass\r\n",
        "X-Authentication-Results: mx.receiver.test; spf=pass\r\n",
        "From: a@b.test\r\n",
        "\r\n",
        "Authentication-Results: mx.receiver.test; in the body stays\r\n",
    );
    assert_eq!(out, want);
}

#[test]
fn nothing_to_strip_returns_the_same_bytes() {
    let m = Bytes::from_static(b"From: a@b.test\r\nAuthentication-Results: other.test; none\r\n\r\nbody\r\n");
    let out = strip_spoofed_results(m.clone(), HOST);
    assert_eq!(out.as_ptr(), m.as_ptr(), "no copy");
    // headers only, no body
    assert_eq!(strip("Authentication-Results: mx.receiver.test; none\r\nFrom: a@b.test\r\n"), "From: a@b.test\r\n");
}
