//! `resolve_mx`: the RFC 5321 §5.1 delivery plan of a domain.

use std::net::IpAddr;

use rand::seq::SliceRandom;

use super::error::{DnsError, TransientKind};
use super::name::normalize;
use super::Resolver;

/// Where to deliver a domain's mail: hosts in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxPlan {
    /// The domain (A-labels, lowercase, no trailing dot).
    pub domain: String,
    /// True when the domain has no MX and its own address is used (RFC 5321 §5.1 implicit MX).
    pub implicit: bool,
    /// Hosts by ascending preference, shuffled among equal preferences, at most `max_mx_hosts`.
    pub hosts: Vec<MxHost>,
}

/// One MX host of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name (lowercase, no trailing dot).
    pub name: String,
    /// MX preference (0 for an implicit MX).
    pub preference: u16,
    /// IPv4 addresses first, then IPv6 ones (if enabled). Empty when `unresolved` is set.
    pub addresses: Vec<IpAddr>,
    /// The address lookup failed transiently: the host is kept so delivery can retry it later
    /// (or report why), but it has no address now.
    pub unresolved: Option<TransientKind>,
}

impl MxPlan {
    /// Every (host, address) to try, in order.
    pub fn targets(&self) -> impl Iterator<Item = (&MxHost, IpAddr)> + '_ {
        self.hosts.iter().flat_map(|h| h.addresses.iter().map(move |a| (h, *a)))
    }

    /// RFC 5321 §5.1 loop guard: if one of the hosts is us (one of `own_names`), drop it and
    /// every host of equal or higher preference value. An empty plan then means "the domain's
    /// best MX is us": a configuration error to report, never a delivery to ourselves.
    pub fn without_self<S: AsRef<str>>(&self, own_names: &[S]) -> MxPlan {
        let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
        let own: Vec<String> = own_names.iter().map(|s| norm(s.as_ref())).collect();
        let cutoff = self.hosts.iter().filter(|h| own.contains(&norm(&h.name))).map(|h| h.preference).min();
        let mut plan = self.clone();
        if let Some(c) = cutoff {
            plan.hosts.retain(|h| h.preference < c);
        }
        plan
    }
}

pub(crate) async fn resolve_mx(r: &Resolver, domain: &str) -> Result<MxPlan, DnsError> {
    let fqdn = normalize(domain)?;
    let display = fqdn.trim_end_matches('.').to_string();
    let (implicit, hosts) = match r.query_mx(&fqdn).await {
        Ok(l) => {
            let records = &l.records;
            if records.iter().any(|m| m.is_null()) {
                // RFC 7505: a null MX must be the only one; if others exist, ignore the null.
                if records.iter().all(|m| m.is_null()) {
                    return Err(DnsError::NullMx);
                }
            }
            let mut v: Vec<(u16, String)> =
                records.iter().filter(|m| !m.is_null()).map(|m| (m.preference, m.exchange.clone())).collect();
            v.shuffle(&mut rand::rng());
            v.sort_by_key(|(p, _)| *p); // stable: equal preferences stay shuffled
            let mut seen = std::collections::HashSet::new();
            v.retain(|(_, h)| seen.insert(h.clone()));
            v.truncate(r.config().max_mx_hosts.max(1));
            (false, v)
        }
        Err(DnsError::NoData) => (true, vec![(0, display.clone())]),
        Err(e) => return Err(e),
    };
    let lookups = hosts.iter().map(|(_, h)| r.host_addresses(h));
    let results = futures::future::join_all(lookups).await;
    let mut plan = MxPlan { domain: display, implicit, hosts: Vec::with_capacity(hosts.len()) };
    let mut transient = None;
    let mut permanent = None;
    for ((preference, name), res) in hosts.into_iter().zip(results) {
        match res {
            Ok(addresses) => plan.hosts.push(MxHost { name, preference, addresses, unresolved: None }),
            Err(DnsError::Transient { kind }) => {
                transient.get_or_insert(kind);
                plan.hosts.push(MxHost { name, preference, addresses: Vec::new(), unresolved: Some(kind) });
            }
            Err(e) => {
                permanent.get_or_insert(e);
            }
        }
    }
    if plan.hosts.iter().all(|h| h.addresses.is_empty()) {
        return Err(match (transient, permanent) {
            (Some(kind), _) => DnsError::transient(kind),
            (None, Some(DnsError::NxDomain)) if implicit => DnsError::NxDomain,
            _ => DnsError::NoAddress,
        });
    }
    Ok(plan)
}
