//! The HTTP API: injection, message status, health, metrics, OpenAPI (routes and errors in `CONTRACT.md`).
//!
//! # Layout
//! - this file: [`ROUTES`] (the one list the router is built from and the OpenAPI test checks), the router,
//!   the auth/rate-limit and metrics middleware, [`serve`] (HTTP/1.1 and HTTP/2, plain or TLS).
//! - [`inject`]: `POST /api/v1/messages`; [`body`]: reading request bodies under the size cap and the
//!   process-wide body memory budget; [`request`]: the inject body parsed and checked (large ones on the
//!   low-priority threads of [`parse_pool`]); [`json_text`]: raw
//!   content decoded from its JSON string straight into message bytes; [`content`]: structured content to
//!   MIME; [`idempotency`]: the `Idempotency-Key` table (durable in the spool with its message).
//! - [`status`]: `GET /api/v1/messages/{id}`; [`debug`]: `PUT /api/v1/debug/faults`.
//! - health: `/health/live`, `/health/ready` (back-pressure state: 200 healthy/degraded, 503 shedding with
//!   reasons and `Retry-After`) and `GET /api/v1/health` (every signal with its value and marks) are here.
//! - [`auth`]: bearer keys, loopback rule, trusted proxies; [`ratelimit`]: per-key token buckets.
//! - [`error`]: `ApiError` and its JSON form; [`listener`]: the accept loops (plain and TLS), where peer
//!   addresses are made canonical (an IPv4-mapped IPv6 peer is its IPv4 address from there on).
//! - [`client`]: the `mta-server queue` command (a client of the admin API).
//! - `openapi.json`: the OpenAPI 3 document served at `/api/v1/openapi.json`.

mod auth;
mod body;
pub mod client;
mod content;
mod debug;
mod error;
mod idempotency;
mod inject;
mod json_text;
mod listener;
mod parse_pool;
mod queue;
mod ratelimit;
mod request;
mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use mta_core::backpressure::{Backpressure, State as HealthState};
use mta_core::Engine;
use serde_json::json;
use tokio::net::TcpListener;

use self::auth::Auth;
use self::error::ApiError;
use self::idempotency::Idempotency;
use self::ratelimit::RateLimiter;
use crate::config::Config;

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path in axum (and OpenAPI) syntax.
    pub path: &'static str,
    /// Needs an API key (or a loopback client when no keys are configured).
    pub auth: bool,
}

/// Every route; the router is built from this list, and a test checks it against `openapi.json`.
pub const ROUTES: &[Route] = &[
    Route { method: "POST", path: "/api/v1/messages", auth: true },
    Route { method: "GET", path: "/api/v1/messages/{id}", auth: true },
    Route { method: "PUT", path: "/api/v1/debug/faults", auth: true },
    Route { method: "GET", path: "/api/v1/queue", auth: true },
    Route { method: "POST", path: "/api/v1/queue/{domain}/suspend", auth: true },
    Route { method: "POST", path: "/api/v1/queue/{domain}/resume", auth: true },
    Route { method: "GET", path: "/api/v1/senders", auth: true },
    Route { method: "GET", path: "/api/v1/openapi.json", auth: true },
    Route { method: "GET", path: "/api/v1/health", auth: true },
    Route { method: "GET", path: "/health/live", auth: false },
    Route { method: "GET", path: "/health/ready", auth: false },
    Route { method: "GET", path: "/metrics", auth: false },
];

/// The OpenAPI 3 document of [`ROUTES`].
pub const OPENAPI: &str = include_str!("openapi.json");

/// The handler of a route in [`ROUTES`].
fn method_router(route: &Route) -> MethodRouter<HttpState> {
    match (route.method, route.path) {
        ("POST", "/api/v1/messages") => post(inject::post_message),
        ("GET", "/api/v1/messages/{id}") => get(status::get_message),
        ("PUT", "/api/v1/debug/faults") => put(debug::put_faults),
        ("GET", "/api/v1/queue") => get(queue::get_queue),
        ("POST", "/api/v1/queue/{domain}/suspend") => post(queue::suspend),
        ("POST", "/api/v1/queue/{domain}/resume") => post(queue::resume),
        ("GET", "/api/v1/senders") => get(queue::get_senders),
        ("GET", "/api/v1/openapi.json") => get(openapi),
        ("GET", "/api/v1/health") => get(health),
        ("GET", "/health/live") => get(live),
        ("GET", "/health/ready") => get(ready),
        ("GET", "/metrics") => get(metrics_text),
        (m, p) => panic!("route {m} {p} is in ROUTES but has no handler"),
    }
}

/// Faults set through `PUT /api/v1/debug/faults` (kept to report them back).
#[derive(Debug, Default)]
struct Faults {
    spool_flush_delay_ms: AtomicU64,
    dns_delay_ms: AtomicU64,
}

struct Inner {
    engine: Engine,
    prometheus: PrometheusHandle,
    auth: Auth,
    limiter: RateLimiter,
    idempotency: Arc<Idempotency>,
    /// Set when the API is served over TLS (`http.tls_cert`/`http.tls_key`).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Largest request body: room for a maximal message with JSON escaping.
    max_body: usize,
    /// Memory for request bodies in flight (`http.max_body_memory`).
    bodies: body::BodyBudget,
    /// Where large bodies are parsed: off the async workers, below their CPU priority.
    parse_pool: parse_pool::ParsePool,
    /// Longest wait for a place in the parse pool's queue (`http.body_memory_wait`).
    parse_wait: std::time::Duration,
    fault_injection: bool,
    faults: Faults,
    /// Set at graceful stop: new injections get `503` while the ones in flight finish.
    draining: AtomicBool,
    /// Injections between "accepted for processing" and their answer.
    injecting: AtomicUsize,
    /// Sender pre-flight checks (when DKIM keys are configured).
    preflight: Option<Arc<mta_core::auth::Preflight>>,
    /// The node's health state: injections get `503` while shedding, `/health/ready` fails.
    backpressure: Backpressure,
}

/// Shared state of every HTTP handler; cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    inner: Arc<Inner>,
}

impl HttpState {
    /// State for `engine` with the HTTP settings of `config`.
    pub fn new(
        engine: Engine,
        config: &Config,
        prometheus: PrometheusHandle,
        preflight: Option<Arc<mta_core::auth::Preflight>>,
    ) -> anyhow::Result<Self> {
        let http = &config.http;
        let tls = match (&http.tls_cert, &http.tls_key) {
            (Some(cert), Some(key)) => {
                let server_config = crate::tls::server_config(cert, key)?;
                Some(tokio_rustls::TlsAcceptor::from(listener::with_alpn(&server_config)))
            }
            (None, None) => None,
            _ => anyhow::bail!("http.tls_cert and http.tls_key must be set together"),
        };
        let max_body = usize::try_from(config.smtp.max_message_size.saturating_mul(2).saturating_add(64 << 10))
            .unwrap_or(usize::MAX);
        let idempotency = Arc::new(Idempotency::new(engine.spool().clone()));
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let inner = Inner {
            auth: Auth::new(&http.api_keys, &http.trusted_proxies)?,
            limiter: RateLimiter::new(http.rate_limit_per_key),
            idempotency,
            tls,
            max_body,
            bodies: body::BodyBudget::new(http.max_body_memory, http.body_memory_wait.get()),
            parse_pool: parse_pool::ParsePool::new(cpus)?,
            parse_wait: http.body_memory_wait.get(),
            fault_injection: config.debug.fault_injection,
            faults: Faults::default(),
            draining: AtomicBool::new(false),
            injecting: AtomicUsize::new(0),
            preflight,
            backpressure: Backpressure::disabled(),
            engine,
            prometheus,
        };
        Ok(HttpState { inner: Arc::new(inner) })
    }

    /// Refuse injections and fail readiness by `backpressure` (before the state is shared).
    pub fn with_backpressure(mut self, backpressure: Backpressure) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.backpressure = backpressure,
            None => tracing::error!("HttpState::with_backpressure called after the state was shared; ignored"),
        }
        self
    }
}

/// Counts an injection in flight (for the graceful stop) until dropped.
struct Injecting<'a>(&'a Inner);

impl<'a> Injecting<'a> {
    /// Count one injection; `None` (answer `503`) when the server is draining.
    fn start(inner: &'a Inner) -> Option<Self> {
        // Count first, then check: the drain loop either sees this count or this request sees `draining`.
        inner.injecting.fetch_add(1, Ordering::SeqCst);
        let guard = Injecting(inner);
        (!inner.draining.load(Ordering::SeqCst)).then_some(guard)
    }
}

impl Drop for Injecting<'_> {
    fn drop(&mut self) {
        self.0.injecting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The router of every route in [`ROUTES`].
pub fn router(state: HttpState) -> Router {
    let mut public = Router::new();
    let mut api = Router::new();
    for route in ROUTES {
        if route.auth {
            api = api.route(route.path, method_router(route));
        } else {
            public = public.route(route.path, method_router(route));
        }
    }
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    public
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Authenticate (`401`/`403`) and rate-limit (`429`) every `/api/v1` request; the [`auth::Caller`] becomes a
/// request extension.
async fn authorize(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let inner = &state.inner;
    let client = inner.auth.client_ip(peer.ip(), req.headers());
    let caller = match inner.auth.check(req.headers(), client) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(wait) = inner.limiter.check(&caller.label, Instant::now()) {
        return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests for this API key")
            .retry_after(wait.as_secs_f64().ceil() as u64)
            .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Count requests by method, route and status.
async fn track(req: Request, next: Next) -> Response {
    // Labels as `&'static str` (route paths from ROUTES, standard methods): no allocation per request.
    let route: &'static str = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| ROUTES.iter().find(|r| r.path == m.as_str()))
        .map_or("unmatched", |r| r.path);
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "other",
    };
    let response = next.run(req).await;
    let status = status_label(response.status());
    metrics::counter!("mta_http_requests_total", "method" => method, "route" => route, "status" => status).increment(1);
    response
}

/// The three-digit code of a known status as a static string.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

async fn live() -> impl IntoResponse {
    Json(json!({"state": "alive"}))
}

/// `200 {"state":"healthy"}`, `200 {"state":"degraded","reasons":[...]}`, or
/// `503 {"state":"shedding","reasons":[...]}` with `Retry-After` (also while stopping).
async fn ready(State(state): State<HttpState>) -> Response {
    let inner = &state.inner;
    let retry_after = inner.backpressure.retry_after().as_secs().max(1);
    if !inner.engine.is_accepting() || inner.draining.load(Ordering::SeqCst) {
        let body = json!({"state": "shedding", "reasons": ["shutting down"]});
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
        return response;
    }
    match inner.backpressure.state() {
        HealthState::Healthy => (StatusCode::OK, Json(json!({"state": "healthy"}))).into_response(),
        HealthState::Degraded => {
            let reasons = inner.backpressure.snapshot().reasons.clone();
            (StatusCode::OK, Json(json!({"state": "degraded", "reasons": reasons}))).into_response()
        }
        HealthState::Shedding => {
            let reasons = inner.backpressure.snapshot().reasons.clone();
            let body = json!({"state": "shedding", "reasons": reasons});
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
            response
        }
    }
}

/// `GET /api/v1/health`: the back-pressure state, every signal with its value over the window and its marks.
async fn health(State(state): State<HttpState>) -> Response {
    let snapshot = state.inner.backpressure.snapshot();
    let mut body = serde_json::to_value(&*snapshot).unwrap_or_else(|_| json!({}));
    body["accepting"] = json!(state.inner.engine.is_accepting() && !state.inner.draining.load(Ordering::SeqCst));
    body["retry_after_secs"] = json!(state.inner.backpressure.retry_after().as_secs());
    Json(body).into_response()
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.inner.prometheus.render()).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Serve the API until `shutdown` resolves, then finish in-flight requests. HTTP/1.1 and HTTP/2 (prior
/// knowledge on plain TCP, ALPN over TLS); TLS when `http.tls_cert`/`http.tls_key` are set.
///
/// Graceful stop: once `shutdown` resolves, the listener stays open while injections are in flight, and every
/// new injection (and `/health/ready`) is answered `503` + `Retry-After`; then the server stops accepting and
/// waits for open requests.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: impl Future<Output = ()> + Send + 'static) {
    let sweeper = tokio::spawn(state.inner.idempotency.clone().run_sweeper());
    let drain_state = state.clone();
    let shutdown = async move {
        shutdown.await;
        let inner = &drain_state.inner;
        inner.draining.store(true, Ordering::SeqCst);
        // Requests waiting for body memory get their `503` now rather than at the end of their wait.
        inner.bodies.close();
        while inner.injecting.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let tls = state.inner.tls.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let result = match tls {
        // `tap_io` (a no-op here) is what gives a custom listener axum's `ConnectInfo<SocketAddr>`.
        None => {
            let listener = listener::TcpAccept::new(listener).tap_io(|_| {});
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        Some(acceptor) => match listener::TlsListener::new(listener, acceptor) {
            Ok(tls_listener) => axum::serve(tls_listener.tap_io(|_| {}), app).with_graceful_shutdown(shutdown).await,
            Err(e) => Err(e),
        },
    };
    sweeper.abort();
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "put", "post", "delete", "patch"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> =
            ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
        assert_eq!(routed, documented, "ROUTES and openapi.json differ");
        // Every route has a handler (building the router panics otherwise).
        for route in ROUTES {
            let _ = method_router(route);
        }
    }
}
