//! Building an image from a Dockerfile without a Docker daemon, on this store and the
//! workspaces' sandbox.
//!
//! Each instruction that changes files runs in a sandbox (the [`StepRunner`], which the
//! runtime provides) whose root is an overlay: the stage's earlier results as read-only lower
//! directories, and an empty upper directory that collects what the step changed. That upper
//! directory, with overlayfs's whiteouts turned into OCI ones, is the step's layer (an
//! uncompressed tar in the blob store, written while the next steps run), and it stays on
//! disk as a lower directory for the steps after it. The finished stage becomes a manifest
//! and configuration in the blob store, and its tree is linked from the base's and the
//! steps' directories ([`link_diff`]), so a built image is one more image in the cache.
//!
//! Each step is cached under a key made of its parent's key, the instruction after
//! substitution and what it reads (the environment for `RUN`, the content of copied files):
//! an unchanged Dockerfile runs nothing, and a change to a late step reuses every earlier one.
//!
//! Layout under the store's `build/`:
//! - `bases/<manifest hex>/`: a base image's tree for builds, owned by the build's uid (the
//!   sandbox maps that uid to the image's root, so `RUN` as root may change any file);
//! - `diffs/<step key>/`: each step's upper directory;
//! - `steps/<step key>.json`: the step's layer (none when it changed nothing);
//! - `tmp/`: directories of builds under way.
//!
//! What a build runs is the repository's code: it runs only in the sandbox, as an unprivileged
//! uid, and the cell reads the context without following a link.

use super::dockerfile::{self, Cmd, Ignore, Kind, Place, Step};
use super::*;
use futures::future::BoxFuture;

/// Where a step sees what it copies from, inside its sandbox.
pub const CONTEXT_MOUNT: &str = "/.devcell/context";
/// Where `COPY --from` sees the other stage.
pub const FROM_MOUNT: &str = "/.devcell/from";
/// Top-level names of a build's root that belong to the sandbox, never to a layer.
const SANDBOX_NAMES: &[&str] = &[".devcell"];
/// What a step's sandbox mounts over; present in every base so that no step's layer gets them.
const MOUNT_POINTS: &[&str] = &[
    "proc",
    "dev",
    "sys",
    ".devcell/context",
    ".devcell/from",
    ".devcell/lib",
];
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const STEP_VERSION: u32 = 1;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines of a failed step's output quoted in its error.
const FAILED_TAIL_LINES: usize = 15;

/// Runs one step of a build in a sandbox; the runtime implements it.
pub trait StepRunner: Send + Sync {
    /// Runs `step` and returns its exit code; `Err` when it could not be run at all.
    fn run<'a>(&'a self, step: &'a StepRun) -> BoxFuture<'a, Result<i32, String>>;
}

/// Pulls the image a `FROM` or `COPY --from` names, with the workspace's credentials and
/// mirrors; the service implements it.
pub trait BasePuller: Send + Sync {
    fn pull<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<PulledImage, String>>;
}

/// What a step runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepCommand {
    /// A program of the image, with its arguments.
    Exec(Vec<String>),
    /// One of this binary's tools (`build-copy ...`), run with the host's libraries.
    Tool(Vec<String>),
}

/// One step in a sandbox: its root is an overlay of `lowers` (top first) with `upper`
/// collecting the changes.
#[derive(Clone, Debug)]
pub struct StepRun {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The build context, read-only at [`CONTEXT_MOUNT`].
    pub context: Option<PathBuf>,
    /// Another stage's (or image's) tree, read-only at [`FROM_MOUNT`], top first.
    pub from: Option<Vec<PathBuf>>,
    pub command: StepCommand,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    /// The user and group inside the sandbox.
    pub user: (u32, u32),
    /// Where the output goes (appended).
    pub log: PathBuf,
}

/// A Dockerfile build to do.
pub struct BuildRequest<'a> {
    /// The Dockerfile's text; without one the build starts from `base_image`.
    pub dockerfile: Option<&'a str>,
    pub base_image: Option<&'a str>,
    /// devcontainer features to install on top, in order.
    pub features: &'a [super::Feature],
    /// Its name in messages, relative to the repository.
    pub dockerfile_name: &'a str,
    /// The context directory on the host.
    pub context: &'a Path,
    pub args: &'a [(String, String)],
    pub target: Option<&'a str>,
    /// The host uid the build's sandboxes run as (and own the build trees).
    pub uid: u32,
    /// Who asked: the built image is theirs to use.
    pub who: Puller<'a>,
    /// Where the build's output goes, step headers included.
    pub log: &'a Path,
}

/// A step's cache record.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct StepRecord {
    version: u32,
    layer: Option<Layer>,
}

/// A layer this builder made: an uncompressed tar, so its digest is its diff id.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Layer {
    digest: String,
    size: u64,
}

/// What the image's configuration says, as the stage goes.
#[derive(Clone, Debug, Default)]
struct Config {
    env: Vec<(String, String)>,
    workdir: Option<String>,
    user: Option<String>,
    shell: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    labels: Vec<(String, String)>,
    exposed: Vec<String>,
}

/// The image a stage starts from.
#[derive(Clone, Debug)]
struct Base {
    /// The manifest's hex digest; `None` for `scratch`.
    hex: Option<String>,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
}

#[derive(Clone, Debug)]
struct Stage {
    name: Option<String>,
    key: String,
    base: Base,
    /// Keys of the steps whose diff directories stack on the base, bottom first.
    diffs: Vec<String>,
    layers: Vec<Layer>,
    config: Config,
    args: Vec<(String, String)>,
}

fn build_err(place: &Place, message: impl fmt::Display) -> ImageError {
    ImageError::BuildFailed {
        message: format!("{place}: {message}"),
    }
}

fn key_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

impl ImageStore {
    fn build_dir(&self) -> PathBuf {
        self.root.join("build")
    }

    /// Builds the image `req` describes and returns it unpacked, like a pulled image.
    pub async fn build(
        &self,
        req: &BuildRequest<'_>,
        runner: &dyn StepRunner,
        puller: &dyn BasePuller,
        on_step: &(dyn Fn(String) + Send + Sync),
    ) -> Result<PulledImage, ImageError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.ensure_dirs())
            .await
            .map_err(|e| io_err("preparing the image store")(io::Error::other(e)))??;
        for sub in ["bases", "diffs", "steps", "tmp"] {
            let d = self.build_dir().join(sub);
            fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let steps = match (req.dockerfile, req.base_image) {
            (Some(text), _) => dockerfile::parse(req.dockerfile_name, text),
            (None, Some(image)) => Ok(vec![Step {
                place: Place {
                    file: req.dockerfile_name.to_owned(),
                    line: 1,
                },
                text: format!("FROM {image}"),
                kind: Kind::From {
                    image: image.to_owned(),
                    name: None,
                },
            }]),
            (None, None) => Err(dockerfile::DockerfileError {
                place: Place {
                    file: req.dockerfile_name.to_owned(),
                    line: 1,
                },
                message: "names neither an image nor a Dockerfile".into(),
            }),
        }
        .map_err(|e| ImageError::BuildFailed {
            message: e.to_string(),
        })?;
        let ignore = match read_in(&req.context.join(".dockerignore"), MAX_DOCUMENT) {
            Ok(bytes) => Ignore::parse(&String::from_utf8_lossy(&bytes))
                .map_err(|message| ImageError::BuildFailed { message })?,
            Err(_) => Ignore::default(),
        };
        let mut log = Log::open(req.log)?;
        let work = Cleanup::dir(self.build_dir().join("tmp").join(temp_name("build")));
        fs::create_dir_all(work.path())
            .map_err(io_err(format!("creating {}", work.path().display())))?;
        let mut b = Builder {
            store: self,
            req,
            runner,
            puller,
            ignore,
            stages: Vec::new(),
            global_args: Vec::new(),
            work: work.path().to_owned(),
            scratch_count: 0,
            pending: Vec::new(),
        };
        let chosen = b.select(&steps)?;
        let total = chosen.len() + req.features.len();
        for (n, step) in chosen.iter().enumerate() {
            let header = format!("[{}/{total}] {}", n + 1, step.text);
            on_step(header.clone());
            log.line(&format!("#{} {header}", n + 1));
            let t = std::time::Instant::now();
            let cached = b.step(step, &mut log).await?;
            if let Some(how) = cached {
                log.line(&format!(
                    "#{} {how} ({:.2}s)",
                    n + 1,
                    t.elapsed().as_secs_f64()
                ));
            }
        }
        for (i, feature) in req.features.iter().enumerate() {
            let n = chosen.len() + i + 1;
            let header = format!("[{n}/{total}] FEATURE {}", feature.id);
            on_step(header.clone());
            log.line(&format!("#{n} {header}"));
            let t = std::time::Instant::now();
            let how = b.feature(feature, &mut log).await?;
            log.line(&format!("#{n} {how} ({:.2}s)", t.elapsed().as_secs_f64()));
        }
        let t = std::time::Instant::now();
        if b.finish_layers().await? {
            log.line(&format!(
                "   last layers written in {:.2}s",
                t.elapsed().as_secs_f64()
            ));
        }
        let stage = b
            .stages
            .last()
            .cloned()
            .ok_or_else(|| unsupported("the Dockerfile has no stage"))?;
        let t = std::time::Instant::now();
        let image = self.assemble(&stage, req)?;
        log.line(&format!(
            "   assembled in {:.2}s",
            t.elapsed().as_secs_f64()
        ));
        log.line(&format!("image {} ready", image.digest));
        Ok(image)
    }

    /// Writes the stage's configuration and manifest and unpacks the image.
    fn assemble(&self, stage: &Stage, req: &BuildRequest<'_>) -> Result<PulledImage, ImageError> {
        let blobs = self.blobs_dir();
        let c = &stage.config;
        let mut diff_ids = stage.base.diff_ids.clone();
        diff_ids.extend(stage.layers.iter().map(|l| l.digest.clone()));
        let mut config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": c.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let inner = &mut config["config"];
        if let Some(w) = &c.workdir {
            inner["WorkingDir"] = w.clone().into();
        }
        if let Some(u) = &c.user {
            inner["User"] = u.clone().into();
        }
        if let Some(e) = &c.entrypoint {
            inner["Entrypoint"] = e.clone().into();
        }
        if let Some(cmd) = &c.cmd {
            inner["Cmd"] = cmd.clone().into();
        }
        if !c.labels.is_empty() {
            inner["Labels"] = c
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        if !c.exposed.is_empty() {
            inner["ExposedPorts"] = c
                .exposed
                .iter()
                .map(|p| (p.clone(), serde_json::json!({})))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let config_bytes = serde_json::to_vec(&config)
            .map_err(|e| io_err("encoding the configuration")(io::Error::other(e)))?;
        let config_hex = put_blob(&blobs, &config_bytes)?;
        let mut layers: Vec<serde_json::Value> = stage
            .base
            .layers
            .iter()
            .map(|d| serde_json::to_value(d).unwrap_or_default())
            .collect();
        layers.extend(stage.layers.iter().map(
            |l| serde_json::json!({"mediaType": LAYER_TYPE, "digest": l.digest, "size": l.size}),
        ));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_hex}"),
                "size": config_bytes.len(),
            },
            "layers": layers,
        });
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| io_err("encoding the manifest")(io::Error::other(e)))?;
        let hex = put_blob(&blobs, &manifest_bytes)?;
        let parsed: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| unsupported(format!("the built manifest is invalid: {e}")))?;
        let reference = format!("build/{}@sha256:{hex}", req.dockerfile_name);
        // The base's tree is in the cache already, and the steps' files are in their diff
        // directories: the image's tree is linked from both, nothing is copied.
        let base_tree = stage.base.hex.as_ref().map(|h| self.rootfs_dir().join(h));
        let diffs: Vec<PathBuf> = stage
            .diffs
            .iter()
            .map(|k| self.build_dir().join("diffs").join(k))
            .collect();
        let image = self.materialize_on(
            &hex,
            &parsed,
            &reference,
            base_tree.as_deref().map(|t| (t, stage.base.layers.len())),
            &diffs,
        )?;
        self.grant(&hex, req.who, false)?;
        Ok(image)
    }

    /// The base's tree for builds: its layers unpacked, owned by `uid`, with the sandbox's
    /// mount points made; built once per image and uid.
    fn base_tree(&self, base: &Base, uid: u32) -> Result<PathBuf, ImageError> {
        let name = format!("{}-{uid}", base.hex.as_deref().unwrap_or("scratch"));
        let dir = self.build_dir().join("bases").join(&name);
        if dir.is_dir() {
            touch(&dir);
            return Ok(dir);
        }
        let tmp = Cleanup::dir(self.build_dir().join("bases").join(temp_name(&name)));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(tmp.path())
            .map_err(io_err(format!("creating {}", tmp.path().display())))?;
        let mut unpacker = Unpacker::new(tmp.path(), self.limits);
        let blobs = self.blobs_dir();
        for layer in &base.layers {
            let layer_hex = descriptor_hex(layer)?;
            unpacker.apply_layer(&blobs.join(&layer_hex), layer.media_type().as_ref())?;
        }
        for point in MOUNT_POINTS {
            let p = tmp.path().join(point);
            if fs::symlink_metadata(&p).is_err() {
                fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
            }
        }
        fs::File::create(tmp.path().join(".devcell/devcell"))
            .map_err(io_err("creating the tool's mount point"))?;
        chown_tree(tmp.path(), uid).map_err(io_err(format!(
            "handing {} to the build",
            tmp.path().display()
        )))?;
        match fs::rename(tmp.path(), &dir) {
            Ok(()) => tmp.disarm(),
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(io_err(format!("moving {}", dir.display()))(e)),
        }
        Ok(dir)
    }

    /// The layers and diff ids of a cached image, for building on it.
    fn base_of(&self, image: &PulledImage) -> Result<Base, ImageError> {
        let hex = image.digest.trim_start_matches("sha256:").to_owned();
        let record = self
            .load_record(&hex)?
            .ok_or_else(|| unsupported(format!("{} is not in the cache", image.reference)))?;
        let (Some(layers), Some(config_digest)) = (record.layers, record.config) else {
            return Err(unsupported(format!(
                "{} was cached before builds kept its layers; pull it again",
                image.reference
            )));
        };
        let config_hex = config_digest.trim_start_matches("sha256:");
        let bytes = read_blob(&self.blobs_dir(), config_hex, MAX_DOCUMENT)?;
        let config: ImageConfiguration = serde_json::from_slice(&bytes)
            .map_err(|e| unsupported(format!("the image configuration is invalid: {e}")))?;
        Ok(Base {
            hex: Some(hex),
            layers,
            diff_ids: config.rootfs().diff_ids().clone(),
        })
    }
}

/// Sets the modification time of `path` to now: when a cached entry was last used.
pub(super) fn touch(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// What pruning the build cache removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Cached steps (with their directories).
    pub steps: usize,
    /// Base trees, features and leftovers of builds cut off.
    pub trees: usize,
}

impl ImageStore {
    /// Removes what builds keep and no build used for `keep`: cached steps and their
    /// directories, base trees, fetched features, logs of failed builds, and leftovers of
    /// builds cut off (after a day). The layers of built images stay in the blob store with
    /// their images.
    pub fn prune_build_cache(&self, keep: Duration) -> Result<Pruned, ImageError> {
        let now = SystemTime::now();
        let old = |path: &Path, keep: Duration| {
            fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > keep))
        };
        let entries = |dir: &Path| -> Vec<PathBuf> {
            fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let mut pruned = Pruned::default();
        let build = self.build_dir();
        for record in entries(&build.join("steps")) {
            let Some(key) = record
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|k| is_sha256_hex(k))
            else {
                continue;
            };
            if old(&record, keep) {
                // The record first: a step without a record is never used.
                let _ = fs::remove_file(&record);
                remove_any(&build.join("diffs").join(key))
                    .map_err(io_err(format!("removing the cached step {key}")))?;
                pruned.steps += 1;
            }
        }
        // Directories of steps whose record is gone (a crash between the two).
        for diff in entries(&build.join("diffs")) {
            let has_record = diff
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|k| build.join("steps").join(format!("{k}.json")).is_file());
            if !has_record && old(&diff, Duration::from_secs(3600)) {
                remove_any(&diff).map_err(io_err(format!("removing {}", diff.display())))?;
                pruned.trees += 1;
            }
        }
        let day = Duration::from_secs(24 * 3600);
        for (dir, keep) in [
            (build.join("bases"), keep),
            (self.features_dir(), keep),
            (build.join("failed"), keep),
            (build.join("tmp"), day),
        ] {
            for entry in entries(&dir) {
                if old(&entry, keep) {
                    remove_any(&entry).map_err(io_err(format!("removing {}", entry.display())))?;
                    pruned.trees += 1;
                }
            }
        }
        Ok(pruned)
    }
}

/// The build's own output file, shared with the steps' sandboxes.
struct Log {
    file: File,
}

impl Log {
    fn open(path: &Path) -> Result<Log, ImageError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc_nofollow())
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        Ok(Log { file })
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.file, "{text}");
    }
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Reads a file of the repository without following a link at its last component; the
/// repository's directories were made by git, which writes no link above its files.
fn read_in(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc_nofollow())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, "is too large"));
    }
    Ok(out)
}

/// Writes `bytes` as a blob and returns its hex digest.
fn put_blob(blobs: &Path, bytes: &[u8]) -> Result<String, ImageError> {
    let hex = hex::encode(Sha256::digest(bytes));
    store_blob(&mut &bytes[..], blobs, &hex)?;
    Ok(hex)
}

/// Gives every entry under `root` (never following a link) to `uid`.
fn chown_tree(root: &Path, uid: u32) -> io::Result<()> {
    let owner = Some(rustix::process::Uid::from_raw(uid));
    let group = Some(rustix::process::Gid::from_raw(uid));
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            &dir,
            owner,
            group,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    &path,
                    owner,
                    group,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
        }
    }
    Ok(())
}

struct Builder<'a, 'r> {
    store: &'a ImageStore,
    req: &'a BuildRequest<'r>,
    runner: &'a dyn StepRunner,
    puller: &'a dyn BasePuller,
    ignore: Ignore,
    stages: Vec<Stage>,
    global_args: Vec<(String, String)>,
    work: PathBuf,
    scratch_count: u32,
    /// Layers still being written from their steps' diff directories while later steps run,
    /// by step key; their place in a stage's `layers` holds [`PENDING`] + the key until
    /// [`Builder::finish_layers`].
    pending: Vec<(String, LayerTask)>,
}

/// A step's layer being written from its diff directory.
type LayerTask = tokio::task::JoinHandle<Result<Option<Layer>, ImageError>>;

/// The digest a layer still being written has in a stage's `layers`, before its step key.
const PENDING: &str = "pending:";

/// ARGs Docker defines without a declaration's default (platform ones, for this host).
fn predefined(name: &str) -> Option<&'static str> {
    Some(match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => "linux/amd64",
        "TARGETOS" | "BUILDOS" => "linux",
        "TARGETARCH" | "BUILDARCH" => "amd64",
        "TARGETVARIANT" | "BUILDVARIANT" => "",
        _ => return None,
    })
}

/// Proxy settings are passed to `RUN` without a declaration, as Docker does.
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

impl Builder<'_, '_> {
    /// The steps that make the target stage: the global ARGs, the target and the stages it
    /// depends on (by `FROM` or `COPY --from`), in file order.
    fn select<'s>(&self, steps: &'s [Step]) -> Result<Vec<&'s Step>, ImageError> {
        // Split into stages.
        let mut stages: Vec<(Option<String>, Vec<&'s Step>)> = Vec::new();
        let mut globals = Vec::new();
        for s in steps {
            match &s.kind {
                Kind::From { name, .. } => stages.push((name.clone(), vec![s])),
                _ => match stages.last_mut() {
                    Some((_, v)) => v.push(s),
                    None => globals.push(s),
                },
            }
        }
        let target = match self.req.target {
            Some(t) => stages
                .iter()
                .position(|(n, _)| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(t)))
                .ok_or_else(|| ImageError::BuildFailed {
                    message: format!(
                        "{}: has no stage named {t:?} (build.target); name one with `FROM IMAGE AS {t}`",
                        self.req.dockerfile_name
                    ),
                })?,
            None => stages.len() - 1,
        };
        let mut needed = vec![false; stages.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if needed[i] {
                continue;
            }
            needed[i] = true;
            for s in &stages[i].1 {
                let refs: Vec<&str> = match &s.kind {
                    Kind::From { image, .. } => vec![image.as_str()],
                    Kind::Copy { from: Some(f), .. } => vec![f.as_str()],
                    _ => vec![],
                };
                for r in refs {
                    if let Some(j) = stages[..i]
                        .iter()
                        .position(|(n, _)| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(r)))
                        .or_else(|| r.parse::<usize>().ok().filter(|j| *j < i))
                    {
                        todo.push(j);
                    }
                }
            }
        }
        let mut out = globals;
        for (i, (_, s)) in stages.iter().enumerate() {
            if needed[i] {
                out.extend(s.iter().copied());
            }
        }
        // The target stage last, so that it is the last stage made.
        if target != stages.len() - 1 {
            let mut tail: Vec<&Step> = Vec::new();
            let mut rest: Vec<&Step> = Vec::new();
            let target_first = stages[target].1[0] as *const Step;
            let mut in_target = false;
            for s in out {
                if matches!(s.kind, Kind::From { .. }) {
                    in_target = std::ptr::eq(s, target_first);
                }
                if in_target {
                    tail.push(s)
                } else {
                    rest.push(s)
                }
            }
            rest.extend(tail);
            out = rest;
        }
        Ok(out)
    }

    fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|i| *i < self.stages.len())
            })
    }

    /// Variables for substitution in the current stage: its ENV over its ARGs.
    fn vars(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |name: &str| {
            let stage = self.stages.last();
            match stage {
                Some(s) => s
                    .config
                    .env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .or_else(|| s.args.iter().rev().find(|(k, _)| k == name))
                    .map(|(_, v)| v.clone()),
                None => self
                    .global_args
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
            }
        }
    }

    /// Does one step; returns how it was done (`CACHED`, `DONE`) for steps that touch files.
    async fn step(
        &mut self,
        step: &Step,
        log: &mut Log,
    ) -> Result<Option<&'static str>, ImageError> {
        let place = &step.place;
        let expand =
            |b: &Self, s: &str| dockerfile::expand(s, &b.vars()).map_err(|e| build_err(place, e));
        match &step.kind {
            Kind::Arg(pairs) => {
                for (name, default) in pairs {
                    let given = self
                        .req
                        .args
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone());
                    let in_global = self
                        .global_args
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone());
                    let default = match default {
                        Some(d) => Some(expand(self, d)?),
                        None => None,
                    };
                    let value = given
                        .or(if self.stages.is_empty() {
                            None
                        } else {
                            in_global
                        })
                        .or(default)
                        .or_else(|| predefined(name).map(str::to_owned));
                    let Some(value) = value else { continue };
                    match self.stages.last_mut() {
                        Some(s) => s.args.push((name.clone(), value)),
                        None => self.global_args.push((name.clone(), value)),
                    }
                }
                Ok(None)
            }
            Kind::From { image, name } => {
                // FROM sees the ARGs declared before the first FROM, and only those.
                let globals = |n: &str| {
                    self.global_args
                        .iter()
                        .rev()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                };
                let image = dockerfile::expand(image, &globals).map_err(|e| build_err(place, e))?;
                if let Some(i) = self
                    .stage_index(&image)
                    .filter(|_| !image.eq_ignore_ascii_case("scratch"))
                {
                    // Built on an earlier stage: its base stays the base, its diffs stack.
                    let s = self.stages[i].clone();
                    self.stages.push(Stage {
                        name: name.clone(),
                        args: Vec::new(),
                        ..s
                    });
                    return Ok(None);
                }
                let (base, config, key) = if image.eq_ignore_ascii_case("scratch") {
                    (
                        Base {
                            hex: None,
                            layers: Vec::new(),
                            diff_ids: Vec::new(),
                        },
                        Config::default(),
                        key_of(&["from", "scratch"]),
                    )
                } else {
                    let pulled = self
                        .puller
                        .pull(&image)
                        .await
                        .map_err(|e| build_err(place, format!("FROM {image}: {e}")))?;
                    let base = self
                        .store
                        .base_of(&pulled)
                        .map_err(|e| build_err(place, e))?;
                    let config = Config {
                        env: pulled.env.clone(),
                        workdir: pulled.working_dir.clone(),
                        user: pulled.user.clone(),
                        ..Config::default()
                    };
                    let key = key_of(&["from", &pulled.digest]);
                    (base, config, key)
                };
                let diffs = Vec::new();
                self.stages.push(Stage {
                    name: name.clone(),
                    key,
                    base,
                    diffs,
                    layers: Vec::new(),
                    config,
                    args: Vec::new(),
                });
                // How long finding the base took (the registry asked for its tag, or not).
                Ok((!image.eq_ignore_ascii_case("scratch")).then_some("RESOLVED"))
            }
            kind => {
                let Some(stage_i) = self.stages.len().checked_sub(1) else {
                    return Err(build_err(place, "comes before the first FROM"));
                };
                match kind {
                    Kind::Env(text) => {
                        let pairs = dockerfile::pairs(text, &self.vars())
                            .map_err(|e| build_err(place, e))?;
                        let s = &mut self.stages[stage_i];
                        for (k, v) in pairs {
                            s.config.env.retain(|(k2, _)| *k2 != k);
                            s.config.env.push((k, v));
                        }
                        self.chain(&["ENV", text]);
                        Ok(None)
                    }
                    Kind::Label(text) => {
                        let pairs = dockerfile::pairs(text, &self.vars())
                            .map_err(|e| build_err(place, e))?;
                        let s = &mut self.stages[stage_i];
                        for (k, v) in pairs {
                            s.config.labels.retain(|(k2, _)| *k2 != k);
                            s.config.labels.push((k, v));
                        }
                        self.chain(&["LABEL", text]);
                        Ok(None)
                    }
                    Kind::Expose(ports) => {
                        for p in ports {
                            let p = expand(self, p)?;
                            let p = if p.contains('/') {
                                p
                            } else {
                                format!("{p}/tcp")
                            };
                            let s = &mut self.stages[stage_i];
                            if !s.config.exposed.contains(&p) {
                                s.config.exposed.push(p);
                            }
                        }
                        Ok(None)
                    }
                    Kind::User(u) => {
                        let u = expand(self, u)?;
                        self.stages[stage_i].config.user = Some(u.clone());
                        self.chain(&["USER", &u]);
                        Ok(None)
                    }
                    Kind::Shell(argv) => {
                        self.stages[stage_i].config.shell = Some(argv.clone());
                        self.chain(&["SHELL", &argv.join("\0")]);
                        Ok(None)
                    }
                    Kind::Entrypoint(cmd) => {
                        let argv = self.argv(cmd);
                        let s = &mut self.stages[stage_i];
                        s.config.entrypoint = Some(argv);
                        // An ENTRYPOINT resets the CMD inherited from the base.
                        s.config.cmd = None;
                        Ok(None)
                    }
                    Kind::Cmd(cmd) => {
                        let argv = self.argv(cmd);
                        self.stages[stage_i].config.cmd = Some(argv);
                        Ok(None)
                    }
                    Kind::Ignored(what) => {
                        log.line(&format!(
                            "{place}: {what} is recorded nowhere a workspace uses; ignored"
                        ));
                        Ok(None)
                    }
                    Kind::Workdir(dir) => {
                        let dir = expand(self, dir)?;
                        let abs = self.absolute(&dir);
                        self.stages[stage_i].config.workdir = Some(abs.clone());
                        let key = key_of(&[&self.stages[stage_i].key, "WORKDIR", &abs]);
                        let cmd =
                            StepCommand::Tool(vec!["build-copy".into(), "--mkdir".into(), abs]);
                        self.files_step(place, key, cmd, None, None, None, None, log)
                            .await
                    }
                    Kind::Run(cmd) => {
                        let argv = self.argv(cmd);
                        let env = self.run_env();
                        let mut parts = vec![self.stages[stage_i].key.clone(), "RUN".into()];
                        parts.extend(argv.iter().cloned());
                        parts.push("\0env".into());
                        parts.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
                        parts.push(self.stages[stage_i].config.user.clone().unwrap_or_default());
                        parts.push(
                            self.stages[stage_i]
                                .config
                                .workdir
                                .clone()
                                .unwrap_or_default(),
                        );
                        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                        let key = key_of(&refs);
                        self.files_step(
                            place,
                            key,
                            StepCommand::Exec(argv),
                            Some(env),
                            None,
                            None,
                            None,
                            log,
                        )
                        .await
                    }
                    Kind::Copy {
                        add,
                        srcs,
                        dest,
                        from,
                        chown,
                        chmod,
                        inline,
                    } => {
                        if !inline.is_empty() {
                            return Err(build_err(
                                place,
                                "here-documents in COPY and ADD are not supported; put the file in the context",
                            ));
                        }
                        let srcs: Vec<String> = srcs
                            .iter()
                            .map(|s| expand(self, s))
                            .collect::<Result<_, _>>()?;
                        if let Some(url) = srcs
                            .iter()
                            .find(|s| s.contains("://") || s.starts_with("git@"))
                        {
                            return Err(build_err(
                                place,
                                format!(
                                    "ADD from a URL ({url}) is not supported; download it in a RUN step"
                                ),
                            ));
                        }
                        let mut dest_abs = self.absolute(&expand(self, dest)?);
                        if (dest.ends_with('/') || srcs.len() > 1) && !dest_abs.ends_with('/') {
                            dest_abs.push('/');
                        }
                        let chown = chown.as_deref().map(|c| expand(self, c)).transpose()?;
                        let (from_lowers, source_key, context) = match from {
                            Some(f) => {
                                let f = expand(self, f)?;
                                match self.stage_index(&f) {
                                    Some(i) => {
                                        let s = self.stages[i].clone();
                                        (Some(self.lowers_of(&s)?), s.key.clone(), None)
                                    }
                                    None => {
                                        let pulled = self.puller.pull(&f).await.map_err(|e| {
                                            build_err(place, format!("COPY --from={f}: {e}"))
                                        })?;
                                        let base = self
                                            .store
                                            .base_of(&pulled)
                                            .map_err(|e| build_err(place, e))?;
                                        let tree = self
                                            .store
                                            .base_tree(&base, self.req.uid)
                                            .map_err(|e| build_err(place, e))?;
                                        (Some(vec![tree]), pulled.digest.clone(), None)
                                    }
                                }
                            }
                            None => {
                                let digest = hash_sources(self.req.context, &srcs, &self.ignore)
                                    .map_err(|e| {
                                        build_err(
                                            place,
                                            format!("{}: {e}", if *add { "ADD" } else { "COPY" }),
                                        )
                                    })?;
                                (None, digest, Some(self.req.context.to_owned()))
                            }
                        };
                        let mut argv = vec!["build-copy".to_owned()];
                        argv.push("--src-root".into());
                        argv.push(if from_lowers.is_some() {
                            FROM_MOUNT.into()
                        } else {
                            CONTEXT_MOUNT.into()
                        });
                        if context.is_some() {
                            for p in &self.ignore.patterns {
                                argv.push(format!("--exclude={p}"));
                            }
                        }
                        if *add && from.is_none() {
                            argv.push("--unpack".into());
                        }
                        if let Some(m) = chmod {
                            argv.push(format!("--chmod={m}"));
                        }
                        argv.push(format!("--dest={dest_abs}"));
                        argv.push("--".into());
                        argv.extend(srcs.iter().cloned());
                        let key = key_of(&[
                            &self.stages[stage_i].key,
                            if *add { "ADD" } else { "COPY" },
                            &argv.join("\0"),
                            &source_key,
                            chown.as_deref().unwrap_or_default(),
                        ]);
                        let owner = match &chown {
                            Some(c) => Some((
                                self.resolve_owner(c).map_err(|e| build_err(place, e))?,
                                dest_abs.clone(),
                            )),
                            None => None,
                        };
                        self.files_step(
                            place,
                            key,
                            StepCommand::Tool(argv),
                            None,
                            from_lowers,
                            context,
                            owner,
                            log,
                        )
                        .await
                    }
                    Kind::Arg(_) | Kind::From { .. } => Ok(None),
                }
            }
        }
    }

    /// Installs a devcontainer feature: its directory as the context, a copy of it made
    /// writable in the image's /tmp, its `install.sh` run as root with its options in the
    /// environment; then its `containerEnv` joins the image's.
    async fn feature(
        &mut self,
        feature: &super::Feature,
        log: &mut Log,
    ) -> Result<&'static str, ImageError> {
        let place = Place {
            file: self.req.dockerfile_name.to_owned(),
            line: 1,
        };
        let stage_i = self.stages.len() - 1;
        let mut env = self.run_env();
        for (k, v) in &feature.env {
            env.retain(|(k2, _)| k2 != k);
            env.push((k.clone(), v.clone()));
        }
        for (k, v) in [
            ("_REMOTE_USER", "root"),
            ("_CONTAINER_USER", "root"),
            ("_REMOTE_USER_HOME", "/root"),
            ("_CONTAINER_USER_HOME", "/root"),
        ] {
            env.push((k.into(), v.into()));
        }
        let script = format!(
            "set -e; d=/tmp/devcell-feature-$$; cp -r {CONTEXT_MOUNT} \"$d\"; cd \"$d\"; \
             chmod +x install.sh; ./install.sh; cd /; rm -rf \"$d\""
        );
        let mut parts = vec![
            self.stages[stage_i].key.clone(),
            "FEATURE".into(),
            feature.id.clone(),
            feature.content.clone(),
        ];
        parts.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let key = key_of(&refs);
        // Features install as root, whatever USER the image ended with.
        let user = self.stages[stage_i].config.user.take();
        let how = self
            .files_step(
                &place,
                key,
                StepCommand::Exec(vec!["/bin/sh".into(), "-c".into(), script]),
                Some(env),
                None,
                Some(feature.dir.clone()),
                None,
                log,
            )
            .await
            .map_err(|e| match e {
                ImageError::BuildFailed { message } => ImageError::BuildFailed {
                    message: message.replacen(
                        &place.to_string(),
                        &format!("{place}: feature {}", feature.id),
                        1,
                    ),
                },
                e => e,
            })?;
        let s = &mut self.stages[stage_i];
        s.config.user = user;
        for (k, v) in &feature.container_env {
            s.config.env.retain(|(k2, _)| k2 != k);
            s.config.env.push((k.clone(), v.clone()));
        }
        Ok(how.unwrap_or("DONE"))
    }

    /// Adds `parts` to the current stage's key (an instruction that changes no file).
    fn chain(&mut self, parts: &[&str]) {
        if let Some(s) = self.stages.last_mut() {
            let mut all = vec![s.key.as_str()];
            all.extend_from_slice(parts);
            s.key = key_of(&all);
        }
    }

    /// `RUN`, `CMD` and `ENTRYPOINT` as an argument vector: the exec form as is, the shell
    /// form through the stage's `SHELL`.
    fn argv(&self, cmd: &Cmd) -> Vec<String> {
        match cmd {
            Cmd::Exec(v) => v.clone(),
            Cmd::Shell(s) => {
                let mut v = self
                    .stages
                    .last()
                    .and_then(|st| st.config.shell.clone())
                    .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
                v.push(s.clone());
                v
            }
        }
    }

    /// The environment of a `RUN`: the stage's ARGs and proxy settings under its ENV.
    fn run_env(&self) -> Vec<(String, String)> {
        let Some(s) = self.stages.last() else {
            return Vec::new();
        };
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| {
            env.retain(|(k2, _)| k2 != k);
            env.push((k.to_owned(), v.to_owned()));
        };
        set("PATH", DEFAULT_PATH);
        for p in PROXY_ARGS {
            if let Some((_, v)) = self.req.args.iter().rev().find(|(k, _)| k == p) {
                set(p, v);
            }
        }
        for (k, v) in &s.args {
            set(k, v);
        }
        for (k, v) in &s.config.env {
            set(k, v);
        }
        env
    }

    /// `path` against the stage's working directory.
    fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            return path.to_owned();
        }
        let wd = self
            .stages
            .last()
            .and_then(|s| s.config.workdir.clone())
            .unwrap_or_else(|| "/".into());
        let mut out = wd.trim_end_matches('/').to_owned();
        out.push('/');
        out.push_str(path.trim_start_matches("./"));
        if path == "." || path == "./" {
            out = format!("{}/", wd.trim_end_matches('/'));
        }
        out
    }

    /// The lower directories of `stage`, top first; makes the base tree when needed.
    fn lowers_of(&self, stage: &Stage) -> Result<Vec<PathBuf>, ImageError> {
        let mut lowers: Vec<PathBuf> = stage
            .diffs
            .iter()
            .rev()
            .map(|k| self.store.build_dir().join("diffs").join(k))
            .collect();
        lowers.push(self.store.base_tree(&stage.base, self.req.uid)?);
        Ok(lowers)
    }

    /// A file in the stage's tree, read through its layers without following a link.
    fn read_stage_file(&self, rel: &str) -> Option<Vec<u8>> {
        let stage = self.stages.last()?;
        let lowers = self.lowers_of(stage).ok()?;
        for dir in lowers {
            let path = dir.join(rel);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_char_device() => return None,
                Ok(_) => return read_in(&path, 1 << 20).ok(),
                Err(_) => {}
            }
        }
        None
    }

    /// `user[:group]` as numbers, by the stage's `/etc/passwd` and `/etc/group`.
    fn resolve_owner(&self, spec: &str) -> Result<(u32, u32), String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
            let text = String::from_utf8(self.read_stage_file(file)?).ok()?;
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name)).then(|| {
                    let id = f.get(2)?.parse().ok()?;
                    let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
                    Some((id, gid))
                })?
            })
        };
        let (uid, primary) = match user.parse::<u32>() {
            Ok(n) => (n, lookup("etc/passwd", user).map(|(_, g)| g).unwrap_or(n)),
            Err(_) => lookup("etc/passwd", user)
                .ok_or_else(|| format!("user {user:?} is not in the image's /etc/passwd; use a number or add the user first"))?,
        };
        let gid = match group {
            None => primary,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => lookup("etc/group", g)
                    .map(|(id, _)| id)
                    .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
            },
        };
        Ok((uid, gid))
    }

    /// A step that changes files: from the cache when its key is known, else run in a
    /// sandbox; its upper directory becomes the stage's next diff and layer.
    #[allow(clippy::too_many_arguments)]
    async fn files_step(
        &mut self,
        place: &Place,
        key: String,
        command: StepCommand,
        env: Option<Vec<(String, String)>>,
        from: Option<Vec<PathBuf>>,
        context: Option<PathBuf>,
        owner: Option<((u32, u32), String)>,
        log: &mut Log,
    ) -> Result<Option<&'static str>, ImageError> {
        let stage_i = self.stages.len() - 1;
        let steps_dir = self.store.build_dir().join("steps");
        let diff_dir = self.store.build_dir().join("diffs").join(&key);
        let record_path = steps_dir.join(format!("{key}.json"));
        let cached: Option<StepRecord> = fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|r: &StepRecord| r.version == STEP_VERSION)
            .filter(|r| {
                r.layer.as_ref().is_none_or(|l| {
                    self.store
                        .blobs_dir()
                        .join(l.digest.trim_start_matches("sha256:"))
                        .is_file()
                })
            });
        // A later step that misses needs this one's diff on disk.
        if let Some(record) = cached.filter(|r| r.layer.is_none() || diff_dir.is_dir()) {
            // Its time says when it was last used: the cache's pruning goes by it.
            touch(&record_path);
            let s = &mut self.stages[stage_i];
            s.key = key.clone();
            if let Some(layer) = record.layer {
                s.diffs.push(key);
                s.layers.push(layer);
            }
            return Ok(Some("CACHED"));
        }
        let stage = self.stages[stage_i].clone();
        let lowers = self.lowers_of(&stage).map_err(|e| build_err(place, e))?;
        let user = match stage.config.user.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => self
                .resolve_owner(u)
                .map_err(|e| build_err(place, format!("USER {u}: {e}")))?,
            None => (0, 0),
        };
        self.scratch_count += 1;
        let dir = self.work.join(format!("step-{}", self.scratch_count));
        let upper = dir.join("diff");
        let work = dir.join("work");
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        rustix::fs::chown(
            &upper,
            Some(rustix::process::Uid::from_raw(self.req.uid)),
            Some(rustix::process::Gid::from_raw(self.req.uid)),
        )
        .map_err(|e| io_err("handing the step's directory to the build")(e.into()))?;
        let mut env = env.unwrap_or_else(|| vec![("PATH".into(), DEFAULT_PATH.into())]);
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push((
                "HOME".into(),
                if user.0 == 0 {
                    "/root".into()
                } else {
                    "/".into()
                },
            ));
        }
        let workdir = stage.config.workdir.clone().unwrap_or_else(|| "/".into());
        let run = StepRun {
            lowers,
            upper: upper.clone(),
            work,
            context,
            from,
            command: command.clone(),
            env,
            // Copies and directories are made as root; the layer records the owner.
            workdir: if matches!(command, StepCommand::Tool(_)) {
                "/".into()
            } else {
                workdir
            },
            user: if matches!(command, StepCommand::Tool(_)) {
                (0, 0)
            } else {
                user
            },
            log: self.req.log.to_owned(),
        };
        let log_before = fs::metadata(self.req.log).map(|m| m.len()).unwrap_or(0);
        let started = std::time::Instant::now();
        let code = self
            .runner
            .run(&run)
            .await
            .map_err(|e| build_err(place, format!("the step could not run: {e}")))?;
        let ran = started.elapsed();
        if code != 0 {
            let tail = tail_lines(self.req.log, log_before, FAILED_TAIL_LINES);
            let what = match &command {
                StepCommand::Exec(argv) => argv.join(" "),
                StepCommand::Tool(argv) => argv.first().cloned().unwrap_or_default(),
            };
            return Err(build_err(
                place,
                format!(
                    "{} failed with exit code {code}; last lines of its output:\n{tail}",
                    step_name(&what)
                ),
            ));
        }
        // A step that changed nothing has no layer; else its diff directory is kept (later
        // steps stack on it) and its layer is written from it while they run.
        let mut changed =
            list_dir(&upper).map_err(io_err(format!("reading {}", upper.display())))?;
        changed.retain(|n| !SANDBOX_NAMES.contains(&n.as_str()));
        log.line(&format!("   ran {:.2}s", ran.as_secs_f64()));
        let s = &mut self.stages[stage_i];
        s.key = key.clone();
        if changed.is_empty() {
            write_step_record(&steps_dir, &key, None)?;
            let _ = fs::remove_dir_all(&dir);
            return Ok(Some("DONE"));
        }
        match fs::rename(&upper, &diff_dir) {
            Ok(()) => {}
            Err(_) if diff_dir.is_dir() => {}
            Err(e) => return Err(io_err(format!("keeping {}", diff_dir.display()))(e)),
        }
        let _ = fs::remove_dir_all(&dir);
        s.diffs.push(key.clone());
        s.layers.push(Layer {
            digest: format!("{PENDING}{key}"),
            size: 0,
        });
        let blobs = self.store.blobs_dir();
        let key2 = key.clone();
        let task = tokio::task::spawn_blocking(move || {
            let layer = diff_to_layer(&diff_dir, &blobs, owner.as_ref())?;
            // Recorded once its layer is there: a build that fails later keeps this step.
            write_step_record(&steps_dir, &key2, layer.clone())?;
            Ok(layer)
        });
        self.pending.push((key, task));
        Ok(Some("DONE"))
    }

    /// Waits for the layers still being written and puts them in place in every stage;
    /// whether there were any.
    async fn finish_layers(&mut self) -> Result<bool, ImageError> {
        let mut done: HashMap<String, Option<Layer>> = HashMap::new();
        let any = !self.pending.is_empty();
        for (key, task) in self.pending.drain(..) {
            let layer = task
                .await
                .map_err(|e| io_err("writing a layer")(io::Error::other(e)))??;
            done.insert(key, layer);
        }
        for stage in &mut self.stages {
            let (mut diffs, mut layers) = (Vec::new(), Vec::new());
            for (key, layer) in stage.diffs.drain(..).zip(stage.layers.drain(..)) {
                let layer = match layer.digest.strip_prefix(PENDING) {
                    Some(k) => match done.get(k) {
                        Some(Some(l)) => l.clone(),
                        // Only what a layer does not hold (sockets): nothing to stack.
                        Some(None) => continue,
                        None => {
                            return Err(unsupported(format!("the layer of step {k} was lost")));
                        }
                    },
                    None => layer,
                };
                diffs.push(key);
                layers.push(layer);
            }
            stage.diffs = diffs;
            stage.layers = layers;
        }
        Ok(any)
    }
}

/// Writes a step's cache record: its layer, or none.
fn write_step_record(steps_dir: &Path, key: &str, layer: Option<Layer>) -> Result<(), ImageError> {
    let record = StepRecord {
        version: STEP_VERSION,
        layer,
    };
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| io_err("recording the step")(io::Error::other(e)))?;
    let tmp = steps_dir.join(temp_name(key));
    fs::write(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
    let record_path = steps_dir.join(format!("{key}.json"));
    fs::rename(&tmp, &record_path).map_err(io_err(format!("writing {}", record_path.display())))
}

fn step_name(what: &str) -> String {
    let short: String = what.chars().take(80).collect();
    if short.len() < what.len() {
        format!("`{short}...`")
    } else {
        format!("`{short}`")
    }
}

/// The last `n` lines of the build's log.
/// The last `n` lines the log got after byte `from` (one step's output).
fn tail_lines(path: &Path, from: u64, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(0).min(text.len());
    let start = text.len().saturating_sub(16 * 1024).max(from);
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(it printed nothing)".into();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A digest of what `srcs` name in the context (after `.dockerignore`): paths, kinds, modes,
/// contents and link targets. Nothing is followed; a source outside the context is refused.
pub fn hash_sources(context: &Path, srcs: &[String], ignore: &Ignore) -> Result<String, String> {
    let mut h = Sha256::new();
    for src in srcs {
        let matches = resolve_sources(context, src, ignore)?;
        if matches.is_empty() {
            return Err(format!(
                "{src} is not in the build context (or .dockerignore leaves it out)"
            ));
        }
        for rel in matches {
            hash_tree(context, &rel, ignore, &mut h).map_err(|e| format!("{rel}: {e}"))?;
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(context: &Path, rel: &str, ignore: &Ignore, h: &mut Sha256) -> io::Result<()> {
    let mut stack = vec![rel.to_owned()];
    while let Some(rel) = stack.pop() {
        if !rel.is_empty() && ignore.excludes(&rel) {
            continue;
        }
        let path = if rel.is_empty() {
            context.to_owned()
        } else {
            context.join(&rel)
        };
        let m = fs::symlink_metadata(&path)?;
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(m.mode().to_le_bytes());
        if m.file_type().is_symlink() {
            h.update(fs::read_link(&path)?.as_os_str().as_bytes());
        } else if m.is_file() {
            h.update(m.len().to_le_bytes());
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc_nofollow())
                .open(&path)?;
            io::copy(&mut f, h)?;
        } else if m.is_dir() {
            let mut names: Vec<String> = fs::read_dir(&path)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                });
            }
        }
    }
    Ok(())
}

/// The paths (relative to `root`) a source of COPY names: a path, or a pattern with `*`, `?`
/// or `[...]` in its components. `..` may not leave the root. Nothing is followed.
pub fn resolve_sources(root: &Path, src: &str, ignore: &Ignore) -> Result<Vec<String>, String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in src.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("{src} points outside the build context"));
                }
            }
            p => parts.push(p),
        }
    }
    let mut found = vec![String::new()];
    for part in parts {
        let pattern = part.contains(['*', '?', '[']);
        let mut next = Vec::new();
        for base in &found {
            let dir = if base.is_empty() {
                root.to_owned()
            } else {
                root.join(base)
            };
            let join = |n: &str| {
                if base.is_empty() {
                    n.to_owned()
                } else {
                    format!("{base}/{n}")
                }
            };
            if pattern {
                let glob = globset::GlobBuilder::new(part)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("{src}: {e}"))?
                    .compile_matcher();
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| glob.is_match(n))
                    .collect();
                names.sort();
                next.extend(names.iter().map(|n| join(n)));
            } else {
                // A link among the parents would lead elsewhere: only real directories.
                let m = fs::symlink_metadata(&dir);
                if base.is_empty() || m.is_ok_and(|m| m.is_dir()) {
                    let candidate = join(part);
                    if fs::symlink_metadata(root.join(&candidate)).is_ok() {
                        next.push(candidate);
                    }
                }
            }
        }
        found = next;
    }
    Ok(found
        .into_iter()
        .filter(|r| r.is_empty() || !ignore.excludes(r))
        .collect())
}

/// Turns an overlay upper directory into an OCI layer (an uncompressed tar in the blob
/// store): whiteouts become `.wh.` files and opaque directories get `.wh..wh..opq`. `owner`
/// gives entries under a path an owner (COPY --chown); everything else is root's. `None` when
/// the step changed nothing.
fn diff_to_layer(
    upper: &Path,
    blobs: &Path,
    owner: Option<&((u32, u32), String)>,
) -> Result<Option<Layer>, ImageError> {
    let tmp = Cleanup::file(blobs.join(temp_name("layer")));
    let file =
        File::create(tmp.path()).map_err(io_err(format!("creating {}", tmp.path().display())))?;
    let mut hashing = HashingWriter {
        inner: io::BufWriter::new(file),
        hash: Sha256::new(),
        size: 0,
    };
    let mut entries = 0u64;
    {
        let mut tar = tar::Builder::new(&mut hashing);
        tar.mode(tar::HeaderMode::Complete);
        let mut links: HashMap<(u64, u64), String> = HashMap::new();
        let mut stack: Vec<String> = Vec::new();
        let mut top: Vec<String> =
            list_dir(upper).map_err(io_err(format!("reading {}", upper.display())))?;
        top.retain(|n| !SANDBOX_NAMES.contains(&n.as_str()));
        stack.extend(top.into_iter().rev());
        while let Some(rel) = stack.pop() {
            let path = upper.join(&rel);
            let m = fs::symlink_metadata(&path)
                .map_err(io_err(format!("reading {}", path.display())))?;
            let ft = m.file_type();
            let (uid, gid) = match owner {
                Some(((u, g), dest)) if is_under(&format!("/{rel}"), dest) => (*u, *g),
                _ => (0, 0),
            };
            let mut header = tar::Header::new_gnu();
            header.set_uid(u64::from(uid));
            header.set_gid(u64::from(gid));
            header.set_mtime(m.mtime().max(0) as u64);
            header.set_mode(m.mode() & 0o7777);
            if ft.is_char_device() && m.rdev() == 0 {
                // An overlay whiteout: the lower entry is gone.
                let (parent, name) = split_rel(&rel);
                let wh = join_rel(parent, &format!("{WHITEOUT_PREFIX}{name}"));
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(0);
                header.set_mode(0o644);
                tar.append_data(&mut header, &wh, io::empty())
                    .map_err(io_err("writing the layer"))?;
                entries += 1;
                continue;
            }
            if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, format!("{rel}/"), io::empty())
                    .map_err(io_err("writing the layer"))?;
                entries += 1;
                if is_opaque(&path) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(0);
                    h.set_mode(0o644);
                    tar.append_data(&mut h, format!("{rel}/{OPAQUE_MARKER}"), io::empty())
                        .map_err(io_err("writing the layer"))?;
                }
                let names =
                    list_dir(&path).map_err(io_err(format!("reading {}", path.display())))?;
                stack.extend(names.into_iter().rev().map(|n| format!("{rel}/{n}")));
            } else if ft.is_symlink() {
                let target =
                    fs::read_link(&path).map_err(io_err(format!("reading {}", path.display())))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &rel, &target)
                    .map_err(io_err("writing the layer"))?;
                entries += 1;
            } else if ft.is_file() {
                if m.nlink() > 1 {
                    if let Some(first) = links.get(&(m.dev(), m.ino())) {
                        header.set_entry_type(tar::EntryType::Link);
                        header.set_size(0);
                        tar.append_link(&mut header, &rel, first)
                            .map_err(io_err("writing the layer"))?;
                        entries += 1;
                        continue;
                    }
                    links.insert((m.dev(), m.ino()), rel.clone());
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(m.len());
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc_nofollow())
                    .open(&path)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                tar.append_data(&mut header, &rel, f)
                    .map_err(io_err("writing the layer"))?;
                entries += 1;
            } else if ft.is_fifo() {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_size(0);
                tar.append_data(&mut header, &rel, io::empty())
                    .map_err(io_err("writing the layer"))?;
                entries += 1;
            }
            // Sockets and devices are not image content.
        }
        tar.finish().map_err(io_err("writing the layer"))?;
    }
    hashing.inner.flush().map_err(io_err("writing the layer"))?;
    if entries == 0 {
        return Ok(None);
    }
    let hex = hex::encode(hashing.hash.finalize());
    let dest = blobs.join(&hex);
    fs::rename(tmp.path(), &dest).map_err(io_err(format!("writing {}", dest.display())))?;
    tmp.disarm();
    Ok(Some(Layer {
        digest: format!("sha256:{hex}"),
        size: hashing.size,
    }))
}

/// Applies a step's diff directory (an overlay upper directory) to the image tree `dst` as
/// its layer would be: whiteouts remove, opaque directories replace, files are hard-linked
/// (the tree is never written in place). Nothing in `dst` is followed: every name is looked
/// at without following a link, and a directory is entered only when it is one.
pub(super) fn link_diff(diff: &Path, dst: &Path) -> io::Result<()> {
    fn remove_any(p: &Path) -> io::Result<()> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p),
            Ok(_) => fs::remove_file(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
    let mut stack = vec![(diff.to_owned(), dst.to_owned(), true)];
    while let Some((from, to, top)) = stack.pop() {
        for name in list_dir(&from)? {
            if top && SANDBOX_NAMES.contains(&name.as_str()) {
                continue;
            }
            let (path, target) = (from.join(&name), to.join(&name));
            let m = fs::symlink_metadata(&path)?;
            let ft = m.file_type();
            let mode = m.mode() & 0o7777;
            if ft.is_char_device() && m.rdev() == 0 {
                remove_any(&target)?;
            } else if ft.is_dir() {
                match fs::symlink_metadata(&target) {
                    Ok(t) if t.is_dir() => {
                        if is_opaque(&path) {
                            for inner in list_dir(&target)? {
                                remove_any(&target.join(inner))?;
                            }
                        }
                    }
                    _ => {
                        remove_any(&target)?;
                        fs::create_dir(&target)?;
                    }
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                stack.push((path, target, false));
            } else if ft.is_symlink() {
                remove_any(&target)?;
                std::os::unix::fs::symlink(fs::read_link(&path)?, &target)?;
            } else if ft.is_file() {
                remove_any(&target)?;
                fs::hard_link(&path, &target)?;
            } else if ft.is_fifo() {
                remove_any(&target)?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(mode),
                    0,
                )?;
            }
            // Sockets and devices are not image content (as in the layer).
        }
    }
    Ok(())
}

fn is_under(path: &str, dest: &str) -> bool {
    let dest = dest.trim_end_matches('/');
    path == dest || path.starts_with(&format!("{dest}/")) || dest.is_empty()
}

fn split_rel(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    }
}

fn join_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether overlayfs marked the directory opaque (its lower contents hidden).
fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    ["trusted.overlay.opaque", "user.overlay.opaque"].iter().any(|name| {
        matches!(rustix::fs::lgetxattr(dir, *name, &mut buf), Ok(n) if n >= 1 && buf[0] == b'y')
    })
}

struct HashingWriter<W: io::Write> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

use std::os::unix::fs::FileTypeExt as _;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sources_never_leave_the_context_and_patterns_match_names() {
        let ctx = tempfile::tempdir().unwrap();
        fs::create_dir_all(ctx.path().join("src/sub")).unwrap();
        fs::write(ctx.path().join("src/a.rs"), "a").unwrap();
        fs::write(ctx.path().join("src/b.txt"), "b").unwrap();
        fs::write(ctx.path().join("debug.log"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", ctx.path().join("link")).unwrap();
        let none = Ignore::default();
        assert_eq!(
            resolve_sources(ctx.path(), "src/*.rs", &none).unwrap(),
            vec!["src/a.rs"]
        );
        assert!(resolve_sources(ctx.path(), "../x", &none).is_err());
        assert_eq!(
            resolve_sources(ctx.path(), "src/../debug.log", &none).unwrap(),
            vec!["debug.log"]
        );
        // A path through a link is not followed out of the context.
        assert!(
            resolve_sources(ctx.path(), "link/passwd", &none)
                .unwrap()
                .is_empty()
        );
        let ignore = Ignore::parse("*.log\n").unwrap();
        assert!(
            resolve_sources(ctx.path(), "debug.log", &ignore)
                .unwrap()
                .is_empty()
        );
        // The content decides the hash; an ignored file does not.
        let h1 = hash_sources(ctx.path(), &[".".into()], &ignore).unwrap();
        fs::write(ctx.path().join("debug.log"), "changed").unwrap();
        assert_eq!(
            h1,
            hash_sources(ctx.path(), &[".".into()], &ignore).unwrap()
        );
        fs::write(ctx.path().join("src/a.rs"), "changed").unwrap();
        assert_ne!(
            h1,
            hash_sources(ctx.path(), &[".".into()], &ignore).unwrap()
        );
    }

    #[test]
    fn a_diff_applies_as_its_layer_would_without_following_the_trees_links() {
        let dir = tempfile::tempdir().unwrap();
        let (image, diff, outside) = (
            dir.path().join("image"),
            dir.path().join("diff"),
            dir.path().join("outside"),
        );
        for d in [
            "image/etc",
            "image/gone",
            "image/opaque/old",
            "outside",
            "diff/opaque",
            "diff/etc",
            "diff/link/inner",
        ] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fs::write(image.join("etc/motd"), "old").unwrap();
        fs::write(image.join("etc/kept"), "kept").unwrap();
        fs::write(image.join("opaque/old/f"), "old").unwrap();
        // The image has a link where the diff has a directory: replaced, never followed.
        std::os::unix::fs::symlink(&outside, image.join("link")).unwrap();
        fs::write(diff.join("link/inner/new"), "new").unwrap();
        fs::write(diff.join("etc/motd"), "new").unwrap();
        fs::write(diff.join("opaque/f"), "fresh").unwrap();
        rustix::fs::lsetxattr(
            diff.join("opaque"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        // Whiteouts are character devices 0/0 (made as root, as the cell runs).
        rustix::fs::mknodat(
            rustix::fs::CWD,
            diff.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
        link_diff(&diff, &image).unwrap();
        let read = |p: &str| fs::read_to_string(image.join(p)).unwrap();
        assert_eq!(
            (read("etc/motd"), read("etc/kept")),
            ("new".into(), "kept".into())
        );
        assert!(!image.join("gone").exists());
        assert_eq!(list_dir(&image.join("opaque")).unwrap(), ["f"]);
        assert!(fs::symlink_metadata(image.join("link")).unwrap().is_dir());
        assert_eq!(read("link/inner/new"), "new");
        assert!(
            list_dir(&outside).unwrap().is_empty(),
            "followed the image's link"
        );
        // Linked, not copied; the diff is unchanged.
        assert_eq!(
            fs::metadata(image.join("etc/motd")).unwrap().ino(),
            fs::metadata(diff.join("etc/motd")).unwrap().ino()
        );
        assert!(
            fs::symlink_metadata(diff.join("gone"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    #[test]
    fn pruning_removes_only_what_no_build_used_for_the_time_kept() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::new(root.path().to_owned());
        let build = store.build_dir();
        let month_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
        let make = |key: &str, when: SystemTime| {
            fs::create_dir_all(build.join("diffs").join(key).join("usr")).unwrap();
            fs::create_dir_all(build.join("steps")).unwrap();
            let record = build.join("steps").join(format!("{key}.json"));
            fs::write(&record, "{}").unwrap();
            File::open(&record).unwrap().set_modified(when).unwrap();
        };
        let (stale, fresh) = ("a".repeat(64), "b".repeat(64));
        make(&stale, month_ago);
        make(&fresh, SystemTime::now());
        fs::create_dir_all(build.join("bases/old-base")).unwrap();
        File::open(build.join("bases/old-base"))
            .unwrap()
            .set_modified(month_ago)
            .unwrap();
        fs::create_dir_all(build.join("bases/used-base")).unwrap();
        let p = store
            .prune_build_cache(Duration::from_secs(14 * 24 * 3600))
            .unwrap();
        assert_eq!(p, Pruned { steps: 1, trees: 1 });
        assert!(!build.join("diffs").join(&stale).exists());
        assert!(!build.join("steps").join(format!("{stale}.json")).exists());
        assert!(build.join("diffs").join(&fresh).is_dir());
        assert!(build.join("bases/used-base").is_dir() && !build.join("bases/old-base").exists());
        // A step used now is kept by the next pruning too.
        touch(&build.join("steps").join(format!("{fresh}.json")));
        assert_eq!(
            store.prune_build_cache(Duration::from_secs(3600)).unwrap(),
            Pruned::default()
        );
    }
}
