//! The DNS lookups of SPF evaluation, through our pool ([`Resolver`]) or, for callers that only
//! have mail-auth's hickory resolver (pointed at the pool's loopback stub), through that.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{RData, RecordType};

use crate::dns::{DnsError, Resolver, SpfRecords};

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LookupError {
    /// NXDOMAIN or NODATA: a "void lookup" (RFC 7208 §4.6.4).
    Void,
    /// A temporary failure (timeout, SERVFAIL, our caps): the result is `temperror`.
    Temp(String),
}

/// Where SPF's lookups go. Cheap to clone.
#[derive(Clone)]
pub enum SpfDns {
    /// Our resolver pool, directly: its cache, coalescing, caps and retry budget.
    Pool(Resolver),
    /// A hickory resolver, normally mail-auth's pointed at the pool's loopback stub (so the
    /// same pool answers, one loopback hop further).
    Hickory(Box<hickory_resolver::TokioResolver>),
}

impl std::fmt::Debug for SpfDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpfDns::Pool(_) => "SpfDns::Pool",
            SpfDns::Hickory(_) => "SpfDns::Hickory",
        })
    }
}

fn from_pool(e: DnsError) -> LookupError {
    if e.is_permanent() {
        LookupError::Void
    } else {
        LookupError::Temp(e.to_string())
    }
}

impl SpfDns {
    async fn hickory(
        &self,
        r: &hickory_resolver::TokioResolver,
        name: &str,
        t: RecordType,
    ) -> Result<Vec<RData>, LookupError> {
        let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
        let Ok(n) = hickory_proto::rr::Name::from_ascii(&fqdn) else {
            return Err(LookupError::Void);
        };
        match r.lookup(n, t).await {
            Ok(l) => {
                let v: Vec<RData> =
                    l.answers().iter().filter(|r| r.record_type() == t).map(|r| r.data.clone()).collect();
                if v.is_empty() {
                    Err(LookupError::Void)
                } else {
                    Ok(v)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(LookupError::Void),
            Err(e) => Err(LookupError::Temp(e.to_string())),
        }
    }

    /// TXT records, each as its strings joined.
    pub(crate) async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        match self {
            SpfDns::Pool(r) => match r.query_spf(name, RecordType::TXT).await.map_err(from_pool)? {
                SpfRecords::Txt(v) => Ok(v.iter().map(|t| t.joined()).collect()),
                _ => Err(LookupError::Void),
            },
            SpfDns::Hickory(h) => Ok(self
                .hickory(h, name, RecordType::TXT)
                .await?
                .into_iter()
                .filter_map(|d| match d {
                    RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
                    _ => None,
                })
                .collect()),
        }
    }

    /// A records (`v6 == false`) or AAAA records, as addresses.
    pub(crate) async fn addresses(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, LookupError> {
        match (self, v6) {
            (SpfDns::Pool(r), _) => {
                let t = if v6 { RecordType::AAAA } else { RecordType::A };
                match r.query_spf(name, t).await.map_err(from_pool)? {
                    SpfRecords::A(v) => Ok(v.iter().map(|a| IpAddr::V4(*a)).collect()),
                    SpfRecords::Aaaa(v) => Ok(v.iter().map(|a| IpAddr::V6(*a)).collect()),
                    _ => Err(LookupError::Void),
                }
            }
            (SpfDns::Hickory(h), _) => {
                let t = if v6 { RecordType::AAAA } else { RecordType::A };
                Ok(self
                    .hickory(h, name, t)
                    .await?
                    .into_iter()
                    .filter_map(|d| match d {
                        RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a))),
                        RData::AAAA(a) => Some(IpAddr::V6(Ipv6Addr::from(a))),
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// MX exchanges (lowercase, no trailing dot; `"."` for a null MX).
    pub(crate) async fn mx(&self, name: &str) -> Result<Vec<String>, LookupError> {
        match self {
            SpfDns::Pool(r) => match r.query_spf(name, RecordType::MX).await.map_err(from_pool)? {
                SpfRecords::Mx(v) => Ok(v.iter().map(|m| m.exchange.clone()).collect()),
                _ => Err(LookupError::Void),
            },
            SpfDns::Hickory(h) => Ok(self
                .hickory(h, name, RecordType::MX)
                .await?
                .into_iter()
                .filter_map(|d| match d {
                    RData::MX(m) => Some(crate::dns::name_to_string(&m.exchange)),
                    _ => None,
                })
                .collect()),
        }
    }

    /// PTR names (lowercase, no trailing dot).
    pub(crate) async fn ptr(&self, name: &str) -> Result<Vec<String>, LookupError> {
        match self {
            SpfDns::Pool(r) => match r.query_spf(name, RecordType::PTR).await.map_err(from_pool)? {
                SpfRecords::Ptr(v) => Ok(v.to_vec()),
                _ => Err(LookupError::Void),
            },
            SpfDns::Hickory(h) => Ok(self
                .hickory(h, name, RecordType::PTR)
                .await?
                .into_iter()
                .filter_map(|d| match d {
                    RData::PTR(p) => Some(crate::dns::name_to_string(&p.0)),
                    _ => None,
                })
                .collect()),
        }
    }
}
