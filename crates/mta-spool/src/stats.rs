//! In-process counters of the spool, for the back-pressure monitor (no Prometheus needed), mirrored to the
//! `metrics` crate.
//!
//! Metric names: counters `mta_spool_fsyncs_total`, `mta_spool_commit_rounds_total`; histograms
//! `mta_spool_round_ops`, `mta_spool_commit_seconds`, `mta_spool_commit_wait_seconds`; gauge `mta_spool_records`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// How many recent round latencies are kept for percentiles.
pub const LATENCY_RING_LEN: usize = 1024;

/// A snapshot of the spool's counters, taken by [`crate::Spool::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// fsync/fdatasync calls issued by the spool since open.
    pub fsyncs: u64,
    /// Commit rounds completed (successfully or not) since open.
    pub rounds: u64,
    /// Operations (puts, updates, removes, aux writes) committed since open.
    pub ops: u64,
    /// Message body bytes appended to segments since open.
    pub body_bytes: u64,
    /// Messages in the spool now.
    pub records: u64,
    /// Latency of the most recent rounds in microseconds (first op dequeued to waiters answered), oldest first,
    /// at most [`LATENCY_RING_LEN`].
    pub recent_commit_micros: Vec<u64>,
}

impl SpoolStats {
    /// The `p`-th percentile (0.0..=1.0) of the recent round latencies; `None` before the first round.
    pub fn commit_latency_percentile(&self, p: f64) -> Option<Duration> {
        if self.recent_commit_micros.is_empty() {
            return None;
        }
        let mut v = self.recent_commit_micros.clone();
        v.sort_unstable();
        let rank = (p.clamp(0.0, 1.0) * (v.len() - 1) as f64).round() as usize;
        v.get(rank).map(|&us| Duration::from_micros(us))
    }
}

/// The live counters behind [`SpoolStats`], shared by the committer and the public handle.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    fsyncs: AtomicU64,
    rounds: AtomicU64,
    ops: AtomicU64,
    body_bytes: AtomicU64,
    records: AtomicI64,
    recent: Mutex<VecDeque<u64>>,
}

impl Stats {
    /// Count one fsync/fdatasync.
    pub(crate) fn fsync(&self) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mta_spool_fsyncs_total").increment(1);
    }

    /// Count one finished round of `ops` operations and `bytes` body bytes that took `latency`.
    pub(crate) fn round(&self, ops: usize, bytes: u64, latency: Duration) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops as u64, Ordering::Relaxed);
        self.body_bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("mta_spool_commit_rounds_total").increment(1);
        metrics::histogram!("mta_spool_round_ops").record(ops as f64);
        metrics::histogram!("mta_spool_commit_seconds").record(latency.as_secs_f64());
        let mut ring = self.recent.lock();
        if ring.len() == LATENCY_RING_LEN {
            ring.pop_front();
        }
        ring.push_back(latency.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Record one op's wait from enqueue to answer.
    pub(crate) fn wait(&self, waited: Duration) {
        metrics::histogram!("mta_spool_commit_wait_seconds").record(waited.as_secs_f64());
    }

    /// Set the number of records (at open).
    pub(crate) fn set_records(&self, n: i64) {
        self.records.store(n, Ordering::Relaxed);
        metrics::gauge!("mta_spool_records").set(n as f64);
    }

    /// Add `delta` (may be negative) to the number of records.
    pub(crate) fn add_records(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let now = self.records.fetch_add(delta, Ordering::Relaxed) + delta;
        metrics::gauge!("mta_spool_records").set(now.max(0) as f64);
    }

    /// Number of records now.
    pub(crate) fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed).max(0) as u64
    }

    /// A consistent-enough snapshot.
    pub(crate) fn snapshot(&self) -> SpoolStats {
        SpoolStats {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            rounds: self.rounds.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            body_bytes: self.body_bytes.load(Ordering::Relaxed),
            records: self.records(),
            recent_commit_micros: self.recent.lock().iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_latencies_and_percentiles_work() {
        let s = Stats::default();
        for i in 0..(LATENCY_RING_LEN as u64 + 10) {
            s.round(1, 10, Duration::from_micros(i));
        }
        let snap = s.snapshot();
        assert_eq!(snap.recent_commit_micros.len(), LATENCY_RING_LEN);
        assert_eq!(snap.recent_commit_micros[0], 10);
        assert_eq!(snap.rounds, LATENCY_RING_LEN as u64 + 10);
        let p50 = snap.commit_latency_percentile(0.5).unwrap();
        assert!(p50 >= Duration::from_micros(500) && p50 <= Duration::from_micros(530));
        assert_eq!(SpoolStats::default().commit_latency_percentile(0.99), None);
    }
}
