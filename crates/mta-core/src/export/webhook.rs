//! The webhook sink: one `POST` per batch, body a JSON array of events, signed with the endpoint's secret.
//!
//! HTTP/1.1 with keep-alive (one pool per endpoint), TLS through rustls with the system's trust roots. Any
//! 2xx confirms the whole batch; anything else (or no answer) fails it and the endpoint retries.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::endpoint::{Sink, SinkError};
use super::signature;
use super::ExportError;

/// The most of a response body we read (to keep the connection reusable); the rest is dropped with it.
const MAX_RESPONSE_BODY: usize = 64 << 10;

/// A webhook endpoint's client.
pub struct Webhook {
    uri: Uri,
    secret: Vec<u8>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("uri", &self.uri).finish_non_exhaustive()
    }
}

impl Webhook {
    /// A client posting to `url` (`http://` or `https://`), signing with `secret`, keeping up to `idle`
    /// connections open.
    pub fn new(url: &str, secret: &str, idle: usize, connect_timeout: Duration) -> Result<Webhook, ExportError> {
        let uri: Uri = url.parse().map_err(|e| ExportError::InvalidUrl { url: url.into(), reason: format!("{e}") })?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => {
                return Err(ExportError::InvalidUrl {
                    url: url.into(),
                    reason: "needs http:// or https:// and a host".into(),
                })
            }
        }
        let tls = tls_config()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle.max(1))
            .build(https);
        Ok(Webhook { uri, secret: secret.as_bytes().to_vec(), client })
    }

    async fn post(&self, events: &[Vec<u8>]) -> Result<(), SinkError> {
        let body = json_array(events);
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("mta/", env!("CARGO_PKG_VERSION")))
            .header(signature::HEADER, signature::sign(&self.secret, t, &body))
            .body(Full::new(body))
            .map_err(|e| SinkError::Unreachable(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| SinkError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        // Read (a bounded part of) the answer so the connection can carry the next batch.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Rejected(status.to_string()))
        }
    }
}

impl Sink for Webhook {
    fn send<'a>(&'a self, events: &'a [Vec<u8>]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.post(events))
    }
}

/// `[e1,e2,...]` from events that are each one JSON object already.
pub(crate) fn json_array(events: &[Vec<u8>]) -> Bytes {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    out.into()
}

/// rustls with the system's trust roots (the aws-lc-rs provider, as everywhere else in the server).
fn tls_config() -> Result<rustls::ClientConfig, ExportError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(errors = ?found.errors, "no system trust roots found: https webhooks will fail");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ExportError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_json_arrays() {
        let body = json_array(&[br#"{"a":1}"#.to_vec(), br#"{"b":2}"#.to_vec()]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!([{"a":1},{"b":2}]));
        assert_eq!(&json_array(&[])[..], b"[]");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Webhook::new("ftp://x/", "s", 1, Duration::from_secs(1)).is_err());
        assert!(Webhook::new("not a url", "s", 1, Duration::from_secs(1)).is_err());
        assert!(Webhook::new("http://127.0.0.1:9/hook", "s", 1, Duration::from_secs(1)).is_ok());
    }
}
