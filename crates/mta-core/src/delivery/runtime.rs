//! The async driver: a timer loop moves due work to DNS and into site ready queues; dispatch opens
//! connections within each site's limits and the global ones; graceful stop lets connections finish the
//! message they carry and record its result.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mta_smtp::client::{ClientConfig, Timeouts, TlsPolicy};
use mta_spool::{MessageRecord, Spool};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

use super::ids::CompactId;
use super::plan::{parse_relay, NextHops};
use super::results::Outcome;
use super::scheduler::{QueueRow, Scheduler, State, Work};
use super::site::{Site, SiteKey, SiteLimits};
use super::DeliveryConfig;
use crate::dns::{DnsError, Resolver};
use crate::events::EventLog;
use crate::Response;

/// Due pairs taken from the timer heap per wake-up.
const POP_BATCH: usize = 4096;
/// DNS resolutions of due domains running at once; the timer loop waits for room rather than piling up.
const MAX_RESOLVING: usize = 1024;
/// How often ready and held work is checked against `max_age`.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

fn mem_kib(cfg: &DeliveryConfig) -> usize {
    (cfg.max_inflight_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// State shared by the delivery tasks.
pub(crate) struct Shared {
    pub(crate) cfg: DeliveryConfig,
    pub(crate) spool: Spool,
    pub(crate) events: EventLog,
    pub(crate) resolver: Resolver,
    pub(crate) client: ClientConfig,
    pub(crate) hostname: String,
    pub(crate) sched: Mutex<Scheduler>,
    pub(crate) sites: Mutex<HashMap<SiteKey, Site>>,
    starved: Mutex<VecDeque<SiteKey>>,
    wake: Notify,
    pub(crate) conn_permits: Arc<Semaphore>,
    pub(crate) mem_permits: Arc<Semaphore>,
    /// Total KiB permits of `mem_permits`: one message never asks for more (it would wait forever).
    pub(crate) mem_permits_total: u32,
    /// Serialises result recording per message (several domains of one message may finish at once).
    pub(crate) stripes: Vec<tokio::sync::Mutex<()>>,
    pub(crate) stopping: AtomicBool,
    resolving: AtomicUsize,
    pub(crate) connections: AtomicUsize,
    idle: Notify,
    /// Messages this check holds (e.g. the sender's published DKIM key is not ours) are not sent for now.
    pub(crate) hold: parking_lot::RwLock<Option<HoldCheck>>,
}

/// Decides from the message bytes whether to hold it back (checked again at each attempt).
pub type HoldCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The delivery engine; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("connections", &self.shared.connections.load(Ordering::Relaxed)).finish()
    }
}

impl Delivery {
    /// Build the delivery engine (nothing runs until [`Delivery::start`]).
    pub fn new(cfg: DeliveryConfig, spool: Spool, events: EventLog, resolver: Resolver, hostname: String) -> Delivery {
        let timeouts = match cfg.smtp_timeout {
            Some(t) => Timeouts::uniform(t),
            None => Timeouts::default(),
        };
        let client = ClientConfig {
            ehlo_name: hostname.clone(),
            tls: if cfg.require_tls { TlsPolicy::Required } else { TlsPolicy::Opportunistic },
            source_address: cfg.source_address,
            timeouts,
            chunking: cfg.chunking,
        };
        let shared = Shared {
            conn_permits: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
            mem_permits: Arc::new(Semaphore::new(mem_kib(&cfg))),
            mem_permits_total: u32::try_from(mem_kib(&cfg)).unwrap_or(u32::MAX),
            cfg,
            spool,
            events,
            resolver,
            client,
            hostname,
            sched: Mutex::new(Scheduler::new()),
            sites: Mutex::new(HashMap::new()),
            starved: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            stripes: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
            stopping: AtomicBool::new(false),
            resolving: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            hold: parking_lot::RwLock::new(None),
        };
        Delivery { shared: Arc::new(shared) }
    }

    /// Queue every undelivered destination of `record` at its stored next-attempt time.
    pub fn enqueue(&self, record: &MessageRecord) {
        self.shared.enqueue_record(record);
    }

    /// Release memory left over from recovery: the timer heap's spare capacity and, with glibc, the freed pages
    /// of the scan's temporary records (so resident memory reflects the queue, not the start-up).
    pub fn compact_memory(&self) {
        self.shared.sched.lock().shrink_to_fit();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live allocation.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Start the timer loop (after recovery has enqueued the spool's messages).
    pub fn start(&self) {
        let shared = self.shared.clone();
        tokio::spawn(async move { timer_loop(shared).await });
    }

    /// Hold back messages for which `check` returns true (re-checked every few minutes, `max_age` applies).
    pub fn set_hold_check(&self, check: HoldCheck) {
        *self.shared.hold.write() = Some(check);
    }

    /// Per-queue counts for the admin API.
    pub fn summary(&self) -> Vec<QueueRow> {
        self.shared.sched.lock().summary()
    }

    /// Hold a domain's queue (`max_age` still applies).
    pub fn suspend(&self, domain: &str) {
        self.shared.sched.lock().suspend(&domain.to_ascii_lowercase());
    }

    /// Release a domain's queue: held work is dispatched now.
    pub fn resume(&self, domain: &str) {
        let released = self.shared.sched.lock().resume(&domain.to_ascii_lowercase());
        if !released.is_empty() {
            dispatch_due(&self.shared, released);
        }
        self.shared.wake.notify_one();
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stop starting deliveries; wait (up to `limit`) for connections to finish their current message and
    /// record its result. Work not finished stays queued in the spool.
    pub async fn shutdown(&self, limit: Duration) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_waiters();
        // Idle connections wait for work; tell them to finish now.
        for site in self.shared.sites.lock().values() {
            site.work_ready.notify_waiters();
        }
        let deadline = Instant::now() + limit;
        while self.shared.connections.load(Ordering::Acquire) > 0 || self.shared.resolving.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("delivery stop timed out; unfinished deliveries stay queued");
                return;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), self.shared.idle.notified()).await;
        }
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    let mut last_sweep = Instant::now();
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let now = now_ms();
        let room = MAX_RESOLVING.saturating_sub(shared.resolving.load(Ordering::Acquire));
        let (due, next) = {
            let mut s = shared.sched.lock();
            let due = if room > 0 { s.pop_due(now, POP_BATCH.min(room * 64)) } else { Vec::new() };
            (due, s.next_due())
        };
        let busy = due.len() >= POP_BATCH.min(room * 64).max(1);
        if !due.is_empty() {
            dispatch_due(&shared, due);
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            sweep_expired(&shared);
        }
        if busy {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = match next {
            Some(t) if t > now => Duration::from_millis((t - now).min(1000)),
            Some(_) if room == 0 => Duration::from_millis(10),
            Some(_) => Duration::ZERO,
            None => SWEEP_EVERY,
        };
        if !sleep.is_zero() {
            let _ = tokio::time::timeout(sleep, shared.wake.notified()).await;
        }
    }
}

/// Group due work by domain and resolve each domain once.
fn dispatch_due(shared: &Arc<Shared>, due: Vec<Work>) {
    let mut by_domain: HashMap<u32, Vec<Work>> = HashMap::new();
    for w in due {
        by_domain.entry(w.domain).or_default().push(w);
    }
    for (domain, works) in by_domain {
        let name = shared.sched.lock().domains.name(domain);
        shared.resolving.fetch_add(1, Ordering::AcqRel);
        let shared = shared.clone();
        tokio::spawn(async move {
            resolve_and_queue(&shared, &name, works).await;
            shared.resolving.fetch_sub(1, Ordering::AcqRel);
            shared.idle.notify_waiters();
        });
    }
}

fn route_for<'a>(cfg: &'a DeliveryConfig, domain: &str) -> Option<&'a str> {
    cfg.routes
        .iter()
        .find(|r| r.domain.eq_ignore_ascii_case(domain))
        .or_else(|| cfg.routes.iter().find(|r| r.domain == "*"))
        .map(|r| r.relay.as_str())
}

async fn next_hops(shared: &Shared, domain: &str) -> Result<NextHops, Outcome> {
    if let Some(relay) = route_for(&shared.cfg, domain) {
        let Some((host, port, ip)) = parse_relay(relay) else {
            return Err(Outcome::transient(Response::local(451, (4, 3, 5), format!("Invalid route {relay:?}"))));
        };
        let addrs = match ip {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => match shared.resolver.lookup_ip(&host).await {
                Ok(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                Err(e) => {
                    let text = format!("Route host {host} lookup failed: {e}");
                    return Err(Outcome::transient(Response::local(451, (4, 4, 3), text)));
                }
            },
        };
        return Ok(NextHops::route(relay, addrs));
    }
    match shared.resolver.resolve_mx(domain).await {
        Ok(plan) => {
            let had_hosts = !plan.hosts.is_empty();
            let plan = plan.without_self(&shared.cfg.own_names);
            if had_hosts && plan.hosts.is_empty() {
                let text = format!("MX for {domain} points back to us (mail loop)");
                return Err(Outcome::permanent(Response::local(554, (5, 4, 6), text)));
            }
            let hops = NextHops::from_mx(&plan, shared.cfg.port);
            if hops.hosts.is_empty() {
                let text = format!("No address for any MX host of {domain}");
                return Err(Outcome::transient(Response::local(451, (4, 4, 3), text)));
            }
            Ok(hops)
        }
        Err(DnsError::NullMx) => {
            let text = format!("Domain {domain} does not accept mail (null MX)");
            Err(Outcome::permanent(Response::local(556, (5, 1, 10), text)))
        }
        Err(e) if e.is_permanent() => {
            Err(Outcome::permanent(Response::local(550, (5, 1, 2), format!("Domain {domain} not found: {e}"))))
        }
        Err(e) => {
            Err(Outcome::transient(Response::local(451, (4, 4, 3), format!("DNS lookup for {domain} failed: {e}"))))
        }
    }
}

fn limits_for(cfg: &DeliveryConfig, domain: &str, hops: &NextHops) -> SiteLimits {
    let mut limits = SiteLimits {
        connections: cfg.connections_per_site.max(1),
        messages_per_connection: cfg.messages_per_connection.max(1),
        rate: None,
    };
    let matches = |rule: &str| {
        let rule = rule.trim_end_matches('.').to_ascii_lowercase();
        domain.eq_ignore_ascii_case(&rule)
            || hops.hosts.iter().any(|h| {
                let h = h.name.to_ascii_lowercase();
                h == rule || h.ends_with(&format!(".{rule}"))
            })
    };
    if let Some(s) = cfg.shaping.iter().find(|s| matches(&s.domain)) {
        if let Some(c) = s.connections {
            limits.connections = c.max(1);
        }
        if let Some(m) = s.messages_per_connection {
            limits.messages_per_connection = m.max(1);
        }
        limits.rate = s.rate;
    }
    limits
}

fn source_for(cfg: &DeliveryConfig, pool: Option<&str>, msg: CompactId) -> Option<std::net::IpAddr> {
    if let Some(addrs) = pool.and_then(|p| cfg.pools.get(p)) {
        if !addrs.is_empty() {
            return Some(addrs[msg.stripe() % addrs.len()]);
        }
    }
    cfg.source_address
}

async fn resolve_and_queue(shared: &Arc<Shared>, domain: &str, works: Vec<Work>) {
    let now = now_ms();
    let max_age = shared.cfg.max_age.as_millis() as u64;
    let (expired, works): (Vec<Work>, Vec<Work>) =
        works.into_iter().partition(|w| now.saturating_sub(w.received_ms) >= max_age);
    for w in expired {
        super::results::expire(shared.clone(), w, State::Ready);
    }
    if works.is_empty() {
        return;
    }
    let hops = match next_hops(shared, domain).await {
        Ok(h) => Arc::new(h),
        Err(outcome) => {
            for w in works {
                super::results::finish_without_connection(shared.clone(), w, State::Ready, outcome.clone());
            }
            return;
        }
    };
    let limits = limits_for(&shared.cfg, domain, &hops);
    let mut keys = Vec::new();
    let pool_names: Vec<(u32, std::sync::Arc<str>)> = {
        let s = shared.sched.lock();
        let mut v: Vec<u32> = works.iter().map(|w| w.pool).collect();
        v.sort_unstable();
        v.dedup();
        v.into_iter().map(|p| (p, s.pools.name(p))).collect()
    };
    {
        let mut sites = shared.sites.lock();
        for w in works {
            let pool = pool_names.iter().find(|(p, _)| *p == w.pool).map(|(_, n)| &**n).filter(|n| !n.is_empty());
            let source = source_for(&shared.cfg, pool, w.msg);
            let key = SiteKey { source, site: Arc::from(hops.name.as_str()) };
            let site = sites.entry(key.clone()).or_insert_with(|| Site::new(hops.clone(), limits, Instant::now()));
            site.hops = hops.clone();
            site.push(w);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    for key in keys {
        dispatch(shared, &key);
    }
}

/// Open connections for `key` while its limits and the global ones allow.
pub(crate) fn dispatch(shared: &Arc<Shared>, key: &SiteKey) {
    if shared.stopping.load(Ordering::Acquire) {
        return;
    }
    let mut to_reschedule = Vec::new();
    let mut reopen_at = 0;
    {
        let mut sites = shared.sites.lock();
        let Some(site) = sites.get_mut(key) else { return };
        let now = Instant::now();
        let cap = site.connection_cap(now);
        if cap == 0 {
            // Circuit open: don't let work sit in a ready queue; put it back on the timer until the probe.
            if let super::site::Circuit::Open(until) = site.circuit {
                reopen_at = now_ms() + until.saturating_duration_since(now).as_millis() as u64;
                to_reschedule = site.drain();
            }
        }
        // Open a connection only for queued work that no open or opening connection will take: each takes up to
        // PREFETCH messages at a time (idle ones pick up new work themselves). So one message opens one
        // connection, and a site ramps up toward its cap as its queue grows: receivers count connections per
        // sending IP, and a real sending day is mostly domains with one or two messages.
        while site.active < cap && site.len() > site.active * super::connection::PREFETCH {
            match shared.conn_permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    site.active += 1;
                    shared.connections.fetch_add(1, Ordering::AcqRel);
                    metrics::gauge!("mta_delivery_connections").increment(1.0);
                    let (shared, key) = (shared.clone(), key.clone());
                    tokio::spawn(async move {
                        super::connection::run(&shared, &key).await;
                        drop(permit);
                        connection_ended(&shared, &key);
                    });
                }
                Err(_) => {
                    let mut starved = shared.starved.lock();
                    if !starved.contains(key) {
                        starved.push_back(key.clone());
                    }
                    break;
                }
            }
        }
        if site.is_empty() && site.active == 0 && !matches!(site.circuit, super::site::Circuit::Open(_)) {
            sites.remove(key);
        }
    }
    if !to_reschedule.is_empty() {
        let mut s = shared.sched.lock();
        for w in to_reschedule {
            s.reschedule(w, State::Ready, reopen_at);
        }
    }
}

fn connection_ended(shared: &Arc<Shared>, key: &SiteKey) {
    {
        let mut sites = shared.sites.lock();
        if let Some(site) = sites.get_mut(key) {
            site.active = site.active.saturating_sub(1);
        }
    }
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    metrics::gauge!("mta_delivery_connections").decrement(1.0);
    dispatch(shared, key);
    let next = shared.starved.lock().pop_front();
    if let Some(other) = next {
        dispatch(shared, &other);
    }
    shared.idle.notify_waiters();
}

/// Expire work that waits past `max_age` in a ready queue or held by a suspension.
fn sweep_expired(shared: &Arc<Shared>) {
    let now = now_ms();
    let max_age = shared.cfg.max_age.as_millis() as u64;
    let held = shared.sched.lock().take_expired_held(now, max_age);
    let mut ready = Vec::new();
    {
        let mut sites = shared.sites.lock();
        for site in sites.values_mut() {
            ready.extend(site.take_where(|w| now.saturating_sub(w.received_ms) >= max_age));
        }
    }
    for w in held.into_iter().chain(ready) {
        super::results::expire(shared.clone(), w, State::Ready);
    }
}

impl Shared {
    /// Queue every undelivered destination of `record` at its stored next-attempt time.
    pub(crate) fn enqueue_record(&self, record: &MessageRecord) {
        if !self.cfg.enabled {
            // Spool-only mode: nothing will dispatch, so keep no timers (memory and a lock off the hot path).
            return;
        }
        let mut sched = self.sched.lock();
        let s = &mut *sched;
        let msg = CompactId::new(&record.id, &mut s.nodes);
        let tenant = record.tenant.as_deref().map(|t| s.tenants.intern(t)).unwrap_or(0);
        let pool =
            record.pool.as_deref().filter(|p| self.cfg.pools.contains_key(*p)).map(|p| s.pools.intern(p)).unwrap_or(0);
        for schedule in &record.schedules {
            let pending = record.recipients.iter().any(|r| r.domain == schedule.domain && !r.state.is_final());
            if !pending {
                continue;
            }
            let domain = s.domains.intern(&schedule.domain);
            let work =
                Work { msg, domain, tenant, pool, received_ms: record.received_at_ms, priority: record.priority };
            s.schedule(work, schedule.next_attempt_ms);
        }
        drop(sched);
        self.wake.notify_one();
    }

    /// Put `w` back on the timer at `due_ms` (from state `from`).
    pub(crate) fn reschedule(&self, w: Work, from: State, due_ms: u64) {
        self.sched.lock().reschedule(w, from, due_ms);
        self.wake.notify_one();
    }
}
