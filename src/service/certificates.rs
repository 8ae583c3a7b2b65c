//! The cell's own certificates: those got by ACME and the account that got them, kept in the
//! store with private keys sealed, and the live status of every certificate the edge serves
//! (what `devcell cert status`, the admin page and the dashboard's warning show).

use std::sync::RwLock;

use time::OffsetDateTime;

use super::{Cell, Error, Result};
use crate::domain::entities::IssuedCertificate;
use crate::store::Reader;

/// Where a served certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertSource {
    Acme,
    Files,
    /// Made by the cell because it has nothing else; browsers warn about it.
    SelfSigned,
}

/// One certificate the edge serves, as operators see it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CertStatus {
    /// `main`, `wildcard` or `files`.
    pub slot: String,
    pub names: Vec<String>,
    pub source: CertSource,
    pub issuer: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// When the cell next tries to renew it (ACME only).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_renewal: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
}

impl CertStatus {
    /// What needs the operator's eye, if anything: a self-signed certificate, one expiring
    /// within 14 days (or expired), or three failed renewals in a row.
    pub fn warning(&self, now: OffsetDateTime) -> Option<String> {
        let names = self.names.join(", ");
        if self.source == CertSource::SelfSigned {
            return Some(match &self.last_error {
                Some(e) => format!(
                    "{names}: serving a self-signed certificate (browsers will warn) because none could be got: {e}"
                ),
                None => format!(
                    "{names}: serving a self-signed certificate (browsers will warn) until one is issued"
                ),
            });
        }
        let left = self.not_after.map(|t| t - now);
        if let Some(left) = left
            && left <= time::Duration::ZERO
        {
            return Some(format!(
                "{names}: the certificate has expired; {}",
                self.advice()
            ));
        }
        if let Some(left) = left
            && left <= time::Duration::days(14)
        {
            return Some(format!(
                "{names}: the certificate expires in {} days; {}",
                left.whole_days(),
                self.advice()
            ));
        }
        if self.failures >= 3 {
            return Some(format!(
                "{names}: {} renewals failed in a row (last: {}); the current certificate is still served",
                self.failures,
                self.last_error.as_deref().unwrap_or("unknown error")
            ));
        }
        None
    }

    /// What everyone may read, signed in or not: only that the certificate is self-signed (the
    /// reason names the cell's setup, which is for administrators).
    pub fn public_warning(&self) -> Option<String> {
        (self.source == CertSource::SelfSigned).then(|| {
            format!(
                "{}: this cell serves a self-signed certificate for now, so browsers warn about it; an administrator sees why on the admin page",
                self.names.join(", ")
            )
        })
    }

    fn advice(&self) -> String {
        match (self.source, &self.last_error) {
            (CertSource::Files, _) => "renew the files in tls.cert_file and tls.key_file".into(),
            (_, Some(e)) => format!("renewal keeps failing: {e}"),
            (_, None) => "renewal has not run yet".into(),
        }
    }
}

/// When a certificate is due for renewal without word from its CA: two thirds into its
/// lifetime.
pub fn renewal_point(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// The statuses the edge last published.
#[derive(Default)]
pub(super) struct CertStatuses(RwLock<Vec<CertStatus>>);

impl Cell {
    /// Certificates got by ACME earlier, to serve at once after a restart.
    pub fn issued_certificates(&self) -> Result<Vec<IssuedCertificate>> {
        Ok(self.inner.store.read(|tx| tx.issued_certificates())?)
    }

    /// The private key (PEM) of an issued certificate.
    pub fn issued_certificate_key(&self, c: &IssuedCertificate) -> Result<String> {
        self.sealer()?
            .open(&c.sealed_key)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Keeps a newly issued certificate, its key sealed.
    #[allow(clippy::too_many_arguments)]
    pub fn save_issued_certificate(
        &self,
        slot: &str,
        names: &[String],
        directory: &str,
        chain_pem: &str,
        key_pem: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<()> {
        let issued = IssuedCertificate {
            slot: slot.to_owned(),
            names: names.to_vec(),
            directory: directory.to_owned(),
            chain_pem: chain_pem.to_owned(),
            sealed_key: self.sealer()?.seal(key_pem),
            not_before,
            not_after,
            issued_at: self.now(),
        };
        self.inner
            .store
            .write(|tx| tx.put_issued_certificate(&issued).map_err(Error::from))
    }

    /// The credentials (JSON) of the ACME account at `directory`, if the cell has one.
    pub fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        let sealed = self.inner.store.read(|tx| tx.acme_account(directory))?;
        sealed
            .map(|s| {
                self.sealer()?
                    .open(&s)
                    .map_err(|e| Error::Internal(e.to_string()))
            })
            .transpose()
    }

    pub fn save_acme_account(&self, directory: &str, credentials_json: &str) -> Result<()> {
        let sealed = self.sealer()?.seal(credentials_json);
        let now = self.now();
        self.inner.store.write(|tx| {
            tx.put_acme_account(directory, &sealed, now)
                .map_err(Error::from)
        })
    }

    /// The certificates in the store as statuses (for `cert status` when no cell runs).
    pub fn stored_certificate_status(&self) -> Result<Vec<CertStatus>> {
        Ok(self
            .issued_certificates()?
            .into_iter()
            .map(|c| {
                let issuer = x509_parser::pem::parse_x509_pem(c.chain_pem.as_bytes())
                    .ok()
                    .and_then(|(_, pem)| {
                        let cert = pem.parse_x509().ok()?;
                        cert.issuer()
                            .iter_common_name()
                            .find_map(|cn| cn.as_str().ok().map(str::to_owned))
                    });
                CertStatus {
                    slot: c.slot,
                    names: c.names,
                    source: CertSource::Acme,
                    issuer,
                    not_after: Some(c.not_after),
                    next_renewal: Some(renewal_point(c.not_before, c.not_after)),
                    last_error: None,
                    failures: 0,
                }
            })
            .collect())
    }

    /// The operator's extra CA certificates (`tls.trust_bundle`) as the cell loaded them, for
    /// clients outside `service` (the ACME loop's DNS writer).
    pub fn trust(&self) -> Option<&crate::trust::Outbound> {
        self.inner.egress.trust()
    }

    /// What the edge serves now, one entry per certificate.
    pub fn certificate_status(&self) -> Vec<CertStatus> {
        self.inner
            .certs
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the entry for `status.slot`.
    pub fn publish_certificate_status(&self, status: CertStatus) {
        let mut all = self
            .inner
            .certs
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner());
        all.retain(|s| s.slot != status.slot);
        all.push(status);
        all.sort_by(|a, b| a.slot.cmp(&b.slot));
    }

    /// Warnings about the served certificates (see [`CertStatus::warning`]).
    pub fn certificate_warnings(&self) -> Vec<String> {
        let now = self.now();
        self.certificate_status()
            .iter()
            .filter_map(|s| s.warning(now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(source: CertSource, days_left: i64, failures: u32) -> CertStatus {
        CertStatus {
            slot: "main".into(),
            names: vec!["dev.example.com".into()],
            source,
            issuer: Some("R11".into()),
            not_after: Some(OffsetDateTime::now_utc() + time::Duration::days(days_left)),
            next_renewal: None,
            last_error: (failures > 0).then(|| "the ACME server is down".to_string()),
            failures,
        }
    }

    #[test]
    fn warnings_come_within_14_days_of_expiry_after_three_failures_and_for_self_signed() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(status(CertSource::Acme, 60, 0).warning(now), None);
        assert_eq!(status(CertSource::Acme, 60, 2).warning(now), None);
        let w = status(CertSource::Acme, 60, 3).warning(now).unwrap();
        assert!(w.contains("3 renewals failed") && w.contains("down"), "{w}");
        let w = status(CertSource::Acme, 10, 1).warning(now).unwrap();
        assert!(
            w.contains("expires in 9 days") || w.contains("expires in 10 days"),
            "{w}"
        );
        assert!(w.contains("down"), "{w}");
        let w = status(CertSource::Files, 5, 0).warning(now).unwrap();
        assert!(w.contains("tls.cert_file"), "{w}");
        let w = status(CertSource::Files, -1, 0).warning(now).unwrap();
        assert!(w.contains("expired"), "{w}");
        let w = status(CertSource::SelfSigned, 3650, 1)
            .warning(now)
            .unwrap();
        assert!(w.contains("self-signed") && w.contains("down"), "{w}");
    }
}
