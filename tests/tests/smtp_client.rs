//! The delivery client (`mta_smtp::client`) against the independent test sink, over real loopback TCP.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mta_smtp::client::{
    CertificateFailure, ClientConfig, ClientError, Connection, Envelope, RecipientOutcome, Stage, Timeouts, TlsPolicy,
    TlsTrust,
};
use mta_tests::sink::{SinkConfig, SinkHandle};

fn any_port(ip: &str) -> SocketAddr {
    format!("{ip}:0").parse().unwrap()
}

async fn sink(config: SinkConfig) -> SinkHandle {
    SinkHandle::start(any_port("127.0.0.1"), config).await
}

fn client() -> ClientConfig {
    ClientConfig {
        ehlo_name: "client.test".into(),
        timeouts: Timeouts::uniform(Duration::from_secs(5)),
        ..ClientConfig::default()
    }
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn env<'a>(sender: &'a str, recipients: &'a [String]) -> Envelope<'a> {
    Envelope { sender, recipients, needs_8bit: false, needs_smtputf8: false }
}

/// Lines starting with dots, a lone dot line, and no final CRLF in the original.
const TRICKY: &[u8] = b"From: a@sender.test\r\nSubject: dots\r\n\r\n.leading\r\n.\r\n..double\r\nend";

async fn connect(sink: &SinkHandle, config: &ClientConfig) -> Connection {
    Connection::connect(sink.addr, "sink.test", config).await.expect("connect")
}

#[tokio::test]
async fn plain_delivery_is_byte_exact_with_dot_stuffing() {
    let s = sink(SinkConfig { size: Some(1_000_000), ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    assert!(!c.is_tls());
    assert!(c.capabilities().pipelining);
    assert_eq!(c.greeting_host(), "sink.test");
    let to = rcpts(&["a@dest.test", "b@dest.test"]);
    let res = c.send(&env("s@sender.test", &to), TRICKY).await.unwrap();
    assert_eq!(res.delivered(), 2, "{res:?}");
    assert!(res.data_reply.as_ref().unwrap().text.contains("queued as SINK1"));
    c.quit().await;

    let m = s.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].sender, "s@sender.test");
    assert_eq!(m[0].recipients, to);
    let mut expected = TRICKY.to_vec();
    expected.extend_from_slice(b"\r\n"); // DATA needs a final CRLF before the dot
    assert_eq!(m[0].data, expected);
    assert_eq!(m[0].mail_params, vec![format!("SIZE={}", TRICKY.len())]);
    let commands = s.commands();
    assert_eq!(commands.last().map(String::as_str), Some("QUIT"));
    assert!(!commands.iter().any(|c| c == "RSET"), "no RSET after a successful message: {commands:?}");
}

#[tokio::test]
async fn without_pipelining_commands_go_one_by_one() {
    let s = sink(SinkConfig { pipelining: false, ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["a@dest.test"]);
    let body = b"Subject: x\r\n\r\n.hi\r\n".to_vec();
    let res = c.send(&env("", &to), &body).await.unwrap();
    assert_eq!(res.delivered(), 1);
    let m = s.messages();
    assert_eq!(m[0].data, body);
    assert_eq!(m[0].sender, "");
    assert_eq!(
        s.commands(),
        vec!["EHLO client.test", "MAIL FROM:<>", "RCPT TO:<a@dest.test>", "DATA"],
        "content lines are not commands"
    );
}

#[tokio::test]
async fn pipelined_recipients_get_their_own_outcomes() {
    let s = sink(SinkConfig::default()).await;
    s.set_rcpt_rule(|r| match r {
        r if r.starts_with("gone@") => Some("550 5.1.1 no such user".into()),
        r if r.starts_with("full@") => Some("452 4.2.2 mailbox full".into()),
        _ => None,
    });
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["a@dest.test", "gone@dest.test", "full@dest.test", "b@dest.test"]);
    let res = c.send(&env("s@sender.test", &to), b"Subject: x\r\n\r\nhi\r\n").await.unwrap();
    assert!(matches!(&res.recipients[0], RecipientOutcome::Delivered(r) if r.code == 250));
    match &res.recipients[1] {
        RecipientOutcome::Permanent(r) => {
            assert_eq!(r.code, 550);
            assert_eq!(r.enhanced.map(|e| e.to_string()).as_deref(), Some("5.1.1"));
            assert_eq!(r.text, "no such user");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&res.recipients[2], RecipientOutcome::Transient(r) if r.code == 452));
    assert!(res.recipients[3].is_delivered());
    assert_eq!(s.messages()[0].recipients, rcpts(&["a@dest.test", "b@dest.test"]));
}

#[tokio::test]
async fn every_recipient_refused_sends_no_content_and_the_connection_goes_on() {
    for pipelining in [true, false] {
        let s = sink(SinkConfig { pipelining, ..SinkConfig::default() }).await;
        s.set_rcpt_rule(|r| r.starts_with("gone@").then(|| "550 5.1.1 no such user".to_string()));
        let mut c = connect(&s, &client()).await;
        let to = rcpts(&["gone@dest.test", "gone@other.test"]);
        let res = c.send(&env("s@sender.test", &to), b"Subject: x\r\n\r\nhi\r\n").await.unwrap();
        assert!(res.recipients.iter().all(|o| matches!(o, RecipientOutcome::Permanent(r) if r.code == 550)));
        assert_eq!(res.data_reply, None);
        assert!(s.messages().is_empty());
        assert!(s.commands().contains(&"RSET".to_string()));
        // The next message still goes through on the same connection.
        let ok = rcpts(&["a@dest.test"]);
        assert_eq!(c.send(&env("s@sender.test", &ok), b"x\r\n").await.unwrap().delivered(), 1);
        assert_eq!(s.connections(), 1);
    }
}

#[tokio::test]
async fn data_451_is_transient_and_the_next_message_is_accepted() {
    let s = sink(SinkConfig::default()).await;
    s.set_data_rule(|n| (n < 2).then(|| "451 4.3.0 try again later".to_string()));
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["a@dest.test", "b@dest.test"]);
    for _ in 0..2 {
        let res = c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap();
        assert!(res.recipients.iter().all(|o| matches!(o, RecipientOutcome::Transient(r) if r.code == 451)), "{res:?}");
        assert_eq!(res.data_reply.as_ref().map(|r| r.code), Some(451));
    }
    let res = c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap();
    assert_eq!(res.delivered(), 2);
    assert_eq!(s.messages().len(), 1);
    assert_eq!(s.connections(), 1);
}

#[tokio::test]
async fn refused_mail_from_is_a_message_level_error() {
    let s = sink(SinkConfig::default()).await;
    s.set_mail_rule(|from| (from == "spammer@bad.test").then(|| "550 5.7.1 go away".to_string()));
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["a@dest.test"]);
    let err = c.send(&env("spammer@bad.test", &to), b"x\r\n").await.unwrap_err();
    assert!(matches!(&err, ClientError::MessageRejected(r) if r.code == 550), "{err:?}");
    assert!(err.is_permanent() && !err.is_connection_level());
    assert!(c.is_usable());
    assert_eq!(c.send(&env("ok@good.test", &to), b"x\r\n").await.unwrap().delivered(), 1);
}

#[tokio::test]
async fn a_421_anywhere_is_connection_level() {
    let s = sink(SinkConfig::default()).await;
    s.set_rcpt_rule(|_| Some("421 4.7.0 too many connections, slow down".to_string()));
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["a@dest.test"]);
    let err = c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap_err();
    assert!(matches!(&err, ClientError::ServiceUnavailable(r) if r.code == 421), "{err:?}");
    assert!(err.is_connection_level() && !err.is_permanent());
    assert!(!c.is_usable());
    assert!(matches!(c.send(&env("s@sender.test", &to), b"x\r\n").await, Err(ClientError::Unusable)));
}

#[tokio::test]
async fn rejected_greetings_say_try_the_next_host() {
    for (greeting, code) in [("421 4.3.2 busy, come back later", 421), ("554 5.7.1 no mail here", 554)] {
        let s = sink(SinkConfig { greeting: Some(greeting.into()), ..SinkConfig::default() }).await;
        let err = Connection::connect(s.addr, "sink.test", &client()).await.unwrap_err();
        match &err {
            ClientError::GreetingRejected(r) => assert_eq!(r.code, code),
            other => panic!("{other:?}"),
        }
        assert!(err.is_connection_level() && !err.is_permanent());
        assert_eq!(err.reply().map(|r| r.code), Some(code));
        if code == 554 {
            assert_eq!(s.commands(), vec!["QUIT"], "RFC 5321 §3.1: QUIT after a 554 greeting");
        }
        // The greeting can change at run time: the same sink now accepts.
        s.set_greeting(None);
        connect(&s, &client()).await.quit().await;
    }
}

#[tokio::test]
async fn ehlo_refused_falls_back_to_helo() {
    let s = sink(SinkConfig { reject_ehlo: true, ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    assert!(!c.capabilities().esmtp && !c.capabilities().pipelining);
    let to = rcpts(&["a@dest.test"]);
    assert_eq!(c.send(&env("s@sender.test", &to), TRICKY).await.unwrap().delivered(), 1);
    let commands = s.commands();
    assert_eq!(&commands[..3], ["EHLO client.test", "HELO client.test", "MAIL FROM:<s@sender.test>"]);
}

#[tokio::test]
async fn larger_than_announced_size_is_refused_without_sending() {
    let s = sink(SinkConfig { size: Some(100), ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    assert_eq!(c.capabilities().max_size(), Some(100));
    let to = rcpts(&["a@dest.test"]);
    let big = vec![b'x'; 500];
    let err = c.send(&env("s@sender.test", &to), &big).await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { size: 500, max: 100 }), "{err:?}");
    assert!(err.is_permanent() && !err.is_connection_level());
    assert!(!s.commands().iter().any(|c| c.starts_with("MAIL")));
    // A message that fits still goes.
    assert_eq!(c.send(&env("s@sender.test", &to), b"small\r\n").await.unwrap().delivered(), 1);
}

#[tokio::test]
async fn ten_messages_reuse_one_connection() {
    let s = sink(SinkConfig::default()).await;
    let mut c = connect(&s, &client()).await;
    for i in 0..10 {
        let to = rcpts(&[&format!("r{i}@dest.test")]);
        let body = format!("Subject: {i}\r\n\r\n.body {i}\r\n");
        let res = c.send(&env("s@sender.test", &to), body.as_bytes()).await.unwrap();
        assert_eq!(res.delivered(), 1);
        c.reset().await.unwrap();
    }
    c.quit().await;
    assert_eq!(s.connections(), 1);
    assert_eq!(s.max_concurrent(), 1);
    let m = s.messages();
    assert_eq!(m.len(), 10);
    for (i, msg) in m.iter().enumerate() {
        assert_eq!(msg.data, format!("Subject: {i}\r\n\r\n.body {i}\r\n").into_bytes());
        assert_eq!(msg.connection, 1);
    }
    assert_eq!(s.commands().iter().filter(|c| *c == "RSET").count(), 10);
}

#[tokio::test]
async fn bdat_is_used_when_chunking_is_offered() {
    for pipelining in [true, false] {
        let s = sink(SinkConfig { chunking: true, pipelining, ..SinkConfig::default() }).await;
        let mut c = connect(&s, &client()).await;
        let to = rcpts(&["a@dest.test"]);
        // Small (one write with the commands when pipelining) and large (after the RCPT replies).
        let mut large = b"Subject: large\r\n\r\n".to_vec();
        while large.len() < 300_000 {
            large.extend_from_slice(b".a line that starts with a dot and is not stuffed for BDAT\r\n");
        }
        for data in [TRICKY.to_vec(), large] {
            let res = c.send(&env("s@sender.test", &to), &data).await.unwrap();
            assert_eq!(res.delivered(), 1, "{res:?}");
            assert_eq!(s.messages().last().unwrap().data, data, "BDAT carries the bytes as they are");
        }
        let commands = s.commands();
        assert!(commands.iter().any(|c| c.starts_with("BDAT ") && c.ends_with(" LAST")), "{commands:?}");
        assert!(!commands.iter().any(|c| c == "DATA"));

        // And with chunking switched off in the client, DATA again.
        let mut c = connect(&s, &ClientConfig { chunking: false, ..client() }).await;
        c.send(&env("s@sender.test", &to), TRICKY).await.unwrap();
        assert!(s.commands().iter().any(|c| c == "DATA"));
    }
}

#[tokio::test]
async fn bdat_refused_for_every_recipient_keeps_the_session_in_step() {
    let s = sink(SinkConfig { chunking: true, ..SinkConfig::default() }).await;
    s.set_rcpt_rule(|r| r.starts_with("gone@").then(|| "550 5.1.1 no".to_string()));
    let mut c = connect(&s, &client()).await;
    let res = c.send(&env("s@sender.test", &rcpts(&["gone@dest.test"])), b"x\r\n").await.unwrap();
    assert_eq!(res.data_reply, None);
    assert!(matches!(res.recipients[0], RecipientOutcome::Permanent(_)));
    assert_eq!(c.send(&env("s@sender.test", &rcpts(&["ok@dest.test"])), b"y\r\n").await.unwrap().delivered(), 1);
    assert_eq!(s.messages().len(), 1);
}

#[tokio::test]
async fn blackholed_server_times_out_within_the_configured_limit() {
    let s = sink(SinkConfig { blackhole: true, ..SinkConfig::default() }).await;
    let config = ClientConfig { timeouts: Timeouts::uniform(Duration::from_millis(300)), ..client() };
    let started = Instant::now();
    let err = Connection::connect(s.addr, "sink.test", &config).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { stage: Stage::Greeting }), "{err:?}");
    assert!(err.is_connection_level());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn slow_server_within_limits_is_fine_and_over_limits_times_out() {
    let s = sink(SinkConfig { response_delay: Duration::from_millis(50), ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["a@dest.test"]);
    assert_eq!(c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap().delivered(), 1);
    s.set_response_delay(Duration::from_millis(800));
    let config =
        ClientConfig { timeouts: Timeouts { mail: Duration::from_millis(200), ..client().timeouts }, ..client() };
    let mut c = connect(&s, &config).await;
    let err = c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { stage: Stage::Mail }), "{err:?}");
    assert!(!c.is_usable());
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = Connection::connect(addr, "nobody.test", &client()).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.is_connection_level());
}

#[tokio::test]
async fn source_address_and_other_loopback_addresses() {
    let s = SinkHandle::start(any_port("127.0.0.2"), SinkConfig::default()).await;
    assert_eq!(s.addr.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
    let source: IpAddr = "127.0.0.3".parse().unwrap();
    let mut c = connect(&s, &ClientConfig { source_address: Some(source), ..client() }).await;
    assert_eq!(c.local_addr().map(|a| a.ip()), Some(source));
    assert_eq!(c.send(&env("s@sender.test", &rcpts(&["a@dest.test"])), b"x\r\n").await.unwrap().delivered(), 1);

    // One fixed port on several loopback addresses (as `delivery.port` makes the e2e tests do), and a sink
    // restarted on the same address.
    let port = s.addr.port();
    let other = SinkHandle::start(SocketAddr::new("127.0.0.4".parse().unwrap(), port), SinkConfig::default()).await;
    connect(&other, &client()).await.quit().await;
    let addr = other.addr;
    other.stop().await;
    let again = SinkHandle::start(addr, SinkConfig::default()).await;
    connect(&again, &client()).await.quit().await;
    assert_eq!(again.connections(), 1);
}

#[tokio::test]
async fn smtputf8_and_8bitmime_parameters() {
    let s = sink(SinkConfig::default()).await;
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["jürgen@dest.test"]);
    let res =
        c.send(&Envelope { needs_8bit: true, ..env("s@sender.test", &to) }, "Subject: ü\r\n\r\nü\r\n".as_bytes()).await;
    assert_eq!(res.unwrap().delivered(), 1);
    assert_eq!(s.messages()[0].mail_params, vec!["BODY=8BITMIME", "SMTPUTF8"]);

    let s = sink(SinkConfig { smtputf8: false, eightbitmime: false, ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    let err = c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap_err();
    assert!(matches!(err, ClientError::SmtpUtf8NotSupported) && err.is_permanent(), "{err:?}");
    // 8bit without 8BITMIME: sent anyway, without BODY= (no downgrade).
    let ascii = rcpts(&["a@dest.test"]);
    let res = c.send(&Envelope { needs_8bit: true, ..env("s@sender.test", &ascii) }, "ü\r\n".as_bytes()).await;
    assert_eq!(res.unwrap().delivered(), 1);
    assert!(s.messages()[0].mail_params.is_empty());
}

#[tokio::test]
async fn addresses_that_would_inject_commands_are_not_sent() {
    let s = sink(SinkConfig::default()).await;
    let mut c = connect(&s, &client()).await;
    let to = rcpts(&["a@dest.test>\r\nRCPT TO:<evil@x.test", "ok@dest.test"]);
    let res = c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap();
    assert!(matches!(&res.recipients[0], RecipientOutcome::Permanent(r) if r.code == 553));
    assert!(res.recipients[1].is_delivered());
    assert_eq!(s.messages()[0].recipients, rcpts(&["ok@dest.test"]));
    let err = c.send(&env("s@x\r\nRSET", &to), b"x\r\n").await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidAddress(_)));
    assert!(!s.commands().iter().any(|c| c.contains("evil")));
}

fn certificate() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()]).unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

#[tokio::test]
async fn opportunistic_starttls_with_a_self_signed_certificate() {
    let s = sink(SinkConfig { starttls: Some(certificate()), ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    assert!(c.is_tls());
    assert!(!c.capabilities().starttls, "capabilities come from the EHLO after TLS");
    assert!(c.capabilities().pipelining);
    let to = rcpts(&["a@dest.test"]);
    assert_eq!(c.send(&env("s@sender.test", &to), TRICKY).await.unwrap().delivered(), 1);
    c.quit().await;
    let m = s.messages();
    assert!(m[0].tls);
    assert_eq!(&m[0].data[..TRICKY.len()], TRICKY);
    assert_eq!(s.commands().iter().filter(|c| c.starts_with("EHLO")).count(), 2);

    // Required works too (no certificate check), and Disabled stays in plaintext.
    let c = connect(&s, &ClientConfig { tls: TlsPolicy::Required, ..client() }).await;
    assert!(c.is_tls());
    let c = connect(&s, &ClientConfig { tls: TlsPolicy::Disabled, ..client() }).await;
    assert!(!c.is_tls());
}

#[tokio::test]
async fn bytes_after_the_starttls_220_are_an_injection() {
    let s = sink(SinkConfig {
        starttls: Some(certificate()),
        starttls_injection: Some("250-injected\r\n250 PIPELINING\r\n".into()),
        ..SinkConfig::default()
    })
    .await;
    let err = Connection::connect(s.addr, "sink.test", &client()).await.unwrap_err();
    assert!(matches!(&err, ClientError::Protocol(m) if m.contains("injection")), "{err:?}");
    assert!(err.is_connection_level());
    assert_eq!(s.connections(), 1, "no plaintext retry after an injection");
}

#[tokio::test]
async fn failed_handshake_falls_back_to_plaintext_unless_tls_is_required() {
    let s = sink(SinkConfig { starttls: Some(certificate()), tls_garbage: true, ..SinkConfig::default() }).await;
    let mut c = connect(&s, &client()).await;
    assert!(!c.is_tls());
    assert_eq!(s.connections(), 2, "reconnected for the plaintext retry");
    let to = rcpts(&["a@dest.test"]);
    assert_eq!(c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap().delivered(), 1);
    assert!(!s.messages()[0].tls);

    let err = Connection::connect(s.addr, "sink.test", &ClientConfig { tls: TlsPolicy::Required, ..client() })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    assert!(err.is_connection_level());
    assert_eq!(s.connections(), 3, "no plaintext retry when TLS is required");
}

/// A test CA's roots and a certificate it issued for `names` (chain PEM, key PEM).
fn issued_certificate(names: &[&str]) -> (rustls::RootCertStore, (String, String)) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    (roots, (leaf.pem(), key.serialize_pem()))
}

#[tokio::test]
async fn verified_tls_needs_a_trusted_certificate_for_the_mx_name_and_never_falls_back() {
    let (roots, good_cert) = issued_certificate(&["sink.test"]);
    let (other_roots, wrong_name) = issued_certificate(&["other.test"]);
    let mut roots = roots;
    roots.roots.extend(other_roots.roots);
    let verified = ClientConfig { tls: TlsPolicy::Verified, trust: Some(TlsTrust::new(roots).unwrap()), ..client() };

    let good = sink(SinkConfig { starttls: Some(good_cert.clone()), ..SinkConfig::default() }).await;
    let mut c = connect(&good, &verified).await;
    assert!(c.is_tls());
    let to = rcpts(&["a@dest.test"]);
    assert_eq!(c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap().delivered(), 1);
    c.quit().await;
    assert!(good.messages()[0].tls);

    let refused = [
        (SinkConfig { starttls: Some(wrong_name), ..SinkConfig::default() }, "host mismatch"),
        (SinkConfig { starttls: Some(certificate()), ..SinkConfig::default() }, "untrusted"),
        (SinkConfig { starttls: Some(good_cert.clone()), tls_garbage: true, ..SinkConfig::default() }, "garbage"),
        (SinkConfig::default(), "no STARTTLS"),
    ];
    for (config, case) in refused {
        let s = sink(config).await;
        let err = Connection::connect(s.addr, "sink.test", &verified).await.unwrap_err();
        match case {
            "host mismatch" => assert!(
                matches!(err, ClientError::Certificate { failure: CertificateFailure::HostMismatch, .. }),
                "{err:?}"
            ),
            "untrusted" => assert!(
                matches!(err, ClientError::Certificate { failure: CertificateFailure::NotTrusted, .. }),
                "{err:?}"
            ),
            "garbage" => assert!(matches!(err, ClientError::Tls(_)), "{err:?}"),
            _ => assert!(matches!(err, ClientError::TlsRequired), "{err:?}"),
        }
        assert!(err.is_connection_level() && !err.is_permanent(), "{case}: {err:?}");
        assert_eq!(s.connections(), 1, "{case}: no plaintext retry");
        assert!(!s.commands().iter().any(|c| c.starts_with("MAIL")), "{case}: nothing sent");
    }

    // The reference identity is the name we were given, not whatever the certificate says; and verified TLS
    // without roots is refused rather than unverified.
    let err = Connection::connect(good.addr, "127.0.0.1", &verified).await.unwrap_err();
    assert!(matches!(err, ClientError::Certificate { failure: CertificateFailure::HostMismatch, .. }), "{err:?}");
    let err = Connection::connect(good.addr, "sink.test", &ClientConfig { trust: None, ..verified.clone() })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn required_tls_without_starttls_fails() {
    let s = sink(SinkConfig::default()).await;
    let err = Connection::connect(s.addr, "sink.test", &ClientConfig { tls: TlsPolicy::Required, ..client() })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TlsRequired), "{err:?}");
    assert!(s.messages().is_empty());
}

#[tokio::test]
async fn many_concurrent_connections_are_counted() {
    let s = sink(SinkConfig { response_delay: Duration::from_millis(20), ..SinkConfig::default() }).await;
    let config = client();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (addr, config) = (s.addr, config.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Connection::connect(addr, "sink.test", &config).await.unwrap();
            let to = vec![format!("r{i}@dest.test")];
            let envelope =
                Envelope { sender: "s@sender.test", recipients: &to, needs_8bit: false, needs_smtputf8: false };
            assert_eq!(c.send(&envelope, b"x\r\n").await.unwrap().delivered(), 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.quit().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(s.wait_for_messages(5, Duration::from_secs(5)).await);
    assert_eq!(s.connections(), 5);
    assert!(s.max_concurrent() >= 2 && s.max_concurrent() <= 5, "{}", s.max_concurrent());
}

#[tokio::test]
async fn testing_mode_delivers_whatever_verified_tls_would_say_and_keeps_what_it_would_have_refused() {
    let (roots, good_cert) = issued_certificate(&["sink.test"]);
    let (other_roots, wrong_name) = issued_certificate(&["other.test"]);
    let mut roots = roots;
    roots.roots.extend(other_roots.roots);
    let testing = ClientConfig { tls: TlsPolicy::Testing, trust: Some(TlsTrust::new(roots).unwrap()), ..client() };
    let cases = [
        (SinkConfig { starttls: Some(good_cert.clone()), ..SinkConfig::default() }, "verified", true),
        (SinkConfig { starttls: Some(wrong_name), ..SinkConfig::default() }, "host mismatch", true),
        (SinkConfig { starttls: Some(certificate()), ..SinkConfig::default() }, "untrusted", true),
        (SinkConfig { starttls: Some(good_cert), tls_garbage: true, ..SinkConfig::default() }, "garbage", false),
        (SinkConfig::default(), "no STARTTLS", false),
    ];
    for (config, case, tls) in cases {
        let s = sink(config).await;
        let mut c = connect(&s, &testing).await;
        assert_eq!(c.is_tls(), tls, "{case}");
        let failure = c.testing_failure();
        match case {
            "verified" => assert!(failure.is_none(), "{failure:?}"),
            "host mismatch" => assert!(
                matches!(failure, Some(ClientError::Certificate { failure: CertificateFailure::HostMismatch, .. })),
                "{failure:?}"
            ),
            "untrusted" => assert!(
                matches!(failure, Some(ClientError::Certificate { failure: CertificateFailure::NotTrusted, .. })),
                "{failure:?}"
            ),
            "garbage" => assert!(matches!(failure, Some(ClientError::Tls(_))), "{failure:?}"),
            _ => assert!(matches!(failure, Some(ClientError::TlsRequired)), "{failure:?}"),
        }
        // Delivered anyway: testing mode reports, it does not refuse.
        let to = rcpts(&["a@dest.test"]);
        assert_eq!(c.send(&env("s@sender.test", &to), b"x\r\n").await.unwrap().delivered(), 1, "{case}");
        c.quit().await;
        assert_eq!(s.messages().len(), 1, "{case}");
    }
}
