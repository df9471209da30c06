//! The scheduler's synchronous core: when is each (message, destination) due, and what state is it in.
//!
//! One min-heap of timers serves every scheduled (message, domain) pair — millions of them cost one heap
//! entry each (about 48 bytes), not a task each. Queue accounting is per (tenant, domain), the *scheduled
//! queue* of the design (README: "Delivery in one paragraph"); the *ready queues* per (egress source, site) live in [`super::site`]. No I/O and no
//! clock here: callers pass `now`, so tests drive time directly.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use mta_spool::Priority;

use super::ids::{CompactId, Interner};

/// One (message, destination domain) pair in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// The message.
    pub msg: CompactId,
    /// Interned destination domain.
    pub domain: u32,
    /// Interned tenant (0 = none).
    pub tenant: u32,
    /// Interned egress pool (0 = default source).
    pub pool: u32,
    /// Reception time (start of `max_age`), Unix ms.
    pub received_ms: u64,
    /// Dispatch priority.
    pub priority: Priority,
}

/// Where a pair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for its due time.
    Scheduled,
    /// Due: resolving or waiting in a ready queue for a connection.
    Ready,
    /// Being delivered on a connection.
    InFlight,
    /// Due while its domain is suspended: held until resumed (or expired).
    Held,
}

/// Counts of one (tenant, domain) queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting for their time.
    pub scheduled: u64,
    /// Due and waiting for a connection (or DNS).
    pub ready: u64,
    /// On a connection now.
    pub in_flight: u64,
    /// Held by a suspension.
    pub held: u64,
}

impl QueueCounts {
    fn slot(&mut self, s: State) -> &mut u64 {
        match s {
            State::Scheduled => &mut self.scheduled,
            State::Ready => &mut self.ready,
            State::InFlight => &mut self.in_flight,
            State::Held => &mut self.held,
        }
    }

    fn is_empty(&self) -> bool {
        self.scheduled == 0 && self.ready == 0 && self.in_flight == 0 && self.held == 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    due: u64,
    seq: u64,
    work: Work,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// One row of the queue summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// Tenant (empty = none).
    pub tenant: String,
    /// Destination domain.
    pub domain: String,
    /// Counts.
    pub counts: QueueCounts,
    /// Whether the domain is suspended.
    pub suspended: bool,
    /// Why (a `[[response_rule]]` and the reply that matched it; `None` for an operator's suspension).
    pub suspended_reason: Option<String>,
    /// When a rule's suspension ends by itself (ms since the epoch); `None`: until resumed.
    pub suspended_until_ms: Option<u64>,
    /// Why the domain's site is throttled by a `[[response_rule]]`, when it is.
    pub throttled_reason: Option<String>,
    /// Until when (ms since the epoch).
    pub throttled_until_ms: Option<u64>,
}

/// A suspended domain: until when (`None`: until an operator resumes it) and why.
#[derive(Debug, Clone, Default)]
struct Suspension {
    until_ms: Option<u64>,
    reason: Option<String>,
}

/// Timers, per-queue accounting, suspensions, and the interners for compact names.
#[derive(Debug, Default)]
pub struct Scheduler {
    heap: BinaryHeap<Reverse<Timer>>,
    seq: u64,
    queues: HashMap<(u32, u32), QueueCounts>,
    suspended: HashMap<u32, Suspension>,
    held: HashMap<u32, Vec<Work>>,
    /// Throttles by `[[response_rule]]` per domain, for the queue summary: (until, reason).
    throttled: HashMap<u32, (u64, String)>,
    /// Destination domains.
    pub domains: Interner,
    /// Tenants (0 is the empty tenant).
    pub tenants: Interner,
    /// Node suffixes of queue ids.
    pub nodes: Interner,
    /// Egress pools (0 is the default source).
    pub pools: Interner,
}

impl Scheduler {
    /// An empty scheduler (tenant 0 is "no tenant").
    pub fn new() -> Self {
        let mut s = Scheduler::default();
        s.tenants.intern("");
        s.pools.intern("");
        s
    }

    fn count(&mut self, w: &Work, state: State, delta: i64) {
        let c = self.queues.entry((w.tenant, w.domain)).or_default();
        let slot = c.slot(state);
        *slot = slot.saturating_add_signed(delta);
        if c.is_empty() {
            self.queues.remove(&(w.tenant, w.domain));
        }
    }

    /// Record a state change of `w` in the queue counts.
    pub fn transition(&mut self, w: &Work, from: State, to: State) {
        self.count(w, from, -1);
        self.count(w, to, 1);
    }

    /// Count `w` as gone from `state` (delivered, bounced, or dropped).
    pub fn leave(&mut self, w: &Work, state: State) {
        self.count(w, state, -1);
    }

    /// Schedule `w` at `due_ms` (it was not counted anywhere before).
    pub fn schedule(&mut self, w: Work, due_ms: u64) {
        self.count(&w, State::Scheduled, 1);
        self.push_timer(w, due_ms);
    }

    /// Move `w` from `from` back to the scheduled queue at `due_ms`.
    pub fn reschedule(&mut self, w: Work, from: State, due_ms: u64) {
        self.transition(&w, from, State::Scheduled);
        self.push_timer(w, due_ms);
    }

    fn push_timer(&mut self, w: Work, due: u64) {
        self.seq += 1;
        self.heap.push(Reverse(Timer { due, seq: self.seq, work: w }));
    }

    /// When the earliest timer is due (a timed suspension's end counts: its held pairs are released then).
    pub fn next_due(&self) -> Option<u64> {
        let ends = self.suspended.values().filter_map(|s| s.until_ms).min();
        match (self.heap.peek().map(|Reverse(t)| t.due), ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Take up to `max` pairs due at `now`. Pairs of suspended domains move to the held state instead; the
    /// others are returned counted as [`State::Ready`].
    pub fn pop_due(&mut self, now: u64, max: usize) -> Vec<Work> {
        let mut out = Vec::new();
        // Timed suspensions that ended release their held pairs first (recovery is automatic).
        let ended: Vec<u32> =
            self.suspended.iter().filter(|(_, s)| s.until_ms.is_some_and(|u| u <= now)).map(|(d, _)| *d).collect();
        for d in ended {
            let name = self.domains.name(d);
            out.extend(self.resume(&name));
        }
        self.throttled.retain(|_, (until, _)| *until > now);
        while out.len() < max {
            match self.heap.peek() {
                Some(Reverse(t)) if t.due <= now => {}
                _ => break,
            }
            let Some(Reverse(t)) = self.heap.pop() else { break };
            if self.suspended.contains_key(&t.work.domain) {
                self.transition(&t.work, State::Scheduled, State::Held);
                self.held.entry(t.work.domain).or_default().push(t.work);
            } else {
                self.transition(&t.work, State::Scheduled, State::Ready);
                out.push(t.work);
            }
        }
        out
    }

    /// Hold `domain`: due pairs wait (`max_age` still applies to them).
    pub fn suspend(&mut self, domain: &str) {
        let d = self.domains.intern(domain);
        self.suspended.insert(d, Suspension::default());
    }

    /// Hold `domain` until `until_ms` (released by [`Scheduler::pop_due`] then) because of `reason`; an
    /// operator's open-ended suspension is kept as it is, a longer timed one is not shortened.
    pub fn suspend_until(&mut self, domain: &str, until_ms: u64, reason: String) {
        let d = self.domains.intern(domain);
        let s = self.suspended.entry(d).or_insert(Suspension { until_ms: Some(0), reason: None });
        if let Some(u) = s.until_ms {
            s.until_ms = Some(u.max(until_ms));
            s.reason = Some(reason);
        }
    }

    /// Note that a rule throttles `domain`'s site until `until_ms` (shown in the queue summary).
    pub fn note_throttle(&mut self, domain: &str, until_ms: u64, reason: String) {
        let d = self.domains.intern(domain);
        self.throttled.insert(d, (until_ms, reason));
    }

    /// True when `domain` (interned) is suspended now.
    pub fn is_suspended(&self, domain: u32) -> bool {
        self.suspended.contains_key(&domain)
    }

    /// Hold `w` (taken from `from`) because its domain is suspended.
    pub fn hold(&mut self, w: Work, from: State) {
        self.transition(&w, from, State::Held);
        self.held.entry(w.domain).or_default().push(w);
    }

    /// Release `domain`; returns its held pairs, counted as [`State::Ready`], for immediate dispatch.
    pub fn resume(&mut self, domain: &str) -> Vec<Work> {
        let Some(d) = self.domains.get(domain) else { return Vec::new() };
        self.suspended.remove(&d);
        let held = self.held.remove(&d).unwrap_or_default();
        for w in &held {
            self.transition(w, State::Held, State::Ready);
        }
        held
    }

    /// Remove held pairs older than `max_age_ms` at `now`; they are returned counted as [`State::Ready`]
    /// so the caller expires them like any other pair.
    pub fn take_expired_held(&mut self, now: u64, max_age_ms: u64) -> Vec<Work> {
        let mut expired = Vec::new();
        for list in self.held.values_mut() {
            list.retain(|w| {
                if now.saturating_sub(w.received_ms) >= max_age_ms {
                    expired.push(*w);
                    false
                } else {
                    true
                }
            });
        }
        self.held.retain(|_, l| !l.is_empty());
        for w in &expired {
            self.transition(w, State::Held, State::Ready);
        }
        expired
    }

    /// Per-queue rows for the admin API, largest first.
    pub fn summary(&self) -> Vec<QueueRow> {
        let mut rows: Vec<QueueRow> = self
            .queues
            .iter()
            .map(|(&(t, d), c)| QueueRow {
                tenant: self.tenants.name(t).to_string(),
                domain: self.domains.name(d).to_string(),
                counts: *c,
                suspended: self.suspended.contains_key(&d),
                suspended_reason: self.suspended.get(&d).and_then(|s| s.reason.clone()),
                suspended_until_ms: self.suspended.get(&d).and_then(|s| s.until_ms),
                throttled_reason: self.throttled.get(&d).map(|t| t.1.clone()),
                throttled_until_ms: self.throttled.get(&d).map(|t| t.0),
            })
            .collect();
        for (&d, s) in &self.suspended {
            if !rows.iter().any(|r| *r.domain == *self.domains.name(d)) {
                rows.push(QueueRow {
                    tenant: String::new(),
                    domain: self.domains.name(d).to_string(),
                    counts: QueueCounts::default(),
                    suspended: true,
                    suspended_reason: s.reason.clone(),
                    suspended_until_ms: s.until_ms,
                    throttled_reason: self.throttled.get(&d).map(|t| t.1.clone()),
                    throttled_until_ms: self.throttled.get(&d).map(|t| t.0),
                });
            }
        }
        rows.sort_by(|a, b| {
            let total = |c: &QueueCounts| c.scheduled + c.ready + c.in_flight + c.held;
            total(&b.counts).cmp(&total(&a.counts)).then_with(|| a.domain.cmp(&b.domain))
        });
        rows
    }

    /// Give back the heap's spare capacity (after recovery filled it in one go).
    pub fn shrink_to_fit(&mut self) {
        self.heap.shrink_to_fit();
        self.queues.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_spool::IdGenerator;

    fn work(s: &mut Scheduler, domain: &str, received_ms: u64) -> Work {
        let id = IdGenerator::new("t").next_id();
        Work {
            msg: CompactId::new(&id, &mut s.nodes),
            domain: s.domains.intern(domain),
            tenant: 0,
            pool: 0,
            received_ms,
            priority: Priority::Bulk,
        }
    }

    #[test]
    fn pops_in_due_order_and_counts() {
        let mut s = Scheduler::new();
        let a = work(&mut s, "a.test", 0);
        let b = work(&mut s, "b.test", 0);
        s.schedule(b, 200);
        s.schedule(a, 100);
        assert_eq!(s.next_due(), Some(100));
        assert!(s.pop_due(50, 10).is_empty());
        assert_eq!(s.pop_due(150, 10), vec![a]);
        let rows = s.summary();
        assert_eq!(rows.iter().find(|r| r.domain == "a.test").unwrap().counts.ready, 1);
        assert_eq!(rows.iter().find(|r| r.domain == "b.test").unwrap().counts.scheduled, 1);
        s.transition(&a, State::Ready, State::InFlight);
        s.leave(&a, State::InFlight);
        assert!(s.summary().iter().all(|r| r.domain != "a.test"));
    }

    #[test]
    fn a_timed_suspension_holds_until_its_end_then_releases_by_itself() {
        let mut s = Scheduler::new();
        let a = work(&mut s, "a.test", 0);
        s.suspend_until("a.test", 500, "response_rule suspend: 421 4.7.28 x".into());
        s.schedule(a, 10);
        assert_eq!(s.next_due(), Some(10));
        assert!(s.pop_due(20, 10).is_empty(), "held");
        let row = &s.summary()[0];
        assert_eq!((row.counts.held, row.suspended_until_ms), (1, Some(500)));
        assert!(row.suspended_reason.as_deref().is_some_and(|r| r.contains("4.7.28")));
        assert_eq!(s.next_due(), Some(500), "the timer loop wakes at the end");
        assert_eq!(s.pop_due(500, 10), vec![a], "released, counted ready");
        assert!(!s.summary()[0].suspended);
        // An operator's open-ended suspension is not turned into a timed one.
        s.suspend("b.test");
        s.suspend_until("b.test", 600, "rule".into());
        assert!(s.pop_due(700, 10).is_empty());
        assert!(s.summary().iter().any(|r| r.domain == "b.test" && r.suspended && r.suspended_until_ms.is_none()));
    }

    #[test]
    fn suspension_holds_and_expires() {
        let mut s = Scheduler::new();
        let a = work(&mut s, "a.test", 0);
        let b = work(&mut s, "a.test", 900);
        s.suspend("a.test");
        s.schedule(a, 10);
        s.schedule(b, 10);
        assert!(s.pop_due(20, 10).is_empty());
        assert_eq!(s.summary()[0].counts.held, 2);
        assert!(s.summary()[0].suspended);
        // max_age 1000: `a` (received at 0) expires at 1000 even though it is held.
        assert_eq!(s.take_expired_held(1000, 1000), vec![a]);
        assert_eq!(s.resume("a.test"), vec![b]);
        assert_eq!(s.summary()[0].counts.ready, 2);
    }

    #[test]
    fn memory_per_pair_is_small() {
        assert!(std::mem::size_of::<Reverse<Timer>>() <= 64);
    }
}
