//! Delivering reports (RFC 8460 §5): look up `_smtp._tls.<domain>` through our DNS pool, then POST the
//! gzipped report to each `https` rua (verified TLS: system roots plus `delivery.tls_ca_file`) and mail it to
//! each `mailto` rua through our own queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::report::{self, Rua, Submitter};
use super::Due;
use crate::dns::{DnsError, Resolver};
use crate::engine::{Engine, Injection};

/// Time limit of one HTTPS upload (lookup, connect, handshake, request, reply).
const UPLOAD_LIMIT: Duration = Duration::from_secs(30);
/// `rua` destinations used per report; a record naming more is cut (each costs a connection or a message).
const MAX_RUA: usize = 8;

/// What one round of sending a report did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Destinations that took it in this round.
    pub delivered: Vec<String>,
    /// Destinations that did not, and why: retried later, on their own.
    pub failed: Vec<(String, String)>,
}

/// How reports leave: TLS for uploads, the engine for mail, the pool for lookups.
pub struct Sender {
    pub(crate) tls: TlsConnector,
    pub(crate) submitter: Submitter,
}

impl Sender {
    /// A sender trusting `roots` for uploads.
    pub fn new(roots: rustls::RootCertStore, submitter: Submitter) -> Result<Sender, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Sender { tls: TlsConnector::from(Arc::new(config)), submitter })
    }

    /// Sends `due` to every rua of its domain that does not have it yet (`due.counts.sent_to`). The outcome
    /// lists the destinations that took it now and says whether any is still missing it (retry later).
    pub async fn send(&self, engine: &Engine, due: &Due) -> Result<Sent, String> {
        let ruas = match engine.resolver().query_txt(&format!("_smtp._tls.{}", due.domain)).await {
            Ok(l) => l.records.iter().find_map(|r| report::parse_record(&r.to_string_lossy())).unwrap_or_default(),
            Err(DnsError::NxDomain | DnsError::NoData) => Vec::new(),
            Err(e) if e.is_permanent() => Vec::new(),
            Err(e) => return Err(format!("TLSRPT record lookup: {e}")),
        };
        let mut outcome = Sent::default();
        let missing: Vec<&Rua> =
            ruas.iter().take(MAX_RUA).filter(|r| !due.counts.sent_to.contains(&r.as_uri())).collect();
        if missing.is_empty() {
            return Ok(outcome);
        }
        let json = report::json(&self.submitter, due);
        let gz = report::gzip(&json).map_err(|e| format!("gzip: {e}"))?;
        for rua in missing {
            let result = match rua {
                Rua::Https(url) => {
                    match tokio::time::timeout(UPLOAD_LIMIT, self.post(engine.resolver(), url, &gz)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {UPLOAD_LIMIT:?}")),
                    }
                }
                Rua::Mailto(to) => {
                    let content = report::mail(&self.submitter, due, to, &gz);
                    let injection = Injection::new(self.submitter.contact.clone(), vec![to.clone()], content);
                    engine.inject(injection).await.map(|_| ()).map_err(|e| format!("queueing: {e}"))
                }
            };
            match result {
                Ok(()) => {
                    outcome.delivered.push(rua.as_uri());
                    metrics::counter!("mta_tls_reports_sent_total", "result" => "ok").increment(1);
                }
                Err(e) => {
                    metrics::counter!("mta_tls_reports_sent_total", "result" => "failed").increment(1);
                    tracing::info!(domain = %due.domain, rua = ?rua, error = %e, "TLS report not delivered");
                    outcome.failed.push((rua.as_uri(), e));
                }
            }
        }
        Ok(outcome)
    }

    async fn post(&self, resolver: &Resolver, url: &str, gz: &[u8]) -> Result<(), String> {
        let rest = url.strip_prefix("https://").ok_or("not https")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
                (h.trim_matches(['[', ']']), p.parse::<u16>().map_err(|_| format!("bad port in {url}"))?)
            }
            _ => (authority.trim_matches(['[', ']']), 443),
        };
        let ips = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => resolver.lookup_ip(host).await.map_err(|e| format!("address lookup of {host}: {e}"))?,
        };
        let name = ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is not a host name"))?;
        let mut last = "no address".to_string();
        for ip in ips.into_iter().take(4) {
            let addr = SocketAddr::new(ip, port);
            let tcp = match TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(e) => {
                    last = format!("connect {addr}: {e}");
                    continue;
                }
            };
            let tls = match self.tls.connect(name.clone(), tcp).await {
                Ok(t) => t,
                Err(e) => {
                    last = format!("TLS with {addr}: {e}");
                    continue;
                }
            };
            return post_on(tls, authority, path, gz).await;
        }
        Err(last)
    }
}

/// One `POST` of the report on an established TLS stream; any 2xx is success.
async fn post_on<S>(stream: S, authority: &str, path: &str, gz: &[u8]) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .header(hyper::header::USER_AGENT, concat!("mta-tlsrpt/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::copy_from_slice(gz)))
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        // Read (a little of) the body so the exchange completes; its content does not matter.
        let _ = Limited::new(response.into_body(), 16 * 1024).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP status {status}"))
        }
    }
    .await;
    driver.abort();
    result
}
