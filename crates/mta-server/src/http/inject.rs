//! `POST /api/v1/messages`: check everything, then inject through the engine (same reception processing and
//! group commit as SMTP) and answer `202 {"id", "recipients"}` once the message is durable.
//!
//! Order of checks, all before the spool is touched: accepting and back-pressure (`503` + `Retry-After`),
//! `Content-Type: application/json`
//! (`415`), body size (`413`), `Idempotency-Key` form (`400`), JSON (`400 invalid_json`), request fields
//! (`400` naming the field), content (raw or structured, `400`), envelope and size via
//! [`mta_core::Engine::validate`] (`400`/`413`). Then the idempotency key (`409` in flight, `422` other body,
//! replay), then the commit.
//!
//! Too many recipients is `400 too_many_recipients` (field `recipients`): the request is wrong, not its size.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use mta_core::{Injection, Priority, Protocol};
use serde_json::{json, Map, Value};

use super::auth::Caller;
use super::content::{normalize_raw, Structured};
use super::error::ApiError;
use super::idempotency::{self, Idempotency, StoredAnswer};
use super::{now_ms, HttpState};

/// Longest tenant or pool name.
const MAX_NAME: usize = 64;

/// A checked inject request.
#[derive(Debug)]
struct Request {
    sender: String,
    recipients: Vec<String>,
    content: Vec<u8>,
    tenant: Option<String>,
    pool: Option<String>,
    priority: Priority,
}

/// The handler.
pub async fn post_message(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = inject(&state, &caller, &headers, body).await;
    metrics::histogram!("mta_http_inject_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn inject(state: &HttpState, caller: &Caller, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let engine = &state.inner.engine;
    let counted = super::Injecting::start(&state.inner);
    if counted.is_none() || !engine.is_accepting() {
        return Err(ApiError::unavailable("shutting_down", "the node is stopping; retry elsewhere", 5));
    }
    // Back-pressure: shedding refuses every new injection, degraded caps those in flight (this one counted).
    let in_flight = state.inner.injecting.load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = state.inner.backpressure.check_http_injection(in_flight) {
        metrics::counter!("mta_http_backpressure_refusals_total").increment(1);
        let retry_after = e.retry_after().as_secs().max(1);
        return Err(ApiError::unavailable("overloaded", mta_core::InjectError::from(e).to_string(), retry_after));
    }
    check_content_type(headers)?;
    let bytes = read_body(body, state.inner.max_body).await?;
    let idem_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().ok().filter(|k| idempotency::valid_key(k)) {
            Some(k) => Some(k.to_string()),
            None => {
                return Err(ApiError::bad_field(
                    "invalid_idempotency_key",
                    "Idempotency-Key",
                    format!("Idempotency-Key must be 1 to {} printable ASCII characters", idempotency::MAX_KEY_LEN),
                ))
            }
        },
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let request = parse_request(&value, &engine.config().hostname)?;
    engine.validate(&request.sender, &request.recipients, request.content.len() as u64)?;

    let Some(key) = idem_key else {
        let accepted =
            engine.inject_with(injection(request, caller, state.inner.tls.is_some()), |_| Vec::new()).await?;
        return Ok(accepted_response(json!({"id": accepted.id.as_str(), "recipients": accepted.recipients})));
    };
    let aux_key = idempotency::aux_key(&caller.label, &key);
    let table: &Idempotency = &state.inner.idempotency;
    let Some(_in_flight) = table.begin(&aux_key) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still in flight",
        ));
    };
    let request_sha256 = idempotency::fingerprint(&value);
    let now = now_ms();
    let stored = table.lookup(&aux_key, now).await.map_err(|e| {
        tracing::error!(error = %e, "idempotency lookup failed");
        ApiError::unavailable("spool_unavailable", "the idempotency table could not be read; retry later", 5)
    })?;
    if let Some(answer) = stored {
        if answer.request_sha256 != request_sha256 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        metrics::counter!("mta_http_idempotent_replays_total").increment(1);
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::ACCEPTED);
        let mut response = (status, Json(answer.response_body)).into_response();
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    let count = request.recipients.len();
    let accepted = engine
        .inject_with(injection(request, caller, state.inner.tls.is_some()), |id| {
            let answer = StoredAnswer {
                request_sha256,
                status: StatusCode::ACCEPTED.as_u16(),
                response_body: json!({"id": id.as_str(), "recipients": count}),
                created_ms: now,
            };
            vec![Idempotency::record_op(aux_key.clone(), &answer)]
        })
        .await?;
    Ok(accepted_response(json!({"id": accepted.id.as_str(), "recipients": accepted.recipients})))
}

fn accepted_response(body: Value) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn injection(request: Request, caller: &Caller, tls: bool) -> Injection {
    let mut inj = Injection::new(request.sender, request.recipients, Bytes::from(request.content));
    inj.tenant = request.tenant;
    inj.pool = request.pool;
    inj.priority = request.priority;
    inj.protocol = Protocol::Http { tls };
    inj.peer = Some(caller.ip);
    inj.auth_user = Some(caller.label.clone());
    inj
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ))
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("cannot read the body: {e}"))),
    }
}

fn opt_name(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= MAX_NAME
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::bad_field(
            "invalid_field",
            field,
            format!("{field} must be 1 to {MAX_NAME} characters of letters, digits, '.', '-', '_'"),
        )),
    }
}

fn parse_request(value: &Value, hostname: &str) -> Result<Request, ApiError> {
    let Some(obj) = value.as_object() else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object"));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "envelope_sender" | "recipients" | "content" | "tenant" | "pool" | "priority") {
            return Err(ApiError::bad_field("unknown_field", key.clone(), format!("unknown field {key}")));
        }
    }
    let recipients = match obj.get("recipients") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) if o.len() == 1 && o.get("email").is_some_and(Value::is_string) => {
                    Ok(o["email"].as_str().unwrap_or_default().to_string())
                }
                _ => Err(ApiError::bad_field(
                    "invalid_recipient",
                    format!("recipients[{i}]"),
                    "a recipient is an address string or {\"email\": address}",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ApiError::bad_field("invalid_field", "recipients", "recipients must be an array")),
        None => return Err(ApiError::bad_field("missing_field", "recipients", "recipients is required")),
    };
    let (content, default_sender) = match obj.get("content") {
        Some(Value::String(raw)) => (normalize_raw(raw)?, None),
        Some(Value::Object(o)) => {
            let s = Structured::parse(o)?;
            let from = s.author_address().to_string();
            (s.build(hostname)?, Some(from))
        }
        Some(_) => {
            return Err(ApiError::bad_field("invalid_content", "content", "content must be a string or an object"))
        }
        None => return Err(ApiError::bad_field("missing_field", "content", "content is required")),
    };
    let sender = match (obj.get("envelope_sender"), default_sender) {
        (Some(Value::String(s)), _) => s.clone(),
        (None | Some(Value::Null), Some(from)) => from,
        (None | Some(Value::Null), None) => {
            return Err(ApiError::bad_field(
                "missing_field",
                "envelope_sender",
                "envelope_sender is required with raw content (\"\" is the null sender)",
            ))
        }
        (Some(_), _) => {
            return Err(ApiError::bad_field("invalid_sender", "envelope_sender", "envelope_sender must be a string"))
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => Priority::default(),
        Some(Value::String(p)) if p == "transactional" => Priority::Transactional,
        Some(Value::String(p)) if p == "bulk" => Priority::Bulk,
        Some(_) => {
            return Err(ApiError::bad_field("invalid_field", "priority", "priority is \"transactional\" or \"bulk\""))
        }
    };
    Ok(Request {
        sender,
        recipients,
        content,
        tenant: opt_name(obj, "tenant")?,
        pool: opt_name(obj, "pool")?,
        priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_are_checked_with_their_names() {
        let parse = |v: Value| parse_request(&v, "mx.example");
        let ok = parse(json!({
            "envelope_sender": "b@s.example",
            "recipients": ["a@d.example", {"email": "c@d.example"}],
            "content": "Subject: x\n\nhi",
            "tenant": "acme", "priority": "transactional"
        }))
        .unwrap();
        assert_eq!(ok.recipients, ["a@d.example", "c@d.example"]);
        assert_eq!(ok.priority, Priority::Transactional);
        assert_eq!(ok.content, b"Subject: x\r\n\r\nhi\r\n");
        let e = parse(json!({"envelope_sender": "", "recipients": ["a@d.example", 5], "content": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("recipients[1]"));
        let e = parse(json!({"recipients": [], "content": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("envelope_sender"));
        let e = parse(json!({"envelope_sender": "", "recipients": [], "content": "x", "extra": 1})).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        let e =
            parse(json!({"envelope_sender": "", "recipients": [], "content": "x", "priority": "urgent"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("priority"));
        let s = parse(json!({"recipients": ["a@d.example"], "content": {"from": "F <f@s.example>"}})).unwrap();
        assert_eq!(s.sender, "f@s.example");
    }
}
