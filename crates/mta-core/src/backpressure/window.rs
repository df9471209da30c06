//! Sliding windows: counters sampled every tick become signals over the last `window`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mta_spool::SpoolStats;

use crate::dns::UpstreamHealth;

/// Most commit latencies kept in a window (beyond, the oldest go first): bounds the sort per tick.
const MAX_SAMPLES: usize = 8192;

/// Spool commit latencies and fsyncs over the window.
#[derive(Debug, Default)]
pub(crate) struct SpoolWindow {
    /// Latency of every round completed in the window, µs, with when it was seen.
    latencies: VecDeque<(Instant, u64)>,
    /// fsync counter at each tick.
    fsyncs: VecDeque<(Instant, u64)>,
    last_rounds: Option<u64>,
}

impl SpoolWindow {
    /// Take the rounds completed since the last tick from `stats` (the newest entries of its ring).
    pub fn push(&mut self, now: Instant, window: Duration, stats: &SpoolStats) {
        let new = match self.last_rounds {
            // The first tick only sets the baseline: rounds before the monitor started are not "recent".
            None => 0,
            Some(last) => stats.rounds.saturating_sub(last) as usize,
        };
        self.last_rounds = Some(stats.rounds);
        let ring = &stats.recent_commit_micros;
        let take = new.min(ring.len());
        for &us in &ring[ring.len() - take..] {
            self.latencies.push_back((now, us));
        }
        while self.latencies.len() > MAX_SAMPLES {
            self.latencies.pop_front();
        }
        self.fsyncs.push_back((now, stats.fsyncs));
        self.expire(now, window);
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while self.latencies.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > window) {
            self.latencies.pop_front();
        }
        // Keep one fsync sample at or before the window start, so the rate spans the whole window.
        while self.fsyncs.len() > 2
            && self.fsyncs.get(1).is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window)
        {
            self.fsyncs.pop_front();
        }
    }

    /// Rounds seen in the window.
    pub fn rounds(&self) -> usize {
        self.latencies.len()
    }

    /// The `q` quantile of round latencies in the window, ms, counting `pending` (the age of a commit not
    /// finished yet) as one more sample. `None` without any.
    pub fn latency_ms(&self, q: f64, pending: Option<Duration>) -> Option<f64> {
        let mut v: Vec<u64> = self.latencies.iter().map(|(_, us)| *us).collect();
        if let Some(p) = pending {
            v.push(p.as_micros().min(u64::MAX as u128) as u64);
        }
        quantile(&mut v, q).map(|us| us as f64 / 1000.0)
    }

    /// fsyncs per second over the window; `None` before two ticks.
    pub fn fsync_rate(&self) -> Option<f64> {
        let (t0, f0) = *self.fsyncs.front()?;
        let (t1, f1) = *self.fsyncs.back()?;
        let secs = t1.saturating_duration_since(t0).as_secs_f64();
        (secs > 0.0).then(|| f1.saturating_sub(f0) as f64 / secs)
    }
}

/// How many windows the last DNS evidence is kept when no query goes upstream any more. While a node sheds
/// because of DNS, intake stops and lookups may stop with it: the last value holds for this long (not
/// forever: then real traffic probes the upstreams again, like a half-open circuit breaker).
const DNS_EVIDENCE_WINDOWS: u32 = 3;

/// DNS upstream health over the window, weighted by the queries each upstream got.
#[derive(Debug, Default)]
pub(crate) struct DnsWindow {
    /// Per tick with queries: (when, queries in the tick, Σ queries × srtt ms, Σ queries × failure rate).
    ticks: VecDeque<(Instant, u64, f64, f64)>,
    last_queries: HashMap<SocketAddr, u64>,
}

impl DnsWindow {
    pub fn push(&mut self, now: Instant, window: Duration, health: &[UpstreamHealth]) {
        let (mut q, mut rtt, mut fail) = (0u64, 0.0, 0.0);
        for h in health {
            let delta = match self.last_queries.insert(h.addr, h.queries) {
                Some(last) => h.queries.saturating_sub(last),
                None => 0,
            };
            if delta > 0 {
                q += delta;
                rtt += delta as f64 * h.srtt.as_secs_f64() * 1000.0;
                fail += delta as f64 * (h.timeout_rate + h.servfail_rate).min(1.0);
            }
        }
        if q > 0 {
            self.ticks.push_back((now, q, rtt, fail));
        }
        // Ticks older than the window go, except the newest one while it is younger than the evidence hold.
        let hold = window * DNS_EVIDENCE_WINDOWS;
        while let Some((t, ..)) = self.ticks.front() {
            let age = now.saturating_duration_since(*t);
            if age > hold || (age > window && self.ticks.len() > 1) {
                self.ticks.pop_front();
            } else {
                break;
            }
        }
    }

    fn totals(&self) -> (u64, f64, f64) {
        self.ticks.iter().fold((0, 0.0, 0.0), |(q, r, f), (_, tq, tr, tf)| (q + tq, r + tr, f + tf))
    }

    /// Queries sent upstream in the window.
    pub fn queries(&self) -> u64 {
        self.totals().0
    }

    /// Query-weighted smoothed RTT, ms; `None` when no query went upstream in the window.
    pub fn rtt_ms(&self) -> Option<f64> {
        let (q, r, _) = self.totals();
        (q > 0).then(|| r / q as f64)
    }

    /// Query-weighted timeout + SERVFAIL rate; `None` when no query went upstream in the window.
    pub fn failure_rate(&self) -> Option<f64> {
        let (q, _, f) = self.totals();
        (q > 0).then(|| f / q as f64)
    }
}

/// Event-loop lag samples (ms) over the window.
#[derive(Debug, Default)]
pub(crate) struct LagWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl LagWindow {
    pub fn push(&mut self, now: Instant, window: Duration, lag: Duration) {
        self.samples.push_back((now, lag.as_micros().min(u64::MAX as u128) as u64));
        while self.samples.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > window) {
            self.samples.pop_front();
        }
    }

    /// p90 of the lag samples, ms: a sustained lag, not one hiccup.
    pub fn p90_ms(&self) -> Option<f64> {
        let mut v: Vec<u64> = self.samples.iter().map(|(_, us)| *us).collect();
        quantile(&mut v, 0.9).map(|us| us as f64 / 1000.0)
    }
}

/// Nearest-rank quantile (same rank rule as `SpoolStats::commit_latency_percentile`).
fn quantile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round() as usize;
    v.get(rank).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rounds: u64, fsyncs: u64, ring: &[u64]) -> SpoolStats {
        SpoolStats { rounds, fsyncs, recent_commit_micros: ring.to_vec(), ..SpoolStats::default() }
    }

    #[test]
    fn spool_window_takes_only_new_rounds_and_forgets_old_ones() {
        let w = Duration::from_secs(2);
        let t0 = Instant::now();
        let mut s = SpoolWindow::default();
        s.push(t0, w, &stats(5, 5, &[9_000_000; 5]));
        assert_eq!(s.rounds(), 0, "history before the first tick is not in the window");
        s.push(t0 + Duration::from_millis(250), w, &stats(7, 9, &[9_000_000, 9_000_000, 9_000_000, 1_000, 3_000_000]));
        assert_eq!(s.rounds(), 2);
        assert_eq!(s.latency_ms(0.99, None), Some(3000.0));
        assert_eq!(s.latency_ms(0.0, None), Some(1.0));
        assert_eq!(s.fsync_rate(), Some(16.0));
        // A commit pending for 5 s counts while it is pending.
        assert_eq!(s.latency_ms(0.99, Some(Duration::from_secs(5))), Some(5000.0));
        // Three seconds later, with one fast round: the slow one is out of the window.
        s.push(t0 + Duration::from_millis(3250), w, &stats(8, 10, &[1_000, 3_000_000, 2_000]));
        assert_eq!(s.rounds(), 1);
        assert_eq!(s.latency_ms(0.99, None), Some(2.0));
    }

    #[test]
    fn dns_window_weighs_by_queries_and_is_silent_without_any() {
        let w = Duration::from_secs(2);
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:53".parse().unwrap();
        let h = |addr, ms, rate, queries| UpstreamHealth {
            addr,
            srtt: Duration::from_millis(ms),
            timeout_rate: rate,
            servfail_rate: 0.0,
            queries,
            in_trouble: false,
        };
        let mut d = DnsWindow::default();
        d.push(t0, w, &[h(a, 900, 0.9, 100), h(b, 10, 0.0, 100)]);
        assert_eq!(d.rtt_ms(), None, "no query in the window yet");
        d.push(t0 + Duration::from_millis(250), w, &[h(a, 900, 0.9, 101), h(b, 10, 0.0, 103)]);
        assert_eq!(d.queries(), 4);
        assert!((d.rtt_ms().unwrap() - (900.0 + 30.0) / 4.0).abs() < 1e-6);
        assert!((d.failure_rate().unwrap() - 0.9 / 4.0).abs() < 1e-6);
        // Idle upstreams: the last evidence holds for three windows, then says nothing.
        d.push(t0 + Duration::from_secs(5), w, &[h(a, 900, 0.9, 101), h(b, 10, 0.0, 103)]);
        assert!((d.rtt_ms().unwrap() - (900.0 + 30.0) / 4.0).abs() < 1e-6);
        d.push(t0 + Duration::from_secs(7), w, &[h(a, 900, 0.9, 101), h(b, 10, 0.0, 103)]);
        assert_eq!(d.rtt_ms(), None);
        // New queries replace the old evidence as the window moves.
        d.push(t0 + Duration::from_secs(8), w, &[h(a, 900, 0.9, 101), h(b, 20, 0.0, 105)]);
        d.push(t0 + Duration::from_secs(11), w, &[h(a, 900, 0.9, 101), h(b, 30, 0.0, 106)]);
        assert_eq!(d.rtt_ms(), Some(30.0));
    }

    #[test]
    fn lag_p90_ignores_a_single_hiccup() {
        let w = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut l = LagWindow::default();
        for i in 0..40 {
            let lag = if i == 7 { 900 } else { 3 };
            l.push(t0 + Duration::from_millis(250 * i), w, Duration::from_millis(lag));
        }
        assert_eq!(l.p90_ms(), Some(3.0));
    }
}
