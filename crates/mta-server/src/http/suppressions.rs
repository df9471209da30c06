//! The suppression list: `PUT/GET/DELETE /api/v1/suppressions/{email}` and `GET /api/v1/suppressions` (a page
//! at a time, with a cursor). Entries are durable in the spool before `PUT` and `DELETE` answer.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mta_core::suppression::{Entry, Reason, SuppressionError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::HttpState;

/// Entries per page of `GET /api/v1/suppressions` unless `limit` asks for fewer.
const PAGE: usize = 1000;

/// One suppressed address.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionBody {
    /// The address (lower case).
    pub email: String,
    /// `manual`, `hard_bounce`, `unsubscribe` or `complaint`.
    pub reason: String,
    /// The tenant it applies to; `null`: every tenant.
    pub tenant: Option<String>,
    /// When it was added (RFC 3339 UTC).
    pub created: String,
}

impl From<Entry> for SuppressionBody {
    fn from(e: Entry) -> Self {
        SuppressionBody { email: e.email, reason: e.reason.as_str().to_string(), tenant: e.tenant, created: e.created }
    }
}

/// The body of `PUT /api/v1/suppressions/{email}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionPut {
    /// `manual` (the default), `hard_bounce`, `unsubscribe` or `complaint`.
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// Scope to this tenant; absent: every tenant.
    #[schema(nullable = false, max_length = 128)]
    pub tenant: Option<String>,
}

/// A page of the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionList {
    /// Entries in (tenant, address) order.
    pub suppressions: Vec<SuppressionBody>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn refused(e: SuppressionError) -> ApiError {
    match e {
        SuppressionError::InvalidAddress(a) => {
            ApiError::bad_field("invalid_email", "email", format!("{a:?} is not an address"))
        }
        SuppressionError::InvalidTenant(_) => {
            ApiError::bad_field("invalid_tenant", "tenant", "tenant must be at most 128 characters, no NUL")
        }
        e => {
            tracing::error!(error = %e, "suppression list unavailable");
            ApiError::unavailable("spool_unavailable", "the suppression list could not be read or written", 5)
        }
    }
}

fn tenant_of(query: &HashMap<String, String>) -> Option<&str> {
    query.get("tenant").map(String::as_str).filter(|t| !t.is_empty())
}

/// Add or replace an entry.
#[utoipa::path(put, path = "/api/v1/suppressions/{email}", operation_id = "putSuppression",
    summary = "Suppress an address (for one tenant or every tenant); durable before the answer.",
    params(("email" = String, Path, description = "The address.", max_length = 256)),
    request_body(content = SuppressionPut, content_type = "application/json",
        description = "Why, and for which tenant (absent: every tenant). An empty body is `manual` for every tenant."),
    responses(
        (status = 200, description = "Replaced an existing entry.", body = SuppressionBody),
        (status = 201, description = "Added.", body = SuppressionBody),
        (status = 400, description = "Bad address (`invalid_email`), body (`invalid_json`), reason (`invalid_reason`) or tenant (`invalid_tenant`).", body = ErrorBody),
        (status = 503, description = "Spool unavailable (`spool_unavailable`).", body = ErrorBody),
    ))]
pub async fn put_suppression(State(state): State<HttpState>, Path(email): Path<String>, body: Bytes) -> Response {
    let put: SuppressionPut = if body.iter().all(u8::is_ascii_whitespace) {
        SuppressionPut::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()).into_response(),
        }
    };
    let reason = match put.reason.as_deref() {
        None => Reason::Manual,
        Some(r) => match Reason::parse(r) {
            Some(r) => r,
            None => {
                return ApiError::bad_field(
                    "invalid_reason",
                    "reason",
                    "reason must be manual, hard_bounce, unsubscribe or complaint",
                )
                .into_response()
            }
        },
    };
    let tenant = put.tenant.filter(|t| !t.is_empty());
    let list = state.inner.engine.suppressions();
    let entry = Entry::new(email, reason, tenant);
    match list.put(&entry).await {
        Ok(new) => {
            let stored = list.get(entry.tenant.as_deref(), &entry.email).await.ok().flatten().unwrap_or(entry);
            let status = if new { StatusCode::CREATED } else { StatusCode::OK };
            (status, Json(SuppressionBody::from(stored))).into_response()
        }
        Err(e) => refused(e).into_response(),
    }
}

/// One entry.
#[utoipa::path(get, path = "/api/v1/suppressions/{email}", operation_id = "getSuppression",
    summary = "The entry for an address (`?tenant=` scopes; without it, the every-tenant entry).",
    params(("email" = String, Path, description = "The address.", max_length = 256),
        ("tenant" = Option<String>, Query, nullable = false, max_length = 128, description = "Tenant scope.")),
    responses(
        (status = 200, description = "Suppressed.", body = SuppressionBody),
        (status = 400, description = "Bad address (`invalid_email`) or tenant (`invalid_tenant`).", body = ErrorBody),
        (status = 404, description = "Not suppressed (`not_found`).", body = ErrorBody),
    ))]
pub async fn get_suppression(
    State(state): State<HttpState>,
    Path(email): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match state.inner.engine.suppressions().get(tenant_of(&query), &email).await {
        Ok(Some(e)) => Json(SuppressionBody::from(e)).into_response(),
        Ok(None) => ApiError::not_found("not suppressed").into_response(),
        Err(e) => refused(e).into_response(),
    }
}

/// Remove an entry.
#[utoipa::path(delete, path = "/api/v1/suppressions/{email}", operation_id = "deleteSuppression",
    summary = "Remove the entry (`?tenant=` scopes); durable before the answer; 204 also when there was none.",
    params(("email" = String, Path, description = "The address.", max_length = 256),
        ("tenant" = Option<String>, Query, nullable = false, max_length = 128, description = "Tenant scope.")),
    responses(
        (status = 204, description = "Not suppressed (any more)."),
        (status = 400, description = "Bad address (`invalid_email`) or tenant (`invalid_tenant`).", body = ErrorBody),
        (status = 503, description = "Spool unavailable (`spool_unavailable`).", body = ErrorBody),
    ))]
pub async fn delete_suppression(
    State(state): State<HttpState>,
    Path(email): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match state.inner.engine.suppressions().remove(tenant_of(&query), &email).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e).into_response(),
    }
}

/// A page of entries.
#[utoipa::path(get, path = "/api/v1/suppressions", operation_id = "listSuppressions",
    summary = "Entries a page at a time (`?tenant=` only that tenant's, `?cursor=` from `next`, `?limit=` up to 1000).",
    params(("tenant" = Option<String>, Query, nullable = false, max_length = 128, description = "Only this tenant's entries."),
        ("cursor" = Option<String>, Query, nullable = false, max_length = 1000, description = "`next` of the previous page."),
        ("limit" = Option<u32>, Query, nullable = false, minimum = 1, maximum = 1000, description = "Entries per page (default 1000).")),
    responses(
        (status = 200, description = "A page.", body = SuppressionList),
        (status = 400, description = "Bad tenant (`invalid_tenant`) or limit (`invalid_limit`).", body = ErrorBody),
        (status = 503, description = "Spool unavailable (`spool_unavailable`).", body = ErrorBody),
    ))]
pub async fn list_suppressions(
    State(state): State<HttpState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => PAGE,
        Some(Ok(n)) if (1..=PAGE).contains(&n) => n,
        Some(_) => {
            return ApiError::bad_field("invalid_limit", "limit", format!("limit must be 1 to {PAGE}")).into_response()
        }
    };
    let tenant = tenant_of(&query).map(str::to_string);
    let cursor = query.get("cursor").cloned();
    let list = state.inner.engine.suppressions().clone();
    // A range scan of the spool's index: blocking work.
    let page =
        tokio::task::spawn_blocking(move || list.list_blocking(tenant.as_deref(), cursor.as_deref(), limit)).await;
    match page {
        Ok(Ok((entries, next))) => {
            Json(SuppressionList { suppressions: entries.into_iter().map(SuppressionBody::from).collect(), next })
                .into_response()
        }
        Ok(Err(e)) => refused(e).into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "listing failed").into_response(),
    }
}
