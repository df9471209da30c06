//! SMTP for the MTA: a sans-I/O protocol layer, the inbound ESMTP server, and (later) the delivery client.
//!
//! # Layout
//!
//! - [`proto`]: no I/O, no runtime. [`Command::parse`] turns a command line into a [`Command`] or a
//!   [`ParseError`] that knows its precise reply; [`Reply`] formats replies; [`proto::line::LineReader`] splits
//!   command lines with a hard cap; [`proto::data::DataReceiver`] and [`proto::data::BdatReceiver`] take
//!   message content byte-fed, unstuff it and enforce the content rules (bare CR/LF, line length, size).
//! - [`server`]: tokio on top. [`server::session::Session`] runs one connection over any
//!   `AsyncRead + AsyncWrite` stream (TCP, TLS, or an in-memory duplex in tests), with one state enum for the
//!   dialogue. It knows nothing of spools or relay rules: those decisions go through the [`Handler`] trait.
//!   [`server::listener::serve`] is the accept loop with connection caps and graceful shutdown.
//! - [`proxy`]: PROXY protocol v1/v2 header parsing, for listeners behind a load balancer.
//! - `client` (to come): the SMTP client used for delivery.
#![warn(missing_docs)]

pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
pub mod proxy;
pub mod server;

pub use proto::command::{Command, ParseError};
pub use proto::data::DataError;
pub use proto::reply::{EnhancedCode, Reply};
pub use server::config::SessionConfig;
pub use server::handler::{ContentSink, Handler, ListenerMode, SessionInfo, Transaction};
pub use server::listener::{serve, ConnectionLimits, ListenerOptions};
pub use server::session::Session;
