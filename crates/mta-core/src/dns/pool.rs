//! The pool's engine room: cache lookups, coalescing, admission (in-flight semaphore, bounded
//! queue, per-upstream token bucket), upstream choice, retries under a budget.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use hickory_proto::rr::{Name, RData, RecordType};
use metrics::{counter, gauge, histogram};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::cache::{Answer, Cache, Entry, Key, Memo, Origin};
use super::config::DnsConfig;
use super::error::{DnsError, TransientKind};
use super::records::{MxRecord, Source, TxtRecord};
use super::upstream::{Reply, Upstream};

type SharedFetch = Shared<BoxFuture<'static, Result<Arc<Entry>, DnsError>>>;

pub(crate) struct Inner {
    pub cfg: DnsConfig,
    pub upstreams: Vec<Upstream>,
    pub cache: Cache,
    /// One shared future per (name, type) being fetched: concurrent lookups join it.
    inflight: Mutex<HashMap<Key, SharedFetch>>,
    permits: Semaphore,
    queued: AtomicUsize,
    in_flight: AtomicI64,
    /// Tokens for retries: +ratio per first attempt, -1 per retry, capped.
    retry_budget: Mutex<RetryBudget>,
    delay_nanos: AtomicU64,
    pub coalesced: AtomicU64,
    pub refreshes: AtomicU64,
    pub retries: AtomicU64,
}

/// A retry may be sent when this many tokens are left for it.
///
/// Every first attempt deposits `retry_budget_ratio` tokens (capped at 100 x ratio, at least 1),
/// every retry takes one. A retry is any query beyond the first for a (name, type) whose last
/// outcome was a transient failure: an immediate retry inside a fetch, and also the first query
/// of a later fetch of a name that failed recently (`Memo::Retry`): from the upstream's side,
/// callers re-asking a failing name are retries too, and counting them as first attempts would
/// let them mint tokens and escape the budget. A floor of `RETRY_FLOOR_PER_SEC` tokens per
/// second keeps failed names retried (slowly) when no new names come to fund the budget, e.g.
/// after an outage ends.
struct RetryBudget {
    tokens: f64,
    cap: f64,
    /// Tokens gained per second whatever the traffic.
    floor: f64,
    last: Instant,
}

/// Tokens per second the retry budget gains whatever the traffic (see `RetryBudget`), unless
/// `retry_budget_ratio` is 0. At 1/s it adds nothing measurable to a busy pool's traffic.
const RETRY_FLOOR_PER_SEC: f64 = 1.0;

impl RetryBudget {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.floor).min(self.cap);
    }

    fn deposit(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + amount).min(self.cap);
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Removes the in-flight entry when the fetch task ends, even by panic.
struct InflightGuard {
    inner: Arc<Inner>,
    key: Key,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.inner.inflight.lock().remove(&self.key);
    }
}

/// Counts a waiter in the queue gauge for as long as it waits.
struct QueueGuard<'a>(&'a AtomicUsize);

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        gauge!("mta_dns_queued").set(n as f64);
    }
}

struct InFlightGuard<'a>(&'a AtomicI64);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        gauge!("mta_dns_in_flight").set(n as f64);
    }
}

impl Inner {
    pub fn new(cfg: DnsConfig, upstreams: Vec<Upstream>) -> Self {
        let retry_cap = (cfg.retry_budget_ratio * 100.0).max(1.0);
        Self {
            cache: Cache::new(cfg.cache_entries, cfg.failure_memo),
            permits: Semaphore::new(cfg.max_in_flight.max(1)),
            queued: AtomicUsize::new(0),
            in_flight: AtomicI64::new(0),
            retry_budget: Mutex::new(RetryBudget {
                tokens: retry_cap,
                cap: retry_cap,
                // no retries configured: no floor either
                floor: if cfg.retry_budget_ratio > 0.0 { RETRY_FLOOR_PER_SEC } else { 0.0 },
                last: Instant::now(),
            }),
            delay_nanos: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            upstreams,
            cfg,
        }
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_nanos.store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The answer for `key`: from the cache, by joining a fetch in progress, or by a new fetch.
    /// Never waits past `lookup_timeout`.
    pub async fn lookup(self: &Arc<Self>, key: Key) -> Result<(Arc<Entry>, Source), DnsError> {
        let now = Instant::now();
        let deadline = now + self.cfg.lookup_timeout;
        let cached = self.cache.get(&key, now);
        if let Some(e) = &cached {
            if now < e.expires {
                let result = if e.data.is_ok() { "hit" } else { "negative" };
                counter!("mta_dns_cache_total", "result" => result).increment(1);
                self.maybe_refresh(&key, e, now);
                return Ok((e.clone(), Source::Cache));
            }
        }
        let stale = cached.filter(|e| now < e.stale_until);
        let stale_or = |stale: Option<Arc<Entry>>, kind: TransientKind| match stale {
            Some(e) => {
                counter!("mta_dns_cache_total", "result" => "stale").increment(1);
                Ok((e, Source::Stale))
            }
            None => Err(DnsError::transient(kind)),
        };
        let retry_of = match self.cache.failure(&key, now, |o| self.recovered(o)) {
            Memo::Failing(kind) => return stale_or(stale, kind),
            Memo::Retry(kind) => Some(kind),
            Memo::Clear => None,
        };
        counter!("mta_dns_cache_total", "result" => "miss").increment(1);
        let fetch = match self.fetch(key, true, retry_of) {
            Ok(f) => f,
            // a retry the budget does not allow: no packet, the failure (or stale answer) now
            Err(kind) => return stale_or(stale, kind),
        };
        // With a stale answer in hand, do not make the caller wait a whole lookup deadline for
        // a failing upstream (RFC 8767 "client response timer").
        let wait_until = if stale.is_some() { deadline.min(now + self.cfg.query_timeout) } else { deadline };
        let err = match tokio::time::timeout_at(wait_until.into(), fetch).await {
            Ok(Ok(entry)) => return Ok((entry, Source::Upstream)),
            Ok(Err(e)) => e,
            Err(_) => DnsError::transient(TransientKind::Timeout),
        };
        match stale {
            Some(e) if !err.is_permanent() => {
                counter!("mta_dns_cache_total", "result" => "stale").increment(1);
                Ok((e, Source::Stale))
            }
            _ => Err(err),
        }
    }

    /// A hit in the last `refresh_before_expiry` of the TTL schedules one background refresh.
    fn maybe_refresh(self: &Arc<Self>, key: &Key, e: &Entry, now: Instant) {
        let frac = self.cfg.refresh_before_expiry;
        if frac <= 0.0 {
            return;
        }
        let left = e.expires.saturating_duration_since(now).as_secs_f64();
        if left <= e.ttl.as_secs_f64() * frac && !e.refreshing.swap(true, Ordering::Relaxed) {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
            counter!("mta_dns_refreshes_total").increment(1);
            drop(self.fetch(key.clone(), false, None));
        }
    }

    /// Join the fetch of `key` in progress, or start one (a spawned task: it completes and fills
    /// the cache even if every caller gave up). `retry_of`: the name failed recently with this
    /// kind, so a new fetch is a retry and needs a token of the retry budget; without one,
    /// `Err(kind)` and nothing is sent.
    fn fetch(
        self: &Arc<Self>,
        key: Key,
        count_join: bool,
        retry_of: Option<TransientKind>,
    ) -> Result<SharedFetch, TransientKind> {
        let mut map = self.inflight.lock();
        if let Some(f) = map.get(&key) {
            if count_join {
                self.coalesced.fetch_add(1, Ordering::Relaxed);
                counter!("mta_dns_coalesced_total").increment(1);
            }
            return Ok(f.clone());
        }
        if let Some(kind) = retry_of {
            if !self.retry_budget.lock().take(Instant::now()) {
                counter!("mta_dns_retry_budget_exhausted_total").increment(1);
                return Err(kind);
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            counter!("mta_dns_retries_total").increment(1);
        }
        let inner = self.clone();
        let k = key.clone();
        let first = retry_of.is_none();
        let task = tokio::spawn(async move {
            let _guard = InflightGuard { inner: inner.clone(), key: k.clone() };
            let (res, upstream) = inner.resolve_upstream(&k, first).await;
            match &res {
                Ok(entry) => inner.cache.insert(k, entry.clone()),
                Err(e) => {
                    if let Some(kind) = e.transient_kind() {
                        // An upstream failing across many names says nothing about this one:
                        // its back-off does not grow (DESIGN.md, "An upstream's trouble is not
                        // each name's trouble").
                        let troubled = upstream.and_then(|i| inner.upstreams.get(i)).is_some_and(|u| u.in_trouble());
                        inner.cache.remember_failure(k, kind, upstream, !troubled, |o| inner.recovered(o));
                    }
                }
            }
            res
        });
        let fut = async move { task.await.unwrap_or_else(|_| Err(DnsError::transient(TransientKind::Network))) }
            .boxed()
            .shared();
        map.insert(key, fut.clone());
        Ok(fut)
    }

    /// The upstream of `origin` has come out of a trouble since that failure.
    fn recovered(&self, origin: Origin) -> bool {
        self.upstreams.get(origin.upstream).is_some_and(|u| u.recovered_since(origin.at))
    }

    /// Ask upstreams until an answer, a permanent negative, the deadline or the retry budget.
    /// `first`: this fetch's first query is a first attempt (it funds the retry budget); else
    /// it is a retry whose token the caller took. Also returns the upstream that sent the last
    /// reply (none if no packet left), to whom a failure is attributed.
    async fn resolve_upstream(&self, key: &Key, first: bool) -> (Result<Arc<Entry>, DnsError>, Option<usize>) {
        let deadline = Instant::now() + self.cfg.lookup_timeout;
        // From raw labels, not `from_ascii`: SPF must be able to ask for names outside the
        // letter-digit-hyphen syntax (`foo:bar/baz.example`, RFC 7208 test suite); `normalize`
        // has already bounded label and name lengths.
        let name = match Name::from_labels(key.0.split('.').filter(|l| !l.is_empty()).map(str::as_bytes)) {
            Ok(n) => n,
            Err(e) => return (Err(DnsError::InvalidName(e.to_string())), None),
        };
        if first {
            self.retry_budget.lock().deposit(self.cfg.retry_budget_ratio, Instant::now());
        }
        let mut tried: Vec<usize> = Vec::new();
        let mut last = None;
        loop {
            let (idx, reply) = self.attempt(&tried, &name, key.1, deadline).await;
            let kind = match reply {
                Reply::Answer(lookup) => return (Ok(self.positive_entry(key.1, &lookup)), Some(idx)),
                Reply::Negative { nxdomain, ttl } => return (Ok(self.negative_entry(nxdomain, ttl)), Some(idx)),
                Reply::Failed(kind) => kind,
            };
            if kind == TransientKind::Overloaded {
                return (Err(DnsError::transient(kind)), last);
            }
            last = Some(idx);
            if Instant::now() >= deadline {
                return (Err(DnsError::transient(kind)), last);
            }
            if !tried.contains(&idx) {
                tried.push(idx);
            }
            // An upstream that answered SERVFAIL / REFUSED is not asked again at once: it caches
            // that failure itself (RFC 9520, at least 1 s), so the retry would most likely buy
            // the same answer. Another upstream is worth a retry; a lost packet (timeout,
            // network) is worth one to the same upstream. A name left failing is retried later,
            // when a caller asks for it again after the memo (a retry too, same budget): the
            // budget then goes to the names callers want, not to names asked once.
            let answered_failure = matches!(kind, TransientKind::ServFail | TransientKind::Refused);
            if answered_failure && tried.len() >= self.upstreams.len() {
                return (Err(DnsError::transient(kind)), last);
            }
            if !self.retry_budget.lock().take(Instant::now()) {
                counter!("mta_dns_retry_budget_exhausted_total").increment(1);
                return (Err(DnsError::transient(kind)), last);
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            counter!("mta_dns_retries_total").increment(1);
        }
    }

    /// Weighted random choice among the upstreams not yet tried for this lookup: weight
    /// 1/score², score = smoothed RTT x (1 + 20 x failure rate). The best gets most queries,
    /// the others keep a trickle (so their health stays known), a failing one almost none.
    fn pick_upstream(&self, tried: &[usize]) -> usize {
        let n = self.upstreams.len();
        if n == 1 {
            return 0;
        }
        let now = Instant::now();
        let all_tried = (0..n).all(|i| tried.contains(&i));
        let weights: Vec<f64> = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                if !all_tried && tried.contains(&i) {
                    0.0
                } else {
                    let s = u.health.lock().score(now);
                    1.0 / (s * s)
                }
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let mut x = rand::rng().random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
    }

    /// Wait for an in-flight slot: at once, or in the bounded queue until `deadline`.
    async fn admit(&self, deadline: Instant) -> Result<SemaphorePermit<'_>, TransientKind> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok(p);
        }
        let before = self.queued.fetch_add(1, Ordering::Relaxed);
        let _q = QueueGuard(&self.queued);
        if before >= self.cfg.queue_capacity {
            return Err(TransientKind::Overloaded);
        }
        gauge!("mta_dns_queued").set((before + 1) as f64);
        match tokio::time::timeout_at(deadline.into(), self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(TransientKind::Overloaded),
        }
    }

    /// One query to one upstream, through every cap. Exactly one packet (or one TCP exchange
    /// after truncation) leaves for each `Reply` that is not `Failed(Overloaded)`. The upstream
    /// is chosen once an in-flight slot is ours, so the choice uses the freshest health.
    async fn attempt(&self, tried: &[usize], name: &Name, rtype: RecordType, deadline: Instant) -> (usize, Reply) {
        let _permit = match self.admit(deadline).await {
            Ok(p) => p,
            Err(k) => return (0, Reply::Failed(k)),
        };
        let idx = self.pick_upstream(tried);
        (idx, self.send(idx, name, rtype, deadline).await)
    }

    async fn send(&self, idx: usize, name: &Name, rtype: RecordType, deadline: Instant) -> Reply {
        let up = &self.upstreams[idx];
        let now = Instant::now();
        let Some(send_at) = up.bucket.lock().reserve(now, deadline) else {
            return Reply::Failed(TransientKind::Overloaded);
        };
        let mut wait_until = (send_at > now).then_some(send_at);
        loop {
            if let Some(t) = wait_until {
                if t > deadline {
                    return Reply::Failed(TransientKind::Overloaded);
                }
                self.queued.fetch_add(1, Ordering::Relaxed);
                let _q = QueueGuard(&self.queued);
                tokio::time::sleep_until(t.into()).await;
            }
            match up.bucket.lock().commit(Instant::now()) {
                Ok(()) => break,
                Err(t) => wait_until = Some(t),
            }
        }
        up.count_query();
        counter!("mta_dns_queries_total", "upstream" => up.label.clone()).increment(1);
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        gauge!("mta_dns_in_flight").set(n as f64);
        let _f = InFlightGuard(&self.in_flight);
        let t0 = Instant::now();
        // The debug fault (`dns_delay_ms`) stands for a slow upstream: it is inside the measured RTT, so health
        // and back-pressure see it exactly as they would see a real slow resolver.
        let delay = Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed));
        if !delay.is_zero() {
            tokio::time::sleep_until((Instant::now() + delay).min(deadline).into()).await;
        }
        let reply = if Instant::now() >= deadline {
            Reply::Failed(TransientKind::Timeout)
        } else {
            match tokio::time::timeout_at(deadline.into(), up.engine.lookup(name.clone(), rtype)).await {
                Ok(r) => Reply::from_result(r),
                Err(_) => Reply::Failed(TransientKind::Timeout),
            }
        };
        let rtt = t0.elapsed();
        histogram!("mta_dns_query_seconds", "upstream" => up.label.clone()).record(rtt.as_secs_f64());
        counter!("mta_dns_answers_total", "upstream" => up.label.clone(), "rcode" => reply.rcode_label()).increment(1);
        let outcome = match &reply {
            Reply::Failed(k) => Some(*k),
            _ => None,
        };
        let now = Instant::now();
        up.health.lock().observe(now, rtt, outcome, self.cfg.query_timeout);
        up.note_outcome(now, name_hash(name), outcome.is_some());
        reply
    }

    fn clamp_positive(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).clamp(self.cfg.min_ttl, self.cfg.max_ttl.max(self.cfg.min_ttl))
    }

    /// RFC 2308: min(negative TTL from the SOA, our negative_ttl), at least min_ttl (capped by
    /// negative_ttl), so a storm of callers on a missing name costs one query per period.
    fn negative_entry(&self, nxdomain: bool, ttl: Option<u32>) -> Arc<Entry> {
        let cap = self.cfg.negative_ttl;
        let ttl = ttl.map(|t| Duration::from_secs(u64::from(t))).unwrap_or(cap).min(cap).max(self.cfg.min_ttl.min(cap));
        let err = if nxdomain { DnsError::NxDomain } else { DnsError::NoData };
        Arc::new(Entry::new(Err(err), ttl, self.cfg.serve_stale_for))
    }

    fn positive_entry(&self, rtype: RecordType, lookup: &hickory_resolver::lookup::Lookup) -> Arc<Entry> {
        let records = lookup.answers();
        // every record of the chain counts (a CNAME with a shorter TTL bounds the answer)
        let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
        let data = records.iter().map(|r| &r.data);
        let answer = match rtype {
            RecordType::MX => {
                let v: Vec<MxRecord> = data
                    .filter_map(|d| match d {
                        RData::MX(mx) => {
                            Some(MxRecord { preference: mx.preference, exchange: name_to_string(&mx.exchange) })
                        }
                        _ => None,
                    })
                    .collect();
                (!v.is_empty()).then(|| Answer::Mx(Arc::new(v)))
            }
            RecordType::A => {
                let v: Vec<Ipv4Addr> = data
                    .filter_map(|d| match d {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                (!v.is_empty()).then(|| Answer::A(Arc::new(v)))
            }
            RecordType::AAAA => {
                let v: Vec<Ipv6Addr> = data
                    .filter_map(|d| match d {
                        RData::AAAA(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                (!v.is_empty()).then(|| Answer::Aaaa(Arc::new(v)))
            }
            RecordType::TXT => {
                let v: Vec<TxtRecord> = data
                    .filter_map(|d| match d {
                        RData::TXT(t) => Some(TxtRecord { strings: t.txt_data.iter().map(|s| s.to_vec()).collect() }),
                        _ => None,
                    })
                    .collect();
                (!v.is_empty()).then(|| Answer::Txt(Arc::new(v)))
            }
            RecordType::PTR => {
                let v: Vec<String> = data
                    .filter_map(|d| match d {
                        RData::PTR(p) => Some(name_to_string(&p.0)),
                        _ => None,
                    })
                    .collect();
                (!v.is_empty()).then(|| Answer::Ptr(Arc::new(v)))
            }
            RecordType::TLSA => {
                let v: Vec<mta_smtp::client::Tlsa> = data
                    .filter_map(|d| match d {
                        RData::TLSA(t) => Some(mta_smtp::client::Tlsa {
                            usage: u8::from(t.cert_usage),
                            selector: u8::from(t.selector),
                            matching: u8::from(t.matching),
                            data: t.cert_data.clone(),
                        }),
                        _ => None,
                    })
                    .collect();
                (!v.is_empty()).then(|| Answer::Tlsa(Arc::new(v)))
            }
            _ => None,
        };
        // The AD bit only means something from a validating resolver we trust (`dns.dnssec = "trust-ad"`).
        let authenticated = self.cfg.dnssec == super::Dnssec::TrustAd && lookup.message().metadata.authentic_data;
        match answer {
            Some(a) => {
                let mut entry = Entry::new(Ok(a), self.clamp_positive(ttl), self.cfg.serve_stale_for);
                entry.authenticated = authenticated;
                Arc::new(entry)
            }
            // only a CNAME chain without the type asked: the name exists, no data of this type
            None => self.negative_entry(false, None),
        }
    }
}

/// A hash of a query name for the trouble detector's count of distinct failing names. Fixed
/// keys: only equality within one process matters, and names are normalized (lowercase) first.
fn name_hash(n: &Name) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(n)
}

/// Lowercase, no trailing dot; the root is ".".
pub(crate) fn name_to_string(n: &Name) -> String {
    if n.is_root() {
        return ".".to_string();
    }
    // The labels' own bytes (not `to_ascii`, which escapes characters outside the usual host
    // name syntax): a PTR or MX target is compared and queried again as published.
    let labels: Vec<String> = n.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
    labels.join(".")
}
