//! Trust for the connections the cell makes (git over https, registries, S3, the ACME server):
//! the host's CA certificates plus the operator's `tls.trust_bundle` (an internal CA), and for
//! the ACME server its own `tls.acme.ca_bundle`.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The CA certificates in a PEM file; a file without one is an error.
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The host's CA certificates and those in `extra`.
pub fn roots(extra: &[&Path]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a host CA certificate was not read");
    }
    roots.add_parsable_certificates(native.certs);
    for path in extra {
        for cert in pem_certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

/// A TLS client configuration trusting the host's CA certificates and those in `extra`.
pub fn client_config(extra: &[&Path]) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots(extra)?)
        .with_no_client_auth())
}
