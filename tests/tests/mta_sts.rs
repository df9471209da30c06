//! End to end: MTA-STS (RFC 8461) with real parts on loopback — an HTTPS policy host with a certificate from a
//! test CA (given to the server as `delivery.tls_ca_file`), an in-process DNS server, and receiving SMTP sinks
//! with and without STARTTLS, with right and wrong certificates.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mta_core::dns::testing::{TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::{http_request, TestServer};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A free port (sinks of one test share it on different loopback addresses).
fn free_port() -> u16 {
    mta_tests::free_port()
}

/// A test certificate authority; leaf certificates as (chain PEM, key PEM).
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_root(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }
}

/// An HTTPS server answering `GET /.well-known/mta-sts.txt` with the policy set for the request's Host.
struct PolicyHost {
    policies: Arc<Mutex<HashMap<String, String>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyHost {
    async fn start(bind: SocketAddr, ca: &TestCa, hosts: &[&str]) -> PolicyHost {
        let (chain, key) = ca.leaf(hosts);
        let acceptor = mta_tests::tls_acceptor(&chain, &key);
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let policies: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let (p, f) = (policies.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, p, f) = (acceptor.clone(), p.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&req).to_string();
                    let host = req
                        .lines()
                        .find_map(|l| l.strip_prefix("host: ").or_else(|| l.strip_prefix("Host: ")))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = p.lock().unwrap().get(&host).cloned();
                    let resp = match body {
                        Some(b) if req.starts_with("GET /.well-known/mta-sts.txt ") => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                            b.len()
                        ),
                        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                    };
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyHost { policies, fetches, task }
    }

    fn set(&self, host: &str, policy: &str) {
        self.policies.lock().unwrap().insert(host.to_string(), policy.to_string());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mut p = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        p.push_str(&format!("mx: {m}\r\n"));
    }
    p.push_str("max_age: 86400\r\n");
    p
}

/// The server, configured for MTA-STS against `dns`, the policy host's port and the test CA.
fn server_config(dns: &TestDnsServer, smtp_port: u16, policy_port: u16, ca_file: &Path) -> String {
    format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\n\
         [delivery]\nport = {smtp_port}\nretry_intervals = [\"1s\"]\nsmtp_timeout = \"5s\"\ncircuit_open_for = \"1s\"\n\
         mta_sts = \"enforce\"\nmta_sts_port = {policy_port}\ntls_ca_file = \"{}\"\n",
        dns.addr(),
        ca_file.display()
    )
}

async fn sink(addr: &str, port: u16, config: SinkConfig) -> SinkHandle {
    SinkHandle::start(SocketAddr::new(ip(addr), port), config).await
}

fn tls_sink(ca: &TestCa, names: &[&str]) -> SinkConfig {
    SinkConfig { starttls: Some(ca.leaf(names)), ..Default::default() }
}

/// The `tls` object of the first event of `kind` for `rcpt`.
fn tls_of(events: &[serde_json::Value], kind: &str, rcpt: &str) -> serde_json::Value {
    let e = events.iter().find(|e| e["type"] == kind && e["recipient"] == rcpt);
    e.map(|e| e["tls"].clone()).unwrap_or_else(|| panic!("no {kind} event for {rcpt}: {events:#?}"))
}

fn no_mail_command(sink: &SinkHandle) -> bool {
    !sink.commands().iter().any(|c| c.to_ascii_uppercase().starts_with("MAIL"))
}

/// A zone where `domain` has MX hosts `mx` and a policy host on 127.0.0.9, announced with `id`.
fn sts_domain(zone: TestZone, domain: &str, mx: &[(u16, &str, IpAddr)], id: &str) -> TestZone {
    zone.mail_domain(domain, mx)
        .txt(&format!("_mta-sts.{domain}"), &[&format!("v=STSv1; id={id};")])
        .a(&format!("mta-sts.{domain}"), "127.0.0.9".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enforce_uses_only_the_policy_mx_over_verified_tls_and_testing_delivers_anyway() {
    let (port, policy_port) = (free_port(), free_port());
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_root(tmp.path());
    // enforce.test: the preferred MX is not in the policy (never used); the backup is, with a valid certificate.
    // testing.test: its only MX is not in the policy and offers no TLS: delivered anyway.
    // plain.test: no policy; its MX (the enforce.test receiver) offers TLS: opportunistic.
    let zone = sts_domain(
        TestZone::new("test"),
        "enforce.test",
        &[(10, "rogue.enforce.test", ip("127.0.0.2")), (20, "mx.enforce.test", ip("127.0.0.3"))],
        "1",
    );
    let zone = sts_domain(zone, "testing.test", &[(10, "mx.testing.test", ip("127.0.0.4"))], "1").mx(
        "plain.test",
        10,
        "mx.enforce.test",
    );
    let rogue = sink("127.0.0.2", port, tls_sink(&ca, &["rogue.enforce.test"])).await;
    let good = sink("127.0.0.3", port, tls_sink(&ca, &["mx.enforce.test"])).await;
    let plain = sink("127.0.0.4", port, SinkConfig::default()).await;
    let host = PolicyHost::start(
        SocketAddr::new(ip("127.0.0.9"), policy_port),
        &ca,
        &["mta-sts.enforce.test", "mta-sts.testing.test"],
    )
    .await;
    host.set("mta-sts.enforce.test", &policy("enforce", &["mx.enforce.test"]));
    host.set("mta-sts.testing.test", &policy("testing", &["other.testing.test"]));
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let server = tokio::task::block_in_place(|| TestServer::start(&server_config(&dns, port, policy_port, &ca_file)));

    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@enforce.test", "sts"));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "c@testing.test", "sts"));
    assert!(good.wait_for_messages(1, Duration::from_secs(15)).await, "{}", server.stderr());
    assert!(good.messages()[0].tls, "delivered over TLS");
    assert_eq!(rogue.connections(), 0, "the MX outside the policy is never contacted");
    assert!(plain.wait_for_messages(1, Duration::from_secs(15)).await, "testing mode delivers");
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "d@plain.test", "sts"));
    assert!(good.wait_for_messages(2, Duration::from_secs(15)).await, "{}", server.stderr());

    // Each delivery event says which policy applied and whether TLS was used.
    let events = mta_tests::wait_events(&server, Duration::from_secs(10), |e| {
        ["b@enforce.test", "c@testing.test", "d@plain.test"]
            .iter()
            .all(|r| mta_tests::count_events(e, "delivery", r) == 1)
    })
    .await;
    let tls = |r: &str| tls_of(&events, "delivery", r);
    assert_eq!(tls("b@enforce.test"), serde_json::json!({"policy": "mta-sts", "mode": "enforce", "tls": true}));
    // The testing policy's MX is not listed (and offers no TLS): delivered, and the event says what enforce
    // would have refused.
    assert_eq!(
        tls("c@testing.test"),
        serde_json::json!({"policy": "mta-sts", "mode": "testing", "tls": false, "failure": "validation-failure"})
    );
    assert_eq!(tls("d@plain.test"), serde_json::json!({"policy": "none", "mode": null, "tls": true}));

    let view =
        tokio::task::block_in_place(|| http_request(server.http, "GET", "/api/v1/tls/policy/enforce.test", &[], b""));
    assert_eq!(view.status, 200, "{}", view.text());
    let v = view.json();
    assert_eq!(v["source"], "mta-sts");
    assert_eq!(v["mode"], "enforce");
    assert_eq!(v["mx"], serde_json::json!(["mx.enforce.test"]));
    assert!(v["expires"].is_string());
    let none =
        tokio::task::block_in_place(|| http_request(server.http, "GET", "/api/v1/tls/policy/nothing.test", &[], b""))
            .json();
    assert_eq!(none["source"], "none");
    assert_eq!(host.fetches(), 2, "one fetch per domain: the API reads the cached policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enforce_defers_on_a_wrong_certificate_until_it_is_fixed_and_never_sends_in_plaintext() {
    let (port, policy_port) = (free_port(), free_port());
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_root(tmp.path());
    let zone = sts_domain(TestZone::new("test"), "dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))], "1");
    let zone = sts_domain(zone, "stripped.test", &[(10, "mx.stripped.test", ip("127.0.0.3"))], "1");
    // A certificate from the right CA for another name, and a self-signed one for the right name.
    let mut wrong = sink("127.0.0.2", port, tls_sink(&ca, &["other.test"])).await;
    // STARTTLS stripped: the receiver (or a man in the middle) does not offer it.
    let stripped = sink("127.0.0.3", port, SinkConfig::default()).await;
    let host = PolicyHost::start(
        SocketAddr::new(ip("127.0.0.9"), policy_port),
        &ca,
        &["mta-sts.dest.test", "mta-sts.stripped.test"],
    )
    .await;
    host.set("mta-sts.dest.test", &policy("enforce", &["mx.dest.test"]));
    host.set("mta-sts.stripped.test", &policy("enforce", &["*.stripped.test"]));
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let server = tokio::task::block_in_place(|| TestServer::start(&server_config(&dns, port, policy_port, &ca_file)));

    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@dest.test", "sts"));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "c@stripped.test", "sts"));
    let events = mta_tests::wait_events(&server, Duration::from_secs(20), |e| {
        mta_tests::count_events(e, "transient_failure", "b@dest.test") >= 2
            && mta_tests::count_events(e, "transient_failure", "c@stripped.test") >= 2
    })
    .await;
    assert!(mta_tests::count_events(&events, "transient_failure", "b@dest.test") >= 2, "{events:#?}");
    assert!(mta_tests::count_events(&events, "transient_failure", "c@stripped.test") >= 2, "{events:#?}");
    assert_eq!(
        mta_tests::count_events(&events, "bounce", "b@dest.test")
            + mta_tests::count_events(&events, "bounce", "c@stripped.test"),
        0
    );
    let failure = events.iter().find(|e| e["type"] == "transient_failure" && e["recipient"] == "b@dest.test").unwrap();
    assert!(failure["response"].as_str().unwrap().contains("4.7.5"), "{failure}");
    assert_eq!(
        tls_of(&events, "transient_failure", "b@dest.test"),
        serde_json::json!({"policy": "mta-sts", "mode": "enforce", "tls": false, "failure": "certificate-host-mismatch"})
    );
    assert_eq!(
        tls_of(&events, "transient_failure", "c@stripped.test"),
        serde_json::json!({"policy": "mta-sts", "mode": "enforce", "tls": false, "failure": "starttls-not-supported"})
    );
    assert!(wrong.messages().is_empty() && no_mail_command(&wrong), "nothing sent to the wrong certificate");
    assert!(stripped.messages().is_empty() && no_mail_command(&stripped), "nothing sent in plaintext");
    assert!(stripped.connections() >= 1, "the stripped MX was tried");

    // A self-signed certificate for the right name is refused too.
    wrong.stop().await;
    let key = KeyPair::generate().unwrap();
    let self_signed = CertificateParams::new(vec!["mx.dest.test".to_string()]).unwrap().self_signed(&key).unwrap();
    wrong = sink(
        "127.0.0.2",
        port,
        SinkConfig { starttls: Some((self_signed.pem(), key.serialize_pem())), ..Default::default() },
    )
    .await;
    let seen = mta_tests::count_events(&server.events(), "transient_failure", "b@dest.test");
    mta_tests::wait_events(&server, Duration::from_secs(20), |e| {
        mta_tests::count_events(e, "transient_failure", "b@dest.test") > seen
    })
    .await;
    assert!(wrong.messages().is_empty() && no_mail_command(&wrong));

    // Fixed: the right certificate from the trusted CA. Delivered, over TLS.
    wrong.stop().await;
    let fixed = sink("127.0.0.2", port, tls_sink(&ca, &["mx.dest.test"])).await;
    assert!(fixed.wait_for_messages(1, Duration::from_secs(20)).await, "{}", server.stderr());
    assert!(fixed.messages()[0].tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_cache_survives_a_restart() {
    let (port, policy_port) = (free_port(), free_port());
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_root(tmp.path());
    let zone = sts_domain(TestZone::new("test"), "dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))], "1");
    let good = sink("127.0.0.2", port, tls_sink(&ca, &["mx.dest.test"])).await;
    let host = PolicyHost::start(SocketAddr::new(ip("127.0.0.9"), policy_port), &ca, &["mta-sts.dest.test"]).await;
    host.set("mta-sts.dest.test", &policy("enforce", &["mx.dest.test"]));
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(&dns, port, policy_port, &ca_file);
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(dir.path(), &config, None, None));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@dest.test", "sts"));
    assert!(good.wait_for_messages(1, Duration::from_secs(15)).await, "{}", server.stderr());
    assert_eq!(host.fetches(), 1);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    drop(server);

    // The policy host is gone; the cached policy still applies after the restart (no plaintext either).
    drop(host);
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(dir.path(), &config, None, None));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "c@dest.test", "sts"));
    assert!(good.wait_for_messages(2, Duration::from_secs(15)).await, "{}", server.stderr());
    assert!(good.messages().iter().all(|m| m.tls));
    let v = tokio::task::block_in_place(|| http_request(server.http, "GET", "/api/v1/tls/policy/dest.test", &[], b""))
        .json();
    assert_eq!(v["mode"], "enforce", "{v}");
    assert_eq!(v["id"], "1");
    server.sigterm();
    let _ = server.wait_exit(Duration::from_secs(10));
}

/// A man in the middle: forwards TCP from `listen` to `target`, overwriting `STARTTLS` in the server's replies
/// (as seen in real downgrade attacks) so the client believes it is not offered.
async fn stripping_proxy(listen: SocketAddr, target: SocketAddr) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                let (client_r, mut client_w) = client.into_split();
                let (server_r, mut server_w) = server.into_split();
                let up = tokio::spawn(async move {
                    let mut client_r = client_r;
                    let _ = tokio::io::copy(&mut client_r, &mut server_w).await;
                });
                let mut lines = BufReader::new(server_r);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match lines.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if let Some(at) = line.windows(8).position(|w| w.eq_ignore_ascii_case(b"STARTTLS")) {
                        line[at..at + 8].copy_from_slice(b"XXXXXXXA");
                    }
                    if client_w.write_all(&line).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enforce_defers_when_a_man_in_the_middle_strips_starttls() {
    let (port, policy_port) = (free_port(), free_port());
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_root(tmp.path());
    // Both domains' MX is the proxy (127.0.0.5) in front of a receiver with a valid certificate (127.0.0.6).
    let zone = sts_domain(TestZone::new("test"), "dest.test", &[(10, "mx.dest.test", ip("127.0.0.5"))], "1").mx(
        "plain.test",
        10,
        "mx.dest.test",
    );
    let receiver = sink("127.0.0.6", port, tls_sink(&ca, &["mx.dest.test"])).await;
    let proxy = stripping_proxy(SocketAddr::new(ip("127.0.0.5"), port), SocketAddr::new(ip("127.0.0.6"), port)).await;
    let host = PolicyHost::start(SocketAddr::new(ip("127.0.0.9"), policy_port), &ca, &["mta-sts.dest.test"]).await;
    host.set("mta-sts.dest.test", &policy("enforce", &["mx.dest.test"]));
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let server = tokio::task::block_in_place(|| TestServer::start(&server_config(&dns, port, policy_port, &ca_file)));

    // Control: without a policy the stripped session goes through in plaintext (what the attack achieves).
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "a@plain.test", "sts"));
    assert!(receiver.wait_for_messages(1, Duration::from_secs(15)).await, "{}", server.stderr());
    assert!(!receiver.messages()[0].tls, "the proxy does strip STARTTLS");

    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@dest.test", "sts"));
    let events = mta_tests::wait_events(&server, Duration::from_secs(20), |e| {
        mta_tests::count_events(e, "transient_failure", "b@dest.test") >= 2
    })
    .await;
    assert!(mta_tests::count_events(&events, "transient_failure", "b@dest.test") >= 2, "{events:#?}");
    assert_eq!(
        mta_tests::count_events(&events, "delivery", "b@dest.test")
            + mta_tests::count_events(&events, "bounce", "b@dest.test"),
        0
    );
    assert_eq!(receiver.messages().len(), 1, "nothing more sent through the stripping proxy");
    let mails = receiver.commands().iter().filter(|c| c.to_ascii_uppercase().starts_with("MAIL")).count();
    assert_eq!(mails, 1, "only the control message's MAIL FROM");

    // The attacker leaves: delivered, verified.
    proxy.abort();
    drop(receiver);
    let direct = sink("127.0.0.5", port, tls_sink(&ca, &["mx.dest.test"])).await;
    assert!(direct.wait_for_messages(1, Duration::from_secs(20)).await, "{}", server.stderr());
    assert!(direct.messages()[0].tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enforce_defers_on_an_expired_certificate_and_says_why() {
    let (port, policy_port) = (free_port(), free_port());
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_root(tmp.path());
    let zone = sts_domain(TestZone::new("test"), "dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))], "1");
    // The right name, the trusted CA, but expired since 2021.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["mx.dest.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.signed_by(&key, &ca.issuer).unwrap();
    let mx = sink(
        "127.0.0.2",
        port,
        SinkConfig { starttls: Some((expired.pem(), key.serialize_pem())), ..Default::default() },
    )
    .await;
    let host = PolicyHost::start(SocketAddr::new(ip("127.0.0.9"), policy_port), &ca, &["mta-sts.dest.test"]).await;
    host.set("mta-sts.dest.test", &policy("enforce", &["mx.dest.test"]));
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let server = tokio::task::block_in_place(|| TestServer::start(&server_config(&dns, port, policy_port, &ca_file)));

    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@dest.test", "sts"));
    let events = mta_tests::wait_events(&server, Duration::from_secs(20), |e| {
        mta_tests::count_events(e, "transient_failure", "b@dest.test") >= 2
    })
    .await;
    assert!(mta_tests::count_events(&events, "transient_failure", "b@dest.test") >= 2, "{events:#?}");
    assert_eq!(
        mta_tests::count_events(&events, "bounce", "b@dest.test")
            + mta_tests::count_events(&events, "delivery", "b@dest.test"),
        0
    );
    let failure = events.iter().find(|e| e["type"] == "transient_failure" && e["recipient"] == "b@dest.test").unwrap();
    let response = failure["response"].as_str().unwrap();
    assert!(response.contains("4.7.5"), "{failure}");
    assert!(response.contains("mta-sts policy: certificate-expired"), "the event says which policy and why: {failure}");
    assert!(mx.messages().is_empty() && no_mail_command(&mx), "nothing sent past an expired certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_is_refreshed_before_it_expires() {
    let (port, policy_port) = (free_port(), free_port());
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_root(tmp.path());
    let zone = sts_domain(TestZone::new("test"), "dest.test", &[(10, "mx.dest.test", ip("127.0.0.2"))], "1");
    let good = sink("127.0.0.2", port, tls_sink(&ca, &["mx.dest.test"])).await;
    let host = PolicyHost::start(SocketAddr::new(ip("127.0.0.9"), policy_port), &ca, &["mta-sts.dest.test"]).await;
    // max_age 12 s: the refresh window is its last quarter (the last 3 s).
    let short = policy("enforce", &["mx.dest.test"]).replace("max_age: 86400", "max_age: 12");
    host.set("mta-sts.dest.test", &short);
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let server = tokio::task::block_in_place(|| TestServer::start(&server_config(&dns, port, policy_port, &ca_file)));
    let view = || {
        tokio::task::block_in_place(|| http_request(server.http, "GET", "/api/v1/tls/policy/dest.test", &[], b""))
            .json()
    };

    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "a@dest.test", "sts"));
    assert!(good.wait_for_messages(1, Duration::from_secs(15)).await, "{}", server.stderr());
    let fetched_at = Instant::now();
    assert_eq!(host.fetches(), 1);
    let first = view();
    assert_eq!(first["mode"], "enforce", "{first}");
    // Still fresh: a lookup uses the cache, nothing is fetched.
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@dest.test", "sts"));
    assert!(good.wait_for_messages(2, Duration::from_secs(15)).await);
    assert_eq!(host.fetches(), 1, "one fetch per max_age while the policy is fresh");

    // In the last quarter of max_age (10 s in; it expires 11-12 s after the fetch, counted in whole seconds) a
    // lookup refreshes it in the background.
    tokio::time::sleep(Duration::from_millis(10_000).saturating_sub(fetched_at.elapsed())).await;
    let _ = view();
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.fetches() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(host.fetches(), 2, "refreshed before expiry");
    assert!(fetched_at.elapsed() < Duration::from_secs(11), "the refresh came before the policy expired");
    let refreshed = view();
    assert_ne!(refreshed["expires"], first["expires"], "{refreshed}");
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "c@dest.test", "sts"));
    assert!(good.wait_for_messages(3, Duration::from_secs(15)).await);
    assert!(good.messages().iter().all(|m| m.tls));
}
