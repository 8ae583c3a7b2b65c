//! HTTPS from certificate files the operator keeps (`tls.cert_file`, `tls.key_file`): the
//! certificate in use sits behind a lock that rustls asks for every new connection, so a
//! renewed file is served to new connections without a restart while open ones keep theirs.
//! The files are read again when they change (checked every few seconds) and on SIGHUP; a file
//! that does not load (unreadable, not PEM, a key that is not the certificate's, or already
//! expired) is logged and the certificate in use kept. An expired certificate at start is still
//! served (it is the best there is) with a warning. `/metrics` shows the seconds left per name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files' modification times are compared.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The certificate the listener serves, and where it comes from.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The served leaf's expiry (Unix seconds) and the names it holds.
    expiry: RwLock<(i64, Vec<String>)>,
    /// The files' modification times when they were last read.
    read_at: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl CertFiles {
    /// Loads the files; at start a file that does not load is an error (nothing to serve).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertFiles>, String> {
        let read_at = (modified(cert), modified(key));
        let (current, not_after, names) = certified_key(cert, key)?;
        if not_after <= now() {
            tracing::warn!(cert = %cert.display(), "the certificate has expired: clients will refuse it until the file is renewed");
        }
        Ok(Arc::new(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
            expiry: RwLock::new((not_after, names)),
            read_at: RwLock::new(read_at),
        }))
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let read_at = (modified(&self.cert), modified(&self.key));
        let loaded = certified_key(&self.cert, &self.key);
        *self.read_at.write().unwrap_or_else(|p| p.into_inner()) = read_at;
        let (loaded, not_after, names) = loaded?;
        if not_after <= now() {
            return Err(format!(
                "{} has expired; renew it (the certificate in use stays)",
                self.cert.display()
            ));
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        *self.expiry.write().unwrap_or_else(|p| p.into_inner()) = (not_after, names);
        Ok(())
    }

    fn changed(&self) -> bool {
        let now = (modified(&self.cert), modified(&self.key));
        *self.read_at.read().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// The rustls configuration serving this certificate over HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }

    /// Sets the seconds left per name in `metrics` (names the certificate no longer holds go).
    fn report(&self, metrics: &crate::metrics::Metrics) {
        let (not_after, names) = self
            .expiry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        metrics.certificate_expiry.clear();
        for name in names {
            metrics
                .certificate_expiry
                .get_or_create(&crate::metrics::CertLabels { name })
                .set(not_after - now());
        }
    }

    /// Reads the files again whenever they change or SIGHUP arrives, and keeps the metrics
    /// current, until `stop`.
    pub fn watch(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        let files = self.clone();
        files.report(&metrics);
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let asked = tokio::select! {
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                    _ = tokio::time::sleep(CHECK_EVERY) => false,
                    _ = hangup => true,
                };
                files.report(&metrics);
                if !asked && !files.changed() {
                    continue;
                }
                match files.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %files.cert.display(), "certificate read again; new connections get it")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the certificate files did not load; still serving the previous certificate")
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The chain and key from PEM files, checked to belong together, with the leaf's expiry (Unix
/// seconds) and names (DNS names and addresses, else its common name).
fn certified_key(cert: &Path, key: &Path) -> Result<(CertifiedKey, i64, Vec<String>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
        format!(
            "{}: the first certificate does not parse: {e}",
            cert.display()
        )
    })?;
    let not_after = leaf.validity().not_after.timestamp();
    let mut names: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                        16 => <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            leaf.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    let certified = CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((certified, not_after, names))
}
