//! Unit tests of the delivery runtime under tokio's paused clock: a real spool in a temporary directory, a
//! scripted receiver behind the transport seam, and virtual time, so retries minutes apart, throttling
//! periods, circuit probes and graceful stop run in milliseconds. End-to-end behaviour over real TCP and
//! real SMTP servers is tested in `tests/` at the workspace root.
//!
//! The spool commits on its own thread, which tokio's clock does not see: left alone, paused time would jump
//! to the next timer while a task waits for a commit. So a driver task keeps the runtime busy (no
//! auto-advance) while a commit is pending; otherwise tokio advances the clock as usual.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mta_smtp::client::{ClientError, Envelope, RecipientOutcome, SendResult};
use mta_smtp::Reply;
use mta_spool::{MessageRecord, Spool, SpoolConfig};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::clock::Clock;
use super::plan::NextHops;
use super::transport::{BoxFuture, Connected, Refused, Session, Transport};
use super::{Delivery, DeliveryConfig, Route};
use crate::dns::{DnsConfig, Resolver};
use crate::events::{Event, EventLog, EventType};
use crate::Response;

/// A receiving server following a script.
#[derive(Default)]
struct Receiver {
    /// Every connection attempt is refused.
    refuse: AtomicBool,
    /// Replies to the next sends, in order (then `250`).
    replies: Mutex<VecDeque<Reply>>,
    /// A session becomes unusable after this many sends (the server closed it); 0 = never.
    close_after: AtomicUsize,
    /// How long a send takes.
    send_delay: Mutex<Duration>,
    /// Virtual time of each connection attempt, and sessions open right after it.
    connects: Mutex<Vec<(Instant, usize)>>,
    open: AtomicUsize,
    /// Message bodies in the order they were sent.
    sent: Mutex<Vec<String>>,
}

struct ScriptedTransport(Arc<Receiver>);

struct ScriptedSession {
    rx: Arc<Receiver>,
    sends: usize,
}

impl Transport for ScriptedTransport {
    fn connect<'a>(
        &'a self,
        _hops: &'a NextHops,
        _source: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<Connected, Refused>> {
        Box::pin(async move {
            let rx = &self.0;
            if rx.refuse.load(Ordering::SeqCst) {
                rx.connects.lock().push((Instant::now(), rx.open.load(Ordering::SeqCst)));
                return Err(Refused::without_host(Response::local(451, (4, 4, 1), "connection refused")));
            }
            let open = rx.open.fetch_add(1, Ordering::SeqCst) + 1;
            rx.connects.lock().push((Instant::now(), open));
            Ok(Connected {
                session: Box::new(ScriptedSession { rx: rx.clone(), sends: 0 }) as Box<dyn Session>,
                mx: "mx.test".to_string(),
                addr: None,
                tls: crate::tls_policy::TlsSession::opportunistic(false),
            })
        })
    }
}

impl Session for ScriptedSession {
    fn send<'a>(&'a mut self, env: &'a Envelope<'a>, data: &'a [u8]) -> BoxFuture<'a, Result<SendResult, ClientError>> {
        Box::pin(async move {
            let delay = *self.rx.send_delay.lock();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.sends += 1;
            self.rx.sent.lock().push(String::from_utf8_lossy(data).into_owned());
            let reply = self.rx.replies.lock().pop_front().unwrap_or_else(|| Reply::new(250, (2, 0, 0), "ok"));
            let outcome = |r: Reply| {
                if r.is_positive() {
                    RecipientOutcome::Delivered(r)
                } else if r.is_permanent() {
                    RecipientOutcome::Permanent(r)
                } else {
                    RecipientOutcome::Transient(r)
                }
            };
            let data_reply = reply.is_positive().then(|| reply.clone());
            Ok(SendResult { recipients: env.recipients.iter().map(|_| outcome(reply.clone())).collect(), data_reply })
        })
    }

    fn is_usable(&self) -> bool {
        let limit = self.rx.close_after.load(Ordering::SeqCst);
        limit == 0 || self.sends < limit
    }

    fn quit(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

impl Drop for ScriptedSession {
    fn drop(&mut self) {
        self.rx.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A delivery engine on a fresh spool, routed to the scripted receiver, on the paused clock.
struct Harness {
    _dir: tempfile::TempDir,
    spool: Spool,
    delivery: Delivery,
    rx: Arc<Receiver>,
    events: broadcast::Receiver<Event>,
    clock: Clock,
    start: Instant,
}

impl Harness {
    async fn new(cfg: DeliveryConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_async(SpoolConfig::new(dir.path(), "t1")).await.unwrap();
        let log = EventLog::open(None).unwrap();
        let events = log.subscribe();
        let dns = DnsConfig { nameservers: vec!["127.0.0.1:9".parse().unwrap()], ..DnsConfig::default() };
        let resolver = Resolver::new(dns).unwrap();
        let rx = Arc::new(Receiver::default());
        let clock = Clock::virtual_at(1_800_000_000_000);
        let cfg = DeliveryConfig { routes: vec![Route { domain: "*".into(), relay: "127.0.0.1:2525".into() }], ..cfg };
        let transport = Arc::new(ScriptedTransport(rx.clone()));
        let delivery = Delivery::with_parts(cfg, spool.clone(), log, resolver, "mx.test".into(), transport, clock);
        // Keeps paused time from jumping while the spool's thread works on a commit: busy (yielding) while a
        // commit is pending, else asleep so tokio's auto-advance moves the clock (to the next timer, at most
        // 25 ms). Blocking-pool work (spool reads) already holds auto-advance back by itself.
        let driven = spool.clone();
        tokio::spawn(async move {
            loop {
                if driven.commits_in_flight() > 0 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        });
        Harness { _dir: dir, spool, delivery, rx, events, clock, start: Instant::now() }
    }

    /// Start delivering (tests queue their first messages before, so they are due together).
    fn start(&self) {
        self.delivery.start();
    }

    /// Spool and queue a message numbered `n` to `rcpt`.
    async fn inject(&self, n: usize, rcpt: &str) -> MessageRecord {
        let record = MessageRecord::new(self.spool.next_id(), "s@a.test", &[rcpt.to_string()], self.clock.now_ms());
        let body = Bytes::from(format!("Subject: {n}\r\n\r\nbody\r\n"));
        let stored = self.spool.put(record, body).await.unwrap();
        self.delivery.enqueue(&stored);
        stored
    }

    /// The next `n` delivery results (receptions are not emitted here: messages are spooled directly).
    async fn results(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.events.recv().await {
                Ok(e) => out.push(e),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event log closed: {e}"),
            }
        }
        out
    }

    fn subjects(&self) -> Vec<String> {
        self.rx.sent.lock().iter().map(|b| b.lines().next().unwrap_or("").to_string()).collect()
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        retry_intervals: vec![Duration::from_secs(60), Duration::from_secs(300)],
        idle_timeout: Duration::from_secs(2),
        ..DeliveryConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_retry_on_the_schedule_then_deliver() {
    let mut h = Harness::new(config()).await;
    h.rx.replies.lock().extend([Reply::new(451, (4, 3, 0), "try later"), Reply::new(452, (4, 2, 2), "full")]);
    h.inject(1, "r@d.test").await;
    h.start();
    let events = h.results(3).await;
    let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::TransientFailure, EventType::TransientFailure, EventType::Delivery]);
    assert_eq!(events[0].response.to_string(), "451 4.3.0 try later");
    assert_eq!(events[0].response.code, 451, "typed, not text");
    assert_eq!(events[2].attempts, Some(3));
    // 60 s then 300 s (plus up to 10% jitter each) of virtual time passed between the attempts.
    assert!(h.elapsed() >= Duration::from_secs(360), "{:?}", h.elapsed());
    assert!(
        h.spool.get(&mta_spool::QueueId::parse(&events[2].id).unwrap()).await.unwrap().is_none(),
        "delivered: removed"
    );
}

#[tokio::test(start_paused = true)]
async fn read_ahead_goes_back_to_the_front_in_order() {
    let mut h = Harness::new(DeliveryConfig { connections_per_site: 1, ..config() }).await;
    // The first session is closed by the server after one message: the rest of its read-ahead batch must be
    // sent next, in order, before anything queued later.
    h.rx.close_after.store(1, Ordering::SeqCst);
    for n in 1..=5 {
        h.inject(n, "r@d.test").await;
    }
    h.start();
    h.results(5).await;
    assert_eq!(h.subjects(), ["Subject: 1", "Subject: 2", "Subject: 3", "Subject: 4", "Subject: 5"]);
    assert_eq!(h.rx.connects.lock().len(), 5, "one message per session, sessions one at a time");
    assert!(h.rx.connects.lock().iter().all(|(_, open)| *open == 1));
}

#[tokio::test(start_paused = true)]
async fn one_message_opens_one_connection() {
    let mut h = Harness::new(config()).await;
    h.inject(1, "r@d.test").await;
    h.start();
    h.results(1).await;
    assert_eq!(h.rx.connects.lock().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttling_reply_halves_the_connections_opened_after_it() {
    let cfg = DeliveryConfig {
        connections_per_site: 8,
        messages_per_connection: 2,
        throttle_for: Duration::from_secs(3600),
        ..config()
    };
    let mut h = Harness::new(cfg).await;
    *h.rx.send_delay.lock() = Duration::from_millis(500);
    h.rx.replies.lock().push_back(Reply::new(451, (4, 7, 1), "slow down"));
    for n in 0..80 {
        h.inject(n, &format!("r{n}@d.test")).await;
    }
    h.start();
    // 79 deliveries and one transient failure, then its retry.
    h.results(81).await;
    let connects = h.rx.connects.lock().clone();
    let before = connects.iter().map(|(_, open)| *open).take(8).max().unwrap_or(0);
    assert_eq!(before, 8, "ramped up to the site's limit first: {connects:?}");
    // Connections opened once the first wave closed (after the throttling reply) keep within half.
    let later: Vec<usize> = connects.iter().skip(8).map(|(_, open)| *open).collect();
    assert!(!later.is_empty());
    let over: Vec<usize> = later.iter().copied().filter(|open| *open > 4).collect();
    assert!(over.is_empty(), "sessions open after a connect under throttling: {later:?}");
}

#[tokio::test(start_paused = true)]
async fn repeated_connection_failures_open_the_circuit_then_one_probe_at_a_time() {
    let cfg = DeliveryConfig { circuit_threshold: 3, circuit_open_for: Duration::from_secs(60), ..config() };
    let h = Harness::new(cfg).await;
    h.rx.refuse.store(true, Ordering::SeqCst);
    for n in 0..20 {
        h.inject(n, "r@d.test").await;
    }
    let start = Instant::now();
    h.start();
    // Long enough for the circuit to open and be probed a few times (the retries fall due meanwhile too).
    tokio::time::sleep(Duration::from_secs(250)).await;
    let connects: Vec<Duration> = h.rx.connects.lock().iter().map(|(t, _)| t.duration_since(start)).collect();
    // The circuit opens at the third failure in a row. Connections opened before that (dispatch opens up to
    // three at once for 20 queued messages, and one that ends early may start another) still fail and count,
    // so the first burst is 3 to 5 attempts, all at the start: none after it until the probe time.
    let first_minute: Vec<&Duration> = connects.iter().filter(|t| **t < Duration::from_secs(59)).collect();
    assert!((3..=5).contains(&first_minute.len()), "attempts until the circuit opened: {connects:?}");
    assert!(first_minute.iter().all(|t| **t < Duration::from_secs(1)), "nothing while open: {connects:?}");
    // From then on, one probe per open period: at most one attempt per 60 s window, not one per message.
    for window in 1..4u64 {
        let (from, to) = (Duration::from_secs(60 * window - 1), Duration::from_secs(60 * (window + 1) - 1));
        let n = connects.iter().filter(|t| **t >= from && **t < to).count();
        assert!(n <= 1, "window {window}: {n} attempts: {connects:?}");
    }
    assert!(connects.len() >= 4, "probed after the open period: {connects:?}");
    // Nothing bounced: a refused connection is transient.
    assert_eq!(h.delivery.summary().iter().map(|r| r.counts.scheduled + r.counts.ready).sum::<u64>(), 20);
}

#[tokio::test(start_paused = true)]
async fn graceful_stop_finishes_the_message_on_the_wire_and_keeps_the_rest() {
    let mut h = Harness::new(DeliveryConfig { connections_per_site: 1, ..config() }).await;
    *h.rx.send_delay.lock() = Duration::from_secs(5);
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(h.inject(n, "r@d.test").await.id);
    }
    h.start();
    // Wait until the first message is on the wire.
    while h.rx.open.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A long limit: the spool commits on a thread paused time does not wait for.
    h.delivery.shutdown(Duration::from_secs(86_400)).await;
    assert_eq!(h.delivery.connections(), 0);
    let events = h.results(1).await;
    assert_eq!(events[0].kind, EventType::Delivery);
    assert_eq!(h.subjects(), ["Subject: 1"], "nothing new started after the stop");
    assert!(h.spool.get(&ids[0]).await.unwrap().is_none(), "the message on the wire was recorded");
    for id in &ids[1..] {
        assert!(h.spool.get(id).await.unwrap().is_some(), "the rest stay queued in the spool");
    }
}

/// A fleet where other nodes hold `others` of every site's leases; it counts what this node holds.
#[derive(Default)]
struct FakeFleet {
    others: AtomicUsize,
    held: Mutex<usize>,
    peak: AtomicUsize,
    asks: AtomicUsize,
    tokens: AtomicUsize,
}

impl FakeFleet {
    fn with_others(others: usize) -> Arc<FakeFleet> {
        Arc::new(FakeFleet { others: AtomicUsize::new(others), ..FakeFleet::default() })
    }
}

impl super::FleetLimits for FakeFleet {
    fn acquire(&self, _site: &str, limit: usize, want: usize) -> super::FleetFuture<usize> {
        self.asks.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock();
        let granted = want.min(limit.saturating_sub(self.others.load(Ordering::SeqCst) + *held));
        *held += granted;
        self.peak.fetch_max(*held, Ordering::SeqCst);
        Box::pin(async move { granted })
    }

    fn release(&self, _site: &str, n: usize) {
        let mut held = self.held.lock();
        assert!(*held >= n, "released more leases than were granted");
        *held -= n;
    }

    fn tokens(&self, _site: &str, _rate: f64, want: usize) -> super::FleetFuture<(usize, Duration)> {
        // Two sends per grant, then nothing for a second: the fleet's rate, whatever this node's config says.
        let n = self.tokens.fetch_add(1, Ordering::SeqCst);
        let granted = if n.is_multiple_of(2) { want.min(2) } else { 0 };
        Box::pin(async move { (granted, Duration::from_secs(1)) })
    }
}

fn fleet_of(fleet: &Arc<FakeFleet>) -> Option<super::Fleet> {
    Some(super::Fleet(fleet.clone()))
}

/// Wait (virtual time) until the fleet has every lease back.
async fn leases_returned(h: &Harness, fleet: &FakeFleet) {
    for _ in 0..100 {
        if *fleet.held.lock() == 0 && h.delivery.connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*fleet.held.lock(), 0, "leases held after the queue emptied");
}

#[tokio::test(start_paused = true)]
async fn fleet_leases_cap_connections_and_all_come_back() {
    let fleet = FakeFleet::with_others(2);
    let cfg =
        DeliveryConfig { connections_per_site: 4, messages_per_connection: 3, fleet: fleet_of(&fleet), ..config() };
    let mut h = Harness::new(cfg).await;
    *h.rx.send_delay.lock() = Duration::from_millis(200);
    for n in 0..60 {
        h.inject(n, &format!("r{n}@d.test")).await;
    }
    h.start();
    h.results(60).await;
    let connects = h.rx.connects.lock().clone();
    let peak = connects.iter().map(|(_, open)| *open).max().unwrap_or(0);
    assert_eq!(peak, 2, "4 fleet-wide, 2 held by other nodes: {connects:?}");
    assert_eq!(fleet.peak.load(Ordering::SeqCst), 2);
    leases_returned(&h, &fleet).await;
}

#[tokio::test(start_paused = true)]
async fn a_site_waits_for_a_fleet_lease_then_delivers() {
    // The whole fleet cap is held elsewhere: nothing opens until another node lets one go.
    let fleet = FakeFleet::with_others(2);
    let mut h = Harness::new(DeliveryConfig { connections_per_site: 2, fleet: fleet_of(&fleet), ..config() }).await;
    h.inject(1, "r@d.test").await;
    h.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.rx.connects.lock().is_empty(), "no lease, no connection");
    assert!(fleet.asks.load(Ordering::SeqCst) >= 2, "asked again while waiting");
    fleet.others.store(1, Ordering::SeqCst);
    let events = h.results(1).await;
    assert_eq!(events[0].kind, EventType::Delivery);
    assert_eq!(h.rx.connects.lock().len(), 1);
    leases_returned(&h, &fleet).await;
}

#[tokio::test(start_paused = true)]
async fn fleet_rate_spends_only_granted_tokens() {
    let shaping = super::Shaping {
        domain: "d.test".into(),
        connections: Some(2),
        messages_per_connection: None,
        // Locally this would send all ten at once; the fleet grants two per second.
        rate: Some(100.0),
    };
    let fleet = FakeFleet::with_others(0);
    let mut h = Harness::new(DeliveryConfig { shaping: vec![shaping], fleet: fleet_of(&fleet), ..config() }).await;
    for n in 0..10 {
        h.inject(n, "r@d.test").await;
    }
    h.start();
    h.results(10).await;
    assert_eq!(h.subjects().len(), 10);
    // 5 grants of 2 with a second's wait between them (connections idle out and reopen meanwhile).
    assert!(h.elapsed() >= Duration::from_secs(4), "{:?}", h.elapsed());
    leases_returned(&h, &fleet).await;
}
