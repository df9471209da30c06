//! SPF (RFC 7208), our own evaluator: it agrees with the RFC's test suite (the YAML suite kept
//! with pyspf, run in `tests/spf_suite.rs` against a loopback DNS server) where mail-auth
//! 0.13's did on only ~75% of the cases.
//!
//! # Layout
//! - `record.rs`: which TXT records are SPF records, and their terms (the ABNF of §12).
//! - `macros.rs`: macro strings (§7): parsed with the record, expanded per use.
//! - `eval.rs`: `check_host()` (§4-§6) with the processing limits of §4.6.4.
//! - `lookup.rs`: [`SpfDns`], where the lookups go.
//! - `error.rs`: [`SpfError`], why a result is `permerror` or `temperror`.
//!
//! # DNS
//!
//! [`SpfDns::Pool`] asks our resolver pool directly (cache, coalescing, per-upstream caps,
//! retry budget), with no loopback hop. mail-auth (kept for DKIM, DMARC and ARC) reaches the
//! same pool through its loopback stub ([`crate::dns::Resolver::serve_stub`]), so both share
//! one cache: a TXT record fetched for SPF is a cache hit for DMARC's lookups and the reverse.
//! [`SpfDns::Hickory`] takes such a stub client, for callers that only hold mail-auth's
//! resolver.

mod error;
mod eval;
mod lookup;
mod macros;
mod record;

use std::net::IpAddr;

pub use error::SpfError;
pub use lookup::SpfDns;

use eval::Eval;

/// An SPF result (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpfResult {
    /// No SPF record, or no valid domain to check.
    None,
    /// The domain makes no assertion (`?`), or nothing matched.
    Neutral,
    /// The client is authorised.
    Pass,
    /// The client is not authorised.
    Fail,
    /// Probably not authorised (`~`).
    SoftFail,
    /// A temporary DNS failure: try again later.
    TempError,
    /// The domain's records are wrong.
    PermError,
}

impl SpfResult {
    /// The RFC's name of the result (`softfail`, `permerror`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl std::fmt::Display for SpfResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutput {
    /// The result.
    pub result: SpfResult,
    /// The domain checked (the MAIL FROM or HELO domain).
    pub domain: String,
    /// For `fail`: the domain's `exp=` explanation, if it published a usable one.
    pub explanation: Option<String>,
    /// For `permerror` / `temperror`: why.
    pub error: Option<SpfError>,
}

impl SpfOutput {
    fn of(result: SpfResult, domain: &str) -> Self {
        SpfOutput { result, domain: domain.to_string(), explanation: None, error: None }
    }
}

/// The SPF evaluator. Cheap to clone; share one.
#[derive(Debug, Clone)]
pub struct Spf {
    dns: SpfDns,
    receiver: String,
}

/// An IPv4-mapped IPv6 client (`::ffff:192.0.2.1`, a dual-stack socket's view of an IPv4
/// peer) is an IPv4 client for SPF (RFC 7208 §5: `ip4`, `a` with IPv4 prefixes, `%{i}`).
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Is `helo` a name SPF can check (§2.3: not an address literal, a multi-label domain)?
fn helo_is_domain(helo: &str) -> bool {
    !helo.starts_with('[') && helo.contains('.') && eval::is_queryable(helo)
}

/// A domain as DNS knows it: IDNA U-labels as A-labels; `None` when it cannot be one.
fn ascii_domain(d: &str) -> Option<String> {
    if d.is_ascii() {
        Some(d.to_string())
    } else {
        idna::domain_to_ascii(d).ok()
    }
}

impl Spf {
    /// `receiver`: our host name (`%{r}` in explanations).
    pub fn new(dns: SpfDns, receiver: impl Into<String>) -> Self {
        Spf { dns, receiver: receiver.into() }
    }

    /// RFC 7208 `check_host(ip, domain, sender)`, with `helo` for `%{h}`. `sender` is
    /// `local@domain`; an empty local part is `postmaster` (§4.3).
    pub async fn check_host(&self, ip: IpAddr, domain: &str, sender: &str, helo: &str) -> SpfOutput {
        let (local, sender_domain) = match sender.rsplit_once('@') {
            Some(("", d)) => ("postmaster", d),
            Some((l, d)) => (l, d),
            None => ("postmaster", sender),
        };
        let sender = format!("{local}@{sender_domain}");
        let mut e = Eval {
            dns: &self.dns,
            ip: unmap(ip),
            sender: &sender,
            local,
            sender_domain,
            helo,
            receiver: &self.receiver,
            terms: 0,
            voids: 0,
        };
        match e.check_host(domain.to_string()).await {
            Ok((result, explanation)) => SpfOutput { result, domain: domain.to_string(), explanation, error: None },
            Err(err) => {
                let result = if err.is_temporary() { SpfResult::TempError } else { SpfResult::PermError };
                SpfOutput { result, domain: domain.to_string(), explanation: None, error: Some(err) }
            }
        }
    }

    /// Check the MAIL FROM identity (`mail_from` without `<>`; `""` for the null sender, which
    /// checks `postmaster@<helo>`, §2.4). A domain literal (`foo@[192.0.2.1]`) or a malformed
    /// domain gives `none` (§4.3).
    pub async fn verify_mail_from(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfOutput {
        if mail_from.is_empty() {
            return self.verify_helo(ip, helo).await;
        }
        let domain = mail_from.rsplit_once('@').map_or(mail_from, |(_, d)| d);
        let Some(ascii) = ascii_domain(domain).filter(|d| !d.starts_with('[')) else {
            return SpfOutput::of(SpfResult::None, domain);
        };
        let local = mail_from.rsplit_once('@').map_or("", |(l, _)| l);
        self.check_host(ip, &ascii, &format!("{local}@{ascii}"), helo).await
    }

    /// Check the HELO identity (§2.3): `postmaster@<helo>`; an address literal or a name
    /// that is not a multi-label domain gives `none`.
    pub async fn verify_helo(&self, ip: IpAddr, helo: &str) -> SpfOutput {
        match ascii_domain(helo).filter(|h| helo_is_domain(h)) {
            Some(h) => self.check_host(ip, &h, &format!("postmaster@{h}"), helo).await,
            None => SpfOutput::of(SpfResult::None, helo),
        }
    }
}
