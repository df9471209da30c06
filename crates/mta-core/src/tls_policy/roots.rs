//! Trust anchors for verified outbound TLS and policy fetches: the system's roots plus the operator's PEM file
//! (`delivery.tls_ca_file`, for a private PKI and for tests).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Why the roots could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS roots: {0}")]
pub struct RootsError(pub String);

/// System roots (those that parse) plus every certificate of `ca_file`. A missing or empty `ca_file` is an
/// error: the operator asked for it.
pub fn load_roots(ca_file: Option<&Path>) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = native.errors.len(), "some system root certificates could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| RootsError(format!("{}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| RootsError(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(RootsError(format!("{}: no certificate", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| RootsError(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(roots)
}
