//! `[smtp]`: inbound listeners, session limits, relay rules and submission users.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use mta_smtp::SessionConfig;
use serde::{Deserialize, Serialize};

use super::listener::{ListenerMode, ListenerSection};
use super::Invalid;
use crate::duration::HumanDuration;

/// Default `smtp.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `smtp.max_connections_per_ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 100;
/// Smallest `smtp.max_message_size` accepted.
pub const MIN_MESSAGE_SIZE: u64 = 1024;

/// One `[[smtp.users]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// Login name.
    pub name: String,
    /// Hash from `mta-server hash-key --password` (argon2id PHC string) or `sha256:<hex>`.
    pub password_hash: String,
}

/// `[smtp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Plain `smtp`-mode listeners.
    pub listen: Vec<SocketAddr>,
    /// Listeners with a mode and PROXY protocol.
    pub listener: Vec<ListenerSection>,
    /// PEM certificate chain; STARTTLS is offered when set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Largest message accepted (announced in SIZE).
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Concurrent SMTP connections in total.
    pub max_connections: usize,
    /// Concurrent SMTP connections per client IP.
    pub max_connections_per_ip: usize,
    /// Percent of `max_connections` one network (IPv4 /24, IPv6 /48) may hold before its idle sessions give way
    /// to other networks' newcomers when every slot is taken; 100 turns it off (added key).
    pub network_share: u8,
    /// A whole command line must arrive within this (RFC 5321 §4.5.3.2), however slowly its bytes trickle.
    pub timeout_command: HumanDuration,
    /// Wait for each DATA block.
    pub timeout_data: HumanDuration,
    /// Message content must come at least this fast (octets per second, after `data_rate_grace`); 0 = off
    /// (added key).
    pub min_data_rate: u64,
    /// Time before `min_data_rate` counts (added key).
    pub data_rate_grace: HumanDuration,
    /// Peers allowed to send a PROXY header on `proxy_protocol` listeners (`http.trusted_proxies` counts too).
    pub trusted_proxies: Vec<IpNet>,
    /// More `Received:` headers than this is a loop: `554 5.4.6`.
    pub max_hops: usize,
    /// Clients allowed to relay without AUTH.
    pub relay_networks: Vec<IpNet>,
    /// Domains accepted from anyone (inbound gateway).
    pub relay_domains: Vec<String>,
    /// Allow AUTH before TLS.
    pub allow_plaintext_auth: bool,
    /// Submission users.
    pub users: Vec<UserSection>,
    /// Bad commands tolerated per session before disconnect (added key).
    pub max_errors: usize,
}

impl Default for SmtpSection {
    /// The session limits are mta-smtp's defaults; listeners, relay rules and connection caps are ours.
    fn default() -> Self {
        let session = SessionConfig::default();
        SmtpSection {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            listener: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_message_size: session.max_message_size,
            max_recipients: session.max_recipients,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            network_share: mta_smtp::server::limits::DEFAULT_NETWORK_SHARE,
            timeout_command: session.timeout_command.into(),
            timeout_data: session.timeout_data.into(),
            min_data_rate: session.min_data_rate,
            data_rate_grace: session.data_rate_grace.into(),
            trusted_proxies: Vec::new(),
            max_hops: session.max_hops,
            relay_networks: vec!["127.0.0.0/8".parse().unwrap_or_default(), "::1/128".parse().unwrap_or_default()],
            relay_domains: Vec::new(),
            allow_plaintext_auth: session.allow_plaintext_auth,
            users: Vec::new(),
            max_errors: usize::try_from(session.max_errors).unwrap_or(usize::MAX),
        }
    }
}

impl SmtpSection {
    /// Every listener: each `listen` address as a plain `smtp` listener, then the `[[smtp.listener]]` tables.
    pub fn listeners(&self) -> Vec<ListenerSection> {
        self.listen.iter().copied().map(ListenerSection::plain).chain(self.listener.iter().cloned()).collect()
    }

    /// The sessions' settings with `hostname` as our name; TLS is the caller's (it reads key files).
    pub fn session_config(&self, hostname: &str) -> SessionConfig {
        SessionConfig {
            hostname: hostname.to_string(),
            max_message_size: self.max_message_size,
            max_recipients: self.max_recipients,
            max_errors: u32::try_from(self.max_errors).unwrap_or(u32::MAX),
            max_hops: self.max_hops,
            timeout_command: self.timeout_command.get(),
            timeout_data: self.timeout_data.get(),
            min_data_rate: self.min_data_rate,
            data_rate_grace: self.data_rate_grace.get(),
            allow_plaintext_auth: self.allow_plaintext_auth,
            ..SessionConfig::default()
        }
    }

    /// The checks serde cannot express (the TLS files must be readable).
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Invalid::new("smtp.tls_cert", "smtp.tls_cert and smtp.tls_key must be set together"));
        }
        for (key, p) in [("smtp.tls_cert", &self.tls_cert), ("smtp.tls_key", &self.tls_key)] {
            if let Some(p) = p {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(Invalid::new(key, format!("cannot read {}: {e}", p.display())));
                }
            }
        }
        if self.listener.iter().any(|l| l.mode == ListenerMode::Smtps) && self.tls_cert.is_none() {
            return Err(Invalid::new("smtp.listener.mode", "mode \"smtps\" needs smtp.tls_cert and smtp.tls_key"));
        }
        if !(1..=100).contains(&self.network_share) {
            return Err(Invalid::new("smtp.network_share", "must be a percentage from 1 to 100"));
        }
        if self.max_recipients == 0 {
            return Err(Invalid::new("smtp.max_recipients", "must be at least 1"));
        }
        if self.max_message_size < MIN_MESSAGE_SIZE {
            return Err(Invalid::new("smtp.max_message_size", format!("must be at least {MIN_MESSAGE_SIZE}")));
        }
        for (i, u) in self.users.iter().enumerate() {
            if !(u.password_hash.starts_with("$argon2") || u.password_hash.starts_with("sha256:")) {
                return Err(Invalid::new(
                    format!("smtp.users[{i}].password_hash"),
                    "expected a hash from `mta-server hash-key --password` ($argon2id$...) or sha256:<hex>",
                ));
            }
        }
        Ok(())
    }
}
