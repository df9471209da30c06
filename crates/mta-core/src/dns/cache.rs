//! The answer cache: bounded in entries (moka, TinyLFU admission + LRU eviction), keyed by
//! (lowercase FQDN, record type). An entry lives until `expires + serve_stale_for`, so an expired
//! answer can still be served when the upstreams fail (RFC 8767); `expires` alone decides freshness.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

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
}

impl Entry {
    pub fn new(data: Result<Answer, DnsError>, ttl: Duration, stale_for: Duration) -> Self {
        let now = Instant::now();
        Self { data, ttl, expires: now + ttl, stale_until: now + ttl + stale_for, refreshing: AtomicBool::new(false) }
    }
}

struct EntryExpiry;

impl moka::Expiry<Key, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &Key, v: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(v.stale_until.saturating_duration_since(now))
    }

    fn expire_after_update(&self, _: &Key, v: &Arc<Entry>, now: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(v.stale_until.saturating_duration_since(now))
    }
}

/// Answers plus a short memo of recent transient failures.
pub(crate) struct Cache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    /// (name, type) that failed transiently a moment ago: callers get the failure (or a stale
    /// answer) at once instead of a new query each. Bounded too.
    failures: moka::sync::Cache<Key, Failure>,
    failure_memo: Duration,
}

/// RFC 9520: resolution failures are cached, with exponential backoff for persistent ones
/// (`failure_memo`, x2 per consecutive failure, at most 5 minutes). A success resets it.
#[derive(Debug, Clone, Copy)]
struct Failure {
    kind: TransientKind,
    count: u32,
    until: Instant,
}

const MAX_FAILURE_MEMO: Duration = Duration::from_secs(300);

impl Cache {
    pub fn new(capacity: u64, failure_memo: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder().max_capacity(capacity).expire_after(EntryExpiry).build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(capacity.max(1024))
                .time_to_live(MAX_FAILURE_MEMO * 2)
                .build(),
            failure_memo,
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    pub fn insert(&self, key: Key, entry: Arc<Entry>) {
        self.failures.invalidate(&key);
        self.entries.insert(key, entry);
    }

    pub fn recent_failure(&self, key: &Key) -> Option<TransientKind> {
        self.failures.get(key).filter(|f| Instant::now() < f.until).map(|f| f.kind)
    }

    pub fn remember_failure(&self, key: Key, kind: TransientKind) {
        let count = self.failures.get(&key).map_or(1, |f| f.count.saturating_add(1));
        let memo = self.failure_memo.saturating_mul(1 << (count - 1).min(16)).min(MAX_FAILURE_MEMO);
        let until = Instant::now() + memo;
        self.failures.insert(key, Failure { kind, count, until });
    }

    /// Entries currently held (approximate: moka applies evictions lazily).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}
