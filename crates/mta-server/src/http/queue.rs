//! Queue administration: `GET /api/v1/queue`, `POST /api/v1/queue/{domain}/suspend|resume`, and the sender
//! pre-flight results at `GET /api/v1/senders`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::HttpState;

/// Per-queue counts: one row per (tenant, destination domain).
pub async fn get_queue(State(state): State<HttpState>) -> Response {
    let delivery = state.inner.engine.delivery();
    let rows = delivery.summary();
    let mut totals = (0u64, 0u64, 0u64, 0u64);
    let queues: Vec<_> = rows
        .iter()
        .map(|r| {
            totals.0 += r.counts.ready;
            totals.1 += r.counts.scheduled;
            totals.2 += r.counts.in_flight;
            totals.3 += r.counts.held;
            json!({
                "domain": r.domain,
                "tenant": if r.tenant.is_empty() { None } else { Some(&r.tenant) },
                "ready": r.counts.ready,
                "scheduled": r.counts.scheduled,
                "in_flight": r.counts.in_flight,
                "held": r.counts.held,
                "suspended": r.suspended,
            })
        })
        .collect();
    Json(json!({
        "queues": queues,
        "totals": {"ready": totals.0, "scheduled": totals.1, "in_flight": totals.2, "held": totals.3},
        "connections": delivery.connections(),
        "spool_messages": state.inner.engine.spool().len(),
    }))
    .into_response()
}

fn check_domain(domain: &str) -> Result<String, ApiError> {
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
pub async fn suspend(State(state): State<HttpState>, Path(domain): Path<String>) -> Response {
    match check_domain(&domain) {
        Ok(d) => {
            state.inner.engine.delivery().suspend(&d);
            tracing::info!(domain = %d, "queue suspended");
            Json(json!({"domain": d, "suspended": true})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Release a domain's queue: held work is dispatched now.
pub async fn resume(State(state): State<HttpState>, Path(domain): Path<String>) -> Response {
    match check_domain(&domain) {
        Ok(d) => {
            state.inner.engine.delivery().resume(&d);
            tracing::info!(domain = %d, "queue resumed");
            Json(json!({"domain": d, "suspended": false})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// DKIM/SPF pre-flight result per sending domain.
pub async fn get_senders(State(state): State<HttpState>) -> Response {
    let senders = state.inner.preflight.as_ref().map(|p| p.statuses()).unwrap_or_default();
    Json(json!({ "senders": senders })).into_response()
}
