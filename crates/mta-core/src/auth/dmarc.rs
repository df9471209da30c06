//! DMARC evaluation as RFC 7489 defines it: policy discovery at the `From:` domain then at its
//! organisational domain (§6.6.3), the organisational domain from the Public Suffix List (§3.2),
//! relaxed / strict alignment of SPF and DKIM (§3.1), `p` / `sp` (§6.3) and `pct` sampling
//! (§6.6.4).
//!
//! Ours rather than mail-auth's: mail-auth 0.13.3 implements DMARCbis's DNS tree walk, where the
//! organisational domain is the shortest name *that publishes a record* (so a record on a
//! subdomain makes the subdomain its own organisation and breaks relaxed alignment with its
//! siblings), and it ignores `pct`. Lookups still go through mail-auth's resolver, i.e. our pool.

use mail_auth::hickory_resolver::TokioResolver;

use super::inbound::{DmarcPolicy, Outcome};

/// The DMARC result of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Evaluation {
    /// pass / fail / temperror, or none (no usable record).
    pub(crate) result: Outcome,
    /// The policy that applies (after `pct` sampling).
    pub(crate) policy: DmarcPolicy,
    /// The `From:` domain.
    pub(crate) domain: String,
}

/// What the other checks found, as DMARC needs it.
pub(crate) struct Identifiers<'a> {
    /// The `From:` domain.
    pub(crate) from: &'a str,
    /// The SPF (MAIL FROM, or HELO for the null sender) domain and its result.
    pub(crate) spf: (&'a str, Outcome),
    /// Each DKIM signature's `d=` and result.
    pub(crate) dkim: &'a [(String, Outcome)],
}

/// The parts of a DMARC record we apply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    p: DmarcPolicy,
    sp: Option<DmarcPolicy>,
    pct: u8,
    adkim_strict: bool,
    aspf_strict: bool,
}

/// A domain as DMARC compares it: A-labels, lower case, no trailing dot.
fn normalize(domain: &str) -> String {
    let d = domain.trim_end_matches('.');
    idna::domain_to_ascii(d).unwrap_or_else(|_| d.to_ascii_lowercase())
}

/// The `From:` domain: DMARC applies only when every `From:` address has the same one (§6.6.1).
pub(crate) fn from_domain(addresses: &[String]) -> Option<String> {
    let mut domains = addresses.iter().filter_map(|a| a.rsplit_once('@')).map(|(_, d)| normalize(d));
    let first = domains.next().filter(|d| !d.is_empty())?;
    domains.all(|d| d == first).then_some(first)
}

/// RFC 7489 §3.2: the public suffix plus one label; a name that is itself a public suffix (or
/// not a domain name) is its own organisational domain.
pub(crate) fn organizational_domain(domain: &str) -> String {
    let d = normalize(domain);
    match psl::domain_str(&d) {
        Some(org) => org.to_string(),
        None => d,
    }
}

/// Evaluate DMARC for `ids`; `sample(pct)` says whether this message is in the `pct` sample.
pub(crate) async fn evaluate(
    resolver: &TokioResolver,
    ids: &Identifiers<'_>,
    sample: impl FnOnce(u8) -> bool,
) -> Evaluation {
    let from = normalize(ids.from);
    let none = |result| Evaluation { result, policy: DmarcPolicy::None, domain: from.clone() };
    let org = organizational_domain(&from);
    // §6.6.3: the From: domain's record, else the organisational domain's (whose sp= applies).
    let (record, at_org) = match discover(resolver, &from).await {
        Err(()) => return none(Outcome::TempError),
        Ok(Some(r)) => (r, false),
        Ok(None) if org != from => match discover(resolver, &org).await {
            Err(()) => return none(Outcome::TempError),
            Ok(Some(r)) => (r, true),
            Ok(None) => return none(Outcome::None),
        },
        Ok(None) => return none(Outcome::None),
    };
    let aligned = |domain: &str, strict: bool| {
        let domain = normalize(domain);
        domain == from || (!strict && organizational_domain(&domain) == org)
    };
    let (spf_domain, spf) = ids.spf;
    let spf_aligned = aligned(spf_domain, record.aspf_strict);
    let dkim_aligned = |o: Outcome| ids.dkim.iter().any(|(d, r)| *r == o && aligned(d, record.adkim_strict));
    let result = if (spf == Outcome::Pass && spf_aligned) || dkim_aligned(Outcome::Pass) {
        Outcome::Pass
    } else if (spf == Outcome::TempError && spf_aligned) || dkim_aligned(Outcome::TempError) {
        // an aligned identifier might have passed: neither pass nor fail (§6.6.2)
        Outcome::TempError
    } else {
        Outcome::Fail
    };
    let mut policy = if at_org { record.sp.unwrap_or(record.p) } else { record.p };
    // §6.6.4: outside the pct sample, the next lower policy applies
    if result == Outcome::Fail && record.pct < 100 && !sample(record.pct) {
        policy = match policy {
            DmarcPolicy::Reject => DmarcPolicy::Quarantine,
            DmarcPolicy::Quarantine | DmarcPolicy::None => DmarcPolicy::None,
        };
    }
    Evaluation { result, policy, domain: from }
}

/// The one DMARC record at `_dmarc.<domain>`: `Ok(None)` when there is none, several, or none
/// usable; `Err` on a temporary DNS failure.
async fn discover(resolver: &TokioResolver, domain: &str) -> Result<Option<Record>, ()> {
    let name = format!("_dmarc.{domain}.");
    let lookup = match resolver.txt_lookup(name.as_str()).await {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() => return Ok(None),
        Err(_) => return Err(()),
    };
    let texts: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            mail_auth::hickory_resolver::proto::rr::RData::TXT(t) => {
                Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
            }
            _ => None,
        })
        .filter(|t| is_dmarc(t))
        .collect();
    // §6.6.3 step 5: more than one record, or none, ends policy discovery
    match texts.as_slice() {
        [one] => Ok(parse(one)),
        _ => Ok(None),
    }
}

/// §6.3: a DMARC record starts with the tag `v=DMARC1`.
fn is_dmarc(txt: &str) -> bool {
    let first = txt.split(';').next().unwrap_or("");
    matches!(first.split_once('='), Some((k, v)) if k.trim() == "v" && v.trim() == "DMARC1")
}

fn policy(v: &str) -> Option<DmarcPolicy> {
    match v.to_ascii_lowercase().as_str() {
        "none" => Some(DmarcPolicy::None),
        "quarantine" => Some(DmarcPolicy::Quarantine),
        "reject" => Some(DmarcPolicy::Reject),
        _ => None,
    }
}

/// The record's tags. §6.6.3: without a valid `p` (or with an invalid `sp`) the record counts
/// as `p=none` when it has a valid `rua` URI, and as no record otherwise. Other invalid values
/// fall back to their defaults (§6.3: `pct=100`, relaxed alignment).
fn parse(txt: &str) -> Option<Record> {
    let mut p = None;
    let mut sp = None;
    let mut sp_invalid = false;
    let mut pct = 100u8;
    let (mut adkim_strict, mut aspf_strict) = (false, false);
    let mut rua_valid = false;
    for tag in txt.split(';').skip(1) {
        let Some((k, v)) = tag.split_once('=') else { continue };
        let v = v.trim();
        match k.trim() {
            "p" => {
                p = policy(v);
            }
            "sp" => {
                sp = policy(v);
                sp_invalid = sp.is_none();
            }
            "pct" => pct = v.parse::<u8>().ok().filter(|n| *n <= 100).unwrap_or(100),
            "adkim" => adkim_strict = v.eq_ignore_ascii_case("s"),
            "aspf" => aspf_strict = v.eq_ignore_ascii_case("s"),
            "rua" => {
                rua_valid = v.split(',').any(|u| {
                    let u = u.trim();
                    u.len() > 7 && u[..7].eq_ignore_ascii_case("mailto:") && u.contains('@')
                })
            }
            _ => {}
        }
    }
    match (p, sp_invalid) {
        (Some(p), false) => Some(Record { p, sp, pct, adkim_strict, aspf_strict }),
        _ if rua_valid => Some(Record { p: DmarcPolicy::None, sp: None, pct, adkim_strict, aspf_strict }),
        _ => None,
    }
}

/// The `dmarc=` clause of our Authentication-Results header (RFC 7489 §11.2).
pub(crate) fn results_clause(e: &Evaluation) -> String {
    let policy = match e.policy {
        DmarcPolicy::None => "none",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::Reject => "reject",
    };
    let comment = if e.result == Outcome::Fail { " (policy not aligned)" } else { "" };
    // the domain comes from a parsed address; keep the header to one token all the same
    let domain: String = e.domain.chars().filter(|c| c.is_ascii_graphic() && !matches!(c, ';' | '(' | ')')).collect();
    format!("dmarc={}{comment} header.from={domain} policy.dmarc={policy}", e.result.as_str())
}

/// `header` (an Authentication-Results field from mail-auth, CRLF-terminated) with `clause` added.
pub(crate) fn append_clause(header: &str, clause: &str) -> String {
    let body = header.strip_suffix("\r\n").unwrap_or(header);
    let body = body.strip_suffix("; none").unwrap_or(body);
    format!("{body};\r\n\t{clause}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizational_domains_come_from_the_public_suffix_list() {
        assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(organizational_domain("example.co.uk"), "example.co.uk");
        assert_eq!(organizational_domain("co.uk"), "co.uk");
        assert_eq!(organizational_domain("mail.example.com"), "example.com");
        assert_eq!(organizational_domain("x.y.example.test"), "example.test");
        assert_eq!(organizational_domain("Example.COM."), "example.com");
    }

    #[test]
    fn records_parse_as_rfc_7489_says() {
        let r = parse("v=DMARC1; p=reject; sp=quarantine; pct=20; adkim=s").unwrap();
        assert_eq!(
            r,
            Record {
                p: DmarcPolicy::Reject,
                sp: Some(DmarcPolicy::Quarantine),
                pct: 20,
                adkim_strict: true,
                aspf_strict: false
            }
        );
        assert_eq!(parse("v=DMARC1; p=bogus"), None);
        assert_eq!(parse("v=DMARC1; sp=reject"), None);
        assert_eq!(parse("v=DMARC1; p=bogus; rua=mailto:r@example.com").map(|r| r.p), Some(DmarcPolicy::None));
        assert_eq!(parse("v=DMARC1; p=reject; pct=500").map(|r| r.pct), Some(100));
        assert!(is_dmarc("v=DMARC1; p=none") && !is_dmarc("v=spf1 -all") && !is_dmarc("p=none; v=DMARC1"));
    }
}
