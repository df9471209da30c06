//! How a session behaves: limits, timeouts and TLS.

use std::time::Duration;

/// Default `min_data_rate`: 1 KiB/s (Postfix's `smtpd_min_data_rate` is 500 B/s); a 50 MiB message may take
/// 14 hours at it, a client sending one byte every few seconds is closed after the grace period.
pub const DEFAULT_MIN_DATA_RATE: u64 = 1024;
/// Default `data_rate_grace`.
pub const DEFAULT_DATA_RATE_GRACE: Duration = Duration::from_secs(30);
/// Default `max_message_size`: 50 MiB (52,428,800 octets), announced in SIZE; the engine's default too.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 << 20;
/// Default `max_recipients` per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100); the engine's too.
pub const DEFAULT_MAX_RECIPIENTS: usize = 1000;

/// Session settings shared by every connection of a listener (wrap in an `Arc`).
#[derive(Clone)]
pub struct SessionConfig {
    /// Our name in the greeting, in EHLO and in timeout replies.
    pub hostname: String,
    /// Command line cap in octets, CRLF included (RFC 5321 §4.5.3.1.4).
    pub max_command_line: usize,
    /// Text line cap in DATA/BDAT content, without CRLF (RFC 5322 §2.1.1).
    pub max_line: usize,
    /// Announced in SIZE and enforced on DATA and BDAT.
    pub max_message_size: u64,
    /// Recipients per transaction; over it `452 4.5.3`.
    pub max_recipients: usize,
    /// Bad commands before `421 4.7.0` and close.
    pub max_errors: u32,
    /// `Received:` fields allowed in a message; more is a loop: `554 5.4.6`.
    pub max_hops: usize,
    /// A whole command line must arrive within this of the moment the session started waiting for it
    /// (RFC 5321 §4.5.3.2: at least 5 minutes), however slowly its bytes trickle in.
    pub timeout_command: Duration,
    /// Waiting for each block of DATA/BDAT content (RFC 5321 §4.5.3.2: 3 minutes minimum).
    pub timeout_data: Duration,
    /// Message content must arrive at least this fast, in octets per second, averaged from the start of
    /// DATA (or of a BDAT chunk) once `data_rate_grace` has passed; slower clients get `421 4.4.2`. 0 = off.
    pub min_data_rate: u64,
    /// Time allowed before `min_data_rate` counts (credit for slow starts and small messages).
    pub data_rate_grace: Duration,
    /// Offer AUTH without TLS.
    pub allow_plaintext_auth: bool,
    /// STARTTLS is offered (and `smtps` listeners work) when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Time allowed for a PROXY protocol header on listeners that expect one.
    pub timeout_proxy_header: Duration,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            hostname: "localhost".to_owned(),
            max_command_line: 512,
            max_line: 998,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_errors: 10,
            max_hops: 50,
            timeout_command: Duration::from_secs(300),
            timeout_data: Duration::from_secs(600),
            min_data_rate: DEFAULT_MIN_DATA_RATE,
            data_rate_grace: DEFAULT_DATA_RATE_GRACE,
            allow_plaintext_auth: false,
            tls: None,
            timeout_proxy_header: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("hostname", &self.hostname)
            .field("max_command_line", &self.max_command_line)
            .field("max_line", &self.max_line)
            .field("max_message_size", &self.max_message_size)
            .field("max_recipients", &self.max_recipients)
            .field("max_errors", &self.max_errors)
            .field("max_hops", &self.max_hops)
            .field("timeout_command", &self.timeout_command)
            .field("timeout_data", &self.timeout_data)
            .field("min_data_rate", &self.min_data_rate)
            .field("data_rate_grace", &self.data_rate_grace)
            .field("allow_plaintext_auth", &self.allow_plaintext_auth)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}
