//! Which keys may sign releases: the signing keys in a list signed by the root key embedded
//! in the binary, and the keys the operator adds. A key list lets a signing key be rotated or
//! revoked without a new binary.

use minisign::{PublicKey, PublicKeyBox, SignatureBox};
use serde::Deserialize;

use super::UpdateError;

/// The root public key of devcell's releases (minisign's format). Its secret half is kept
/// offline by the vendor; it signs only key lists.
pub const ROOT_KEY: &str = include_str!("../../embedded/release-root.pub");

/// A key list's and its signature's names beside a release's manifest.
pub const KEY_LIST: &str = "keys.json";
pub const KEY_LIST_SIGNATURE: &str = "keys.json.minisig";

/// A trusted key, with where the trust comes from (said in messages).
#[derive(Clone)]
struct Key {
    key: PublicKey,
    from: String,
}

/// The keys releases may be signed with.
#[derive(Clone, Default)]
pub struct Trust {
    keys: Vec<Key>,
    /// Ids the root's list revokes: never trusted, whoever else names them.
    revoked: Vec<String>,
}

/// `keys.json`: the signing keys the root vouches for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyList {
    format: u32,
    keys: Vec<ListedKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedKey {
    /// The public key, as minisign's base64 line.
    key: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    revoked: bool,
}

/// A public key from minisign's base64 line or its whole `.pub` file.
pub fn parse_key(text: &str) -> Result<PublicKey, UpdateError> {
    let text = text.trim();
    let parsed = if text.contains('\n') {
        PublicKeyBox::from_string(text).and_then(|b| b.into_public_key())
    } else {
        PublicKey::from_base64(text)
    };
    parsed.map_err(|e| UpdateError::InvalidKey(format!("not a minisign public key: {e}")))
}

/// A key's id as minisign prints it.
pub fn key_id(key: &PublicKey) -> String {
    let id = key.keynum();
    let mut le = [0u8; 8];
    le.copy_from_slice(&id[..8]);
    format!("{:016X}", u64::from_le_bytes(le))
}

impl Trust {
    /// Trusts `keys` (the operator's), each said to come from `from`.
    pub fn with_keys(mut self, keys: &[String], from: &str) -> Result<Trust, UpdateError> {
        for k in keys {
            let key = parse_key(k).map_err(|e| UpdateError::InvalidKey(format!("{from}: {e}")))?;
            self.keys.push(Key {
                key,
                from: from.to_owned(),
            });
        }
        Ok(self)
    }

    /// Trusts the keys of the list `text` if `root` signed it (`signature`); the keys it
    /// revokes are never trusted.
    pub fn with_key_list(
        mut self,
        root: &str,
        text: &[u8],
        signature: &str,
    ) -> Result<Trust, UpdateError> {
        let root = parse_key(root)?;
        let root_trust = Trust {
            keys: vec![Key {
                key: root,
                from: "the root key".into(),
            }],
            revoked: Vec::new(),
        };
        root_trust.verify(text, signature, KEY_LIST).map_err(|e| {
            UpdateError::BadSignature(format!("the key list is not the root's: {e}"))
        })?;
        let list: KeyList = serde_json::from_slice(text)
            .map_err(|e| UpdateError::InvalidKey(format!("{KEY_LIST} is invalid: {e}")))?;
        if list.format != 1 {
            return Err(UpdateError::InvalidKey(format!(
                "{KEY_LIST} has format {}; a newer devcell reads it",
                list.format
            )));
        }
        for k in list.keys {
            let key = parse_key(&k.key)?;
            if k.revoked {
                self.revoked.push(key_id(&key));
            } else {
                self.keys.push(Key {
                    key,
                    from: format!("the root's key list ({})", k.comment),
                });
            }
        }
        Ok(self)
    }

    /// Checks that `signature` (minisign's text) signs `data` by a trusted key that no list
    /// revokes; the key's id. `what` names the data in messages.
    pub fn verify(&self, data: &[u8], signature: &str, what: &str) -> Result<String, UpdateError> {
        let sig = SignatureBox::from_string(signature).map_err(|e| {
            UpdateError::BadSignature(format!("the signature of {what} cannot be read: {e}"))
        })?;
        let mut le = [0u8; 8];
        le.copy_from_slice(&sig.keynum()[..8]);
        let id = format!("{:016X}", u64::from_le_bytes(le));
        if self.revoked.contains(&id) {
            return Err(UpdateError::UnknownKey(format!(
                "{what} is signed by key {id}, which the root's key list revokes"
            )));
        }
        let Some(key) = self.keys.iter().find(|k| key_id(&k.key) == id) else {
            return Err(UpdateError::UnknownKey(format!(
                "{what} is signed by key {id}, which this cell does not trust; trust a key with `update.trusted_keys` (or --trusted-key)"
            )));
        };
        minisign::verify(
            &key.key,
            &sig,
            std::io::Cursor::new(data),
            true,
            false,
            false,
        )
        .map_err(|e| {
            UpdateError::BadSignature(format!(
                "the signature of {what} by key {id} ({}) does not match it: {e}",
                key.from
            ))
        })?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> minisign::KeyPair {
        minisign::KeyPair::generate_unencrypted_keypair().unwrap()
    }

    fn signed(by: &minisign::KeyPair, data: &[u8]) -> String {
        minisign::sign(None, &by.sk, std::io::Cursor::new(data), None, None)
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_roots_list_vouches_for_signing_keys_and_revokes_others() {
        let (root, signer, retired) = (pair(), pair(), pair());
        let list = format!(
            r#"{{"format": 1, "keys": [{{"key": "{}", "comment": "2026"}}, {{"key": "{}", "revoked": true}}]}}"#,
            signer.pk.to_base64(),
            retired.pk.to_base64()
        );
        let root_pub = root.pk.to_base64();
        let trust = Trust::default()
            // The operator also trusts the retired key: the root's revocation wins.
            .with_keys(&[retired.pk.to_base64()], "update.trusted_keys")
            .unwrap()
            .with_key_list(&root_pub, list.as_bytes(), &signed(&root, list.as_bytes()))
            .unwrap();
        let release = b"a manifest";
        assert_eq!(
            trust
                .verify(release, &signed(&signer, release), "m")
                .unwrap(),
            key_id(&signer.pk)
        );
        let e = trust
            .verify(release, &signed(&retired, release), "m")
            .unwrap_err();
        assert_eq!(e.code(), "unknown_key");
        assert!(e.to_string().contains("revokes"), "{e}");
        // A list the root did not sign vouches for nothing.
        let e = Trust::default()
            .with_key_list(
                &root_pub,
                list.as_bytes(),
                &signed(&signer, list.as_bytes()),
            )
            .err()
            .unwrap();
        assert_eq!(e.code(), "bad_signature");
        // The root's signature over another text does not carry over.
        let other = list.replace("2026", "2027");
        let e = Trust::default()
            .with_key_list(&root_pub, other.as_bytes(), &signed(&root, list.as_bytes()))
            .err()
            .unwrap();
        assert_eq!(e.code(), "bad_signature");
    }

    #[test]
    fn the_embedded_root_key_is_a_minisign_key() {
        assert_eq!(key_id(&parse_key(ROOT_KEY).unwrap()).len(), 16);
    }
}
