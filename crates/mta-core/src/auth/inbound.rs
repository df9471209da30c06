//! Verification of received mail: SPF (RFC 7208) for HELO and MAIL FROM, DKIM (RFC 6376) for
//! every signature, DMARC (RFC 7489, our `dmarc.rs`) with alignment, ARC (RFC 8617) chain validation,
//! all under one deadline; the result as an `Authentication-Results:` header (RFC 8601) and,
//! under `enforce`, an SMTP rejection.
//!
//! Rejections (RFC 7372 codes): SPF fail → `550 5.7.23`, SPF permerror → `550 5.7.24`, SPF
//! temperror → `451 4.7.24`, DMARC fail with `p=reject` → `550 5.7.1`, DMARC temperror with
//! `p=reject` → `451 4.7.1`. A temporary DNS failure (or the deadline) never gives a 5xx.
//! `p=quarantine` is recorded only (we have no quarantine). DKIM never rejects by itself.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, MessageAuthenticator, SpfOutput,
    SpfResult,
};
use tokio::time::timeout_at;

use super::spf::{self, Spf, SpfDns};
use super::{dmarc, AuthPolicy, Policy};
use crate::dns::Resolver;

/// Default deadline of one verification (all lookups together).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// A method's result (RFC 8601 §2.7 result names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No policy / no signature / not applicable.
    None,
    /// Verified.
    Pass,
    /// Verified as not authorised / signature invalid / not aligned.
    Fail,
    /// SPF `~all`.
    SoftFail,
    /// SPF `?all`, or a DKIM signature that could not be used.
    Neutral,
    /// A temporary (DNS) error or the deadline: try again later.
    TempError,
    /// A permanent error in the published records.
    PermError,
}

impl Outcome {
    /// The RFC 8601 result name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::SoftFail => "softfail",
            Outcome::Neutral => "neutral",
            Outcome::TempError => "temperror",
            Outcome::PermError => "permerror",
        }
    }
}

/// The DMARC policy that applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    /// `p=none` or no record.
    None,
    /// `p=quarantine`.
    Quarantine,
    /// `p=reject`.
    Reject,
}

/// What was found, per method; `None` / empty where the method was off or not applicable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// SPF of the HELO identity.
    pub spf_helo: Option<Outcome>,
    /// SPF of the MAIL FROM identity (`postmaster@<helo>` for the null sender).
    pub spf_mail_from: Option<Outcome>,
    /// Each DKIM signature: `(d=, result)`.
    pub dkim: Vec<(String, Outcome)>,
    /// DMARC result and the policy that applied, with the `From:` domain.
    pub dmarc: Option<(Outcome, DmarcPolicy, String)>,
    /// ARC chain validation.
    pub arc: Option<Outcome>,
    /// The deadline cut some lookups short (their results are `temperror`).
    pub timed_out: bool,
}

/// An SMTP rejection: `(code, enhanced code, text)`, e.g.
/// `(550, (5, 7, 23), "SPF validation failed ...")`.
pub type Reject = (u16, (u8, u16, u16), String);

/// The outcome of [`Verifier::verify`].
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The `Authentication-Results:` header field to prepend (folded, ends in CRLF); empty when
    /// every method is off.
    pub header: String,
    /// Reply with this instead of accepting the message (only under `enforce`).
    pub reject: Option<Reject>,
    /// The results, for logs, metrics and tests.
    pub summary: Summary,
}

/// Verifies received mail. Cheap to clone; share one.
///
/// SPF is our own evaluator ([`spf::Spf`]); DKIM, DMARC and ARC are mail-auth's. Both resolve
/// through the same pool: SPF directly ([`Verifier::with_resolver`]), mail-auth through the
/// pool's loopback stub, so they share one cache, one set of caps and one retry budget.
#[derive(Clone)]
pub struct Verifier {
    auth: MessageAuthenticator,
    spf: Spf,
    policy: AuthPolicy,
    authserv_id: String,
    deadline: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.policy)
            .field("authserv_id", &self.authserv_id)
            .field("deadline", &self.deadline)
            .finish()
    }
}

fn deadline_error() -> mail_auth::Error {
    mail_auth::Error::Dns(mail_auth::DnsError::Resolver("verification deadline exceeded".into()))
}

impl Verifier {
    /// `auth` from [`super::authenticator`] (our pool's stub); `authserv_id` is
    /// `server.hostname`. Deadline [`DEFAULT_DEADLINE`]. SPF asks through `auth`'s resolver
    /// (the stub) until [`Verifier::with_resolver`] gives it the pool itself.
    pub fn new(auth: MessageAuthenticator, policy: AuthPolicy, authserv_id: impl Into<String>) -> Self {
        let authserv_id = authserv_id.into();
        let spf = Spf::new(SpfDns::Hickory(Box::new(auth.0.clone())), authserv_id.clone());
        Verifier { auth, spf, policy, authserv_id, deadline: DEFAULT_DEADLINE }
    }

    /// SPF lookups straight through `resolver` (the pool behind the stub): no loopback hop, and
    /// names outside host name syntax that SPF must be able to ask for (RFC 7208 §4.8).
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.spf = Spf::new(SpfDns::Pool(resolver), self.authserv_id.clone());
        self
    }

    /// Bound the whole verification to `deadline`; lookups still pending then count as
    /// `temperror`.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> AuthPolicy {
        self.policy
    }

    /// Our authserv-id.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// Verify one message received from `client_ip` after `HELO/EHLO helo` and `MAIL FROM:<mail_from>`
    /// (`""` for the null sender). `message` is the content as received (before our headers).
    ///
    /// SPF is evaluated when `spf` or `dmarc` is on, DKIM when `dkim` or `dmarc` is on (DMARC
    /// needs both), but only methods that are on are reported and enforced. ARC is checked and
    /// reported when `dkim` is on. Never takes (much) longer than the deadline.
    pub async fn verify(&self, client_ip: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> Verdict {
        let p = self.policy;
        if p.is_off() {
            return Verdict { header: String::new(), reject: None, summary: Summary::default() };
        }
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + self.deadline;
        let need_spf = p.spf != Policy::Off || p.dmarc != Policy::Off;
        let need_dkim = p.dkim != Policy::Off || p.dmarc != Policy::Off;
        let check_arc = p.dkim != Policy::Off;
        let helo = helo.trim();
        let mail_from = mail_from.trim();
        let host = self.authserv_id.as_str();
        // Not mail-auth's "strict" parse, which makes every signature with `l=` neutral: RFC 6376
        // §3.5 defines `l=` and verifiers (dkimpy, OpenDKIM) verify such signatures over that
        // length; what follows it is unsigned, as for any header not in `h=`.
        let parsed = AuthenticatedMessage::parse_with_opts(message, None, false).map(|mut m| {
            super::body_length::fix_length_limited_hashes(&mut m);
            m
        });
        let mut summary = Summary::default();

        // IPv4-mapped IPv6 peers (a dual-stack listener) are IPv4 clients, for SPF and in the header
        let client_ip = spf::unmap(client_ip);
        // RFC 7208 §2.3/§4.3: a HELO that is an address literal or not a domain, and a MAIL FROM
        // domain literal, give "none" (the evaluator checks); the null sender checks postmaster@HELO.
        let spf_helo = async {
            if p.spf == Policy::Off {
                return None;
            }
            Some(timeout_at(deadline, self.spf.verify_helo(client_ip, helo)).await.ok().map(|o| to_mail_auth(&o)))
        };
        let spf_mail_from = async {
            if !need_spf {
                return None;
            }
            let check = self.spf.verify_mail_from(client_ip, helo, mail_from);
            Some(timeout_at(deadline, check).await.ok().map(|o| to_mail_auth(&o)))
        };
        let dkim = async {
            let m = parsed.as_ref().filter(|_| need_dkim)?;
            Some(timeout_at(deadline, self.auth.verify_dkim(m)).await.ok())
        };
        let arc = async {
            let m = parsed.as_ref().filter(|_| check_arc)?;
            Some(timeout_at(deadline, self.auth.verify_arc(m)).await.ok())
        };
        let (spf_helo, spf_mail_from, dkim, arc) = tokio::join!(spf_helo, spf_mail_from, dkim, arc);

        let mf_domain = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
        let mut timed_out = false;
        let mut spf_out = |o: Option<Option<SpfOutput>>, domain: &str| {
            o.map(|o| {
                o.unwrap_or_else(|| {
                    timed_out = true;
                    SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError)
                })
            })
        };
        let spf_helo = spf_out(spf_helo, helo);
        let spf_mail_from = spf_out(spf_mail_from, mf_domain);
        let dkim: Vec<DkimOutput<'_>> = match (dkim, parsed.as_ref()) {
            (Some(Some(v)), _) => v,
            (Some(None), Some(m)) => {
                timed_out = true;
                m.dkim_headers
                    .iter()
                    .map(|h| DkimOutput::temp_err(deadline_error()).with_signature(&h.header))
                    .collect()
            }
            _ => Vec::new(),
        };
        let arc: Option<ArcOutput<'_>> = arc.map(|a| match a {
            // RFC 8617 §10.1 defines only none / pass / fail for `arc`: mail-auth's "neutral"
            // (e.g. body hash did not verify) and "permerror" are a failed chain
            Some(a) => match a.result() {
                DkimResult::Neutral(e) | DkimResult::PermError(e) => {
                    ArcOutput::default().with_result(DkimResult::Fail(e.clone()))
                }
                // mail-auth misses some malformed chains (see `arc_check`)
                DkimResult::Pass | DkimResult::None if super::arc_check::malformed(message).is_some() => {
                    ArcOutput::default()
                        .with_result(DkimResult::Fail(mail_auth::Error::Arc(mail_auth::arc::ArcError::BrokenChain)))
                }
                _ => a,
            },
            None => {
                timed_out = true;
                ArcOutput::default().with_result(DkimResult::TempError(deadline_error()))
            }
        });

        let dmarc = match (parsed.as_ref(), spf_mail_from.as_ref()) {
            (Some(m), Some(spf)) if p.dmarc != Policy::Off => match dmarc::from_domain(&m.from) {
                Some(from) => {
                    let signers: Vec<(String, Outcome)> = dkim
                        .iter()
                        .filter_map(|o| o.signature().map(|s| (s.d.clone(), dkim_outcome(o.result()))))
                        .collect();
                    let ids =
                        dmarc::Identifiers { from: &from, spf: (mf_domain, spf_outcome(spf.result())), dkim: &signers };
                    let sample = |pct: u8| rand::random_range(0..100u8) < pct;
                    match timeout_at(deadline, dmarc::evaluate(self.auth.resolver(), &ids, sample)).await {
                        Ok(e) => Some(e),
                        Err(_) => {
                            timed_out = true;
                            Some(dmarc::Evaluation {
                                result: Outcome::TempError,
                                policy: DmarcPolicy::None,
                                domain: from,
                            })
                        }
                    }
                }
                None => None,
            },
            _ => None,
        };

        // The header: only what is on.
        let header_from = parsed.as_ref().map_or("", |m| m.from());
        let mut ar = AuthenticationResults::new(host);
        if p.dkim != Policy::Off {
            ar = ar.with_dkim_results(&dkim, header_from);
        }
        if p.spf != Policy::Off {
            if let Some(o) = &spf_mail_from {
                ar = ar.with_spf_mailfrom_result(o, client_ip, mail_from, helo);
            }
            if let Some(o) = &spf_helo {
                ar = ar.with_spf_ehlo_result(o, client_ip, helo);
            }
        }
        if let Some(a) = arc.as_ref() {
            ar = ar.with_arc_result(a, client_ip);
        }
        let mut header = ar.to_header();
        if p.dkim != Policy::Off && dkim.is_empty() {
            header = with_dkim_none(header, host);
        }
        if let Some(d) = dmarc.as_ref() {
            header = dmarc::append_clause(&header, &dmarc::results_clause(d));
        }

        // The summary.
        if p.spf != Policy::Off {
            summary.spf_helo = spf_helo.as_ref().map(|o| spf_outcome(o.result()));
            summary.spf_mail_from = spf_mail_from.as_ref().map(|o| spf_outcome(o.result()));
        }
        if p.dkim != Policy::Off {
            summary.dkim = dkim
                .iter()
                .map(|o| (o.signature().map_or_else(String::new, |s| s.d.clone()), dkim_outcome(o.result())))
                .collect();
        }
        summary.arc = arc.as_ref().map(|a| dkim_outcome(a.result()));
        if p.dmarc != Policy::Off {
            summary.dmarc = dmarc.as_ref().map(|d| (d.result, d.policy, d.domain.clone()));
        }
        summary.timed_out = timed_out;

        let reject = self.decide(client_ip, &summary, spf_mail_from.as_ref().map_or(mf_domain, |o| o.domain()));
        record_metrics(&summary, reject.as_ref(), t0);
        Verdict { header, reject, summary }
    }

    /// The enforcement decision from the results.
    fn decide(&self, client_ip: IpAddr, s: &Summary, spf_domain: &str) -> Option<Reject> {
        if self.policy.spf == Policy::Enforce {
            match s.spf_mail_from {
                Some(Outcome::Fail) => {
                    return Some((
                        550,
                        (5, 7, 23),
                        format!("SPF validation failed: {client_ip} is not allowed to send mail for {spf_domain}"),
                    ))
                }
                Some(Outcome::PermError) => {
                    return Some((
                        550,
                        (5, 7, 24),
                        format!("SPF validation error: the SPF record of {spf_domain} is invalid"),
                    ))
                }
                Some(Outcome::TempError) => {
                    return Some((
                        451,
                        (4, 7, 24),
                        format!("SPF validation error: temporary DNS failure for {spf_domain}, try again later"),
                    ))
                }
                _ => {}
            }
        }
        if self.policy.dmarc == Policy::Enforce {
            match &s.dmarc {
                Some((Outcome::Fail, DmarcPolicy::Reject, from)) => {
                    return Some((550, (5, 7, 1), format!("Message rejected per the DMARC policy of {from}")))
                }
                Some((Outcome::TempError, DmarcPolicy::Reject, from)) => {
                    return Some((
                        451,
                        (4, 7, 1),
                        format!(
                            "DMARC policy of {from} could not be evaluated (temporary DNS failure), try again later"
                        ),
                    ))
                }
                _ => {}
            }
        }
        None
    }
}

/// Our SPF result as mail-auth's, which its `Authentication-Results:` writer and DMARC take.
fn to_mail_auth(o: &spf::SpfOutput) -> SpfOutput {
    let result = match o.result {
        spf::SpfResult::Pass => SpfResult::Pass,
        spf::SpfResult::Fail => SpfResult::Fail,
        spf::SpfResult::SoftFail => SpfResult::SoftFail,
        spf::SpfResult::Neutral => SpfResult::Neutral,
        spf::SpfResult::TempError => SpfResult::TempError,
        spf::SpfResult::PermError => SpfResult::PermError,
        spf::SpfResult::None => SpfResult::None,
    };
    let out = SpfOutput::new(o.domain.clone()).with_result(result);
    match &o.explanation {
        Some(e) => out.with_explanation(e.clone()),
        None => out,
    }
}

/// Add `dkim=none` (mail-auth reports nothing when there is no signature).
fn with_dkim_none(header: String, host: &str) -> String {
    let prefix = format!("Authentication-Results: {host}");
    match header.strip_prefix(&prefix) {
        Some(rest) => {
            let rest = if rest == "; none\r\n" { "\r\n" } else { rest };
            format!("{prefix};\r\n\tdkim=none{rest}")
        }
        None => header,
    }
}

fn spf_outcome(r: SpfResult) -> Outcome {
    match r {
        SpfResult::Pass => Outcome::Pass,
        SpfResult::Fail => Outcome::Fail,
        SpfResult::SoftFail => Outcome::SoftFail,
        SpfResult::Neutral => Outcome::Neutral,
        SpfResult::TempError => Outcome::TempError,
        SpfResult::PermError => Outcome::PermError,
        SpfResult::None => Outcome::None,
    }
}

fn dkim_outcome(r: &DkimResult) -> Outcome {
    match r {
        DkimResult::Pass => Outcome::Pass,
        DkimResult::Neutral(_) => Outcome::Neutral,
        DkimResult::Fail(_) => Outcome::Fail,
        DkimResult::PermError(_) => Outcome::PermError,
        DkimResult::TempError(_) => Outcome::TempError,
        DkimResult::None => Outcome::None,
    }
}

fn record_metrics(s: &Summary, reject: Option<&Reject>, t0: Instant) {
    let count = |method: &'static str, o: Outcome| {
        metrics::counter!("mta_auth_results_total", "method" => method, "result" => o.as_str()).increment(1);
    };
    if let Some(o) = s.spf_mail_from {
        count("spf", o);
    }
    for (_, o) in &s.dkim {
        count("dkim", *o);
    }
    if let Some((o, _, _)) = &s.dmarc {
        count("dmarc", *o);
    }
    if let Some(o) = s.arc {
        count("arc", o);
    }
    if s.timed_out {
        metrics::counter!("mta_auth_deadline_exceeded_total").increment(1);
    }
    if let Some((code, (c, sub, d), _)) = reject {
        metrics::counter!("mta_auth_rejections_total", "code" => format!("{code} {c}.{sub}.{d}")).increment(1);
    }
    metrics::histogram!("mta_auth_verify_seconds").record(t0.elapsed().as_secs_f64());
}

/// Remove every `Authentication-Results:` header field whose authserv-id is ours (RFC 8601 §5:
/// a message must not arrive already carrying results in our name). Other fields, the body and
/// other hosts' results are untouched; when nothing matches, the same bytes come back (no copy).
/// The caller then prepends our own header.
pub fn strip_spoofed_results(message: Bytes, authserv_id: &str) -> Bytes {
    let fields = header_fields(&message);
    let spoofed: Vec<(usize, usize)> =
        fields.into_iter().filter(|&(start, end)| is_our_results(&message[start..end], authserv_id)).collect();
    if spoofed.is_empty() {
        return message;
    }
    metrics::counter!("mta_auth_spoofed_results_removed_total").increment(spoofed.len() as u64);
    let mut out = BytesMut::with_capacity(message.len());
    let mut pos = 0;
    for (start, end) in spoofed {
        out.extend_from_slice(&message[pos..start]);
        pos = end;
    }
    out.extend_from_slice(&message[pos..]);
    out.freeze()
}

/// `(start, end)` of each header field (continuation lines included, line end included), up to
/// the empty line.
fn header_fields(m: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = Vec::new();
    let mut pos = 0;
    let mut current: Option<usize> = None;
    while pos < m.len() {
        let end = memchr_lf(&m[pos..]).map_or(m.len(), |i| pos + i + 1);
        let line = &m[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // continuation of the current field
        } else {
            if let Some(s) = current {
                fields.push((s, pos));
            }
            current = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = current {
        fields.push((s, pos));
    }
    fields
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Is this field an `Authentication-Results:` claiming `authserv_id`?
fn is_our_results(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = field.iter().position(|&c| c == b':') else {
        return false;
    };
    let name = field[..colon].trim_ascii();
    if !name.eq_ignore_ascii_case(b"Authentication-Results") {
        return false;
    }
    let value = &field[colon + 1..];
    let mut i = 0;
    // skip CFWS: whitespace, line breaks, (nested (comments))
    let mut depth = 0usize;
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let id: &[u8] = if value.get(i) == Some(&b'"') {
        let rest = &value[i + 1..];
        &rest[..rest.iter().position(|&c| c == b'"').unwrap_or(rest.len())]
    } else {
        let rest = &value[i.min(value.len())..];
        let end =
            rest.iter().position(|c| matches!(c, b';' | b'(' | b' ' | b'\t' | b'\r' | b'\n')).unwrap_or(rest.len());
        &rest[..end]
    };
    let trim_dot = |s: &[u8]| -> Vec<u8> { s.strip_suffix(b".").unwrap_or(s).to_vec() };
    !id.is_empty() && trim_dot(id).eq_ignore_ascii_case(&trim_dot(authserv_id.as_bytes()))
}
