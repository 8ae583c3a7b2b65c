//! Releases and the trust in them. A release is a manifest ([`manifest::Manifest`]: version,
//! channel, kind, creation and expiry times, the oldest version it updates from, and each
//! artifact's target, size and SHA-256) signed with Ed25519 in minisign's format, so the
//! stock `minisign` verifies it too.
//!
//! Which keys sign releases ([`trust::Trust`]): the keys a list names that the root key
//! embedded in the binary signed (so a signing key is rotated or revoked without a new
//! binary), and the keys the operator adds (`update.trusted_keys`, for their own builds).
//! [`verify_release`] checks a release directory and changes nothing; [`vendor`] makes keys
//! and signed releases.

pub mod bundle;
pub mod fetch;
pub mod manifest;
pub mod trust;
pub mod vendor;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

pub use manifest::{Artifact, Kind, Manifest};
pub use trust::Trust;

/// The manifest's and its signature's names in a release directory.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.minisig";
/// A manifest or key list is a small document; anything larger is refused unread.
const MAX_DOCUMENT: u64 = 1 << 20;

/// Why a release is refused. Each has a stable code; nothing is changed by a refusal.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    UnknownKey(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    NotNewer(String),
    #[error("{0}")]
    CannotUpdateFrom(String),
    #[error("{0}")]
    ArtifactMismatch(String),
    #[error("{0}")]
    ArtifactTooLarge(String),
    #[error("{0}")]
    InvalidManifest(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("{0}")]
    BadBundle(String),
    /// The channel could not be reached or did not serve the release.
    #[error("{0}")]
    Unreachable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl UpdateError {
    /// The stable code of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::BadSignature(_) => "bad_signature",
            UpdateError::UnknownKey(_) => "unknown_key",
            UpdateError::Expired(_) => "expired",
            UpdateError::NotNewer(_) => "not_newer",
            UpdateError::CannotUpdateFrom(_) => "cannot_update_from",
            UpdateError::ArtifactMismatch(_) => "artifact_mismatch",
            UpdateError::ArtifactTooLarge(_) => "artifact_too_large",
            UpdateError::InvalidManifest(_) => "invalid_manifest",
            UpdateError::InvalidKey(_) => "invalid_key",
            UpdateError::BadBundle(_) => "bad_bundle",
            UpdateError::Unreachable(_) => "unreachable",
            UpdateError::Io { .. } => "io",
        }
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// A release that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    /// The signing key's id, as minisign prints it (16 hex digits).
    pub key_id: String,
    /// Each artifact's file in the release directory.
    pub files: Vec<(Artifact, PathBuf)>,
}

/// Checks the release in `dir` as a cell about to apply it would, from version `running` at
/// `now`: the manifest's signature by a trusted key, its expiry, that it is newer than
/// `running` and may update from it, and each artifact's size and SHA-256 (never reading more
/// than the size it declares, nor following a link). Changes nothing.
pub fn verify_release(
    dir: &Path,
    trust: &Trust,
    running: &semver::Version,
    now: time::OffsetDateTime,
) -> Result<Verified, UpdateError> {
    let manifest_bytes = read_small(&dir.join(MANIFEST))?;
    let signature = std::str::from_utf8(&read_small(&dir.join(SIGNATURE))?)
        .map_err(|_| UpdateError::BadSignature(format!("{SIGNATURE} is not minisign text")))?
        .to_owned();
    let key_id = trust.verify(&manifest_bytes, &signature, MANIFEST)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    manifest.check(running, now)?;
    let mut files = Vec::new();
    for artifact in &manifest.artifacts {
        let path = dir.join(&artifact.name);
        check_artifact(&path, artifact)?;
        files.push((artifact.clone(), path));
    }
    Ok(Verified {
        manifest,
        key_id,
        files,
    })
}

/// `base` and, when the release in `dir` carries a key list signed by the root key, the
/// signing keys it names (its revocations win over `base`).
pub fn trust_for(dir: &Path, base: Trust) -> Result<Trust, UpdateError> {
    let list = dir.join(trust::KEY_LIST);
    if !list.exists() {
        return Ok(base);
    }
    let text = read_small(&list)?;
    let sig = read_small(&dir.join(trust::KEY_LIST_SIGNATURE))?;
    base.with_key_list(trust::ROOT_KEY, &text, &String::from_utf8_lossy(&sig))
}

/// The target of an artifact that is an OCI image archive for workspaces (imported into the
/// image cache when the release is staged).
pub const IMAGE_TARGET: &str = "oci-image";

/// The artifact that runs on this host: `devcell-ARCH-OS` (see [`vendor::sign`]).
pub fn host_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Reads `from` to its end, writing what it reads to `to` when given; how many bytes and
/// their SHA-256 (lowercase hex). `path` names the source in errors.
pub(crate) fn hash_stream(
    from: &mut dyn Read,
    mut to: Option<&mut dyn std::io::Write>,
    path: &Path,
) -> Result<(u64, String), UpdateError> {
    let mut hash = sha2::Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = from
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        if let Some(to) = to.as_mut() {
            to.write_all(&buf[..n])
                .map_err(io_err(format!("writing from {}", path.display())))?;
        }
        size += n as u64;
    }
    Ok((size, hex::encode(hash.finalize())))
}

/// Reads a document of at most [`MAX_DOCUMENT`] bytes, without following a link.
pub fn read_small(path: &Path) -> Result<Vec<u8>, UpdateError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if name.ends_with(".minisig") => {
            UpdateError::BadSignature(format!("{name} is missing: the release is not signed"))
        }
        _ => io_err(format!("reading {}", path.display()))(e),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("reading {}", path.display())))?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(UpdateError::InvalidManifest(format!(
            "{name} is larger than {MAX_DOCUMENT} bytes"
        )));
    }
    Ok(bytes)
}

/// Copies the regular file `from` (not a link) to the new file `to`, refusing one larger than
/// `limit` bytes.
pub fn copy_limited(from: &Path, to: &Path, limit: u64) -> Result<(), UpdateError> {
    let name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let src = open_regular(from).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => UpdateError::ArtifactMismatch(format!("{name} is missing")),
        _ => io_err(format!("reading {}", from.display()))(e),
    })?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err(format!("writing {}", to.display())))?;
    let (size, _) = hash_stream(&mut src.take(limit + 1), Some(&mut dst), from)?;
    if size > limit {
        return Err(UpdateError::ArtifactTooLarge(format!(
            "{name} is larger than the {limit} bytes declared for it"
        )));
    }
    Ok(())
}

/// Opens a regular file, refusing a link in its place.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The artifact's file has exactly the declared size and SHA-256; reading stops one byte
/// past the declared size.
fn check_artifact(path: &Path, artifact: &Artifact) -> Result<(), UpdateError> {
    let name = &artifact.name;
    let file = open_regular(path).map_err(|e| {
        UpdateError::ArtifactMismatch(format!("artifact {name} cannot be read: {e}"))
    })?;
    let (seen, actual) = hash_stream(&mut file.take(artifact.size + 1), None, path)?;
    if seen > artifact.size {
        return Err(UpdateError::ArtifactTooLarge(format!(
            "artifact {name} is larger than the {} bytes its manifest declares",
            artifact.size
        )));
    }
    if seen != artifact.size {
        return Err(UpdateError::ArtifactMismatch(format!(
            "artifact {name} has {seen} bytes; its manifest declares {}",
            artifact.size
        )));
    }
    if actual != artifact.sha256 {
        return Err(UpdateError::ArtifactMismatch(format!(
            "artifact {name} has SHA-256 {actual}; its manifest declares {}",
            artifact.sha256
        )));
    }
    Ok(())
}
