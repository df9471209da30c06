//! `[cluster]`: a fleet sharing limits through Redis (`docs/operations.md`, "Running a fleet").

use serde::{Deserialize, Serialize};

use super::Invalid;

/// `[cluster]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `redis://host:port/db`; unset = a single node whose limits are its own.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several fleets can share one Redis.
    pub name: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection { redis_url: None, name: "mta".to_string() }
    }
}

impl ClusterSection {
    /// The engine's cluster config for node `node_id`, when a Redis is configured.
    pub fn to_core(&self, node_id: &str) -> Option<mta_core::cluster::ClusterConfig> {
        let url = self.redis_url.as_ref()?;
        Some(mta_core::cluster::ClusterConfig::new(url.clone(), self.name.clone(), node_id))
    }

    /// The checks serde cannot express.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
                return Err(Invalid::new("cluster.redis_url", format!("{url:?} is not a redis:// URL")));
            }
        }
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(Invalid::new("cluster.name", "must be a non-empty word (it prefixes every Redis key)"));
        }
        Ok(())
    }
}
