//! `POST /api/v1/messages`: check everything, then inject through the engine (same reception processing and
//! group commit as SMTP) and answer `202 {"id", "recipients"}` once the message is durable.
//!
//! Order of checks, all before the spool is touched: announced body size (`413`, before a byte of the body is
//! read, and before anything that could say "retry": such a request can never succeed), accepting and
//! back-pressure (`503` + `Retry-After`), `Content-Type: application/json` (`415`), `Idempotency-Key` form
//! (`400`), then the body is read under the request body memory budget ([`super::body`]:
//! `503` + `Retry-After` when it stays exhausted, `413` as soon as a chunked body passes the cap), JSON
//! (`400 invalid_json`), request fields (`400` naming the field), content (raw or structured, `400`), envelope
//! and size via [`mta_core::Engine::validate`] (`400`/`413`). Then the idempotency key (`409` in flight, `422`
//! other body, replay), then the commit. A refusal made before a body (over 16 KiB, or chunked) was read
//! closes the connection.
//!
//! A large body is parsed (and structured content built) in a [`mta_core::cpu_pool`], one thread per CPU below the
//! async workers' priority, so they keep serving health checks and other connections meanwhile.
//!
//! Too many recipients is `400 too_many_recipients` (field `recipients`): the request is wrong, not its size.

use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use mta_core::{Injection, Protocol};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::idempotency::{self, Idempotency, StoredAnswer};
use super::inject_schema::InjectRequest;
use super::request::{self, Parsed, Request};
use super::{body, now_ms, HttpState};
use mta_core::cpu_pool::PoolError;

/// Bodies up to this size are parsed on the async worker: tens of microseconds at most, about what the round
/// trip to the parse pool (a channel send and a thread wake-up each way) costs anyway.
const INLINE_PARSE_MAX: usize = 64 << 10;
/// An unread body up to this size does not close the connection when a request is refused.
const SMALL_BODY: u64 = 16 << 10;

/// The answer of an injection: the message is durable in the spool.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Queue id (for `GET /api/v1/messages/{id}`).
    pub id: String,
    /// Recipients accepted.
    pub recipients: usize,
    /// Recipients not queued because they are on the suppression list (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<String>,
}

/// The handler.
#[utoipa::path(post, path = "/api/v1/messages", operation_id = "injectMessage",
    summary = "Inject one message; 202 only after it is durable in the spool.",
    description = "Raw `content` may use LF line ends: a lone LF is converted to CRLF; a bare CR is refused (`bare_cr`), as are lines over 998 octets (`line_too_long`). Structured `content` is built into MIME with Message-ID and Date. Everything is validated before the spool is touched. Too many recipients (over `smtp.max_recipients`) is 400 `too_many_recipients`; a message over `smtp.max_message_size` is 413 `too_large`. A body over the cap (twice `smtp.max_message_size` plus 64 KiB) is 413 `too_large` with `Connection: close`: before any of it is read when `Content-Length` announces it (send `Expect: 100-continue` to see the 413 before sending the body), as soon as the cap is passed for a chunked body. Bodies in flight share a memory budget (`http.max_body_memory`): past `http.body_memory_wait` the answer is 503 `body_memory_exhausted` with `Retry-After`.",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, max_length = 255,
        description = "1-255 printable ASCII characters, scoped per API key. The same key within 24 h replays the first answer (header `Idempotent-Replayed: true`) and queues nothing; 409 while the first request is in flight; 422 with a different body.")),
    request_body(content = InjectRequest, content_type = "application/json",
        description = "Raw (`content` a string) or structured (`content` an object) message, envelope and options."),
    responses(
        (status = 202, description = "Durable in the spool; recipients on the suppression list are left out and named in `suppressed`.", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replayed answer."))),
        (status = 400, description = "Invalid JSON (`invalid_json`), field (`invalid_sender`, `invalid_recipient` with `field` = `recipients[N]`, `too_many_recipients`, `no_recipients`, `missing_field`, `unknown_field`, `invalid_field`), content (`header_injection`, `invalid_header`, `bare_cr`, `line_too_long`, `invalid_content`) or Idempotency-Key (`invalid_idempotency_key`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`body_timeout`): 30 s without a byte, or longer in all than 60 s plus 1 s per MiB.", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still in flight (`idempotency_key_in_use`).", body = ErrorBody),
        (status = 413, description = "Message larger than `smtp.max_message_size` or body too large (`too_large`, with `Connection: close`).", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json (`unsupported_media_type`).", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different body (`idempotency_key_reused`), or every recipient is on the suppression list (`all_recipients_suppressed`).", body = ErrorBody),
        (status = 500, description = "The request could not be parsed (`internal`).", body = ErrorBody),
        (status = 503, description = "Shutting down (`shutting_down`), overloaded (`overloaded`: back-pressure; `body_memory_exhausted`: request body memory budget) or spool unavailable (`spool_unavailable`); retry later or elsewhere.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn post_message(
    State(state): State<HttpState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // A small announced body left unread is drained by hyper, which keeps the connection; a larger or
    // chunked one is not read on our behalf: say that the connection closes.
    let small = body.size_hint().exact().is_some_and(|n| n <= SMALL_BODY);
    let mut body_read = false;
    let result = inject(&state, &caller, &headers, body, &mut body_read).await;
    metrics::histogram!("mta_http_inject_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => response,
        Err(e) if !body_read && !small => e.close_connection().into_response(),
        Err(e) => e.into_response(),
    }
}

async fn inject(
    state: &HttpState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    body_read: &mut bool,
) -> Result<Response, ApiError> {
    let cap = state.inner.max_body;
    if body.size_hint().lower() > cap as u64 {
        metrics::counter!("mta_http_body_too_large_total", "when" => "announced").increment(1);
        return Err(body::too_large(cap));
    }
    let engine = &state.inner.engine;
    let counted = super::Injecting::start(&state.inner);
    if counted.is_none() || !engine.is_accepting() {
        return Err(ApiError::unavailable("shutting_down", "the node is stopping; retry elsewhere", 5));
    }
    // Back-pressure: shedding refuses every new injection, degraded caps those in flight (this one counted).
    // A request with an Idempotency-Key is checked after its key is looked up: replaying a stored answer is
    // not new work, and a client retrying after a timeout must get its message's id even while we shed.
    if !headers.contains_key("idempotency-key") {
        check_backpressure(state)?;
    }
    check_content_type(headers)?;
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
    // Held until this function returns: by then the body, the parsed request and the engine's copy are gone.
    let (bytes, _charge) = state.inner.bodies.read(body, cap).await.inspect_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            metrics::counter!("mta_http_body_too_large_total", "when" => "streamed").increment(1);
        }
    })?;
    *body_read = true;
    let Parsed { mut request, fingerprint } = parse(state, bytes, idem_key.is_some()).await?;
    engine.validate(&request.sender, &request.recipients, request.content.len() as u64)?;
    // Suppressed recipients (for the message's tenant or every tenant) are not queued (memory only).
    let list = engine.suppressions();
    let suppressed: Vec<String> = if list.is_empty() {
        Vec::new()
    } else {
        let tenant = request.tenant.as_deref();
        let (out, kept) =
            std::mem::take(&mut request.recipients).into_iter().partition(|r| list.is_suppressed(tenant, r));
        request.recipients = kept;
        out
    };
    if !suppressed.is_empty() {
        engine.emit_suppressed(&request.sender, request.tenant.as_deref(), &suppressed, "http").await;
        if request.recipients.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "all_recipients_suppressed",
                format!("every recipient is on the suppression list: {}", suppressed.join(", ")),
            )
            .with_field("recipients"));
        }
    }

    let (Some(key), Some(request_sha256)) = (idem_key, fingerprint) else {
        let accepted =
            engine.inject_with(injection(request, caller, state.inner.tls.is_some()), |_| Vec::new()).await?;
        return Ok(accepted_response(Accepted {
            id: accepted.id.as_str().to_string(),
            recipients: accepted.recipients,
            suppressed,
        }));
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
    check_backpressure(state)?;
    let count = request.recipients.len();
    let accepted = engine
        .inject_with(injection(request, caller, state.inner.tls.is_some()), |id| {
            let answer = StoredAnswer {
                request_sha256,
                status: StatusCode::ACCEPTED.as_u16(),
                // Cannot fail: a string and an integer.
                response_body: serde_json::to_value(Accepted {
                    id: id.as_str().to_string(),
                    recipients: count,
                    suppressed: suppressed.clone(),
                })
                .unwrap_or_default(),
                created_ms: now,
            };
            vec![Idempotency::companion(aux_key.clone(), &answer)]
        })
        .await?;
    Ok(accepted_response(Accepted {
        id: accepted.id.as_str().to_string(),
        recipients: accepted.recipients,
        suppressed,
    }))
}

/// Parse the body (and build structured content): inline when small, else in the parse pool (below the async
/// workers' CPU priority), where the body is also dropped, so freeing a large buffer never stalls a worker.
async fn parse(state: &HttpState, bytes: Vec<u8>, want_fingerprint: bool) -> Result<Parsed, ApiError> {
    let inner = &state.inner;
    let hostname = &inner.engine.config().hostname;
    if bytes.len() <= INLINE_PARSE_MAX {
        return request::parse(&bytes, hostname, want_fingerprint);
    }
    let hostname = hostname.clone();
    match inner.parse_pool.run(inner.parse_wait, move || request::parse(&bytes, &hostname, want_fingerprint)).await {
        Ok(parsed) => parsed,
        Err(PoolError::Busy(_)) => {
            Err(ApiError::unavailable("overloaded", "too many large requests are being parsed", 2))
        }
        Err(e @ PoolError::Failed(_)) => {
            tracing::error!(error = %e, "HTTP injection: parse job failed");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request could not be parsed"))
        }
    }
}

fn accepted_response(body: Accepted) -> Response {
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

/// Shedding refuses every new injection; degraded caps those in flight (this one counted).
fn check_backpressure(state: &HttpState) -> Result<(), ApiError> {
    let in_flight = state.inner.injecting.load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = state.inner.backpressure.check_http_injection(in_flight) {
        metrics::counter!("mta_http_backpressure_refusals_total").increment(1);
        let retry_after = e.retry_after().as_secs().max(1);
        return Err(ApiError::unavailable("overloaded", mta_core::InjectError::from(e).to_string(), retry_after));
    }
    Ok(())
}
