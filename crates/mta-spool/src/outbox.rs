//! The outbox: an append-only, sequenced log of small entries (exported events) kept in the aux tree under
//! [`OUTBOX_PREFIX`], written in the same commit as the state change each entry reports.
//!
//! The committer assigns every entry its sequence number when it plans the round, so keys grow in commit
//! order; readers see entries only up to the *durable* sequence (published after the round's fsync), so an
//! entry is never read before the change it reports could survive a crash. Sequence numbers start at the
//! current time in microseconds (or after the newest stored entry), which makes an entry's key also its
//! approximate write time: the age of the oldest entry needs no decoding.
//!
//! An entry holds one or more *items* separated by `\n` (exported events as JSON lines). The committer joins
//! every append of a round into one entry (up to 256 KiB), so a round reporting a thousand events writes one
//! key, not a thousand: sled's cost is per key (node updates, splits, log records), not per byte.
//!
//! The byte bound ([`crate::Spool::set_outbox_limit`]) is enforced by the committer in the round that would
//! exceed it: before that round's appends are written it drops the oldest stored entries, so the outbox
//! never holds more than its bound between rounds. Dropped entries and items are counted in
//! [`OutboxStats`] for the owner to log and export.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Aux-tree prefix of outbox keys; the rest of a key is the big-endian `u64` sequence.
pub const OUTBOX_PREFIX: &[u8] = b"outbox/";

/// The aux key of outbox entry `seq`.
pub(crate) fn key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(OUTBOX_PREFIX.len() + 8);
    k.extend_from_slice(OUTBOX_PREFIX);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence of an outbox key, if it is one.
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(OUTBOX_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Now in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Size and age of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Entries stored.
    pub entries: u64,
    /// Bytes of their values.
    pub bytes: u64,
    /// Sequence of the oldest entry (≈ its write time in µs since the epoch), if any.
    pub oldest: Option<u64>,
    /// The most bytes the outbox held after any round since the spool was opened.
    pub peak_bytes: u64,
    /// Entries dropped for space since the spool was opened.
    pub dropped_entries: u64,
    /// Items (newline-separated parts of entries) dropped for space since the spool was opened.
    pub dropped_items: u64,
    /// Bytes dropped for space since the spool was opened.
    pub dropped_bytes: u64,
}

/// How many items (newline-separated parts) `entry` holds.
pub fn items_in(entry: &[u8]) -> u64 {
    if entry.is_empty() {
        return 0;
    }
    let trailing = entry.last() == Some(&b'\n');
    entry.iter().filter(|&&b| b == b'\n').count() as u64 + u64::from(!trailing)
}

/// The items of `entry`, in order (empty parts skipped).
pub fn items(entry: &[u8]) -> impl Iterator<Item = &[u8]> {
    entry.split(|&b| b == b'\n').filter(|part| !part.is_empty())
}

/// The outbox's counters, shared by the committer (the only writer) and readers.
pub(crate) struct OutboxState {
    /// The next sequence the committer hands out.
    next: AtomicU64,
    /// Highest sequence made durable; readers never go past it.
    durable: watch::Sender<u64>,
    entries: AtomicU64,
    bytes: AtomicU64,
    /// Sequence of the oldest stored entry, `u64::MAX` when empty.
    oldest: AtomicU64,
    /// The byte bound the committer keeps (`u64::MAX`: none).
    limit: AtomicU64,
    peak_bytes: AtomicU64,
    dropped_entries: AtomicU64,
    dropped_items: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl OutboxState {
    /// State after opening a spool whose outbox holds `entries` entries of `bytes` bytes, the oldest and
    /// newest with these sequences.
    pub(crate) fn new(entries: u64, bytes: u64, oldest: Option<u64>, newest: Option<u64>) -> OutboxState {
        let durable = newest.unwrap_or(0);
        let next = now_micros().max(durable.saturating_add(1));
        OutboxState {
            next: AtomicU64::new(next),
            durable: watch::Sender::new(durable),
            entries: AtomicU64::new(entries),
            bytes: AtomicU64::new(bytes),
            oldest: AtomicU64::new(oldest.unwrap_or(u64::MAX)),
            limit: AtomicU64::new(u64::MAX),
            peak_bytes: AtomicU64::new(bytes),
            dropped_entries: AtomicU64::new(0),
            dropped_items: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Keep the outbox within `bytes` from the next round on.
    pub(crate) fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The byte bound (`u64::MAX`: none).
    pub(crate) fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes stored now (before the round being planned).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A fresh sequence: later than every earlier one, and not behind the clock.
    pub(crate) fn allocate(&self) -> u64 {
        let now = now_micros();
        // Only the committer thread allocates; the CAS loop keeps it correct even if that changes.
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let seq = cur.max(now);
            match self.next.compare_exchange_weak(cur, seq + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return seq,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Account for a durable round and publish its newest entry as durable.
    pub(crate) fn applied(&self, delta: &OutboxDelta) {
        self.entries.fetch_add(delta.added, Ordering::Relaxed);
        self.bytes.fetch_add(delta.added_bytes, Ordering::Relaxed);
        sub(&self.entries, delta.removed);
        sub(&self.bytes, delta.removed_bytes);
        self.peak_bytes.fetch_max(self.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        self.dropped_entries.fetch_add(delta.dropped, Ordering::Relaxed);
        self.dropped_items.fetch_add(delta.dropped_items, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(delta.dropped_bytes, Ordering::Relaxed);
        // Removals first: the oldest stored entry they leave, then this round's own additions.
        if let Some(oldest) = delta.oldest_after_removal {
            self.oldest.store(oldest, Ordering::Relaxed);
        }
        if let Some(first) = delta.first_added {
            self.oldest.fetch_min(first, Ordering::Relaxed);
        }
        if let Some(last) = delta.last_added {
            self.durable.send_if_modified(|d| {
                let moved = last > *d;
                *d = (*d).max(last);
                moved
            });
        }
    }

    /// The highest durable sequence.
    pub(crate) fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// A receiver that sees the durable sequence move.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Current size and age.
    pub(crate) fn stats(&self) -> OutboxStats {
        let oldest = self.oldest.load(Ordering::Relaxed);
        OutboxStats {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            oldest: (oldest != u64::MAX).then_some(oldest),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
            dropped_entries: self.dropped_entries.load(Ordering::Relaxed),
            dropped_items: self.dropped_items.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
        }
    }
}

fn sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
}

/// What one round does to the outbox (applied to [`OutboxState`] once the round is durable).
#[derive(Debug, Default, Clone)]
pub(crate) struct OutboxDelta {
    pub(crate) added: u64,
    pub(crate) added_bytes: u64,
    pub(crate) first_added: Option<u64>,
    pub(crate) last_added: Option<u64>,
    pub(crate) removed: u64,
    pub(crate) removed_bytes: u64,
    /// The oldest entry left after this round's removals (`Some(u64::MAX)`: none left).
    pub(crate) oldest_after_removal: Option<u64>,
    /// Of the removals, entries dropped for space, their items and bytes.
    pub(crate) dropped: u64,
    pub(crate) dropped_items: u64,
    pub(crate) dropped_bytes: u64,
}

impl OutboxDelta {
    /// Fold `other` (a later request of the same round) into this one.
    pub(crate) fn merge(&mut self, other: OutboxDelta) {
        self.added += other.added;
        self.added_bytes += other.added_bytes;
        self.first_added = match (self.first_added, other.first_added) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_added = self.last_added.max(other.last_added);
        self.removed += other.removed;
        self.removed_bytes += other.removed_bytes;
        if other.oldest_after_removal.is_some() {
            self.oldest_after_removal = other.oldest_after_removal;
        }
        self.dropped += other.dropped;
        self.dropped_items += other.dropped_items;
        self.dropped_bytes += other.dropped_bytes;
    }

    /// Bytes this delta adds (negative: frees).
    pub(crate) fn net_bytes(&self) -> i128 {
        i128::from(self.added_bytes) - i128::from(self.removed_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_sequence() {
        assert_eq!(seq_of(&key(42)), Some(42));
        assert!(key(255) < key(256));
        assert_eq!(seq_of(b"idem/x"), None);
    }

    #[test]
    fn items_are_newline_separated_parts() {
        assert_eq!(items_in(b""), 0);
        assert_eq!(items_in(b"{}"), 1);
        assert_eq!(items_in(b"{}\n{}"), 2);
        assert_eq!(items_in(b"{}\n{}\n"), 2);
        assert_eq!(items(b"a\nb\n").collect::<Vec<_>>(), vec![&b"a"[..], &b"b"[..]]);
    }

    #[test]
    fn sequences_only_grow() {
        let s = OutboxState::new(0, 0, None, Some(u64::MAX / 2));
        let a = s.allocate();
        let b = s.allocate();
        assert!(a > u64::MAX / 2 && b > a);
    }
}
