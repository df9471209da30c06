//! RFC 8460 §4.3 result types: why a session under a TLS policy failed, kept typed on the delivery
//! [`crate::Response`] so TLS reporting counts them without reading text.

use mta_smtp::client::{CertificateFailure, ClientError};

/// One RFC 8460 failure result type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TlsResultType {
    /// The MX host does not offer STARTTLS (or refused it).
    StarttlsNotSupported,
    /// The certificate does not name the MX host.
    CertificateHostMismatch,
    /// The certificate has expired (or is not yet valid).
    CertificateExpired,
    /// The certificate chain leads to no trusted root.
    CertificateNotTrusted,
    /// Any other failure to establish verified TLS (including "no MX host matches the policy").
    ValidationFailure,
    /// DANE: none of the MX host's authenticated TLSA records is usable (TLS still required, unauthenticated).
    TlsaInvalid,
    /// DANE: the resolver returned no valid answer for an MX host's TLSA records (SERVFAIL, timeout) although
    /// the MX answer was authenticated: deferred (RFC 7672 §2.2).
    DnssecInvalid,
    /// MTA-STS: the policy announced in DNS could not be fetched.
    StsPolicyFetchError,
    /// MTA-STS: the fetched policy is not a valid policy file.
    StsPolicyInvalid,
    /// MTA-STS: the policy host's certificate did not verify (PKIX).
    StsWebpkiInvalid,
}

impl TlsResultType {
    /// The RFC 8460 name (`starttls-not-supported`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsResultType::StarttlsNotSupported => "starttls-not-supported",
            TlsResultType::CertificateHostMismatch => "certificate-host-mismatch",
            TlsResultType::CertificateExpired => "certificate-expired",
            TlsResultType::CertificateNotTrusted => "certificate-not-trusted",
            TlsResultType::ValidationFailure => "validation-failure",
            TlsResultType::TlsaInvalid => "tlsa-invalid",
            TlsResultType::DnssecInvalid => "dnssec-invalid",
            TlsResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            TlsResultType::StsPolicyInvalid => "sts-policy-invalid",
            TlsResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The result type of a client error, when it is a TLS failure (only produced when TLS was required or
    /// verified: opportunistic sessions fall back to plaintext instead of failing).
    pub fn from_client_error(e: &ClientError) -> Option<TlsResultType> {
        Some(match e {
            ClientError::TlsRequired => TlsResultType::StarttlsNotSupported,
            ClientError::Tls(text) if text.starts_with("STARTTLS refused") => TlsResultType::StarttlsNotSupported,
            ClientError::Tls(_) => TlsResultType::ValidationFailure,
            ClientError::Certificate { failure, .. } => match failure {
                CertificateFailure::HostMismatch => TlsResultType::CertificateHostMismatch,
                CertificateFailure::Expired => TlsResultType::CertificateExpired,
                CertificateFailure::NotTrusted => TlsResultType::CertificateNotTrusted,
                _ => TlsResultType::ValidationFailure,
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_rfc_8460_names() {
        let host = ClientError::Certificate { failure: CertificateFailure::HostMismatch, detail: String::new() };
        assert_eq!(TlsResultType::from_client_error(&host).map(|t| t.as_str()), Some("certificate-host-mismatch"));
        let none = TlsResultType::from_client_error(&ClientError::TlsRequired);
        assert_eq!(none, Some(TlsResultType::StarttlsNotSupported));
        assert_eq!(TlsResultType::from_client_error(&ClientError::Unusable), None);
        let resp = crate::Response::from_error(&host);
        assert_eq!((resp.code, resp.tls_failure), (451, Some(TlsResultType::CertificateHostMismatch)));
        for t in [TlsResultType::TlsaInvalid, TlsResultType::DnssecInvalid, TlsResultType::StsWebpkiInvalid] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}
