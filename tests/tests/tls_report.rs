//! End to end: TLS reporting (RFC 8460). Two DANE destinations (a loopback DNS server behind a proxy that
//! plays the validating resolver, as in `dane.rs`): one whose receiver matches its TLSA record (a successful
//! session), one whose does not (a failed one, `validation-failure`). Both publish `_smtp._tls` with an HTTPS
//! rua (a loopback HTTPS server with a certificate from a test CA) and a mailto rua (an SMTP sink). After the
//! period (`tls_report.interval` in seconds) both reports arrive at both, with the right counts.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use mta_core::dns::testing::{FaultyProxy, TestDnsServer, TestZone};
use mta_tests::sink::{SinkConfig, SinkHandle};
use mta_tests::TestServer;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The POSTs an endpoint received: (request head, body).
type Posts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTPS server (certificate from a test CA) keeping every POST it answers `200`; the first `fail_first`
/// POSTs get `500`. It also serves MTA-STS policies (`GET /.well-known/mta-sts.txt`) by Host.
struct ReportEndpoint {
    posts: Posts,
    /// POSTs answered 500 so far.
    refused: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReportEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReportEndpoint {
    async fn start(bind: SocketAddr, chain: &str, key: &str) -> ReportEndpoint {
        ReportEndpoint::serving(bind, chain, key, 0, Vec::new()).await
    }

    async fn serving(
        bind: SocketAddr,
        chain: &str,
        key: &str,
        fail_first: usize,
        policies: Vec<(String, String)>,
    ) -> ReportEndpoint {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let acceptor = mta_tests::tls_acceptor(chain, key);
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let posts: Posts = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let (p, r) = (posts.clone(), refused.clone());
        let policies = Arc::new(policies);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, p, r, policies) = (acceptor.clone(), p.clone(), r.clone(), policies.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Bounded: 1 MiB at most, then the head's Content-Length decides.
                    let head_end = loop {
                        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        if req.len() > 1 << 20 {
                            return;
                        }
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&req[..head_end]).to_string();
                    if head.starts_with("GET /.well-known/mta-sts.txt ") {
                        let host = head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                        });
                        let body = policies.iter().find(|(h, _)| Some(h) == host.as_ref()).map(|(_, b)| b.clone());
                        let resp = match body {
                            Some(b) => format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                                b.len()
                            ),
                            None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                        };
                        let _ = tls.write_all(resp.as_bytes()).await;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while req.len() < head_end + len && req.len() < 1 << 20 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = req[head_end..(head_end + len).min(req.len())].to_vec();
                    let refuse =
                        r.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < fail_first).then_some(n + 1));
                    let status = if refuse.is_ok() {
                        "500 Internal Server Error"
                    } else {
                        p.lock().unwrap().push((head, body));
                        "200 OK"
                    };
                    let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        ReportEndpoint { posts, refused, task }
    }

    fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn posts(&self) -> Vec<(String, Vec<u8>)> {
        self.posts.lock().unwrap().clone()
    }
}

fn gunzip(gz: &[u8]) -> serde_json::Value {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

/// The gzipped report attached to a mailed report (RFC 8460 §5.3).
fn attached_report(mail: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(mail);
    let part = text.split("Content-Type: application/tlsrpt+gzip").nth(1).expect("tlsrpt+gzip part");
    let b64: String = part
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .concat();
    gunzip(&base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap())
}

fn report_for<'a>(reports: &'a [serde_json::Value], domain: &str) -> Option<&'a serde_json::Value> {
    reports.iter().find(|r| r["policies"][0]["policy"]["policy-domain"] == domain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_reports_with_the_right_counts_reach_an_https_endpoint_and_a_mailto_receiver() {
    let (port, https_port) = (mta_tests::free_port(), mta_tests::free_port());
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let endpoint_key = KeyPair::generate().unwrap();
    let endpoint_cert =
        CertificateParams::new(vec!["report.test".to_string()]).unwrap().signed_by(&endpoint_key, &ca).unwrap();
    let endpoint = ReportEndpoint::start(
        SocketAddr::new(ip("127.0.0.9"), https_port),
        &endpoint_cert.pem(),
        &endpoint_key.serialize_pem(),
    )
    .await;

    let good_cert = mta_tests::self_signed("mx.good.test");
    let bad_cert = mta_tests::self_signed("mx.bad.test");
    let stranger = KeyPair::generate().unwrap().subject_public_key_info();
    let rua = format!("v=TLSRPTv1; rua=https://report.test:{https_port}/tlsrpt,mailto:tlsrpt@reports.test");
    let zone = TestZone::new("test")
        .ttl(1)
        .mail_domain("good.test", &[(10, "mx.good.test", ip("127.0.0.2"))])
        .tlsa("_25._tcp.mx.good.test", 3, 1, 1, Sha256::digest(&good_cert.2).to_vec())
        .txt("_smtp._tls.good.test", &[&rua])
        .mail_domain("bad.test", &[(10, "mx.bad.test", ip("127.0.0.3"))])
        .tlsa("_25._tcp.mx.bad.test", 3, 1, 1, Sha256::digest(&stranger).to_vec())
        .txt("_smtp._tls.bad.test", &[&rua])
        .mail_domain("reports.test", &[(10, "mx.reports.test", ip("127.0.0.6"))])
        .a("report.test", "127.0.0.9".parse().unwrap());
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let resolver = FaultyProxy::start(dns.addr()).await.unwrap();
    resolver.set_authenticated_names(&["good.test", "_25._tcp.mx.good.test", "bad.test", "_25._tcp.mx.bad.test"]);
    let tls_sink = |cert: &(String, String, Vec<u8>)| SinkConfig {
        starttls: Some((cert.0.clone(), cert.1.clone())),
        ..Default::default()
    };
    let good = SinkHandle::start(SocketAddr::new(ip("127.0.0.2"), port), tls_sink(&good_cert)).await;
    let bad = SinkHandle::start(SocketAddr::new(ip("127.0.0.3"), port), tls_sink(&bad_cert)).await;
    let mailbox = SinkHandle::start(SocketAddr::new(ip("127.0.0.6"), port), SinkConfig::default()).await;
    // One attempt per message (the retry is an hour away), so the failed-session count is exact.
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\ndnssec = \"trust-ad\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1h\"]\nsmtp_timeout = \"5s\"\ntls_ca_file = \"{}\"\n\
         [tls_report]\nenabled = true\ninterval = \"3s\"\norganization = \"Test Sender\"\n\
         contact = \"tlsrpt-admin@sender.test\"\n",
        resolver.addr(),
        ca_file.display()
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));

    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "a@good.test", "tlsrpt"));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "b@bad.test", "tlsrpt"));
    assert!(good.wait_for_messages(1, Duration::from_secs(15)).await, "{}", server.stderr());

    // Both reports at the HTTPS endpoint, gzipped JSON with the RFC 8460 content type.
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint.posts().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = endpoint.posts();
    assert_eq!(posts.len(), 2, "{}", server.stderr());
    for (head, _) in &posts {
        assert!(head.starts_with("POST /tlsrpt "), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/tlsrpt+gzip"), "{head}");
    }
    let uploaded: Vec<serde_json::Value> = posts.iter().map(|(_, body)| gunzip(body)).collect();
    let check = |reports: &[serde_json::Value]| {
        let ok = report_for(reports, "good.test").expect("a report for good.test");
        assert_eq!(ok["organization-name"], "Test Sender");
        assert_eq!(ok["contact-info"], "tlsrpt-admin@sender.test");
        assert!(ok["date-range"]["start-datetime"].is_string() && ok["report-id"].is_string(), "{ok}");
        let p = &ok["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "tlsa", "{ok}");
        assert_eq!(p["policy"]["mx-host"], serde_json::json!(["mx.good.test"]));
        assert_eq!(p["summary"]["total-successful-session-count"], 1, "{ok}");
        assert_eq!(p["summary"]["total-failure-session-count"], 0, "{ok}");
        let failed = report_for(reports, "bad.test").expect("a report for bad.test");
        let p = &failed["policies"][0];
        assert_eq!(p["summary"]["total-successful-session-count"], 0, "{failed}");
        assert_eq!(p["summary"]["total-failure-session-count"], 1, "{failed}");
        let detail = &p["failure-details"][0];
        assert_eq!(detail["result-type"], "validation-failure", "{failed}");
        assert_eq!(detail["receiving-mx-hostname"], "mx.bad.test");
        assert_eq!(detail["receiving-ip"], "127.0.0.3");
        assert_eq!(detail["failed-session-count"], 1);
    };
    check(&uploaded);

    // And by mail, through our own queue: RFC 8460 §5.3 headers and the gzipped report attached.
    assert!(mailbox.wait_for_messages(2, Duration::from_secs(20)).await, "{}", server.stderr());
    let mails = mailbox.messages();
    assert!(mails.iter().all(|m| m.recipients == vec!["tlsrpt@reports.test".to_string()]));
    for m in &mails {
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.contains("TLS-Report-Domain: "), "{text}");
        assert!(text.contains("TLS-Report-Submitter: Test Sender"), "{text}");
        assert!(text.contains("report-type=\"tlsrpt\""), "{text}");
    }
    let mailed: Vec<serde_json::Value> = mails.iter().map(|m| attached_report(&m.data)).collect();
    check(&mailed);
    assert!(bad.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_period_s_counts_survive_a_kill_9() {
    let (port, https_port) = (mta_tests::free_port(), mta_tests::free_port());
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let endpoint_key = KeyPair::generate().unwrap();
    let endpoint_cert =
        CertificateParams::new(vec!["report.test".to_string()]).unwrap().signed_by(&endpoint_key, &ca).unwrap();
    let endpoint = ReportEndpoint::start(
        SocketAddr::new(ip("127.0.0.9"), https_port),
        &endpoint_cert.pem(),
        &endpoint_key.serialize_pem(),
    )
    .await;
    let good_cert = mta_tests::self_signed("mx.good.test");
    let zone = TestZone::new("test")
        .ttl(1)
        .mail_domain("good.test", &[(10, "mx.good.test", ip("127.0.0.2"))])
        .tlsa("_25._tcp.mx.good.test", 3, 1, 1, Sha256::digest(&good_cert.2).to_vec())
        .txt("_smtp._tls.good.test", &[&format!("v=TLSRPTv1; rua=https://report.test:{https_port}/tlsrpt")])
        .a("report.test", "127.0.0.9".parse().unwrap());
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let resolver = FaultyProxy::start(dns.addr()).await.unwrap();
    resolver.set_authenticated_names(&["good.test", "_25._tcp.mx.good.test"]);
    let good = SinkHandle::start(
        SocketAddr::new(ip("127.0.0.2"), port),
        SinkConfig { starttls: Some((good_cert.0.clone(), good_cert.1.clone())), ..Default::default() },
    )
    .await;
    // 12 s periods (aligned on multiples of 12 s of Unix time), counts flushed every 3 s.
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\ndnssec = \"trust-ad\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1h\"]\nsmtp_timeout = \"5s\"\ntls_ca_file = \"{}\"\n\
         [tls_report]\nenabled = true\ninterval = \"12s\"\n",
        resolver.addr(),
        ca_file.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(dir.path(), &config, None, None));
    // Start at the beginning of a period, so the kill and the restart fall inside it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    tokio::time::sleep(Duration::from_millis(12_200 - (now.as_millis() % 12_000) as u64)).await;
    let period_start = Instant::now();
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "a@good.test", "tlsrpt"));
    assert!(good.wait_for_messages(1, Duration::from_secs(5)).await, "{}", server.stderr());
    // Two flush ticks, then a crash well before the period ends.
    tokio::time::sleep(Duration::from_millis(7_000).saturating_sub(period_start.elapsed())).await;
    assert!(period_start.elapsed() < Duration::from_secs(9), "the test machine is too slow for this period");
    assert!(endpoint.posts().is_empty(), "no report before the period ends");
    server.kill9();
    drop(server);
    let server = tokio::task::block_in_place(|| TestServer::start_in(dir.path(), &config, None, None));

    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint.posts().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = endpoint.posts();
    assert_eq!(posts.len(), 1, "{}", server.stderr());
    let report = gunzip(&posts[0].1);
    let p = &report["policies"][0];
    assert_eq!(p["policy"]["policy-domain"], "good.test", "{report}");
    assert_eq!(p["summary"]["total-successful-session-count"], 1, "the count made before the crash: {report}");
    assert_eq!(p["summary"]["total-failure-session-count"], 0, "{report}");
}

/// A test CA and the PEM of a leaf it signs for `names`: (chain, key).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    (params.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
}

fn test_ca(dir: &std::path::Path) -> (CertifiedIssuer<'static, KeyPair>, std::path::PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (ca, ca_file)
}

/// Sleeps until 200 ms into the next period of `secs` seconds of Unix time (periods are aligned on them), so
/// what the test does next falls inside one period.
async fn start_of_period(secs: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let period = secs * 1000;
    tokio::time::sleep(Duration::from_millis(period + 200 - (now.as_millis() % u128::from(period)) as u64)).await;
}

async fn wait_posts(endpoint: &ReportEndpoint, n: usize, limit: Duration) -> Vec<(String, Vec<u8>)> {
    let deadline = Instant::now() + limit;
    while endpoint.posts().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    endpoint.posts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn testing_mode_sessions_and_a_failed_tlsa_lookup_are_counted_with_their_result_types() {
    let (port, https_port) = (mta_tests::free_port(), mta_tests::free_port());
    let tmp = tempfile::tempdir().unwrap();
    let (ca, ca_file) = test_ca(tmp.path());
    // One HTTPS host on 127.0.0.9: the rua and both MTA-STS policy hosts (mode testing).
    let (chain, key) = leaf(&ca, &["report.test", "mta-sts.sts-ok.test", "mta-sts.sts-bad.test"]);
    let testing = |mx: &str| format!("version: STSv1\r\nmode: testing\r\nmx: {mx}\r\nmax_age: 86400\r\n");
    let policies = vec![
        ("mta-sts.sts-ok.test".to_string(), testing("mx.sts-ok.test")),
        ("mta-sts.sts-bad.test".to_string(), testing("mx.sts-bad.test")),
    ];
    let endpoint =
        ReportEndpoint::serving(SocketAddr::new(ip("127.0.0.9"), https_port), &chain, &key, 0, policies).await;
    let rua = format!("v=TLSRPTv1; rua=https://report.test:{https_port}/tlsrpt");
    // sts-ok.test: testing policy, listed MX with a valid certificate (a successful session).
    // sts-bad.test: testing policy, listed MX whose certificate names another host (delivered, a failure).
    // servfail.test: authenticated MX whose TLSA lookup fails (SERVFAIL from the validating resolver).
    // unusable.test: authenticated TLSA records, none usable for SMTP (PKIX-EE): delivered over TLS, reported.
    let mut zone = TestZone::new("test").ttl(1).a("report.test", "127.0.0.9".parse().unwrap());
    for (domain, mx, addr) in
        [("sts-ok.test", "mx.sts-ok.test", "127.0.0.4"), ("sts-bad.test", "mx.sts-bad.test", "127.0.0.5")]
    {
        zone = zone
            .mail_domain(domain, &[(10, mx, ip(addr))])
            .txt(&format!("_mta-sts.{domain}"), &["v=STSv1; id=1;"])
            .a(&format!("mta-sts.{domain}"), "127.0.0.9".parse().unwrap())
            .txt(&format!("_smtp._tls.{domain}"), &[&rua]);
    }
    let zone = zone
        .mail_domain("servfail.test", &[(10, "mx.servfail.test", ip("127.0.0.7"))])
        .txt("_smtp._tls.servfail.test", &[&rua])
        .mail_domain("unusable.test", &[(10, "mx.unusable.test", ip("127.0.0.8"))])
        .tlsa("_25._tcp.mx.unusable.test", 1, 1, 1, vec![7; 32])
        .txt("_smtp._tls.unusable.test", &[&rua]);
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let resolver = FaultyProxy::start(dns.addr()).await.unwrap();
    resolver.set_authenticated_names(&["servfail.test", "unusable.test", "_25._tcp.mx.unusable.test"]);
    resolver.set_servfail_names(&["_25._tcp.mx.servfail.test"]);
    let tls_sink = |cert: (String, String)| SinkConfig { starttls: Some(cert), ..Default::default() };
    let ok = SinkHandle::start(SocketAddr::new(ip("127.0.0.4"), port), tls_sink(leaf(&ca, &["mx.sts-ok.test"]))).await;
    let bad = SinkHandle::start(SocketAddr::new(ip("127.0.0.5"), port), tls_sink(leaf(&ca, &["other.test"]))).await;
    let dane_mx = SinkHandle::start(SocketAddr::new(ip("127.0.0.7"), port), SinkConfig::default()).await;
    let unusable =
        SinkHandle::start(SocketAddr::new(ip("127.0.0.8"), port), tls_sink(leaf(&ca, &["mx.unusable.test"]))).await;
    // One attempt per message (the retry is an hour away), so every count is exact.
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\ndnssec = \"trust-ad\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1h\"]\nsmtp_timeout = \"5s\"\ntls_ca_file = \"{}\"\n\
         mta_sts_port = {https_port}\n[tls_report]\nenabled = true\ninterval = \"8s\"\n",
        resolver.addr(),
        ca_file.display()
    );
    let server = tokio::task::block_in_place(|| TestServer::start(&config));
    start_of_period(8).await;
    for rcpt in ["a@sts-ok.test", "b@sts-bad.test", "c@servfail.test", "d@unusable.test"] {
        tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, rcpt, "tlsrpt"));
    }
    assert!(ok.wait_for_messages(1, Duration::from_secs(10)).await, "{}", server.stderr());
    assert!(bad.wait_for_messages(1, Duration::from_secs(10)).await, "testing mode delivers past a mismatch");
    assert!(bad.messages()[0].tls);
    assert!(unusable.wait_for_messages(1, Duration::from_secs(10)).await, "unusable TLSA: delivered over TLS");
    assert!(unusable.messages()[0].tls);

    let events = mta_tests::wait_events(&server, Duration::from_secs(10), |e| {
        mta_tests::count_events(e, "transient_failure", "c@servfail.test") == 1
            && mta_tests::count_events(e, "delivery", "b@sts-bad.test") == 1
            && mta_tests::count_events(e, "delivery", "d@unusable.test") == 1
    })
    .await;
    let tls = |kind: &str, rcpt: &str| {
        let e = events.iter().find(|e| e["type"] == kind && e["recipient"] == rcpt);
        e.map(|e| e["tls"].clone()).unwrap_or_else(|| panic!("no {kind} for {rcpt}: {events:#?}"))
    };
    assert_eq!(
        tls("delivery", "b@sts-bad.test"),
        serde_json::json!({"policy": "mta-sts", "mode": "testing", "tls": true, "failure": "certificate-host-mismatch"})
    );
    assert_eq!(
        tls("transient_failure", "c@servfail.test"),
        serde_json::json!({"policy": "dane", "mode": "enforce", "tls": false, "failure": "dnssec-invalid"})
    );
    assert_eq!(
        tls("delivery", "d@unusable.test"),
        serde_json::json!({"policy": "dane", "mode": "enforce", "tls": true, "failure": "tlsa-invalid"})
    );
    assert_eq!(dane_mx.connections(), 0, "deferred before connecting: no DANE, no delivery without it");

    let posts = wait_posts(&endpoint, 4, Duration::from_secs(30)).await;
    assert_eq!(posts.len(), 4, "{}", server.stderr());
    let reports: Vec<serde_json::Value> = posts.iter().map(|(_, body)| gunzip(body)).collect();
    let policy_of =
        |domain: &str| report_for(&reports, domain).unwrap_or_else(|| panic!("{reports:#?}"))["policies"][0].clone();

    let p = policy_of("sts-ok.test");
    assert_eq!(p["policy"]["policy-type"], "sts", "{p}");
    assert!(p["policy"]["policy-string"].as_array().unwrap().contains(&"mode: testing".into()), "{p}");
    assert_eq!(
        p["summary"],
        serde_json::json!({"total-successful-session-count": 1, "total-failure-session-count": 0})
    );
    assert_eq!(p["failure-details"], serde_json::json!([]));

    let p = policy_of("sts-bad.test");
    assert_eq!(p["policy"]["policy-type"], "sts", "{p}");
    assert_eq!(
        p["summary"],
        serde_json::json!({"total-successful-session-count": 0, "total-failure-session-count": 1})
    );
    assert_eq!(
        p["failure-details"],
        serde_json::json!([{"result-type": "certificate-host-mismatch", "receiving-mx-hostname": "mx.sts-bad.test",
            "receiving-ip": "127.0.0.5", "failed-session-count": 1}])
    );

    let p = policy_of("servfail.test");
    assert_eq!(p["policy"]["policy-type"], "tlsa", "{p}");
    assert_eq!(
        p["summary"],
        serde_json::json!({"total-successful-session-count": 0, "total-failure-session-count": 1})
    );
    assert_eq!(
        p["failure-details"],
        serde_json::json!([{"result-type": "dnssec-invalid", "receiving-mx-hostname": "mx.servfail.test",
            "failed-session-count": 1}])
    );

    let p = policy_of("unusable.test");
    assert_eq!(p["policy"]["policy-type"], "tlsa", "{p}");
    assert_eq!(p["policy"]["mx-host"], serde_json::json!(["mx.unusable.test"]));
    assert_eq!(
        p["summary"],
        serde_json::json!({"total-successful-session-count": 0, "total-failure-session-count": 1})
    );
    assert_eq!(
        p["failure-details"],
        serde_json::json!([{"result-type": "tlsa-invalid", "receiving-mx-hostname": "mx.unusable.test",
            "receiving-ip": "127.0.0.8", "failed-session-count": 1}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_rua_is_retried_on_its_own_across_a_restart_and_each_gets_one_report() {
    let (port, port_a, port_b) = (mta_tests::free_port(), mta_tests::free_port(), mta_tests::free_port());
    let tmp = tempfile::tempdir().unwrap();
    let (ca, ca_file) = test_ca(tmp.path());
    let (chain_a, key_a) = leaf(&ca, &["report-a.test"]);
    let (chain_b, key_b) = leaf(&ca, &["report-b.test"]);
    let a = ReportEndpoint::start(SocketAddr::new(ip("127.0.0.9"), port_a), &chain_a, &key_a).await;
    // The second rua answers 500 to its first 4 requests.
    let b = ReportEndpoint::serving(SocketAddr::new(ip("127.0.0.10"), port_b), &chain_b, &key_b, 4, Vec::new()).await;
    let good_cert = mta_tests::self_signed("mx.good.test");
    let rua = format!("v=TLSRPTv1; rua=https://report-a.test:{port_a}/a,https://report-b.test:{port_b}/b");
    let zone = TestZone::new("test")
        .ttl(1)
        .mail_domain("good.test", &[(10, "mx.good.test", ip("127.0.0.2"))])
        .tlsa("_25._tcp.mx.good.test", 3, 1, 1, Sha256::digest(&good_cert.2).to_vec())
        .txt("_smtp._tls.good.test", &[&rua])
        .a("report-a.test", "127.0.0.9".parse().unwrap())
        .a("report-b.test", "127.0.0.10".parse().unwrap());
    let dns = TestDnsServer::start(vec![zone]).await.unwrap();
    let resolver = FaultyProxy::start(dns.addr()).await.unwrap();
    resolver.set_authenticated_names(&["good.test", "_25._tcp.mx.good.test"]);
    let good = SinkHandle::start(
        SocketAddr::new(ip("127.0.0.2"), port),
        SinkConfig { starttls: Some((good_cert.0.clone(), good_cert.1.clone())), ..Default::default() },
    )
    .await;
    let config = format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\ndnssec = \"trust-ad\"\n\
         [delivery]\nport = {port}\nretry_intervals = [\"1h\"]\nsmtp_timeout = \"5s\"\ntls_ca_file = \"{}\"\n\
         [tls_report]\nenabled = true\ninterval = \"3s\"\n",
        resolver.addr(),
        ca_file.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::task::block_in_place(|| TestServer::start_in(dir.path(), &config, None, None));
    tokio::task::block_in_place(|| mta_tests::send_one(server.smtp, "a@good.test", "tlsrpt"));
    assert!(good.wait_for_messages(1, Duration::from_secs(10)).await, "{}", server.stderr());

    // The first rua took the report; the second refused it twice (two retry rounds): then a crash.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (a.posts().is_empty() || b.refused() < 2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((a.posts().len(), b.posts().len()), (1, 0), "{}", server.stderr());
    assert!(b.refused() >= 2, "{}", server.stderr());
    server.kill9();
    drop(server);
    let server = tokio::task::block_in_place(|| TestServer::start_in(dir.path(), &config, None, None));

    // After the restart only the second rua is tried, until it takes the report.
    let posts = wait_posts(&b, 1, Duration::from_secs(30)).await;
    assert_eq!(posts.len(), 1, "{}", server.stderr());
    assert_eq!(b.refused(), 4);
    // A few more rounds (1 s each): nobody gets it twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!((a.posts().len(), b.posts().len()), (1, 1), "{}", server.stderr());
    let (ra, rb) = (gunzip(&a.posts()[0].1), gunzip(&b.posts()[0].1));
    assert_eq!(ra["report-id"], rb["report-id"], "the same report");
    assert_eq!(rb["policies"][0]["summary"]["total-successful-session-count"], 1, "{rb}");
}
