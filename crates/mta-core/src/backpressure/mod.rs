//! Back-pressure: measure how healthy this node is, and shed intake before it falls over.
//!
//! # Layout
//! - this file: [`BackpressureConfig`] (marks and limits), [`State`], the [`Backpressure`] handle that the
//!   SMTP and HTTP hot paths read (one atomic load), its [`Snapshot`] for `/health/ready` and
//!   `GET /api/v1/health`, and [`Overloaded`], the typed refusal.
//! - `machine.rs`: the state machine `healthy → degraded → shedding` — synchronous, fed synthetic readings in
//!   its tests: high marks enter a state, low marks (`high × low_mark_ratio`) leave it, and only after
//!   `min_dwell` in the state.
//! - `window.rs`: sliding windows that turn counters into signals (spool commit p50/p99 and fsyncs/s, DNS
//!   upstream RTT and failure rate, event-loop lag).
//! - `monitor.rs`: the sampling task (every 250 ms): reads the spool's stats, the resolver pool's upstream
//!   health, an event-loop ticker, `statvfs` of the spool's filesystem and the process RSS; runs a spool
//!   probe when the spool is idle; logs and counts every transition.
//!
//! # What is measured, and why
//! - **Spool commit latency** (p99 and p50 of group-commit rounds in the window) and **fsyncs/s**: the disk's
//!   IOPS as the spool sees them. A commit that has not finished yet counts too (the probe's age), so a hung
//!   disk is seen while it hangs, not after.
//! - **DNS upstream health**: smoothed RTT and timeout + SERVFAIL rate of *our* upstream resolvers, weighted
//!   by the queries each got in the window. A slow destination domain does not show here (it is deferred by
//!   delivery). When no query goes upstream any more, the last evidence holds for three windows, then the
//!   signal is absent (not "good" or "bad"): real traffic probes the upstreams again.
//! - **Event-loop lag**: how late a 100 ms ticker wakes (p90 over the window): CPU starvation or blocking.
//! - **Free disk** of the spool's filesystem and **RSS** of the process.
//!
//! While shedding, delivery keeps draining: that is how a node recovers. Nothing here refuses work already
//! accepted: a transaction past `MAIL`, an injection past its check, finishes.

mod machine;
mod monitor;
mod window;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use machine::{Machine, Reading, Rule, Transition};

/// Health states of the node (`healthy → degraded → shedding`, docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = HealthState))]
pub enum State {
    /// Everything within its marks.
    Healthy = 0,
    /// A degraded mark crossed: intake is slowed (greeting delay, fewer SMTP sessions and HTTP injections).
    Degraded = 1,
    /// A shed mark crossed: new work is refused with temporary codes and `/health/ready` fails.
    Shedding = 2,
}

impl State {
    /// `healthy`, `degraded` or `shedding`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Shedding => "shedding",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Healthy,
            1 => State::Degraded,
            _ => State::Shedding,
        }
    }
}

/// The signals the monitor watches (names used in reasons, the health API and metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Signal {
    /// p99 of spool commit rounds in the window, ms.
    SpoolCommitP99,
    /// fsync calls per second in the window.
    SpoolFsyncRate,
    /// Smoothed RTT of our DNS upstreams (query-weighted), ms.
    DnsRtt,
    /// Timeout + SERVFAIL rate of our DNS upstreams (query-weighted), 0..1.
    DnsFailureRate,
    /// Event-loop lag (p90 of the ticker's lateness in the window), ms.
    EventLoopLag,
    /// Free space of the spool's filesystem, MiB (lower is worse).
    DiskFree,
    /// Resident set size of the process, MiB.
    Rss,
}

impl Signal {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::SpoolCommitP99 => "spool_commit_p99",
            Signal::SpoolFsyncRate => "spool_fsync_rate",
            Signal::DnsRtt => "dns_rtt",
            Signal::DnsFailureRate => "dns_failure_rate",
            Signal::EventLoopLag => "event_loop_lag",
            Signal::DiskFree => "disk_free",
            Signal::Rss => "rss",
        }
    }

    /// The unit of its value.
    pub fn unit(self) -> &'static str {
        match self {
            Signal::SpoolCommitP99 | Signal::DnsRtt | Signal::EventLoopLag => "ms",
            Signal::SpoolFsyncRate => "per_second",
            Signal::DnsFailureRate => "ratio",
            Signal::DiskFree | Signal::Rss => "MiB",
        }
    }
}

/// The high marks of one signal; `None` turns that mark off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Marks {
    /// Enter `degraded` at or above this value.
    pub degraded: Option<f64>,
    /// Enter `shedding` at or above this value.
    pub shed: Option<f64>,
}

impl Marks {
    /// Both marks; a zero or negative value turns that mark off (the config's "0 = off").
    pub fn new(degraded: f64, shed: f64) -> Marks {
        Marks { degraded: (degraded > 0.0).then_some(degraded), shed: (shed > 0.0).then_some(shed) }
    }
}

/// What a DNS upstream signal above its marks does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DnsAction {
    /// Shed intake like any other signal: other nodes may have healthier resolvers.
    #[default]
    Shed,
    /// Never shed intake for DNS (at most `degraded`): delivery defers the destinations whose lookups fail.
    Defer,
}

/// Marks, window and the limits applied while degraded. Defaults are the config file's.
#[derive(Debug, Clone)]
pub struct BackpressureConfig {
    /// Off: always healthy, no monitor task.
    pub enabled: bool,
    /// How often the monitor samples.
    pub sample_interval: Duration,
    /// Sliding window of the signals.
    pub window: Duration,
    /// Minimum time in a state before leaving it for a lower one.
    pub min_dwell: Duration,
    /// Low mark = high mark × this (for "lower is worse" signals: high mark ÷ this).
    pub low_mark_ratio: f64,
    /// Spool commit p99, ms.
    pub commit_p99_ms: Marks,
    /// fsyncs per second.
    pub fsyncs_per_sec: Marks,
    /// DNS upstream smoothed RTT, ms.
    pub dns_rtt_ms: Marks,
    /// DNS upstream failure (timeout + SERVFAIL) rate.
    pub dns_failure_rate: Marks,
    /// What DNS signals may do.
    pub dns_action: DnsAction,
    /// Event-loop lag, ms.
    pub event_loop_lag_ms: Marks,
    /// Process RSS, MiB.
    pub rss_mb: Marks,
    /// Shed below this much free disk (MiB) on the spool's filesystem; 0: off.
    pub min_free_disk_mb: u64,
    /// `Retry-After` for HTTP 503.
    pub retry_after: Duration,
    /// While degraded: wait this long before the SMTP greeting.
    pub degraded_greeting_delay: Duration,
    /// While degraded: at most this many SMTP sessions (new ones beyond get `421 4.3.2`).
    pub degraded_smtp_sessions: usize,
    /// While degraded: at most this many HTTP injections in flight (beyond: `503` + `Retry-After`).
    pub degraded_http_in_flight: usize,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        BackpressureConfig {
            enabled: true,
            sample_interval: Duration::from_millis(250),
            window: Duration::from_secs(10),
            min_dwell: Duration::from_secs(5),
            low_mark_ratio: 0.5,
            commit_p99_ms: Marks::new(250.0, 1000.0),
            fsyncs_per_sec: Marks::default(),
            dns_rtt_ms: Marks::new(500.0, 2000.0),
            dns_failure_rate: Marks::new(0.2, 0.5),
            dns_action: DnsAction::Shed,
            event_loop_lag_ms: Marks::new(200.0, 500.0),
            rss_mb: Marks::default(),
            min_free_disk_mb: 1024,
            retry_after: Duration::from_secs(5),
            degraded_greeting_delay: Duration::from_millis(500),
            degraded_smtp_sessions: 5000,
            degraded_http_in_flight: 64,
        }
    }
}

impl BackpressureConfig {
    /// The rules of the state machine, one per watched signal.
    pub fn rules(&self) -> Vec<Rule> {
        let dns_cap = match self.dns_action {
            DnsAction::Shed => State::Shedding,
            DnsAction::Defer => State::Degraded,
        };
        let mut rules = vec![
            Rule::higher(Signal::SpoolCommitP99, self.commit_p99_ms),
            Rule::higher(Signal::SpoolFsyncRate, self.fsyncs_per_sec),
            Rule::higher(Signal::DnsRtt, self.dns_rtt_ms).capped_at(dns_cap),
            Rule::higher(Signal::DnsFailureRate, self.dns_failure_rate).capped_at(dns_cap),
            Rule::higher(Signal::EventLoopLag, self.event_loop_lag_ms),
            Rule::higher(Signal::Rss, self.rss_mb),
        ];
        if self.min_free_disk_mb > 0 {
            rules.push(Rule::lower(Signal::DiskFree, self.min_free_disk_mb as f64));
        }
        rules
    }
}

/// Why a new connection, transaction or injection is refused. Map: SMTP connect `421 4.3.2`, SMTP `MAIL`
/// `451 4.3.2`, HTTP `503` with `Retry-After`. Retry later, or on another node.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Overloaded {
    /// The node sheds load (the reasons say which signals).
    #[error("shedding load: {reasons}")]
    Shedding {
        /// The signals above their marks, human-readable.
        reasons: String,
        /// When to come back.
        retry_after: Duration,
    },
    /// The node is degraded and the reduced concurrency limit is reached.
    #[error("degraded: at most {limit} {what} at once")]
    Busy {
        /// `SMTP sessions` or `HTTP injections`.
        what: &'static str,
        /// The limit while degraded.
        limit: usize,
        /// When to come back.
        retry_after: Duration,
    },
}

impl Overloaded {
    /// When to come back (HTTP `Retry-After`).
    pub fn retry_after(&self) -> Duration {
        match self {
            Overloaded::Shedding { retry_after, .. } | Overloaded::Busy { retry_after, .. } => *retry_after,
        }
    }
}

impl From<Overloaded> for crate::InjectError {
    fn from(e: Overloaded) -> Self {
        crate::InjectError::Overloaded(e.to_string())
    }
}

/// One signal as shown by the health API.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignalView {
    /// Which signal.
    pub signal: Signal,
    /// Its unit.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "ms"))]
    pub unit: &'static str,
    /// Current value over the window; `null` when the window holds no evidence (no DNS query, ...).
    pub value: Option<f64>,
    /// The state this value alone asks for (hysteresis included).
    pub level: State,
    /// Enter `degraded` at this value.
    pub degraded_mark: Option<f64>,
    /// Leave `degraded` past this value.
    pub degraded_low_mark: Option<f64>,
    /// Enter `shedding` at this value.
    pub shed_mark: Option<f64>,
    /// Leave `shedding` past this value.
    pub shed_low_mark: Option<f64>,
    /// "lower" for free disk (worse when lower), else "higher".
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^(higher|lower)$"))]
    pub worse_when: &'static str,
}

/// Everything the monitor knows at one sample, for the health endpoints.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    /// Current state.
    pub state: State,
    /// The signals holding the node in this state (empty when healthy).
    pub reasons: Vec<String>,
    /// Seconds in the current state.
    pub in_state_secs: f64,
    /// Transitions since start.
    pub transitions: u64,
    /// Spool commit p50 over the window, ms (informative, no marks).
    pub spool_commit_p50_ms: Option<f64>,
    /// Spool commit rounds in the window (the evidence behind the commit signals).
    pub spool_rounds_in_window: usize,
    /// Queries sent to our DNS upstreams in the window (none: the DNS signals are absent).
    pub dns_queries_in_window: u64,
    /// Every signal, its value and marks.
    pub signals: Vec<SignalView>,
    /// Window and dwell, seconds.
    pub window_secs: f64,
    /// Minimum dwell, seconds.
    pub min_dwell_secs: f64,
    /// Low mark ratio.
    pub low_mark_ratio: f64,
    /// What DNS signals may do.
    pub dns_action: DnsAction,
    /// Whether the monitor runs at all.
    pub enabled: bool,
}

struct Shared {
    config: BackpressureConfig,
    /// [`State`] as u8: the only thing hot paths read.
    state: AtomicU8,
    transitions: AtomicU64,
    snapshot: RwLock<Arc<Snapshot>>,
}

/// The node's back-pressure state, shared by the monitor (writer) and every intake path (readers). Cheap to
/// clone; reading the state is one atomic load.
#[derive(Clone)]
pub struct Backpressure {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Backpressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backpressure").field("state", &self.state()).finish()
    }
}

impl Backpressure {
    /// A handle in `healthy` that nothing updates until [`Backpressure::start`]'s monitor runs.
    pub fn new(config: BackpressureConfig) -> Backpressure {
        let snapshot = Snapshot {
            state: State::Healthy,
            reasons: Vec::new(),
            in_state_secs: 0.0,
            transitions: 0,
            spool_commit_p50_ms: None,
            spool_rounds_in_window: 0,
            dns_queries_in_window: 0,
            signals: Vec::new(),
            window_secs: config.window.as_secs_f64(),
            min_dwell_secs: config.min_dwell.as_secs_f64(),
            low_mark_ratio: config.low_mark_ratio,
            dns_action: config.dns_action,
            enabled: config.enabled,
        };
        metrics::gauge!("mta_backpressure_state").set(0.0);
        Backpressure {
            shared: Arc::new(Shared {
                config,
                state: AtomicU8::new(State::Healthy as u8),
                transitions: AtomicU64::new(0),
                snapshot: RwLock::new(Arc::new(snapshot)),
            }),
        }
    }

    /// Always healthy (back-pressure off; tests of other parts).
    pub fn disabled() -> Backpressure {
        Backpressure::new(BackpressureConfig { enabled: false, ..BackpressureConfig::default() })
    }

    /// Start the monitor over `spool` and `resolver` (when enabled). Abort the returned task to stop it.
    pub fn start(
        config: BackpressureConfig,
        spool: mta_spool::Spool,
        resolver: crate::dns::Resolver,
    ) -> (Backpressure, Option<tokio::task::JoinHandle<()>>) {
        let bp = Backpressure::new(config);
        if !bp.shared.config.enabled {
            return (bp, None);
        }
        let task = monitor::spawn(bp.clone(), spool, resolver);
        (bp, Some(task))
    }

    /// The configuration.
    pub fn config(&self) -> &BackpressureConfig {
        &self.shared.config
    }

    /// The current state (one atomic load).
    pub fn state(&self) -> State {
        State::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// The latest snapshot (signals, marks, reasons).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.read().clone()
    }

    /// `Retry-After` for refusals.
    pub fn retry_after(&self) -> Duration {
        self.shared.config.retry_after
    }

    /// `Err` while shedding: refuse a new connection, transaction or injection.
    pub fn check_new_work(&self) -> Result<(), Overloaded> {
        if self.state() == State::Shedding {
            return Err(Overloaded::Shedding {
                reasons: self.snapshot().reasons.join("; "),
                retry_after: self.retry_after(),
            });
        }
        Ok(())
    }

    /// `Err` while shedding, or while degraded with `active` (this one included) SMTP sessions over the
    /// degraded limit.
    pub fn check_smtp_session(&self, active: usize) -> Result<(), Overloaded> {
        self.check_new_work()?;
        let limit = self.shared.config.degraded_smtp_sessions;
        if self.state() == State::Degraded && active > limit {
            return Err(Overloaded::Busy { what: "SMTP sessions", limit, retry_after: self.retry_after() });
        }
        Ok(())
    }

    /// `Err` while shedding, or while degraded with `in_flight` (this one included) HTTP injections over the
    /// degraded limit.
    pub fn check_http_injection(&self, in_flight: usize) -> Result<(), Overloaded> {
        self.check_new_work()?;
        let limit = self.shared.config.degraded_http_in_flight;
        if self.state() == State::Degraded && in_flight > limit {
            return Err(Overloaded::Busy { what: "HTTP injections", limit, retry_after: self.retry_after() });
        }
        Ok(())
    }

    /// How long to wait before the SMTP greeting: the degraded tarpit, zero otherwise.
    pub fn greeting_delay(&self) -> Duration {
        if self.state() == State::Degraded {
            self.shared.config.degraded_greeting_delay
        } else {
            Duration::ZERO
        }
    }

    fn publish(&self, state: State, snapshot: Snapshot) {
        *self.shared.snapshot.write() = Arc::new(snapshot);
        self.shared.state.store(state as u8, Ordering::Release);
    }

    fn count_transition(&self) -> u64 {
        self.shared.transitions.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_path_checks_follow_the_state() {
        let bp = Backpressure::new(BackpressureConfig {
            degraded_smtp_sessions: 2,
            degraded_http_in_flight: 1,
            ..BackpressureConfig::default()
        });
        assert!(bp.check_new_work().is_ok());
        assert!(bp.check_smtp_session(100).is_ok(), "no session cap while healthy");
        assert_eq!(bp.greeting_delay(), Duration::ZERO);
        let mut snap = (*bp.snapshot()).clone();
        snap.state = State::Degraded;
        bp.publish(State::Degraded, snap.clone());
        assert!(bp.check_smtp_session(2).is_ok());
        assert!(matches!(bp.check_smtp_session(3), Err(Overloaded::Busy { limit: 2, .. })));
        assert!(bp.check_http_injection(2).is_err());
        assert!(bp.greeting_delay() > Duration::ZERO);
        snap.state = State::Shedding;
        snap.reasons = vec!["spool_commit_p99 1200 ms >= 1000 ms".into()];
        bp.publish(State::Shedding, snap);
        let e = bp.check_new_work().unwrap_err();
        assert!(e.to_string().contains("spool_commit_p99"), "{e}");
        assert!(matches!(crate::InjectError::from(e), crate::InjectError::Overloaded(_)));
    }
}
