//! Which TLS policy governed one delivery session and what came of it: the `tls` object of `delivery`,
//! `transient_failure` and `bounce` events, kept typed from the connection to the event log.

use super::TlsResultType;

/// The policy a session ran under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicySource {
    /// DANE (RFC 7672): the MX host's authenticated TLSA records.
    Dane,
    /// MTA-STS (RFC 8461).
    MtaSts,
    /// No policy: opportunistic TLS (RFC 7435), or whatever `delivery.require_tls` asks.
    None,
}

/// How strictly the policy was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Failures defer the message (DANE always; MTA-STS `mode: enforce`).
    Enforce,
    /// Failures are reported only; the message is delivered (MTA-STS `mode: testing`).
    Testing,
}

/// One session's TLS: the policy, whether TLS was negotiated, and the RFC 8460 failure if the policy was not met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsSession {
    /// The policy in force for the host reached.
    pub policy: PolicySource,
    /// `None` without a policy.
    pub mode: Option<PolicyMode>,
    /// STARTTLS was negotiated.
    pub tls: bool,
    /// Why the policy was not met (an enforced policy then defers; `testing` and an unusable TLSA set deliver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<TlsResultType>,
}

impl TlsSession {
    /// A session under no policy.
    pub fn opportunistic(tls: bool) -> TlsSession {
        TlsSession { policy: PolicySource::None, mode: None, tls, failure: None }
    }

    /// A session (or an attempt refused before connecting) under an enforced policy that failed with `failure`.
    pub fn refused(policy: PolicySource, failure: TlsResultType) -> TlsSession {
        TlsSession { policy, mode: Some(PolicyMode::Enforce), tls: false, failure: Some(failure) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_documented() {
        let s = TlsSession { policy: PolicySource::MtaSts, mode: Some(PolicyMode::Testing), tls: true, failure: None };
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::json!({"policy": "mta-sts", "mode": "testing", "tls": true})
        );
        let s = TlsSession::refused(PolicySource::Dane, TlsResultType::ValidationFailure);
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::json!({"policy": "dane", "mode": "enforce", "tls": false, "failure": "validation-failure"})
        );
        assert_eq!(
            serde_json::to_value(TlsSession::opportunistic(false)).unwrap(),
            serde_json::json!({"policy": "none", "mode": null, "tls": false})
        );
    }
}
