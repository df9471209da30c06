//! STARTTLS configurations (opportunistic, RFC 7435; verified, for MTA-STS and other policies) and the stream
//! that is plaintext before STARTTLS and TLS after it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Accepts any certificate chain (opportunistic TLS authenticates nobody; it only keeps passive eavesdroppers
/// out), but still checks that the server holds the key of the certificate it sent: the handshake signatures
/// are verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

/// The shared connector: TLS 1.2 and 1.3 with the aws-lc-rs provider, any certificate. Built once.
pub(crate) fn connector() -> Result<TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
            .with_no_client_auth();
        Ok(Arc::new(config))
    });
    config.clone().map(TlsConnector::from)
}

/// Trust anchors for verified STARTTLS ([`super::TlsPolicy::Verified`]): the certificate chain must lead to one
/// of them and name the MX host (RFC 8461 §4.2: PKIX, the MX name as reference identity). Built once, shared.
#[derive(Clone)]
pub struct TlsTrust {
    config: Arc<rustls::ClientConfig>,
    /// The same check outside a handshake (MTA-STS `testing`: the session goes on whatever it says).
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

impl TlsTrust {
    /// A verifier with these roots (system roots plus the operator's private ones, typically).
    pub fn new(roots: rustls::RootCertStore) -> Result<TlsTrust, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = Arc::new(roots);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("certificate verifier: {e}"))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsTrust { config: Arc::new(config), verifier })
    }

    /// Checks a chain the server presented as a verified handshake would (PKIX, `name` as reference identity).
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
    ) -> Result<(), rustls::Error> {
        self.verifier.verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now()).map(|_| ())
    }

    /// The connector that verifies chains against these roots.
    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.config.clone())
    }
}

impl std::fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTrust")
    }
}

/// Why a verified handshake failed, read from the rustls error inside the I/O error (RFC 8460 result types
/// are derived from it).
pub(crate) fn certificate_failure(e: &io::Error) -> Option<super::CertificateFailure> {
    failure_of(e.get_ref()?.downcast_ref::<rustls::Error>()?)
}

/// Why a certificate was refused, from the rustls error (`None`: not a certificate error).
pub(crate) fn failure_of(inner: &rustls::Error) -> Option<super::CertificateFailure> {
    use super::CertificateFailure as F;
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(c) = inner else {
        return None;
    };
    Some(match c {
        C::NotValidForName | C::NotValidForNameContext { .. } => F::HostMismatch,
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => F::Expired,
        C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => F::NotTrusted,
        _ => F::Other,
    })
}

/// The name for SNI: the MX host name when it is a valid DNS name, else the address (no SNI is sent for it).
pub(crate) fn server_name(name: &str, addr: std::net::IpAddr) -> ServerName<'static> {
    let name = name.trim_end_matches('.');
    ServerName::try_from(name.to_string()).unwrap_or(ServerName::IpAddress(addr.into()))
}

/// The session's transport. `Closed` only while switching to TLS (or after a failed switch).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}
