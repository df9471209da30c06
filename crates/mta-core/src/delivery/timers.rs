//! The scheduler's owner: its lock, the wake-up of the timer loop, and every operation the delivery tasks
//! perform on it. Callers never hold the lock; each operation takes it for a few map operations.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mta_spool::{MessageRecord, QueueId};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::ids::CompactId;
use super::scheduler::{QueueRow, Scheduler, State, Work};

/// Scheduled work: timers, queue counts, suspensions and names.
pub(crate) struct Timers {
    sched: Mutex<Scheduler>,
    wake: Notify,
    /// Spool-only mode keeps no timers.
    enabled: bool,
    /// Configured egress pools (other pool names in a record mean the default source).
    pools: HashSet<String>,
}

impl Timers {
    /// Timers for a delivery engine that delivers (`enabled`) through `pools`.
    pub(crate) fn new(enabled: bool, pools: impl IntoIterator<Item = String>) -> Timers {
        Timers { sched: Mutex::new(Scheduler::new()), wake: Notify::new(), enabled, pools: pools.into_iter().collect() }
    }

    /// Queue every undelivered destination of `record` at its stored next-attempt time.
    pub(crate) fn enqueue_record(&self, record: &MessageRecord) {
        if !self.enabled {
            // Spool-only mode: nothing will dispatch, so keep no timers (memory and a lock off the hot path).
            return;
        }
        let mut sched = self.sched.lock();
        let s = &mut *sched;
        let msg = CompactId::new(&record.id, &mut s.nodes);
        let tenant = record.tenant.as_deref().map(|t| s.tenants.intern(t)).unwrap_or(0);
        let pool = record.pool.as_deref().filter(|p| self.pools.contains(*p)).map(|p| s.pools.intern(p)).unwrap_or(0);
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

    /// Put every one of `works` back on the timer at `due_ms`.
    pub(crate) fn reschedule_all(&self, works: Vec<Work>, from: State, due_ms: u64) {
        if works.is_empty() {
            return;
        }
        let mut s = self.sched.lock();
        for w in works {
            s.reschedule(w, from, due_ms);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// `w` is gone from `state` (delivered, bounced, dropped).
    pub(crate) fn leave(&self, w: &Work, state: State) {
        self.sched.lock().leave(w, state);
    }

    /// Count every one of `works` as moved from `from` to `to`.
    pub(crate) fn transition_all<'a>(&self, works: impl IntoIterator<Item = &'a Work>, from: State, to: State) {
        let mut s = self.sched.lock();
        for w in works {
            s.transition(w, from, to);
        }
    }

    /// Mark `batch` in flight; returns the pairs with their queue ids (a pair whose id cannot be rebuilt is
    /// dropped from the counts).
    pub(crate) fn take_in_flight(&self, batch: Vec<Work>) -> (Vec<Work>, Vec<QueueId>) {
        let mut works = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let mut s = self.sched.lock();
        for w in batch {
            s.transition(&w, State::Ready, State::InFlight);
            match w.msg.to_queue_id(&s.nodes) {
                Some(id) => {
                    works.push(w);
                    ids.push(id);
                }
                None => s.leave(&w, State::InFlight),
            }
        }
        (works, ids)
    }

    /// Up to `max` pairs due at `now` (counted ready), and when the next timer is due.
    pub(crate) fn pop_due(&self, now: u64, max: usize) -> (Vec<Work>, Option<u64>) {
        let mut s = self.sched.lock();
        let due = if max > 0 { s.pop_due(now, max) } else { Vec::new() };
        (due, s.next_due())
    }

    /// Wait until work is scheduled or `limit` passes.
    pub(crate) async fn wait(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.wake.notified()).await;
    }

    /// Wake the timer loop (stop, resume).
    pub(crate) fn wake_all(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// The name of an interned domain.
    pub(crate) fn domain_name(&self, domain: u32) -> Arc<str> {
        self.sched.lock().domains.name(domain)
    }

    /// The names of interned pools.
    pub(crate) fn pool_names(&self, pools: impl IntoIterator<Item = u32>) -> Vec<(u32, Arc<str>)> {
        let s = self.sched.lock();
        pools.into_iter().map(|p| (p, s.pools.name(p))).collect()
    }

    /// The queue id and destination domain of `w`.
    pub(crate) fn names(&self, w: &Work) -> (Option<QueueId>, Arc<str>) {
        let s = self.sched.lock();
        (w.msg.to_queue_id(&s.nodes), s.domains.name(w.domain))
    }

    /// Per-queue counts for the admin API.
    pub(crate) fn summary(&self) -> Vec<QueueRow> {
        self.sched.lock().summary()
    }

    /// Hold a domain's queue.
    pub(crate) fn suspend(&self, domain: &str) {
        self.sched.lock().suspend(domain);
    }

    /// Hold a domain's queue until `until_ms` (a `[[response_rule]]` suspension; released by the timer loop).
    pub(crate) fn suspend_until(&self, domain: &str, until_ms: u64, reason: String) {
        self.sched.lock().suspend_until(domain, until_ms, reason);
    }

    /// Note a rule's throttle of `domain`'s site (for the queue summary).
    pub(crate) fn note_throttle(&self, domain: &str, until_ms: u64, reason: String) {
        self.sched.lock().note_throttle(domain, until_ms, reason);
    }

    /// Hold `w` (taken from `from`) when its domain is suspended; gives it back otherwise.
    pub(crate) fn hold_if_suspended(&self, w: Work, from: State) -> Option<Work> {
        let mut s = self.sched.lock();
        if s.is_suspended(w.domain) {
            s.hold(w, from);
            None
        } else {
            Some(w)
        }
    }

    /// Release a domain's queue; returns its held pairs (counted ready).
    pub(crate) fn resume(&self, domain: &str) -> Vec<Work> {
        self.sched.lock().resume(domain)
    }

    /// Held pairs past `max_age_ms` (counted ready).
    pub(crate) fn take_expired_held(&self, now: u64, max_age_ms: u64) -> Vec<Work> {
        self.sched.lock().take_expired_held(now, max_age_ms)
    }

    /// Release the timer heap's spare capacity.
    pub(crate) fn shrink_to_fit(&self) {
        self.sched.lock().shrink_to_fit();
    }
}
