//! `[outbox]`: the bound of the durable outbox the exporters read (added section).

use serde::{Deserialize, Serialize};

/// `[outbox]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSection {
    /// Bytes of unexported events kept at most; beyond it the oldest are dropped (counted and logged).
    pub max_bytes: u64,
}

impl Default for OutboxSection {
    fn default() -> Self {
        OutboxSection { max_bytes: mta_core::export::DEFAULT_OUTBOX_MAX_BYTES }
    }
}
