//! The policy boundary: the session speaks SMTP, the [`Handler`] decides (relay, load, spool).

use crate::Reply;
use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;

/// The kind of listener a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerMode {
    /// Plain SMTP (port 25 style), STARTTLS when configured.
    Smtp,
    /// Message submission (RFC 6409): AUTH required before MAIL.
    Submission,
    /// Implicit TLS from the first byte (RFC 8314).
    Smtps,
}

/// What the session knows about the client; passed to every handler call.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The client's address (the one from the PROXY header on proxied listeners).
    pub peer: SocketAddr,
    /// Our address the client connected to.
    pub local: SocketAddr,
    /// The EHLO/HELO argument, once given.
    pub helo: Option<String>,
    /// The connection is TLS (STARTTLS done, or smtps).
    pub tls: bool,
    /// The authenticated user, after a successful AUTH.
    pub auth_user: Option<String>,
    /// The listener's mode.
    pub mode: ListenerMode,
}

/// A complete message that passed every protocol check.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The reverse-path; `""` is the null sender.
    pub sender: String,
    /// Accepted recipients, in order.
    pub recipients: Vec<String>,
    /// The exact content bytes after dot-unstuffing (no `Received:` added: that is the handler's job).
    pub data: Bytes,
    /// `BODY=8BITMIME` was given.
    pub body_8bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
}

/// Policy and storage for SMTP sessions. Methods returning `Err(reply)` have that reply sent as is.
pub trait Handler: Send + Sync + 'static {
    /// Called at connect: `Ok` to greet, `Err(reply)` to send it (e.g. `421 4.3.2` under load) and close.
    fn on_connect(&self, info: &SessionInfo) -> Result<(), Reply>;

    /// How long to wait before the `220` greeting (tarpitting while the node is degraded). Zero by default.
    fn greeting_delay(&self, _info: &SessionInfo) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// MAIL FROM accepted syntactically: `Ok`, or a reply (e.g. `451 4.3.2` when shedding load).
    fn on_mail(&self, info: &SessionInfo, sender: &str) -> Result<(), Reply>;

    /// RCPT TO: relay control lives here (`550 5.7.1` for outsiders).
    fn on_rcpt(&self, info: &SessionInfo, sender: &str, rcpt: &str) -> Result<(), Reply>;

    /// Whether AUTH should be offered (users are configured).
    fn auth_enabled(&self) -> bool;

    /// Verifies credentials (may be slow: argon2); `true` when valid.
    fn authenticate(&self, user: &str, password: &str) -> impl Future<Output = bool> + Send;

    /// The message is complete: make it durable and return the queue id; the session replies
    /// `250 2.0.0 Ok: queued as <id>`. `Err(reply)` is sent as is (e.g. `451 4.3.0` when the spool failed).
    fn queue(&self, info: &SessionInfo, txn: Transaction) -> impl Future<Output = Result<String, Reply>> + Send;
}
