//! Delivery: from the spool to the next hop, politely per destination, with retries and bounces.
//!
//! # Layout
//! - `scheduler`: the synchronous core — one timer heap for every scheduled (message, domain) pair, queue
//!   accounting per (tenant, domain), suspensions. `timers` owns it (its lock and the timer loop's wake-up).
//! - `site`: one ready queue per (egress source, site) with adaptive limits (throttling, circuit breaker,
//!   rate). `sites` owns the table of them: queue work, plan connections, take a batch, wait for work, give
//!   back, connection started/ended.
//! - `recorder`: owns result recording — spool group commit, DSNs, events, per-message stripe locks, then
//!   the scheduler.
//! - `connection`: one outbound connection carrying many messages; it gets the sites table, the recorder,
//!   the timers and a clock (`context` holds them with the global limits).
//! - `transport`: the seam to the wire (SMTP in the engine, a scripted receiver in the runtime's tests);
//!   `clock`: wall and monotonic time (tokio's paused clock in tests).
//! - [`fleet`]: the seam to limits shared by a fleet (connection leases, send tokens); none by default.
//! - `runtime`: the async driver — the timer loop, DNS, dispatch within limits, graceful stop.
//! - `plan`: next hops from the MX plan or a configured route; the site name.
//! - `tls`: the destination's MTA-STS policy applied to its next hops (which MX, verified TLS).
//! - [`dsn`]: RFC 3464 delivery status notifications. `ids`: compact in-memory ids so millions of queued
//!   messages fit in little memory.
//!
//! Dependencies point one way: `runtime` → `connection` → {`sites`, `recorder`, `timers`, `transport`} →
//! {`site`, `scheduler`, `dsn`}; nothing points back at `runtime`.
//!
//! # Where a unit of work is
//!
//! A unit of work is one (message, destination domain) pair, `Work`: a compact id, the interned domain,
//! tenant and pool. At any moment it is in exactly one of these places, and the scheduler's counts
//! (`State`) say which:
//!
//! 1. **Scheduled** — on the scheduler's timer heap until its due time (`timers`).
//! 2. **Ready** — due: first resolving its next hops (`resolve_and_queue`), then in the ready queue of its
//!    site (`sites`), where a connection takes it. A site whose circuit is open puts its queue back on the
//!    timer until the probe time; a suspended domain's work is `Held` on the scheduler instead.
//! 3. **In flight** — taken by a connection: in its read-ahead batch (up to `PREFETCH`, with record and body
//!    read in one spool call), or on the wire. When a connection closes early, the batch it read ahead goes
//!    back to the *front* of the site's ready queue, in order (`Sites::give_back`).
//! 4. **Recording** — its result is being made durable: a background task per connection (at most 32
//!    outstanding) takes the message's stripe lock (several domains of one message can finish at once and
//!    share one record), commits the record update, DSN and removals through the spool's group commit,
//!    emits events, then tells the scheduler: gone (delivered, bounced, expired) or scheduled again with the
//!    next retry time. A connection counts as open until all its results are durable.
//!
//! After a crash, whatever was not recorded is found again by the start-up scan at its stored next-attempt
//! time: delivered again rather than lost.
//!
//! # Locks
//!
//! Each owner has its own `parking_lot` mutex, private to its module and held for a few map operations,
//! never across an `.await`: the scheduler (`timers`), the sites table and its starved list (`sites`; the
//! starved list is taken only while the table is held, never the other way round). No operation of one
//! owner calls another, so no two of these locks are ever held together. The per-message stripe locks
//! (`recorder`) are async mutexes, held across the commit and taken before any of the above.

pub mod dsn;
pub mod fleet;
pub(crate) mod ids;
pub(crate) mod plan;
pub mod response_rules;
pub(crate) mod scheduler;
pub(crate) mod site;

mod clock;
mod connection;
mod context;
pub mod owners;
mod recorder;
mod runtime;
mod sites;
#[cfg(test)]
mod tests;
mod timers;
mod tls;
mod transport;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls_policy::MtaStsSetting;

pub use context::HoldCheck;
pub use fleet::{FleetFuture, FleetLimits};
pub use owners::{Owned, Owners};
pub use runtime::Delivery;
pub use scheduler::{QueueCounts, QueueRow};

/// A per-destination override of the default limits (`[[shaping]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// Destination domain, or a suffix of MX host names (`google.com` matches `aspmx.l.google.com`).
    pub domain: String,
    /// Connection cap.
    pub connections: Option<usize>,
    /// Messages per connection.
    pub messages_per_connection: Option<usize>,
    /// Messages per second.
    pub rate: Option<f64>,
}

/// A fixed next hop (`[[route]]`; the config file's table deserializes into it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination domain or `*`.
    pub domain: String,
    /// `host:port`.
    pub relay: String,
}

/// How delivery behaves.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Deliver at all (off: the engine only spools, e.g. for spool tools and benchmarks of injection).
    pub enabled: bool,
    /// TCP port of every MX host.
    pub port: u16,
    /// Default outbound bind address.
    pub source_address: Option<IpAddr>,
    /// Egress pools: name → source addresses.
    pub pools: HashMap<String, Vec<IpAddr>>,
    /// Retry intervals; the last repeats; up to 10% jitter each.
    pub retry_intervals: Vec<Duration>,
    /// Age at which undelivered recipients expire and bounce.
    pub max_age: Duration,
    /// Default connections per site and source.
    pub connections_per_site: usize,
    /// Default messages per connection.
    pub messages_per_connection: usize,
    /// Refuse to send without TLS.
    pub require_tls: bool,
    /// Per-destination overrides.
    pub shaping: Vec<Shaping>,
    /// Fixed next hops.
    pub routes: Vec<Route>,
    /// Outbound connections in total.
    pub max_connections: usize,
    /// Bytes of message content held by connections at once.
    pub max_inflight_bytes: usize,
    /// Our own names: MX records naming them (and less preferred ones) are dropped (RFC 5321 §5.1).
    pub own_names: Vec<String>,
    /// Connection failures in a row that open a site's circuit.
    pub circuit_threshold: u32,
    /// How long an open circuit waits before one probe.
    pub circuit_open_for: Duration,
    /// How long a throttling reply lowers a site's connection cap.
    pub throttle_for: Duration,
    /// Per-stage SMTP client time limit override (tests); `None` = RFC 5321 §4.5.3.2 values.
    pub smtp_timeout: Option<Duration>,
    /// Use BDAT when offered.
    pub chunking: bool,
    /// How long an idle outbound connection waits for more work before QUIT.
    pub idle_timeout: Duration,
    /// Classifies failure responses for events, DSNs and automatic suppression (`bounce.rules_file` first).
    pub classifier: std::sync::Arc<crate::bounce::Classifier>,
    /// Obey published MTA-STS policies (RFC 8461).
    pub mta_sts: MtaStsSetting,
    /// Port of `mta-sts.<domain>` (443; tests use another).
    pub mta_sts_port: u16,
    /// DANE (RFC 7672) for MX hosts with authenticated TLSA records (needs `dns.dnssec`).
    pub dane: crate::tls_policy::DaneSetting,
    /// TLS reporting (RFC 8460, `tls_report.*`).
    pub tls_report: crate::tls_report::TlsReportConfig,
    /// Extra PEM roots for verified outbound TLS and policy fetches.
    pub tls_ca_file: Option<PathBuf>,
    /// Limits shared with a fleet (`None`: this node's limits are its own): per-site connection caps and
    /// rates become fleet totals.
    pub fleet: Option<Fleet>,
    /// Where finished messages' outcomes are kept for status lookups (`None`: not kept). The engine sets it.
    pub history: Option<std::sync::Arc<crate::history::History>>,
    /// `[[response_rule]]`s then the shipped defaults: replies that suspend, throttle or bounce.
    pub response_rules: std::sync::Arc<response_rules::ResponseRules>,
    /// Where bounces of the `auto_suppress` classes add their recipient (set by the engine at open).
    pub suppressions: Option<std::sync::Arc<crate::suppression::Suppressions>>,
    /// Bounce classes that add the recipient to the suppression list (`suppression.auto_classes`).
    pub auto_suppress: Vec<crate::bounce::BounceClass>,
}

/// A handle on fleet-wide limits as the config carries it.
#[derive(Clone)]
pub struct Fleet(pub std::sync::Arc<dyn FleetLimits>);

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fleet")
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            port: 25,
            source_address: None,
            pools: HashMap::new(),
            retry_intervals: [60, 300, 900, 1800, 3600, 7200, 14_400].into_iter().map(Duration::from_secs).collect(),
            max_age: Duration::from_secs(3 * 86_400),
            connections_per_site: 16,
            messages_per_connection: 100,
            require_tls: false,
            shaping: Vec::new(),
            routes: Vec::new(),
            max_connections: 2048,
            max_inflight_bytes: 512 << 20,
            own_names: Vec::new(),
            circuit_threshold: 3,
            circuit_open_for: Duration::from_secs(60),
            throttle_for: Duration::from_secs(300),
            smtp_timeout: None,
            chunking: true,
            idle_timeout: Duration::from_secs(2),
            classifier: crate::bounce::Classifier::shipped(),
            mta_sts: MtaStsSetting::default(),
            mta_sts_port: crate::tls_policy::DEFAULT_MTA_STS_PORT,
            dane: crate::tls_policy::DaneSetting::default(),
            tls_report: crate::tls_report::TlsReportConfig::default(),
            tls_ca_file: None,
            fleet: None,
            history: None,
            response_rules: response_rules::ResponseRules::new(Vec::new(), true),
            suppressions: None,
            auto_suppress: vec![
                crate::bounce::BounceClass::InvalidRecipient,
                crate::bounce::BounceClass::GenericNoRcpt,
            ],
        }
    }
}

impl DeliveryConfig {
    /// The retry delay after `attempts` attempts, with up to 10% random jitter so retries of many messages
    /// spread out instead of arriving together.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let idx = (attempts.max(1) as usize - 1).min(self.retry_intervals.len().saturating_sub(1));
        let base = self.retry_intervals.get(idx).copied().unwrap_or(Duration::from_secs(300));
        let jitter = base.mul_f64(rand::random::<f64>() * 0.1);
        base + jitter
    }
}
