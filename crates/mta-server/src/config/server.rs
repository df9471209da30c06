//! `[server]`: node identity and lifecycle.

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::duration::HumanDuration;

/// Default `server.shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: HumanDuration = HumanDuration::secs(30);

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// EHLO name, `Received:` by-name and Authentication-Results authserv-id.
    pub hostname: String,
    /// Part of every queue id so ids are unique across a fleet.
    pub node_id: String,
    /// How long a graceful stop may take before the rest stays queued.
    pub shutdown_timeout: HumanDuration,
}

impl Default for ServerSection {
    fn default() -> Self {
        let hostname = machine_hostname();
        let node_id = hostname.split('.').next().unwrap_or("node").to_string();
        ServerSection { hostname, node_id, shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT }
    }
}

impl ServerSection {
    /// The checks serde cannot express.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if self.hostname.trim().is_empty() {
            return Err(Invalid::new("server.hostname", "must not be empty"));
        }
        if self.node_id.trim().is_empty() {
            return Err(Invalid::new("server.node_id", "must not be empty"));
        }
        Ok(())
    }
}

/// The machine's hostname, or `localhost` if it cannot be read.
pub fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}
