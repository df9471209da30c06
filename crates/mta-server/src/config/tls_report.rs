//! `[tls_report]`: TLS reporting (RFC 8460); defaults and meaning are `mta_core::tls_report`'s.

use mta_core::tls_report::TlsReportConfig;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// `[tls_report]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsReportSection {
    /// Count sessions under MTA-STS/DANE policies and send RFC 8460 reports to the domains' `rua`.
    pub enabled: bool,
    /// Report period (a day; tests use seconds).
    pub interval: HumanDuration,
    /// `organization-name` in reports; unset: the host name.
    pub organization: Option<String>,
    /// `contact-info` and sender of mailed reports; unset: `postmaster@<hostname>`.
    pub contact: Option<String>,
}

impl Default for TlsReportSection {
    fn default() -> Self {
        let c = TlsReportConfig::default();
        TlsReportSection {
            enabled: c.enabled,
            interval: c.interval.into(),
            organization: c.organization,
            contact: c.contact,
        }
    }
}

impl From<&TlsReportSection> for TlsReportConfig {
    fn from(s: &TlsReportSection) -> Self {
        TlsReportConfig {
            enabled: s.enabled,
            interval: s.interval.get(),
            organization: s.organization.clone(),
            contact: s.contact.clone(),
        }
    }
}
