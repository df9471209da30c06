//! Fetching a policy (RFC 8461 §3.3): `GET https://mta-sts.<domain>/.well-known/mta-sts.txt` over HTTP/1.1
//! with a certificate verified for `mta-sts.<domain>`, no redirects, at most [`MAX_POLICY_BYTES`], the whole
//! exchange within one time limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::dns::Resolver;

/// Largest policy body read (§3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// Why a policy could not be fetched (reported as `sts-policy-fetch-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MTA-STS policy fetch from {host}: {reason}")]
pub struct FetchError {
    /// `mta-sts.<domain>`.
    pub host: String,
    /// What went wrong.
    pub reason: String,
    /// The policy host's certificate did not verify (RFC 8460 `sts-webpki-invalid`).
    pub webpki: bool,
}

/// How policies are fetched.
#[derive(Clone)]
pub struct Fetcher {
    /// Verifies `mta-sts.<domain>` against the system roots plus `delivery.tls_ca_file`.
    pub(crate) tls: TlsConnector,
    /// TCP port of the policy host (`delivery.mta_sts_port`).
    pub(crate) port: u16,
    /// Limit for the whole fetch: lookup, connect, handshake, request and body.
    pub(crate) limit: Duration,
}

impl Fetcher {
    /// A fetcher trusting `roots`.
    pub fn new(roots: rustls::RootCertStore, port: u16, limit: Duration) -> Result<Fetcher, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Fetcher { tls: TlsConnector::from(Arc::new(config)), port, limit })
    }

    /// The policy body of `domain` (not parsed).
    pub async fn fetch(&self, resolver: &Resolver, domain: &str) -> Result<Bytes, FetchError> {
        let host = format!("mta-sts.{domain}");
        let fail = |(reason, webpki): (String, bool)| FetchError { host: host.clone(), reason, webpki };
        match tokio::time::timeout(self.limit, self.fetch_inner(resolver, &host)).await {
            Ok(result) => result.map_err(fail),
            Err(_) => Err(fail((format!("no answer within {:?}", self.limit), false))),
        }
    }

    /// The body, or why not and whether it was the host's certificate.
    async fn fetch_inner(&self, resolver: &Resolver, host: &str) -> Result<Bytes, (String, bool)> {
        let ips = resolver.lookup_ip(host).await.map_err(|e| (format!("address lookup: {e}"), false))?;
        let name =
            ServerName::try_from(host.to_string()).map_err(|_| (format!("{host:?} is not a host name"), false))?;
        let mut last = ("no address".to_string(), false);
        // Each address gets its turn within the overall limit; the first that answers over TLS is used.
        for ip in ips.into_iter().take(8) {
            let addr = SocketAddr::new(ip, self.port);
            let tcp = match TcpStream::connect(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = (format!("connect {addr}: {e}"), false);
                    continue;
                }
            };
            let tls = match self.tls.connect(name.clone(), tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    let webpki = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
                    last = (format!("TLS with {addr}: {e}"), webpki);
                    continue;
                }
            };
            return get(tls, host).await.map_err(|e| (e, false));
        }
        Err(last)
    }
}

/// One `GET` on an established TLS stream; only `200` with `text/plain` counts.
async fn get<S>(stream: S, host: &str) -> Result<Bytes, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
    // The connection task ends when the response is read or the sender is dropped (the caller's time limit).
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = hyper::Request::get("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "mta-sts-fetch")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        // §3.3: redirects must not be followed; anything but 200 is a failed fetch.
        if status != hyper::StatusCode::OK {
            return Err(format!("HTTP status {status} (redirects are not followed)"));
        }
        let plain = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain")));
        if !plain {
            return Err("Content-Type is not text/plain".into());
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body (limit {MAX_POLICY_BYTES} octets): {e}"))?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    result
}
