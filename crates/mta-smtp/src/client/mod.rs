//! The outbound SMTP client used for delivery: one [`Connection`] is one SMTP session to one MX address, able to
//! carry several messages in turn.
//!
//! # Layout
//!
//! - [`reply`]: sans-I/O. [`ReplyParser`] is fed the bytes the server sent and yields whole [`Reply`] values
//!   (multiline, enhanced status codes), with hard caps on line length and lines per reply so a hostile server
//!   can never make us buffer without bound. [`Capabilities`] reads an EHLO reply.
//! - [`body`]: sans-I/O. Message content as it goes on the wire: dot-stuffing for `DATA`, line endings made
//!   CRLF, the terminator.
//! - [`error`]: [`ClientError`], classified for the delivery engine: was the connection or the message at
//!   fault, is it permanent.
//! - `tls`: the opportunistic STARTTLS configuration (RFC 7435: no certificate check), the verified one
//!   ([`TlsTrust`], for MTA-STS) and the stream that is plaintext before STARTTLS and TLS after it.
//! - `dane`: DANE (RFC 7672) certificate checks against an MX host's TLSA records ([`Tlsa`]).
//! - `connection`: [`Connection`], the tokio session: connect, greeting, EHLO/HELO, STARTTLS, then
//!   [`Connection::send`] per message (pipelined when offered, `BDAT` when `CHUNKING` is offered), `RSET`, `QUIT`.
//!
//! # Outcomes
//!
//! [`Connection::send`] returns `Ok(SendResult)` whenever the server answered for the recipients: each recipient
//! gets a [`RecipientOutcome`] from its `RCPT` reply, or from the `DATA`/`BDAT` reply when its `RCPT` was
//! accepted (a `451` to `DATA` makes every accepted recipient [`RecipientOutcome::Transient`]). It returns
//! `Err` when the message could not be tried at all on this connection ([`ClientError::MessageRejected`] for a
//! refused `MAIL FROM`, [`ClientError::TooLarge`], [`ClientError::SmtpUtf8NotSupported`]) or when the connection
//! failed ([`ClientError::is_connection_level`]); in the latter case the result of an in-flight message is
//! unknown and it must be retried (a duplicate is possible if the server had already accepted it).
//!
//! # 8BITMIME
//!
//! There is no 8bit→7bit downgrade: a message that needs 8BITMIME is sent without `BODY=8BITMIME` to a server
//! that does not offer the extension (what Postfix does by default; practically every server accepts 8bit
//! content). SMTPUTF8 is different: a message that needs it is not sent to a server without it
//! ([`ClientError::SmtpUtf8NotSupported`], permanent).

pub mod body;
mod connection;
mod dane;
pub mod error;
pub mod reply;
mod tls;

use std::net::IpAddr;
use std::time::Duration;

pub use connection::Connection;
pub use dane::{spki, Tlsa};
pub use error::{ClientError, Stage};
pub use reply::{Capabilities, ReplyError, ReplyParser};
pub use tls::TlsTrust;

use crate::proto::reply::Reply;

/// Whether and how STARTTLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// RFC 7435 opportunistic TLS: STARTTLS when offered, any certificate accepted; when the handshake fails,
    /// reconnect and deliver in plaintext. A server that does not offer STARTTLS gets plaintext.
    #[default]
    Opportunistic,
    /// STARTTLS must be offered and succeed, or the connection fails ([`ClientError::TlsRequired`],
    /// [`ClientError::Tls`]). The certificate is still not verified (that needs DANE or MTA-STS).
    Required,
    /// Never STARTTLS.
    Disabled,
    /// STARTTLS must be offered and the certificate chain must verify against [`ClientConfig::trust`] for the
    /// MX host name (MTA-STS `enforce`, RFC 8461 §4.2). Any failure fails the connection; never plaintext.
    Verified,
    /// STARTTLS must be offered and the certificate must match one of [`ClientConfig::dane`]'s TLSA records
    /// (RFC 7672). Any failure fails the connection; never plaintext.
    Dane,
    /// MTA-STS `testing` (RFC 8461 §5): behaves as [`TlsPolicy::Opportunistic`] (plaintext fallback, any
    /// certificate accepted), but checks what [`TlsPolicy::Verified`] would have refused and keeps it in
    /// [`Connection::testing_failure`] for reporting.
    Testing,
}

/// Why a certificate was refused under [`TlsPolicy::Verified`] (maps onto RFC 8460 result types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateFailure {
    /// The certificate does not name the MX host (`certificate-host-mismatch`).
    HostMismatch,
    /// Expired or not yet valid (`certificate-expired`).
    Expired,
    /// The chain leads to no trusted root (`certificate-not-trusted`).
    NotTrusted,
    /// Any other verification failure (`validation-failure`).
    Other,
}

/// Time limits per stage, RFC 5321 §4.5.3.2. Each applies to one wait: one reply, or one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The `220` greeting (RFC: 5 minutes).
    pub greeting: Duration,
    /// The reply to `EHLO`/`HELO` (not in the RFC list; 5 minutes like MAIL).
    pub ehlo: Duration,
    /// The reply to `STARTTLS`, and then the TLS handshake.
    pub starttls: Duration,
    /// The reply to `MAIL FROM` (RFC: 5 minutes); also used for `RSET`.
    pub mail: Duration,
    /// Each reply to `RCPT TO` (RFC: 5 minutes).
    pub rcpt: Duration,
    /// The `354` to `DATA` (RFC: 2 minutes).
    pub data_init: Duration,
    /// Each write of message content (RFC: 3 minutes per TCP send).
    pub data_block: Duration,
    /// The reply after the final `.` or to `BDAT ... LAST` (RFC: 10 minutes).
    pub data_term: Duration,
    /// `QUIT` and its reply; short, it is best effort.
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(5 * MIN),
            ehlo: Duration::from_secs(5 * MIN),
            starttls: Duration::from_secs(2 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data_init: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_term: Duration::from_secs(10 * MIN),
            quit: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The same limit for every stage: for tests, and for callers that want one short budget.
    pub fn uniform(limit: Duration) -> Timeouts {
        Timeouts {
            connect: limit,
            greeting: limit,
            ehlo: limit,
            starttls: limit,
            mail: limit,
            rcpt: limit,
            data_init: limit,
            data_block: limit,
            data_term: limit,
            quit: limit,
        }
    }
}

/// How the client behaves; one per egress identity, shared by every connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name we give in `EHLO`/`HELO` (`server.hostname`).
    pub ehlo_name: String,
    /// STARTTLS policy (`delivery.require_tls` makes it [`TlsPolicy::Required`]).
    pub tls: TlsPolicy,
    /// Outbound bind address (`delivery.source_address`); `None` lets the kernel choose.
    pub source_address: Option<IpAddr>,
    /// Per-stage time limits.
    pub timeouts: Timeouts,
    /// Roots for [`TlsPolicy::Verified`]; without them a verified connection fails.
    pub trust: Option<TlsTrust>,
    /// The MX host's usable TLSA records for [`TlsPolicy::Dane`]; without them a DANE connection fails.
    pub dane: Option<std::sync::Arc<Vec<Tlsa>>>,
    /// Use `BDAT` when the server offers `CHUNKING` (the whole message in one pipelined write for small
    /// messages, no dot-stuffing). Off: always `DATA`, for peers with broken `BDAT`.
    pub chunking: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            ehlo_name: "localhost".to_string(),
            tls: TlsPolicy::default(),
            source_address: None,
            timeouts: Timeouts::default(),
            trust: None,
            dane: None,
            chunking: true,
        }
    }
}

/// The envelope of one message on one connection: the recipients all belong to the destination this connection
/// serves.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The reverse path, without angle brackets; `""` is the null sender (bounces).
    pub sender: &'a str,
    /// Forward paths, without angle brackets.
    pub recipients: &'a [String],
    /// The content has 8bit bytes: ask for `BODY=8BITMIME` when offered (sent anyway when not; see the module
    /// documentation).
    pub needs_8bit: bool,
    /// UTF-8 in addresses or headers: `SMTPUTF8` is required. Also assumed when an address is not ASCII.
    pub needs_smtputf8: bool,
}

/// The final result of one recipient in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// `RCPT` was 2xx and the `DATA`/`BDAT` reply was 2xx: the server took responsibility. The reply is the
    /// final one (usually carries the remote queue id).
    Delivered(Reply),
    /// 4xx at `RCPT`, or at `DATA` for an accepted recipient: retry later.
    Transient(Reply),
    /// 5xx at `RCPT`, or at `DATA` for an accepted recipient: bounce. Also an address we refuse to send
    /// (control characters or angle brackets in it), with a local `553 5.1.3` reply.
    Permanent(Reply),
}

impl RecipientOutcome {
    /// The reply behind the outcome.
    pub fn reply(&self) -> &Reply {
        match self {
            RecipientOutcome::Delivered(r) | RecipientOutcome::Transient(r) | RecipientOutcome::Permanent(r) => r,
        }
    }

    /// Delivered.
    pub fn is_delivered(&self) -> bool {
        matches!(self, RecipientOutcome::Delivered(_))
    }

    /// Maps a final reply: 2xx delivered, 5xx permanent, anything else transient.
    pub(crate) fn from_reply(reply: Reply) -> RecipientOutcome {
        if reply.is_positive() {
            RecipientOutcome::Delivered(reply)
        } else if reply.is_permanent() {
            RecipientOutcome::Permanent(reply)
        } else {
            RecipientOutcome::Transient(reply)
        }
    }
}

/// What one [`Connection::send`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// One outcome per [`Envelope::recipients`] entry, in the same order.
    pub recipients: Vec<RecipientOutcome>,
    /// The reply to the content (`DATA` refusal, end of data, or `BDAT LAST`); `None` when no recipient was
    /// accepted and no content was sent.
    pub data_reply: Option<Reply>,
}

impl SendResult {
    /// Number of recipients delivered.
    pub fn delivered(&self) -> usize {
        self.recipients.iter().filter(|o| o.is_delivered()).count()
    }
}
