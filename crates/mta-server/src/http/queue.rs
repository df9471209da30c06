//! Queue administration: `GET /api/v1/queue`, `POST /api/v1/queue/{domain}/suspend|resume`, and the sender
//! pre-flight results at `GET /api/v1/senders`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mta_core::auth::SenderStatus;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::HttpState;

/// The body of `GET /api/v1/queue`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueSummary<'a> {
    /// One row per (tenant, destination domain).
    pub queues: Vec<QueueEntry<'a>>,
    /// The rows added up.
    pub totals: QueueTotals,
    /// Outbound SMTP connections open now.
    pub connections: usize,
    /// Messages in the spool.
    pub spool_messages: usize,
}

/// One queue in [`QueueSummary`].
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueEntry<'a> {
    /// Destination domain.
    pub domain: &'a str,
    /// Tenant; `null` for mail injected without one.
    pub tenant: Option<&'a str>,
    /// Due now, waiting for a connection.
    pub ready: u64,
    /// Waiting for their next attempt.
    pub scheduled: u64,
    /// Being delivered.
    pub in_flight: u64,
    /// Held because the queue is suspended.
    pub held: u64,
    /// Suspended through `POST /api/v1/queue/{domain}/suspend` or by a `[[response_rule]]`.
    pub suspended: bool,
    /// Why a `[[response_rule]]` suspended it (the rule's action and the reply); `null` otherwise.
    pub suspended_reason: Option<String>,
    /// When that suspension ends by itself (RFC 3339 UTC); `null` when not suspended or until resumed.
    pub suspended_until: Option<String>,
    /// Why a `[[response_rule]]` throttles the domain's site; `null` when not throttled.
    pub throttled_reason: Option<String>,
    /// When that throttle ends (RFC 3339 UTC).
    pub throttled_until: Option<String>,
}

/// The counts of every queue added up.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct QueueTotals {
    /// Due now.
    pub ready: u64,
    /// Waiting for their next attempt.
    pub scheduled: u64,
    /// Being delivered.
    pub in_flight: u64,
    /// Held by suspended queues.
    pub held: u64,
}

/// The body of `POST /api/v1/queue/{domain}/suspend|resume`: the domain's queue as it now is.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueState {
    /// The domain, normalized (lower case, no trailing dot).
    pub domain: String,
    /// Whether its queue is held.
    pub suspended: bool,
}

/// The body of `GET /api/v1/senders`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Senders {
    /// One row per signing domain (empty without DKIM keys).
    pub senders: Vec<SenderStatus>,
}

/// Per-queue counts: one row per (tenant, destination domain).
#[utoipa::path(get, path = "/api/v1/queue", operation_id = "getQueue",
    summary = "Per-queue counts (one row per tenant and destination domain).",
    responses((status = 200, description = "Queues.", body = QueueSummary)))]
pub async fn get_queue(State(state): State<HttpState>) -> Response {
    let delivery = state.inner.engine.delivery();
    let rows = delivery.summary();
    let mut totals = QueueTotals::default();
    let queues = rows
        .iter()
        .map(|r| {
            totals.ready += r.counts.ready;
            totals.scheduled += r.counts.scheduled;
            totals.in_flight += r.counts.in_flight;
            totals.held += r.counts.held;
            QueueEntry {
                domain: &r.domain,
                tenant: (!r.tenant.is_empty()).then_some(r.tenant.as_str()),
                ready: r.counts.ready,
                scheduled: r.counts.scheduled,
                in_flight: r.counts.in_flight,
                held: r.counts.held,
                suspended: r.suspended,
                suspended_reason: r.suspended_reason.clone(),
                suspended_until: r.suspended_until_ms.map(mta_core::events::rfc3339_from_ms),
                throttled_reason: r.throttled_reason.clone(),
                throttled_until: r.throttled_until_ms.map(mta_core::events::rfc3339_from_ms),
            }
        })
        .collect();
    let body = QueueSummary {
        queues,
        totals,
        connections: delivery.connections(),
        spool_messages: state.inner.engine.spool().len(),
    };
    Json(body).into_response()
}

pub(super) fn check_domain(domain: &str) -> Result<String, ApiError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.' || c == '[' || c == ']' || c == ':');
    if ok {
        Ok(d)
    } else {
        Err(ApiError::bad_field("invalid_domain", "domain".to_string(), format!("{domain:?} is not a domain")))
    }
}

/// Hold a domain's queue (its due work waits; `max_age` still applies).
#[utoipa::path(post, path = "/api/v1/queue/{domain}/suspend", operation_id = "suspendQueue",
    summary = "Hold a destination domain's queue (`max_age` still applies while held).",
    params(("domain" = String, Path, description = "Destination domain.", max_length = 253)),
    responses(
        (status = 200, description = "Done.", body = QueueState),
        (status = 400, description = "Not a domain (`invalid_domain`).", body = ErrorBody),
    ))]
pub async fn suspend(State(state): State<HttpState>, Path(domain): Path<String>) -> Response {
    match check_domain(&domain) {
        Ok(d) => {
            state.inner.engine.delivery().suspend(&d);
            tracing::info!(domain = %d, "queue suspended");
            Json(QueueState { domain: d, suspended: true }).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Release a domain's queue: held work is dispatched now.
#[utoipa::path(post, path = "/api/v1/queue/{domain}/resume", operation_id = "resumeQueue",
    summary = "Release a destination domain's queue: held work is dispatched now.",
    params(("domain" = String, Path, description = "Destination domain.", max_length = 253)),
    responses(
        (status = 200, description = "Done.", body = QueueState),
        (status = 400, description = "Not a domain (`invalid_domain`).", body = ErrorBody),
    ))]
pub async fn resume(State(state): State<HttpState>, Path(domain): Path<String>) -> Response {
    match check_domain(&domain) {
        Ok(d) => {
            state.inner.engine.delivery().resume(&d);
            tracing::info!(domain = %d, "queue resumed");
            Json(QueueState { domain: d, suspended: false }).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// DKIM/SPF pre-flight result per sending domain.
#[utoipa::path(get, path = "/api/v1/senders", operation_id = "getSenders",
    summary = "DKIM/SPF pre-flight result per sending domain.",
    responses((status = 200, description = "Senders.", body = Senders)))]
pub async fn get_senders(State(state): State<HttpState>) -> Response {
    let senders = state.inner.preflight.as_ref().map(|p| p.statuses()).unwrap_or_default();
    Json(Senders { senders }).into_response()
}
