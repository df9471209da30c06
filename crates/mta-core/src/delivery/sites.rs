//! The sites table: every ready queue with its limits, behind one lock that only this module takes. Dispatch,
//! connections and the expiry sweep use its operations (queue work, plan connections, take a batch, wait for
//! work, give back, connection started/ended, throttle, circuit), never the map.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::fleet::{token_batch, FleetLimits};
use super::plan::NextHops;
use super::scheduler::Work;
use super::site::{Circuit, Site, SiteKey, SiteLimits};

/// Messages a connection reads from the spool in one blocking call (prefetch while it sends). A site opens
/// another connection only for queued work beyond what its open connections will take in one such batch.
pub(crate) const PREFETCH: usize = 8;

/// What dispatch decided for one site.
#[derive(Default)]
pub(crate) struct Plan {
    /// A global connection permit per connection to open now.
    pub(crate) open: Vec<OwnedSemaphorePermit>,
    /// Work taken back from a site whose circuit is open, to put back on the timer…
    pub(crate) reschedule: Vec<Work>,
    /// …until the probe time.
    pub(crate) probe_at: Option<Instant>,
    /// Fleet-wide limits: ask the fleet for this many more leases (the site's fleet cap is `.1`).
    pub(crate) ask_leases: Option<(usize, usize)>,
}

/// Every (egress source, site) ready queue.
#[derive(Default)]
pub(crate) struct Sites {
    map: Mutex<HashMap<SiteKey, Site>>,
    /// Sites that wanted a connection when no global permit was free, in order.
    starved: Mutex<VecDeque<SiteKey>>,
    /// Limits shared with a fleet, when configured (set once, before delivery starts).
    fleet: OnceLock<Arc<dyn FleetLimits>>,
}

impl Sites {
    /// Make per-site connection caps and rates fleet totals (once, before any site exists).
    pub(crate) fn set_fleet(&self, fleet: Arc<dyn FleetLimits>) {
        let _ = self.fleet.set(fleet);
    }

    /// The fleet's limits, when configured.
    pub(crate) fn fleet(&self) -> Option<&Arc<dyn FleetLimits>> {
        self.fleet.get()
    }
    /// Queue due `works` (each with its site key) on sites reached through `hops` with `limits`; returns the
    /// keys that got work.
    pub(crate) fn queue(
        &self,
        hops: &Arc<NextHops>,
        limits: SiteLimits,
        works: Vec<(SiteKey, Work)>,
        now: Instant,
    ) -> Vec<SiteKey> {
        let mut keys: Vec<SiteKey> = Vec::new();
        let fleet = self.fleet.get().is_some();
        let mut map = self.map.lock();
        for (key, w) in works {
            let site = map.entry(key.clone()).or_insert_with(|| Site::new(hops.clone(), limits, now, fleet));
            site.hops = hops.clone();
            site.push(w);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// Decide how many connections `key` opens now: only for queued work that no open or opening connection
    /// will take (each takes up to [`PREFETCH`] at a time; idle ones pick up new work themselves), within the
    /// site's cap and the global `permits`. So one message opens one connection, and a site ramps up toward
    /// its cap as its queue grows: receivers count connections per sending IP, and a real sending day is
    /// mostly domains with one or two messages. A site with an open circuit gives its queue back. With
    /// fleet-wide limits each connection also takes a lease: the plan asks for the ones missing.
    pub(crate) fn plan(&self, key: &SiteKey, permits: &Arc<Semaphore>, now: Instant) -> Plan {
        let mut plan = Plan::default();
        let mut release = 0;
        {
            let mut map = self.map.lock();
            let Some(site) = map.get_mut(key) else { return plan };
            let cap = site.connection_cap(now);
            if cap == 0 {
                if let Circuit::Open(until) = site.circuit {
                    plan.probe_at = Some(until);
                    plan.reschedule = site.drain();
                }
            }
            let mut want = 0;
            while site.active + want < cap && site.len() > (site.active + want) * PREFETCH {
                want += 1;
            }
            let mut starved = false;
            while plan.open.len() < want && (!site.fleet.on || site.fleet.spare_leases > 0) {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        site.active += 1;
                        if site.fleet.on {
                            site.fleet.spare_leases -= 1;
                        }
                        plan.open.push(permit);
                    }
                    Err(_) => {
                        let mut list = self.starved.lock();
                        if !list.contains(key) {
                            list.push_back(key.clone());
                        }
                        starved = true;
                        break;
                    }
                }
            }
            if site.fleet.on {
                let missing = want - plan.open.len();
                if missing > 0 && !starved && !site.fleet.asking_leases {
                    site.fleet.asking_leases = true;
                    plan.ask_leases = Some((missing, site.limits.connections));
                } else if want == 0 {
                    // Nothing left to open connections for: leases granted meanwhile go back to the fleet.
                    release = std::mem::take(&mut site.fleet.spare_leases);
                }
            }
            let asking = site.fleet.asking_leases || site.fleet.asking_tokens;
            // A throttled site is kept (empty) so that its lowered cap outlives a quiet moment.
            let keep = asking || site.is_throttled() || matches!(site.circuit, Circuit::Open(_));
            if site.is_empty() && site.active == 0 && !keep {
                map.remove(key);
            }
        }
        self.release(key, release);
        plan
    }

    /// The fleet granted `n` leases asked for by a plan of `key` (the caller dispatches again).
    pub(crate) fn leases_granted(&self, key: &SiteKey, n: usize) {
        let unused = match self.map.lock().get_mut(key) {
            Some(site) => {
                site.fleet.asking_leases = false;
                site.fleet.spare_leases += n;
                0
            }
            None => n,
        };
        self.release(key, unused);
    }

    /// Give `n` leases of `key` back to the fleet.
    fn release(&self, key: &SiteKey, n: usize) {
        if let (Some(fleet), true) = (self.fleet.get(), n > 0) {
            fleet.release(&key.site, n);
        }
    }

    /// A connection of `key` ended; returns a site that waited for a global permit, if any.
    pub(crate) fn connection_ended(&self, key: &SiteKey) -> Option<SiteKey> {
        if let Some(site) = self.map.lock().get_mut(key) {
            site.active = site.active.saturating_sub(1);
        }
        // The connection's lease (every connection holds one when limits are fleet-wide).
        self.release(key, 1);
        self.starved.lock().pop_front()
    }

    /// Where `key` connects, and how many messages one connection carries.
    pub(crate) fn hops(&self, key: &SiteKey) -> Option<(Arc<NextHops>, usize)> {
        self.map.lock().get(key).map(|s| (s.hops.clone(), s.limits.messages_per_connection))
    }

    /// A connection of `key` was established: the circuit closes.
    pub(crate) fn connected(&self, key: &SiteKey) {
        if let Some(site) = self.map.lock().get_mut(key) {
            site.connected();
        }
    }

    /// Every address of `key` failed: count it toward the circuit, and take one pending message to carry the
    /// attempt (so it moves toward expiry).
    pub(crate) fn connect_failed(
        &self,
        key: &SiteKey,
        now: Instant,
        threshold: u32,
        open_for: Duration,
    ) -> Option<Work> {
        let mut map = self.map.lock();
        let site = map.get_mut(key)?;
        site.connect_failed(now, threshold, open_for);
        site.pop(now)
    }

    /// The receiver of `key` asked us to slow down.
    pub(crate) fn throttle(&self, key: &SiteKey, now: Instant, period: Duration) {
        if let Some(site) = self.map.lock().get_mut(key) {
            site.throttle(now, period);
        }
    }

    /// A `[[response_rule]]` throttles `key` to `factor` of its connections for `period`.
    pub(crate) fn throttle_by(&self, key: &SiteKey, now: Instant, factor: f64, period: Duration) {
        if let Some(site) = self.map.lock().get_mut(key) {
            site.throttle_by(now, factor, period);
        }
    }

    /// Up to `max - 1` more messages after a first one, within this connection's fair share of the queue (so
    /// the site's other connections are not starved).
    pub(crate) fn take_more(&self, key: &SiteKey, max: usize, now: Instant) -> Vec<Work> {
        let mut out = Vec::new();
        if max <= 1 {
            return out;
        }
        if let Some(site) = self.map.lock().get_mut(key) {
            let share = site.len() / site.active.max(1);
            for _ in 0..share.min(max - 1) {
                match site.pop(now) {
                    Some(w) => out.push(w),
                    None => break,
                }
            }
        }
        out
    }

    /// The next message for a connection of `key`: at once if queued, else wait until `deadline` for more (so
    /// a trickle of messages reuses one connection instead of opening one each). `stopping` ends the wait.
    pub(crate) async fn next_work(
        &self,
        key: &SiteKey,
        deadline: Instant,
        stopping: impl Fn() -> bool,
    ) -> Option<Work> {
        let mut idle = false;
        let work = loop {
            let now = Instant::now();
            let stop = stopping();
            let (work, rate_wait, wake, ask) = match self.map.lock().get_mut(key) {
                Some(site) => {
                    let w = site.pop(now);
                    if w.is_some() && idle {
                        site.idle -= 1;
                        idle = false;
                    } else if w.is_none() && !idle {
                        site.idle += 1;
                        idle = true;
                    }
                    // Only a connection that will go on waiting may take the ask (else nobody would make it).
                    let waits = w.is_none() && now < deadline && !stop;
                    let (ask, wait) = if waits { token_need(site, now) } else { (None, Duration::ZERO) };
                    (w, site.rate_wait().max(wait), Some(site.work_ready.clone()), ask)
                }
                None => (None, Duration::ZERO, None, None),
            };
            if work.is_some() || stop || now >= deadline {
                break work;
            }
            let left = deadline - now;
            if let Some(rate) = ask {
                // Out of fleet tokens: this connection asks for the next batch.
                self.ask_tokens(key, rate, left).await;
                continue;
            }
            match wake {
                // Rate-limited: the next token is due at a known time (or another connection is asking).
                _ if !rate_wait.is_zero() => tokio::time::sleep(rate_wait.min(left)).await,
                // Otherwise sleep until work is queued (or the idle time is over): no polling.
                Some(wake) => {
                    let _ = tokio::time::timeout(left, wake.notified()).await;
                }
                None => break None,
            }
        };
        if idle {
            if let Some(site) = self.map.lock().get_mut(key) {
                site.idle = site.idle.saturating_sub(1);
            }
        }
        work
    }

    /// Ask the fleet for a batch of sends for `key` at `rate` (a connection that found none left); waits up to
    /// `left` when the fleet's bucket is empty.
    async fn ask_tokens(&self, key: &SiteKey, rate: f64, left: Duration) {
        let Some(fleet) = self.fleet.get() else { return };
        let (got, wait) = fleet.tokens(&key.site, rate, token_batch(rate)).await;
        let now = Instant::now();
        match self.map.lock().get_mut(key) {
            Some(site) => {
                site.fleet.asking_tokens = false;
                site.fleet.tokens += got;
                site.fleet.next_ask = (got == 0).then(|| now + wait.max(Duration::from_millis(1)));
                if got > 0 {
                    site.work_ready.notify_waiters();
                }
            }
            None => return,
        }
        if got == 0 {
            tokio::time::sleep(wait.max(Duration::from_millis(1)).min(left)).await;
        }
    }

    /// Return messages a connection took but did not send to the front of the queue, in order. Returns the
    /// ones whose site is gone (the caller puts them back on the timer).
    pub(crate) fn give_back(&self, key: &SiteKey, works: &[Work]) -> Vec<Work> {
        match self.map.lock().get_mut(key) {
            Some(site) => {
                for w in works.iter().rev() {
                    site.push_front(*w);
                }
                Vec::new()
            }
            // The site is only removed once it has no connection; keep the work on the timer regardless.
            None => works.to_vec(),
        }
    }

    /// Take waiting work matching `pred` from every site (expiry sweep).
    pub(crate) fn take_where(&self, mut pred: impl FnMut(&Work) -> bool) -> Vec<Work> {
        let mut out = Vec::new();
        for site in self.map.lock().values_mut() {
            out.extend(site.take_where(&mut pred));
        }
        out
    }

    /// Wake every idle connection (stop).
    pub(crate) fn wake_all(&self) {
        for site in self.map.lock().values() {
            site.work_ready.notify_waiters();
        }
    }
}

/// Whether a connection that found no work on `site` and waits for some should ask the fleet for tokens (the
/// rate, with `asking_tokens` set: the caller must ask), or else how long to wait for another connection's
/// request or the fleet's next token.
fn token_need(site: &mut Site, now: Instant) -> (Option<f64>, Duration) {
    let rate = match site.limits.rate {
        Some(rate) if site.fleet.on && site.fleet.tokens == 0 && !site.is_empty() => rate,
        _ => return (None, Duration::ZERO),
    };
    let f = &mut site.fleet;
    if f.asking_tokens {
        return (None, Duration::from_millis(5));
    }
    if let Some(at) = f.next_ask.filter(|at| *at > now) {
        return (None, at - now);
    }
    f.asking_tokens = true;
    (Some(rate), Duration::ZERO)
}
