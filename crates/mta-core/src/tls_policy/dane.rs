//! DANE for SMTP (RFC 7672): which MX hosts of a destination have DNSSEC-authenticated TLSA records
//! (`_25._tcp.<mx host>`). The certificate checks themselves are the SMTP client's
//! ([`mta_smtp::client::TlsPolicy::Dane`]).
//!
//! DANE applies only when the MX answer is authenticated (else an attacker could have chosen the MX hosts
//! and their TLSA names) and, per host, when the TLSA answer is; an unauthenticated TLSA answer is ignored.
//! When an authenticated MX host's TLSA lookup fails (SERVFAIL, timeout), the attempt is deferred: a forged
//! failure must not turn DANE off (§2.2).

use std::sync::Arc;

use mta_smtp::client::Tlsa;

use crate::dns::{DnsError, Resolver};

/// Whether DANE is used for MX hosts with authenticated TLSA records (`delivery.dane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaneSetting {
    /// Never look TLSA records up.
    Off,
    /// Look them up (when `dns.dnssec` can authenticate answers) and require a matching certificate.
    #[default]
    Enforce,
}

/// What the TLSA lookup of one MX host found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTlsa {
    /// No authenticated TLSA records (none published, or the answer was not authenticated): no DANE.
    None,
    /// Authenticated records: the usable ones (empty when every record is unusable: TLS still required).
    Records(Arc<Vec<Tlsa>>),
    /// The lookup failed transiently: defer rather than deliver without DANE.
    Failed(String),
}

/// The TLSA name of an MX host on port 25.
pub fn tlsa_name(host: &str) -> String {
    format!("_25._tcp.{}", host.trim_end_matches('.'))
}

/// Whether `domain`'s MX answer is authenticated (DANE needs it before any TLSA lookup).
pub async fn mx_authenticated(resolver: &Resolver, domain: &str) -> bool {
    matches!(resolver.query_mx(domain).await, Ok(l) if l.authenticated)
}

/// The TLSA records of `host`, as DANE uses them.
pub async fn host_tlsa(resolver: &Resolver, host: &str) -> HostTlsa {
    match resolver.query_tlsa(&tlsa_name(host)).await {
        Ok(l) if l.authenticated => {
            let usable: Vec<Tlsa> = l.records.iter().filter(|r| r.is_usable()).cloned().collect();
            HostTlsa::Records(Arc::new(usable))
        }
        Ok(_) => HostTlsa::None,
        Err(DnsError::NxDomain | DnsError::NoData) => HostTlsa::None,
        Err(e) if e.is_permanent() => HostTlsa::None,
        Err(e) => HostTlsa::Failed(e.to_string()),
    }
}
