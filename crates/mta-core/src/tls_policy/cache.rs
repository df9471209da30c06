//! Policies in force, by domain: a bounded map in memory over the spool's aux tree, so a restart keeps them
//! (RFC 8461 §5.1: a cached policy protects against an attacker who blocks the next fetch).

use std::collections::HashMap;

use mta_spool::{Op, Spool};
use parking_lot::Mutex;

use super::policy::StsPolicy;

/// Domains kept in memory; beyond it, expired ones are dropped, then new ones live in the spool only.
const MAX_ENTRIES: usize = 65_536;
/// Key prefix in the spool's aux tree.
const PREFIX: &str = "tls-policy/mta-sts/";

/// One domain's policy as fetched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedPolicy {
    /// The DNS `id` the policy was fetched for.
    pub id: String,
    /// The policy.
    pub policy: StsPolicy,
    /// When it was fetched (Unix seconds).
    pub fetched: u64,
}

impl CachedPolicy {
    /// When it stops counting (Unix seconds): fetch time plus `max_age`.
    pub fn expires(&self) -> u64 {
        self.fetched.saturating_add(self.policy.max_age_secs)
    }
}

/// The cache.
pub(crate) struct PolicyCache {
    spool: Spool,
    /// `None`: the spool has nothing for the domain (most destinations publish no policy; this spares every
    /// delivery to them a spool read).
    memory: Mutex<HashMap<String, Option<CachedPolicy>>>,
}

impl PolicyCache {
    pub(crate) fn new(spool: Spool) -> PolicyCache {
        PolicyCache { spool, memory: Mutex::new(HashMap::new()) }
    }

    /// The policy stored for `domain` (memory, else the spool), expired or not.
    pub(crate) async fn get(&self, domain: &str) -> Option<CachedPolicy> {
        if let Some(c) = self.memory.lock().get(domain) {
            return c.clone();
        }
        let raw = match self.spool.aux_get(key(domain).as_bytes()).await {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(domain, error = %e, "reading a cached MTA-STS policy failed");
                return None;
            }
        };
        // A record we cannot read (older format, damage) is as good as none: the next fetch replaces it.
        let cached: Option<CachedPolicy> = raw.and_then(|raw| serde_json::from_slice(&raw).ok());
        self.remember(domain, cached.clone(), 0);
        cached
    }

    /// Stores `cached` for `domain` durably (the spool's group commit) and in memory.
    pub(crate) async fn put(&self, domain: &str, cached: CachedPolicy, now: u64) {
        match serde_json::to_vec(&cached) {
            Ok(value) => {
                if let Err(e) = self.spool.commit(vec![Op::AuxPut { key: key(domain).into_bytes(), value }]).await {
                    tracing::warn!(domain, error = %e, "storing an MTA-STS policy failed; kept in memory only");
                }
            }
            Err(e) => tracing::warn!(domain, error = %e, "encoding an MTA-STS policy failed"),
        }
        self.remember(domain, Some(cached), now);
    }

    fn remember(&self, domain: &str, cached: Option<CachedPolicy>, now: u64) {
        let mut memory = self.memory.lock();
        if memory.len() >= MAX_ENTRIES && !memory.contains_key(domain) {
            memory.retain(|_, c| c.as_ref().is_some_and(|c| c.expires() > now));
            if memory.len() >= MAX_ENTRIES {
                return;
            }
        }
        memory.insert(domain.to_string(), cached);
    }
}

fn key(domain: &str) -> String {
    format!("{PREFIX}{domain}")
}
