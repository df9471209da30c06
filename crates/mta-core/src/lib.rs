//! The embeddable mail engine: what a high-volume sender links to, and what `mta-server` is built on.
//!
//! # Layout
//! - [`backpressure`]: the health monitor and the `healthy → degraded → shedding` state intake paths read.
//! - [`delivery`]: the scheduler, site ready queues, outbound connections, retries and DSNs.
//! - [`dns`]: the bounded, cached, coalescing resolver pool.
//! - [`engine`]: [`Engine`] — open the spool, inject messages durably, emit events, shut down.
//! - [`reception`]: what every entry point does at reception (envelope checks, our `Received:` header).
//! - [`events`]: the delivery event log (JSON lines) and in-process subscriptions.
//! - [`error`]: typed errors, classified for the caller.
//! - `fuzzing`: the `dsn` fuzz target's logic, shared with the property tests (not a stable API).
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
#[doc(hidden)]
pub mod fuzzing;
pub mod reception;

pub use delivery::{DeliveryConfig, QueueRow};
pub use engine::{Accepted, Engine, EngineConfig, Injection, RecoveryReport};
pub use error::{EngineError, InjectError};
pub use events::{Event, EventLog, EventType};
pub use mta_spool::{MessageRecord, Priority, QueueId, RecipientState, Spool};
pub use reception::Protocol;
