//! Client errors, classified for the delivery engine: next host, requeue, or bounce.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::proto::reply::Reply;

/// Where in the session something happened (for timeouts, I/O errors and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// Waiting for the greeting.
    Greeting,
    /// `EHLO` or `HELO`.
    Ehlo,
    /// `STARTTLS` and its reply.
    StartTls,
    /// The TLS handshake after `220` to `STARTTLS`.
    TlsHandshake,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// `DATA` and its `354`.
    DataInit,
    /// Writing the content.
    DataBlock,
    /// The reply after the content (`.` or `BDAT ... LAST`).
    DataTerm,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::DataInit => "DATA",
            Stage::DataBlock => "message content",
            Stage::DataTerm => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// Why a connection or a send failed. [`ClientError::is_connection_level`] says whether to try the next host
/// (the connection is unusable: drop it), [`ClientError::is_permanent`] whether to bounce.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// TCP connect (or binding the source address) failed: try the next address.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address we tried.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// No reply (or no progress writing) within the stage's limit. After [`Stage::DataBlock`] or
    /// [`Stage::DataTerm`] the server may have accepted the message: retrying can make a duplicate.
    #[error("timeout during {stage}")]
    Timeout {
        /// What we were waiting for.
        stage: Stage,
    },
    /// Reading or writing failed.
    #[error("I/O error during {stage}: {source}")]
    Io {
        /// What we were doing.
        stage: Stage,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection.
    #[error("connection closed by the server during {stage}")]
    Closed {
        /// What we were waiting for.
        stage: Stage,
    },
    /// A 4xx or 5xx greeting: try the next MX. Transient even for 5xx (RFC 5321 §3.1: a 554 greeting refuses
    /// this connection, not the mail; the next host or a later retry may take it).
    #[error("greeting rejected: {0}")]
    GreetingRejected(Reply),
    /// Both `EHLO` and `HELO` refused (or `EHLO` got a 4xx): try the next host.
    #[error("EHLO/HELO rejected: {0}")]
    HeloRejected(Reply),
    /// A `421` at any point after the greeting: the server is closing the connection (often throttling). The
    /// message in flight was not accepted; retry later.
    #[error("service not available: {0}")]
    ServiceUnavailable(Reply),
    /// The server broke the protocol (malformed, oversized or unexpected replies, STARTTLS response injection).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// STARTTLS refused or the TLS handshake failed while TLS was required (in opportunistic mode a failed
    /// handshake falls back to plaintext instead).
    #[error("TLS: {0}")]
    Tls(String),
    /// Under [`super::TlsPolicy::Verified`] the server's certificate was refused: retry later (a policy failure
    /// is never a bounce on its own).
    #[error("certificate refused ({failure:?}): {detail}")]
    Certificate {
        /// What was wrong with it.
        failure: super::CertificateFailure,
        /// The verifier's words.
        detail: String,
    },
    /// TLS is required and the server does not offer STARTTLS.
    #[error("TLS required but the server does not offer STARTTLS")]
    TlsRequired,
    /// `MAIL FROM` refused (4xx or 5xx; see [`Reply::is_permanent`]). The connection stays usable.
    #[error("message rejected: {0}")]
    MessageRejected(Reply),
    /// The message is larger than the server's announced `SIZE`; nothing was sent. Permanent.
    #[error("message of {size} octets exceeds the server's limit of {max}")]
    TooLarge {
        /// Our message size.
        size: u64,
        /// The server's `SIZE`.
        max: u64,
    },
    /// The message needs `SMTPUTF8` and the server does not offer it; nothing was sent. Permanent.
    #[error("message needs SMTPUTF8, which the server does not offer")]
    SmtpUtf8NotSupported,
    /// The sender address cannot be sent safely (control characters, angle brackets). Permanent.
    #[error("invalid sender address {0:?}")]
    InvalidAddress(String),
    /// The connection failed earlier and cannot carry another message.
    #[error("connection no longer usable")]
    Unusable,
}

impl ClientError {
    /// The message will never be accepted as it is: bounce it (the recipients in it).
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::MessageRejected(r) => r.is_permanent(),
            ClientError::TooLarge { .. } | ClientError::SmtpUtf8NotSupported | ClientError::InvalidAddress(_) => true,
            _ => false,
        }
    }

    /// The connection is at fault or dead: drop it; try the next host or address. When false, the message was
    /// at fault and the connection can carry the next one.
    pub fn is_connection_level(&self) -> bool {
        !matches!(
            self,
            ClientError::MessageRejected(_)
                | ClientError::TooLarge { .. }
                | ClientError::SmtpUtf8NotSupported
                | ClientError::InvalidAddress(_)
        )
    }

    /// The server's reply behind the error, when there is one (for events, DSNs and throttling decisions).
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::GreetingRejected(r)
            | ClientError::HeloRejected(r)
            | ClientError::ServiceUnavailable(r)
            | ClientError::MessageRejected(r) => Some(r),
            _ => None,
        }
    }

    /// A short label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } => "connect_error",
            ClientError::Timeout { .. } => "timeout",
            ClientError::Io { .. } | ClientError::Closed { .. } => "io_error",
            ClientError::GreetingRejected(_) => "greeting_rejected",
            ClientError::HeloRejected(_) => "helo_rejected",
            ClientError::ServiceUnavailable(_) => "service_unavailable",
            ClientError::Protocol(_) => "protocol_error",
            ClientError::Tls(_) | ClientError::TlsRequired => "tls_error",
            ClientError::Certificate { .. } => "certificate_error",
            ClientError::MessageRejected(_) => "rejected",
            ClientError::TooLarge { .. } => "too_large",
            ClientError::SmtpUtf8NotSupported => "smtputf8_unsupported",
            ClientError::InvalidAddress(_) => "invalid_address",
            ClientError::Unusable => "unusable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let rej = ClientError::MessageRejected(Reply::new(550, (5, 7, 1), "no"));
        assert!(rej.is_permanent() && !rej.is_connection_level());
        let tmp = ClientError::MessageRejected(Reply::new(451, (4, 3, 0), "later"));
        assert!(!tmp.is_permanent() && !tmp.is_connection_level());
        let greet = ClientError::GreetingRejected(Reply::basic(554, "no"));
        assert!(!greet.is_permanent() && greet.is_connection_level());
        assert_eq!(greet.reply().map(|r| r.code), Some(554));
        let big = ClientError::TooLarge { size: 10, max: 5 };
        assert!(big.is_permanent() && !big.is_connection_level());
        assert!(ClientError::Timeout { stage: Stage::Greeting }.is_connection_level());
    }
}
