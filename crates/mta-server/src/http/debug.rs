//! `PUT /api/v1/debug/faults`: fault injection for tests, only with `debug.fault_injection = true` (else `404`).
//!
//! Body `{"spool_flush_delay_ms": N, "dns_delay_ms": N}`; 0 clears, an absent field leaves that fault as it is.
//! The DNS delay is added before every query our resolver pool sends upstream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::HttpState;

/// The body of `PUT /api/v1/debug/faults`: the faults to change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultsRequest {
    /// Delay added to every spool flush, ms; 0 clears it.
    #[schema(nullable = false, minimum = 0)]
    pub spool_flush_delay_ms: Option<u64>,
    /// Delay added before every upstream DNS query, ms; 0 clears it.
    #[schema(nullable = false, minimum = 0)]
    pub dns_delay_ms: Option<u64>,
}

impl FaultsRequest {
    /// Check a body. Parsed by hand, not by serde, so each refusal names its field and code.
    fn parse(body: &[u8]) -> Result<FaultsRequest, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
        let Some(obj) = value.as_object() else {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object"));
        };
        let mut request = FaultsRequest::default();
        for (key, v) in obj {
            let Some(ms) = v.as_u64() else {
                return Err(ApiError::bad_field("invalid_field", key.clone(), "a non-negative number of milliseconds"));
            };
            match key.as_str() {
                "spool_flush_delay_ms" => request.spool_flush_delay_ms = Some(ms),
                "dns_delay_ms" => request.dns_delay_ms = Some(ms),
                _ => return Err(ApiError::bad_field("unknown_field", key.clone(), format!("unknown fault {key}"))),
            }
        }
        Ok(request)
    }
}

/// The faults now set (the answer of `PUT /api/v1/debug/faults`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Faults {
    /// Delay added to every spool flush, ms.
    pub spool_flush_delay_ms: u64,
    /// Delay added before every upstream DNS query, ms.
    pub dns_delay_ms: u64,
}

/// The handler.
#[utoipa::path(put, path = "/api/v1/debug/faults", operation_id = "setFaults",
    summary = "Fault injection for tests; only with `debug.fault_injection = true`, else 404.",
    request_body(content = FaultsRequest, description = "The faults to change; an absent one is left as it is."),
    responses(
        (status = 200, description = "The faults now set.", body = Faults),
        (status = 400, description = "Invalid body (`invalid_json`, `invalid_field`, `unknown_field`).", body = ErrorBody),
        (status = 404, description = "Fault injection is disabled.", body = ErrorBody),
    ))]
pub async fn put_faults(State(state): State<HttpState>, body: Bytes) -> Response {
    if !state.inner.fault_injection {
        return ApiError::not_found("fault injection is disabled (debug.fault_injection)").into_response();
    }
    let request = match FaultsRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let faults = &state.inner.faults;
    if let Some(ms) = request.spool_flush_delay_ms {
        state.inner.engine.spool().set_flush_delay(Duration::from_millis(ms));
        faults.spool_flush_delay_ms.store(ms, Ordering::Relaxed);
        tracing::warn!(fault = "spool_flush_delay_ms", ms, "fault injection set");
    }
    if let Some(ms) = request.dns_delay_ms {
        state.inner.engine.resolver().set_delay(Duration::from_millis(ms));
        faults.dns_delay_ms.store(ms, Ordering::Relaxed);
        tracing::warn!(fault = "dns_delay_ms", ms, "fault injection set");
    }
    Json(Faults {
        spool_flush_delay_ms: faults.spool_flush_delay_ms.load(Ordering::Relaxed),
        dns_delay_ms: faults.dns_delay_ms.load(Ordering::Relaxed),
    })
    .into_response()
}
