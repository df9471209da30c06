//! `check_host()` (RFC 7208 §4, §5, §6): record lookup and selection, directives in order,
//! `redirect=`, `exp=`, and the processing limits (§4.6.4): 10 DNS-querying terms, 2 void
//! lookups, 10 MX names per `mx`, 10 PTR names per validation.
//!
//! Every loop is bounded: terms by the record, includes and redirects by the term limit (each
//! counts before it recurses), MX and PTR names by their caps.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use super::error::SpfError;
use super::lookup::{LookupError, SpfDns};
use super::macros::{target_name, Context, MacroString, Values};
use super::record::{is_spf, parse, Mechanism, Qualifier, Record};
use super::SpfResult;

/// DNS-querying terms (`include`, `a`, `mx`, `ptr`, `exists`, `redirect`) per evaluation.
pub(crate) const MAX_DNS_TERMS: u32 = 10;
/// Lookups answering NXDOMAIN or nothing, per evaluation.
pub(crate) const MAX_VOID_LOOKUPS: u32 = 2;
/// MX records an `mx` mechanism may have.
pub(crate) const MAX_MX_NAMES: usize = 10;
/// PTR names validated per lookup (more are ignored).
pub(crate) const MAX_PTR_NAMES: usize = 10;

/// A matched result and, for `fail`, the explanation.
pub(crate) type Found = (SpfResult, Option<String>);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state of one evaluation (all recursions share its counters).
pub(crate) struct Eval<'a> {
    pub dns: &'a SpfDns,
    /// The client, IPv4-mapped addresses already unmapped (§5: compared as IPv4).
    pub ip: IpAddr,
    pub sender: &'a str,
    pub local: &'a str,
    pub sender_domain: &'a str,
    pub helo: &'a str,
    pub receiver: &'a str,
    pub terms: u32,
    pub voids: u32,
}

/// A name that can be asked for in DNS: 1-63 byte labels, at most 253 bytes, printable ASCII
/// or spaces (from `%_`), and not an address. Others are "malformed" (§4.3): no lookup is made.
pub(crate) fn is_queryable(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && n.bytes().all(|b| (b.is_ascii_graphic() && b != b'\\') || b == b' ')
        && n.parse::<IpAddr>().is_err()
}

fn in_prefix(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `4.3.2.1.in-addr.arpa` / nibbles `.ip6.arpa`.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0xf, byte >> 4] {
                    s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    s.push('.');
                }
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// `name` is `target` or a subdomain of it (case-insensitive, trailing dots ignored).
fn within(name: &str, target: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let t = target.strip_suffix('.').unwrap_or(target).to_ascii_lowercase();
    n == t || n.ends_with(&format!(".{t}"))
}

impl Eval<'_> {
    fn count_term(&mut self) -> Result<(), SpfError> {
        self.terms += 1;
        if self.terms > MAX_DNS_TERMS {
            return Err(SpfError::TooManyLookups);
        }
        Ok(())
    }

    fn count_void(&mut self) -> Result<(), SpfError> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(SpfError::TooManyVoidLookups);
        }
        Ok(())
    }

    fn values<'v>(&'v self, domain: &'v str, validated: Option<&'v str>) -> Values<'v> {
        Values {
            sender: self.sender,
            local: self.local,
            sender_domain: self.sender_domain,
            domain,
            ip: self.ip,
            helo: self.helo,
            receiver: self.receiver,
            validated,
        }
    }

    /// Expand a macro string; `%{p}` does its PTR validation only when used.
    async fn expand(&mut self, m: &MacroString, domain: &str) -> String {
        let validated = if m.uses_ptr() { self.p_macro(domain).await } else { None };
        m.expand(&self.values(domain, validated.as_deref()))
    }

    /// A mechanism's or modifier's target name.
    async fn target(&mut self, spec: Option<&MacroString>, domain: &str) -> String {
        match spec {
            Some(m) => target_name(&self.expand(m, domain).await),
            None => domain.to_string(),
        }
    }

    /// The client's validated host names (§5.5): PTR names (first 10) whose A/AAAA records
    /// include the client. A failed PTR lookup gives none; a failed address lookup skips the name.
    async fn validated_names(&mut self) -> Vec<String> {
        let Ok(names) = self.dns.ptr(&reverse_name(self.ip)).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in names.into_iter().take(MAX_PTR_NAMES) {
            if !is_queryable(&name) {
                continue;
            }
            if let Ok(addrs) = self.dns.addresses(&name, self.ip.is_ipv6()).await {
                if addrs.contains(&self.ip) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// `%{p}` (§7.3): a validated name equal to the domain, else one under it, else any.
    async fn p_macro(&mut self, domain: &str) -> Option<String> {
        let names = self.validated_names().await;
        let exact = names.iter().find(|n| within(n, domain) && n.len() == domain.trim_end_matches('.').len());
        let under = names.iter().find(|n| within(n, domain));
        exact.or(under).or(names.first()).cloned()
    }

    /// Addresses of `name` in the client's family; a void answer counts (and matches nothing).
    async fn addresses(&mut self, name: &str, v6: bool) -> Result<Vec<IpAddr>, SpfError> {
        if !is_queryable(name) {
            return Ok(Vec::new());
        }
        match self.dns.addresses(name, v6).await {
            Ok(v) => Ok(v),
            Err(LookupError::Void) => self.count_void().map(|_| Vec::new()),
            Err(LookupError::Temp(e)) => Err(SpfError::Dns(e)),
        }
    }

    /// `check_host(<ip>, domain, <sender>)`: `Ok` holds pass/fail/softfail/neutral/none.
    pub(crate) fn check_host<'s>(&'s mut self, domain: String) -> BoxFuture<'s, Result<Found, SpfError>> {
        Box::pin(async move {
            let domain = domain.strip_suffix('.').unwrap_or(&domain).to_string();
            if !is_queryable(&domain) || !domain.contains('.') {
                return Ok((SpfResult::None, None));
            }
            let txts = match self.dns.txt(&domain).await {
                Ok(v) => v,
                Err(LookupError::Void) => return Ok((SpfResult::None, None)),
                Err(LookupError::Temp(e)) => return Err(SpfError::Dns(e)),
            };
            let mut spf = txts.iter().filter(|t| is_spf(t));
            let Some(text) = spf.next() else {
                return Ok((SpfResult::None, None));
            };
            if spf.next().is_some() {
                return Err(SpfError::MultipleRecords(domain));
            }
            let record = parse(text)?;
            self.evaluate(&record, &domain).await
        })
    }

    async fn evaluate(&mut self, record: &Record, domain: &str) -> Result<Found, SpfError> {
        for d in &record.directives {
            if d.mechanism.queries_dns() {
                self.count_term()?;
            }
            if self.matches(&d.mechanism, domain).await? {
                let result = match d.qualifier {
                    Qualifier::Pass => SpfResult::Pass,
                    Qualifier::Fail => SpfResult::Fail,
                    Qualifier::SoftFail => SpfResult::SoftFail,
                    Qualifier::Neutral => SpfResult::Neutral,
                };
                let exp = if result == SpfResult::Fail { self.explain(record, domain).await } else { None };
                return Ok((result, exp));
            }
        }
        // §6.1: no directive matched; an `exp=` of this record does not follow the redirect
        if let Some(r) = &record.redirect {
            self.count_term()?;
            let target = self.target(Some(r), domain).await;
            return match self.check_host(target.clone()).await? {
                (SpfResult::None, _) => Err(SpfError::NoRecordAt(target)),
                found => Ok(found),
            };
        }
        Ok((SpfResult::Neutral, None))
    }

    async fn matches(&mut self, m: &Mechanism, domain: &str) -> Result<bool, SpfError> {
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, p) => Ok(in_prefix(self.ip, IpAddr::V4(*net), *p)),
            Mechanism::Ip6(net, p) => Ok(in_prefix(self.ip, IpAddr::V6(*net), *p)),
            Mechanism::Include(spec) => {
                let target = self.target(Some(spec), domain).await;
                // §5.2: the included result only says match (pass) or not
                match self.check_host(target.clone()).await? {
                    (SpfResult::Pass, _) => Ok(true),
                    (SpfResult::None, _) => Err(SpfError::NoRecordAt(target)),
                    _ => Ok(false),
                }
            }
            Mechanism::A { domain: spec, cidr4, cidr6 } => {
                let target = self.target(spec.as_ref(), domain).await;
                let prefix = if self.ip.is_ipv6() { *cidr6 } else { *cidr4 };
                let addrs = self.addresses(&target, self.ip.is_ipv6()).await?;
                Ok(addrs.iter().any(|a| in_prefix(self.ip, *a, prefix)))
            }
            Mechanism::Mx { domain: spec, cidr4, cidr6 } => {
                let target = self.target(spec.as_ref(), domain).await;
                if !is_queryable(&target) {
                    return Ok(false);
                }
                let exchanges = match self.dns.mx(&target).await {
                    Ok(v) => v,
                    Err(LookupError::Void) => return self.count_void().map(|_| false),
                    Err(LookupError::Temp(e)) => return Err(SpfError::Dns(e)),
                };
                if exchanges.len() > MAX_MX_NAMES {
                    return Err(SpfError::TooManyMx(target));
                }
                let prefix = if self.ip.is_ipv6() { *cidr6 } else { *cidr4 };
                for ex in exchanges.iter().filter(|e| *e != "." && is_queryable(e)) {
                    // a host without addresses matches nothing; it is not a void lookup of the record
                    let addrs = match self.dns.addresses(ex, self.ip.is_ipv6()).await {
                        Ok(v) => v,
                        Err(LookupError::Void) => continue,
                        Err(LookupError::Temp(e)) => return Err(SpfError::Dns(e)),
                    };
                    if addrs.iter().any(|a| in_prefix(self.ip, *a, prefix)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let target = self.target(spec.as_ref(), domain).await;
                let names = self.validated_names().await;
                Ok(names.iter().any(|n| within(n, &target)))
            }
            Mechanism::Exists(spec) => {
                let target = self.target(Some(spec), domain).await;
                // §5.7: always an A query, whatever the client's family
                Ok(!self.addresses(&target, false).await?.is_empty())
            }
        }
    }

    /// The `exp=` explanation of a `fail` (§6.2); any problem means no explanation.
    async fn explain(&mut self, record: &Record, domain: &str) -> Option<String> {
        let spec = record.exp.as_ref()?;
        let target = self.target(Some(spec), domain).await;
        if !is_queryable(&target) {
            return None;
        }
        let txts = self.dns.txt(&target).await.ok()?;
        let [text] = txts.as_slice() else {
            return None;
        };
        let text = std::str::from_utf8(text).ok().filter(|t| t.is_ascii())?;
        let m = MacroString::parse(text, Context::Explanation).ok()?;
        Some(self.expand(&m, domain).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_prefix(ip("1.2.3.4"), ip("1.2.3.0"), 24));
        assert!(in_prefix(ip("1.2.3.4"), ip("9.9.9.9"), 0));
        assert!(!in_prefix(ip("1.2.3.4"), ip("1.2.3.5"), 32));
        assert!(in_prefix(ip("2001:db8::1"), ip("2001:db8::"), 32));
        assert!(!in_prefix(ip("1.2.3.4"), ip("::ffff:1.2.3.4"), 0));
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("1.2.3.4".parse().unwrap()), "4.3.2.1.in-addr.arpa");
        assert!(reverse_name("2001:db8::1".parse().unwrap()).starts_with("1.0.0.0."));
        assert!(reverse_name("2001:db8::1".parse().unwrap()).ends_with("8.b.d.0.1.0.0.2.ip6.arpa"));
    }

    #[test]
    fn queryable_names() {
        assert!(is_queryable("foo:bar/baz.example.com"));
        assert!(!is_queryable("a..b"));
        assert!(!is_queryable(&format!("{}.com", "a".repeat(64))));
        assert!(!is_queryable("1.2.3.4"));
    }
}
