//! The answer cache: bounded in entries, keyed by (lowercase FQDN, record type). An entry lives
//! until `expires + serve_stale_for`, so an expired answer can still be served when the upstreams
//! fail (RFC 8767); `expires` alone decides freshness.
//!
//! # Why not moka
//!
//! moka (TinyLFU admission, LRU eviction) was used first. It does its housekeeping inline: every
//! 64th read drains the read log (LRU moves, frequency sketch, timer wheel), ~15-35 µs on a
//! 50,000-name working set, so 1 cached `resolve_mx` in 32 paid for it (p99 33 µs against a p50
//! of 3-4 µs; measured with `bench/rust/src/bin/dns_bench.rs`, and the tail always landed on the same
//! position in a fixed pattern of reads: the flush point). This cache does no deferred work: a
//! hit is a hash, a shard lock, a map probe, a bit set and an `Arc` clone.
//!
//! # Design
//!
//! [`Clock`]: `shards` (a power of two, up to 64) mutex-protected shards, each a `HashMap` from
//! key to slot plus a slot vector swept by a CLOCK hand (second-chance LRU approximation): a hit
//! sets the slot's reference bit; an insert into a full shard advances the hand, clearing bits,
//! and replaces the first slot that is unreferenced or dead (past `stale_until`). Each shard
//! holds at most `ceil(capacity / shards)` entries, so memory stays flat whatever the number of
//! names. Dead entries found by a lookup are removed at once. Shard locks are held for a probe
//! only; values are dropped after the lock is released.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use parking_lot::Mutex;

use super::error::{DnsError, TransientKind};
use super::records::{MxRecord, TxtRecord};

/// (lowercase FQDN with trailing dot, type).
pub(crate) type Key = (Arc<str>, RecordType);

/// The records of one positive answer, by type.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Mx(Arc<Vec<MxRecord>>),
    A(Arc<Vec<Ipv4Addr>>),
    Aaaa(Arc<Vec<Ipv6Addr>>),
    Txt(Arc<Vec<TxtRecord>>),
    Ptr(Arc<Vec<String>>),
    Tlsa(Arc<Vec<mta_smtp::client::Tlsa>>),
}

/// One cached outcome: a positive answer or a permanent negative one (NXDOMAIN / NODATA).
/// Transient failures are never stored here (see `Cache::failures`).
#[derive(Debug)]
pub(crate) struct Entry {
    pub data: Result<Answer, DnsError>,
    pub ttl: Duration,
    pub expires: Instant,
    pub stale_until: Instant,
    /// Set by the first hit that schedules a background refresh, so only one is scheduled.
    pub refreshing: AtomicBool,
    /// The upstream set the AD bit and `dns.dnssec = "trust-ad"` (DANE needs it).
    pub authenticated: bool,
}

impl Entry {
    pub fn new(data: Result<Answer, DnsError>, ttl: Duration, stale_for: Duration) -> Self {
        let now = Instant::now();
        Self {
            data,
            ttl,
            expires: now + ttl,
            stale_until: now + ttl + stale_for,
            refreshing: AtomicBool::new(false),
            authenticated: false,
        }
    }
}

/// A value that stops being worth keeping at some instant.
pub(crate) trait Expiring {
    fn dead(&self, now: Instant) -> bool;
}

impl Expiring for Arc<Entry> {
    fn dead(&self, now: Instant) -> bool {
        now >= self.stale_until
    }
}

struct Slot<V> {
    key: Key,
    value: V,
    referenced: bool,
}

struct Shard<V> {
    map: HashMap<Key, usize>,
    slots: Vec<Slot<V>>,
    hand: usize,
    cap: usize,
}

impl<V: Expiring> Shard<V> {
    /// Remove slot `idx` (swap-remove, fixing the moved slot's index); the value is returned so
    /// that it is dropped outside the lock.
    fn remove_at(&mut self, idx: usize) -> V {
        let slot = self.slots.swap_remove(idx);
        self.map.remove(&slot.key);
        if let Some(moved) = self.slots.get(idx) {
            if let Some(i) = self.map.get_mut(&moved.key) {
                *i = idx;
            }
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
        slot.value
    }

    /// Insert or replace; returns the value replaced or evicted (to drop outside the lock).
    fn insert(&mut self, key: Key, value: V, now: Instant) -> Option<V> {
        if let Some(&idx) = self.map.get(&key) {
            let slot = &mut self.slots[idx];
            slot.referenced = true;
            return Some(std::mem::replace(&mut slot.value, value));
        }
        if self.slots.len() < self.cap {
            self.map.insert(key.clone(), self.slots.len());
            self.slots.push(Slot { key, value, referenced: false });
            return None;
        }
        // CLOCK: at most two sweeps (the first clears every reference bit).
        let n = self.slots.len();
        loop {
            let h = self.hand;
            self.hand = (h + 1) % n;
            let slot = &mut self.slots[h];
            if slot.referenced && !slot.value.dead(now) {
                slot.referenced = false;
                continue;
            }
            let old_key = std::mem::replace(&mut slot.key, key.clone());
            let old = std::mem::replace(&mut slot.value, value);
            slot.referenced = false;
            self.map.remove(&old_key);
            self.map.insert(key, h);
            return Some(old);
        }
    }
}

/// A bounded, sharded map with CLOCK eviction and no deferred housekeeping (see module docs).
pub(crate) struct Clock<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: RandomState,
}

impl<V: Expiring + Clone> Clock<V> {
    pub fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        // shards of at least ~256 entries, at most 64 shards (power of two)
        let n = (capacity / 256).clamp(1, 64);
        let n = if n.is_power_of_two() { n } else { n.next_power_of_two() / 2 };
        let per_shard = capacity.div_ceil(n);
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::with_capacity(per_shard.min(4096)),
                    slots: Vec::with_capacity(per_shard.min(4096)),
                    hand: 0,
                    cap: per_shard,
                })
            })
            .collect();
        Self { shards, hasher: RandomState::new() }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard<V>> {
        let h = self.hasher.hash_one(key);
        // high bits: the shard's own HashMap uses another RandomState, so no correlation anyway
        &self.shards[(h >> 32) as usize & (self.shards.len() - 1)]
    }

    /// The live value of `key` (marked recently used), or `None`. A dead value is removed.
    pub fn get(&self, key: &Key, now: Instant) -> Option<V> {
        let dead;
        {
            let mut s = self.shard(key).lock();
            let idx = *s.map.get(key)?;
            let slot = &mut s.slots[idx];
            if !slot.value.dead(now) {
                slot.referenced = true;
                return Some(slot.value.clone());
            }
            dead = s.remove_at(idx);
        }
        drop(dead);
        None
    }

    pub fn insert(&self, key: Key, value: V, now: Instant) {
        let old = self.shard(&key).lock().insert(key, value, now);
        drop(old);
    }

    pub fn remove(&self, key: &Key) {
        let old = {
            let mut s = self.shard(key).lock();
            let idx = s.map.get(key).copied();
            idx.map(|i| s.remove_at(i))
        };
        drop(old);
    }

    /// Entries held (dead ones not yet evicted included).
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().slots.len() as u64).sum()
    }
}

/// Answers plus a memo of recent transient failures.
pub(crate) struct Cache {
    entries: Clock<Arc<Entry>>,
    /// (name, type) that failed transiently: callers get the failure (or a stale answer) at
    /// once instead of a new query each while the memo runs; after it, the record is kept a
    /// while longer so that the next query for the name counts as a retry (see `pool.rs`).
    /// Bounded too.
    failures: Clock<Failure>,
    failure_memo: Duration,
}

/// RFC 9520: resolution failures are cached, with exponential backoff for persistent ones
/// (`failure_memo`, x2 per consecutive failure, at most 5 minutes). A success resets it.
///
/// Only failures that are the name's escalate: one given by an upstream in trouble (failing
/// across many names, `trouble.rs`) keeps the count it had. A single failure (`count == 1`) made
/// before its upstream came out of trouble is void: the name is asked again as a first attempt.
#[derive(Debug, Clone, Copy)]
struct Failure {
    kind: TransientKind,
    count: u32,
    /// End of the memo: until then no query is sent for the name.
    until: Instant,
    /// End of the record: until then a query for the name is a retry.
    forget_at: Instant,
    /// The upstream that gave the failure (none: no packet left, our own caps), and when.
    origin: Option<Origin>,
}

/// Where and when a transient failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// Index of the upstream in the pool.
    pub upstream: usize,
    /// When it answered with the failure.
    pub at: Instant,
}

impl Failure {
    /// A single failure given during a trouble its upstream has since recovered from (says
    /// `recovered`): the upstream's failure, not the name's.
    fn void(&self, recovered: impl Fn(Origin) -> bool) -> bool {
        self.count <= 1 && self.origin.is_some_and(recovered)
    }
}

impl Expiring for Failure {
    fn dead(&self, now: Instant) -> bool {
        now >= self.forget_at
    }
}

/// What the failure memo says about a (name, type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Memo {
    /// No recent transient failure: a query for it is a first attempt.
    Clear,
    /// Failed a moment ago: answer with this failure (or a stale answer), send nothing.
    Failing(TransientKind),
    /// Failed recently, memo over: a query may go, as a retry (under the retry budget).
    Retry(TransientKind),
}

const MAX_FAILURE_MEMO: Duration = Duration::from_secs(300);

impl Cache {
    pub fn new(capacity: u64, failure_memo: Duration) -> Self {
        Self { entries: Clock::new(capacity), failures: Clock::new(capacity.max(1024)), failure_memo }
    }

    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        self.entries.get(key, now)
    }

    pub fn insert(&self, key: Key, entry: Arc<Entry>) {
        self.failures.remove(&key);
        self.entries.insert(key, entry, Instant::now());
    }

    /// What the memo says about `key`. `recovered(origin)`: the upstream of the failure has come
    /// out of a trouble since (a void record is removed and the memo is clear).
    pub fn failure(&self, key: &Key, now: Instant, recovered: impl Fn(Origin) -> bool) -> Memo {
        match self.failures.get(key, now) {
            None => Memo::Clear,
            Some(f) if f.void(&recovered) => {
                self.failures.remove(key);
                Memo::Clear
            }
            Some(f) if now < f.until => Memo::Failing(f.kind),
            Some(f) => Memo::Retry(f.kind),
        }
    }

    /// Remember a transient failure of `key` given by `upstream` (none: our own caps).
    /// `escalate`: the failure is the name's (its upstream answers other names), so the memo
    /// doubles; else it keeps the length it had (at least `failure_memo`).
    pub fn remember_failure(
        &self,
        key: Key,
        kind: TransientKind,
        upstream: Option<usize>,
        escalate: bool,
        recovered: impl Fn(Origin) -> bool,
    ) {
        let now = Instant::now();
        let prev = self.failures.get(&key, now).filter(|f| !f.void(recovered)).map_or(0, |f| f.count);
        let count = if escalate { prev.saturating_add(1) } else { prev.max(1) };
        let memo = self.failure_memo.saturating_mul(1 << (count - 1).min(16)).min(MAX_FAILURE_MEMO);
        let until = now + memo;
        let origin = upstream.map(|upstream| Origin { upstream, at: now });
        self.failures.insert(key, Failure { kind, count, until, forget_at: until + MAX_FAILURE_MEMO, origin }, now);
    }

    /// Entries currently held.
    pub fn len(&self) -> u64 {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        (Arc::from(format!("n{i}.test.")), RecordType::A)
    }

    fn entry(ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry::new(Err(DnsError::NoData), ttl, Duration::ZERO))
    }

    #[test]
    fn clock_is_bounded_and_keeps_hot_entries() {
        let c: Clock<Arc<Entry>> = Clock::new(100);
        let now = Instant::now();
        c.insert(key(0), entry(Duration::from_secs(60)), now);
        for i in 1..1000 {
            assert!(c.get(&key(0), now).is_some(), "hot entry evicted at {i}");
            c.insert(key(i), entry(Duration::from_secs(60)), now);
            assert!(c.len() <= 100);
        }
        assert!(c.get(&key(999), now).is_some());
    }

    #[test]
    fn clock_drops_dead_entries() {
        let c: Clock<Arc<Entry>> = Clock::new(10_000);
        let now = Instant::now();
        c.insert(key(1), entry(Duration::from_millis(1)), now);
        assert!(c.get(&key(1), now).is_some());
        assert!(c.get(&key(1), now + Duration::from_secs(1)).is_none());
        assert_eq!(c.len(), 0);
        // removal keeps the other slots addressable
        for i in 0..50 {
            c.insert(key(i), entry(Duration::from_secs(60)), now);
        }
        c.remove(&key(3));
        for i in (0..50).filter(|i| *i != 3) {
            assert!(c.get(&key(i), now).is_some(), "{i}");
        }
        assert_eq!(c.len(), 49);
    }

    #[test]
    fn failure_memo_backs_off_then_allows_a_retry() {
        let c = Cache::new(1000, Duration::from_millis(100));
        let k = key(1);
        let t0 = Instant::now();
        assert_eq!(c.failure(&k, t0, never), Memo::Clear);
        c.remember_failure(k.clone(), TransientKind::ServFail, Some(0), true, never);
        assert_eq!(c.failure(&k, Instant::now(), never), Memo::Failing(TransientKind::ServFail));
        assert_eq!(c.failure(&k, t0 + Duration::from_millis(150), never), Memo::Retry(TransientKind::ServFail));
        c.remember_failure(k.clone(), TransientKind::ServFail, Some(0), true, never); // second failure: 200 ms
        let later = Instant::now() + Duration::from_millis(150);
        assert_eq!(c.failure(&k, later, never), Memo::Failing(TransientKind::ServFail));
        c.insert(k.clone(), entry(Duration::from_secs(1)));
        assert_eq!(c.failure(&k, Instant::now(), never), Memo::Clear);
    }

    fn never(_: Origin) -> bool {
        false
    }

    fn always(_: Origin) -> bool {
        true
    }

    #[test]
    fn failures_in_upstream_trouble_do_not_escalate() {
        let c = Cache::new(1000, Duration::from_millis(100));
        let k = key(1);
        for _ in 0..5 {
            c.remember_failure(k.clone(), TransientKind::ServFail, Some(0), false, never);
        }
        // still the first memo's length: 100 ms, not 1.6 s
        let later = Instant::now() + Duration::from_millis(150);
        assert_eq!(c.failure(&k, later, never), Memo::Retry(TransientKind::ServFail));
        // a name already backing off keeps its level (200 ms), neither reset nor doubled
        let b = key(2);
        c.remember_failure(b.clone(), TransientKind::ServFail, Some(0), true, never);
        c.remember_failure(b.clone(), TransientKind::ServFail, Some(0), true, never);
        c.remember_failure(b.clone(), TransientKind::ServFail, Some(0), false, never);
        let t = Instant::now();
        assert_eq!(c.failure(&b, t + Duration::from_millis(150), never), Memo::Failing(TransientKind::ServFail));
        assert_eq!(c.failure(&b, t + Duration::from_millis(250), never), Memo::Retry(TransientKind::ServFail));
    }

    #[test]
    fn single_failures_are_void_once_their_upstream_recovered() {
        let c = Cache::new(1000, Duration::from_secs(60));
        let (once, twice, ours) = (key(1), key(2), key(3));
        c.remember_failure(once.clone(), TransientKind::ServFail, Some(0), false, never);
        c.remember_failure(twice.clone(), TransientKind::ServFail, Some(0), true, never);
        c.remember_failure(twice.clone(), TransientKind::ServFail, Some(0), true, never);
        c.remember_failure(ours.clone(), TransientKind::Overloaded, None, true, never);
        let now = Instant::now();
        assert_eq!(c.failure(&once, now, never), Memo::Failing(TransientKind::ServFail));
        assert_eq!(c.failure(&once, now, always), Memo::Clear, "the upstream's failure, void");
        assert_eq!(c.failure(&once, now, never), Memo::Clear, "and gone");
        assert_eq!(c.failure(&twice, now, always), Memo::Failing(TransientKind::ServFail), "the name's");
        assert_eq!(c.failure(&ours, now, always), Memo::Failing(TransientKind::Overloaded), "no upstream");
        // a void record does not count toward the next failure's escalation
        c.remember_failure(once.clone(), TransientKind::ServFail, Some(0), false, never);
        c.remember_failure(once.clone(), TransientKind::ServFail, Some(0), true, always);
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(c.failure(&once, later, never), Memo::Retry(TransientKind::ServFail), "60 s memo, not 120 s");
    }
}
