//! OCI images as workspace root filesystems: pulling them from v2 registries, importing OCI
//! image archives for air-gapped sites, and unpacking their layers safely into a cached tree
//! that the sandbox mounts read-only. Not the sandbox itself, and not the deletion of unused
//! images.
//!
//! Layout under the store's root (the cell's `data_dir/images`):
//!
//! - `blobs/sha256/<hex>`: layers and configs, shared by every image, written only after their
//!   content matched the digest;
//! - `rootfs/<manifest hex>/`: an unpacked image, built in a temporary directory beside it and
//!   renamed into place, so a crash never leaves a half-built tree under the final name;
//! - `meta/<manifest hex>.json`: what the sandbox needs besides the files (environment,
//!   working directory, user) and the references that name the image. It is written before the
//!   tree is renamed into place, and an image counts as present only when both exist.
//!
//! Layers are hostile input: entries never leave the tree, no symlink is followed while
//! writing, and sizes are capped against decompression bombs.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

/// The host that serves Docker Hub's registry API (`docker.io` is only a name).
pub const DOCKER_HUB: &str = "registry-1.docker.io";
/// Default cap on the unpacked size of one image.
pub const DEFAULT_LIMIT: u64 = 20 * 1024 * 1024 * 1024;
/// Cap on the number of archive entries in one image; real images have tens of thousands.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Manifests, indexes, configs and `index.json` are read into memory; real ones are a few KiB.
const MAX_DOCUMENT: u64 = 8 * 1024 * 1024;
/// GNU long names and PAX headers are read into memory by the tar reader, so they are capped
/// before it sees them.
const MAX_HEADER_EXTENSION: u64 = 1024 * 1024;
const RECORD_VERSION: u32 = 1;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Per read, not per request: a large layer over a slow link takes as long as it takes.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Distinguishes temporary names made by concurrent pulls in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);
/// Serializes read-modify-write of the `meta/` records within the process.
static RECORDS: Mutex<()> = Mutex::new(());

/// What can go wrong with an image; `code()` is stable for APIs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {input:?}: {reason}")]
    BadReference { input: String, reason: String },
    #[error("image not found: {what}; check the name and tag")]
    NotFound { what: String },
    #[error(
        "the registry refused access to {what}; check the credentials (for ECR: user AWS and a \
         token from GetAuthorizationToken)"
    )]
    Unauthorized { what: String },
    #[error(
        "cannot reach registry {registry} ({message}); check the address and the network, set \
         a mirror for it under [[image.mirrors]], or import the image with `devcell image import`"
    )]
    Unreachable { registry: String, message: String },
    #[error("unsupported image: {reason}")]
    Unsupported { reason: String },
    /// The registry is somewhere the cell does not connect for workspaces (see `egress`).
    #[error("{message}")]
    Refused { message: String },
    #[error(
        "content of {expected} does not match its digest (got {actual}); the registry or the \
         archive is corrupt or tampered with"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("refused archive entry {entry:?}: {reason}")]
    HostileArchive { entry: String, reason: String },
    #[error("{what} exceeds the limit of {limit}; raise the image size limit if this is expected")]
    TooLarge { what: String, limit: String },
    /// A Dockerfile that could not be built; the message names the file, line and step.
    #[error("building the image failed: {message}")]
    BuildFailed { message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// A stable, machine-readable code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::BadReference { .. } => "bad_reference",
            ImageError::NotFound { .. } => "not_found",
            ImageError::Unauthorized { .. } => "unauthorized",
            ImageError::Unreachable { .. } => "unreachable",
            ImageError::Unsupported { .. } => "unsupported",
            ImageError::Refused { .. } => "destination_refused",
            ImageError::DigestMismatch { .. } => "digest_mismatch",
            ImageError::HostileArchive { .. } => "hostile_archive",
            ImageError::TooLarge { .. } => "too_large",
            ImageError::BuildFailed { .. } => "build_failed",
            ImageError::Io { .. } => "io",
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

fn unsupported(reason: impl Into<String>) -> ImageError {
    ImageError::Unsupported {
        reason: reason.into(),
    }
}

mod blobs;
pub mod build;
pub mod copy;
pub mod dockerfile;
mod feature;
mod mirror;
mod reference;
mod registry;
mod unpack;

use blobs::*;
pub use feature::{Feature, FeatureRef};
pub use mirror::Mirror;
use reference::*;
pub use reference::{ImageRef, Reference, RegistryAuth};
use registry::*;
use unpack::*;

// ---------------------------------------------------------------------------------------------
// The store

/// An unpacked image, ready to be mounted as a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The name it was pulled or imported under.
    pub reference: String,
    /// The digest of the linux/amd64 image manifest, `sha256:<hex>`.
    pub digest: String,
    pub rootfs: PathBuf,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// What a container of the image runs: `Entrypoint` then `Cmd`.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Bytes of regular files in the unpacked tree (hard links counted once).
    pub size_bytes: u64,
}

/// What `meta/<hex>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    version: u32,
    digest: String,
    references: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    user: Option<String>,
    size_bytes: u64,
    /// The manifest's layers and configuration digest, for building on the image; absent in
    /// records written before builds (the image is then unpacked again on its next pull).
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<String>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: u64,
    max_entries: u64,
}

/// Who may use a cached image without asking its registry again: anyone, when it was pulled
/// without a credential (or imported by the operator), else the users who proved access by a
/// pull with their own credential. Kept beside the image as `access/<digest hex>.json`.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Access {
    public: bool,
    users: Vec<String>,
}

/// Who pulls an image: a user of the cell (checked against the image's [`Access`]) or the
/// operator (the command line, which may use anything in the cache).
#[derive(Clone, Copy, Debug)]
pub enum Puller<'a> {
    User(&'a str),
    Operator,
}

/// The image cache of a cell.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    limits: Limits,
    egress: crate::content::egress::Egress,
    mirrors: Vec<Mirror>,
    progress: Progress,
}

/// Told of a pull's downloads: `(bytes received so far, bytes to receive)`.
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>>);

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(..)"
        } else {
            "Progress(none)"
        })
    }
}

impl Progress {
    fn tell(&self, done: u64, total: u64) {
        if let Some(f) = &self.0 {
            f(done, total);
        }
    }
}

impl ImageStore {
    /// A store under `root` (the cell's `data_dir/images`); directories are made on first use.
    pub fn new(root: PathBuf) -> ImageStore {
        ImageStore {
            root,
            limits: Limits {
                max_bytes: DEFAULT_LIMIT,
                max_entries: MAX_ENTRIES,
            },
            egress: Default::default(),
            mirrors: Vec::new(),
            progress: Progress::default(),
        }
    }

    /// Tells `progress` how a pull's downloads go (the command line's progress bar).
    pub fn with_progress(
        mut self,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> ImageStore {
        self.progress = Progress(Some(std::sync::Arc::new(progress)));
        self
    }

    /// Where pulls may connect (by default nowhere internal: see `egress`).
    pub fn with_egress(mut self, egress: crate::content::egress::Egress) -> ImageStore {
        self.egress = egress;
        self
    }

    fn access_path(&self, hex: &str) -> PathBuf {
        self.root.join("access").join(format!("{hex}.json"))
    }

    fn access(&self, hex: &str) -> Access {
        fs::read(self.access_path(hex))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Whether `who` may use the cached image `hex` without asking its registry.
    fn may_use(&self, hex: &str, who: Puller<'_>) -> bool {
        match who {
            Puller::Operator => true,
            Puller::User(u) => {
                let a = self.access(hex);
                a.public || a.users.iter().any(|x| x == u)
            }
        }
    }

    /// Records that `who` pulled `hex` from its registry (`anonymous`: without a credential,
    /// so anyone may).
    fn grant(&self, hex: &str, who: Puller<'_>, anonymous: bool) -> Result<(), ImageError> {
        let _guard = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        let mut a = self.access(hex);
        match who {
            _ if anonymous => a.public = true,
            Puller::User(u) if !a.users.iter().any(|x| x == u) => a.users.push(u.to_owned()),
            _ => return Ok(()),
        }
        let path = self.access_path(hex);
        let dir = self.root.join("access");
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let tmp = dir.join(format!(".{hex}.{}.tmp", std::process::id()));
        let bytes =
            serde_json::to_vec(&a).map_err(|e| io_err("recording access")(io::Error::other(e)))?;
        fs::write(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io_err(format!("writing {}", path.display())))
    }

    /// Caps the unpacked size of one image (and the size of one downloaded blob).
    pub fn with_limit(mut self, bytes: u64) -> ImageStore {
        self.limits.max_bytes = bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    fn meta_dir(&self) -> PathBuf {
        self.root.join("meta")
    }

    fn ensure_dirs(&self) -> Result<(), ImageError> {
        for dir in [self.blobs_dir(), self.rootfs_dir(), self.meta_dir()] {
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        clean_stale(&self.blobs_dir());
        clean_stale(&self.rootfs_dir());
        clean_stale(&self.meta_dir());
        Ok(())
    }

    /// Pulls (or finds in the cache) the image for linux/amd64 and returns its unpacked root
    /// filesystem. Layers are cached by digest under `blobs/sha256/` and shared; the unpacked
    /// rootfs is `rootfs/<manifest digest hex>/` (directories 0755, owned by the caller), built
    /// in a temporary directory beside it and renamed into place atomically.
    ///
    /// A digest reference already in the cache is served without asking the registry. When
    /// the registry cannot be reached, an image cached under the same reference is returned
    /// (with a warning in the log) so that workspaces keep starting during an outage.
    pub async fn pull(
        &self,
        image: &ImageRef,
        auth: &RegistryAuth,
        who: Puller<'_>,
    ) -> Result<PulledImage, ImageError> {
        let reference = image.to_string();
        let (source, mirror) = self.source_of(image);
        let via_mirror = |e: ImageError| match (e, mirror) {
            (ImageError::Unreachable { registry, message }, Some(m)) => ImageError::Unreachable {
                registry: format!(
                    "{registry} (the mirror for {} in [[image.mirrors]])",
                    image.registry
                ),
                message: format!(
                    "{message}; pulling {reference} through mirror {}",
                    m.written
                ),
            },
            (e, _) => e,
        };
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.ensure_dirs())
            .await
            .map_err(|e| io_err("preparing the image store")(io::Error::other(e)))??;
        let anonymous = matches!(auth, RegistryAuth::Anonymous);
        if let Reference::Digest(d) = &image.reference
            && let Some(hex) = d.strip_prefix("sha256:")
            && is_sha256_hex(hex)
            && self.rootfs_dir().join(hex).is_dir()
        {
            // A private image is in the cache once someone pulled it: a user who has not
            // pulled it themselves proves access to the registry first.
            if !self.may_use(hex, who) {
                let mut registry =
                    Registry::new(&source, auth, &self.egress).map_err(via_mirror)?;
                registry
                    .resolve(&image.reference)
                    .await
                    .map_err(via_mirror)?;
                self.grant(hex, who, anonymous)?;
            }
            if let Some(found) = self.cached(hex, &reference)? {
                return Ok(found);
            }
        }
        match self
            .pull_from_registry(&source, auth, &reference)
            .await
            .map_err(via_mirror)
        {
            Ok(pulled) => {
                let hex = pulled.digest.trim_start_matches("sha256:").to_owned();
                self.grant(&hex, who, anonymous)?;
                Ok(pulled)
            }
            // Offline, or a registry the cell may not reach (an image imported under such a
            // name): the cached image, for those who may use it.
            Err(e @ (ImageError::Unreachable { .. } | ImageError::Refused { .. })) => match self
                .find(&reference)?
            {
                Some(found) if self.may_use(found.digest.trim_start_matches("sha256:"), who) => {
                    tracing::warn!(image = %reference, error = %e, "registry unreachable; using the cached image");
                    Ok(found)
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn pull_from_registry(
        &self,
        image: &ImageRef,
        auth: &RegistryAuth,
        reference: &str,
    ) -> Result<PulledImage, ImageError> {
        let mut registry = Registry::new(image, auth, &self.egress)?;
        let (digest, manifest) = registry.resolve(&image.reference).await?;
        let hex = digest.trim_start_matches("sha256:").to_owned();
        if let Some(found) = self.cached(&hex, reference)? {
            return Ok(found);
        }
        check_config_type(&manifest)?;
        let blobs = self.blobs_dir();
        let total: u64 = std::iter::once(manifest.config())
            .chain(manifest.layers())
            .map(|d| d.size())
            .sum();
        let mut done = 0u64;
        self.progress.tell(done, total);
        for (desc, max) in std::iter::once((manifest.config(), MAX_DOCUMENT))
            .chain(manifest.layers().iter().map(|l| (l, self.limits.max_bytes)))
        {
            if !std::ptr::eq(desc, manifest.config()) {
                check_layer_type(desc)?;
            }
            let before = done;
            registry
                .fetch_blob(desc, &blobs, max, &|n| {
                    self.progress.tell(before + n, total)
                })
                .await?;
            done += desc.size();
            self.progress.tell(done, total);
        }
        let store = self.clone();
        let reference = reference.to_owned();
        tokio::task::spawn_blocking(move || store.materialize(&hex, &manifest, &reference))
            .await
            .map_err(|e| io_err("unpacking the image")(io::Error::other(e)))?
    }

    /// Imports an OCI image archive (a tar, optionally gzipped, of an OCI image layout:
    /// `oci-layout`, `index.json`, `blobs/sha256/...`), as `devcell image import FILE` does for
    /// air-gapped sites. Returns the images it held, named by their
    /// `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotation (full
    /// references are normalized like [`ImageRef`]'s `to_string`), else by the manifest digest.
    pub fn import_archive(&self, archive: &Path) -> Result<Vec<PulledImage>, ImageError> {
        self.ensure_dirs()?;
        let shown = archive.display().to_string();
        let compression = sniff(archive, "")?;
        prescan(open_layer(archive, compression)?, self.limits, 0, &shown)?;
        let mut tar = tar::Archive::new(open_layer(archive, compression)?);
        let entries = tar.entries().map_err(io_err(format!("reading {shown}")))?;
        let blobs = self.blobs_dir();
        let mut index_json = None;
        let mut total = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(io_err(format!("reading {shown}")))?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            let rel = clean_path(&raw).map_err(|reason| ImageError::HostileArchive {
                entry: name.clone(),
                reason: reason.to_owned(),
            })?;
            if let Some(link) = entry.link_name_bytes()
                && entry.header().entry_type().is_hard_link()
            {
                // Nothing in a layout is a link, but a link out of the archive is an attack.
                clean_path(&link).map_err(|reason| ImageError::HostileArchive {
                    entry: name.clone(),
                    reason: format!("hard link target: {reason}"),
                })?;
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let parts: Vec<&OsStr> = rel.iter().collect();
            match parts.as_slice() {
                [f] if *f == "index.json" => {
                    index_json = Some(read_capped(&mut entry, MAX_DOCUMENT, &name)?);
                }
                [b, s, hex] if *b == "blobs" && *s == "sha256" => {
                    let Some(hex) = hex.to_str().filter(|h| is_sha256_hex(h)) else {
                        continue;
                    };
                    total = total.saturating_add(entry.size());
                    if total > self.limits.max_bytes {
                        return Err(ImageError::TooLarge {
                            what: format!("the blobs in {shown}"),
                            limit: human_bytes(self.limits.max_bytes),
                        });
                    }
                    store_blob(&mut entry, &blobs, hex)?;
                }
                _ => {}
            }
        }
        let index_json = index_json.ok_or_else(|| {
            unsupported(format!(
                "{shown} is not an OCI image layout (no index.json); export it with \
                 `skopeo copy ... oci-archive:FILE` or `docker save` (Docker 25 or later)"
            ))
        })?;
        let index: ImageIndex = serde_json::from_slice(&index_json)
            .map_err(|e| unsupported(format!("index.json of {shown} is invalid: {e}")))?;
        let mut images = Vec::new();
        for desc in index.manifests() {
            let (digest, manifest) = self.resolve_local(desc, 0)?;
            let name = image_name(desc).unwrap_or_else(|| digest.clone());
            let hex = digest.trim_start_matches("sha256:").to_owned();
            check_config_type(&manifest)?;
            images.push(self.materialize(&hex, &manifest, &name)?);
            // The operator brought it in: every user of the cell may use it.
            self.grant(&hex, Puller::Operator, true)?;
        }
        Ok(images)
    }

    /// The cached images, one entry per reference, sorted by reference.
    pub fn list(&self) -> Result<Vec<PulledImage>, ImageError> {
        let meta = self.meta_dir();
        let dir = match fs::read_dir(&meta) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("reading {}", meta.display()))(e)),
        };
        let mut images = Vec::new();
        for entry in dir {
            let entry = entry.map_err(io_err(format!("reading {}", meta.display())))?;
            let name = entry.file_name();
            let Some(hex) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|h| is_sha256_hex(h))
            else {
                continue;
            };
            let Some(record) = self.load_record(hex)? else {
                continue;
            };
            let rootfs = self.rootfs_dir().join(hex);
            if !rootfs.is_dir() {
                continue;
            }
            let references = if record.references.is_empty() {
                vec![record.digest.clone()]
            } else {
                record.references.clone()
            };
            for reference in references {
                images.push(to_pulled(&record, reference, rootfs.clone()));
            }
        }
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(images)
    }

    /// The cached image last pulled or imported under `reference`.
    pub fn find(&self, reference: &str) -> Result<Option<PulledImage>, ImageError> {
        Ok(self.list()?.into_iter().find(|i| i.reference == reference))
    }

    /// The cached image with this manifest digest, now also known as `reference`.
    fn cached(&self, hex: &str, reference: &str) -> Result<Option<PulledImage>, ImageError> {
        if !is_sha256_hex(hex) || !self.rootfs_dir().join(hex).is_dir() {
            return Ok(None);
        }
        let Some(record) = self.load_record(hex)?.filter(|r| r.layers.is_some()) else {
            return Ok(None);
        };
        let record = self.save_record(record, reference)?;
        Ok(Some(to_pulled(
            &record,
            reference.to_owned(),
            self.rootfs_dir().join(hex),
        )))
    }

    fn load_record(&self, hex: &str) -> Result<Option<ImageRecord>, ImageError> {
        let path = self.meta_dir().join(format!("{hex}.json"));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        match serde_json::from_slice::<ImageRecord>(&bytes) {
            Ok(r) if r.version == RECORD_VERSION => Ok(Some(r)),
            // An unreadable record only costs a new unpack; it is rewritten then.
            Ok(r) => {
                tracing::warn!(path = %path.display(), version = r.version, "unknown image record version");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable image record");
                Ok(None)
            }
        }
    }

    /// Writes `record` with `reference` added, and takes `reference` off every other image:
    /// a tag names one image at a time.
    fn save_record(
        &self,
        mut record: ImageRecord,
        reference: &str,
    ) -> Result<ImageRecord, ImageError> {
        let _guard = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        let hex = record.digest.trim_start_matches("sha256:").to_owned();
        if let Some(existing) = self.load_record(&hex)? {
            for r in existing.references {
                if !record.references.contains(&r) {
                    record.references.push(r);
                }
            }
        }
        if !record.references.iter().any(|r| r == reference) {
            record.references.push(reference.to_owned());
        }
        let meta = self.meta_dir();
        if let Ok(dir) = fs::read_dir(&meta) {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(other) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .filter(|h| is_sha256_hex(h) && *h != hex)
                else {
                    continue;
                };
                if let Some(mut o) = self.load_record(other)?
                    && o.references.iter().any(|r| r == reference)
                {
                    o.references.retain(|r| r != reference);
                    self.write_record(other, &o)?;
                }
            }
        }
        self.write_record(&hex, &record)?;
        Ok(record)
    }

    fn write_record(&self, hex: &str, record: &ImageRecord) -> Result<(), ImageError> {
        let meta = self.meta_dir();
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| io_err("encoding an image record")(io::Error::other(e)))?;
        let tmp = Cleanup::file(meta.join(temp_name(hex)));
        fs::write(tmp.path(), bytes)
            .map_err(io_err(format!("writing {}", tmp.path().display())))?;
        let dest = meta.join(format!("{hex}.json"));
        fs::rename(tmp.path(), &dest).map_err(io_err(format!("writing {}", dest.display())))?;
        tmp.disarm();
        Ok(())
    }

    /// Finds the linux/amd64 manifest a descriptor of an archive's index points to.
    fn resolve_local(
        &self,
        desc: &Descriptor,
        depth: u32,
    ) -> Result<(String, ImageManifest), ImageError> {
        let hex = descriptor_hex(desc)?;
        let bytes = read_blob(&self.blobs_dir(), &hex, MAX_DOCUMENT)?;
        match parse_document(&bytes)? {
            Document::Manifest(m) => Ok((format!("sha256:{hex}"), *m)),
            Document::Index(index) if depth == 0 => {
                let chosen = pick_platform(&index)?;
                self.resolve_local(chosen, depth + 1)
            }
            Document::Index(_) => Err(unsupported("an index nested in an index")),
        }
    }

    /// Unpacks the layers of `manifest` (whose blobs are in the store) into
    /// `rootfs/<hex>` unless it is there already, and records the image under `reference`.
    fn materialize(
        &self,
        hex: &str,
        manifest: &ImageManifest,
        reference: &str,
    ) -> Result<PulledImage, ImageError> {
        self.materialize_on(hex, manifest, reference, None, &[])
    }

    /// [`Self::materialize`], starting from `on`: an unpacked image whose tree holds the
    /// first `n` layers of `manifest` (a build's base). Its files are hard-linked, not
    /// copied (image trees are never written in place: the unpacker replaces a file, it does
    /// not open it for writing), and only the layers after them are unpacked; or, when
    /// `diffs` are the directories those layers were made from (a build's steps), linked
    /// from them.
    fn materialize_on(
        &self,
        hex: &str,
        manifest: &ImageManifest,
        reference: &str,
        on: Option<(&Path, usize)>,
        diffs: &[PathBuf],
    ) -> Result<PulledImage, ImageError> {
        let blobs = self.blobs_dir();
        let config_hex = descriptor_hex(manifest.config())?;
        let config_bytes = read_blob(&blobs, &config_hex, MAX_DOCUMENT)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| unsupported(format!("the image configuration is invalid: {e}")))?;
        if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
            return Err(unsupported(format!(
                "the image is for {}/{}; only linux/amd64 runs here",
                config.os(),
                config.architecture()
            )));
        }
        let final_dir = self.rootfs_dir().join(hex);
        let layered = |mut r: ImageRecord| {
            r.layers = Some(manifest.layers().clone());
            r.config = Some(manifest.config().digest().to_string());
            let fresh = record_from(hex, &config, r.size_bytes);
            r.entrypoint = fresh.entrypoint;
            r.cmd = fresh.cmd;
            r
        };
        let record = if final_dir.is_dir() {
            let existing = match self.load_record(hex)? {
                Some(record) => record,
                None => record_from(hex, &config, tree_size(&final_dir)?),
            };
            self.save_record(layered(existing), reference)?
        } else {
            let tmp = Cleanup::dir(self.rootfs_dir().join(temp_name(hex)));
            fs::DirBuilder::new()
                .mode(0o755)
                .create(tmp.path())
                .map_err(io_err(format!("creating {}", tmp.path().display())))?;
            set_mode(tmp.path(), 0o755)?;
            let skip = match on {
                Some((base, n)) if base.is_dir() && n <= manifest.layers().len() => {
                    link_tree(base, tmp.path())
                        .map_err(io_err(format!("linking {} into the image", base.display())))?;
                    n
                }
                _ => 0,
            };
            let rest = &manifest.layers()[skip..];
            let linked = skip > 0
                && diffs.len() == rest.len()
                && match diffs
                    .iter()
                    .try_for_each(|d| build::link_diff(d, tmp.path()))
                {
                    Ok(()) => true,
                    Err(e) => {
                        // Unpacked from the layers instead, on a fresh tree.
                        tracing::debug!(error = %e, "the build's diffs could not be linked");
                        fs::remove_dir_all(tmp.path()).map_err(io_err("starting over"))?;
                        fs::DirBuilder::new()
                            .mode(0o755)
                            .create(tmp.path())
                            .map_err(io_err("starting over"))?;
                        if let Some((base, _)) = on {
                            link_tree(base, tmp.path()).map_err(io_err(format!(
                                "linking {} into the image",
                                base.display()
                            )))?;
                        }
                        false
                    }
                };
            if !linked {
                let mut unpacker = Unpacker::new(tmp.path(), self.limits);
                for layer in rest {
                    let layer_hex = descriptor_hex(layer)?;
                    unpacker.apply_layer(&blobs.join(&layer_hex), layer.media_type().as_ref())?;
                }
            }
            let size = tree_size(tmp.path())?;
            // The record goes first: a tree without a record is never used, a record without
            // a tree is ignored and rewritten.
            let record = self.save_record(layered(record_from(hex, &config, size)), reference)?;
            match fs::rename(tmp.path(), &final_dir) {
                Ok(()) => tmp.disarm(),
                // Another pull finished the same image first; its tree is as good as ours.
                Err(_) if final_dir.is_dir() => {}
                Err(e) => {
                    return Err(io_err(format!(
                        "moving the image to {}",
                        final_dir.display()
                    ))(e));
                }
            }
            record
        };
        Ok(to_pulled(&record, reference.to_owned(), final_dir))
    }
}

/// Recreates the tree `src` under `dst` (which exists): directories made, regular files
/// hard-linked, links copied; nothing followed.
fn link_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let mut stack = vec![(src.to_owned(), dst.to_owned())];
    while let Some((from, to)) = stack.pop() {
        for entry in fs::read_dir(&from)? {
            let entry = entry?;
            let (path, target) = (entry.path(), to.join(entry.file_name()));
            let kind = entry.file_type()?;
            if kind.is_dir() {
                fs::DirBuilder::new().mode(0o755).create(&target)?;
                stack.push((path, target));
            } else if kind.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&path)?, &target)?;
            } else if kind.is_file() {
                fs::hard_link(&path, &target)?;
            }
        }
    }
    Ok(())
}

fn record_from(hex: &str, config: &ImageConfiguration, size_bytes: u64) -> ImageRecord {
    let c = config.config().as_ref();
    let env = c
        .and_then(|c| c.env().as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    ImageRecord {
        version: RECORD_VERSION,
        digest: format!("sha256:{hex}"),
        references: Vec::new(),
        env,
        working_dir: c.and_then(|c| non_empty(c.working_dir())),
        user: c.and_then(|c| non_empty(c.user())),
        size_bytes,
        layers: None,
        config: None,
        entrypoint: c.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
        cmd: c.and_then(|c| c.cmd().clone()).unwrap_or_default(),
    }
}

fn to_pulled(record: &ImageRecord, reference: String, rootfs: PathBuf) -> PulledImage {
    PulledImage {
        reference,
        digest: record.digest.clone(),
        rootfs,
        env: record.env.clone(),
        working_dir: record.working_dir.clone(),
        user: record.user.clone(),
        entrypoint: record.entrypoint.clone(),
        cmd: record.cmd.clone(),
        size_bytes: record.size_bytes,
    }
}

/// The name an archive gives an image: containerd's full name when there is one (Docker's
/// `docker save` writes it), else the OCI ref name, normalized when it is a full reference.
fn image_name(desc: &Descriptor) -> Option<String> {
    let annotations = desc.annotations().as_ref()?;
    let name = annotations
        .get("io.containerd.image.name")
        .or_else(|| annotations.get("org.opencontainers.image.ref.name"))?;
    if name.contains(['/', ':', '@'])
        && let Ok(parsed) = ImageRef::parse(name)
    {
        return Some(parsed.to_string());
    }
    Some(name.clone())
}

fn check_config_type(manifest: &ImageManifest) -> Result<(), ImageError> {
    let media_type = manifest.config().media_type().to_string();
    if CONFIG_TYPES.contains(&media_type.as_str()) {
        Ok(())
    } else {
        Err(unsupported(format!(
            "not a container image (its configuration is {media_type})"
        )))
    }
}

fn check_layer_type(layer: &Descriptor) -> Result<(), ImageError> {
    let media_type = layer.media_type().to_string();
    if media_type.contains("zstd") {
        return Err(zstd_unsupported());
    }
    Ok(())
}

fn zstd_unsupported() -> ImageError {
    unsupported(
        "zstd-compressed layers are not supported yet; push the image with gzip layers \
         (e.g. `docker buildx build --output type=image,compression=gzip`)",
    )
}

fn descriptor_hex(desc: &Descriptor) -> Result<String, ImageError> {
    match desc.as_digest_sha256() {
        Some(hex) if is_sha256_hex(hex) => Ok(hex.to_owned()),
        _ => Err(unsupported(format!(
            "digest {} is not sha256; only sha256 content is supported",
            desc.digest()
        ))),
    }
}

enum Document {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

fn parse_document(bytes: &[u8]) -> Result<Document, ImageError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| unsupported(format!("the manifest is not JSON: {e}")))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(unsupported(
            "Docker schema 1 manifests are obsolete; push the image again with a current client",
        ));
    }
    if value.get("manifests").is_some() {
        let index = serde_json::from_value(value)
            .map_err(|e| unsupported(format!("the image index is invalid: {e}")))?;
        Ok(Document::Index(Box::new(index)))
    } else {
        let manifest = serde_json::from_value(value)
            .map_err(|e| unsupported(format!("the image manifest is invalid: {e}")))?;
        Ok(Document::Manifest(Box::new(manifest)))
    }
}

fn pick_platform(index: &ImageIndex) -> Result<&Descriptor, ImageError> {
    let amd64 = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    };
    // Prefer the baseline variant: v2/v3 builds need newer CPUs than every host has.
    let baseline = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.variant().as_deref().is_none_or(|v| v == "v1"))
    };
    let candidates: Vec<&Descriptor> = index.manifests().iter().filter(amd64).collect();
    if let Some(d) = candidates
        .iter()
        .copied()
        .find(baseline)
        .or(candidates.first().copied())
    {
        return Ok(d);
    }
    // An index without platforms (as some archives have) holding a single image.
    if let [only] = index.manifests().as_slice()
        && only.platform().is_none()
    {
        return Ok(only);
    }
    let available: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    Err(unsupported(format!(
        "no linux/amd64 image in the index (it has: {})",
        if available.is_empty() {
            "no platforms".to_owned()
        } else {
            available.join(", ")
        }
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tar::{EntryType, Header};

    #[test]
    fn parses_references_by_docker_rules() {
        let cases: &[(&str, &str, &str, Reference)] = &[
            (
                "ubuntu",
                DOCKER_HUB,
                "library/ubuntu",
                Reference::Tag("latest".into()),
            ),
            (
                "ubuntu:22.04",
                DOCKER_HUB,
                "library/ubuntu",
                Reference::Tag("22.04".into()),
            ),
            (
                "docker.io/library/ubuntu",
                DOCKER_HUB,
                "library/ubuntu",
                Reference::Tag("latest".into()),
            ),
            (
                "index.docker.io/ubuntu",
                DOCKER_HUB,
                "library/ubuntu",
                Reference::Tag("latest".into()),
            ),
            (
                "gitpod/workspace-full:2024",
                DOCKER_HUB,
                "gitpod/workspace-full",
                Reference::Tag("2024".into()),
            ),
            (
                "host:5000/a/b:tag",
                "host:5000",
                "a/b",
                Reference::Tag("tag".into()),
            ),
            (
                "host:5000/a/b",
                "host:5000",
                "a/b",
                Reference::Tag("latest".into()),
            ),
            (
                "localhost/x",
                "localhost",
                "x",
                Reference::Tag("latest".into()),
            ),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:v1",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "team/app",
                Reference::Tag("v1".into()),
            ),
            (
                "ubuntu:22.04@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                DOCKER_HUB,
                "library/ubuntu",
                Reference::Digest(format!("sha256:{}", "0".repeat(64))),
            ),
        ];
        for (input, registry, repository, reference) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(&r.registry, registry, "{input}");
            assert_eq!(&r.repository, repository, "{input}");
            assert_eq!(&r.reference, reference, "{input}");
            // The canonical form parses back to the same reference.
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{input}");
        }
        assert_eq!(
            ImageRef::parse("ubuntu").unwrap().to_string(),
            "registry-1.docker.io/library/ubuntu:latest"
        );
    }

    #[test]
    fn refuses_bad_references() {
        for input in [
            "",
            "Ubuntu",
            "https://host/a",
            "ubuntu:",
            "ubuntu:-x",
            "ubuntu@sha256:abc",
            "ubuntu@md5:0000",
            "a//b",
            "host:5000/",
            "ubu ntu",
        ] {
            let err = ImageRef::parse(input).unwrap_err();
            assert_eq!(err.code(), "bad_reference", "{input}");
        }
    }

    #[test]
    fn plain_http_only_for_loopback_registries() {
        let url = |s: &str| ImageRef::parse(s).unwrap().base_url();
        assert_eq!(url("localhost:5000/a"), "http://localhost:5000");
        assert_eq!(url("127.0.0.1:5000/a"), "http://127.0.0.1:5000");
        assert_eq!(url("[::1]:5000/a"), "http://[::1]:5000");
        assert_eq!(url("ubuntu"), "https://registry-1.docker.io");
        assert_eq!(url("127.0.0.1.nip.io/a"), "https://127.0.0.1.nip.io");
    }

    #[test]
    fn parses_authentication_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/ubuntu:pull,push");
        let c = parse_challenge(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "basic-realm");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn debug_hides_the_password() {
        let auth = RegistryAuth::Basic {
            username: "AWS".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    // --- layers built in memory ---

    /// One tar entry with the name written straight into the header, so tests can build
    /// entries the tar crate's safe setters refuse (`..`, absolute paths).
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = Header::new_old();
        {
            let old = h.as_old_mut();
            old.name.fill(0);
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                old.linkname.fill(0);
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Mode(&'a str, u32),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Kind(&'a str, EntryType),
    }

    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match *e {
                E::Dir(n) => raw_entry(&mut b, n, EntryType::Directory, 0o700, None, b""),
                E::File(n, d) => {
                    raw_entry(&mut b, n, EntryType::Regular, 0o644, None, d.as_bytes())
                }
                E::Mode(n, m) => raw_entry(&mut b, n, EntryType::Regular, m, None, b"#!/bin/sh\n"),
                E::Sym(n, t) => raw_entry(&mut b, n, EntryType::Symlink, 0o777, Some(t), b""),
                E::Hard(n, t) => raw_entry(&mut b, n, EntryType::Link, 0o644, Some(t), b""),
                E::Kind(n, k) => raw_entry(&mut b, n, k, 0o644, None, b""),
            }
        }
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    struct Fixture {
        tmp: tempfile::TempDir,
        n: usize,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            fs::create_dir(tmp.path().join("root")).unwrap();
            Fixture { tmp, n: 0 }
        }

        fn root(&self) -> PathBuf {
            self.tmp.path().join("root")
        }

        /// Applies layers to the root with the given limits.
        fn apply_with(&mut self, limits: Limits, layers: &[Vec<u8>]) -> Result<(), ImageError> {
            let root = self.root();
            let mut unpacker = Unpacker::new(&root, limits);
            for bytes in layers {
                self.n += 1;
                let blob = self.tmp.path().join(format!("layer{}", self.n));
                fs::write(&blob, bytes).unwrap();
                unpacker.apply_layer(&blob, "application/vnd.oci.image.layer.v1.tar")?;
            }
            Ok(())
        }

        fn apply(&mut self, layers: &[Vec<u8>]) -> Result<(), ImageError> {
            self.apply_with(
                Limits {
                    max_bytes: DEFAULT_LIMIT,
                    max_entries: MAX_ENTRIES,
                },
                layers,
            )
        }

        fn exists(&self, rel: &str) -> bool {
            fs::symlink_metadata(self.root().join(rel)).is_ok()
        }
    }

    #[test]
    fn applies_whiteouts_and_opaque_directories() {
        let mut f = Fixture::new();
        let base = layer(&[
            E::Dir("a/"),
            E::File("a/keep", "k"),
            E::File("a/gone", "g"),
            E::Dir("a/gonedir/"),
            E::File("a/gonedir/x", "x"),
            E::Dir("d/"),
            E::File("d/old", "o"),
            E::Dir("d/sub/"),
            E::File("d/sub/old2", "o"),
            E::Dir("e/"),
            E::File("e/old", "o"),
        ]);
        let top = gzip(&layer(&[
            E::File("a/.wh.gone", ""),
            E::File("a/.wh.gonedir", ""),
            E::File(".wh.nonexistent", ""),
            E::Dir("d/"),
            E::File("d/.wh..wh..opq", ""),
            E::File("d/new", "n"),
            // Written before the marker in the same layer: OCI says it stays.
            E::File("e/new", "n"),
            E::File("e/.wh..wh..opq", ""),
        ]));
        f.apply(&[base, top]).unwrap();
        assert!(f.exists("a/keep"));
        assert!(!f.exists("a/gone"));
        assert!(!f.exists("a/gonedir"));
        assert!(!f.exists("a/.wh.gone"));
        assert!(f.exists("d/new"));
        assert!(!f.exists("d/old"));
        assert!(!f.exists("d/sub"));
        assert!(!f.exists("d/.wh..wh..opq"));
        assert!(f.exists("e/new"));
        assert!(!f.exists("e/old"));
        // Directories are 0755 whatever the archive says.
        let mode = fs::metadata(f.root().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn later_layers_replace_files_dirs_and_symlinks() {
        let mut f = Fixture::new();
        let outside = f.tmp.path().join("outside");
        fs::write(&outside, "untouched").unwrap();
        let base = layer(&[
            E::File("x", "file"),
            E::Dir("y/"),
            E::File("y/inner", "i"),
            E::Sym("link", outside.to_str().unwrap()),
        ]);
        let top = layer(&[
            E::Dir("x/"),
            E::File("y", "now a file"),
            E::File("link", "replaced"),
        ]);
        f.apply(&[base, top]).unwrap();
        assert!(f.root().join("x").is_dir());
        assert_eq!(
            fs::read_to_string(f.root().join("y")).unwrap(),
            "now a file"
        );
        // The symlink was replaced, not written through.
        assert_eq!(fs::read_to_string(&outside).unwrap(), "untouched");
        assert_eq!(
            fs::read_to_string(f.root().join("link")).unwrap(),
            "replaced"
        );
    }

    #[test]
    fn refuses_traversal_and_absolute_paths() {
        for name in ["../evil", "a/../../evil", "/etc/passwd", "./../evil"] {
            let mut f = Fixture::new();
            let err = f.apply(&[layer(&[E::File(name, "x")])]).unwrap_err();
            assert_eq!(err.code(), "hostile_archive", "{name}: {err}");
            assert!(!f.tmp.path().join("evil").exists());
        }
    }

    #[test]
    fn never_writes_through_a_symlinked_parent() {
        let mut f = Fixture::new();
        let outside = f.tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        // In one layer, and across layers.
        let err = f
            .apply(&[layer(&[
                E::Sym("escape", outside.to_str().unwrap()),
                E::File("escape/pwned", "x"),
            ])])
            .unwrap_err();
        assert_eq!(err.code(), "hostile_archive", "{err}");
        let mut f2 = Fixture::new();
        let err = f2
            .apply(&[
                layer(&[E::Sym("up", "..")]),
                layer(&[E::File("up/pwned", "x")]),
            ])
            .unwrap_err();
        assert_eq!(err.code(), "hostile_archive", "{err}");
        // A whiteout through a symlink does not delete outside either.
        fs::write(outside.join("victim"), "v").unwrap();
        let mut f3 = Fixture::new();
        let err = f3
            .apply(&[layer(&[
                E::Sym("s", outside.to_str().unwrap()),
                E::File("s/.wh.victim", ""),
            ])])
            .unwrap_err();
        assert_eq!(err.code(), "hostile_archive", "{err}");
        assert!(outside.join("victim").exists());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn hard_links_stay_inside() {
        let mut f = Fixture::new();
        f.apply(&[layer(&[E::File("a", "data"), E::Hard("b", "a")])])
            .unwrap();
        assert_eq!(fs::read_to_string(f.root().join("b")).unwrap(), "data");
        for target in ["../outside", "/etc/passwd", "dir/../../x"] {
            let mut f = Fixture::new();
            let err = f.apply(&[layer(&[E::Hard("h", target)])]).unwrap_err();
            assert_eq!(err.code(), "hostile_archive", "{target}: {err}");
        }
        // Through a symlinked directory.
        let mut f = Fixture::new();
        let err = f
            .apply(&[layer(&[E::Sym("etc", "/etc"), E::Hard("h", "etc/passwd")])])
            .unwrap_err();
        assert_eq!(err.code(), "hostile_archive", "{err}");
        assert!(!f.exists("h"));
    }

    #[test]
    fn skips_devices_and_clears_setuid() {
        let mut f = Fixture::new();
        f.apply(&[layer(&[
            E::Kind("dev/null", EntryType::Char),
            E::Kind("dev/sda", EntryType::Block),
            E::Kind("fifo", EntryType::Fifo),
            E::Mode("bin/su", 0o4755),
            E::Mode("bin/wall", 0o2755),
        ])])
        .unwrap();
        assert!(!f.exists("dev/null") && !f.exists("dev/sda") && !f.exists("fifo"));
        for file in ["bin/su", "bin/wall"] {
            let mode = fs::metadata(f.root().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o755, "{file}");
        }
    }

    #[test]
    fn caps_size_and_entry_count() {
        // A gzip bomb: 4 MiB of zeros compress to a few KiB.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_size(4 * 1024 * 1024);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "zeros", io::repeat(0).take(4 * 1024 * 1024))
            .unwrap();
        let bomb = gzip(&b.into_inner().unwrap());
        assert!(bomb.len() < 64 * 1024);
        let mut f = Fixture::new();
        let limits = Limits {
            max_bytes: 1024 * 1024,
            max_entries: MAX_ENTRIES,
        };
        let err = f.apply_with(limits, &[bomb]).unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");
        // The cap is over all layers together.
        let half = layer(&[E::File("a", &"x".repeat(600))]);
        let limits = Limits {
            max_bytes: 1000,
            max_entries: MAX_ENTRIES,
        };
        let mut f = Fixture::new();
        let err = f.apply_with(
            limits,
            &[half.clone(), layer(&[E::File("b", &"x".repeat(600))])],
        );
        assert_eq!(err.unwrap_err().code(), "too_large");
        let many: Vec<E<'_>> = (0..20).map(|_| E::File("f", "")).collect();
        let limits = Limits {
            max_bytes: DEFAULT_LIMIT,
            max_entries: 10,
        };
        let err = Fixture::new()
            .apply_with(limits, &[layer(&many)])
            .unwrap_err();
        assert_eq!(err.code(), "too_large");
    }

    #[test]
    fn refuses_an_oversized_long_name() {
        // A GNU long-name header the tar reader would otherwise read into memory whole.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(EntryType::GNULongName);
        let size = 2 * MAX_HEADER_EXTENSION;
        h.set_size(size);
        h.set_cksum();
        b.append(&h, io::repeat(b'a').take(size)).unwrap();
        raw_entry(&mut b, "short", EntryType::Regular, 0o644, None, b"");
        let mut f = Fixture::new();
        let err = f.apply(&[gzip(&b.into_inner().unwrap())]).unwrap_err();
        assert_eq!(err.code(), "hostile_archive", "{err}");
    }

    #[test]
    fn zstd_layers_are_unsupported_with_a_hint() {
        let mut f = Fixture::new();
        let err = f
            .apply(&[vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]])
            .unwrap_err();
        assert_eq!(err.code(), "unsupported");
        assert!(err.to_string().contains("gzip"), "{err}");
    }

    #[test]
    fn picks_linux_amd64_from_an_index() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1, "digest": digest('a'),
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1, "digest": digest('b'),
                 "platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1, "digest": digest('c'),
                 "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        }))
        .unwrap();
        assert_eq!(
            pick_platform(&index).unwrap().digest().to_string(),
            digest('c')
        );
        let arm_only: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
                "digest": digest('a'), "platform": {"os": "linux", "architecture": "arm64"}}]
        }))
        .unwrap();
        let err = pick_platform(&arm_only).unwrap_err();
        assert_eq!(err.code(), "unsupported");
        assert!(err.to_string().contains("linux/arm64"), "{err}");
    }
}
