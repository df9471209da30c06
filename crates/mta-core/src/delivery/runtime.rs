//! The async driver: a timer loop moves due work to DNS and into site ready queues; dispatch opens
//! connections within each site's limits and the global ones; graceful stop lets connections finish the
//! message they carry and record its result.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mta_smtp::client::{ClientConfig, Timeouts, TlsPolicy};
use mta_spool::{MessageRecord, Spool};

use super::clock::Clock;
use super::context::{Context, HoldCheck};
use super::ids::CompactId;
use super::plan::{parse_relay, NextHops};
use super::recorder::Outcome;
use super::scheduler::{QueueRow, State, Work};
use super::site::{SiteKey, SiteLimits};
use super::transport::Smtp;
use super::DeliveryConfig;
use crate::dns::{DnsError, Resolver};
use crate::events::EventLog;
use crate::Response;

/// Due pairs taken from the timer heap per wake-up.
const POP_BATCH: usize = 4096;
/// DNS resolutions of due domains running at once; the timer loop waits for room rather than piling up.
const MAX_RESOLVING: usize = 1024;
/// How soon a site the fleet granted no lease asks again.
const LEASE_RETRY: Duration = Duration::from_millis(100);
/// How often ready and held work is checked against `max_age`.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The delivery engine; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    ctx: Arc<Context>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("connections", &self.ctx.connections()).finish()
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
            trust: None,
            dane: None,
            chunking: cfg.chunking,
        };
        let (client, policies) = super::tls::setup(&cfg, client, &resolver, &spool);
        let reporting = super::tls::report_setup(&cfg, &spool, &hostname);
        let transport = Arc::new(Smtp { client });
        let mut ctx = Context::new(cfg, spool, events, resolver, hostname, transport, Clock::System);
        ctx.policies = policies;
        if let Some((reports, sender)) = reporting {
            ctx.tls_reports = Some(reports);
            ctx.tls_report_sender = Some(sender);
        }
        Delivery { ctx: Arc::new(ctx) }
    }

    /// The MX hosts of `domain` with DNSSEC-authenticated TLSA records and the shortest time left on those
    /// answers, when DANE applies to it (the HTTP API's view; delivery looks them up the same way).
    pub async fn dane_hosts(&self, domain: &str) -> Option<(Vec<String>, std::time::Duration)> {
        let resolver = &self.ctx.resolver;
        if !super::tls::dane_on(&self.ctx) || !crate::tls_policy::mx_authenticated(resolver, domain).await {
            return None;
        }
        let mx = resolver.query_mx(domain).await.ok()?;
        let mut hosts = Vec::new();
        let mut ttl = mx.ttl;
        for r in mx.records.iter().filter(|r| !r.is_null()) {
            if let crate::tls_policy::HostTlsa::Records(_) = crate::tls_policy::host_tlsa(resolver, &r.exchange).await {
                if let Ok(l) = resolver.query_tlsa(&crate::tls_policy::tlsa_name(&r.exchange)).await {
                    ttl = ttl.min(l.ttl);
                }
                hosts.push(r.exchange.clone());
            }
        }
        (!hosts.is_empty()).then_some((hosts, ttl))
    }

    /// The TLS report counters (`None` when `tls_report.enabled = false`).
    pub fn tls_reports(&self) -> Option<&Arc<crate::tls_report::TlsReports>> {
        self.ctx.tls_reports.as_ref()
    }

    /// How TLS reports are sent (`None` when `tls_report.enabled = false`).
    pub fn tls_report_sender(&self) -> Option<Arc<crate::tls_report::Sender>> {
        self.ctx.tls_report_sender.clone()
    }

    /// The MTA-STS policies (`None` when `delivery.mta_sts = "off"`).
    pub fn tls_policies(&self) -> Option<&Arc<crate::tls_policy::TlsPolicies>> {
        self.ctx.policies.as_ref()
    }

    /// The engine with its transport and clock chosen (the runtime's unit tests use a scripted receiver and
    /// tokio's paused clock).
    #[cfg(test)]
    pub(crate) fn with_parts(
        cfg: DeliveryConfig,
        spool: Spool,
        events: EventLog,
        resolver: Resolver,
        hostname: String,
        transport: Arc<dyn super::transport::Transport>,
        clock: Clock,
    ) -> Delivery {
        Delivery { ctx: Arc::new(Context::new(cfg, spool, events, resolver, hostname, transport, clock)) }
    }

    /// Queue every undelivered destination of `record` at its stored next-attempt time.
    pub fn enqueue(&self, record: &MessageRecord) {
        self.ctx.timers.enqueue_record(record);
    }

    /// Release memory left over from recovery: the timer heap's spare capacity and, with glibc, the freed pages
    /// of the scan's temporary records (so resident memory reflects the queue, not the start-up).
    pub fn compact_memory(&self) {
        self.ctx.timers.shrink_to_fit();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live allocation.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Start the timer loop (after recovery has enqueued the spool's messages).
    pub fn start(&self) {
        let ctx = self.ctx.clone();
        tokio::spawn(async move { timer_loop(ctx).await });
    }

    /// Hold back messages for which `check` returns true (re-checked every few minutes, `max_age` applies).
    pub fn set_hold_check(&self, check: HoldCheck) {
        self.ctx.set_hold(check);
    }

    /// Per-queue counts for the admin API.
    pub fn summary(&self) -> Vec<QueueRow> {
        self.ctx.timers.summary()
    }

    /// Hold a domain's queue (`max_age` still applies).
    pub fn suspend(&self, domain: &str) {
        self.ctx.timers.suspend(&domain.to_ascii_lowercase());
    }

    /// Release a domain's queue: held work is dispatched now.
    pub fn resume(&self, domain: &str) {
        let released = self.ctx.timers.resume(&domain.to_ascii_lowercase());
        if !released.is_empty() {
            dispatch_due(&self.ctx, released);
        }
        self.ctx.timers.wake_all();
    }

    /// Hold the recording locks of `ids` while changing their records outside delivery (see
    /// [`super::recorder::Recorder::hold`]).
    pub(crate) async fn hold_records(
        &self,
        ids: impl Iterator<Item = &mta_spool::QueueId>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        self.ctx.recorder.hold(ids).await
    }

    /// The table through which a queue transfer claims messages so that they are not sent meanwhile.
    pub fn owners(&self) -> &super::owners::Owners {
        &self.ctx.owners
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.ctx.connections()
    }

    /// Stop starting deliveries; wait (up to `limit`) for connections to finish their current message and
    /// record its result. Work not finished stays queued in the spool.
    pub async fn shutdown(&self, limit: Duration) {
        self.ctx.stop();
        self.ctx.recorder.close();
        self.ctx.timers.wake_all();
        // Idle connections wait for work; tell them to finish now.
        self.ctx.sites.wake_all();
        let deadline = self.ctx.clock.instant() + limit;
        // DNS lookups in flight are not waited for: what they resolve is neither queued nor recorded once
        // stopping (it stays in the spool), so only connections and recordings hold the stop.
        while self.ctx.connections() > 0 || self.ctx.recorder.in_progress() > 0 {
            let left = deadline.saturating_duration_since(self.ctx.clock.instant());
            if left.is_zero() {
                tracing::warn!("delivery stop timed out; unfinished deliveries stay queued");
                return;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), self.ctx.idle.notified()).await;
        }
    }
}

async fn timer_loop(ctx: Arc<Context>) {
    let mut last_sweep = ctx.clock.instant();
    loop {
        if ctx.is_stopping() {
            return;
        }
        let now = ctx.clock.now_ms();
        let room = MAX_RESOLVING.saturating_sub(ctx.resolving.load(Ordering::Acquire));
        let max = if room > 0 { POP_BATCH.min(room * 64) } else { 0 };
        let (due, next) = ctx.timers.pop_due(now, max);
        let busy = due.len() >= max.max(1);
        if !due.is_empty() {
            dispatch_due(&ctx, due);
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = ctx.clock.instant();
            sweep_expired(&ctx);
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
            ctx.timers.wait(sleep).await;
        }
    }
}

/// Group due work by domain and resolve each domain once.
fn dispatch_due(ctx: &Arc<Context>, due: Vec<Work>) {
    let mut by_domain: HashMap<u32, Vec<Work>> = HashMap::new();
    for w in due {
        by_domain.entry(w.domain).or_default().push(w);
    }
    for (domain, works) in by_domain {
        let name = ctx.timers.domain_name(domain);
        ctx.resolving.fetch_add(1, Ordering::AcqRel);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            resolve_and_queue(&ctx, &name, works).await;
            ctx.resolving.fetch_sub(1, Ordering::AcqRel);
            ctx.idle.notify_waiters();
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

async fn next_hops(ctx: &Context, domain: &str) -> Result<NextHops, Outcome> {
    if let Some(relay) = route_for(&ctx.cfg, domain) {
        let Some((host, port, ip)) = parse_relay(relay) else {
            return Err(Outcome::transient(Response::local(451, (4, 3, 5), format!("Invalid route {relay:?}"))));
        };
        let addrs = match ip {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => match ctx.resolver.lookup_ip(&host).await {
                Ok(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                Err(e) => {
                    let text = format!("Route host {host} lookup failed: {e}");
                    return Err(Outcome::transient(Response::local(451, (4, 4, 3), text)));
                }
            },
        };
        return Ok(NextHops::route(relay, addrs));
    }
    match ctx.resolver.resolve_mx(domain).await {
        Ok(plan) => {
            let had_hosts = !plan.hosts.is_empty();
            let plan = plan.without_self(&ctx.cfg.own_names);
            if had_hosts && plan.hosts.is_empty() {
                let text = format!("MX for {domain} points back to us (mail loop)");
                return Err(Outcome::permanent(Response::local(554, (5, 4, 6), text)));
            }
            let hops = NextHops::from_mx(&plan, ctx.cfg.port);
            if hops.hosts.is_empty() {
                let text = format!("No address for any MX host of {domain}");
                return Err(Outcome::transient(Response::local(451, (4, 4, 3), text)));
            }
            super::tls::apply(ctx, domain, hops).await
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

async fn resolve_and_queue(ctx: &Arc<Context>, domain: &str, works: Vec<Work>) {
    let now = ctx.clock.now_ms();
    let max_age = ctx.cfg.max_age.as_millis() as u64;
    let (expired, works): (Vec<Work>, Vec<Work>) =
        works.into_iter().partition(|w| now.saturating_sub(w.received_ms) >= max_age);
    for w in expired {
        ctx.recorder.expire(w, State::Ready);
    }
    if works.is_empty() {
        return;
    }
    let hops = next_hops(ctx, domain).await;
    if ctx.is_stopping() {
        // Stopping while this was resolved: leave the work to the next start (it is in the spool).
        return;
    }
    let hops = match hops {
        Ok(h) => Arc::new(h),
        Err(outcome) => {
            for w in works {
                ctx.recorder.finish_without_connection(w, State::Ready, outcome.clone());
            }
            return;
        }
    };
    let limits = limits_for(&ctx.cfg, domain, &hops);
    let mut pools: Vec<u32> = works.iter().map(|w| w.pool).collect();
    pools.sort_unstable();
    pools.dedup();
    let pool_names = ctx.timers.pool_names(pools);
    let site: Arc<str> = Arc::from(hops.name.as_str());
    let keyed = works
        .into_iter()
        .map(|w| {
            let pool = pool_names.iter().find(|(p, _)| *p == w.pool).map(|(_, n)| &**n).filter(|n| !n.is_empty());
            let source = source_for(&ctx.cfg, pool, w.msg);
            (SiteKey { source, site: site.clone() }, w)
        })
        .collect();
    for key in ctx.sites.queue(&hops, limits, keyed, ctx.clock.instant()) {
        dispatch(ctx, &key);
    }
}

/// Open connections for `key` as its queue needs them, within its limits and the global ones.
pub(crate) fn dispatch(ctx: &Arc<Context>, key: &SiteKey) {
    if ctx.is_stopping() {
        return;
    }
    let now = ctx.clock.instant();
    let plan = ctx.sites.plan(key, &ctx.conn_permits, now);
    for permit in plan.open {
        ctx.connection_opened();
        let (ctx, key) = (ctx.clone(), key.clone());
        tokio::spawn(async move {
            super::connection::run(&ctx, &key).await;
            drop(permit);
            connection_ended(&ctx, &key);
        });
    }
    if let Some((want, limit)) = plan.ask_leases {
        ask_leases(ctx, key, want, limit);
    }
    if let Some(probe_at) = plan.probe_at {
        let due = ctx.clock.now_ms() + probe_at.saturating_duration_since(now).as_millis() as u64;
        ctx.timers.reschedule_all(plan.reschedule, State::Ready, due);
    }
}

/// Ask the fleet for `want` connection leases of `key` in the background; dispatch again with what it grants.
/// When it grants none (the fleet is at its cap), ask again a little later while the site still wants them.
fn ask_leases(ctx: &Arc<Context>, key: &SiteKey, want: usize, limit: usize) {
    let Some(fleet) = ctx.sites.fleet().cloned() else { return };
    let (ctx, key) = (ctx.clone(), key.clone());
    tokio::spawn(async move {
        let got = fleet.acquire(&key.site, limit, want).await;
        if got == 0 {
            // Other nodes hold the fleet's leases; theirs come back as their connections close.
            let jitter = Duration::from_millis(rand::random::<u64>() % 50);
            tokio::time::sleep(LEASE_RETRY + jitter).await;
        }
        ctx.sites.leases_granted(&key, got);
        dispatch(&ctx, &key);
    });
}

fn connection_ended(ctx: &Arc<Context>, key: &SiteKey) {
    let starved = ctx.sites.connection_ended(key);
    ctx.connection_closed();
    dispatch(ctx, key);
    if let Some(other) = starved {
        dispatch(ctx, &other);
    }
}

/// Expire work that waits past `max_age` in a ready queue or held by a suspension.
fn sweep_expired(ctx: &Arc<Context>) {
    let now = ctx.clock.now_ms();
    let max_age = ctx.cfg.max_age.as_millis() as u64;
    let held = ctx.timers.take_expired_held(now, max_age);
    let ready = ctx.sites.take_where(|w| now.saturating_sub(w.received_ms) >= max_age);
    for w in held.into_iter().chain(ready) {
        ctx.recorder.expire(w, State::Ready);
    }
}
