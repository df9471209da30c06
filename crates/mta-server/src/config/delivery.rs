//! `[delivery]` and `[[delivery.pool]]`: outbound delivery; defaults and meaning are
//! `mta_core::delivery::DeliveryConfig`'s. `[[route]]` tables are the core's own `Route`.

use std::net::IpAddr;
use std::path::PathBuf;

use mta_core::delivery::Route;
use mta_core::tls_policy::{DaneSetting, MtaStsSetting};
use mta_core::DeliveryConfig;
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::duration::HumanDuration;

/// One `[[delivery.pool]]`: a named set of egress addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Pool name used by messages' `pool` field.
    pub name: String,
    /// Source addresses to send from.
    pub addresses: Vec<IpAddr>,
}

/// `[delivery]`: the settings of [`DeliveryConfig`] operators set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// TCP port used for every MX host.
    pub port: u16,
    /// Outbound bind address.
    pub source_address: Option<IpAddr>,
    /// Egress pools.
    pub pool: Vec<PoolSection>,
    /// Retry intervals; the last repeats; each gets up to 10% jitter.
    pub retry_intervals: Vec<HumanDuration>,
    /// Age after which undelivered recipients expire and bounce.
    pub max_age: HumanDuration,
    /// Connections per destination site and egress source.
    pub connections_per_domain: usize,
    /// Messages sent over one connection before it is closed.
    pub messages_per_connection: usize,
    /// Refuse to deliver without TLS.
    pub require_tls: bool,
    /// Deliver at all (added key; `false` only spools).
    pub enabled: bool,
    /// Outbound connections in total (added key).
    pub max_connections: usize,
    /// Bytes of message content held by outbound connections at once (added key).
    pub max_inflight_bytes: usize,
    /// One time limit for every SMTP client stage instead of RFC 5321's (added key; tests).
    pub smtp_timeout: Option<HumanDuration>,
    /// How long a site's circuit stays open after repeated connection failures (added key).
    pub circuit_open_for: HumanDuration,
    /// How long a throttling reply (421, 451 4.7.x) lowers a site's connections (added key).
    pub throttle_for: HumanDuration,
    /// Obey published MTA-STS policies (RFC 8461): `"off"` or `"enforce"`.
    pub mta_sts: MtaStsSetting,
    /// Port of the policy host `mta-sts.<domain>` (tests).
    pub mta_sts_port: u16,
    /// DANE (RFC 7672) for MX hosts with DNSSEC-authenticated TLSA records: `"off"` or `"enforce"` (needs
    /// `dns.dnssec`).
    pub dane: DaneSetting,
    /// Extra PEM roots for verified outbound TLS and policy fetches.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for DeliverySection {
    /// The engine's defaults, no pools.
    fn default() -> Self {
        let c = DeliveryConfig::default();
        DeliverySection {
            port: c.port,
            source_address: c.source_address,
            pool: Vec::new(),
            retry_intervals: c.retry_intervals.into_iter().map(HumanDuration).collect(),
            max_age: c.max_age.into(),
            connections_per_domain: c.connections_per_site,
            messages_per_connection: c.messages_per_connection,
            require_tls: c.require_tls,
            enabled: c.enabled,
            max_connections: c.max_connections,
            max_inflight_bytes: c.max_inflight_bytes,
            smtp_timeout: c.smtp_timeout.map(HumanDuration),
            circuit_open_for: c.circuit_open_for.into(),
            throttle_for: c.throttle_for.into(),
            mta_sts: c.mta_sts,
            mta_sts_port: c.mta_sts_port,
            dane: c.dane,
            tls_ca_file: c.tls_ca_file,
        }
    }
}

impl From<&DeliverySection> for DeliveryConfig {
    /// The section's settings over the core's defaults; `[[shaping]]` and `[[route]]` are added by the caller.
    fn from(d: &DeliverySection) -> Self {
        DeliveryConfig {
            enabled: d.enabled,
            port: d.port,
            source_address: d.source_address,
            pools: d.pool.iter().map(|p| (p.name.clone(), p.addresses.clone())).collect(),
            retry_intervals: d.retry_intervals.iter().map(|i| i.get()).collect(),
            max_age: d.max_age.get(),
            connections_per_site: d.connections_per_domain,
            messages_per_connection: d.messages_per_connection,
            require_tls: d.require_tls,
            max_connections: d.max_connections,
            max_inflight_bytes: d.max_inflight_bytes,
            smtp_timeout: d.smtp_timeout.map(HumanDuration::get),
            circuit_open_for: d.circuit_open_for.get(),
            throttle_for: d.throttle_for.get(),
            mta_sts: d.mta_sts,
            mta_sts_port: d.mta_sts_port,
            dane: d.dane,
            tls_ca_file: d.tls_ca_file.clone(),
            ..DeliveryConfig::default()
        }
    }
}

impl DeliverySection {
    /// Every source address configured (the default one, then the pools'), for the SPF pre-flight.
    pub fn source_addresses(&self) -> Vec<IpAddr> {
        self.source_address.into_iter().chain(self.pool.iter().flat_map(|p| p.addresses.iter().copied())).collect()
    }

    /// The checks serde cannot express.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if self.retry_intervals.is_empty() {
            return Err(Invalid::new("delivery.retry_intervals", "needs at least one interval"));
        }
        if self.connections_per_domain == 0 || self.messages_per_connection == 0 {
            return Err(Invalid::new("delivery.connections_per_domain", "limits must be at least 1"));
        }
        if let Some(path) = &self.tls_ca_file {
            mta_core::tls_policy::load_roots(Some(path))
                .map_err(|e| Invalid::new("delivery.tls_ca_file", e.to_string()))?;
        }
        Ok(())
    }
}

/// The checks of `[[route]]` tables serde cannot express.
pub(super) fn check_routes(routes: &[Route]) -> Result<(), Invalid> {
    for (i, r) in routes.iter().enumerate() {
        if !r.relay.contains(':') {
            return Err(Invalid::new(format!("route[{i}].relay"), format!("expected host:port, got {:?}", r.relay)));
        }
    }
    Ok(())
}
