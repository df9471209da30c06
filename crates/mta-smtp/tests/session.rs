//! SMTP dialogue tests over an in-memory stream.

mod common;

use common::{config, plain};
use mta_smtp::SessionConfig;
use std::time::Duration;

#[tokio::test]
async fn pipelined_transaction() {
    let mut h = plain(config()).await;
    let ehlo = h.client.cmd("EHLO client.example", "250").await;
    for ext in ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"] {
        assert!(ehlo.contains(ext), "{ext} missing in {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    h.client
        .send("MAIL FROM:<a@b.example> BODY=8BITMIME\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n")
        .await;
    h.client.expect("250 2.1.0").await;
    h.client.expect("250 2.1.5").await;
    h.client.expect("250 2.1.5").await;
    h.client.expect("354").await;
    h.client.send("Subject: hi\r\n\r\n..dot\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n").await;
    h.client.expect("250 2.0.0 Ok: queued as ID1").await;
    h.client.expect("250").await;
    h.client.expect("250").await;
    h.client.expect("354").await;
    h.client.send(".\r\n").await;
    h.client.expect("250 2.0.0 Ok: queued as ID2").await;
    h.client.cmd("QUIT", "221").await;
    h.client.expect_closed().await;
    let q = h.handler.queued();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].sender, "a@b.example");
    assert_eq!(q[0].recipients, ["x@y.example", "z@y.example"]);
    assert_eq!(&q[0].data[..], b"Subject: hi\r\n\r\n.dot\r\n");
    assert!(q[0].body_8bit);
    assert_eq!(q[1].sender, "");
    assert!(q[1].data.is_empty());
}

#[tokio::test]
async fn helo_then_pipelined_commands() {
    let mut h = plain(config()).await;
    let helo = h.client.cmd("HELO client.example", "250 mx.test").await;
    assert!(!helo.contains("PIPELINING"));
    h.client.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n").await;
    h.client.expect("250").await;
    h.client.expect("250").await;
    h.client.expect("354").await;
    h.client.send("x\r\n.\r\nNOOP\r\n").await;
    h.client.expect("250 2.0.0 Ok: queued").await;
    h.client.expect("250").await;
}

#[tokio::test]
async fn sequence_errors() {
    let mut h = plain(config()).await;
    h.client.cmd("MAIL FROM:<a@b.example>", "503 5.5.1").await;
    h.client.cmd("EHLO c", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "503 5.5.1").await;
    h.client.cmd("DATA", "503 5.5.1").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "503 5.5.1").await;
    h.client.cmd("DATA", "554 5.5.1").await;
    h.client.cmd("RCPT TO:<x@outside.example>", "550 5.7.1").await;
    h.client.cmd("RCPT TO:<>", "501 5.1.3").await;
    h.client.cmd("RCPT TO:<x@y> FOO=1", "555 5.5.4").await;
    h.client.cmd("RSET", "250").await;
    h.client.cmd("MAIL FROM:<bad", "501 5.1.7").await;
    h.client.cmd("MAIL FROM:<δ@b.example>", "553 5.6.7").await;
    h.client.cmd("MAIL FROM:<δ@b.example> SMTPUTF8", "250").await;
    h.client.cmd("RCPT TO:<δ@y.example>", "250").await;
    h.client.cmd("VRFY x", "252").await;
    h.client.cmd("HELP", "214").await;
    h.client.cmd("FOO", "500 5.5.1").await;
}

#[tokio::test]
async fn too_many_recipients() {
    let mut h = plain(SessionConfig { max_recipients: 2, ..config() }).await;
    h.client.cmd("EHLO c", "250").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x1@y.example>", "250").await;
    h.client.cmd("RCPT TO:<x2@y.example>", "250").await;
    h.client.cmd("RCPT TO:<x3@y.example>", "452 4.5.3").await;
    h.client.cmd("DATA", "354").await;
    h.client.send(".\r\n").await;
    h.client.expect("250").await;
    assert_eq!(h.handler.queued()[0].recipients.len(), 2);
}

#[tokio::test]
async fn size_limits() {
    let mut h = plain(SessionConfig { max_message_size: 100, ..config() }).await;
    let ehlo = h.client.cmd("EHLO c", "250").await;
    assert!(ehlo.contains("SIZE 100"));
    h.client.cmd("MAIL FROM:<a@b.example> SIZE=101", "552 5.3.4").await;
    h.client.cmd("MAIL FROM:<a@b.example> SIZE=100", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.cmd("DATA", "354").await;
    let body = "0123456789\r\n".repeat(20);
    h.client.send(&format!("{body}.\r\n")).await;
    h.client.expect("552 5.3.4").await;
    h.client.cmd("NOOP", "250").await;
    // BDAT too: the chunk is consumed, the transaction fails.
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.send(&format!("BDAT {} LAST\r\n{body}", body.len())).await;
    h.client.expect("552 5.3.4").await;
    h.client.cmd("NOOP", "250").await;
    assert!(h.handler.queued().is_empty());
}

#[tokio::test]
async fn bare_lf_and_cr_in_data_are_rejected_and_never_a_second_message() {
    let mut h = plain(config()).await;
    h.client.cmd("EHLO c", "250").await;
    for smuggle in ["a\n.\r\n", "a\r\n.\n", "a\r.\r\n", "a\r\n.\r"] {
        h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
        h.client.cmd("RCPT TO:<x@y.example>", "250").await;
        h.client.cmd("DATA", "354").await;
        h.client
            .send(&format!("{smuggle}MAIL FROM:<evil@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\nevil\r\n.\r\n"))
            .await;
        h.client.expect("554 5.6.11").await;
        h.client.cmd("NOOP", "250").await;
    }
    assert!(h.handler.queued().is_empty());
    assert!(!h.handler.mails().iter().any(|m| m.starts_with("evil")));
}

#[tokio::test]
async fn bdat() {
    let mut h = plain(config()).await;
    h.client.cmd("EHLO c", "250").await;
    // Without a transaction: refused, and the chunk is skipped (not read as commands).
    h.client.send("BDAT 6\r\nNOOP\r\n").await;
    h.client.expect("503 5.5.1").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.send("BDAT 5\r\nab\r\nc").await;
    h.client.expect("250 2.0.0 Ok: 5 octets received").await;
    h.client.cmd("DATA", "503 5.5.1").await;
    h.client.cmd("RCPT TO:<z@y.example>", "503 5.5.1").await;
    h.client.send("BDAT 3\r\nd\r\nBDAT 0 LAST\r\n").await;
    h.client.expect("250").await;
    h.client.expect("250 2.0.0 Ok: queued as ID1").await;
    assert_eq!(&h.handler.queued()[0].data[..], b"ab\r\ncd\r\n");
    // Bare LF and bare CR, also across chunks.
    for chunks in [&["a\nb"][..], &["a\r", "b"][..], &["a\r"][..]] {
        h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
        h.client.cmd("RCPT TO:<x@y.example>", "250").await;
        for (i, c) in chunks.iter().enumerate() {
            let last = if i + 1 == chunks.len() { " LAST" } else { "" };
            h.client.send(&format!("BDAT {}{last}\r\n{c}", c.len())).await;
            let reply = h.client.reply().await.unwrap_or_default();
            if i + 1 == chunks.len() {
                assert!(reply.starts_with("554 5.6.11"), "{chunks:?}: {reply}");
            }
        }
        h.client.cmd("NOOP", "250").await;
    }
    assert_eq!(h.handler.queued().len(), 1);
}

#[tokio::test]
async fn line_length_limits() {
    let mut h = plain(config()).await;
    h.client.cmd("EHLO c", "250").await;
    let long = format!("NOOP {}", "x".repeat(600));
    h.client.cmd(&long, "500 5.5.2").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.cmd("DATA", "354").await;
    h.client.send(&format!("{}\r\n.\r\n", "y".repeat(998))).await;
    h.client.expect("250").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.cmd("DATA", "354").await;
    h.client.send(&format!("{}\r\n.\r\n", "y".repeat(999))).await;
    h.client.expect("554 5.6.0").await;
    h.client.cmd("NOOP", "250").await;
}

#[tokio::test]
async fn hop_limit() {
    let mut h = plain(SessionConfig { max_hops: 2, ..config() }).await;
    h.client.cmd("EHLO c", "250").await;
    for (n, code) in [(2, "250"), (3, "554 5.4.6")] {
        h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
        h.client.cmd("RCPT TO:<x@y.example>", "250").await;
        h.client.cmd("DATA", "354").await;
        h.client.send(&format!("{}Subject: x\r\n\r\nbody\r\n.\r\n", "Received: from a\r\n".repeat(n))).await;
        h.client.expect(code).await;
    }
}

#[tokio::test(start_paused = true)]
async fn command_timeout() {
    let mut h = plain(SessionConfig { timeout_command: Duration::from_secs(1), ..config() }).await;
    h.client.cmd("EHLO c", "250").await;
    h.client.expect("421 4.4.2 mx.test Error: timeout exceeded").await;
    h.client.expect_closed().await;
}

#[tokio::test(start_paused = true)]
async fn data_timeout() {
    let mut h = plain(SessionConfig { timeout_data: Duration::from_secs(2), ..config() }).await;
    h.client.cmd("EHLO c", "250").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.cmd("DATA", "354").await;
    h.client.send("partial\r\n").await;
    h.client.expect("421 4.4.2").await;
    h.client.expect_closed().await;
}

#[tokio::test]
async fn error_limit() {
    let mut h = plain(SessionConfig { max_errors: 3, ..config() }).await;
    h.client.cmd("FOO", "500").await;
    h.client.cmd("BAR", "500").await;
    h.client.send("BAZ\r\nNOOP\r\n").await;
    h.client.expect("500").await;
    h.client.expect("421 4.7.0").await;
    h.client.expect_closed().await;
}

#[tokio::test]
async fn shutdown_when_idle() {
    let mut h = plain(config()).await;
    h.client.cmd("EHLO c", "250").await;
    let _ = h.shutdown.send(true);
    h.client.expect("421 4.3.2").await;
    h.client.expect_closed().await;
    assert!(tokio::time::timeout(Duration::from_secs(5), h.task).await.is_ok());
}

#[tokio::test]
async fn shutdown_lets_data_finish() {
    let mut h = plain(config()).await;
    h.client.cmd("EHLO c", "250").await;
    h.client.cmd("MAIL FROM:<a@b.example>", "250").await;
    h.client.cmd("RCPT TO:<x@y.example>", "250").await;
    h.client.cmd("DATA", "354").await;
    h.client.send("Subject: x\r\n").await;
    tokio::task::yield_now().await;
    let _ = h.shutdown.send(true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.client.send("\r\nbody\r\n.\r\nNOOP\r\n").await;
    h.client.expect("250 2.0.0 Ok: queued as ID1").await;
    h.client.expect("421 4.3.2").await;
    h.client.expect_closed().await;
}

#[tokio::test]
async fn starttls_without_certificate() {
    let mut h = plain(config()).await;
    h.client.cmd("EHLO c", "250").await;
    h.client.cmd("STARTTLS", "502 5.5.1").await;
    h.client.cmd("AUTH PLAIN", "503 5.5.1").await;
}
