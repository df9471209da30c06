//! The HTTP client side of a transfer: `POST /api/v1/queue/import` to the peer, one connection per request
//! (a request carries hundreds of messages, so the connect is a small share), every wait under a timeout.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::wire::ImportResponse;

/// Longest wait for one import request, connect to answer (the peer answers after its fsync).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read from the peer.
const MAX_ANSWER: usize = 4 << 20;

/// Why a request to the peer failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The URL cannot be used.
    #[error("bad peer URL {0}")]
    BadUrl(String),
    /// Connection refused or reset, timeout, `5xx`, `429`: the messages stay here; retrying may help.
    #[error("{0}")]
    Transient(String),
    /// The peer refused the request (`4xx`) or answered something we cannot read.
    #[error("{0}")]
    Refused(String),
}

impl PeerError {
    /// True when a later try may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PeerError::Transient(_))
    }
}

/// A peer node's API.
#[derive(Debug, Clone)]
pub struct Peer {
    host: String,
    port: u16,
    path: String,
    token: String,
}

impl Peer {
    /// The peer at `base` (`http://host:port`), authenticating with `token`.
    pub fn new(base: &str, token: &str) -> Result<Peer, PeerError> {
        let url: hyper::Uri = format!("{}/api/v1/queue/import", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| PeerError::BadUrl(format!("{base}: {e}")))?;
        if url.scheme_str() != Some("http") {
            return Err(PeerError::BadUrl(format!("{base}: only http:// peers are supported")));
        }
        let host = url.host().ok_or_else(|| PeerError::BadUrl(format!("{base}: no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Peer { host, port: url.port_u16().unwrap_or(80), path: url.path().to_string(), token: token.to_string() })
    }

    /// Send one import request body; the peer's answer once it is durable.
    pub async fn import(&self, body: Bytes) -> Result<ImportResponse, PeerError> {
        let transient =
            |e: &dyn std::fmt::Display| PeerError::Transient(format!("peer {}:{}: {e}", self.host, self.port));
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let stream =
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| transient(&e))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| transient(&e))?;
            tokio::spawn(conn);
            let host_header = if self.host.contains(':') {
                format!("[{}]:{}", self.host, self.port)
            } else {
                format!("{}:{}", self.host, self.port)
            };
            let req = hyper::Request::post(self.path.as_str())
                .header("host", host_header)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", self.token))
                .body(Full::new(body))
                .map_err(|e| PeerError::BadUrl(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| transient(&e))?;
            let status = resp.status();
            let bytes =
                Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map_err(|e| transient(&e))?.to_bytes();
            Ok::<_, PeerError>((status, bytes))
        })
        .await
        .map_err(|_| transient(&format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))??;
        let (status, bytes) = answer;
        let text = || String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(transient(&format!("{status}: {}", text())));
        }
        if !status.is_success() {
            return Err(PeerError::Refused(format!("peer refused the import: {status}: {}", text())));
        }
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Refused(format!("unreadable answer from the peer: {e}")))
    }
}
