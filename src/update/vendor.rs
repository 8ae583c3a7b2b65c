//! The vendor's side: making a signing key pair and signing a release (manifest, signature
//! and artifacts in one directory), in formats the stock `minisign` reads.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::manifest::{Artifact, Kind, Manifest, PRODUCT};
use super::{MANIFEST, SIGNATURE, UpdateError, io_err};

/// The key files `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "devcell.pub";
pub const SECRET_KEY_FILE: &str = "devcell.key";

/// Writes a new key pair into `out` (`devcell.pub`, and `devcell.key` readable by its owner
/// only, without a password: keep it offline). Never replaces an existing key. Returns the
/// public key's base64 line.
pub fn keygen(out: &Path) -> Result<String, UpdateError> {
    std::fs::create_dir_all(out).map_err(io_err(format!("creating {}", out.display())))?;
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| UpdateError::InvalidKey(format!("cannot make a key pair: {e}")))?;
    let public = pair
        .pk
        .to_box()
        .map_err(|e| UpdateError::InvalidKey(e.to_string()))?
        .to_string();
    let secret = pair
        .sk
        .to_box(Some("devcell release signing key"))
        .map_err(|e| UpdateError::InvalidKey(e.to_string()))?
        .to_string();
    write_new(&out.join(SECRET_KEY_FILE), secret.as_bytes(), 0o600)?;
    write_new(&out.join(PUBLIC_KEY_FILE), public.as_bytes(), 0o644)?;
    Ok(pair.pk.to_base64())
}

/// What `sign` makes a release of.
pub struct Release<'a> {
    pub key: &'a Path,
    pub binary: &'a Path,
    pub version: semver::Version,
    pub channel: String,
    pub kind: Kind,
    pub min_version: semver::Version,
    /// How long the manifest is valid.
    pub valid_for: time::Duration,
    /// OCI image archives for workspace images, carried as artifacts (target
    /// [`super::IMAGE_TARGET`]) so the signature covers them too.
    pub images: &'a [std::path::PathBuf],
    pub out: &'a Path,
}

/// Copies the binary into `out` as `devcell-<target>`, writes the manifest naming its size and
/// SHA-256, and signs it (`manifest.json.minisig`). Returns the manifest.
pub fn sign(r: &Release<'_>) -> Result<Manifest, UpdateError> {
    let secret = std::fs::read_to_string(r.key)
        .map_err(io_err(format!("reading the key {}", r.key.display())))?;
    let secret = minisign::SecretKeyBox::from_string(&secret)
        .and_then(|b| b.into_unencrypted_secret_key())
        .map_err(|e| {
            UpdateError::InvalidKey(format!(
                "{} is not an unencrypted minisign secret key: {e}",
                r.key.display()
            ))
        })?;
    std::fs::create_dir_all(r.out).map_err(io_err(format!("creating {}", r.out.display())))?;
    let target = super::host_target();
    let name = format!("devcell-{target}");
    let (size, sha256) = copy_hashing(r.binary, &r.out.join(&name))?;
    let mut artifacts = vec![Artifact {
        name,
        target,
        size,
        sha256,
    }];
    for (i, image) in r.images.iter().enumerate() {
        let stem: String = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("image-{}-{stem}", i + 1);
        let (size, sha256) = copy_hashing(image, &r.out.join(&name))?;
        artifacts.push(Artifact {
            name,
            target: super::IMAGE_TARGET.into(),
            size,
            sha256,
        });
    }
    let created = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::now_utc());
    let manifest = Manifest {
        format: 1,
        product: PRODUCT.into(),
        version: r.version.clone(),
        channel: r.channel.clone(),
        kind: r.kind,
        created,
        expires: created + r.valid_for,
        min_version: r.min_version.clone(),
        artifacts,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| UpdateError::InvalidManifest(e.to_string()))?;
    bytes.push(b'\n');
    let trusted = format!("{PRODUCT} {} {}", manifest.version, manifest.channel);
    let signature = minisign::sign(
        None,
        &secret,
        std::io::Cursor::new(&bytes),
        Some(&trusted),
        Some("signature from a devcell release key"),
    )
    .map_err(|e| UpdateError::InvalidKey(format!("cannot sign: {e}")))?;
    write_replacing(&r.out.join(MANIFEST), &bytes)?;
    write_replacing(&r.out.join(SIGNATURE), signature.to_string().as_bytes())?;
    Ok(manifest)
}

/// Copies `from` to `to` (replacing it); its size and SHA-256.
fn copy_hashing(from: &Path, to: &Path) -> Result<(u64, String), UpdateError> {
    let mut src =
        std::fs::File::open(from).map_err(io_err(format!("reading {}", from.display())))?;
    let tmp = temp_beside(to);
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&tmp)
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    let (size, sha256) = super::hash_stream(&mut src, Some(&mut dst), from)?;
    dst.sync_all()
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, to).map_err(io_err(format!("writing {}", to.display())))?;
    Ok((size, sha256))
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let tmp = temp_beside(path);
    std::fs::write(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("writing {}", path.display())))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), UpdateError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => UpdateError::InvalidKey(format!(
                "{} exists already; a key is never replaced (choose another --out)",
                path.display()
            )),
            _ => io_err(format!("writing {}", path.display()))(e),
        })?;
    f.write_all(bytes)
        .map_err(io_err(format!("writing {}", path.display())))
}
