//! Queue ids: time-ordered, unique across restarts and across a fleet.
//!
//! Form: `<14 hex digits of microseconds since the epoch, strictly increasing per process><node id>`, for
//! example `0006412c3b2a91f0.mx1`. Fixed-width hex makes byte order equal time order, so sled iterates oldest
//! first; the node id makes ids from different nodes distinct; seeding the generator with the newest id found in
//! the spool keeps ids unique across restarts even if the clock stepped back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest node id kept in a queue id (the whole id stays within 64 characters).
pub const MAX_NODE_ID_LEN: usize = 40;

/// A message's queue id: printable ASCII, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(String);

impl QueueId {
    /// Wrap a string read from outside (CLI, HTTP path), checking it has queue-id form.
    pub fn parse(s: &str) -> Option<QueueId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        ok.then(|| QueueId(s.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Microseconds since the epoch encoded at the start of the id (0 if it is not one of ours).
    pub fn timestamp_micros(&self) -> u64 {
        self.0.get(..14).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Makes queue ids for one node; cheap and lock-free.
#[derive(Debug)]
pub struct IdGenerator {
    node: String,
    last: AtomicU64,
}

impl IdGenerator {
    /// A generator for `node_id` (sanitised to `[A-Za-z0-9-]`, at most 40 characters).
    pub fn new(node_id: &str) -> Self {
        let mut node: String = node_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
            .take(MAX_NODE_ID_LEN)
            .collect();
        if node.is_empty() {
            node.push_str("node");
        }
        IdGenerator { node, last: AtomicU64::new(0) }
    }

    /// Never hand out an id at or before `id`'s timestamp (used with the newest id found at start-up).
    pub fn observe(&self, id: &QueueId) {
        self.last.fetch_max(id.timestamp_micros(), Ordering::AcqRel);
    }

    /// The next id: strictly greater timestamp part than any before it from this generator.
    pub fn next_id(&self) -> QueueId {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let mut prev = self.last.load(Ordering::Acquire);
        loop {
            let next = now.max(prev + 1);
            match self.last.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return QueueId(format!("{next:014x}.{}", self.node)),
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_unique_and_short() {
        let g = IdGenerator::new("mx1.example.com");
        let a = g.next_id();
        let b = g.next_id();
        assert!(a < b);
        assert!(a.as_str().len() <= 64);
        assert!(a.as_str().ends_with(".mx1-example-com"));
        assert_eq!(QueueId::parse(a.as_str()), Some(a.clone()));
        assert!(QueueId::parse("../etc").is_none());
    }

    #[test]
    fn observe_moves_past_restored_ids() {
        let g = IdGenerator::new("n");
        let future = QueueId(format!("{:014x}.n", u64::MAX >> 12));
        g.observe(&future);
        assert!(g.next_id().timestamp_micros() > future.timestamp_micros());
    }
}
