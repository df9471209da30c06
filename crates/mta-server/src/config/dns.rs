//! `[dns]`: the resolver pool's upstreams and caps; defaults and meaning are `mta_core::dns`'s.

use std::net::SocketAddr;

use mta_core::dns::{DnsConfig, Dnssec};
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// `[dns]`: the subset of [`DnsConfig`] operators set; the rest keeps the core's defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Upstream resolvers; empty = resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Hard cap on queries per second sent to each upstream.
    pub max_qps_per_upstream: u32,
    /// Hard cap on queries in flight.
    pub max_in_flight: usize,
    /// Lower clamp of cached TTLs.
    pub min_ttl: HumanDuration,
    /// Upper clamp of cached TTLs.
    pub max_ttl: HumanDuration,
    /// Lifetime of negative answers.
    pub negative_ttl: HumanDuration,
    /// How long expired answers may be served while upstreams fail.
    pub serve_stale_for: HumanDuration,
    /// Look up AAAA records for MX hosts (added key).
    pub ipv6: bool,
    /// Deadline of one lookup, whatever the retries (added key).
    pub lookup_timeout: HumanDuration,
    /// Time limit of one query to one upstream (added key).
    pub query_timeout: HumanDuration,
    /// DNSSEC: `"off"`, or `"trust-ad"` (answers with the AD bit from `nameservers` count as authenticated;
    /// they must be a validating resolver on this host). DANE needs it.
    pub dnssec: Dnssec,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection::from(&DnsConfig::default())
    }
}

impl From<&DnsConfig> for DnsSection {
    fn from(c: &DnsConfig) -> Self {
        DnsSection {
            nameservers: c.nameservers.clone(),
            max_qps_per_upstream: c.max_qps_per_upstream,
            max_in_flight: c.max_in_flight,
            min_ttl: c.min_ttl.into(),
            max_ttl: c.max_ttl.into(),
            negative_ttl: c.negative_ttl.into(),
            serve_stale_for: c.serve_stale_for.into(),
            ipv6: c.enable_ipv6,
            lookup_timeout: c.lookup_timeout.into(),
            query_timeout: c.query_timeout.into(),
            dnssec: c.dnssec,
        }
    }
}

impl From<&DnsSection> for DnsConfig {
    fn from(d: &DnsSection) -> Self {
        DnsConfig {
            nameservers: d.nameservers.clone(),
            max_qps_per_upstream: d.max_qps_per_upstream,
            max_in_flight: d.max_in_flight,
            min_ttl: d.min_ttl.get(),
            max_ttl: d.max_ttl.get(),
            negative_ttl: d.negative_ttl.get(),
            serve_stale_for: d.serve_stale_for.get(),
            enable_ipv6: d.ipv6,
            lookup_timeout: d.lookup_timeout.get(),
            query_timeout: d.query_timeout.get(),
            dnssec: d.dnssec,
            ..DnsConfig::default()
        }
    }
}
