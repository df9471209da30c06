//! `GET /api/v1/tls/policy/{domain}`: the outbound TLS policy in force for a destination (MTA-STS today).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::queue::check_domain;
use super::HttpState;

/// Where a destination's policy comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PolicySource {
    /// DNSSEC-authenticated DANE TLSA records (RFC 7672) of at least one MX host; takes precedence.
    Dane,
    /// An MTA-STS policy (RFC 8461).
    MtaSts,
    /// No policy: opportunistic TLS.
    None,
}

/// The body of `GET /api/v1/tls/policy/{domain}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TlsPolicyView {
    /// The destination domain.
    pub domain: String,
    /// Where the policy comes from.
    pub source: PolicySource,
    /// The policy's mode (`enforce`, `testing`, `none`); `null` without a policy.
    pub mode: Option<mta_core::tls_policy::StsMode>,
    /// MX host patterns the policy allows (`*.` matches one label); under DANE, the MX hosts with TLSA records.
    pub mx: Vec<String>,
    /// When the cached policy expires (RFC 3339); `null` without a policy.
    pub expires: Option<String>,
    /// The MTA-STS policy id (from the `_mta-sts` TXT record).
    pub id: Option<String>,
    /// Why the last policy fetch failed, when it did.
    pub fetch_error: Option<String>,
}

/// The policy in force for a destination: looked up as delivery would (DNS record, cache, fetch on a new id).
#[utoipa::path(get, path = "/api/v1/tls/policy/{domain}", operation_id = "getTlsPolicy",
    summary = "The outbound TLS policy in force for a destination domain (DANE, else MTA-STS).",
    params(("domain" = String, Path, description = "Destination domain.", max_length = 253)),
    responses(
        (status = 200, description = "The policy (source `none` when there is none).", body = TlsPolicyView),
        (status = 400, description = "Not a domain (`invalid_domain`).", body = ErrorBody),
    ))]
pub async fn get_tls_policy(State(state): State<HttpState>, Path(domain): Path<String>) -> Response {
    let domain = match check_domain(&domain) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let mut view = TlsPolicyView {
        domain: domain.clone(),
        source: PolicySource::None,
        mode: None,
        mx: Vec::new(),
        expires: None,
        id: None,
        fetch_error: None,
    };
    let delivery = state.inner.engine.delivery();
    if let Some((hosts, ttl)) = delivery.dane_hosts(&domain).await {
        view.source = PolicySource::Dane;
        view.mode = Some(mta_core::tls_policy::StsMode::Enforce);
        view.mx = hosts;
        view.expires = (OffsetDateTime::now_utc() + ttl).format(&Rfc3339).ok();
        return Json(view).into_response();
    }
    if let Some(policies) = delivery.tls_policies() {
        let found = policies.lookup(&domain).await;
        view.fetch_error = found.fetch_error;
        if let Some(cached) = found.policy {
            view.source = PolicySource::MtaSts;
            view.mode = Some(cached.policy.mode);
            view.expires = i64::try_from(cached.expires())
                .ok()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .and_then(|t| t.format(&Rfc3339).ok());
            view.id = Some(cached.id);
            view.mx = cached.policy.mx;
        }
    }
    Json(view).into_response()
}
