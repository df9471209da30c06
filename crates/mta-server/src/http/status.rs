//! `GET /api/v1/messages/{id}`: the state of each recipient, from the spool record.
//!
//! A finished message (every recipient done, the spool record removed) answers from the message history in the
//! same shape, with final states, while history keeps it (`history.retention`, `history.max_bytes`); an unknown
//! or forgotten id is `404`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mta_core::bounce::Classifier;
use mta_core::history::HistoryRecord;
use mta_core::{MessageRecord, Priority, QueueId, RecipientState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::HttpState;

/// The body of `GET /api/v1/messages/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageStatus {
    /// Queue id.
    pub id: String,
    /// Envelope sender (`""` is the null sender).
    pub envelope_sender: String,
    /// Reception time, RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub received_at: Option<String>,
    /// Tenant given at injection.
    pub tenant: Option<String>,
    /// Egress pool given at injection.
    pub pool: Option<String>,
    /// Dispatch priority.
    pub priority: PriorityName,
    /// One entry per recipient.
    pub recipients: Vec<RecipientStatus>,
}

/// One recipient in [`MessageStatus`].
#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientStatus {
    /// The recipient address.
    pub email: String,
    /// Its domain (the queue it is in).
    pub domain: String,
    /// Where it stands.
    pub state: StateName,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last SMTP reply (or local error) of an attempt.
    pub last_reply: Option<String>,
    /// Bounce class of that reply (SparkPost's codes: 10 invalid recipient, 22 mailbox full, 51 spam block, ...)
    /// for a deferred or bounced recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub bounce_class: Option<u8>,
    /// When the next attempt is due (RFC 3339 UTC); `null` when final or not scheduled.
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
}

/// A recipient's state as the API names it (the spool's own encoding stays the spool's).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = RecipientState)]
pub enum StateName {
    /// Accepted, not yet attempted.
    Queued,
    /// Failed temporarily; retried later.
    Deferred,
    /// Accepted by the next hop.
    Delivered,
    /// Failed permanently (or expired); a DSN went to the sender.
    Bounced,
}

impl From<RecipientState> for StateName {
    fn from(s: RecipientState) -> Self {
        match s {
            RecipientState::Queued => StateName::Queued,
            RecipientState::Deferred => StateName::Deferred,
            RecipientState::Delivered => StateName::Delivered,
            RecipientState::Bounced => StateName::Bounced,
        }
    }
}

/// A dispatch priority as the API names it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Priority)]
pub enum PriorityName {
    /// Dispatched ahead of bulk mail.
    Transactional,
    /// The default.
    Bulk,
}

impl From<Priority> for PriorityName {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Transactional => PriorityName::Transactional,
            Priority::Bulk => PriorityName::Bulk,
        }
    }
}

/// The handler.
#[utoipa::path(get, path = "/api/v1/messages/{id}", operation_id = "getMessage",
    summary = "State of each recipient of a queued or finished message (finished ones from the history).",
    params(("id" = String, Path, description = "Queue id from the injection answer or the SMTP reply.", max_length = 64)),
    responses(
        (status = 200, description = "The message.", body = MessageStatus),
        (status = 404, description = "No such message: unknown, or finished longer ago than the history keeps.", body = ErrorBody),
        (status = 503, description = "Spool unavailable (`spool_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn get_message(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match lookup(&state, &id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn lookup(state: &HttpState, id: &str) -> Result<MessageStatus, ApiError> {
    let not_found = || ApiError::not_found(format!("no message {id:?} in the queue"));
    let queue_id = QueueId::parse(id).ok_or_else(not_found)?;
    let record = state.inner.engine.spool().get(&queue_id).await.map_err(|e| {
        tracing::error!(error = %e, %id, "status lookup failed");
        ApiError::unavailable("spool_unavailable", "the spool could not be read; retry later", 5)
    })?;
    if let Some(r) = record {
        return Ok(status_of(&r, &state.inner.engine.config().delivery.classifier));
    }
    let finished = state.inner.engine.history(&queue_id).await.map_err(|e| {
        tracing::error!(error = %e, %id, "history lookup failed");
        ApiError::unavailable("spool_unavailable", "the spool could not be read; retry later", 5)
    })?;
    finished.map(|h| status_of_finished(&h)).ok_or_else(not_found)
}

/// The status of a finished message from its history: final states, nothing scheduled.
pub fn status_of_finished(h: &HistoryRecord) -> MessageStatus {
    MessageStatus {
        id: h.id.clone(),
        envelope_sender: h.sender.clone(),
        received_at: rfc3339_ms(h.received_at_ms),
        tenant: h.tenant.clone(),
        pool: h.pool.clone(),
        priority: h.priority.into(),
        recipients: h
            .recipients
            .iter()
            .map(|r| RecipientStatus {
                email: r.address.clone(),
                domain: r.domain.clone(),
                state: r.state.into(),
                attempts: r.attempts,
                last_reply: r.last_reply.clone(),
                bounce_class: r.bounce_class,
                next_attempt_at: None,
            })
            .collect(),
    }
}

/// RFC 3339 UTC of milliseconds since the epoch.
pub(super) fn rfc3339_ms(ms: u64) -> Option<String> {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
}

/// The status of a record; `classifier` names the class of each failed or deferred recipient's last reply.
pub fn status_of(r: &MessageRecord, classifier: &Classifier) -> MessageStatus {
    let recipients = r
        .recipients
        .iter()
        .map(|rc| {
            let schedule = r.schedules.iter().find(|s| s.domain == rc.domain);
            let next = schedule
                .filter(|s| !rc.state.is_final() && s.next_attempt_ms > 0)
                .and_then(|s| rfc3339_ms(s.next_attempt_ms));
            RecipientStatus {
                email: rc.address.clone(),
                domain: rc.domain.clone(),
                state: rc.state.into(),
                attempts: rc.attempts,
                last_reply: rc.last_reply.clone(),
                bounce_class: matches!(rc.state, RecipientState::Deferred | RecipientState::Bounced)
                    .then(|| rc.last_reply.as_deref().and_then(|l| classifier.classify_line(l)))
                    .flatten()
                    .map(|c| c.code()),
                next_attempt_at: next,
            }
        })
        .collect();
    MessageStatus {
        id: r.id.as_str().to_string(),
        envelope_sender: r.sender.clone(),
        received_at: rfc3339_ms(r.received_at_ms),
        tenant: r.tenant.clone(),
        pool: r.pool.clone(),
        priority: r.priority.into(),
        recipients,
    }
}
