//! Where to connect for a destination: the MX plan (RFC 5321 §5.1) or a configured route, and the site name
//! that groups domains sharing receiving infrastructure.

use std::net::{IpAddr, SocketAddr};

use crate::dns::MxPlan;

/// One next-hop host and its addresses, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Host name (EHLO/TLS server name and `mx` in events).
    pub name: String,
    /// Addresses with the port to connect to.
    pub addrs: Vec<SocketAddr>,
    /// Its DNSSEC-authenticated TLSA records under a DANE site ([`HopTls::Dane`]): the usable ones; empty when
    /// it published only unusable ones (TLS still required, RFC 7672 §2.2); `None` without any.
    pub tlsa: Option<std::sync::Arc<Vec<mta_smtp::client::Tlsa>>>,
    /// Under an MTA-STS `testing` policy ([`HopTls::Testing`]): the policy does not list this host (used anyway,
    /// reported as a failed session).
    pub outside_policy: bool,
}

/// What TLS the hops of a site must offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HopTls {
    /// The engine's default (`delivery.require_tls`, else opportunistic).
    #[default]
    Default,
    /// STARTTLS with a certificate verified for the MX name (an MTA-STS `enforce` policy).
    Verified,
    /// DANE (RFC 7672): each hop with TLSA records must present a matching certificate; hops without any are
    /// opportunistic.
    Dane,
    /// An MTA-STS `testing` policy: opportunistic as without one, but the certificate is checked as `enforce`
    /// would and what it would have refused is reported (RFC 8461 §5).
    Testing,
}

/// The ordered next hops of a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHops {
    /// Site name: the set of MX host names (sorted, comma-joined) or `route:<relay>`.
    pub name: String,
    /// Hosts in preference order (random among equals, already applied by the resolver).
    pub hosts: Vec<Hop>,
    /// TLS the hops must offer (a policy's requirement; part of the site name so sites never mix them).
    pub tls: HopTls,
    /// The policy in force, as TLS reports describe it (MTA-STS or DANE); `None` without one.
    pub policy: Option<std::sync::Arc<crate::tls_report::PolicyDesc>>,
}

impl NextHops {
    /// From a resolved MX plan, every address on `port`.
    pub fn from_mx(plan: &MxPlan, port: u16) -> NextHops {
        let mut names: Vec<String> =
            plan.hosts.iter().map(|h| h.name.trim_end_matches('.').to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        let hosts = plan
            .hosts
            .iter()
            .filter(|h| !h.addresses.is_empty())
            .map(|h| Hop {
                name: h.name.trim_end_matches('.').to_string(),
                addrs: h.addresses.iter().map(|a| SocketAddr::new(*a, port)).collect(),
                tlsa: None,
                outside_policy: false,
            })
            .collect();
        NextHops { name: names.join(","), hosts, tls: HopTls::Default, policy: None }
    }

    /// A fixed route: `host:port` where host is an IP address or a name resolved by the caller to `addrs`.
    pub fn route(relay: &str, addrs: Vec<SocketAddr>) -> NextHops {
        let host = relay.rsplit_once(':').map(|(h, _)| h).unwrap_or(relay).trim_matches(['[', ']']);
        NextHops {
            name: format!("route:{relay}"),
            hosts: vec![Hop { name: host.to_string(), addrs, tlsa: None, outside_policy: false }],
            tls: HopTls::Default,
            policy: None,
        }
    }
}

/// Parse a route's `host:port`; an IP literal host needs no lookup.
pub fn parse_relay(relay: &str) -> Option<(String, u16, Option<IpAddr>)> {
    let (host, port) = relay.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_matches(['[', ']']);
    Some((host.to_string(), port, host.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays() {
        assert_eq!(parse_relay("127.0.0.1:2526"), Some(("127.0.0.1".into(), 2526, Some("127.0.0.1".parse().unwrap()))));
        assert_eq!(parse_relay("[::1]:25").map(|r| r.2), Some(Some("::1".parse().unwrap())));
        assert_eq!(parse_relay("smart.example:587").map(|r| r.2), Some(None));
        assert_eq!(parse_relay("nope"), None);
    }
}
