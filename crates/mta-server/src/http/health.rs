//! Health and metrics: `GET /health/live`, `GET /health/ready` (load balancers; no key),
//! `GET /api/v1/health` (every back-pressure signal with its value and marks) and `GET /metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mta_core::backpressure::{Snapshot, State as HealthState};
use serde::Serialize;
use utoipa::ToSchema;

use super::HttpState;

/// The body of `GET /health/live`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    /// Always `alive`: an answer at all is the signal.
    pub state: LiveState,
}

/// The one state `GET /health/live` reports.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LiveState {
    /// The event loop answers.
    Alive,
}

/// The body of `GET /health/ready`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Health)]
pub struct Readiness {
    /// `healthy` or `degraded` (200), `shedding` (503).
    pub state: HealthState,
    /// Present when degraded or shedding: the signals above their marks (or `shutting down`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reasons: Option<Vec<String>>,
}

/// The body of `GET /api/v1/health`: the monitor's snapshot and whether the node takes new work.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDetail<'a> {
    /// State, reasons, every signal with its value and marks.
    #[serde(flatten)]
    pub snapshot: &'a Snapshot,
    /// False while stopping.
    pub accepting: bool,
    /// What a refused client is told to wait, seconds.
    pub retry_after_secs: u64,
    /// Every event export endpoint's state (never a reason to shed intake: the outbox absorbs an outage).
    pub export: Vec<ExportHealth>,
}

/// One export endpoint in `GET /api/v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportHealth {
    /// The endpoint's name (`[[webhook]] name`).
    pub name: String,
    /// `ok` (last request succeeded), `retrying` (failing for less than 5 minutes) or `failing`.
    pub state: ExportState,
    /// Seconds since every request started failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub failing_for_secs: Option<u64>,
    /// The last failure, while failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_error: Option<String>,
}

/// An export endpoint's state.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportState {
    /// The last request succeeded.
    Ok,
    /// Failing, for less than 5 minutes.
    Retrying,
    /// Every request has failed for 5 minutes or more.
    Failing,
}

/// `GET /health/live`.
#[utoipa::path(get, path = "/health/live", operation_id = "live",
    summary = "200 while the process makes progress.",
    responses((status = 200, description = "Alive.", body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { state: LiveState::Alive })
}

/// `GET /health/ready`.
#[utoipa::path(get, path = "/health/ready", operation_id = "ready",
    summary = "Readiness for load balancers.",
    description = "200 `{\"state\":\"healthy\"}` or `degraded` with reasons; 503 `shedding` with reasons (also while stopping).",
    responses(
        (status = 200, description = "Serving.", body = Readiness),
        (status = 503, description = "Shedding load or stopping.", body = Readiness,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn ready(State(state): State<HttpState>) -> Response {
    let inner = &state.inner;
    let retry_after = inner.backpressure.retry_after().as_secs().max(1);
    let shedding = |reasons: Vec<String>| {
        let body = Readiness { state: HealthState::Shedding, reasons: Some(reasons) };
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        response
    };
    if !inner.engine.is_accepting() || inner.draining.load(Ordering::SeqCst) {
        return shedding(vec!["shutting down".to_string()]);
    }
    match inner.backpressure.state() {
        HealthState::Healthy => Json(Readiness { state: HealthState::Healthy, reasons: None }).into_response(),
        HealthState::Degraded => {
            let reasons = inner.backpressure.snapshot().reasons.clone();
            Json(Readiness { state: HealthState::Degraded, reasons: Some(reasons) }).into_response()
        }
        HealthState::Shedding => shedding(inner.backpressure.snapshot().reasons.clone()),
    }
}

/// `GET /api/v1/health`.
#[utoipa::path(get, path = "/api/v1/health", operation_id = "getHealth",
    summary = "Back-pressure state and every signal (value over the window, high and low marks).",
    description = "States `healthy → degraded → shedding`. High marks enter a state, low marks (high × `low_mark_ratio`) leave it after `min_dwell_secs`. A signal whose window holds no evidence (no DNS query, ...) has `value: null`.",
    responses((status = 200, description = "Current health.", body = HealthDetail)))]
pub async fn health(State(state): State<HttpState>) -> Response {
    let inner = &state.inner;
    let snapshot = inner.backpressure.snapshot();
    let body = HealthDetail {
        snapshot: &snapshot,
        accepting: inner.engine.is_accepting() && !inner.draining.load(Ordering::SeqCst),
        retry_after_secs: inner.backpressure.retry_after().as_secs(),
        export: inner.engine.exporters().status().into_iter().map(export_health).collect(),
    };
    Json(body).into_response()
}

fn export_health(s: mta_core::export::EndpointStatus) -> ExportHealth {
    let state = match s.failing_for {
        None => ExportState::Ok,
        Some(d) if d >= mta_core::export::FAILING_AFTER => ExportState::Failing,
        Some(_) => ExportState::Retrying,
    };
    ExportHealth { name: s.name, state, failing_for_secs: s.failing_for.map(|d| d.as_secs()), last_error: s.last_error }
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics",
    summary = "Prometheus text format.",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain")))]
pub async fn metrics_text(State(state): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.inner.prometheus.render()).into_response()
}
