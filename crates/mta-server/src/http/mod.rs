//! The HTTP API: injection, message status, health, metrics, OpenAPI (routes and errors in `CONTRACT.md`).
//!
//! # Layout
//! - [`routes`]: [`ROUTES`], every route with its handler; the router here and the OpenAPI document
//!   ([`openapi`], served at `/api/v1/openapi.json`) are both built from it.
//! - this file: the router, the auth/rate-limit and metrics middleware, [`serve`] (HTTP/1.1 and HTTP/2, plain
//!   or TLS).
//! - [`inject`]: `POST /api/v1/messages`; [`inject_schema`]: the typed shape of its body (for the document);
//!   [`body`]: reading request bodies under the size cap and the process-wide body memory budget;
//!   [`request`]: the inject body parsed and checked (large ones on the low-priority threads of
//!   a `mta_core::cpu_pool::CpuPool`); [`json_text`]: raw content decoded from its JSON string straight into message bytes;
//!   [`content`]: structured content to MIME; [`idempotency`]: the `Idempotency-Key` table (durable in the
//!   spool with its message).
//! - [`status`]: `GET /api/v1/messages/{id}`; [`queue`]: queue administration and sender pre-flight;
//!   [`transfer`]: queue transfer to a peer and the peer's import route;
//!   [`debug`]: `PUT /api/v1/debug/faults`.
//! - [`health`]: `/health/live`, `/health/ready` (back-pressure state: 200 healthy/degraded, 503 shedding with
//!   reasons and `Retry-After`), `GET /api/v1/health` (every signal with its value and marks), `/metrics`.
//! - [`console`]: the operator console (`GET /console`: one page and its script and style, embedded; strict
//!   CSP), a client of the routes above.
//! - [`stats`]: `GET /api/v1/stats/timeseries` (per-minute counts, bounce classes: the console's chart).
//! - [`auth`]: bearer keys, loopback rule, trusted proxies; [`ratelimit`]: per-key token buckets.
//! - [`error`]: `ApiError` and its JSON form; [`listener`]: the accept loops (plain and TLS), where peer
//!   addresses are made canonical (an IPv4-mapped IPv6 peer is its IPv4 address from there on).
//! - [`client`]: the `mta-server queue` command (a client of the admin API).
//!
//! Every JSON answer is a typed struct (`Serialize` + `utoipa::ToSchema`) beside its handler, so the document's
//! schemas are the ones the answers are serialized from.

mod auth;
mod body;
pub mod client;
mod cluster;
mod console;
mod content;
mod debug;
mod error;
mod health;
mod idempotency;
mod inject;
mod inject_schema;
mod json_text;
mod listener;
mod openapi;
mod queue;
mod ratelimit;
mod request;
mod routes;
mod stats;
mod status;
mod suppressions;
mod tls_policy;
mod transfer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use mta_core::backpressure::Backpressure;
use mta_core::Engine;
use tokio::net::TcpListener;

use self::auth::Auth;
use self::error::ApiError;
use self::idempotency::Idempotency;
use self::ratelimit::RateLimiter;
use self::routes::ROUTES;
use crate::config::Config;

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
    parse_pool: mta_core::cpu_pool::CpuPool,
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
    /// Membership in a fleet on Redis (`GET /api/v1/cluster`).
    cluster: Option<Arc<mta_core::cluster::Cluster>>,
    /// Queue transfers started here (`POST /api/v1/queue/transfer`).
    transfers: Arc<crate::transfer::Transfers>,
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
            parse_pool: mta_core::cpu_pool::CpuPool::new("parse", cpus, mta_core::cpu_pool::PARSE_NICE_INCREMENT)?,
            parse_wait: http.body_memory_wait.get(),
            fault_injection: config.debug.fault_injection,
            faults: Faults::default(),
            draining: AtomicBool::new(false),
            injecting: AtomicUsize::new(0),
            preflight,
            backpressure: Backpressure::disabled(),
            cluster: None,
            transfers: Arc::default(),
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

impl HttpState {
    /// Answer `GET /api/v1/cluster` from `cluster` (before the state is shared).
    pub fn with_cluster(mut self, cluster: Option<Arc<mta_core::cluster::Cluster>>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.cluster = cluster,
            None => tracing::error!("HttpState::with_cluster called after the state was shared; ignored"),
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
        // The operation and its schemas are the document's ([`openapi`]); the router takes the handler.
        let (_, _, handler) = (route.endpoint)();
        if route.auth {
            api = api.route(route.path, handler);
        } else {
            public = public.route(route.path, handler);
        }
    }
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    public
        .merge(api)
        .merge(console::router())
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
        .and_then(|m| {
            let path = m.as_str();
            ROUTES.iter().map(|r| r.path).chain(console::PATHS.iter().copied()).find(|p| *p == path)
        })
        .unwrap_or("unmatched");
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

/// Delete expired queue-import markers every hour ([`mta_core::transfer::MARKER_TTL`]).
async fn sweep_transfer_markers(engine: Engine) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match engine.sweep_transfer_markers().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired queue-import markers removed"),
            Err(e) => tracing::warn!(error = %e, "queue-import marker sweep failed"),
        }
    }
}

/// Serve the API until `shutdown` resolves, then finish in-flight requests. HTTP/1.1 and HTTP/2 (prior
/// knowledge on plain TCP, ALPN over TLS); TLS when `http.tls_cert`/`http.tls_key` are set.
///
/// Graceful stop: once `shutdown` resolves, the listener stays open while injections are in flight, and every
/// new injection (and `/health/ready`) is answered `503` + `Retry-After`; then the server stops accepting and
/// waits for open requests.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: impl Future<Output = ()> + Send + 'static) {
    let sweeper = tokio::spawn(state.inner.idempotency.clone().run_sweeper());
    let markers = tokio::spawn(sweep_transfer_markers(state.inner.engine.clone()));
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
    markers.abort();
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
