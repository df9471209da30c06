//! API errors and their JSON form: `{"error": {"code", "message", "field"}}` with the matching status, plus
//! `Retry-After` on 429 and 503.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mta_core::InjectError;
use serde::Serialize;
use utoipa::ToSchema;

/// One refused request. Built by the handlers, turned into a response at the edge.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid_recipient`, `rate_limited`, ...).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault (`recipients[3]`, `content.subject`), when there is one.
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// Answer with `Connection: close`: the request body was left unread, so the connection cannot be reused.
    pub close: bool,
}

impl ApiError {
    /// An error without a field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, retry_after: None, close: false }
    }

    /// `400` about one field.
    pub fn bad_field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message).with_field(field)
    }

    /// Name the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Ask the client to come back in `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Close the connection after this answer (HTTP/1; HTTP/2 streams need no such thing).
    pub fn close_connection(mut self) -> Self {
        self.close = true;
        self
    }

    /// `503`: the node is stopping or shedding load; retry later or elsewhere.
    pub fn unavailable(code: &'static str, message: impl Into<String>, seconds: u64) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(seconds)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<InjectError> for ApiError {
    fn from(e: InjectError) -> Self {
        match &e {
            InjectError::InvalidSender { .. } => {
                ApiError::bad_field("invalid_sender", "envelope_sender", e.to_string())
            }
            InjectError::InvalidRecipient { index, .. } => {
                ApiError::bad_field("invalid_recipient", format!("recipients[{index}]"), e.to_string())
            }
            InjectError::NoRecipients => ApiError::bad_field("no_recipients", "recipients", e.to_string()),
            InjectError::TooManyRecipients { .. } => {
                ApiError::bad_field("too_many_recipients", "recipients", e.to_string())
            }
            InjectError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()).with_field("content")
            }
            InjectError::ShuttingDown => {
                ApiError::unavailable("shutting_down", "the node is stopping; retry elsewhere", 5)
            }
            InjectError::Overloaded(_) => ApiError::unavailable("overloaded", e.to_string(), 1),
            InjectError::Spool(_) => {
                tracing::error!(error = %e, "HTTP injection: spool failure");
                ApiError::unavailable("spool_unavailable", "the message could not be stored; retry later", 5)
            }
            _ if e.is_temporary() => ApiError::unavailable("unavailable", e.to_string(), 5),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "rejected", e.to_string()),
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` member of an error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    #[schema(example = "invalid_recipient")]
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "recipients[3]")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, field: self.field } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            // hyper drops this header on HTTP/2, where resetting the stream is enough.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
