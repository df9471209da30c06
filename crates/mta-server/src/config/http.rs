//! `[http]`: the HTTP API's listener, keys and request-body memory.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::duration::HumanDuration;

/// Default `http.max_body_memory`: 512 MiB.
pub const DEFAULT_MAX_BODY_MEMORY: u64 = 512 << 20;
/// Default `http.body_memory_wait`.
pub const DEFAULT_BODY_MEMORY_WAIT: HumanDuration = HumanDuration::secs(10);

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// `sha256:<hex>` hashes of accepted bearer keys; empty = loopback clients only.
    pub api_keys: Vec<String>,
    /// Networks whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// PEM certificate for HTTPS (added key).
    pub tls_cert: Option<PathBuf>,
    /// PEM key for HTTPS (added key).
    pub tls_key: Option<PathBuf>,
    /// Requests per second per API key (added key; 0 = unlimited).
    pub rate_limit_per_key: u32,
    /// Memory for request bodies in flight, each charged 3x its size (body, decoded message, engine copy)
    /// (added key; at least 1 MiB).
    pub max_body_memory: u64,
    /// Longest wait for a share of `max_body_memory` before `503` + `Retry-After` (added key).
    pub body_memory_wait: HumanDuration,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            api_keys: Vec::new(),
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
            rate_limit_per_key: 0,
            max_body_memory: DEFAULT_MAX_BODY_MEMORY,
            body_memory_wait: DEFAULT_BODY_MEMORY_WAIT,
        }
    }
}

impl HttpSection {
    /// The checks serde cannot express.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Invalid::new("http.tls_cert", "http.tls_cert and http.tls_key must be set together"));
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            let ok =
                k.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(Invalid::new(
                    format!("http.api_keys[{i}]"),
                    "expected sha256:<64 hex digits> from `mta-server hash-key`",
                ));
            }
        }
        Ok(())
    }
}
