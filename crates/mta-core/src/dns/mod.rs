//! The DNS resolver pool: bounded, cached, coalescing MX/A/AAAA/TXT resolution that never
//! amplifies an outage.
//!
//! # Layout
//! - `config.rs`: [`DnsConfig`] and its named defaults.
//! - `error.rs`: [`DnsError`] (`NxDomain`, `NoData`, `NullMx`, `NoAddress`, `Transient{kind}`).
//! - `records.rs`: [`MxRecord`], [`TxtRecord`], [`Lookup<T>`] (records + remaining TTL + source).
//! - `name.rs`: names as keys (IDNA U-label → A-label, lowercase, FQDN).
//! - `cache.rs`: the bounded cache (sharded CLOCK, no deferred housekeeping) and the memo of
//!   transient failures.
//! - `pool.rs`: lookup flow, coalescing, admission (semaphore, queue, token buckets), upstream
//!   choice, retry budget.
//! - `upstream.rs`: one upstream = one single-server hickory resolver + token bucket + health.
//! - `trouble.rs`: is an upstream failing across many names (its trouble) or not (the name's)?
//! - `mx.rs`: [`MxPlan`] (`resolve_mx`, RFC 5321 §5.1) and the loop guard `without_self`.
//! - `stub.rs`: a loopback DNS server answering from this pool (for mail-auth).
//! - `testing.rs` (feature `testing`): an in-process authoritative server and a fault-injecting
//!   proxy, for tests and benchmarks.
//!
//! # Design
//!
//! **One retry layer, ours.** hickory is the protocol engine only (encoding, sockets, ids and
//! source ports, TCP after truncation, CNAME chasing). Each upstream gets its own hickory
//! resolver configured with that single server, `cache_size = 0`, `attempts = 0` (hickory counts
//! *re*-tries), `num_concurrent_reqs = 1`, no hosts file, no search list. hickory 0.26 also
//! retransmits a UDP query up to 3 times inside one attempt (every 1.2 x SRTT, ≥ 333 ms) with no
//! resolver option to stop it; our `SingleShotProvider` builds its UDP streams with
//! `max_retries = 1`. So one attempt = one packet (two if the answer is truncated and TCP
//! follows, or if hickory must chase a CNAME the server did not resolve), and every attempt is
//! counted per upstream (`mta_dns_queries_total{upstream}`, [`UpstreamHealth::queries`]).
//! Several hickory resolvers instead of one with several servers: hickory's pool would choose
//! servers and fall over between them itself, i.e. a second retry layer we could not budget.
//!
//! **Retries under a budget.** Each first attempt adds `retry_budget_ratio` (0.1) token to a
//! bucket (capped at 100 x ratio); a retry takes one token or is not sent
//! (`mta_dns_retry_budget_exhausted_total`). A retry is any query for a (name, type) whose last
//! outcome was a transient failure: the immediate retry inside a fetch, and also the query of a
//! later fetch once the name's failure memo has run out (the failure record is kept 5 min past
//! the memo for this). Callers re-asking a failing name are retries from the upstream's side;
//! counted as first attempts they would fund the budget themselves and escape it (measured: 50%
//! SERVFAIL gave 1.35-1.43x the healthy packets that way). A retry the budget refuses sends
//! nothing: the caller gets the memoized failure or the stale answer at once. A floor of 1
//! token/s keeps failed names retried, slowly, when no new names fund the budget (after an
//! outage). So under any failure rate the upstreams see at most ~1.1x the queries of a healthy
//! run (+1/s). A retry goes to another upstream when there is one. A SERVFAIL / REFUSED is not
//! retried at once to the upstream that sent it (it caches the failure itself, RFC 9520): with
//! no other upstream left, the name waits for its memo, so the budget goes to the names callers
//! ask for again (hot names first) rather than to names asked once. Lost packets (timeouts) are
//! retried at once, to the same upstream if need be.
//!
//! **Caps that hold for every packet.** A global semaphore (`max_in_flight`) and a per-upstream
//! GCRA token bucket (`max_qps_per_upstream`, burst of one slot) sit in front of every send.
//! Fetches that find no free slot wait in a bounded queue (`queue_capacity`) until their
//! deadline, beyond it they fail at once with `Transient{Overloaded}`: no unbounded pile-up. A
//! query whose token slot would come after its deadline does not take one. Cached lookups touch
//! none of this, so a saturated upstream does not slow them.
//!
//! **Cache.** A sharded map with CLOCK (second-chance) eviction, bounded to `cache_entries`,
//! keyed by (lowercase A-label FQDN, type). A hit is a hash, a shard lock and a probe, with no
//! deferred housekeeping: moka, used first, drained its read log inline every 64th read, which
//! made the cached `resolve_mx` p99 ~10x its median (see `cache.rs`). Positive TTLs
//! (the minimum over the answer, CNAMEs included) are clamped to `[min_ttl, max_ttl]`. NXDOMAIN
//! and NODATA are cached for min(SOA negative TTL, `negative_ttl`) (RFC 2308). Transient
//! failures are not cached as answers; a short memo (`failure_memo`, 2 s, doubled per
//! consecutive failure up to 5 min, RFC 9520) makes callers asking again meanwhile get the
//! failure (or a stale answer) without a new query; after it, the next query is a retry (above).
//!
//! **An upstream's trouble is not each name's trouble.** The memo doubles only for failures
//! that are the name's: given while its upstream answers other names. Per upstream, a small
//! detector (`trouble.rs`) watches the last 32 outcomes: failures from at least 4 distinct names
//! making at least 40% of them put the upstream *in trouble*; two answers in a row with the last
//! failure 1 s old (or ≤ 10% failures among ≥ 8 outcomes of the last 2 s) take it out. Failures
//! given in trouble keep the memo at the level the name had (2 s for a name that was fine), so a
//! storm does not escalate every name it touched; once the upstream answers again, single
//! failures made before that moment are void and the next lookup is a first attempt. Measured
//! before this: 200 domains queued during 15 s of 50% SERVFAIL, 16 still failing two minutes
//! after the heal, from our own memo. Retries during the trouble still need budget tokens, so
//! the budget's bound holds; its floor (1/s) is what shows the recovery.
//!
//! An entry is kept
//! `serve_stale_for` past its expiry: when the refresh fails transiently (or takes longer than
//! `query_timeout`) the stale answer is served (RFC 8767, `mta_dns_cache_total{result=stale}`).
//! A hit in the last `refresh_before_expiry` fraction of the TTL starts one background refresh
//! (coalesced), so hot names never expire under load.
//!
//! **Coalescing.** Concurrent lookups of one (name, type) share one spawned fetch (a
//! `futures::Shared` in a map); the task completes and fills the cache even if every caller
//! gave up. Every caller waits at most `lookup_timeout`.
//!
//! **Choosing an upstream.** Per upstream a smoothed RTT and EWMA timeout / SERVFAIL rates
//! (decaying with time when unused). Weighted random choice, weight 1/score², score = SRTT x
//! (1 + 20 x failure rate): the best takes most of the load, a slower one still some, a failing
//! one almost none until its rates decay. [`Resolver::upstream_health`] exposes this for
//! back-pressure: it is the health of *our* upstreams. A broken destination domain weighs one
//! sample per `failure_memo` (coalescing + memo), among all other names' samples, so it does not
//! make the upstream look sick; NXDOMAIN / NODATA count as successes.
//!
//! **mail-auth.** mail-auth 0.13 takes a concrete hickory `TokioResolver`
//! (`Resolver<TokioRuntimeProvider>`), so a custom connection provider cannot be slipped under
//! it. Instead [`Resolver::serve_stub`] serves this pool over DNS on a loopback socket (UDP and
//! TCP, A/AAAA/MX/TXT/PTR); mail-auth's `TokioResolver` is pointed at that address with its own
//! cache off (`cache_size = 0`) and `attempts = 0`. Every SPF/DKIM/DMARC lookup then goes through
//! our cache, coalescing, caps and retry budget; the loopback hop costs a few µs.
//!
//! **Fault injection.** [`Resolver::set_delay`] delays every upstream query (debug API).

mod cache;
mod config;
mod error;
mod mx;
mod name;
mod pool;
mod records;
mod stub;
#[cfg(feature = "testing")]
pub mod testing;
mod trouble;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use metrics::histogram;

pub use config::*;
pub use error::{DnsError, TransientKind};
pub use mx::{MxHost, MxPlan};
pub use records::{Lookup, MxRecord, Source, TxtRecord};
pub use stub::stub_client;

use cache::{Answer, Entry};
pub(crate) use pool::name_to_string;
use pool::Inner;
use upstream::Upstream;

/// The records of one SPF lookup ([`Resolver::query_spf`]).
pub(crate) enum SpfRecords {
    Txt(Arc<Vec<TxtRecord>>),
    A(Arc<Vec<Ipv4Addr>>),
    Aaaa(Arc<Vec<Ipv6Addr>>),
    Mx(Arc<Vec<MxRecord>>),
    Ptr(Arc<Vec<String>>),
}

/// The resolver pool. Cheap to clone (an `Arc` inside); share one per process.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// Health of one upstream resolver, smoothed over recent queries.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamHealth {
    /// The upstream.
    pub addr: SocketAddr,
    /// Smoothed round-trip time (a timeout counts as `query_timeout`).
    pub srtt: Duration,
    /// EWMA of timeouts and network errors (0..1).
    pub timeout_rate: f64,
    /// EWMA of SERVFAIL / REFUSED answers (0..1).
    pub servfail_rate: f64,
    /// Queries sent to it since start (each one a packet).
    pub queries: u64,
    /// Failing across many names now (its trouble, not the names'): per-name back-off is
    /// suspended until it answers again.
    pub in_trouble: bool,
}

/// Counters of the pool, for tests and the debug API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Lookups that joined a fetch already in progress.
    pub coalesced: u64,
    /// Background refreshes started.
    pub refreshes: u64,
    /// Retries sent: packets beyond the first attempt of a fetch, plus fetches of a name whose
    /// failure memo ran out (see the module docs).
    pub retries: u64,
    /// Fetches waiting for an in-flight slot or a token now.
    pub queued: usize,
    /// Queries in flight now.
    pub in_flight: i64,
    /// Entries in the cache (approximate).
    pub cache_entries: u64,
}

impl Resolver {
    /// Build the pool. `nameservers` empty: the system configuration (`/etc/resolv.conf`).
    pub fn new(config: DnsConfig) -> Result<Self, DnsError> {
        let mut addrs = config.nameservers.clone();
        if addrs.is_empty() {
            let (sys, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsError::InvalidName(format!("system resolver config: {e}")))?;
            for ns in sys.name_servers() {
                let port = ns.connections.first().map_or(53, |c| c.port);
                let a = SocketAddr::new(ns.ip, port);
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
        }
        if addrs.is_empty() {
            return Err(DnsError::InvalidName("no nameserver configured".into()));
        }
        let upstreams = addrs.iter().map(|a| Upstream::new(*a, &config)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { inner: Arc::new(Inner::new(config, upstreams)) })
    }

    /// The configuration in use.
    pub fn config(&self) -> &DnsConfig {
        &self.inner.cfg
    }

    async fn query<T>(
        &self,
        name: &str,
        rtype: RecordType,
        extract: fn(&Answer) -> Option<Arc<Vec<T>>>,
    ) -> Result<Lookup<T>, DnsError> {
        self.query_key(name::normalize(name)?, rtype, extract).await
    }

    async fn query_key<T>(
        &self,
        name: Arc<str>,
        rtype: RecordType,
        extract: fn(&Answer) -> Option<Arc<Vec<T>>>,
    ) -> Result<Lookup<T>, DnsError> {
        let t0 = Instant::now();
        let key = (name, rtype);
        let res = self.inner.lookup(key).await;
        histogram!("mta_dns_lookup_seconds").record(t0.elapsed().as_secs_f64());
        let (entry, source) = res?;
        to_lookup(&entry, source, extract)
    }

    /// MX records of `name` (raw: null MX included, unordered). See [`Resolver::resolve_mx`].
    pub async fn query_mx(&self, name: &str) -> Result<Lookup<MxRecord>, DnsError> {
        self.query(name, RecordType::MX, |a| match a {
            Answer::Mx(v) => Some(v.clone()),
            _ => None,
        })
        .await
    }

    /// A records of `name`.
    pub async fn query_a(&self, name: &str) -> Result<Lookup<Ipv4Addr>, DnsError> {
        self.query(name, RecordType::A, |a| match a {
            Answer::A(v) => Some(v.clone()),
            _ => None,
        })
        .await
    }

    /// AAAA records of `name`.
    pub async fn query_aaaa(&self, name: &str) -> Result<Lookup<Ipv6Addr>, DnsError> {
        self.query(name, RecordType::AAAA, |a| match a {
            Answer::Aaaa(v) => Some(v.clone()),
            _ => None,
        })
        .await
    }

    /// TXT records of `name` (SPF, DKIM, DMARC).
    pub async fn query_txt(&self, name: &str) -> Result<Lookup<TxtRecord>, DnsError> {
        self.query(name, RecordType::TXT, |a| match a {
            Answer::Txt(v) => Some(v.clone()),
            _ => None,
        })
        .await
    }

    /// TLSA records of `name` (`_25._tcp.<mx host>`, DANE); see [`Lookup::authenticated`].
    pub async fn query_tlsa(&self, name: &str) -> Result<Lookup<mta_smtp::client::Tlsa>, DnsError> {
        self.query(name, RecordType::TLSA, |a| match a {
            Answer::Tlsa(v) => Some(v.clone()),
            _ => None,
        })
        .await
    }

    /// PTR records of a reverse name (`4.3.2.1.in-addr.arpa`).
    pub async fn query_ptr(&self, name: &str) -> Result<Lookup<String>, DnsError> {
        self.query(name, RecordType::PTR, |a| match a {
            Answer::Ptr(v) => Some(v.clone()),
            _ => None,
        })
        .await
    }

    /// SPF's lookups (TXT, A, AAAA, MX, PTR as [`SpfRecords`]): like the others, but the name
    /// may hold spaces (macro expansions, RFC 7208 §7.3).
    pub(crate) async fn query_spf(&self, name: &str, rtype: RecordType) -> Result<SpfRecords, DnsError> {
        let key = name::normalize_literal(name)?;
        Ok(match rtype {
            RecordType::TXT => SpfRecords::Txt(
                self.query_key(key, rtype, |a| match a {
                    Answer::Txt(v) => Some(v.clone()),
                    _ => None,
                })
                .await?
                .records,
            ),
            RecordType::A => SpfRecords::A(
                self.query_key(key, rtype, |a| match a {
                    Answer::A(v) => Some(v.clone()),
                    _ => None,
                })
                .await?
                .records,
            ),
            RecordType::AAAA => SpfRecords::Aaaa(
                self.query_key(key, rtype, |a| match a {
                    Answer::Aaaa(v) => Some(v.clone()),
                    _ => None,
                })
                .await?
                .records,
            ),
            RecordType::MX => SpfRecords::Mx(
                self.query_key(key, rtype, |a| match a {
                    Answer::Mx(v) => Some(v.clone()),
                    _ => None,
                })
                .await?
                .records,
            ),
            _ => SpfRecords::Ptr(
                self.query_key(key, RecordType::PTR, |a| match a {
                    Answer::Ptr(v) => Some(v.clone()),
                    _ => None,
                })
                .await?
                .records,
            ),
        })
    }

    /// MX records of `name`.
    pub async fn lookup_mx(&self, name: &str) -> Result<Arc<Vec<MxRecord>>, DnsError> {
        self.query_mx(name).await.map(|l| l.records)
    }

    /// A records of `name`.
    pub async fn lookup_a(&self, name: &str) -> Result<Arc<Vec<Ipv4Addr>>, DnsError> {
        self.query_a(name).await.map(|l| l.records)
    }

    /// AAAA records of `name`.
    pub async fn lookup_aaaa(&self, name: &str) -> Result<Arc<Vec<Ipv6Addr>>, DnsError> {
        self.query_aaaa(name).await.map(|l| l.records)
    }

    /// TXT records of `name`.
    pub async fn lookup_txt(&self, name: &str) -> Result<Arc<Vec<TxtRecord>>, DnsError> {
        self.query_txt(name).await.map(|l| l.records)
    }

    /// Addresses of a host: IPv4 first, then IPv6 when `enable_ipv6`. An answer of either
    /// family is a success; with none, a transient failure wins over a permanent one.
    pub async fn lookup_ip(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.host_addresses(name).await
    }

    pub(crate) async fn host_addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let (a, aaaa) = if self.inner.cfg.enable_ipv6 {
            let (a, aaaa) = tokio::join!(self.lookup_a(name), self.lookup_aaaa(name));
            (a, Some(aaaa))
        } else {
            (self.lookup_a(name).await, None)
        };
        let mut out: Vec<IpAddr> = Vec::new();
        let mut errors = Vec::new();
        match a {
            Ok(v) => out.extend(v.iter().map(|ip| IpAddr::V4(*ip))),
            Err(e) => errors.push(e),
        }
        match aaaa {
            Some(Ok(v)) => out.extend(v.iter().map(|ip| IpAddr::V6(*ip))),
            Some(Err(e)) => errors.push(e),
            None => {}
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let transient = errors.iter().find(|e| !e.is_permanent()).cloned();
        Err(transient
            .or_else(|| errors.iter().find(|e| **e == DnsError::NxDomain).cloned())
            .unwrap_or(DnsError::NoData))
    }

    /// The RFC 5321 §5.1 delivery plan of `domain`: MX hosts by ascending preference (shuffled
    /// among equals, at most `max_mx_hosts`), each with its addresses; implicit MX (the domain's
    /// own address) when it has no MX; `NullMx` for RFC 7505; `NxDomain` stays permanent.
    /// Hosts whose address lookup failed transiently stay in the plan, marked `unresolved`;
    /// NXDOMAIN hosts are dropped. No address at all: transient if any host failed transiently,
    /// else `NoAddress`.
    pub async fn resolve_mx(&self, domain: &str) -> Result<MxPlan, DnsError> {
        mx::resolve_mx(self, domain).await
    }

    /// Health of each upstream (for back-pressure and the debug API).
    pub fn upstream_health(&self) -> Vec<UpstreamHealth> {
        self.inner
            .upstreams
            .iter()
            .map(|u| {
                let h = u.health.lock();
                UpstreamHealth {
                    addr: u.addr,
                    srtt: Duration::from_secs_f64(h.srtt.max(0.0)),
                    timeout_rate: h.timeout_rate,
                    servfail_rate: h.servfail_rate,
                    queries: u.queries.load(Ordering::Relaxed),
                    in_trouble: u.in_trouble(),
                }
            })
            .collect()
    }

    /// Fault injection (debug API): delay every upstream query by `d` (zero: off).
    pub fn set_delay(&self, d: Duration) {
        self.inner.set_delay(d);
    }

    /// Counters of the pool.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            coalesced: self.inner.coalesced.load(Ordering::Relaxed),
            refreshes: self.inner.refreshes.load(Ordering::Relaxed),
            retries: self.inner.retries.load(Ordering::Relaxed),
            queued: self.inner.queued(),
            in_flight: self.inner.in_flight(),
            cache_entries: self.inner.cache.len(),
        }
    }
}

fn to_lookup<T>(
    entry: &Entry,
    source: Source,
    extract: fn(&Answer) -> Option<Arc<Vec<T>>>,
) -> Result<Lookup<T>, DnsError> {
    match &entry.data {
        Err(e) => Err(e.clone()),
        Ok(a) => match extract(a) {
            Some(records) => {
                let ttl = entry.expires.saturating_duration_since(Instant::now());
                Ok(Lookup { records, ttl, source, authenticated: entry.authenticated })
            }
            None => Err(DnsError::NoData),
        },
    }
}
