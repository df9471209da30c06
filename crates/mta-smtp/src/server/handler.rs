//! The policy boundary: the session speaks SMTP, the [`Handler`] decides (relay, load, spool).

use crate::Reply;
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

/// The envelope of a message whose content passed every protocol check.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The reverse-path; `""` is the null sender.
    pub sender: String,
    /// Accepted recipients, in order.
    pub recipients: Vec<String>,
    /// `BODY=8BITMIME` was given.
    pub body_8bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
}

/// Takes a message's content while it arrives: the exact bytes after dot-unstuffing, in order, in chunks no
/// larger than one read from the client. The session never holds the whole message; where it goes (memory,
/// a spool file) is the handler's choice.
pub trait ContentSink: Send {
    /// The next bytes. `Err(reply)` refuses the message: the session reads on to the end of the content (to
    /// stay in sync with the client), writes nothing more, and sends that reply at the end.
    fn write(&mut self, chunk: &[u8]) -> impl Future<Output = Result<(), Reply>> + Send;
}

/// The whole content in memory: for tests and for embedders whose messages are small.
impl ContentSink for Vec<u8> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), Reply> {
        self.extend_from_slice(chunk);
        Ok(())
    }
}

/// Policy and storage for SMTP sessions. Methods returning `Err(reply)` have that reply sent as is.
pub trait Handler: Send + Sync + 'static {
    /// Where message content goes while it is received.
    type Content: ContentSink;

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

    /// DATA or the first BDAT is about to be answered: where the content will go. `Err(reply)` refuses the
    /// message before any content is read (DATA gets that reply instead of `354`; BDAT chunks are skipped).
    fn begin_content(
        &self,
        info: &SessionInfo,
        txn: &Transaction,
    ) -> impl Future<Output = Result<Self::Content, Reply>> + Send;

    /// The message is complete: make it durable and return the queue id; the session replies
    /// `250 2.0.0 Ok: queued as <id>`. `Err(reply)` is sent as is (e.g. `451 4.3.0` when the spool failed).
    /// A content that is dropped without reaching here was abandoned (client gone, content refused).
    fn queue(
        &self,
        info: &SessionInfo,
        txn: Transaction,
        content: Self::Content,
    ) -> impl Future<Output = Result<String, Reply>> + Send;
}
