//! One suppression entry and its stored form (JSON in the aux tree: small, and readable in a debugger).

use serde::{Deserialize, Serialize};

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Added by an operator or through the API.
    Manual,
    /// A bounce of a class in `suppression.auto_classes`.
    HardBounce,
    /// The recipient unsubscribed.
    Unsubscribe,
    /// The recipient complained (an ARF feedback report).
    Complaint,
}

impl Reason {
    /// The name the API and CSV use.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Manual => "manual",
            Reason::HardBounce => "hard_bounce",
            Reason::Unsubscribe => "unsubscribe",
            Reason::Complaint => "complaint",
        }
    }

    /// The reason named `s`.
    pub fn parse(s: &str) -> Option<Reason> {
        [Reason::Manual, Reason::HardBounce, Reason::Unsubscribe, Reason::Complaint]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A suppressed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The address (lowercased when stored).
    pub email: String,
    /// Why.
    pub reason: Reason,
    /// The tenant it applies to; `None`: every tenant.
    pub tenant: Option<String>,
    /// When it was added, RFC 3339 UTC.
    pub created: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    reason: Reason,
    created: String,
}

impl Entry {
    /// An entry created now.
    pub fn new(email: impl Into<String>, reason: Reason, tenant: Option<String>) -> Entry {
        Entry { email: email.into(), reason, tenant, created: crate::events::now_rfc3339() }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Stored { reason: self.reason, created: self.created.clone() }).unwrap_or_default()
    }

    pub(super) fn decode(tenant: &str, address: &str, value: &[u8]) -> Option<Entry> {
        let s: Stored = serde_json::from_slice(value).ok()?;
        Some(Entry {
            email: address.to_string(),
            reason: s.reason,
            tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
            created: s.created,
        })
    }
}
