//! `[spool]`: where the durable spool lives and how much of a message stays in memory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[spool]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Spool directory.
    pub path: PathBuf,
    /// sled page cache size in bytes (added key).
    pub cache_bytes: u64,
    /// A message being received stays in memory up to this many bytes, then its body streams to a spool
    /// file (added key).
    pub memory_per_message: usize,
    /// Bytes of messages held in memory by all receptions together; beyond it bodies go to disk at once
    /// (added key).
    pub body_memory_budget: u64,
}

impl Default for SpoolSection {
    /// The sizes are the spool's and the engine's defaults; the path is ours.
    fn default() -> Self {
        SpoolSection {
            path: PathBuf::from("./mta-data"),
            cache_bytes: mta_spool::DEFAULT_SLED_CACHE_BYTES,
            memory_per_message: mta_core::engine::DEFAULT_MEMORY_PER_MESSAGE,
            body_memory_budget: mta_core::engine::DEFAULT_BODY_MEMORY_BUDGET,
        }
    }
}
