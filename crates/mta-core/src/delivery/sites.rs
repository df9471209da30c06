//! The sites table: every ready queue with its limits, behind one lock that only this module takes. Dispatch,
//! connections and the expiry sweep use its operations (queue work, plan connections, take a batch, wait for
//! work, give back, connection started/ended, throttle, circuit), never the map.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
}

/// Every (egress source, site) ready queue.
#[derive(Default)]
pub(crate) struct Sites {
    map: Mutex<HashMap<SiteKey, Site>>,
    /// Sites that wanted a connection when no global permit was free, in order.
    starved: Mutex<VecDeque<SiteKey>>,
}

impl Sites {
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
        let mut map = self.map.lock();
        for (key, w) in works {
            let site = map.entry(key.clone()).or_insert_with(|| Site::new(hops.clone(), limits, now));
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
    /// mostly domains with one or two messages. A site with an open circuit gives its queue back.
    pub(crate) fn plan(&self, key: &SiteKey, permits: &Arc<Semaphore>, now: Instant) -> Plan {
        let mut plan = Plan::default();
        let mut map = self.map.lock();
        let Some(site) = map.get_mut(key) else { return plan };
        let cap = site.connection_cap(now);
        if cap == 0 {
            if let Circuit::Open(until) = site.circuit {
                plan.probe_at = Some(until);
                plan.reschedule = site.drain();
            }
        }
        while site.active < cap && site.len() > site.active * PREFETCH {
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    site.active += 1;
                    plan.open.push(permit);
                }
                Err(_) => {
                    let mut starved = self.starved.lock();
                    if !starved.contains(key) {
                        starved.push_back(key.clone());
                    }
                    break;
                }
            }
        }
        if site.is_empty() && site.active == 0 && !matches!(site.circuit, Circuit::Open(_)) {
            map.remove(key);
        }
        plan
    }

    /// A connection of `key` ended; returns a site that waited for a global permit, if any.
    pub(crate) fn connection_ended(&self, key: &SiteKey) -> Option<SiteKey> {
        if let Some(site) = self.map.lock().get_mut(key) {
            site.active = site.active.saturating_sub(1);
        }
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
            let (work, rate_wait, wake) = match self.map.lock().get_mut(key) {
                Some(site) => {
                    let w = site.pop(now);
                    if w.is_some() && idle {
                        site.idle -= 1;
                        idle = false;
                    } else if w.is_none() && !idle {
                        site.idle += 1;
                        idle = true;
                    }
                    (w, site.rate_wait(), Some(site.work_ready.clone()))
                }
                None => (None, Duration::ZERO, None),
            };
            if work.is_some() || stopping() || now >= deadline {
                break work;
            }
            let left = deadline - now;
            match wake {
                // Rate-limited: the next token is due at a known time.
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
