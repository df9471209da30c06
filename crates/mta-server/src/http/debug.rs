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
use serde_json::{json, Value};

use super::error::ApiError;
use super::HttpState;

/// The handler.
pub async fn put_faults(State(state): State<HttpState>, body: Bytes) -> Response {
    if !state.inner.fault_injection {
        return ApiError::not_found("fault injection is disabled (debug.fault_injection)").into_response();
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()).into_response(),
    };
    let Some(obj) = value.as_object() else {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object")
            .into_response();
    };
    let mut fields = Vec::new();
    for (key, v) in obj {
        let Some(ms) = v.as_u64() else {
            return ApiError::bad_field("invalid_field", key.clone(), "a non-negative number of milliseconds")
                .into_response();
        };
        match key.as_str() {
            "spool_flush_delay_ms" | "dns_delay_ms" => fields.push((key.as_str(), ms)),
            _ => {
                return ApiError::bad_field("unknown_field", key.clone(), format!("unknown fault {key}"))
                    .into_response()
            }
        }
    }
    for (key, ms) in fields {
        if key == "spool_flush_delay_ms" {
            state.inner.engine.spool().set_flush_delay(Duration::from_millis(ms));
            state.inner.faults.spool_flush_delay_ms.store(ms, Ordering::Relaxed);
        } else {
            state.inner.engine.resolver().set_delay(Duration::from_millis(ms));
            state.inner.faults.dns_delay_ms.store(ms, Ordering::Relaxed);
        }
        tracing::warn!(fault = key, ms, "fault injection set");
    }
    Json(json!({
        "spool_flush_delay_ms": state.inner.faults.spool_flush_delay_ms.load(Ordering::Relaxed),
        "dns_delay_ms": state.inner.faults.dns_delay_ms.load(Ordering::Relaxed),
    }))
    .into_response()
}
