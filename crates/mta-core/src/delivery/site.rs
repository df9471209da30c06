//! Ready queues and limits per (egress source, destination site).
//!
//! A site is the set of MX hosts a domain resolves to (or a fixed route), so ten thousand domains hosted by one
//! provider share one ready queue and one connection budget. Each site adapts to what its receivers say:
//! throttling replies (`421`, `451 4.7.x`) halve its connection cap for a while; repeated connection failures
//! open a circuit (nothing is tried until it half-opens, then one probe connection at a time).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use mta_spool::Priority;

use super::fleet::SiteFleet;
use super::plan::NextHops;
use super::scheduler::Work;

/// The key of a ready queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SiteKey {
    /// Egress source address (None = the system's choice).
    pub source: Option<IpAddr>,
    /// Site name: the sorted MX host names, or `route:host:port`.
    pub site: Arc<str>,
}

/// Limits of one site (defaults with `[[shaping]]` overrides applied).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteLimits {
    /// Connections at once.
    pub connections: usize,
    /// Messages per connection before it is closed.
    pub messages_per_connection: usize,
    /// Messages per second (None = unlimited).
    pub rate: Option<f64>,
}

/// Circuit breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Normal.
    Closed,
    /// Too many connection failures: nothing is tried until the instant.
    Open(Instant),
    /// After the open period: one probe connection decides.
    HalfOpen,
}

/// A site's ready queue and adaptive limits.
#[derive(Debug)]
pub struct Site {
    /// Where to connect.
    pub hops: Arc<NextHops>,
    transactional: VecDeque<Work>,
    bulk: VecDeque<Work>,
    /// Connections open (or opening) now.
    pub active: usize,
    /// Of those, connections idle and waiting for work (kept open for reuse).
    pub idle: usize,
    /// Wakes an idle connection when work is queued (a stored permit if none waits, so no wake-up is lost).
    pub work_ready: std::sync::Arc<tokio::sync::Notify>,
    /// Configured limits.
    pub limits: SiteLimits,
    throttled: Option<(usize, Instant)>,
    /// Connection failures in a row.
    pub consecutive_failures: u32,
    /// Breaker state.
    pub circuit: Circuit,
    tokens: f64,
    last_refill: Instant,
    /// Leases and tokens from the fleet, when limits are fleet-wide.
    pub(crate) fleet: SiteFleet,
}

impl Site {
    /// A site for `hops` with `limits` (fleet-wide ones when `fleet`).
    pub fn new(hops: Arc<NextHops>, limits: SiteLimits, now: Instant, fleet: bool) -> Site {
        Site {
            hops,
            transactional: VecDeque::new(),
            bulk: VecDeque::new(),
            active: 0,
            idle: 0,
            work_ready: std::sync::Arc::new(tokio::sync::Notify::new()),
            limits,
            throttled: None,
            consecutive_failures: 0,
            circuit: Circuit::Closed,
            tokens: limits.rate.map(|r| r.max(1.0)).unwrap_or(0.0),
            last_refill: now,
            fleet: SiteFleet::new(fleet),
        }
    }

    /// Queue due work (transactional ahead of bulk).
    pub fn push(&mut self, w: Work) {
        match w.priority {
            Priority::Transactional => self.transactional.push_back(w),
            Priority::Bulk => self.bulk.push_back(w),
        }
        self.work_ready.notify_one();
    }

    /// Put back work a connection took but did not send: ahead of the rest, where it was.
    pub fn push_front(&mut self, w: Work) {
        match w.priority {
            Priority::Transactional => self.transactional.push_front(w),
            Priority::Bulk => self.bulk.push_front(w),
        }
        self.work_ready.notify_one();
    }

    /// Work waiting.
    pub fn len(&self) -> usize {
        self.transactional.len() + self.bulk.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take everything waiting (circuit opened, shutdown, expiry sweep).
    pub fn drain(&mut self) -> Vec<Work> {
        self.transactional.drain(..).chain(self.bulk.drain(..)).collect()
    }

    /// Remove waiting work matching `pred` (expiry sweep).
    pub fn take_where(&mut self, mut pred: impl FnMut(&Work) -> bool) -> Vec<Work> {
        let mut out = Vec::new();
        for q in [&mut self.transactional, &mut self.bulk] {
            q.retain(|w| {
                if pred(w) {
                    out.push(*w);
                    false
                } else {
                    true
                }
            });
        }
        out
    }

    /// True while a throttle lowers the cap (as of the last [`Site::connection_cap`]).
    pub fn is_throttled(&self) -> bool {
        self.throttled.is_some()
    }

    /// The connection cap now: the configured one, lowered while throttled.
    pub fn connection_cap(&mut self, now: Instant) -> usize {
        if let Some((cap, until)) = self.throttled {
            if now < until {
                return cap.min(self.limits.connections).max(1);
            }
            self.throttled = None;
        }
        match self.circuit {
            Circuit::Closed => self.limits.connections,
            // Half-open: a single probe.
            Circuit::HalfOpen => 1,
            Circuit::Open(until) if now >= until => {
                self.circuit = Circuit::HalfOpen;
                1
            }
            Circuit::Open(_) => 0,
        }
    }

    /// Take the next work if a connection may send one now (rate limit).
    pub fn pop(&mut self, now: Instant) -> Option<Work> {
        if self.is_empty() {
            return None;
        }
        if self.limits.rate.is_some() && self.fleet.on {
            // Fleet-wide rate: only tokens the fleet granted (asked for by `Sites::next_work`).
            if self.fleet.tokens == 0 {
                return None;
            }
            self.fleet.tokens -= 1;
        } else if let Some(rate) = self.limits.rate {
            let elapsed = now.saturating_duration_since(self.last_refill).as_secs_f64();
            self.last_refill = now;
            self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
            if self.tokens < 1.0 {
                return None;
            }
            self.tokens -= 1.0;
        }
        self.transactional.pop_front().or_else(|| self.bulk.pop_front())
    }

    /// How long until the rate limit lets the next message go (zero when not limited).
    pub fn rate_wait(&self) -> Duration {
        match self.limits.rate {
            Some(_) if self.fleet.on => Duration::ZERO,
            Some(rate) if self.tokens < 1.0 => Duration::from_secs_f64((1.0 - self.tokens) / rate),
            _ => Duration::ZERO,
        }
    }

    /// The receiver asked us to slow down: halve the cap for `period`.
    pub fn throttle(&mut self, now: Instant, period: Duration) {
        let current = self.throttled.map(|(c, _)| c).unwrap_or(self.limits.connections).min(self.active.max(1));
        let cap = (current / 2).max(1);
        self.throttled = Some((cap, now + period));
        metrics::counter!("mta_delivery_throttled_total").increment(1);
    }

    /// A `[[response_rule]]` throttle: keep `factor` of the configured cap for `period` (a lower cap already in
    /// force stays, the later end wins).
    pub fn throttle_by(&mut self, now: Instant, factor: f64, period: Duration) {
        let cap = ((self.limits.connections as f64 * factor).floor() as usize).max(1);
        let (cap, until) = match self.throttled {
            Some((c, u)) if u > now => (c.min(cap), u.max(now + period)),
            _ => (cap, now + period),
        };
        self.throttled = Some((cap, until));
        metrics::counter!("mta_delivery_throttled_total").increment(1);
    }

    /// A connection succeeded: close the circuit.
    pub fn connected(&mut self) {
        self.consecutive_failures = 0;
        self.circuit = Circuit::Closed;
    }

    /// A connection attempt failed on every address; returns true when this opened the circuit.
    pub fn connect_failed(&mut self, now: Instant, threshold: u32, open_for: Duration) -> bool {
        self.consecutive_failures += 1;
        let open = matches!(self.circuit, Circuit::HalfOpen) || self.consecutive_failures >= threshold;
        if open && !matches!(self.circuit, Circuit::Open(_)) {
            self.circuit = Circuit::Open(now + open_for);
            metrics::counter!("mta_delivery_circuit_open_total").increment(1);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::ids::{CompactId, Interner};

    fn site(connections: usize, rate: Option<f64>) -> Site {
        let hops = Arc::new(NextHops { name: "mx.test".into(), hosts: vec![], tls: Default::default(), policy: None });
        Site::new(hops, SiteLimits { connections, messages_per_connection: 10, rate }, Instant::now(), false)
    }

    fn work(priority: Priority) -> Work {
        let mut n = Interner::default();
        let id = mta_spool::IdGenerator::new("x").next_id();
        Work { msg: CompactId::new(&id, &mut n), domain: 0, tenant: 0, pool: 0, received_ms: 0, priority }
    }

    #[test]
    fn transactional_first() {
        let mut s = site(2, None);
        let b = work(Priority::Bulk);
        let t = work(Priority::Transactional);
        s.push(b);
        s.push(t);
        let now = Instant::now();
        assert_eq!(s.pop(now), Some(t));
        assert_eq!(s.pop(now), Some(b));
    }

    #[test]
    fn work_put_back_goes_first_in_its_priority() {
        let mut s = site(2, None);
        let (a, b, c) = (work(Priority::Bulk), work(Priority::Bulk), work(Priority::Transactional));
        s.push(a);
        s.push_front(b);
        s.push(c);
        let now = Instant::now();
        assert_eq!(s.pop(now), Some(c));
        assert_eq!(s.pop(now), Some(b));
        assert_eq!(s.pop(now), Some(a));
    }

    #[test]
    fn throttle_halves_and_recovers() {
        let mut s = site(8, None);
        let now = Instant::now();
        s.active = 8;
        s.throttle(now, Duration::from_secs(60));
        assert_eq!(s.connection_cap(now), 4);
        assert_eq!(s.connection_cap(now + Duration::from_secs(61)), 8);
    }

    #[test]
    fn circuit_opens_then_probes() {
        let mut s = site(8, None);
        let now = Instant::now();
        assert!(!s.connect_failed(now, 3, Duration::from_secs(30)));
        assert!(!s.connect_failed(now, 3, Duration::from_secs(30)));
        assert!(s.connect_failed(now, 3, Duration::from_secs(30)));
        assert_eq!(s.connection_cap(now), 0);
        assert_eq!(s.connection_cap(now + Duration::from_secs(31)), 1);
        // The probe fails: open again at once.
        assert!(s.connect_failed(now + Duration::from_secs(31), 3, Duration::from_secs(30)));
        s.circuit = Circuit::HalfOpen;
        s.connected();
        assert_eq!(s.connection_cap(now), 8);
    }

    #[test]
    fn rate_limit() {
        let mut s = site(8, Some(2.0));
        for _ in 0..5 {
            s.push(work(Priority::Bulk));
        }
        let now = Instant::now();
        assert!(s.pop(now).is_some());
        assert!(s.pop(now).is_some());
        assert!(s.pop(now).is_none());
        assert!(s.pop(now + Duration::from_millis(600)).is_some());
    }
}
