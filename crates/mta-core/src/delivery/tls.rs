//! A destination's MTA-STS policy applied to its next hops (RFC 8461 §5): under `enforce` only the MX hosts the
//! policy names are kept and each must present a certificate verified for its name; with none left, the
//! attempt is deferred (a transient failure: never plaintext, never a bounce on that alone). `testing` only
//! reports.

use std::sync::Arc;

use mta_smtp::client::{ClientConfig, TlsTrust};
use mta_spool::Spool;

use super::context::Context;
use super::plan::{HopTls, NextHops};
use super::recorder::Outcome;
use super::DeliveryConfig;
use crate::dns::{Dnssec, Resolver};
use crate::tls_policy::{
    self, DaneSetting, Fetcher, HostTlsa, MtaStsSetting, PolicySource, StsMode, TlsPolicies, TlsResultType, TlsSession,
};
use crate::tls_report::{self, PolicyDesc, TlsReports};
use crate::Response;

/// The client's trust anchors and the policy store, from `delivery.tls_ca_file` and `delivery.mta_sts`. An
/// unreadable CA file is logged and leaves the system roots (the server refuses such a file at start-up).
pub(crate) fn setup(
    cfg: &DeliveryConfig,
    mut client: ClientConfig,
    resolver: &Resolver,
    spool: &Spool,
) -> (ClientConfig, Option<Arc<TlsPolicies>>) {
    let roots = match tls_policy::load_roots(cfg.tls_ca_file.as_deref()) {
        Ok(roots) => roots,
        Err(e) => {
            tracing::error!(error = %e, "delivery.tls_ca_file not used");
            tls_policy::load_roots(None).unwrap_or_else(|_| rustls::RootCertStore::empty())
        }
    };
    match TlsTrust::new(roots.clone()) {
        Ok(trust) => client.trust = Some(trust),
        Err(e) => tracing::error!(error = %e, "verified outbound TLS unavailable"),
    }
    if cfg.mta_sts == MtaStsSetting::Off {
        return (client, None);
    }
    match Fetcher::new(roots, cfg.mta_sts_port, tls_policy::DEFAULT_FETCH_TIMEOUT) {
        Ok(fetcher) => (client, Some(Arc::new(TlsPolicies::new(resolver.clone(), fetcher, spool.clone())))),
        Err(e) => {
            tracing::error!(error = %e, "MTA-STS policy fetches unavailable");
            (client, None)
        }
    }
}

/// TLS reporting's counters and sender, when `tls_report.enabled`.
pub(crate) fn report_setup(
    cfg: &DeliveryConfig,
    spool: &Spool,
    hostname: &str,
) -> Option<(Arc<TlsReports>, Arc<tls_report::Sender>)> {
    let r = &cfg.tls_report;
    if !r.enabled {
        return None;
    }
    let roots = tls_policy::load_roots(cfg.tls_ca_file.as_deref())
        .or_else(|_| tls_policy::load_roots(None))
        .unwrap_or_else(|_| rustls::RootCertStore::empty());
    let submitter = tls_report::Submitter {
        organization: r.organization.clone().unwrap_or_else(|| hostname.to_string()),
        contact: r.contact.clone().unwrap_or_else(|| format!("postmaster@{hostname}")),
        hostname: hostname.to_string(),
    };
    match tls_report::Sender::new(roots, submitter) {
        Ok(sender) => Some((TlsReports::new(spool.clone(), r.interval), Arc::new(sender))),
        Err(e) => {
            tracing::error!(error = %e, "TLS reporting unavailable");
            None
        }
    }
}

/// How an MTA-STS policy appears in TLS reports (RFC 8460 §4.4: the policy's lines).
fn sts_desc(policy: &tls_policy::StsPolicy) -> Arc<PolicyDesc> {
    let mode = match policy.mode {
        StsMode::Enforce => "enforce",
        StsMode::Testing => "testing",
        StsMode::None => "none",
    };
    let mut lines = vec!["version: STSv1".to_string(), format!("mode: {mode}")];
    lines.extend(policy.mx.iter().map(|m| format!("mx: {m}")));
    lines.push(format!("max_age: {}", policy.max_age_secs));
    Arc::new(PolicyDesc { policy_type: "sts".into(), policy_string: lines, mx_host: policy.mx.clone() })
}

/// How DANE appears in TLS reports: the TLSA records in presentation form, the MX hosts that have them.
fn dane_desc(hops: &NextHops) -> Arc<PolicyDesc> {
    let mut strings = Vec::new();
    let mut hosts = Vec::new();
    for hop in &hops.hosts {
        if let Some(records) = &hop.tlsa {
            hosts.push(hop.name.clone());
            for r in records.iter() {
                strings.push(format!("{} {} {} {}", r.usage, r.selector, r.matching, hex::encode(&r.data)));
            }
        }
    }
    Arc::new(PolicyDesc { policy_type: "tlsa".into(), policy_string: strings, mx_host: hosts })
}

/// Counts a failed session for `domain` in TLS reports (a policy failure found before connecting).
fn report_failure(ctx: &Context, domain: &str, policy: &PolicyDesc, result: TlsResultType, mx: Option<&str>) {
    if let Some(reports) = &ctx.tls_reports {
        reports.failure(domain, policy, result.as_str(), mx, None);
    }
}

fn count(mode: &'static str, result: &'static str) {
    metrics::counter!("mta_tls_policy_total", "source" => "mta-sts", "mode" => mode, "result" => result).increment(1);
}

/// Whether DANE can apply at all: enabled, and answers can be authenticated.
pub(crate) fn dane_on(ctx: &Context) -> bool {
    ctx.cfg.dane == DaneSetting::Enforce && ctx.resolver.config().dnssec != Dnssec::Off
}

/// DANE for `hops` (RFC 7672): `Ok(true)` when at least one MX host has authenticated TLSA records (the site
/// becomes a DANE site and MTA-STS is not consulted); a failed TLSA lookup of an authenticated MX defers.
async fn dane(ctx: &Context, domain: &str, hops: &mut NextHops) -> Result<bool, Outcome> {
    if !dane_on(ctx) || !tls_policy::mx_authenticated(&ctx.resolver, domain).await {
        return Ok(false);
    }
    let mut any = false;
    for hop in hops.hosts.iter_mut() {
        match tls_policy::host_tlsa(&ctx.resolver, &hop.name).await {
            HostTlsa::None => {}
            HostTlsa::Records(records) => {
                if records.is_empty() {
                    count_dane("tlsa_invalid");
                }
                hop.tlsa = Some(records);
                any = true;
            }
            HostTlsa::Failed(e) => {
                count_dane("tlsa_lookup_failed");
                // RFC 8460 `dnssec-invalid`: the resolver gave no valid answer (a validating resolver answers
                // SERVFAIL to bogus data); the report describes the TLSA records found so far, if any.
                let failure = TlsResultType::DnssecInvalid;
                let text = format!("DANE: TLSA lookup for {} failed: {e}", tls_policy::tlsa_name(&hop.name));
                let name = hop.name.clone();
                report_failure(ctx, domain, &dane_desc(hops), failure, Some(&name));
                let response = Response { tls_failure: Some(failure), ..Response::local(451, (4, 4, 3), text) };
                let tls = TlsSession::refused(PolicySource::Dane, failure);
                return Err(Outcome::transient(response).with_tls(Some(tls)));
            }
        }
    }
    if any {
        count_dane("matched");
        // A separate site: its connections must never carry (or be) opportunistic ones.
        hops.name = format!("{}+dane", hops.name);
        hops.tls = HopTls::Dane;
        hops.policy = Some(dane_desc(hops));
    }
    Ok(any)
}

fn count_dane(result: &'static str) {
    metrics::counter!("mta_tls_policy_total", "source" => "dane", "mode" => "enforce", "result" => result).increment(1);
}

/// `hops` as the policy of `domain` allows them: DANE first (RFC 8461 §2: it takes precedence), else MTA-STS.
pub(crate) async fn apply(ctx: &Context, domain: &str, mut hops: NextHops) -> Result<NextHops, Outcome> {
    if dane(ctx, domain, &mut hops).await? {
        return Ok(hops);
    }
    let Some(policies) = &ctx.policies else {
        return Ok(hops);
    };
    let found = policies.lookup(domain).await;
    if let Some(failure) = found.fetch_failure {
        count("none", "fetch_error");
        if found.policy.is_none() {
            let none = PolicyDesc { policy_type: "no-policy-found".into(), policy_string: vec![], mx_host: vec![] };
            report_failure(ctx, domain, &none, failure, None);
        }
    }
    let Some(cached) = found.policy else {
        return Ok(hops);
    };
    let policy = &cached.policy;
    match policy.mode {
        StsMode::None => Ok(hops),
        StsMode::Testing => {
            for hop in hops.hosts.iter_mut() {
                hop.outside_policy = !policy.allows(&hop.name);
            }
            let refused: Vec<&str> = hops.hosts.iter().filter(|h| h.outside_policy).map(|h| h.name.as_str()).collect();
            if refused.is_empty() {
                count("testing", "matched");
            } else {
                count("testing", "mx_mismatch");
                tracing::info!(domain, mx = ?refused, "MTA-STS testing: MX hosts not in the policy (delivered anyway)");
            }
            // A separate site: its sessions check certificates and are reported, unlike opportunistic ones.
            hops.name = format!("{}+mta-sts-testing", hops.name);
            hops.tls = HopTls::Testing;
            hops.policy = Some(sts_desc(policy));
            Ok(hops)
        }
        StsMode::Enforce => {
            let before = hops.hosts.len();
            hops.hosts.retain(|h| policy.allows(&h.name));
            if hops.hosts.is_empty() {
                count("enforce", "mx_mismatch");
                let failure = TlsResultType::ValidationFailure;
                report_failure(ctx, domain, &sts_desc(policy), failure, None);
                let text = format!(
                    "MTA-STS policy of {domain} (id {}) allows none of its {before} MX hosts (mx: {})",
                    cached.id,
                    policy.mx.join(" ")
                );
                let response = Response { tls_failure: Some(failure), ..Response::local(451, (4, 4, 4), text) };
                let tls = TlsSession::refused(PolicySource::MtaSts, failure);
                return Err(Outcome::transient(response).with_tls(Some(tls)));
            }
            count("enforce", "matched");
            // A separate site: its connections must never carry (or be) opportunistic ones.
            hops.name = format!("{}+mta-sts", hops.name);
            hops.tls = HopTls::Verified;
            hops.policy = Some(sts_desc(policy));
            Ok(hops)
        }
    }
}
