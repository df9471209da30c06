//! The embeddable mail engine: what a high-volume sender links to, and what `mta-server` is built on.
//!
//! # Layout
//! - [`backpressure`]: the health monitor and the `healthy → degraded → shedding` state intake paths read.
//! - [`bounce`]: bounce classification (SparkPost classes) from replies.
//! - [`cluster`]: fleet-wide limits and the cluster view on a shared Redis (optional).
//! - [`delivery`]: the scheduler, site ready queues, outbound connections, retries and DSNs.
//! - [`dns`]: the bounded, cached, coalescing resolver pool.
//! - [`engine`]: [`Engine`] — open the spool, inject messages durably, emit events, shut down.
//! - [`reception`]: what every entry point does at reception (envelope checks, our `Received:` header).
//! - [`incoming`]: [`Incoming`], a message received in pieces with bounded memory (staged to disk when large).
//! - [`metrics_catalog`]: every exported metric with its help text and unit.
//! - [`transfer`]: moving queued messages to another node (what leaves, how a node takes them in, once).
//! - [`tls_policy`]: outbound TLS policies (DANE, MTA-STS): lookup, HTTPS fetch, cache in the spool.
//! - [`tls_report`]: TLS reporting (RFC 8460): session counts per policy domain, reports to `rua`.
//! - [`events`]: the delivery event log (JSON lines), in-process subscriptions, stable event ids.
//! - [`throughput`]: per-minute event counts and bounce classes over the last hour (the console's chart).
//! - [`export`]: the durable outbox's exporters (`[[webhook]]`), at least once across crashes.
//! - [`error`]: typed errors, classified for the caller.
//! - `fuzzing`: the `dsn` fuzz target's logic, shared with the property tests (not a stable API).
//!
//! Spool types ([`QueueId`], [`MessageRecord`], ...) are re-exported from `mta-spool`.
//!
//! # Embedding
//!
//! The [`Engine`] owns every capability the server has: the spool, delivery, the DNS pool, inbound
//! verification, DKIM signing with the sender pre-flight, and back-pressure. An embedder's `main`:
//!
//! ```no_run
//! use mta_core::auth::{AuthPolicy, Policy};
//! use mta_core::backpressure::BackpressureConfig;
//! use mta_core::{Engine, EngineConfig, Injection};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = EngineConfig::new("/var/spool/mta");
//! config.hostname = "mx1.sender.example".into();
//! config.auth = AuthPolicy { spf: Policy::Record, dkim: Policy::Record, dmarc: Policy::Record };
//! config.backpressure = Some(BackpressureConfig::default());
//! let (engine, _recovered) = Engine::open(config).await?;
//!
//! // Shed load the way the server does: refuse new work while the node is unhealthy.
//! if engine.backpressure().check_new_work().is_ok() {
//!     let message = "From: app@sender.example\r\nSubject: hi\r\n\r\nHello.\r\n";
//!     let accepted =
//!         engine.inject(Injection::new("app@sender.example", vec!["you@example.net".into()], message)).await?;
//!     println!("{} is durable", accepted.id);
//! }
//! // Verify a message received from outside (SPF, DKIM, DMARC, ARC through the engine's DNS pool).
//! if let Some(verifier) = engine.verifier() {
//!     let verdict = verifier.verify("192.0.2.1".parse()?, "client.example", "a@client.example", b"...").await;
//!     println!("{}", verdict.header);
//! }
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Runnable programs: `examples/send_mail.rs` (inject and watch delivery) and `examples/embed.rs`
//! (verification and back-pressure on).
#![warn(missing_docs)]

pub mod auth;
pub mod backpressure;
pub mod bounce;
pub mod cluster;
pub mod cpu_pool;
pub mod delivery;
pub mod dns;
pub mod engine;
pub mod error;
pub mod events;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod incoming;
pub mod metrics_catalog;
pub mod reception;
pub mod response;
pub mod suppression;
pub mod throughput;
pub mod tls_policy;
pub mod tls_report;
pub mod transfer;

pub use delivery::{DeliveryConfig, QueueRow};
pub use engine::{Accepted, Companion, Engine, EngineConfig, Injection, RecoveryReport};
pub use error::{EngineError, InjectError};
pub use events::{Event, EventLog, EventType, EventTypes};
pub use incoming::{BodyBudget, Incoming};
pub use mta_spool::{MessageRecord, Priority, QueueId, RecipientState, Spool};
pub use reception::Protocol;
pub use response::{Origin, Response};
