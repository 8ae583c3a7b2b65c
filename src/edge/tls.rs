//! The certificates the HTTPS listener serves. [`Served`] holds them behind a lock that rustls
//! asks for every new connection, so a renewed certificate reaches new connections without a
//! restart while open ones keep theirs; it picks one by the name the client asks for (the
//! wildcard for port subdomains, else the cell's own) and answers TLS-ALPN-01 validation with the
//! challenge certificate of the name being validated.
//!
//! [`CertFiles`] feeds it from files the operator keeps (`tls.cert_file`, `tls.key_file`): read
//! again when they change (checked every few seconds) and on SIGHUP; a file that does not load
//! (unreadable, not PEM, a key that is not the certificate's, or already expired) is logged and
//! the certificate in use kept. An expired certificate at start is still served (it is the best
//! there is) with a warning. `/metrics` shows the seconds left per name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::service::{Cell, CertSource, CertStatus};

/// How often the files' modification times are compared.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate ready to serve, with what operators see of it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub issuer: String,
}

impl Loaded {
    /// The chain and key from PEM text, checked to belong together; `what` names them in errors.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Loaded, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{what}: not a PEM certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err(format!("{what}: holds no certificate"));
        }
        let private = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("{what}: not a PEM private key: {e}"))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| format!("{what}: the first certificate does not parse: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        let not_before = time(leaf.validity().not_before);
        let not_after = time(leaf.validity().not_after);
        let issuer = leaf
            .issuer()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok().map(str::to_owned))
            .unwrap_or_else(|| leaf.issuer().to_string());
        let names = leaf_names(&leaf);
        let certified = CertifiedKey::from_der(chain, private, &provider())
            .map_err(|e| format!("{what}: the key does not make a usable certificate: {e}"))?;
        Ok(Loaded {
            key: Arc::new(certified),
            names,
            not_before,
            not_after,
            issuer,
        })
    }

    /// A self-signed certificate for `names`: what the cell serves when it has nothing else.
    pub fn self_signed(names: &[String]) -> Result<Loaded, String> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names.to_vec())
                .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
        Loaded::from_pem(
            cert.pem().as_bytes(),
            signing_key.serialize_pem().as_bytes(),
            "self-signed certificate",
        )
    }

    /// Whether this certificate covers `name` (exactly, or by a wildcard of one label).
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| matches_name(n, name))
    }
}

/// Whether a certificate name (`example.com`, `*.ws.example.com`) covers a host name.
pub fn matches_name(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// The certificates served, by slot (`main`, `wildcard`, `files`), and TLS-ALPN-01 answers.
#[derive(Debug, Default)]
pub struct Served {
    slots: RwLock<Vec<(String, Loaded)>>,
    pub(super) challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Served {
    /// Serves `loaded` for `slot` from the next connection on.
    pub fn set(&self, slot: &str, loaded: Loaded) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        match slots.iter_mut().find(|(s, _)| s == slot) {
            Some((_, l)) => *l = loaded,
            None => slots.push((slot.to_owned(), loaded)),
        }
    }

    pub fn get(&self, slot: &str) -> Option<Loaded> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(s, _)| s == slot)
            .map(|(_, l)| l.clone())
    }

    /// Answers TLS-ALPN-01 validation of `name` with `cert` until [`Served::end_challenge`].
    pub fn challenge(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), cert);
    }

    pub fn end_challenge(&self, name: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }

    /// The rustls configuration serving these certificates over HTTP/1.1 (and answering
    /// TLS-ALPN-01 validation).
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        config
    }

    /// Sets the seconds left per name in `metrics` (names no longer served go).
    pub fn report(&self, metrics: &crate::metrics::Metrics) {
        let now = OffsetDateTime::now_utc();
        metrics.certificate_expiry.clear();
        for (_, loaded) in self.slots.read().unwrap_or_else(|p| p.into_inner()).iter() {
            for name in &loaded.names {
                metrics
                    .certificate_expiry
                    .get_or_create(&crate::metrics::CertLabels { name: name.clone() })
                    .set((loaded.not_after - now).whole_seconds());
            }
        }
    }
}

impl ResolvesServerCert for Served {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let validating = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validating {
            // Only the challenge certificate answers a validation, never a real one.
            return self
                .challenges
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name.as_deref()?)
                .cloned();
        }
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let covering = name
            .as_deref()
            .and_then(|n| slots.iter().find(|(_, l)| l.covers(n)));
        covering
            .or_else(|| slots.first())
            .map(|(_, l)| l.key.clone())
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The operator's certificate files, served as slot `files`.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    served: Arc<Served>,
    /// The files' modification times when they were last read.
    read_at: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
    last_error: RwLock<Option<String>>,
}

impl CertFiles {
    /// Loads the files into `served`; at start a file that does not load is an error (nothing
    /// to serve).
    pub fn load(cert: &Path, key: &Path, served: Arc<Served>) -> Result<Arc<CertFiles>, String> {
        let read_at = (modified(cert), modified(key));
        let loaded = read_files(cert, key)?;
        if loaded.not_after <= OffsetDateTime::now_utc() {
            tracing::warn!(cert = %cert.display(), "the certificate has expired: clients will refuse it until the file is renewed");
        }
        served.set("files", loaded);
        Ok(Arc::new(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            served,
            read_at: RwLock::new(read_at),
            last_error: RwLock::new(None),
        }))
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let read_at = (modified(&self.cert), modified(&self.key));
        let loaded = read_files(&self.cert, &self.key);
        *self.read_at.write().unwrap_or_else(|p| p.into_inner()) = read_at;
        let loaded = loaded?;
        if loaded.not_after <= OffsetDateTime::now_utc() {
            return Err(format!(
                "{} has expired; renew it (the certificate in use stays)",
                self.cert.display()
            ));
        }
        self.served.set("files", loaded);
        Ok(())
    }

    fn changed(&self) -> bool {
        let now = (modified(&self.cert), modified(&self.key));
        *self.read_at.read().unwrap_or_else(|p| p.into_inner()) != now
    }

    fn publish(&self, cell: &Cell) {
        let Some(loaded) = self.served.get("files") else {
            return;
        };
        cell.publish_certificate_status(CertStatus {
            slot: "files".into(),
            names: loaded.names,
            source: CertSource::Files,
            issuer: Some(loaded.issuer),
            not_after: Some(loaded.not_after),
            next_renewal: None,
            last_error: self
                .last_error
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            failures: 0,
        });
    }

    /// Reads the files again whenever they change or SIGHUP arrives, and keeps the metrics and
    /// the status current, until `stop`.
    pub fn watch(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        metrics: Arc<crate::metrics::Metrics>,
        cell: Cell,
    ) {
        let files = self.clone();
        files.served.report(&metrics);
        files.publish(&cell);
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
                files.served.report(&metrics);
                if asked || files.changed() {
                    let result = files.reload();
                    match &result {
                        Ok(()) => {
                            tracing::info!(cert = %files.cert.display(), "certificate read again; new connections get it")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the certificate files did not load; still serving the previous certificate")
                        }
                    }
                    *files.last_error.write().unwrap_or_else(|p| p.into_inner()) = result.err();
                }
                files.publish(&cell);
            }
        });
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_files(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let chain = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let private = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    Loaded::from_pem(
        &chain,
        &private,
        &format!("{} and {}", cert.display(), key.display()),
    )
}

/// The leaf's DNS names and addresses, else its common name.
fn leaf_names(leaf: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
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
    names
}

#[cfg(test)]
mod tests {
    use super::matches_name;

    #[test]
    fn a_wildcard_covers_one_label_only() {
        assert!(matches_name("*.ws.example.com", "8080-abc.ws.example.com"));
        assert!(matches_name("*.ws.example.com", "8080-ABC.WS.example.com."));
        assert!(!matches_name("*.ws.example.com", "ws.example.com"));
        assert!(!matches_name("*.ws.example.com", "a.b.ws.example.com"));
        assert!(!matches_name("*.ws.example.com", "evilws.example.com"));
        assert!(matches_name("dev.example.com", "DEV.example.com"));
        assert!(!matches_name("dev.example.com", "x.dev.example.com"));
    }
}
