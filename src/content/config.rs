//! The workspace configuration a repository carries: `.gitpod.yml`, or else a
//! `devcontainer.json`, read into one [`WorkspaceConfig`]. This module only reads and checks
//! the file; running the tasks and forwarding the ports happen elsewhere.
//!
//! Errors point at the file, line and column, because users fix them in an editor.

use std::fmt;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Configuration files are small; a bigger one is a mistake or an attack on the parser.
const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Most ports a `from-to` range may expand to.
const MAX_PORT_RANGE: u32 = 100;

/// Files tried in order; the first one present is used.
const GITPOD_FILES: [&str; 2] = [".gitpod.yml", ".gitpod.yaml"];
const DEVCONTAINER_FILES: [&str; 2] = [".devcontainer/devcontainer.json", ".devcontainer.json"];

/// What a repository asks of its workspace.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkspaceConfig {
    /// The file this came from, relative to the repository: `.gitpod.yml`,
    /// `.devcontainer/devcontainer.json`, ...; `None` when the repository has none.
    pub source: Option<String>,
    /// An image reference, or `file:PATH` for a Dockerfile in the repository.
    pub image: Option<String>,
    /// How to build the image when it is a Dockerfile.
    #[serde(default)]
    pub build: Option<ImageBuild>,
    /// devcontainer features to install on the image, as written.
    #[serde(default)]
    pub features: Vec<crate::content::image::FeatureRef>,
    /// The folder `./name` features are relative to (the devcontainer.json's), in the
    /// repository.
    #[serde(default)]
    pub features_root: String,
    pub tasks: Vec<Task>,
    pub ports: Vec<Port>,
    /// Environment for every process in the workspace, in file order.
    pub env: Vec<(String, String)>,
    /// Where terminals and tasks start, relative to `/workspace` (Gitpod's
    /// `workspaceLocation`; a `.code-workspace` file's folder).
    #[serde(default)]
    pub workspace_location: Option<String>,
    /// More repositories to clone beside the first (Gitpod's `additionalRepositories`): URL
    /// and the folder under `/workspace`.
    #[serde(default)]
    pub additional_repos: Vec<(String, Option<String>)>,
    /// A compose-based devcontainer: where the compose files are and which service is the
    /// workspace.
    #[serde(default)]
    pub compose: Option<ComposeRef>,
    /// The compose services that run beside the workspace, in start order.
    #[serde(default)]
    pub services: Vec<ComposeService>,
    /// Keys of the file that devcell does not honour (`vscode`, `tasks.openMode`), to be said
    /// once when the workspace starts, never silently dropped.
    #[serde(default)]
    pub ignored: Vec<String>,
    /// The folder under `/workspace` the first repository is checked out into (Gitpod's
    /// `checkoutLocation`; one folder name), instead of its own name.
    #[serde(default)]
    pub checkout_location: Option<String>,
    /// Who the workspace's processes run as: one of the image's users, by name or `uid[:gid]`
    /// (devcontainer `remoteUser`, else `containerUser`).
    #[serde(default)]
    pub user: Option<String>,
    /// Where the repository is expected inside the workspace, as written (devcontainer
    /// `workspaceMount`'s target; `/workspaces/${localWorkspaceFolderBasename}` when a
    /// devcontainer.json says nothing).
    #[serde(default)]
    pub repository_at: Option<String>,
    /// Where terminals and tasks start, as written (devcontainer `workspaceFolder`).
    #[serde(default)]
    pub folder: Option<String>,
}

/// Where a workspace's first repository is seen and where its terminals start: what
/// [`WorkspaceConfig::placement`] makes of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// A link the sandbox makes in its own root: (path, target).
    pub link: Option<(String, String)>,
    /// Where terminals and tasks start.
    pub workdir: String,
    /// What is placed otherwise than the file asks, said with the keys not honoured.
    pub notes: Vec<String>,
}

/// Where a devcontainer's repository is when its file says nothing: the specification's.
const DEFAULT_MOUNT: &str = "/workspaces/${localWorkspaceFolderBasename}";
/// The folder every workspace's repositories are in, inside its sandbox.
const WORKSPACE_ROOT: &str = "/workspace";
/// Top-level names a sandbox's root keeps for itself.
const SANDBOX_NAMES: &[&str] = &["proc", "dev", "sys", "tmp", "run", "home", ".devcell"];

impl WorkspaceConfig {
    /// Where the first repository (the folder `repo` under `/workspace`; `None` without one)
    /// is seen and where terminals start. `taken(name)` says whether the sandbox's root
    /// already has the top-level `name` (an image's folder), where no link can be made.
    pub fn placement(&self, repo: Option<&str>, taken: impl Fn(&str) -> bool) -> Placement {
        let mut notes = Vec::new();
        let Some(repo) = repo else {
            let workdir = match &self.workspace_location {
                Some(loc) => format!("{WORKSPACE_ROOT}/{loc}"),
                None => WORKSPACE_ROOT.into(),
            };
            return Placement {
                link: None,
                workdir,
                notes,
            };
        };
        let repo_dir = format!("{WORKSPACE_ROOT}/{repo}");
        let expand = |s: &str| -> Option<String> {
            let s = s
                .replace("${localWorkspaceFolderBasename}", repo)
                .replace("${containerWorkspaceFolderBasename}", repo);
            let clean = normalize(Path::new(s.strip_prefix('/')?))?;
            Some(format!("/{}", clean.to_string_lossy()))
        };
        let under = |path: &str, dir: &str| -> Option<String> {
            if path == dir {
                Some(String::new())
            } else if dir == "/" {
                Some(path.to_owned())
            } else {
                path.strip_prefix(dir)
                    .filter(|rest| rest.starts_with('/'))
                    .map(str::to_owned)
            }
        };
        // Where the file expects the repository, and where it is.
        let requested = self.repository_at.as_deref().and_then(expand);
        let mut link = None;
        let at = match &requested {
            None => repo_dir.clone(),
            Some(want) if *want == repo_dir => repo_dir.clone(),
            Some(want) => {
                let first = want.trim_start_matches('/').split('/').next().unwrap_or("");
                let free = !first.is_empty()
                    && first != WORKSPACE_ROOT.trim_start_matches('/')
                    && !SANDBOX_NAMES.contains(&first)
                    && !taken(first);
                if free {
                    link = Some((want.clone(), repo_dir.clone()));
                    want.clone()
                } else {
                    let why = if under(want, WORKSPACE_ROOT).is_some() {
                        "holds the workspace's repositories"
                    } else {
                        "is a folder of the image or the sandbox"
                    };
                    let asked = self.repository_at.as_deref() != Some(DEFAULT_MOUNT);
                    notes.extend(asked.then(|| {
                        format!("the repository is at {repo_dir}, not {want}: {want} {why}")
                    }));
                    repo_dir.clone()
                }
            }
        };
        let workdir = if let Some(loc) = &self.workspace_location {
            format!("{WORKSPACE_ROOT}/{loc}")
        } else {
            match self.folder.as_deref() {
                None => at.clone(),
                Some(raw) => match expand(raw) {
                    Some(f) => match (
                        requested.as_deref().and_then(|r| under(&f, r)),
                        under(&f, &at),
                        under(&f, WORKSPACE_ROOT),
                    ) {
                        (Some(rest), _, _) => format!("{at}{rest}"),
                        (None, Some(_), _) | (None, None, Some(_)) => f,
                        (None, None, None) => {
                            notes.push(format!(
                                "workspaceFolder {f}: terminals start in {at}, where the repository is"
                            ));
                            at.clone()
                        }
                    },
                    None => {
                        notes.push(format!(
                            "workspaceFolder {raw:?} is not an absolute path: terminals start in {at}"
                        ));
                        at.clone()
                    }
                },
            }
        };
        Placement {
            link,
            workdir,
            notes,
        }
    }
}

/// `dockerComposeFile`, `service` and `runServices` of a devcontainer.json.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ComposeRef {
    /// Relative to the repository.
    pub files: Vec<String>,
    pub service: String,
    pub run_services: Option<Vec<String>>,
}

/// A compose service that runs beside the workspace.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ComposeService {
    pub name: String,
    pub image: Option<String>,
    pub build: Option<ImageBuild>,
    pub environment: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    /// Named volumes: (volume, path in the service).
    pub volumes: Vec<(String, String)>,
    pub depends_on: Vec<String>,
    pub working_dir: Option<String>,
    /// Where a bind of the repository's own folder (`..:/workspaces/app`) puts it: honoured
    /// for the workspace's service, whose repository it is.
    #[serde(default)]
    pub repository_at: Option<String>,
}

/// A Dockerfile build: paths relative to the repository, never leaving it.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageBuild {
    pub dockerfile: String,
    /// The context directory (`""` for the repository's root).
    pub context: String,
    pub args: Vec<(String, String)>,
    pub target: Option<String>,
}

/// A terminal running commands: `before` and `init` once when the workspace is created
/// (`before` again on every start), then `command`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub before: Option<String>,
    pub init: Option<String>,
    pub command: Option<String>,
    pub env: Vec<(String, String)>,
}

/// A port the workspace serves.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    pub name: Option<String>,
    /// `"private"` or `"public"`, as written in the file.
    pub visibility: Option<String>,
    /// What to do when the port opens (Gitpod's `onOpen`), as written in the file.
    pub on_open: Option<String>,
}

/// A configuration file that cannot be used, and where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", Place(.file, .line, .column))]
pub struct ConfigFileError {
    /// Relative to the repository, e.g. `.gitpod.yml`.
    pub file: String,
    /// One-based.
    pub line: Option<usize>,
    /// One-based.
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigFileError {
    /// A stable, machine-readable code for APIs.
    pub fn code(&self) -> &'static str {
        "workspace_config_invalid"
    }

    fn whole_file(file: &str, message: impl Into<String>) -> ConfigFileError {
        ConfigFileError {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

/// `file:line:column`, leaving out what is unknown.
struct Place<'a>(&'a str, &'a Option<usize>, &'a Option<usize>);

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)?;
        if let Some(line) = self.1 {
            write!(f, ":{line}")?;
            if let Some(column) = self.2 {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Reads the workspace configuration of the repository at `repo_dir`. `.gitpod.yml` wins
/// over `devcontainer.json`; a repository with neither gets the default configuration.
pub fn load(repo_dir: &Path) -> Result<WorkspaceConfig, ConfigFileError> {
    for file in GITPOD_FILES {
        if let Some(text) = read_config_file(repo_dir, file)? {
            return parse_gitpod(file, &text);
        }
    }
    for file in DEVCONTAINER_FILES {
        if let Some(text) = read_config_file(repo_dir, file)? {
            let mut config = parse_devcontainer(file, &text)?;
            if let Some(compose) = config.compose.clone() {
                apply_compose(repo_dir, &compose, &mut config)?;
            }
            return Ok(config);
        }
    }
    Ok(WorkspaceConfig::default())
}

/// Reads `repo_dir/file`, or `None` if it does not exist.
///
/// The repository is the user's, so the file may be a link to anywhere on the host (or a fifo
/// that would block the cell): it is opened beneath the repository's directory (see
/// [`crate::beneath`]), following links only while they stay inside, and read only when it
/// is a regular file of at most `MAX_FILE_BYTES`.
fn read_config_file(repo_dir: &Path, file: &str) -> Result<Option<String>, ConfigFileError> {
    let err = |m: String| ConfigFileError::whole_file(file, m);
    let dir = crate::beneath::Dir::open(repo_dir)
        .map_err(|e| err(format!("the repository cannot be read: {e}")))?;
    let bytes = match dir.read_file(Path::new(file), MAX_FILE_BYTES, true) {
        Ok(Some(b)) => b,
        Ok(None) => {
            // A link whose target is missing is worth saying so; an absent file is not.
            return match std::fs::symlink_metadata(repo_dir.join(file)) {
                Ok(m) if m.file_type().is_symlink() => Err(err(
                    "is a link to a file that does not exist; commit the file itself".into(),
                )),
                _ => Ok(None),
            };
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            return Err(err(
                "is a link to a file outside the repository; commit the file itself".into(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(err("is not a regular file".into()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            return Err(err(format!(
                "is larger than {} KiB; keep the configuration short",
                MAX_FILE_BYTES / 1024
            )));
        }
        Err(e) => return Err(err(format!("cannot be read: {e}"))),
    };
    let text =
        String::from_utf8(bytes).map_err(|_| err("is not UTF-8 text; save it as UTF-8".into()))?;
    // Editors on Windows like to start files with a byte order mark.
    Ok(Some(text.trim_start_matches('\u{feff}').to_owned()))
}

// ---- .gitpod.yml ----

#[derive(Deserialize)]
struct GitpodFile {
    #[serde(default)]
    image: Option<Image>,
    #[serde(default)]
    tasks: Option<Vec<GitpodTask>>,
    #[serde(default)]
    ports: Option<Vec<GitpodPort>>,
    #[serde(default, rename = "workspaceLocation")]
    workspace_location: Option<String>,
    #[serde(default, rename = "additionalRepositories")]
    additional_repositories: Option<Vec<AdditionalRepository>>,
    #[serde(default, rename = "checkoutLocation")]
    checkout_location: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdditionalRepository {
    url: String,
    #[serde(default)]
    checkout_location: Option<String>,
}

#[derive(Deserialize)]
struct GitpodTask {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    init: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    env: Option<Env>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GitpodPort {
    port: PortSpec,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    visibility: Option<String>,
    #[serde(default)]
    on_open: Option<String>,
}

/// Parses the text of a `.gitpod.yml`; `file` names it in errors.
pub fn parse_gitpod(file: &str, text: &str) -> Result<WorkspaceConfig, ConfigFileError> {
    // An empty file (or one with only comments) is a valid, empty configuration.
    let parsed: Option<GitpodFile> =
        serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, &e))?;
    let ignored = match serde_yaml_ng::from_str::<serde_json::Value>(text) {
        Ok(v) => not_honoured(&v, GITPOD_KEYS),
        Err(_) => Vec::new(),
    };
    let parsed = parsed.unwrap_or(GitpodFile {
        image: None,
        tasks: None,
        ports: None,
        workspace_location: None,
        additional_repositories: None,
        checkout_location: None,
    });
    // Folders under /workspace: never above it.
    let under_workspace = |what: &str, p: &str| -> Result<String, ConfigFileError> {
        let clean = normalize(Path::new(p.trim_start_matches('/')))
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                ConfigFileError::whole_file(
                    file,
                    format!("{what} {p:?} is not a folder under /workspace"),
                )
            })?;
        Ok(clean.to_string_lossy().into_owned())
    };
    let workspace_location = match &parsed.workspace_location {
        Some(l) => {
            let folder = if l.ends_with(".code-workspace") {
                Path::new(l)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                l.clone()
            };
            (!folder.is_empty() && folder != ".")
                .then(|| under_workspace("workspaceLocation", &folder))
                .transpose()?
        }
        None => None,
    };
    let checkout_location = parsed
        .checkout_location
        .as_deref()
        .map(|c| under_workspace("checkoutLocation", c))
        .transpose()?;
    if checkout_location
        .as_deref()
        .is_some_and(|c| c.contains('/'))
    {
        return Err(ConfigFileError::whole_file(
            file,
            "checkoutLocation must be one folder name",
        ));
    }
    let mut additional_repos = Vec::new();
    for r in parsed.additional_repositories.iter().flatten() {
        let at = r
            .checkout_location
            .as_deref()
            .map(|c| under_workspace("additionalRepositories.checkoutLocation", c))
            .transpose()?;
        if at.as_deref().is_some_and(|a| a.contains('/')) {
            return Err(ConfigFileError::whole_file(
                file,
                "additionalRepositories.checkoutLocation must be one folder name",
            ));
        }
        additional_repos.push((r.url.clone(), at));
    }
    let tasks = parsed
        .tasks
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| Task {
            name: t
                .name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| format!("task {}", i + 1)),
            before: t.before,
            init: t.init,
            command: t.command,
            env: t.env.map(|e| e.0).unwrap_or_default(),
        })
        .collect();
    let mut ports = Vec::new();
    for p in parsed.ports.unwrap_or_default() {
        for port in p.port.from..=p.port.to {
            ports.push(Port {
                port,
                name: p.name.clone(),
                visibility: p.visibility.clone(),
                on_open: p.on_open.clone(),
            });
        }
    }
    let build = match &parsed.image {
        Some(Image(image, context)) if image.starts_with("file:") => {
            let inside = |what: &str, p: &str| {
                normalize(Path::new(p))
                    .map(|p| p.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        ConfigFileError::whole_file(
                            file,
                            format!("image.{what} points outside the repository"),
                        )
                    })
            };
            Some(ImageBuild {
                dockerfile: inside("file", &image["file:".len()..])?,
                context: inside("context", context.as_deref().unwrap_or("."))?,
                args: Vec::new(),
                target: None,
            })
        }
        _ => None,
    };
    Ok(WorkspaceConfig {
        source: Some(file.to_owned()),
        image: parsed.image.map(|i| i.0),
        build,
        workspace_location,
        additional_repos,
        compose: None,
        services: Vec::new(),
        features: Vec::new(),
        features_root: String::new(),
        tasks,
        ports,
        env: Vec::new(),
        ignored,
        checkout_location,
        user: None,
        repository_at: None,
        folder: None,
    })
}

fn yaml_error(file: &str, e: &serde_yaml_ng::Error) -> ConfigFileError {
    let location = e.location();
    let mut message = e.to_string();
    if let Some(l) = &location {
        // The position goes in front, in the form editors understand; drop its repetition.
        message = message.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        );
    }
    ConfigFileError {
        file: file.to_owned(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message,
    }
}

/// Gitpod's `image`: a name, or `{file: PATH, context: DIR}` for a Dockerfile, kept as
/// `file:PATH`.
struct Image(String, Option<String>);

impl<'de> Deserialize<'de> for Image {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Image;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an image name or a map with `file`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Image, E> {
                Ok(Image(v.to_owned(), None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Image, A::Error> {
                let mut file = None;
                let mut context = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "file" {
                        file = Some(map.next_value::<String>()?);
                    } else if key == "context" {
                        context = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                let file = file.ok_or_else(|| de::Error::missing_field("file"))?;
                Ok(Image(format!("file:{file}"), context))
            }
        }
        d.deserialize_any(V)
    }
}

/// A port number, or a `from-to` range.
struct PortSpec {
    from: u16,
    to: u16,
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a range like 3000-3005")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                let port = port_number(v)?;
                Ok(PortSpec {
                    from: port,
                    to: port,
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom(bad_port(v)))?)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<u64>()
                        .map_err(|_| {
                            E::custom(format!(
                                "{v:?} is not a port number or a range like 3000-3005"
                            ))
                        })
                        .and_then(port_number)
                };
                let (from, to) = match v.split_once('-') {
                    Some((a, b)) => (parse(a)?, parse(b)?),
                    None => {
                        let p = parse(v)?;
                        (p, p)
                    }
                };
                if from > to {
                    return Err(E::custom(format!(
                        "the port range {v} is backwards; write the lower port first"
                    )));
                }
                if u32::from(to - from) + 1 > MAX_PORT_RANGE {
                    return Err(E::custom(format!(
                        "the port range {v} has {} ports; at most {MAX_PORT_RANGE} are allowed",
                        u32::from(to - from) + 1
                    )));
                }
                Ok(PortSpec { from, to })
            }
        }
        d.deserialize_any(V)
    }
}

fn port_number<E: de::Error>(v: u64) -> Result<u16, E> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(E::custom(bad_port(v))),
    }
}

fn bad_port(v: impl fmt::Display) -> String {
    format!("{v} is not a port number; use 1 to 65535")
}

/// An environment map in file order. Values may be written as numbers or booleans; they
/// become their text. Null values (devcontainer's way to unset a variable) are left out.
struct Env(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Env;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of variable names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Env, A::Error> {
                let mut vars = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if let Some(EnvValue(value)) = map.next_value::<Option<EnvValue>>()? {
                        vars.push((key, value));
                    }
                }
                Ok(Env(vars))
            }
        }
        d.deserialize_map(V)
    }
}

struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---- devcontainer.json ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DevcontainerFile {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    build: Option<DevcontainerBuild>,
    /// The older spelling of `build.dockerfile`.
    #[serde(default)]
    docker_file: Option<String>,
    #[serde(default)]
    post_create_command: Option<Commands>,
    #[serde(default)]
    on_create_command: Option<Commands>,
    #[serde(default)]
    update_content_command: Option<Commands>,
    #[serde(default)]
    post_attach_command: Option<Commands>,
    /// The older spelling of `build.context`, beside `dockerFile`.
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    ports_attributes: Option<std::collections::BTreeMap<String, PortAttributes>>,
    #[serde(default)]
    features: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    docker_compose_file: Option<serde_json::Value>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    run_services: Option<Vec<String>>,
    #[serde(default)]
    post_start_command: Option<Commands>,
    #[serde(default)]
    forward_ports: Option<Vec<ForwardPort>>,
    #[serde(default)]
    container_env: Option<Env>,
    #[serde(default)]
    remote_env: Option<Env>,
    #[serde(default)]
    remote_user: Option<String>,
    #[serde(default)]
    container_user: Option<String>,
    #[serde(default)]
    workspace_folder: Option<String>,
    #[serde(default)]
    workspace_mount: Option<String>,
}

/// A `portsAttributes` entry: what the dashboard calls the port and what opening it does.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortAttributes {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    on_auto_forward: Option<String>,
}

#[derive(Deserialize)]
struct DevcontainerBuild {
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    args: Option<Env>,
    #[serde(default)]
    target: Option<String>,
}

/// A lifecycle command in any of its three forms: a shell string, an argument array, or
/// named commands (which the devcontainer specification runs in parallel).
enum Commands {
    Single(String),
    Named(Vec<(String, String)>),
}

impl<'de> Deserialize<'de> for Commands {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Commands;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command string, an array of arguments, or a map of named commands")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Commands, E> {
                Ok(Commands::Single(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Commands, A::Error> {
                Ok(Commands::Single(join_args(seq)?))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Commands, A::Error> {
                let mut named = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let CommandLine(cmd) = map.next_value()?;
                    named.push((name, cmd));
                }
                Ok(Commands::Named(named))
            }
        }
        d.deserialize_any(V)
    }
}

/// One named command: a shell string or an argument array.
struct CommandLine(String);

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandLine;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command string or an array of arguments")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandLine, E> {
                Ok(CommandLine(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<CommandLine, A::Error> {
                Ok(CommandLine(join_args(seq)?))
            }
        }
        d.deserialize_any(V)
    }
}

/// An argument array as one shell command line, each argument quoted where needed.
fn join_args<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<String, A::Error> {
    let mut words = Vec::new();
    while let Some(arg) = seq.next_element::<String>()? {
        words.push(shell_quote(&arg));
    }
    Ok(words.join(" "))
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A `forwardPorts` entry: a port number, or `"host:port"` for a port of another container.
struct ForwardPort(u16);

impl<'de> Deserialize<'de> for ForwardPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ForwardPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or \"host:port\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ForwardPort, E> {
                port_number(v).map(ForwardPort)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ForwardPort, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom(bad_port(v)))?)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ForwardPort, E> {
                let port = v.rsplit(':').next().unwrap_or(v);
                let n = port
                    .parse::<u64>()
                    .map_err(|_| E::custom(format!("{v:?} is not a port or \"host:port\"")))?;
                port_number(n).map(ForwardPort)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses the text of a `devcontainer.json` (JSON with comments and trailing commas);
/// `file` names it in errors and places a Dockerfile relative to it.
pub fn parse_devcontainer(file: &str, text: &str) -> Result<WorkspaceConfig, ConfigFileError> {
    let mut json = String::with_capacity(text.len());
    // Comments become spaces, so line and column numbers still point into the original.
    json_comments::StripComments::new(text.as_bytes())
        .read_to_string(&mut json)
        .map_err(|e| ConfigFileError::whole_file(file, format!("cannot be read: {e}")))?;
    let json = blank_trailing_commas(&json);
    let parsed: DevcontainerFile = serde_json::from_str(&json).map_err(|e| {
        let mut message = e.to_string();
        message = message.replacen(
            &format!(" at line {} column {}", e.line(), e.column()),
            "",
            1,
        );
        ConfigFileError {
            file: file.to_owned(),
            line: (e.line() > 0).then_some(e.line()),
            column: (e.line() > 0).then_some(e.column().max(1)),
            message,
        }
    })?;

    let (dockerfile, context, args, target) = match parsed.build {
        Some(b) => (b.dockerfile, b.context, b.args, b.target),
        None => (None, None, None, None),
    };
    let dockerfile = dockerfile.or(parsed.docker_file);
    let context = context.or(parsed.context);
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut build = None;
    let image = match (parsed.image, dockerfile) {
        (Some(image), _) => Some(image),
        (None, Some(dockerfile)) => {
            let path = normalize(&base.join(dockerfile)).ok_or_else(|| {
                ConfigFileError::whole_file(file, "build.dockerfile points outside the repository")
            })?;
            let context =
                normalize(&base.join(context.as_deref().unwrap_or("."))).ok_or_else(|| {
                    ConfigFileError::whole_file(file, "build.context points outside the repository")
                })?;
            build = Some(ImageBuild {
                dockerfile: path.to_string_lossy().into_owned(),
                context: context.to_string_lossy().into_owned(),
                args: args.map(|a| a.0).unwrap_or_default(),
                target,
            });
            Some(format!("file:{}", path.display()))
        }
        (None, None) => None,
    };

    let ignored = match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(v) => not_honoured(&v, DEVCONTAINER_KEYS),
        Err(_) => Vec::new(),
    };
    let mut env = parsed.container_env.map(|e| e.0).unwrap_or_default();
    env.extend(parsed.remote_env.map(|e| e.0).unwrap_or_default());

    let attributes = parsed.ports_attributes.unwrap_or_default();
    let ports = parsed
        .forward_ports
        .unwrap_or_default()
        .into_iter()
        .map(|ForwardPort(port)| {
            let a = attributes.get(&port.to_string());
            Port {
                port,
                name: a.and_then(|a| a.label.clone()),
                // Gitpod's words for what opening the port does.
                on_open: a.and_then(|a| a.on_auto_forward.as_deref()).map(|o| {
                    match o {
                        "openBrowser" | "openBrowserOnce" => "open-browser",
                        "openPreview" => "open-preview",
                        "notify" => "notify",
                        _ => "ignore",
                    }
                    .to_owned()
                }),
                ..Port::default()
            }
        })
        .collect();
    // The lifecycle in the specification's order: created once, then started on every start.
    let create = chain(
        chain(parsed.on_create_command, parsed.update_content_command),
        parsed.post_create_command,
    );
    let start = chain(parsed.post_start_command, parsed.post_attach_command);

    // A feature's options: a map (values become text), a string (its `version`), or `true`.
    let features = parsed
        .features
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, v)| *v != serde_json::Value::Bool(false))
        .map(|(id, v)| crate::content::image::FeatureRef {
            id,
            options: match v {
                serde_json::Value::Object(m) => m
                    .into_iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => (k, s),
                        other => (k, other.to_string()),
                    })
                    .collect(),
                serde_json::Value::String(s) => vec![("version".into(), s)],
                _ => Vec::new(),
            },
        })
        .collect();
    let compose = match parsed.docker_compose_file {
        None => None,
        Some(v) => {
            let files: Vec<String> = match v {
                serde_json::Value::String(s) => vec![s],
                serde_json::Value::Array(a) => a
                    .into_iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            };
            let mut inside = Vec::new();
            for f in files {
                let p = normalize(&base.join(&f)).ok_or_else(|| {
                    ConfigFileError::whole_file(
                        file,
                        "dockerComposeFile points outside the repository",
                    )
                })?;
                inside.push(p.to_string_lossy().into_owned());
            }
            let service = parsed.service.ok_or_else(|| {
                ConfigFileError::whole_file(
                    file,
                    "dockerComposeFile needs `service`: the compose service the workspace is",
                )
            })?;
            Some(ComposeRef {
                files: inside,
                service,
                run_services: parsed.run_services,
            })
        }
    };
    // `workspaceMount` in Docker's `--mount` form: the repository's own folder is placed at
    // its target; any other source is not.
    let mut ignored = ignored;
    let mut repository_at = Some(DEFAULT_MOUNT.to_owned());
    if let Some(mount) = &parsed.workspace_mount {
        let fields: Vec<(&str, &str)> = mount
            .split(',')
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |keys: &[&str]| {
            fields
                .iter()
                .find(|(k, _)| keys.contains(k))
                .map(|(_, v)| *v)
        };
        match (
            get(&["source", "src"]),
            get(&["target", "dst", "destination"]),
        ) {
            (Some("${localWorkspaceFolder}"), Some(target)) => {
                repository_at = Some(target.to_owned())
            }
            _ => ignored.push("workspaceMount".into()),
        }
    }
    Ok(WorkspaceConfig {
        checkout_location: None,
        user: parsed.remote_user.or(parsed.container_user),
        repository_at,
        folder: parsed.workspace_folder,
        source: Some(file.to_owned()),
        image,
        build,
        workspace_location: None,
        additional_repos: Vec::new(),
        compose,
        services: Vec::new(),
        features,
        features_root: base.to_string_lossy().into_owned(),
        tasks: devcontainer_tasks(create, start),
        ports,
        env,
        ignored,
    })
}

/// `first` then `then`: two single commands run one after the other (the second only when
/// the first succeeded); named commands stay named.
fn chain(first: Option<Commands>, then: Option<Commands>) -> Option<Commands> {
    match (first, then) {
        (None, x) | (x, None) => x,
        (Some(Commands::Single(a)), Some(Commands::Single(b))) => {
            Some(Commands::Single(format!("{{ {a}\n}} && {{ {b}\n}}")))
        }
        (Some(a), Some(b)) => {
            let named = |c: Commands| match c {
                Commands::Single(s) => vec![("devcontainer".to_owned(), s)],
                Commands::Named(n) => n,
            };
            let mut all = named(a);
            all.extend(named(b));
            Some(Commands::Named(all))
        }
    }
}

/// Maps the lifecycle commands onto tasks. A single create and a single start command share
/// one task, so the start command runs after the create command as the specification
/// requires; named commands become one task each (the specification runs them in parallel).
fn devcontainer_tasks(create: Option<Commands>, start: Option<Commands>) -> Vec<Task> {
    let nonempty = |s: String| (!s.trim().is_empty()).then_some(s);
    let mut tasks: Vec<Task> = Vec::new();
    match create {
        Some(Commands::Single(cmd)) => {
            if let Some(cmd) = nonempty(cmd) {
                tasks.push(Task {
                    name: "devcontainer".into(),
                    init: Some(cmd),
                    ..Task::default()
                });
            }
        }
        Some(Commands::Named(named)) => {
            for (name, cmd) in named {
                if let Some(cmd) = nonempty(cmd) {
                    tasks.push(Task {
                        name,
                        init: Some(cmd),
                        ..Task::default()
                    });
                }
            }
        }
        None => {}
    }
    match start {
        Some(Commands::Single(cmd)) => {
            if let Some(cmd) = nonempty(cmd) {
                if let [only] = tasks.as_mut_slice() {
                    only.command = Some(cmd);
                } else {
                    tasks.push(Task {
                        name: "devcontainer start".into(),
                        command: Some(cmd),
                        ..Task::default()
                    });
                }
            }
        }
        Some(Commands::Named(named)) => {
            for (name, cmd) in named {
                if let Some(cmd) = nonempty(cmd) {
                    match tasks
                        .iter_mut()
                        .find(|t| t.name == name && t.command.is_none())
                    {
                        Some(t) => t.command = Some(cmd),
                        None => tasks.push(Task {
                            name,
                            command: Some(cmd),
                            ..Task::default()
                        }),
                    }
                }
            }
        }
        None => {}
    }
    tasks
}

/// Reads the compose files of a devcontainer: the named service's image or build becomes the
/// workspace's, its environment the workspace's; the services it runs beside (`runServices`,
/// else all) are kept in `depends_on` order. What devcell does not do is listed as ignored.
fn apply_compose(
    repo_dir: &Path,
    compose: &ComposeRef,
    config: &mut WorkspaceConfig,
) -> Result<(), ConfigFileError> {
    let mut services: std::collections::BTreeMap<String, ComposeService> = Default::default();
    let mut order: Vec<String> = Vec::new();
    for file in &compose.files {
        let text = read_config_file(repo_dir, file)?.ok_or_else(|| {
            ConfigFileError::whole_file(
                file,
                "is named by dockerComposeFile but not in the repository",
            )
        })?;
        let value: serde_json::Value =
            serde_yaml_ng::from_str(&text).map_err(|e| yaml_error(file, &e))?;
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        for key in not_honoured(&value, COMPOSE_KEYS) {
            config.ignored.push(format!("{file}: {key}"));
        }
        let Some(map) = value.get("services").and_then(|s| s.as_object()) else {
            continue;
        };
        for (name, svc) in map {
            let parsed = compose_service(file, dir, name, svc, &mut config.ignored)?;
            if !order.contains(name) {
                order.push(name.clone());
            }
            // A later file overrides what it sets.
            match services.get_mut(name) {
                Some(existing) => {
                    if parsed.image.is_some() {
                        existing.image = parsed.image;
                    }
                    if parsed.build.is_some() {
                        existing.build = parsed.build;
                    }
                    existing.environment.extend(parsed.environment);
                    if parsed.command.is_some() {
                        existing.command = parsed.command;
                    }
                    if parsed.entrypoint.is_some() {
                        existing.entrypoint = parsed.entrypoint;
                    }
                    existing.volumes.extend(parsed.volumes);
                    existing.depends_on.extend(parsed.depends_on);
                    if parsed.repository_at.is_some() {
                        existing.repository_at = parsed.repository_at;
                    }
                }
                None => {
                    services.insert(name.clone(), parsed);
                }
            }
        }
    }
    let whole = |m: String| {
        ConfigFileError::whole_file(
            compose
                .files
                .first()
                .map(String::as_str)
                .unwrap_or("compose"),
            m,
        )
    };
    let main = services.remove(&compose.service).ok_or_else(|| {
        whole(format!(
            "has no service {:?} (the devcontainer's `service`)",
            compose.service
        ))
    })?;
    match (&main.image, &main.build) {
        (_, Some(b)) => {
            config.image = Some(format!("file:{}", b.dockerfile));
            config.build = Some(b.clone());
        }
        (Some(i), None) => config.image = Some(i.clone()),
        (None, None) => {
            return Err(whole(format!(
                "service {:?} has neither `image` nor `build`",
                compose.service
            )));
        }
    }
    if let Some(at) = &main.repository_at {
        config.repository_at = Some(at.clone());
    }
    let mut env = main.environment.clone();
    env.extend(std::mem::take(&mut config.env));
    config.env = env;
    let wanted: Vec<String> = match &compose.run_services {
        Some(list) => list
            .iter()
            .filter(|s| **s != compose.service)
            .cloned()
            .collect(),
        None => order
            .iter()
            .filter(|s| **s != compose.service)
            .cloned()
            .collect(),
    };
    // depends_on first; a cycle or an unknown name leaves the rest in file order.
    let mut pending: Vec<ComposeService> = Vec::new();
    for name in &wanted {
        let svc = services.get(name).cloned().ok_or_else(|| {
            whole(format!(
                "runServices names {name:?}, which no compose file defines"
            ))
        })?;
        if let Some(at) = &svc.repository_at {
            config.ignored.push(format!(
                "services.{name}.volumes: the repository at {at} (only the workspace's own service has it)"
            ));
        }
        pending.push(svc);
    }
    let mut started: Vec<ComposeService> = Vec::new();
    while !pending.is_empty() {
        let i = pending
            .iter()
            .position(|s| {
                s.depends_on
                    .iter()
                    .all(|d| !pending.iter().any(|p| &p.name == d))
            })
            .unwrap_or(0);
        started.push(pending.remove(i));
    }
    config.services = started;
    Ok(())
}

const COMPOSE_KEYS: &[(&str, Shape)] = &[
    ("version", Shape::Quiet),
    ("name", Shape::Quiet),
    ("services", Shape::Honoured),
    ("volumes", Shape::Honoured),
];

const SERVICE_KEYS: &[(&str, Shape)] = &[
    ("image", Shape::Honoured),
    ("build", Shape::Honoured),
    ("environment", Shape::Honoured),
    ("command", Shape::Honoured),
    ("entrypoint", Shape::Honoured),
    ("volumes", Shape::Honoured),
    ("depends_on", Shape::Honoured),
    ("working_dir", Shape::Honoured),
    // The services share the workspace's network: every port is on localhost already.
    ("ports", Shape::Quiet),
    ("expose", Shape::Quiet),
    ("container_name", Shape::Quiet),
];

/// One service of a compose file (`dir`: the file's folder in the repository).
fn compose_service(
    file: &str,
    dir: &Path,
    name: &str,
    v: &serde_json::Value,
    ignored: &mut Vec<String>,
) -> Result<ComposeService, ConfigFileError> {
    let bad = |m: String| ConfigFileError::whole_file(file, format!("services.{name}: {m}"));
    for key in not_honoured(v, SERVICE_KEYS) {
        ignored.push(format!("{file}: services.{name}.{key}"));
    }
    // Compose's `$$` is a literal dollar. Its `${VAR}` interpolation from the host's
    // environment is not done: nothing of the cell's environment reaches a workspace.
    let text = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.replace("$$", "$"),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let words = |x: &serde_json::Value| -> Option<Vec<String>> {
        match x {
            serde_json::Value::String(s) => Some(split_words(&s.replace("$$", "$"))),
            serde_json::Value::Array(a) => Some(a.iter().map(text).collect()),
            _ => None,
        }
    };
    let build = match v.get("build") {
        None => None,
        Some(b) => {
            let (context, dockerfile, args, target) = match b {
                serde_json::Value::String(c) => (c.clone(), None, Vec::new(), None),
                serde_json::Value::Object(m) => (
                    m.get("context").map(text).unwrap_or_else(|| ".".into()),
                    m.get("dockerfile").map(text),
                    match m.get("args") {
                        Some(serde_json::Value::Object(a)) => {
                            a.iter().map(|(k, v)| (k.clone(), text(v))).collect()
                        }
                        _ => Vec::new(),
                    },
                    m.get("target").map(text),
                ),
                _ => return Err(bad("build must be a path or a map".into())),
            };
            let context = normalize(&dir.join(&context))
                .ok_or_else(|| bad("build.context points outside the repository".into()))?;
            let dockerfile =
                normalize(&context.join(dockerfile.as_deref().unwrap_or("Dockerfile")))
                    .ok_or_else(|| bad("build.dockerfile points outside the repository".into()))?;
            Some(ImageBuild {
                dockerfile: dockerfile.to_string_lossy().into_owned(),
                context: context.to_string_lossy().into_owned(),
                args,
                target,
            })
        }
    };
    let environment = match v.get("environment") {
        Some(serde_json::Value::Object(m)) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), text(v)))
            .collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str())
            .filter_map(|x| x.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
        _ => Vec::new(),
    };
    let mut volumes = Vec::new();
    let mut repository_at = None;
    for vol in v
        .get("volumes")
        .and_then(|x| x.as_array())
        .into_iter()
        .flatten()
    {
        let (source, target) = match vol {
            serde_json::Value::String(s) => {
                let mut parts = s.split(':');
                (
                    parts.next().unwrap_or("").to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                )
            }
            serde_json::Value::Object(m) => (
                m.get("source").map(text).unwrap_or_default(),
                m.get("target").map(text).unwrap_or_default(),
            ),
            _ => continue,
        };
        let named = !source.is_empty()
            && !source.starts_with(['.', '/', '~'])
            && source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        let whole_repository = source.starts_with('.')
            && normalize(&dir.join(&source)).is_some_and(|p| p.as_os_str().is_empty());
        if named && target.starts_with('/') {
            volumes.push((source, target));
        } else if whole_repository && target.starts_with('/') && repository_at.is_none() {
            repository_at = Some(target);
        } else {
            // Binding the workspace's files or the host's into a service would follow links
            // the workspace controls: only named volumes are honoured.
            ignored.push(format!(
                "{file}: services.{name}.volumes {source}:{target} (only named volumes run)"
            ));
        }
    }
    let depends_on = match v.get("depends_on") {
        Some(serde_json::Value::Array(a)) => a.iter().map(text).collect(),
        Some(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    Ok(ComposeService {
        name: name.to_owned(),
        image: v.get("image").map(text),
        build,
        environment,
        entrypoint: v.get("entrypoint").and_then(words),
        command: v.get("command").and_then(words),
        volumes,
        depends_on,
        working_dir: v.get("working_dir").map(text),
        repository_at,
    })
}

/// Splits a compose command string into words as a shell would (quotes, backslashes), without
/// running a shell.
fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut any = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (q, '\\') if q != Some('\'') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                any = true;
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// What devcell does with a key of a configuration file.
enum Shape {
    /// Honoured, whatever is inside.
    Honoured,
    /// A map whose keys are checked.
    Map(&'static [(&'static str, Shape)]),
    /// A list of maps whose keys are checked.
    List(&'static [(&'static str, Shape)]),
    /// A map of free names to maps whose keys are checked (`portsAttributes`).
    Named(&'static [(&'static str, Shape)]),
    /// Metadata that changes nothing (`$schema`, `name`): neither honoured nor worth saying.
    Quiet,
}

const GITPOD_KEYS: &[(&str, Shape)] = &[
    (
        "image",
        Shape::Map(&[("file", Shape::Honoured), ("context", Shape::Honoured)]),
    ),
    ("workspaceLocation", Shape::Honoured),
    (
        "additionalRepositories",
        Shape::List(&[
            ("url", Shape::Honoured),
            ("checkoutLocation", Shape::Honoured),
        ]),
    ),
    ("checkoutLocation", Shape::Honoured),
    (
        "tasks",
        Shape::List(&[
            ("name", Shape::Honoured),
            ("before", Shape::Honoured),
            ("init", Shape::Honoured),
            ("command", Shape::Honoured),
            ("env", Shape::Honoured),
        ]),
    ),
    (
        "ports",
        Shape::List(&[
            ("port", Shape::Honoured),
            ("name", Shape::Honoured),
            ("visibility", Shape::Honoured),
            ("onOpen", Shape::Honoured),
            ("description", Shape::Quiet),
        ]),
    ),
];

const DEVCONTAINER_KEYS: &[(&str, Shape)] = &[
    ("$schema", Shape::Quiet),
    ("name", Shape::Quiet),
    ("image", Shape::Honoured),
    (
        "build",
        Shape::Map(&[
            ("dockerfile", Shape::Honoured),
            ("context", Shape::Honoured),
            ("args", Shape::Honoured),
            ("target", Shape::Honoured),
        ]),
    ),
    ("dockerFile", Shape::Honoured),
    ("context", Shape::Honoured),
    ("features", Shape::Honoured),
    ("dockerComposeFile", Shape::Honoured),
    ("service", Shape::Honoured),
    ("runServices", Shape::Honoured),
    ("onCreateCommand", Shape::Honoured),
    ("updateContentCommand", Shape::Honoured),
    ("postCreateCommand", Shape::Honoured),
    ("postStartCommand", Shape::Honoured),
    ("postAttachCommand", Shape::Honoured),
    (
        "portsAttributes",
        Shape::Named(&[
            ("label", Shape::Honoured),
            ("onAutoForward", Shape::Honoured),
        ]),
    ),
    ("forwardPorts", Shape::Honoured),
    ("containerEnv", Shape::Honoured),
    ("remoteEnv", Shape::Honoured),
    ("remoteUser", Shape::Honoured),
    ("containerUser", Shape::Honoured),
    ("workspaceFolder", Shape::Honoured),
    ("workspaceMount", Shape::Honoured),
];

/// The keys of `value` that `known` does not honour, as dotted paths (list indexes left
/// out), each once, in file order.
fn not_honoured(value: &serde_json::Value, known: &[(&str, Shape)]) -> Vec<String> {
    let mut out = Vec::new();
    walk_keys(value, known, "", &mut out);
    let mut seen = std::collections::HashSet::new();
    out.retain(|k| seen.insert(k.clone()));
    out
}

fn walk_keys(
    value: &serde_json::Value,
    known: &[(&str, Shape)],
    prefix: &str,
    out: &mut Vec<String>,
) {
    let Some(map) = value.as_object() else {
        return;
    };
    for (key, inner) in map {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match known.iter().find(|(k, _)| k == key).map(|(_, s)| s) {
            None => out.push(path),
            Some(Shape::Honoured | Shape::Quiet) => {}
            Some(Shape::Map(keys)) => walk_keys(inner, keys, &path, out),
            Some(Shape::List(keys)) => {
                for item in inner.as_array().into_iter().flatten() {
                    walk_keys(item, keys, &path, out);
                }
            }
            Some(Shape::Named(keys)) => {
                for (name, item) in inner.as_object().into_iter().flatten() {
                    walk_keys(item, keys, &format!("{path}.{name}"), out);
                }
            }
        }
    }
}

/// Resolves `.` and `..` in a relative path without touching the disk; `None` if it leaves
/// the repository.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Replaces commas that precede `}` or `]` with spaces: devcontainer.json allows them and
/// serde_json does not. Positions stay the same, so errors still point at the right place.
fn blank_trailing_commas(json: &str) -> String {
    let mut bytes = json.as_bytes().to_vec();
    let mut in_string = false;
    let mut escaped = false;
    for i in 0..bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' => {
                let next = bytes[i + 1..]
                    .iter()
                    .find(|c| !c.is_ascii_whitespace())
                    .copied();
                if matches!(next, Some(b'}' | b']')) {
                    bytes[i] = b' ';
                }
            }
            _ => {}
        }
    }
    // Only ASCII commas were replaced by ASCII spaces, so the text is still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|_| json.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, text).unwrap();
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn gitpod_err(text: &str) -> ConfigFileError {
        parse_gitpod(".gitpod.yml", text).unwrap_err()
    }

    #[test]
    fn full_gitpod_file() {
        let text = r#"# A typical file.
image: gitpod/workspace-full:latest
tasks:
  - name: Backend
    before: export A=1
    init: |
      npm ci
      npm run build
    command: npm start
    env:
      PORT: 3000
      DEBUG: true
      NAME: app
  - command: echo second
    openMode: split-right
ports:
  - port: 3000
    name: web
    visibility: public
    onOpen: open-preview
  - port: "5432"
    onOpen: ignore
env:
  NOT_A_GITPOD_KEY: x
vscode:
  extensions: [a.b]
"#;
        let c = parse_gitpod(".gitpod.yml", text).unwrap();
        assert_eq!(c.source.as_deref(), Some(".gitpod.yml"));
        assert_eq!(c.image.as_deref(), Some("gitpod/workspace-full:latest"));
        assert_eq!(
            c.tasks,
            vec![
                Task {
                    name: "Backend".into(),
                    before: Some("export A=1".into()),
                    init: Some("npm ci\nnpm run build\n".into()),
                    command: Some("npm start".into()),
                    env: env(&[("PORT", "3000"), ("DEBUG", "true"), ("NAME", "app")]),
                },
                Task {
                    name: "task 2".into(),
                    command: Some("echo second".into()),
                    ..Task::default()
                },
            ]
        );
        assert_eq!(
            c.ports,
            vec![
                Port {
                    port: 3000,
                    name: Some("web".into()),
                    visibility: Some("public".into()),
                    on_open: Some("open-preview".into()),
                },
                Port {
                    port: 5432,
                    on_open: Some("ignore".into()),
                    ..Port::default()
                },
            ]
        );
        assert!(c.env.is_empty());
    }

    #[test]
    fn gitpod_image_from_a_dockerfile() {
        let c = parse_gitpod(
            ".gitpod.yml",
            "image:\n  file: .gitpod.Dockerfile\n  context: .\n",
        )
        .unwrap();
        assert_eq!(c.image.as_deref(), Some("file:.gitpod.Dockerfile"));
        let e = gitpod_err("image:\n  context: .\n");
        assert!(e.message.contains("file"), "{e}");
    }

    #[test]
    fn empty_gitpod_file_is_an_empty_configuration() {
        for text in ["", "# nothing yet\n"] {
            let c = parse_gitpod(".gitpod.yml", text).unwrap();
            assert_eq!(c.source.as_deref(), Some(".gitpod.yml"));
            assert!(c.tasks.is_empty() && c.ports.is_empty() && c.image.is_none());
        }
    }

    #[test]
    fn port_ranges_expand() {
        let c = parse_gitpod(
            ".gitpod.yml",
            "ports:\n  - port: 3000-3003\n    visibility: private\n  - port: 8080\n",
        )
        .unwrap();
        let ports: Vec<u16> = c.ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [3000, 3001, 3002, 3003, 8080]);
        assert!(
            c.ports[..4]
                .iter()
                .all(|p| p.visibility.as_deref() == Some("private"))
        );

        let c = parse_gitpod(".gitpod.yml", "ports:\n  - port: 1-100\n").unwrap();
        assert_eq!(c.ports.len(), 100);

        let e = gitpod_err("ports:\n  - port: 1000-1100\n");
        assert_eq!((e.line, e.column), (Some(2), Some(11)), "{e}");
        assert!(e.message.contains("at most 100"), "{e}");

        let e = gitpod_err("ports:\n  - port: 3005-3000\n");
        assert!(e.message.contains("backwards"), "{e}");
        let e = gitpod_err("ports:\n  - port: 70000\n");
        assert!(e.message.contains("1 to 65535"), "{e}");
        let e = gitpod_err("ports:\n  - port: 0\n");
        assert!(e.message.contains("1 to 65535"), "{e}");
        let e = gitpod_err("ports:\n  - port: web\n");
        assert!(e.message.contains("not a port"), "{e}");
        let e = gitpod_err("ports:\n  - name: web\n");
        assert!(e.message.contains("missing field `port`"), "{e}");
    }

    #[test]
    fn broken_indentation_points_at_the_line() {
        let text = "tasks:\n  - name: a\n    command: x\n   init: y\n";
        let e = gitpod_err(text);
        assert_eq!(e.file, ".gitpod.yml");
        // The key indented by three spaces instead of four.
        assert_eq!((e.line, e.column), (Some(4), Some(4)), "{e}");
        assert!(e.to_string().starts_with(".gitpod.yml:4:4: "), "{e}");
        // The position is not repeated; the context (where the list began) stays.
        assert!(!e.message.contains("line 4 column 4"), "{e}");
        assert!(e.message.contains("line 2 column 3"), "{e}");
    }

    #[test]
    fn a_tab_points_at_the_tab() {
        let text = "image: x\ntasks:\n\t- command: y\n";
        let e = gitpod_err(text);
        assert_eq!((e.line, e.column), (Some(3), Some(1)), "{e}");
        assert!(e.message.contains("cannot start any token"), "{e}");
    }

    #[test]
    fn wrong_types_point_at_the_value() {
        let e = gitpod_err("image: x\ntasks: npm start\n");
        assert_eq!((e.line, e.column), (Some(2), Some(8)), "{e}");
        assert!(e.message.starts_with("tasks: invalid type"), "{e}");
        assert_eq!(
            e.to_string(),
            format!(".gitpod.yml:2:8: {}", e.message),
            "Display puts the place first"
        );

        let e = gitpod_err("tasks:\n  - name: a\n    env: [1, 2]\n");
        assert_eq!(e.line, Some(3), "{e}");
        let e = gitpod_err("ports: {port: 1}\n");
        assert_eq!(e.line, Some(1), "{e}");
        let e = gitpod_err("image: [a]\n");
        assert!(e.message.contains("an image name"), "{e}");
    }

    #[test]
    fn devcontainer_with_comments_and_trailing_commas() {
        let text = r#"// A dev container.
{
  /* the base */
  "image": "mcr.microsoft.com/devcontainers/rust:1", // pinned
  "postCreateCommand": "cargo build",
  "postStartCommand": ["cargo", "run", "--", "it's here", "a//b"],
  "forwardPorts": [3000, "db:5432", ],
  "containerEnv": { "RUST_LOG": "debug", "N": 3 },
  "remoteEnv": { "EDITOR": "vim", "UNSET": null },
  "customizations": { "vscode": { "extensions": ["x"] } },
}
"#;
        let c = parse_devcontainer(".devcontainer/devcontainer.json", text).unwrap();
        assert_eq!(c.source.as_deref(), Some(".devcontainer/devcontainer.json"));
        assert_eq!(
            c.image.as_deref(),
            Some("mcr.microsoft.com/devcontainers/rust:1")
        );
        assert_eq!(
            c.tasks,
            vec![Task {
                name: "devcontainer".into(),
                init: Some("cargo build".into()),
                command: Some(r"cargo run -- 'it'\''s here' a//b".into()),
                ..Task::default()
            }]
        );
        let ports: Vec<u16> = c.ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [3000, 5432]);
        assert_eq!(
            c.env,
            env(&[("RUST_LOG", "debug"), ("N", "3"), ("EDITOR", "vim")])
        );
    }

    #[test]
    fn post_create_command_forms() {
        let tasks = |json: &str| {
            parse_devcontainer(".devcontainer.json", json)
                .unwrap()
                .tasks
        };

        let t = tasks(r#"{"postCreateCommand": "npm ci && npm test"}"#);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].init.as_deref(), Some("npm ci && npm test"));
        assert_eq!(t[0].command, None);

        let t = tasks(r#"{"postCreateCommand": ["npm", "run", "my script"]}"#);
        assert_eq!(t[0].init.as_deref(), Some("npm run 'my script'"));

        let t = tasks(
            r#"{"postCreateCommand": {"server": "npm start", "db": ["pg_ctl", "start"]},
                "postStartCommand": {"server": "npm run watch", "other": "echo hi"}}"#,
        );
        assert_eq!(
            t,
            vec![
                Task {
                    name: "server".into(),
                    init: Some("npm start".into()),
                    command: Some("npm run watch".into()),
                    ..Task::default()
                },
                Task {
                    name: "db".into(),
                    init: Some("pg_ctl start".into()),
                    ..Task::default()
                },
                Task {
                    name: "other".into(),
                    command: Some("echo hi".into()),
                    ..Task::default()
                },
            ]
        );

        let t = tasks(r#"{"postStartCommand": "make serve"}"#);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].command.as_deref(), Some("make serve"));

        let e = parse_devcontainer(".devcontainer.json", "{\n  \"postCreateCommand\": 5\n}")
            .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("command string"), "{e}");
    }

    #[test]
    fn devcontainer_errors_point_at_the_place() {
        let text = "{\n  // comment\n  \"image\": \"x\"\n  \"forwardPorts\": [1]\n}";
        let e = parse_devcontainer(".devcontainer/devcontainer.json", text).unwrap_err();
        assert_eq!(e.file, ".devcontainer/devcontainer.json");
        assert_eq!((e.line, e.column), (Some(4), Some(3)), "{e}");
        assert!(!e.message.contains("at line"), "{e}");

        let text = "{\n  \"forwardPorts\": [3000, \"db:x\"]\n}";
        let e = parse_devcontainer(".devcontainer.json", text).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("db:x"), "{e}");

        let e = parse_devcontainer(".devcontainer.json", "").unwrap_err();
        assert_eq!(e.file, ".devcontainer.json");
    }

    #[test]
    fn devcontainer_dockerfile_is_relative_to_the_file() {
        let c = parse_devcontainer(
            ".devcontainer/devcontainer.json",
            r#"{"build": {"dockerfile": "../docker/Dockerfile"}}"#,
        )
        .unwrap();
        assert_eq!(c.image.as_deref(), Some("file:docker/Dockerfile"));
        let c =
            parse_devcontainer(".devcontainer.json", r#"{"dockerFile": "Dockerfile"}"#).unwrap();
        assert_eq!(c.image.as_deref(), Some("file:Dockerfile"));
        let e = parse_devcontainer(
            ".devcontainer.json",
            r#"{"build": {"dockerfile": "../../etc/x"}}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("outside"), "{e}");
    }

    #[test]
    fn trailing_commas_inside_strings_stay() {
        assert_eq!(blank_trailing_commas(r#"["a,]", 1,]"#), r#"["a,]", 1 ]"#);
        assert_eq!(blank_trailing_commas(r#"{"a\",}":1}"#), r#"{"a\",}":1}"#);
    }

    #[test]
    fn gitpod_wins_over_devcontainer() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            ".devcontainer/devcontainer.json",
            r#"{"image": "dc"}"#,
        );
        write(dir.path(), ".devcontainer.json", r#"{"image": "root-dc"}"#);
        let c = load(dir.path()).unwrap();
        assert_eq!(c.image.as_deref(), Some("dc"));
        assert_eq!(c.source.as_deref(), Some(".devcontainer/devcontainer.json"));

        std::fs::remove_dir_all(dir.path().join(".devcontainer")).unwrap();
        assert_eq!(load(dir.path()).unwrap().image.as_deref(), Some("root-dc"));

        write(dir.path(), ".gitpod.yaml", "image: gp-yaml\n");
        assert_eq!(load(dir.path()).unwrap().image.as_deref(), Some("gp-yaml"));
        write(dir.path(), ".gitpod.yml", "image: gp\n");
        let c = load(dir.path()).unwrap();
        assert_eq!(c.image.as_deref(), Some("gp"));
        assert_eq!(c.source.as_deref(), Some(".gitpod.yml"));
    }

    #[test]
    fn no_file_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), WorkspaceConfig::default());
        // A file where a directory is expected means there is no devcontainer.json inside.
        write(dir.path(), ".devcontainer", "not a directory");
        assert_eq!(load(dir.path()).unwrap(), WorkspaceConfig::default());
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = format!("image: x\n#{}\n", "a".repeat(300 * 1024));
        write(dir.path(), ".gitpod.yml", &big);
        let e = load(dir.path()).unwrap_err();
        assert_eq!(e.file, ".gitpod.yml");
        assert_eq!(e.line, None);
        assert!(e.message.contains("256 KiB"), "{e}");
        assert_eq!(e.to_string(), format!(".gitpod.yml: {}", e.message));
    }

    #[test]
    fn links_out_of_the_repository_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret", "image: stolen\n");
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join(".gitpod.yml"),
        )
        .unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.message.contains("outside the repository"), "{e}");
        assert!(!e.to_string().contains("stolen"));

        // A link that stays inside the repository is fine.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config/gitpod.yml", "image: inside\n");
        std::os::unix::fs::symlink("config/gitpod.yml", dir.path().join(".gitpod.yml")).unwrap();
        assert_eq!(load(dir.path()).unwrap().image.as_deref(), Some("inside"));
    }

    #[test]
    fn config_crosses_a_process_boundary_as_json() {
        let c = parse_gitpod(
            ".gitpod.yml",
            "tasks:\n  - init: a\n    env: {X: y}\nports:\n  - port: 1\n",
        )
        .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: WorkspaceConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn keys_devcell_does_not_honour_are_listed_once() {
        let text = "image: x\ntasks:\n  - command: a\n    openMode: split-right\n  - command: b\n    openMode: tab-after\nports:\n  - port: 3000\n    description: web\nvscode:\n  extensions: [a.b]\ngithub:\n  prebuilds: {}\n";
        let c = parse_gitpod(".gitpod.yml", text).unwrap();
        assert_eq!(c.ignored, vec!["github", "tasks.openMode", "vscode"]);
        let c = parse_devcontainer(
            ".devcontainer/devcontainer.json",
            r#"{"name": "x", "image": "y", "customizations": {"vscode": {}}, "build": {"cacheFrom": "z"},
                "portsAttributes": {"3000": {"label": "Web", "requireLocalPort": true}}, "hostRequirements": {}}"#,
        )
        .unwrap();
        assert_eq!(
            c.ignored,
            vec![
                "build.cacheFrom",
                "customizations",
                "hostRequirements",
                "portsAttributes.3000.requireLocalPort"
            ]
        );
    }

    #[test]
    fn the_repository_is_placed_where_its_file_expects_it_when_the_root_has_room() {
        let dc = |text: &str| parse_devcontainer(".devcontainer/devcontainer.json", text).unwrap();
        let none = |_: &str| false;
        // Nothing said: the specification's /workspaces/NAME, linked; terminals start there.
        let c = dc(r#"{"image": "y"}"#);
        let p = c.placement(Some("app"), none);
        assert_eq!(
            p.link,
            Some(("/workspaces/app".into(), "/workspace/app".into()))
        );
        assert_eq!((p.workdir.as_str(), p.notes.len()), ("/workspaces/app", 0));
        // An image with its own /workspaces: the repository stays where it is, quietly.
        let p = c.placement(Some("app"), |n| n == "workspaces");
        assert_eq!((p.link, p.workdir.as_str()), (None, "/workspace/app"));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        // workspaceMount and a folder inside it.
        let c = dc(
            r#"{"image": "y", "workspaceMount": "source=${localWorkspaceFolder},target=/src/${localWorkspaceFolderBasename},type=bind",
                "workspaceFolder": "/src/${localWorkspaceFolderBasename}/web", "remoteUser": "vscode"}"#,
        );
        assert_eq!(c.user.as_deref(), Some("vscode"));
        let p = c.placement(Some("app"), none);
        assert_eq!(p.link, Some(("/src/app".into(), "/workspace/app".into())));
        assert_eq!(p.workdir, "/src/app/web");
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        // A mount over /workspace is where the repository already is: its folders follow.
        let c = dc(
            r#"{"image": "y", "workspaceMount": "source=${localWorkspaceFolder},target=/workspace,type=bind", "workspaceFolder": "/workspace/web"}"#,
        );
        let p = c.placement(Some("app"), none);
        assert_eq!((p.link, p.workdir.as_str()), (None, "/workspace/app/web"));
        assert_eq!(
            p.notes,
            vec![
                "the repository is at /workspace/app, not /workspace: /workspace holds the workspace's repositories"
            ]
        );
        // Into the image's own folders, never: said, and terminals start at the repository.
        let c = dc(
            r#"{"image": "y", "workspaceMount": "src=${localWorkspaceFolder},dst=/usr/src/app", "workspaceFolder": "/usr/src/app"}"#,
        );
        let p = c.placement(Some("app"), |n| n == "usr");
        assert_eq!((p.link, p.workdir.as_str()), (None, "/workspace/app"));
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        for hostile in ["/proc/self", "/../etc", "/.devcell/x", "/home/x"] {
            let c = dc(&format!(
                r#"{{"image": "y", "workspaceMount": "source=${{localWorkspaceFolder}},target={hostile}"}}"#
            ));
            let p = c.placement(Some("app"), none);
            assert_eq!(p.link, None, "{hostile}");
            assert_eq!(p.workdir, "/workspace/app", "{hostile}");
        }
        // A mount of something else than the repository is not honoured, and said.
        let c =
            dc(r#"{"image": "y", "workspaceMount": "source=/srv/data,target=/data,type=bind"}"#);
        assert_eq!(c.ignored, vec!["workspaceMount"]);
        // A folder elsewhere: said; terminals start at the repository.
        let c = dc(r#"{"image": "y", "workspaceFolder": "/opt/elsewhere"}"#);
        let p = c.placement(Some("app"), none);
        assert_eq!(p.workdir, "/workspaces/app");
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        // Gitpod: no link; checkoutLocation is one folder; workspaceLocation wins.
        let c = parse_gitpod(
            ".gitpod.yml",
            "checkoutLocation: backend\nworkspaceLocation: backend/api\n",
        )
        .unwrap();
        assert_eq!(c.checkout_location.as_deref(), Some("backend"));
        let p = c.placement(Some("backend"), none);
        assert_eq!(
            (p.link, p.workdir.as_str()),
            (None, "/workspace/backend/api")
        );
        for bad in ["a/b", "..", "/"] {
            let e =
                parse_gitpod(".gitpod.yml", &format!("checkoutLocation: {bad:?}\n")).unwrap_err();
            assert!(e.to_string().contains("checkoutLocation"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_devcontainer_lifecycle_runs_in_order_and_ports_take_their_attributes() {
        let c = parse_devcontainer(
            ".devcontainer.json",
            r#"{"image": "y", "onCreateCommand": "a", "updateContentCommand": "b", "postCreateCommand": "c",
                "postStartCommand": "d", "postAttachCommand": "e", "forwardPorts": [3000, "db:5432"],
                "portsAttributes": {"3000": {"label": "Web", "onAutoForward": "openPreview"}}}"#,
        )
        .unwrap();
        assert_eq!(c.tasks.len(), 1, "{:?}", c.tasks);
        assert_eq!(
            c.tasks[0].init.as_deref(),
            Some("{ { a\n} && { b\n}\n} && { c\n}")
        );
        assert_eq!(c.tasks[0].command.as_deref(), Some("{ d\n} && { e\n}"));
        assert_eq!(c.ports[0].name.as_deref(), Some("Web"));
        assert_eq!(c.ports[0].on_open.as_deref(), Some("open-preview"));
        assert_eq!(c.ports[1].port, 5432);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    #[test]
    fn a_compose_devcontainer_takes_its_service_and_orders_the_others() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            ".devcontainer/devcontainer.json",
            r#"{"dockerComposeFile": ["compose.yml", "compose.override.yml"], "service": "app", "remoteEnv": {"A": "1"}}"#,
        );
        write(
            dir.path(),
            ".devcontainer/compose.yml",
            "services:\n  app:\n    build:\n      context: ..\n      dockerfile: docker/Dockerfile\n      args: {X: 1}\n    environment: [APP=yes]\n    volumes: [\"..:/workspaces/app:cached\"]\n  web:\n    image: nginx\n    volumes: [\"../:/srv/www\"]\n    depends_on: {db: {condition: service_healthy}}\n    command: nginx -g 'daemon off;'\n  db:\n    image: postgres:16\n    volumes: [\"pg:/var/lib/postgresql/data\", \"/etc:/host-etc\"]\n    restart: always\n",
        );
        write(
            dir.path(),
            ".devcontainer/compose.override.yml",
            "services:\n  db:\n    environment:\n      POSTGRES_PASSWORD: pw\n",
        );
        let c = load(dir.path()).unwrap();
        let b = c.build.as_ref().unwrap();
        assert_eq!(b.dockerfile, "docker/Dockerfile");
        assert_eq!(b.context, "");
        assert_eq!(b.args, vec![("X".to_owned(), "1".to_owned())]);
        assert_eq!(c.env[0], ("APP".to_owned(), "yes".to_owned()));
        let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"], "depends_on first");
        assert_eq!(
            c.services[0].volumes,
            vec![("pg".to_owned(), "/var/lib/postgresql/data".to_owned())]
        );
        assert_eq!(
            c.services[0].environment,
            vec![("POSTGRES_PASSWORD".to_owned(), "pw".to_owned())]
        );
        assert_eq!(
            c.services[1].command.as_deref().unwrap(),
            ["nginx", "-g", "daemon off;"]
        );
        // The workspace's service's bind of the repository says where it is expected; the
        // same bind in another service is not honoured.
        assert_eq!(c.repository_at.as_deref(), Some("/workspaces/app"));
        assert!(
            c.ignored.iter().any(|i| i.contains("services.db.restart"))
                && c.ignored.iter().any(|i| i.contains("/etc:/host-etc"))
                && c.ignored
                    .iter()
                    .any(|i| i.contains("services.web.volumes: the repository at /srv/www")),
            "{:?}",
            c.ignored
        );
    }
}
