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

/// The operator's extra CA certificates (`tls.trust_bundle`) in the forms each client takes:
/// the PEM for reqwest and the AWS SDK, and for git (which reads one CA file) a file holding the
/// host's CA certificates and these, readable by the workspaces' uids that run clones. The
/// file is created anew under the temporary directory (never a name someone else could have
/// placed) and removed when the cell stops.
#[derive(Debug)]
pub struct Outbound {
    pem: Vec<u8>,
    git_ca_file: tempfile::TempPath,
}

impl Outbound {
    pub fn load(bundle: &Path) -> Result<Outbound, String> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let extra = pem_certificates(bundle)?;
        let pem = std::fs::read(bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
        let mut file = tempfile::Builder::new()
            .prefix("devcell-trust-")
            .suffix(".pem")
            .tempfile()
            .map_err(|e| format!("cannot write the CA file for git: {e}"))?;
        let native = rustls_native_certs::load_native_certs();
        let mut text = String::new();
        for der in native.certs.iter().chain(extra.iter()) {
            text.push_str(&pem_of(der));
        }
        file.write_all(text.as_bytes())
            .and_then(|()| {
                file.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o644))
            })
            .map_err(|e| format!("cannot write the CA file for git: {e}"))?;
        Ok(Outbound {
            pem,
            git_ca_file: file.into_temp_path(),
        })
    }

    /// For git (`GIT_SSL_CAINFO`).
    pub fn git_ca_file(&self) -> &Path {
        &self.git_ca_file
    }

    pub fn reqwest_certificates(&self) -> Vec<reqwest::Certificate> {
        reqwest::Certificate::from_pem_bundle(&self.pem).unwrap_or_default()
    }

    /// An HTTP client for the AWS SDK trusting the host's CA certificates and these.
    pub fn aws_http_client(&self) -> Result<aws_sdk_s3::config::SharedHttpClient, String> {
        use aws_smithy_http_client::tls;
        let context = tls::TlsContext::builder()
            .with_trust_store(
                tls::TrustStore::empty()
                    .with_native_roots(true)
                    .with_pem_certificate(self.pem.clone()),
            )
            .build()
            .map_err(|e| format!("tls.trust_bundle: {e}"))?;
        Ok(aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context)
            .build_https())
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
