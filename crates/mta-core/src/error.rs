//! Errors of the engine's public API, classified for the caller (which reply code, retry or not).

use mta_spool::SpoolError;

/// Why an injection was refused. Nothing was stored when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// The envelope sender is not a valid address (use `""` for the null sender).
    #[error("invalid sender {address:?}: {reason}")]
    InvalidSender {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A recipient is not a valid address.
    #[error("invalid recipient {address:?} (recipients[{index}]): {reason}")]
    InvalidRecipient {
        /// Position in the request.
        index: usize,
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No recipients at all.
    #[error("no recipients")]
    NoRecipients,
    /// More recipients than `max_recipients`.
    #[error("too many recipients ({count} > {max})")]
    TooManyRecipients {
        /// Recipients given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The message is larger than `max_message_size`.
    #[error("message too large ({size} > {max} bytes)")]
    TooLarge {
        /// Size given.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The message's header section is longer than [`crate::incoming::MAX_HEADER_SECTION`].
    #[error("header section too large")]
    HeaderTooLarge,
    /// The node is stopping: retry on another node or later.
    #[error("shutting down")]
    ShuttingDown,
    /// DKIM signing failed (a crypto error): retry later rather than send unsigned.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The node is shedding load: retry later or elsewhere.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The spool could not make the message durable: retry later.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

impl InjectError {
    /// True when the client should retry later (4xx / 503), false when the request itself is wrong (5xx / 4xx).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            InjectError::ShuttingDown | InjectError::Overloaded(_) | InjectError::Spool(_) | InjectError::Signing(_)
        )
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The spool could not be opened (locked by another process, unreadable, ...).
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// An event exporter could not be set up (bad URL, TLS).
    #[error("event export: {0}")]
    Export(#[from] crate::export::ExportError),
    /// The event log could not be opened.
    #[error("event log {path}: {source}")]
    EventLog {
        /// The configured path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The resolver pool could not be built (bad nameserver config, unreadable resolv.conf).
    #[error("dns: {0}")]
    Dns(crate::dns::DnsError),
    /// DKIM keys could not be loaded.
    #[error("dkim: {0}")]
    Auth(crate::auth::AuthError),
    /// The loopback DNS stub mail authentication resolves through could not be started.
    #[error("DNS stub for mail authentication: {0}")]
    DnsStub(std::io::Error),
    /// A blocking start-up task failed.
    #[error("start-up task failed: {0}")]
    Join(String),
}
