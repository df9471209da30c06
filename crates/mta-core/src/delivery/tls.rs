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
use crate::dns::Resolver;
use crate::tls_policy::{self, Fetcher, MtaStsSetting, StsMode, TlsPolicies};
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

fn count(mode: &'static str, result: &'static str) {
    metrics::counter!("mta_tls_policy_total", "source" => "mta-sts", "mode" => mode, "result" => result).increment(1);
}

/// `hops` as the policy of `domain` allows them.
pub(crate) async fn apply(ctx: &Context, domain: &str, mut hops: NextHops) -> Result<NextHops, Outcome> {
    let Some(policies) = &ctx.policies else {
        return Ok(hops);
    };
    let found = policies.lookup(domain).await;
    if found.fetch_error.is_some() {
        count("none", "fetch_error");
    }
    let Some(cached) = found.policy else {
        return Ok(hops);
    };
    let policy = &cached.policy;
    match policy.mode {
        StsMode::None => Ok(hops),
        StsMode::Testing => {
            let refused: Vec<&str> = hops.hosts.iter().map(|h| h.name.as_str()).filter(|h| !policy.allows(h)).collect();
            if refused.is_empty() {
                count("testing", "matched");
            } else {
                count("testing", "mx_mismatch");
                tracing::info!(domain, mx = ?refused, "MTA-STS testing: MX hosts not in the policy (delivered anyway)");
            }
            Ok(hops)
        }
        StsMode::Enforce => {
            let before = hops.hosts.len();
            hops.hosts.retain(|h| policy.allows(&h.name));
            if hops.hosts.is_empty() {
                count("enforce", "mx_mismatch");
                let text = format!(
                    "MTA-STS policy of {domain} (id {}) allows none of its {before} MX hosts (mx: {})",
                    cached.id,
                    policy.mx.join(" ")
                );
                let response = Response::local(451, (4, 4, 4), text);
                let tls_failure = Some(tls_policy::TlsResultType::ValidationFailure);
                return Err(Outcome::transient(Response { tls_failure, ..response }));
            }
            count("enforce", "matched");
            // A separate site: its connections must never carry (or be) opportunistic ones.
            hops.name = format!("{}+mta-sts", hops.name);
            hops.tls = HopTls::Verified;
            Ok(hops)
        }
    }
}
