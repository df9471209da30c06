//! Configuration of the resolver pool: which upstreams, and the caps that protect them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// How the resolver pool behaves. Every field has a named default (see `Default`).
///
/// Durations are humane strings in config files (`"30s"`, `"1d"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Upstream recursive resolvers. Empty: the system's `resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Queries in flight to all upstreams together (a semaphore).
    pub max_in_flight: usize,
    /// Queries per second sent to one upstream (a token bucket). Cloud resolvers drop above
    /// ~1,024 packets/s per interface: stay under.
    pub max_qps_per_upstream: u32,
    /// Positive TTLs below this are raised to it.
    #[serde(with = "humantime_serde_compat")]
    pub min_ttl: Duration,
    /// Positive TTLs above this are lowered to it.
    #[serde(with = "humantime_serde_compat")]
    pub max_ttl: Duration,
    /// Upper bound for caching NXDOMAIN / NODATA (RFC 2308: min(SOA TTL, SOA minimum, this)).
    #[serde(with = "humantime_serde_compat")]
    pub negative_ttl: Duration,
    /// How long after expiry an answer may still be served when every upstream fails (RFC 8767).
    #[serde(with = "humantime_serde_compat")]
    pub serve_stale_for: Duration,
    /// Deadline of one caller's lookup, queueing and retries included.
    #[serde(with = "humantime_serde_compat")]
    pub lookup_timeout: Duration,
    /// Timeout of one attempt to one upstream.
    #[serde(with = "humantime_serde_compat")]
    pub query_timeout: Duration,
    /// Retries may add at most this fraction to upstream traffic (0.1 = 10%).
    pub retry_budget_ratio: f64,
    /// Entries in the cache (one entry per (name, type)): memory stays flat.
    pub cache_entries: u64,
    /// An entry hit within the last fraction of its TTL is refreshed in the background.
    pub refresh_before_expiry: f64,
    /// Whether `resolve_mx` / `lookup_ip` also look up AAAA.
    pub enable_ipv6: bool,
    /// At most this many MX hosts in a delivery plan.
    pub max_mx_hosts: usize,
    /// Lookups that may wait for an in-flight slot or a token; beyond, `Overloaded` at once.
    pub queue_capacity: usize,
    /// A transient failure of a (name, type) is remembered this long: callers asking again
    /// meanwhile get the stale answer or the failure at once, not a new query. Doubled for each
    /// consecutive failure of the name, at most 5 minutes (RFC 9520); a success resets it. Not
    /// doubled while the upstream fails across many names (its trouble, not the name's).
    #[serde(with = "humantime_serde_compat")]
    pub failure_memo: Duration,
    /// How DNSSEC authentication of answers is known (DANE needs it); see [`Dnssec`].
    pub dnssec: Dnssec,
}

/// How we know that an answer is DNSSEC-authenticated (`dns.dnssec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dnssec {
    /// We don't: no answer counts as authenticated (DANE is never used).
    #[default]
    Off,
    /// Queries carry the AD and DO bits, and an answer with the AD bit counts as authenticated. Only sound
    /// when every nameserver is a validating resolver we reach over a trusted path (the same host), as with
    /// Postfix's `smtp_dns_support_level = dnssec`: anyone on the path could set the bit.
    TrustAd,
}

/// Default of [`DnsConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default of [`DnsConfig::max_qps_per_upstream`].
pub const DEFAULT_MAX_QPS_PER_UPSTREAM: u32 = 1000;
/// Default of [`DnsConfig::min_ttl`].
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(30);
/// Default of [`DnsConfig::max_ttl`].
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);
/// Default of [`DnsConfig::negative_ttl`].
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(300);
/// Default of [`DnsConfig::serve_stale_for`].
pub const DEFAULT_SERVE_STALE_FOR: Duration = Duration::from_secs(3600);
/// Default of [`DnsConfig::lookup_timeout`].
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`DnsConfig::query_timeout`].
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of [`DnsConfig::retry_budget_ratio`].
pub const DEFAULT_RETRY_BUDGET_RATIO: f64 = 0.1;
/// Default of [`DnsConfig::cache_entries`].
pub const DEFAULT_CACHE_ENTRIES: u64 = 100_000;
/// Default of [`DnsConfig::refresh_before_expiry`].
pub const DEFAULT_REFRESH_BEFORE_EXPIRY: f64 = 0.1;
/// Default of [`DnsConfig::max_mx_hosts`].
pub const DEFAULT_MAX_MX_HOSTS: usize = 10;
/// Default of [`DnsConfig::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Default of [`DnsConfig::failure_memo`].
pub const DEFAULT_FAILURE_MEMO: Duration = Duration::from_secs(2);

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_qps_per_upstream: DEFAULT_MAX_QPS_PER_UPSTREAM,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            serve_stale_for: DEFAULT_SERVE_STALE_FOR,
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            retry_budget_ratio: DEFAULT_RETRY_BUDGET_RATIO,
            cache_entries: DEFAULT_CACHE_ENTRIES,
            refresh_before_expiry: DEFAULT_REFRESH_BEFORE_EXPIRY,
            enable_ipv6: false,
            max_mx_hosts: DEFAULT_MAX_MX_HOSTS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            failure_memo: DEFAULT_FAILURE_MEMO,
            dnssec: Dnssec::Off,
        }
    }
}

/// `humantime` strings for `Duration` fields (no extra crate: `humantime` is already ours).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
