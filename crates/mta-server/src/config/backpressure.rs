//! `[backpressure]`: load-shedding marks, flat in the file, `mta_core::backpressure`'s config in the engine.
//!
//! High marks enter a state, low marks (high × `low_mark_ratio`) leave it, after at least `min_dwell` in the
//! state. A mark of 0 is off. Defaults are [`BackpressureConfig::default`]'s.

use std::time::Duration;

use mta_core::backpressure::{BackpressureConfig, DnsAction, Marks};
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::duration::HumanDuration;

/// Shortest `sample_interval` accepted.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// `[backpressure]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackpressureSection {
    /// Master switch.
    pub enabled: bool,
    /// Sliding window the signals are computed over.
    pub window: HumanDuration,
    /// Minimum time in a state before leaving it.
    pub min_dwell: HumanDuration,
    /// How often the monitor samples (added key).
    pub sample_interval: HumanDuration,
    /// Spool commit p99 (ms) entering degraded.
    pub commit_p99_degraded_ms: f64,
    /// Spool commit p99 (ms) entering shedding.
    pub commit_p99_shed_ms: f64,
    /// fsyncs per second entering degraded; 0: off (added key; depends on the disk).
    pub fsyncs_per_sec_degraded: f64,
    /// fsyncs per second entering shedding; 0: off (added key).
    pub fsyncs_per_sec_shed: f64,
    /// Fraction of the high mark below which a state is left (hysteresis).
    pub low_mark_ratio: f64,
    /// DNS upstream smoothed RTT (ms) entering degraded.
    pub dns_rtt_degraded_ms: f64,
    /// DNS upstream smoothed RTT (ms) entering shedding.
    pub dns_rtt_shed_ms: f64,
    /// DNS upstream failure rate (timeouts + SERVFAIL) entering degraded (added key).
    pub dns_failure_rate_degraded: f64,
    /// DNS upstream failure rate entering shedding.
    pub dns_failure_rate_shed: f64,
    /// `shed`: DNS signals shed intake like the others; `defer`: at most degraded, delivery defers the
    /// destinations whose lookups fail (added key).
    pub dns_action: DnsAction,
    /// Event-loop lag (ms) entering degraded (added key).
    pub event_loop_lag_degraded_ms: f64,
    /// Event-loop lag (ms) entering shedding.
    pub event_loop_lag_shed_ms: f64,
    /// Free disk (MiB) below which intake sheds; 0: off.
    pub min_free_disk_mb: u64,
    /// Process RSS (MiB) entering degraded; 0: off (added key).
    pub rss_degraded_mb: f64,
    /// Process RSS (MiB) entering shedding; 0: off (added key).
    pub rss_shed_mb: f64,
    /// `Retry-After` seconds sent with HTTP 503.
    pub retry_after_secs: u64,
    /// While degraded: delay before the SMTP greeting (added key).
    pub degraded_greeting_delay: HumanDuration,
    /// While degraded: most SMTP sessions at once; 0: half of `smtp.max_connections` (added key).
    pub degraded_smtp_sessions: usize,
    /// While degraded: most HTTP injections in flight (added key).
    pub degraded_http_in_flight: usize,
}

/// A mark as the file writes it: 0 is off.
fn mark(m: Option<f64>) -> f64 {
    m.unwrap_or(0.0)
}

impl Default for BackpressureSection {
    fn default() -> Self {
        let c = BackpressureConfig::default();
        BackpressureSection {
            enabled: c.enabled,
            window: c.window.into(),
            min_dwell: c.min_dwell.into(),
            sample_interval: c.sample_interval.into(),
            commit_p99_degraded_ms: mark(c.commit_p99_ms.degraded),
            commit_p99_shed_ms: mark(c.commit_p99_ms.shed),
            fsyncs_per_sec_degraded: mark(c.fsyncs_per_sec.degraded),
            fsyncs_per_sec_shed: mark(c.fsyncs_per_sec.shed),
            low_mark_ratio: c.low_mark_ratio,
            dns_rtt_degraded_ms: mark(c.dns_rtt_ms.degraded),
            dns_rtt_shed_ms: mark(c.dns_rtt_ms.shed),
            dns_failure_rate_degraded: mark(c.dns_failure_rate.degraded),
            dns_failure_rate_shed: mark(c.dns_failure_rate.shed),
            dns_action: c.dns_action,
            event_loop_lag_degraded_ms: mark(c.event_loop_lag_ms.degraded),
            event_loop_lag_shed_ms: mark(c.event_loop_lag_ms.shed),
            min_free_disk_mb: c.min_free_disk_mb,
            rss_degraded_mb: mark(c.rss_mb.degraded),
            rss_shed_mb: mark(c.rss_mb.shed),
            retry_after_secs: c.retry_after.as_secs(),
            degraded_greeting_delay: c.degraded_greeting_delay.into(),
            // The file's default follows `smtp.max_connections` (see `to_core`), not the core's fixed number.
            degraded_smtp_sessions: 0,
            degraded_http_in_flight: c.degraded_http_in_flight,
        }
    }
}

impl BackpressureSection {
    /// The engine's form; `smtp_max_connections` sizes the default degraded session cap.
    pub fn to_core(&self, smtp_max_connections: usize) -> BackpressureConfig {
        BackpressureConfig {
            enabled: self.enabled,
            sample_interval: self.sample_interval.get(),
            window: self.window.get(),
            min_dwell: self.min_dwell.get(),
            low_mark_ratio: self.low_mark_ratio,
            commit_p99_ms: Marks::new(self.commit_p99_degraded_ms, self.commit_p99_shed_ms),
            fsyncs_per_sec: Marks::new(self.fsyncs_per_sec_degraded, self.fsyncs_per_sec_shed),
            dns_rtt_ms: Marks::new(self.dns_rtt_degraded_ms, self.dns_rtt_shed_ms),
            dns_failure_rate: Marks::new(self.dns_failure_rate_degraded, self.dns_failure_rate_shed),
            dns_action: self.dns_action,
            event_loop_lag_ms: Marks::new(self.event_loop_lag_degraded_ms, self.event_loop_lag_shed_ms),
            rss_mb: Marks::new(self.rss_degraded_mb, self.rss_shed_mb),
            min_free_disk_mb: self.min_free_disk_mb,
            retry_after: Duration::from_secs(self.retry_after_secs.max(1)),
            degraded_greeting_delay: self.degraded_greeting_delay.get(),
            degraded_smtp_sessions: if self.degraded_smtp_sessions == 0 {
                (smtp_max_connections / 2).max(1)
            } else {
                self.degraded_smtp_sessions
            },
            degraded_http_in_flight: self.degraded_http_in_flight.max(1),
        }
    }

    /// The checks serde cannot express.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if !(self.low_mark_ratio > 0.0 && self.low_mark_ratio <= 1.0) {
            return Err(Invalid::new("backpressure.low_mark_ratio", "must be in (0, 1]"));
        }
        if self.sample_interval.get() < MIN_SAMPLE_INTERVAL || self.window.get() < self.sample_interval.get() {
            return Err(Invalid::new(
                "backpressure.window",
                "sample_interval must be >= 10ms and window >= sample_interval",
            ));
        }
        Ok(())
    }
}
