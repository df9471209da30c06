//! The embeddable mail engine: what a high-volume sender links to, and what `mta-server` is built on.
//!
//! # Layout
//! - [`backpressure`]: the health monitor and the `healthy → degraded → shedding` state intake paths read.
//! - [`delivery`]: the scheduler, site ready queues, outbound connections, retries and DSNs.
//! - [`dns`]: the bounded, cached, coalescing resolver pool.
//! - [`engine`]: [`Engine`] — open the spool, inject messages durably, emit events, shut down.
//! - [`reception`]: what every entry point does at reception (envelope checks, our `Received:` header).
//! - [`incoming`]: [`Incoming`], a message received in pieces with bounded memory (staged to disk when large).
//! - [`metrics_catalog`]: every exported metric with its help text and unit.
//! - [`events`]: the delivery event log (JSON lines) and in-process subscriptions.
//! - [`error`]: typed errors, classified for the caller.
//!
//! Spool types ([`QueueId`], [`MessageRecord`], ...) are re-exported from `mta-spool`.
#![warn(missing_docs)]

pub mod auth;
pub mod backpressure;
pub mod delivery;
pub mod dns;
pub mod engine;
pub mod error;
pub mod events;
pub mod incoming;
pub mod metrics_catalog;
pub mod reception;

pub use delivery::{DeliveryConfig, QueueRow};
pub use engine::{Accepted, Engine, EngineConfig, Injection, RecoveryReport};
pub use error::{EngineError, InjectError};
pub use events::{Event, EventLog, EventType};
pub use incoming::{BodyBudget, Incoming};
pub use mta_spool::{MessageRecord, Priority, QueueId, RecipientState, Spool};
pub use reception::Protocol;
