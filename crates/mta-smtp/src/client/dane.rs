//! DANE for SMTP (RFC 7672, RFC 6698): the server's certificate must match one of the MX host's
//! DNSSEC-authenticated TLSA records. DANE-EE(3) pins the server's own certificate or key (names and dates
//! do not matter, §3.1.1); DANE-TA(2) names a trust anchor the server sends in its chain, and the chain up to
//! it is checked as PKIX would, the MX host name included (§3.1.2, §3.2.2).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256, Sha512};
use tokio_rustls::TlsConnector;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage: 2 = DANE-TA, 3 = DANE-EE (0 and 1, the PKIX usages, are not used for SMTP).
    pub usage: u8,
    /// Selector: 0 = the full certificate, 1 = its SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 = exact, 1 = SHA-256, 2 = SHA-512.
    pub matching: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// DANE-TA(2): a trust anchor.
    pub const DANE_TA: u8 = 2;
    /// DANE-EE(3): the server's own certificate or key.
    pub const DANE_EE: u8 = 3;

    /// Usable for SMTP (RFC 7672 §3.1): DANE-TA or DANE-EE, a known selector and matching type, data of the
    /// right length. Unusable records are ignored; a set of only unusable ones still requires TLS.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, Self::DANE_TA | Self::DANE_EE)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }

    /// Whether `cert` is what this record names (selector and matching type applied).
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match spki(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// The DER SubjectPublicKeyInfo of `cert` (webpki's parser keeps its contents; the outer SEQUENCE is added
/// back, as TLSA selector 1 hashes the whole structure).
pub fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let mut store = RootCertStore::empty();
    store.add(cert.clone()).ok()?;
    let anchor = store.roots.first()?;
    Some(der_sequence(anchor.subject_public_key_info.as_ref()))
}

fn der_sequence(content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = Vec::with_capacity(n + 6);
    out.push(0x30);
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let len = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
        out.push(0x80 | len.len() as u8);
        out.extend_from_slice(len);
    }
    out.extend_from_slice(content);
    out
}

/// Verifies a server against TLSA records; the handshake signatures are checked with the provider as usual.
#[derive(Debug)]
pub(crate) struct DaneVerifier {
    records: Arc<Vec<Tlsa>>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for these records.
    pub(crate) fn new(records: Arc<Vec<Tlsa>>) -> DaneVerifier {
        DaneVerifier { records, provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()) }
    }

    fn usable(&self, usage: u8) -> impl Iterator<Item = &Tlsa> {
        self.records.iter().filter(move |r| r.usage == usage && r.is_usable())
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.usable(Tlsa::DANE_EE).any(|r| r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        let mut last = None;
        for anchor in intermediates.iter().filter(|c| self.usable(Tlsa::DANE_TA).any(|r| r.matches(c))) {
            let mut roots = RootCertStore::empty();
            if let Err(e) = roots.add(anchor.clone()) {
                last = Some(e);
                continue;
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone()).build();
            let verifier = match verifier {
                Ok(v) => v,
                Err(e) => {
                    last = Some(rustls::Error::General(e.to_string()));
                    continue;
                }
            };
            match verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = Some(e),
            }
        }
        // No record matched: RFC 8460 `validation-failure` (or the chain's own error under DANE-TA).
        Err(last.unwrap_or(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A connector that accepts only servers matching `records` (one per connection: records differ per MX host).
pub(crate) fn connector(records: Arc<Vec<Tlsa>>) -> Result<TlsConnector, String> {
    let verifier = DaneVerifier::new(records);
    let config = rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, PublicKeyData};

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn record(usage: u8, selector: u8, matching: u8, selected: &[u8]) -> Tlsa {
        let data = match matching {
            0 => selected.to_vec(),
            1 => Sha256::digest(selected).to_vec(),
            _ => Sha512::digest(selected).to_vec(),
        };
        Tlsa { usage, selector, matching, data }
    }

    fn verify(records: Vec<Tlsa>, ee: &CertificateDer<'_>, chain: &[CertificateDer<'_>], name: &str) -> bool {
        let v = DaneVerifier::new(Arc::new(records));
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(ee, chain, &name, &[], now()).is_ok()
    }

    #[test]
    fn dane_ee_matches_the_key_or_certificate_whatever_the_name() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["other.example".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der().clone();
        assert_eq!(spki(&der).unwrap(), key.subject_public_key_info(), "selector 1 is the whole SubjectPublicKeyInfo");
        for (selector, selected) in [(0, der.to_vec()), (1, key.subject_public_key_info())] {
            for matching in 0..3 {
                let r = record(3, selector, matching, &selected);
                assert!(r.is_usable());
                assert!(verify(vec![r], &der, &[], "mx.example"), "selector {selector} matching {matching}");
            }
        }
        let other = KeyPair::generate().unwrap();
        assert!(!verify(vec![record(3, 1, 1, &other.subject_public_key_info())], &der, &[], "mx.example"));
        // PKIX usages are not used for SMTP (RFC 7672 §3.1.3).
        assert!(!record(1, 1, 1, &key.subject_public_key_info()).is_usable());
        assert!(!verify(vec![record(1, 1, 1, &key.subject_public_key_info())], &der, &[], "mx.example"));
    }

    #[test]
    fn dane_ta_checks_the_chain_and_the_name() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["mx.example".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        let (ee, ta) = (leaf.der().clone(), ca.der().clone());
        let r = record(2, 1, 1, &spki(&ta).unwrap());
        assert!(verify(vec![r.clone()], &ee, std::slice::from_ref(&ta), "mx.example"));
        assert!(!verify(vec![r.clone()], &ee, std::slice::from_ref(&ta), "wrong.example"), "names are checked");
        assert!(!verify(vec![r], &ee, &[], "mx.example"), "the anchor must be in the chain");
        assert!(verify(vec![record(2, 0, 2, &ta)], &ee, std::slice::from_ref(&ta), "mx.example"));
    }
}
