//! What the delivery tasks share: the owners of each piece of state (sites table, timers, recorder), the
//! transport, the clock, and the global limits. Every mutable piece sits behind its owner's operations; the
//! few counters here are atomics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use mta_spool::Spool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::clock::Clock;
use super::recorder::Recorder;
use super::sites::Sites;
use super::timers::Timers;
use super::transport::Transport;
use super::DeliveryConfig;
use crate::dns::Resolver;
use crate::events::EventLog;

/// Decides from the message bytes whether to hold it back (checked again at each attempt).
pub type HoldCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The shared parts of one delivery engine.
pub(crate) struct Context {
    pub(crate) cfg: Arc<DeliveryConfig>,
    pub(crate) clock: Clock,
    pub(crate) spool: Spool,
    pub(crate) resolver: Resolver,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) sites: Sites,
    pub(crate) timers: Arc<Timers>,
    pub(crate) recorder: Arc<Recorder>,
    /// Outbound connections in total.
    pub(crate) conn_permits: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    /// Total KiB permits of `memory`: one message never asks for more (it would wait forever).
    memory_total: u32,
    stopping: AtomicBool,
    /// Due domains being resolved now.
    pub(crate) resolving: AtomicUsize,
    connections: AtomicUsize,
    /// Signalled when a connection or a resolution ends (stop waits on it).
    pub(crate) idle: Notify,
    hold: parking_lot::RwLock<Option<HoldCheck>>,
    /// MTA-STS policies (`None`: `delivery.mta_sts = "off"`, and the runtime's unit tests).
    pub(crate) policies: Option<Arc<crate::tls_policy::TlsPolicies>>,
    /// Messages being sent or moved to another node: the two never overlap.
    pub(crate) owners: super::owners::Owners,
    /// TLS report counters (`None`: `tls_report.enabled = false`).
    pub(crate) tls_reports: Option<Arc<crate::tls_report::TlsReports>>,
    /// How reports leave (with `tls_reports`).
    pub(crate) tls_report_sender: Option<Arc<crate::tls_report::Sender>>,
}

impl Context {
    /// The parts for `cfg`, sending through `transport`.
    pub(crate) fn new(
        cfg: DeliveryConfig,
        spool: Spool,
        events: EventLog,
        resolver: Resolver,
        hostname: String,
        transport: Arc<dyn Transport>,
        clock: Clock,
    ) -> Context {
        let cfg = Arc::new(cfg);
        let timers = Arc::new(Timers::new(cfg.enabled, cfg.pools.keys().cloned()));
        let recorder = Arc::new(Recorder::new(spool.clone(), events, timers.clone(), cfg.clone(), hostname, clock));
        let sites = Sites::default();
        if let Some(fleet) = &cfg.fleet {
            sites.set_fleet(fleet.0.clone());
        }
        let kib = (cfg.max_inflight_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Context {
            conn_permits: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
            memory: Arc::new(Semaphore::new(kib)),
            memory_total: u32::try_from(kib).unwrap_or(u32::MAX),
            cfg,
            clock,
            spool,
            resolver,
            transport,
            sites,
            timers,
            recorder,
            stopping: AtomicBool::new(false),
            resolving: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            hold: parking_lot::RwLock::new(None),
            policies: None,
            owners: super::owners::Owners::default(),
            tls_reports: None,
            tls_report_sender: None,
        }
    }

    /// Stop starting deliveries.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Stopping: connections finish the message they carry and close.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Count a connection as open.
    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("mta_delivery_connections").increment(1.0);
    }

    /// Count a connection as closed (all its results durable).
    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("mta_delivery_connections").decrement(1.0);
        self.idle.notify_waiters();
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Room for a message of `len` bytes in the in-flight memory budget (waits for it). Bounded by the total
    /// so a message larger than the whole budget waits for all of it instead of forever.
    pub(crate) async fn memory_for(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(len / 1024 + 1).unwrap_or(u32::MAX).min(self.memory_total);
        self.memory.clone().acquire_many_owned(kib).await.ok()
    }

    /// Install the hold check.
    pub(crate) fn set_hold(&self, check: HoldCheck) {
        *self.hold.write() = Some(check);
    }

    /// Whether the hold check holds `message` back now.
    pub(crate) fn holds(&self, message: &[u8]) -> bool {
        self.hold.read().as_ref().is_some_and(|check| check(message))
    }
}
