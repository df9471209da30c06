//! End to end: the real `mta-server` binary on loopback, driven by raw SMTP and by lettre.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mta_tests::{queued_id, server_binary, strip_received, test_certificate, RawSmtp, TestServer};

fn hash_password(pw: &str) -> String {
    let mut child = Command::new(server_binary())
        .args(["hash-key", "--password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pw.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn pipelined_transaction_is_stored_byte_exact() {
    let mut server = TestServer::start("");
    let (mut c, greeting) = RawSmtp::connect(server.smtp);
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = c.cmd("EHLO client.test", "250");
    for ext in ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    let body = "From: a@sender.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nline one\r\n..leading dot\r\n";
    // Everything in one write, as a pipelining client does.
    c.send(
        format!("MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@dest.test>\r\nRCPT TO:<c@other.test>\r\nDATA\r\n{body}.\r\n")
            .as_bytes(),
    );
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("354"));
    let done = c.reply();
    assert!(done.starts_with("250 2.0.0 Ok: queued as "), "{done}");
    let id = queued_id(&done).unwrap();
    c.cmd("QUIT", "221");

    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    let stored = server.spool_raw(&id);
    let expected = body.replace("\r\n..leading", "\r\n.leading");
    assert_eq!(String::from_utf8_lossy(strip_received(&stored)), expected);
    let list = server.spool_list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["recipients"].as_array().unwrap().len(), 2);
    let events = server.events();
    let receptions: Vec<_> = events.iter().filter(|e| e["type"] == "reception").collect();
    assert_eq!(receptions.len(), 2, "one reception event per recipient: {events:?}");
    assert_eq!(receptions[0]["id"], id.as_str());
}

#[test]
fn relay_is_refused_for_outsiders() {
    // 127.0.0.1 is not in relay_networks here, so we are an outsider.
    let server = TestServer::start(
        "[smtp]\nrelay_networks = [\"10.0.0.0/8\"]\nrelay_domains = [\"inbound.test\"]\n\
         [[route]]\ndomain = \"inbound.test\"\nrelay = \"127.0.0.1:1\"\n",
    );
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO outsider.test", "250");
    c.cmd("MAIL FROM:<x@outsider.test>", "250");
    let r = c.cmd("RCPT TO:<victim@elsewhere.test>", "550");
    assert!(r.contains("5.7.1"), "{r}");
    c.cmd("RCPT TO:<postmaster@inbound.test>", "250");
}

#[test]
fn size_limits_announced_and_actual() {
    let server = TestServer::start("[smtp]\nmax_message_size = 2048\n");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    let ehlo = c.cmd("EHLO c.test", "250");
    assert!(ehlo.contains("SIZE 2048"));
    let r = c.cmd("MAIL FROM:<a@s.test> SIZE=4096", "552");
    assert!(r.contains("5.3.4"), "{r}");
    c.cmd("MAIL FROM:<a@s.test>", "250");
    c.cmd("RCPT TO:<b@d.test>", "250");
    c.cmd("DATA", "354");
    let big = "x".repeat(100);
    for _ in 0..40 {
        c.send(format!("{big}\r\n").as_bytes());
    }
    let r = c.cmd(".", "552");
    assert!(r.contains("5.3.4"), "{r}");
    // The session is still in sync: a new transaction works.
    c.cmd("MAIL FROM:<a@s.test>", "250");
}

#[test]
fn too_many_recipients() {
    let server = TestServer::start("[smtp]\nmax_recipients = 3\n");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@s.test>", "250");
    for i in 0..3 {
        c.cmd(&format!("RCPT TO:<r{i}@d.test>"), "250");
    }
    let r = c.cmd("RCPT TO:<r4@d.test>", "452");
    assert!(r.contains("4.5.3"), "{r}");
}

fn expect_rejected_data(server: &TestServer, content: &[u8]) {
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@s.test>", "250");
    c.cmd("RCPT TO:<b@d.test>", "250");
    c.cmd("DATA", "354");
    c.send(content);
    c.send(b"\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with('5'), "expected a 5xx for {:?}, got {r:?}", String::from_utf8_lossy(content));
    // Never a second message: the smuggled part must not have been taken as commands.
    c.cmd("NOOP", "250");
}

fn expect_rejected_bdat(server: &TestServer, content: &[u8]) {
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@s.test>", "250");
    c.cmd("RCPT TO:<b@d.test>", "250");
    c.send(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
    c.send(content);
    let r = c.reply();
    assert!(r.starts_with('5'), "expected a 5xx for BDAT {:?}, got {r:?}", String::from_utf8_lossy(content));
    c.cmd("NOOP", "250");
}

#[test]
fn bare_lf_and_bare_cr_are_rejected_in_data_and_bdat() {
    let server = TestServer::start("");
    // The classic smuggling payload: a bare-LF "end of data" followed by a second message.
    let smuggle = b"Subject: a\r\n\r\nbody\n.\nMAIL FROM:<evil@s.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\nsmuggled";
    expect_rejected_data(&server, smuggle);
    expect_rejected_data(&server, b"Subject: a\r\n\r\nbare\rcr");
    expect_rejected_bdat(&server, b"Subject: a\r\n\r\nbare\nlf\r\n");
    expect_rejected_bdat(&server, b"Subject: a\r\n\r\nbare\rcr\r\n");
    let mut server = server;
    server.sigterm();
    server.wait_exit(Duration::from_secs(20));
    assert!(server.spool_list().is_empty(), "nothing may be queued");
}

#[test]
fn bdat_message_is_stored() {
    let mut server = TestServer::start("");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@s.test>", "250");
    c.cmd("RCPT TO:<b@d.test>", "250");
    let part1 = b"Subject: chunked\r\n\r\nfirst ";
    let part2 = b"second\r\n.not stuffed\r\n";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
    c.send(part1);
    assert!(c.reply().starts_with("250"));
    c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    c.send(part2);
    let r = c.reply();
    let id = queued_id(&r).unwrap_or_else(|| panic!("{r}"));
    server.sigterm();
    server.wait_exit(Duration::from_secs(20));
    let stored = server.spool_raw(&id);
    assert_eq!(strip_received(&stored), b"Subject: chunked\r\n\r\nfirst second\r\n.not stuffed\r\n");
}

#[test]
fn long_lines_are_rejected() {
    let server = TestServer::start("");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO c.test", "250");
    let long_cmd = format!("MAIL FROM:<{}@s.test>", "a".repeat(600));
    let r = c.cmd(&long_cmd, "500");
    assert!(r.contains("5.5.2") || r.to_lowercase().contains("too long"), "{r}");
    c.cmd("NOOP", "250");
    drop(c);
    expect_rejected_data(&server, format!("Subject: x\r\n\r\n{}", "y".repeat(1200)).as_bytes());
}

#[test]
fn idle_client_times_out() {
    let server = TestServer::start("[smtp]\ntimeout_command = \"1s\"\n");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO c.test", "250");
    std::thread::sleep(Duration::from_millis(1500));
    let r = c.reply();
    assert!(r.starts_with("421"), "{r}");
    assert!(c.is_closed());
}

#[test]
fn hop_limit_rejects_loops() {
    let server = TestServer::start("[smtp]\nmax_hops = 3\n");
    let (mut c, _) = RawSmtp::connect(server.smtp);
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@s.test>", "250");
    c.cmd("RCPT TO:<b@d.test>", "250");
    c.cmd("DATA", "354");
    for i in 0..4 {
        c.send(format!("Received: from hop{i}.test by x; Mon, 1 Jan 2024 00:00:00 +0000\r\n").as_bytes());
    }
    c.send(b"Subject: loop\r\n\r\nbody\r\n");
    let r = c.cmd(".", "554");
    assert!(r.contains("5.4.6"), "{r}");
}

#[test]
fn shutdown_answers_421_and_finishes_in_flight() {
    let mut server = TestServer::start("");
    let (mut busy, _) = RawSmtp::connect(server.smtp);
    busy.cmd("EHLO c.test", "250");
    busy.cmd("MAIL FROM:<a@s.test>", "250");
    busy.cmd("RCPT TO:<b@d.test>", "250");
    busy.cmd("DATA", "354");
    busy.send(b"Subject: in flight\r\n\r\nstarted before the stop\r\n");
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    // A new connection during the drain is told to go away.
    if let Ok(stream) = std::net::TcpStream::connect(server.smtp) {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line);
        assert!(line.is_empty() || line.starts_with("421"), "{line}");
    }
    // The transaction in DATA finishes and is acknowledged.
    let r = busy.cmd(".", "250");
    let id = queued_id(&r).unwrap();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(server.spool_list().iter().any(|m| m["id"] == id.as_str()));
}

#[test]
fn starttls_discards_pipelined_commands_then_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = test_certificate(tmp.path());
    let hash = hash_password("s3cret");
    let mut server = TestServer::start(&format!(
        "[smtp]\nrelay_networks = []\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[[smtp.users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n",
        cert.display(),
        key.display()
    ));
    let (mut c, _) = RawSmtp::connect(server.smtp);
    let ehlo = c.cmd("EHLO c.test", "250");
    assert!(ehlo.contains("STARTTLS"));
    assert!(!ehlo.contains("AUTH"), "AUTH must not be offered before TLS: {ehlo}");
    c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "5");
    // STARTTLS with an injected command in the same packet: the server must drop it.
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n");
    let r = c.reply();
    assert!(r.starts_with("220"), "{r}");
    let tcp = c.into_stream();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).unwrap();
    for der in rustls_pemfile_certs(&pem) {
        roots.add(der).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let read_reply = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| {
        let mut all = String::new();
        let mut byte = [0u8; 1];
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\n") {
                match std::io::Read::read(tls, &mut byte) {
                    Ok(1) => line.push(byte[0]),
                    _ => return all,
                }
            }
            let line = String::from_utf8_lossy(&line).to_string();
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    // The first thing we get under TLS is the answer to our EHLO, not to the injected MAIL.
    tls.write_all(b"EHLO c.test\r\n").unwrap();
    let ehlo = read_reply(&mut tls);
    assert!(ehlo.starts_with("250"), "{ehlo}");
    assert!(ehlo.contains("AUTH"), "AUTH offered after TLS: {ehlo}");
    assert!(!ehlo.contains("STARTTLS"));
    // No transaction survived the upgrade: RCPT without MAIL is a sequence error.
    tls.write_all(b"RCPT TO:<b@d.test>\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("503"));
    // An outsider (relay_networks is empty) may not relay before AUTH...
    tls.write_all(b"MAIL FROM:<alice@s.test>\r\nRCPT TO:<b@d.test>\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("250"));
    assert!(read_reply(&mut tls).starts_with("550"));
    tls.write_all(b"RSET\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("250"));
    tls.write_all(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("535"));
    tls.write_all(b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("235"));
    tls.write_all(b"MAIL FROM:<alice@s.test>\r\nRCPT TO:<b@d.test>\r\nDATA\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("250"));
    assert!(read_reply(&mut tls).starts_with("250"));
    assert!(read_reply(&mut tls).starts_with("354"));
    tls.write_all(b"Subject: tls\r\n\r\nover tls\r\n.\r\n").unwrap();
    let r = read_reply(&mut tls);
    assert!(r.starts_with("250"), "{r}");
    let id = queued_id(&r).unwrap();
    server.sigterm();
    server.wait_exit(Duration::from_secs(20));
    let stored = String::from_utf8(server.spool_raw(&id)).unwrap();
    assert!(stored.contains("with ESMTPSA"), "{stored}");
    assert!(!server.spool_list().iter().any(|m| m["sender"] == "injected@evil.test"));
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).map(|c| c.unwrap()).collect()
}

#[tokio::test]
async fn lettre_client_starttls_and_auth() {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = test_certificate(tmp.path());
    let hash = hash_password("pw-for-bob");
    let server = tokio::task::spawn_blocking(move || {
        TestServer::start(&format!(
            "[smtp]\nrelay_networks = []\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[[smtp.users]]\nname = \"bob\"\npassword_hash = \"{hash}\"\n",
            cert.display(),
            key.display()
        ))
    })
    .await
    .unwrap();
    let tls = TlsParameters::builder("localhost".into()).dangerous_accept_invalid_certs(true).build_rustls().unwrap();
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(server.smtp.port())
            .tls(Tls::Required(tls.clone()))
            .credentials(Credentials::new("bob".into(), "pw-for-bob".into()))
            .authentication(vec![mechanism])
            .build();
        let email = Message::builder()
            .from("bob@sender.test".parse().unwrap())
            .to("carol@dest.test".parse().unwrap())
            .subject("via lettre")
            .header(ContentType::TEXT_PLAIN)
            .body(String::from("Hello from lettre"))
            .unwrap();
        let response = mailer.send(email).await.unwrap();
        assert!(response.is_positive());
        assert!(response.message().any(|l| l.contains("queued as")));
    }
}
