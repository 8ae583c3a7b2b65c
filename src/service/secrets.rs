//! The cell's secret key and sealing of stored secrets (git tokens, SSH keys): ChaCha20-Poly1305
//! with a random nonce per value, the key in `DATA/secret.key` (mode 0600, created on first
//! start). A copy of the database alone reveals no secret.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

pub const KEY_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the cell's secret key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("a stored secret cannot be opened (wrong secret.key for this database?)")]
    Open,
}

#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    /// SHA-256 of the key and a fixed label: the password of the cell's backup repository.
    backup_password: String,
}

impl Sealer {
    /// Loads the key from the data directory, creating it the first time.
    pub fn load_or_create(data_dir: &Path) -> Result<Sealer, SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(KEY_FILE);
        let err = |reason: String| SecretError::Key {
            path: path.display().to_string(),
            reason,
        };
        let key = match std::fs::read(&path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => {
                return Err(err(
                    "the file is not 32 bytes; restore it from a backup".into()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                rand::rng().fill_bytes(&mut k);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(&k).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                k
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let backup_password = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(&key);
            h.update(b"devcell backup repository password v1");
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            backup_password,
        })
    }

    /// The password of the cell's backup repository (restic format), derived from the key: what
    /// `devcell backup key` prints so that stock `restic` can open the backups.
    pub fn backup_password(&self) -> &str {
        &self.backup_password
    }

    /// `nonce || ciphertext`, base64.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Open)?;
        if raw.len() < 12 {
            return Err(SecretError::Open);
        }
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&raw[..12]), &raw[12..])
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain).map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_round_trip_and_differ_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::load_or_create(dir.path()).unwrap();
        let a = s.seal("ghp_secret");
        let b = s.seal("ghp_secret");
        assert_ne!(a, b, "random nonces");
        assert!(!a.contains("ghp_secret"));
        assert_eq!(s.open(&a).unwrap(), "ghp_secret");
        // The same key file opens it again; another key does not.
        assert_eq!(
            Sealer::load_or_create(dir.path())
                .unwrap()
                .open(&a)
                .unwrap(),
            "ghp_secret"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(
            Sealer::load_or_create(other.path())
                .unwrap()
                .open(&a)
                .is_err()
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}
