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

/// An HTTPS server (certificate from a test CA) keeping every POST.
struct ReportEndpoint {
    posts: Posts,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReportEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReportEndpoint {
    async fn start(bind: SocketAddr, chain: &str, key: &str) -> ReportEndpoint {
        let acceptor = mta_tests::tls_acceptor(chain, key);
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let posts: Posts = Arc::default();
        let p = posts.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, p) = (acceptor.clone(), p.clone());
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
                    p.lock().unwrap().push((head, body));
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        ReportEndpoint { posts, task }
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
