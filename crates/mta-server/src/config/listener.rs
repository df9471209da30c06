//! `[[smtp.listener]]`: extra SMTP listeners with a mode and the PROXY protocol.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Listener modes, as spelled in the config file.
///
/// mta-smtp has no serde dependency, so the file's spelling lives here and converts into
/// [`mta_smtp::ListenerMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port 25 style: relay rules apply, AUTH optional.
    #[default]
    Smtp,
    /// Port 587 style: AUTH required before MAIL.
    Submission,
    /// Port 465 style: implicit TLS.
    Smtps,
}

impl From<ListenerMode> for mta_smtp::ListenerMode {
    fn from(mode: ListenerMode) -> Self {
        match mode {
            ListenerMode::Smtp => mta_smtp::ListenerMode::Smtp,
            ListenerMode::Submission => mta_smtp::ListenerMode::Submission,
            ListenerMode::Smtps => mta_smtp::ListenerMode::Smtps,
        }
    }
}

/// One `[[smtp.listener]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Address to bind.
    pub address: SocketAddr,
    /// Protocol mode.
    #[serde(default)]
    pub mode: ListenerMode,
    /// Expect a PROXY protocol (v1 or v2) header before SMTP (behind a load balancer).
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl ListenerSection {
    /// A plain `smtp` listener on `address` (what each `smtp.listen` entry is).
    pub fn plain(address: SocketAddr) -> Self {
        ListenerSection { address, mode: ListenerMode::Smtp, proxy_protocol: false }
    }
}
