//! `GET /api/v1/messages/{id}`: the state of each recipient, from the spool record.
//!
//! A message the spool no longer holds (unknown id, or every recipient done and the record removed) is `404`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mta_core::{MessageRecord, QueueId};
use serde_json::{json, Value};

use super::error::ApiError;
use super::HttpState;

/// The handler.
pub async fn get_message(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match lookup(&state, &id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn lookup(state: &HttpState, id: &str) -> Result<Value, ApiError> {
    let not_found = || ApiError::not_found(format!("no message {id:?} in the queue"));
    let queue_id = QueueId::parse(id).ok_or_else(not_found)?;
    let record = state.inner.engine.spool().get(&queue_id).await.map_err(|e| {
        tracing::error!(error = %e, %id, "status lookup failed");
        ApiError::unavailable("spool_unavailable", "the spool could not be read; retry later", 5)
    })?;
    record.map(|r| status_json(&r)).ok_or_else(not_found)
}

/// RFC 3339 UTC of milliseconds since the epoch.
fn rfc3339_ms(ms: u64) -> Value {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// The JSON status of a record.
pub fn status_json(r: &MessageRecord) -> Value {
    let recipients: Vec<Value> = r
        .recipients
        .iter()
        .map(|rc| {
            let schedule = r.schedules.iter().find(|s| s.domain == rc.domain);
            let next = schedule
                .filter(|s| !rc.state.is_final() && s.next_attempt_ms > 0)
                .map_or(Value::Null, |s| rfc3339_ms(s.next_attempt_ms));
            json!({
                "email": rc.address,
                "domain": rc.domain,
                "state": rc.state.as_str(),
                "attempts": rc.attempts,
                "last_reply": rc.last_reply,
                "next_attempt_at": next,
            })
        })
        .collect();
    json!({
        "id": r.id.as_str(),
        "envelope_sender": r.sender,
        "received_at": rfc3339_ms(r.received_at_ms),
        "tenant": r.tenant,
        "pool": r.pool,
        "priority": r.priority,
        "recipients": recipients,
    })
}
