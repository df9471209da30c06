//! The policy store against a loopback HTTPS policy host (certificate from a test CA) and an in-process DNS
//! server: fetch limits (redirects, size, media type, trust), caching per `id`, persistence in the spool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mta_spool::{Spool, SpoolConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::dns::testing::{TestDnsServer, TestZone};
use crate::dns::DnsConfig;

const POLICY_IP: &str = "127.0.0.9";
const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.ok.test\r\nmax_age: 86400\r\n";

/// Raw HTTP responses by Host; counts requests.
struct Host {
    responses: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    requests: Arc<AtomicUsize>,
    port: u16,
    roots: rustls::RootCertStore,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Host {
    async fn start(names: &[&str]) -> Host {
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
        let certs = vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((POLICY_IP.parse::<IpAddr>().unwrap(), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let responses: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (r, n) = (responses.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, r, n) = (acceptor.clone(), r.clone(), n.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => req.extend_from_slice(&buf[..k]),
                        }
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    let host = text.lines().find_map(|l| l.strip_prefix("host: ")).unwrap_or("").trim().to_string();
                    let resp = r.lock().unwrap().get(&host).cloned();
                    if let Some(resp) = resp {
                        let _ = tls.write_all(&resp).await;
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        Host { responses, requests, port, roots, task }
    }

    fn answer(&self, host: &str, raw: Vec<u8>) {
        self.responses.lock().unwrap().insert(host.to_string(), raw);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn ok(content_type: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

fn zone(domains: &[(&str, &str)]) -> TestZone {
    let mut zone = TestZone::new("test");
    for (domain, id) in domains {
        zone = zone
            .txt(&format!("_mta-sts.{domain}"), &[&format!("v=STSv1; id={id}")])
            .a(&format!("mta-sts.{domain}"), POLICY_IP.parse().unwrap());
    }
    zone
}

async fn policies(dns: &TestDnsServer, host: &Host, spool: &Spool) -> Arc<TlsPolicies> {
    let resolver = Resolver::new(DnsConfig { nameservers: vec![dns.addr()], ..DnsConfig::default() }).unwrap();
    let fetcher = Fetcher::new(host.roots.clone(), host.port, Duration::from_secs(5)).unwrap();
    // Failed fetches are repeated at once here (the default pause would hide the next answer).
    Arc::new(TlsPolicies::new(resolver, fetcher, spool.clone()).with_fetch_retry(Duration::ZERO))
}

async fn spool(dir: &std::path::Path) -> Spool {
    Spool::open_async(SpoolConfig::new(dir, "t1")).await.unwrap()
}

#[tokio::test]
async fn refuses_redirects_oversized_bodies_other_media_types_and_untrusted_hosts() {
    let host = Host::start(&[
        "mta-sts.ok.test",
        "mta-sts.redirect.test",
        "mta-sts.big.test",
        "mta-sts.html.test",
        "mta-sts.bad.test",
    ])
    .await;
    host.answer("mta-sts.ok.test", ok("text/plain; charset=utf-8", GOOD));
    host.answer(
        "mta-sts.redirect.test",
        b"HTTP/1.1 301 Moved\r\nLocation: https://mta-sts.ok.test/.well-known/mta-sts.txt\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
    );
    host.answer("mta-sts.big.test", ok("text/plain", &format!("{GOOD}{}", "x".repeat(MAX_POLICY_BYTES))));
    host.answer("mta-sts.html.test", ok("text/html", GOOD));
    host.answer("mta-sts.untrusted.test", ok("text/plain", GOOD));
    host.answer("mta-sts.bad.test", ok("text/plain", "version: STSv1\r\nmode: sometimes\r\n"));
    let dns = TestDnsServer::start(vec![zone(&[
        ("bad.test", "1"),
        ("ok.test", "1"),
        ("redirect.test", "1"),
        ("big.test", "1"),
        ("html.test", "1"),
        ("untrusted.test", "1"),
    ])])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = policies(&dns, &host, &spool(dir.path()).await).await;
    let dir2 = tempfile::tempdir().unwrap();

    let found = p.lookup("ok.test").await;
    let cached = found.policy.expect("policy");
    assert_eq!((cached.id.as_str(), cached.policy.mode), ("1", StsMode::Enforce));
    assert!(cached.policy.allows("mx.ok.test"));
    // Each failure has its RFC 8460 type: the host's certificate, the policy file, or the fetch itself.
    let fetch_error = TlsResultType::StsPolicyFetchError;
    for (domain, why, kind) in [
        ("redirect.test", "301", fetch_error),
        ("big.test", "limit", fetch_error),
        ("html.test", "text/plain", fetch_error),
        ("untrusted.test", "TLS", TlsResultType::StsWebpkiInvalid),
        ("bad.test", "mode", TlsResultType::StsPolicyInvalid),
    ] {
        let found = p.lookup(domain).await;
        assert!(found.policy.is_none(), "{domain}");
        let err = found.fetch_error.unwrap_or_default();
        assert!(err.contains(why), "{domain}: {err}");
        assert_eq!(found.fetch_failure, Some(kind), "{domain}: {err}");
    }
    // With the default pause, a failed fetch is not repeated at once: the next lookup reports the failure.
    let resolver = Resolver::new(DnsConfig { nameservers: vec![dns.addr()], ..DnsConfig::default() }).unwrap();
    let fetcher = Fetcher::new(host.roots.clone(), host.port, Duration::from_secs(5)).unwrap();
    let paused = Arc::new(TlsPolicies::new(resolver, fetcher, spool(dir2.path()).await));
    for _ in 0..3 {
        assert!(paused.lookup("html.test").await.fetch_error.is_some());
    }
    assert_eq!(paused.fetches(), 1);
    let none = p.lookup("nothing.test").await;
    assert_eq!(none, StsLookup { policy: None, fetch_error: None, fetch_failure: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_a_new_id_share_one_fetch() {
    let host = Host::start(&["mta-sts.ok.test"]).await;
    host.answer("mta-sts.ok.test", ok("text/plain", GOOD));
    let dns = TestDnsServer::start(vec![zone(&[("ok.test", "1")])]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = policies(&dns, &host, &spool(dir.path()).await).await;
    let lookups = (0..16).map(|_| {
        let p = p.clone();
        tokio::spawn(async move { p.lookup("ok.test").await })
    });
    for found in futures::future::join_all(lookups).await {
        assert_eq!(found.unwrap().policy.map(|c| c.id), Some("1".into()));
    }
    assert_eq!((p.fetches(), host.requests()), (1, 1));
}

#[tokio::test]
async fn fetched_once_per_id_kept_across_restarts_and_fetched_again_when_the_id_changes() {
    let host = Host::start(&["mta-sts.ok.test"]).await;
    host.answer("mta-sts.ok.test", ok("text/plain", GOOD));
    let dir = tempfile::tempdir().unwrap();
    let dns1 = TestDnsServer::start(vec![zone(&[("ok.test", "1")])]).await.unwrap();
    {
        let spool = spool(dir.path()).await;
        let p = policies(&dns1, &host, &spool).await;
        for _ in 0..5 {
            assert_eq!(p.lookup("ok.test").await.policy.map(|c| c.id), Some("1".into()));
        }
        assert_eq!((p.fetches(), host.requests()), (1, 1), "one fetch per id");
        spool.close().await;
    }
    // A new process: the policy comes from the spool, even with the policy host answering nothing now.
    host.answer("mta-sts.ok.test", b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_vec());
    let spool2 = spool(dir.path()).await;
    let p = policies(&dns1, &host, &spool2).await;
    assert_eq!(p.cached("ok.test").await.map(|c| c.id), Some("1".into()));
    assert_eq!(p.lookup("ok.test").await.policy.map(|c| c.policy.mode), Some(StsMode::Enforce));
    assert_eq!(p.fetches(), 0);

    // The id changed: fetched again; while the fetch fails, the cached policy stays in force.
    let dns2 = TestDnsServer::start(vec![zone(&[("ok.test", "2")])]).await.unwrap();
    let p = policies(&dns2, &host, &spool2).await;
    let found = p.lookup("ok.test").await;
    assert_eq!(found.policy.map(|c| c.id), Some("1".into()));
    assert!(found.fetch_error.is_some());
    host.answer("mta-sts.ok.test", ok("text/plain", &GOOD.replace("enforce", "testing")));
    let found = p.lookup("ok.test").await;
    let cached = found.policy.unwrap();
    assert_eq!((cached.id.as_str(), cached.policy.mode), ("2", StsMode::Testing));
}
