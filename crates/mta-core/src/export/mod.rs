//! Event export: every event some endpoint wants is written to the spool's outbox in the same commit as the
//! state change it reports, and each endpoint reads the outbox and sends it on, at least once, across crashes.
//!
//! # Layout
//! - `endpoint`: one endpoint's loop (batches, concurrency cap, retries with backoff, `max_retry_age`) over a
//!   [`Sink`], and its health.
//! - `webhook`: the `[[webhook]]` sink (signed JSON-array POSTs over HTTP/1.1, TLS with the system roots).
//! - `amqp`: the `[[amqp]]` sink (one persistent message per event, publisher confirms, reconnects).
//! - [`signature`]: the `X-MTA-Signature` header.
//! - `outbox`: the reaper — forgets what every endpoint confirmed, keeps the outbox within its byte bound,
//!   publishes metrics.
//!
//! Delivery and injection only append to the outbox (inside commits they make anyway); nothing here can slow
//! them: a dead endpoint makes the outbox grow up to `max_retry_age` and [`ExportConfig::outbox_max_bytes`].

mod amqp;
mod endpoint;
mod outbox;
pub mod signature;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use mta_spool::Spool;

pub use amqp::{redact as redact_url, Amqp, DEFAULT_ROUTING_KEY};
pub use endpoint::{Endpoint, EndpointSettings, EndpointStatus, Sink, SinkError};
pub use webhook::Webhook;

use crate::events::EventTypes;

/// Default `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// Default `batch_delay`.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);
/// Default `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `max_retry_age`.
pub const DEFAULT_MAX_RETRY_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default `concurrency` (batches in flight per endpoint).
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default [`ExportConfig::outbox_max_bytes`]: 1 GiB.
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 1 << 30;
/// An endpoint failing this long shows in health as failing.
pub const FAILING_AFTER: Duration = Duration::from_secs(300);

/// Errors setting up export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The endpoint URL cannot be used: fix the config.
    #[error("invalid endpoint url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// One `[[webhook]]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// HMAC-SHA256 key of the signature header.
    pub secret: String,
    /// How batches are sent.
    pub endpoint: EndpointSettings,
}

impl WebhookConfig {
    /// A webhook to `url` with the contract's defaults, named `name`.
    pub fn new(name: impl Into<String>, url: impl Into<String>, secret: impl Into<String>) -> WebhookConfig {
        WebhookConfig { url: url.into(), secret: secret.into(), endpoint: EndpointSettings::defaults(name) }
    }
}

impl EndpointSettings {
    /// The contract's defaults for an endpoint named `name`: every type, batches of 100 after at most 1 s,
    /// 10 s timeout, retried for 24 h.
    pub fn defaults(name: impl Into<String>) -> EndpointSettings {
        EndpointSettings {
            name: name.into(),
            events: EventTypes::all(),
            batch_size: DEFAULT_BATCH_SIZE,
            batch_delay: DEFAULT_BATCH_DELAY,
            timeout: DEFAULT_TIMEOUT,
            max_retry_age: DEFAULT_MAX_RETRY_AGE,
            concurrency: DEFAULT_CONCURRENCY,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// One `[[amqp]]`.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Broker URL, `amqp://user:pass@host:port/vhost`, or `amqps://` for TLS (verified against the system
    /// roots plus [`AmqpConfig::ca_file`]).
    pub url: String,
    /// Extra PEM roots trusted for `amqps://` (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// Exchange published to (`""`: the default exchange, routing key = queue name).
    pub exchange: String,
    /// Routing key template: `{type}`, `{domain}`, `{tenant}` are replaced by the event's fields.
    pub routing_key: String,
    /// How batches are sent (`batch_size` messages are published before waiting for their confirms).
    pub endpoint: EndpointSettings,
}

impl AmqpConfig {
    /// An AMQP endpoint with the contract's defaults, named `name`.
    pub fn new(name: impl Into<String>, url: impl Into<String>, exchange: impl Into<String>) -> AmqpConfig {
        AmqpConfig {
            url: url.into(),
            exchange: exchange.into(),
            ca_file: None,
            routing_key: DEFAULT_ROUTING_KEY.into(),
            endpoint: EndpointSettings::defaults(name),
        }
    }
}

/// Where events are exported, and the outbox's bound.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `[[webhook]]` endpoints.
    pub webhooks: Vec<WebhookConfig>,
    /// `[[amqp]]` endpoints.
    pub amqp: Vec<AmqpConfig>,
    /// The outbox never holds more than this many bytes of events: beyond it the oldest are dropped (counted
    /// in `mta_export_dropped_total{reason="outbox_full"}` and logged).
    pub outbox_max_bytes: u64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig { webhooks: Vec::new(), amqp: Vec::new(), outbox_max_bytes: DEFAULT_OUTBOX_MAX_BYTES }
    }
}

impl ExportConfig {
    /// The event types at least one endpoint wants (those are written to the outbox).
    pub fn exported(&self) -> EventTypes {
        let webhooks = self.webhooks.iter().map(|w| w.endpoint.events);
        let amqp = self.amqp.iter().map(|a| a.endpoint.events);
        webhooks.chain(amqp).fold(EventTypes::NONE, EventTypes::union)
    }
}

/// The running exporters: their health.
#[derive(Debug, Clone, Default)]
pub struct Exporters {
    endpoints: Vec<Arc<Endpoint>>,
}

impl Exporters {
    /// Every endpoint's health.
    pub fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints.iter().map(|e| e.status()).collect()
    }

    /// Endpoints whose every request has failed for at least `for_at_least`.
    pub fn failing(&self, for_at_least: Duration) -> Vec<EndpointStatus> {
        self.status().into_iter().filter(|s| s.failing_for.is_some_and(|d| d >= for_at_least)).collect()
    }
}

/// Start every endpoint and the reaper on `spool`; the tasks run until aborted.
pub fn start(
    spool: &Spool,
    config: &ExportConfig,
) -> Result<(Exporters, Vec<tokio::task::JoinHandle<()>>), ExportError> {
    let mut endpoints = Vec::new();
    let mut tasks = Vec::new();
    for w in &config.webhooks {
        let s = &w.endpoint;
        let sink: Arc<dyn Sink> = Arc::new(Webhook::new(&w.url, &w.secret, s.concurrency, s.timeout)?);
        let endpoint = Arc::new(Endpoint::new(s.clone()));
        tasks.push(tokio::spawn(endpoint.clone().run(spool.clone(), sink)));
        endpoints.push(endpoint);
    }
    for a in &config.amqp {
        let s = &a.endpoint;
        let mut amqp = Amqp::new(&a.url, &a.exchange, &a.routing_key, s.timeout)?;
        if let Some(path) = &a.ca_file {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| ExportError::Tls(format!("cannot read {}: {e}", path.display())))?;
            amqp = amqp.with_ca_pem(pem);
        }
        let sink: Arc<dyn Sink> = Arc::new(amqp);
        let endpoint = Arc::new(Endpoint::new(s.clone()));
        tasks.push(tokio::spawn(endpoint.clone().run(spool.clone(), sink)));
        endpoints.push(endpoint);
    }
    // The reaper also runs without endpoints: it forgets what an earlier configuration left in the outbox.
    tasks.push(tokio::spawn(outbox::reap(spool.clone(), endpoints.clone(), config.outbox_max_bytes)));
    Ok((Exporters { endpoints }, tasks))
}
