//! STARTTLS, smtps and AUTH.

mod common;

use common::{b64, config, start, tls_pair, TestHandler};
use mta_smtp::{ListenerMode, SessionConfig};

#[tokio::test]
async fn starttls_discards_pipelined_commands_and_resets_state() {
    let (acceptor, connector) = tls_pair();
    let mut h = start(SessionConfig { tls: Some(acceptor), ..config() }, ListenerMode::Smtp, TestHandler::with_users());
    h.client.expect("220").await;
    let ehlo = h.client.cmd("EHLO c", "250").await;
    assert!(ehlo.contains("STARTTLS"));
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    h.client.cmd("AUTH PLAIN", "538 5.7.11").await;
    // The injected MAIL arrives in the same segment as STARTTLS: it must vanish unanswered.
    h.client.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n").await;
    h.client.expect("220 2.0.0").await;
    let mut client = h.upgrade(&connector).await;
    // The first reply over TLS is the EHLO reply, not one for the injected command.
    let ehlo = client.cmd("EHLO c", "250").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    client.cmd("STARTTLS", "503 5.5.1").await;
    client.cmd("MAIL FROM:<a@b.example>", "250").await;
    assert_eq!(h.handler.mails(), ["a@b.example"]);
    let infos = h.handler.infos.lock().map(|i| i.clone()).unwrap_or_default();
    assert!(infos[0].tls);
}

#[tokio::test]
async fn starttls_forgets_ehlo() {
    let (acceptor, connector) = tls_pair();
    let mut h = start(SessionConfig { tls: Some(acceptor), ..config() }, ListenerMode::Smtp, TestHandler::default());
    h.client.expect("220").await;
    h.client.cmd("EHLO c", "250").await;
    h.client.cmd("STARTTLS", "220").await;
    let mut client = h.upgrade(&connector).await;
    client.cmd("MAIL FROM:<a@b.example>", "503 5.5.1").await;
}

#[tokio::test]
async fn auth_plain_and_login_after_tls() {
    let (acceptor, connector) = tls_pair();
    for (mechanism, steps) in [
        ("PLAIN", vec![(format!("AUTH PLAIN {}", b64(b"\0user\0pass")), "235 2.7.0")]),
        ("PLAIN-challenge", vec![("AUTH PLAIN".to_owned(), "334"), (b64(b"user\0user\0pass"), "235")]),
        (
            "LOGIN",
            vec![
                ("AUTH LOGIN".to_owned(), "334 VXNlcm5hbWU6"),
                (b64(b"user"), "334 UGFzc3dvcmQ6"),
                (b64(b"pass"), "235"),
            ],
        ),
        ("LOGIN-initial", vec![(format!("AUTH LOGIN {}", b64(b"user")), "334 UGFzc3dvcmQ6"), (b64(b"pass"), "235")]),
        ("bad password", vec![(format!("AUTH PLAIN {}", b64(b"\0user\0wrong")), "535 5.7.8")]),
        ("cancel", vec![("AUTH LOGIN".to_owned(), "334"), ("*".to_owned(), "501 5.0.0")]),
        ("bad base64", vec![("AUTH PLAIN !!!".to_owned(), "501 5.5.2")]),
        ("unknown mechanism", vec![("AUTH CRAM-MD5".to_owned(), "504 5.5.4")]),
    ] {
        let mut h = start(
            SessionConfig { tls: Some(acceptor.clone()), ..config() },
            ListenerMode::Smtps,
            TestHandler::with_users(),
        );
        let mut client = h.upgrade(&connector).await;
        client.expect("220").await;
        let ehlo = client.cmd("EHLO c", "250").await;
        assert!(ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"), "{ehlo}");
        for (line, code) in &steps {
            client.cmd(line, code).await;
        }
        let authed = steps.last().is_some_and(|s| s.1.starts_with("235"));
        client.cmd("MAIL FROM:<a@b.example>", "250").await;
        let infos = h.handler.infos.lock().map(|i| i.clone()).unwrap_or_default();
        assert_eq!(infos[0].auth_user.is_some(), authed, "{mechanism}");
        if authed {
            client.cmd("RSET", "250").await;
            client.cmd(&format!("AUTH PLAIN {}", b64(b"\0user\0pass")), "503 5.5.1").await;
        }
    }
}

#[tokio::test]
async fn submission_requires_auth() {
    let mut h = start(
        SessionConfig { allow_plaintext_auth: true, ..config() },
        ListenerMode::Submission,
        TestHandler::with_users(),
    );
    h.client.expect("220").await;
    let ehlo = h.client.cmd("EHLO c", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"));
    h.client.cmd("MAIL FROM:<a@b.example>", "530 5.7.0").await;
    h.client.cmd(&format!("AUTH PLAIN {}", b64(b"\0user\0pass")), "235").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    let infos = h.handler.infos.lock().map(|i| i.clone()).unwrap_or_default();
    assert_eq!(infos[0].auth_user.as_deref(), Some("user"));
}
