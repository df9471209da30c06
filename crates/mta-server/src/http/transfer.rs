//! Queue transfer routes: `POST /api/v1/queue/transfer` (start moving queued mail to a peer),
//! `GET /api/v1/queue/transfer/{transfer_id}` (its progress) and `POST /api/v1/queue/import` (the peer's side:
//! take in moved messages, answer once they are durable).

use axum::body::{Body, HttpBody};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mta_core::transfer::TransferError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::queue::check_domain;
use super::HttpState;
use crate::transfer::wire::{self, ImportRequest, ImportResponse, ImportResult, MAX_IMPORT_MESSAGES};
use crate::transfer::{StartError, TransferRequest, TransferStatus};

/// Smallest cap on an import body, whatever `smtp.max_message_size` is: room for a full batch of the source.
const MIN_IMPORT_BODY: usize = 16 << 20;

/// `POST /api/v1/queue/transfer` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartTransfer {
    /// The peer's API base URL, `http://host:port`.
    #[schema(max_length = 2048)]
    pub to: String,
    /// An API key of the peer.
    #[schema(max_length = 4096)]
    pub token: String,
    /// Only this destination domain's recipients move; none = everything.
    #[serde(default)]
    #[schema(max_length = 253)]
    pub domain: Option<String>,
}

/// `202` answer of `POST /api/v1/queue/transfer`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferStarted {
    /// Follow it at `GET /api/v1/queue/transfer/{transfer_id}`.
    pub transfer_id: String,
}

fn json_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("invalid JSON: {e}"))
}

/// Start moving queued messages to a peer.
#[utoipa::path(post, path = "/api/v1/queue/transfer", operation_id = "startTransfer",
    summary = "Move queued messages (all, or one destination domain) to a peer node over its HTTP API.",
    description = "Runs in the background. Each message keeps its envelope, stored bytes, pending recipients, tenant, priority, attempts and first reception time; it leaves this node only after the peer answered that it is durable there. An interrupted or repeated transfer never duplicates a message on the peer (the queue id is the idempotency key). Messages being delivered at the moment are taken by a later pass.",
    request_body(content = StartTransfer, content_type = "application/json"),
    responses(
        (status = 202, description = "Started.", body = TransferStarted),
        (status = 400, description = "Invalid JSON (`invalid_json`), peer URL (`invalid_peer`) or domain (`invalid_domain`).", body = ErrorBody),
        (status = 409, description = "A transfer is already running (`transfer_running`).", body = ErrorBody),
        (status = 503, description = "Shutting down (`shutting_down`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn start_transfer(State(state): State<HttpState>, body: Body) -> Response {
    let result = async {
        let (bytes, _charge) = state.inner.bodies.read(body, 64 << 10).await?;
        let req: StartTransfer = serde_json::from_slice(&bytes).map_err(json_error)?;
        let domain = match req.domain.as_deref() {
            Some(d) => Some(check_domain(d)?),
            None => None,
        };
        if !state.inner.engine.is_accepting() {
            return Err(ApiError::unavailable("shutting_down", "the node is stopping", 5));
        }
        let req = TransferRequest { to: req.to, token: req.token, domain };
        match state.inner.transfers.start(state.inner.engine.clone(), req) {
            Ok(transfer_id) => Ok((StatusCode::ACCEPTED, Json(TransferStarted { transfer_id })).into_response()),
            Err(StartError::Running(id)) => {
                Err(ApiError::new(StatusCode::CONFLICT, "transfer_running", format!("transfer {id} is still running")))
            }
            Err(StartError::Peer(e)) => Err(ApiError::bad_field("invalid_peer", "to", e.to_string())),
        }
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

/// A transfer's progress.
#[utoipa::path(get, path = "/api/v1/queue/transfer/{transfer_id}", operation_id = "getTransfer",
    summary = "Progress of a queue transfer started on this node (kept until the node restarts).",
    params(("transfer_id" = String, Path, description = "From `POST /api/v1/queue/transfer`.", max_length = 64)),
    responses(
        (status = 200, description = "Progress.", body = TransferStatus),
        (status = 404, description = "No such transfer (`not_found`).", body = ErrorBody),
    ))]
pub async fn get_transfer(State(state): State<HttpState>, Path(transfer_id): Path<String>) -> Response {
    match state.inner.transfers.status(&transfer_id) {
        Some(s) => Json(s).into_response(),
        None => ApiError::not_found(format!("no transfer {transfer_id:?}")).into_response(),
    }
}

/// Take in messages moved from another node.
#[utoipa::path(post, path = "/api/v1/queue/import", operation_id = "importMessages",
    summary = "Take in queued messages moved from another node (the receiving side of a queue transfer).",
    description = "Up to 1,000 messages per request; the answer comes only after every stored message is durable. The source queue id is the idempotency key: a message taken in before (even if delivered and gone since) is answered `duplicate` and stored nothing. The body is checked whole before anything is stored (400 names the field). Body cap: the larger of 16 MiB and twice `smtp.max_message_size` plus 64 KiB.",
    request_body(content = ImportRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Durable here (or taken in before).", body = ImportResponse),
        (status = 400, description = "Invalid JSON (`invalid_json`) or message (`invalid_message`, `invalid_sender`, `invalid_recipient`, `too_many_messages`), with `field`.", body = ErrorBody),
        (status = 413, description = "A message over `smtp.max_message_size`, or the body over its cap (`too_large`).", body = ErrorBody),
        (status = 503, description = "Shutting down (`shutting_down`), shedding (`overloaded`) or the spool failed (`spool_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn import(State(state): State<HttpState>, body: Body) -> Response {
    let cap = state.inner.max_body.max(MIN_IMPORT_BODY);
    if body.size_hint().lower() > cap as u64 {
        return super::body::too_large(cap).into_response();
    }
    import_inner(&state, body, cap).await.unwrap_or_else(|e| e.into_response())
}

async fn import_inner(state: &HttpState, body: Body, cap: usize) -> Result<Response, ApiError> {
    let engine = &state.inner.engine;
    let counted = super::Injecting::start(&state.inner);
    if counted.is_none() || !engine.is_accepting() {
        return Err(ApiError::unavailable("shutting_down", "the node is stopping; retry elsewhere", 5));
    }
    if state.inner.backpressure.check_new_work().is_err() {
        return Err(ApiError::unavailable("overloaded", "the node is shedding load; retry later", 5));
    }
    let (bytes, _charge) = state.inner.bodies.read(body, cap).await?;
    // Decoding a few MiB of JSON and base64 is CPU work: off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        let req: ImportRequest = serde_json::from_slice(&bytes).map_err(json_error)?;
        if req.messages.len() > MAX_IMPORT_MESSAGES {
            return Err(ApiError::bad_field(
                "too_many_messages",
                "messages",
                format!("at most {MAX_IMPORT_MESSAGES} messages per request"),
            ));
        }
        req.messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                wire::from_wire(m)
                    .map_err(|(f, msg)| ApiError::bad_field("invalid_message", format!("messages[{i}].{f}"), msg))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    for (i, a) in parsed.iter().enumerate() {
        engine
            .validate(&a.record.sender, &wire::recipients_of(&a.record), a.body.len() as u64)
            .map_err(|e| ApiError::from(e).with_field(format!("messages[{i}]")))?;
    }
    let ids: Vec<String> = parsed.iter().map(|a| a.source_id.to_string()).collect();
    let outcomes = engine.import(parsed).await.map_err(|e| match e {
        TransferError::ShuttingDown => ApiError::unavailable("shutting_down", "the node is stopping", 5),
        e => {
            tracing::error!(error = %e, "queue import failed");
            ApiError::unavailable("spool_unavailable", format!("could not store the messages: {e}"), 5)
        }
    })?;
    let results = ids.into_iter().zip(outcomes).map(|(id, o)| ImportResult::new(id, o)).collect();
    Ok(Json(ImportResponse { results }).into_response())
}
