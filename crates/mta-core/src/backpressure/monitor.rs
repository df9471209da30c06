//! The sampling task: every `sample_interval`, read every source, feed the windows and the state machine,
//! publish the state and a snapshot, log and count transitions.
//!
//! Metrics: gauge `mta_backpressure_state` (0 healthy, 1 degraded, 2 shedding), counter
//! `mta_backpressure_transitions_total{from,to,reason}`, gauge `mta_backpressure_signal{signal}`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mta_spool::{Op, Spool};
use parking_lot::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use super::machine::{Machine, Reading};
use super::window::{DnsWindow, LagWindow, SpoolWindow};
use super::{Backpressure, Signal, SignalView, Snapshot, State};
use crate::dns::Resolver;

/// The event-loop ticker's period.
const TICK: Duration = Duration::from_millis(100);
/// A spool without any commit for this long gets a probe commit, so its latency stays measured (a hung disk
/// shows as the probe's growing age; a recovered one as fast probes).
const PROBE_IDLE: Duration = Duration::from_secs(1);
/// The aux key the probe writes (one key, overwritten).
const PROBE_KEY: &[u8] = b"mta/backpressure/probe";

pub(super) fn spawn(bp: Backpressure, spool: Spool, resolver: Resolver) -> JoinHandle<()> {
    tokio::spawn(run(bp, spool, resolver))
}

/// Start time of the probe commit in flight, if any.
#[derive(Default)]
struct Probe {
    pending_since: Mutex<Option<Instant>>,
}

async fn run(bp: Backpressure, spool: Spool, resolver: Resolver) {
    let cfg = bp.config().clone();
    let mut helpers = JoinSet::new();
    let max_lag_us = Arc::new(AtomicU64::new(0));
    helpers.spawn(ticker(max_lag_us.clone()));
    let probe = Arc::new(Probe::default());

    let started = Instant::now();
    let mut machine = Machine::new(cfg.rules(), cfg.low_mark_ratio, cfg.min_dwell, started);
    let (mut spool_w, mut dns_w, mut lag_w) = (SpoolWindow::default(), DnsWindow::default(), LagWindow::default());
    let mut last_rounds = spool.stats().rounds;
    let mut last_round_at = started;
    let mut interval = tokio::time::interval(cfg.sample_interval.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(
        window = ?cfg.window, min_dwell = ?cfg.min_dwell, dns_action = ?cfg.dns_action,
        "back-pressure monitor started"
    );
    loop {
        interval.tick().await;
        while helpers.try_join_next().is_some() {}
        let now = Instant::now();
        let stats = spool.stats();
        if stats.rounds != last_rounds {
            last_rounds = stats.rounds;
            last_round_at = now;
        }
        spool_w.push(now, cfg.window, &stats);
        dns_w.push(now, cfg.window, &resolver.upstream_health());
        lag_w.push(now, cfg.window, Duration::from_micros(max_lag_us.swap(0, Ordering::Relaxed)));

        let pending = probe.pending_since.lock().map(|t| now.saturating_duration_since(t));
        if pending.is_none() && now.saturating_duration_since(last_round_at) >= PROBE_IDLE {
            start_probe(&mut helpers, &spool, &probe, now);
        }

        let readings = [
            Reading { signal: Signal::SpoolCommitP99, value: spool_w.latency_ms(0.99, pending) },
            Reading { signal: Signal::SpoolFsyncRate, value: spool_w.fsync_rate() },
            Reading { signal: Signal::DnsRtt, value: dns_w.rtt_ms() },
            Reading { signal: Signal::DnsFailureRate, value: dns_w.failure_rate() },
            Reading { signal: Signal::EventLoopLag, value: lag_w.p90_ms() },
            Reading { signal: Signal::DiskFree, value: free_disk_mb(spool.path()) },
            Reading { signal: Signal::Rss, value: rss_mb() },
        ];
        if let Some(t) = machine.observe(now, &readings) {
            let n = bp.count_transition();
            let reasons = t.reasons.join("; ");
            if t.to > t.from {
                tracing::warn!(from = t.from.as_str(), to = t.to.as_str(), cause = t.reason, %reasons, transitions = n,
                    "back-pressure: {} -> {}", t.from.as_str(), t.to.as_str());
            } else {
                tracing::info!(from = t.from.as_str(), to = t.to.as_str(), cause = t.reason, %reasons, transitions = n,
                    "back-pressure: {} -> {}", t.from.as_str(), t.to.as_str());
            }
            metrics::counter!("mta_backpressure_transitions_total",
                "from" => t.from.as_str(), "to" => t.to.as_str(), "reason" => t.reason)
            .increment(1);
        }
        let state = machine.state();
        metrics::gauge!("mta_backpressure_state").set(state as u8 as f64);
        for r in &readings {
            if let Some(v) = r.value {
                metrics::gauge!("mta_backpressure_signal", "signal" => r.signal.as_str()).set(v);
            }
        }
        let snapshot = Snapshot {
            state,
            reasons: machine.reasons(&readings),
            in_state_secs: now.saturating_duration_since(machine.since()).as_secs_f64(),
            transitions: bp.shared.transitions.load(Ordering::Relaxed),
            spool_commit_p50_ms: spool_w.latency_ms(0.5, pending),
            spool_rounds_in_window: spool_w.rounds(),
            dns_queries_in_window: dns_w.queries(),
            signals: views(&machine, &readings),
            window_secs: cfg.window.as_secs_f64(),
            min_dwell_secs: cfg.min_dwell.as_secs_f64(),
            low_mark_ratio: machine.ratio(),
            dns_action: cfg.dns_action,
            enabled: true,
        };
        bp.publish(state, snapshot);
    }
}

fn views(machine: &Machine, readings: &[Reading]) -> Vec<SignalView> {
    readings
        .iter()
        .map(|r| {
            let rule = machine.rules().iter().find(|rule| rule.signal == r.signal);
            let ratio = machine.ratio();
            let low = |m: Option<f64>| rule.and_then(|rule| m.map(|m| rule.low_mark(m, ratio)));
            SignalView {
                signal: r.signal,
                unit: r.signal.unit(),
                value: r.value.map(|v| (v * 1000.0).round() / 1000.0),
                level: match (rule, r.value) {
                    (Some(rule), Some(v)) => machine.level_of(rule, v),
                    _ => State::Healthy,
                },
                degraded_mark: rule.and_then(|r| r.marks.degraded),
                degraded_low_mark: low(rule.and_then(|r| r.marks.degraded)),
                shed_mark: rule.and_then(|r| r.marks.shed),
                shed_low_mark: low(rule.and_then(|r| r.marks.shed)),
                worse_when: if rule.is_some_and(|r| r.lower_is_worse) { "lower" } else { "higher" },
            }
        })
        .collect()
}

fn start_probe(helpers: &mut JoinSet<()>, spool: &Spool, probe: &Arc<Probe>, now: Instant) {
    *probe.pending_since.lock() = Some(now);
    let (spool, probe) = (spool.clone(), probe.clone());
    helpers.spawn(async move {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let op = Op::AuxPut { key: PROBE_KEY.to_vec(), value: stamp.to_string().into_bytes() };
        if let Err(e) = spool.commit(vec![op]).await {
            tracing::debug!(error = %e, "back-pressure spool probe failed");
        }
        *probe.pending_since.lock() = None;
    });
}

/// Records the largest lateness of a 100 ms sleep since the monitor last took it.
async fn ticker(max_lag_us: Arc<AtomicU64>) {
    loop {
        let before = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = before.elapsed().saturating_sub(TICK);
        max_lag_us.fetch_max(late.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }
}

/// Free space (for unprivileged users) of the filesystem holding `path`, MiB.
fn free_disk_mb(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct we own; `c` is a valid NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then(|| s.f_bavail as f64 * s.f_frsize as f64 / (1024.0 * 1024.0))
}

/// Resident set size of this process, MiB (Linux `/proc/self/statm`); `None` elsewhere.
fn rss_mb() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_and_rss_are_read() {
        let free = free_disk_mb(Path::new("/")).unwrap();
        assert!(free > 0.0);
        assert!(free_disk_mb(Path::new("/no/such/dir")).is_none());
        assert!(rss_mb().unwrap() > 1.0);
    }
}
