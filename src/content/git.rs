//! Cloning a workspace's repositories and reading their status, by running the `git` tool.
//! This is not a git implementation: going through `git` keeps behaviour identical to what
//! users see in their own terminal.
//!
//! Credentials reach git only through the environment of one process and a private temporary
//! directory. They never appear on a command line (which `ps` shows to every local user), are
//! never written to the cloned repository's configuration, and are scrubbed from every message.

use std::fmt;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::domain::validate::RepoScheme;
use crate::domain::{RepoSpec, RepoUrl};

/// Large repositories over slow links take minutes; beyond this something is stuck.
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// `git status` walks the work tree; a minute covers huge trees on slow disks.
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest piece of git's output put into an error message.
const MAX_MESSAGE_BYTES: usize = 2048;
const MAX_STATUS_ENTRIES: usize = 200;
const MAX_UNPUSHED: usize = 100;
/// The longest directory name [`dir_name`] produces.
const MAX_DIR_NAME: usize = 100;

/// Environment variables handed on to git from the cell's own environment. Everything else
/// is dropped, so that variables like `GIT_DIR` or `GIT_CONFIG_PARAMETERS` set for the cell
/// cannot redirect a clone; proxies and CA bundles are kept because operators set them for
/// exactly this kind of outbound traffic.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The credential used to clone a repository.
#[derive(Clone, PartialEq, Eq)]
pub enum GitAuth {
    None,
    /// HTTP Basic credentials: a user name and an access token (or password).
    Token {
        username: String,
        token: String,
    },
    /// An OpenSSH private key, in the text form `ssh-keygen` writes.
    SshKey {
        private_key: String,
    },
}

// Written by hand so that logging a clone request never prints a secret.
impl fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitAuth::None => f.write_str("None"),
            GitAuth::Token { username, .. } => f
                .debug_struct("Token")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            GitAuth::SshKey { .. } => f
                .debug_struct("SshKey")
                .field("private_key", &"<redacted>")
                .finish(),
        }
    }
}

/// Why a clone or a status read failed, in words a user can act on. Every message is
/// scrubbed of the credential that was used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    #[error("repository not found: {url}")]
    NotFound { url: String },
    #[error("authentication failed for {url}; check the credential")]
    AuthFailed { url: String },
    #[error(
        "branch or commit not found: {branch}; check the name, or leave it empty for the default branch"
    )]
    BranchNotFound { branch: String },
    #[error("cannot reach {url} ({message}); check the address and the network")]
    Unreachable { url: String, message: String },
    #[error("git did not finish within {seconds} seconds; try again, or check the network")]
    Timeout { seconds: u64 },
    #[error("git failed: {message}")]
    Failed { message: String },
    /// The destination is one the cell does not connect to for workspaces (see `egress`).
    #[error("{message}")]
    Refused { message: String },
}

impl GitError {
    /// A stable, machine-readable code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            GitError::NotFound { .. } => "repo_not_found",
            GitError::AuthFailed { .. } => "repo_auth_failed",
            GitError::BranchNotFound { .. } => "branch_not_found",
            GitError::Unreachable { .. } => "repo_unreachable",
            GitError::Timeout { .. } => "git_timeout",
            GitError::Failed { .. } => "git_failed",
            GitError::Refused { .. } => "repo_refused",
        }
    }
}

/// One clone to perform.
#[derive(Debug)]
pub struct Clone<'a> {
    pub repo: &'a RepoSpec,
    /// Where the work tree goes; it must not exist yet or be an empty directory.
    pub dest: &'a Path,
    pub auth: &'a GitAuth,
    /// Who git runs as, so the files belong to the workspace's user. The parent of `dest`
    /// must be writable by them.
    pub run_as: Option<RunAs>,
    /// Which destinations the clone may reach.
    pub egress: &'a crate::content::egress::Egress,
}

/// The uid and gid git runs as, and how it becomes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// When the uid cannot walk to the workspace's files by their host path: a command that
    /// becomes git as the uid in a view where the directory `from` is at `to` (the runtime's
    /// launcher, see `runtime::rebase`). Without it git is started through setpriv.
    pub via: Option<Via>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// The command and its arguments; git's own arguments follow.
    pub prefix: Vec<String>,
    pub from: PathBuf,
    pub to: PathBuf,
}

impl RunAs {
    pub fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// Where git sees the host's `path`.
    fn path(&self, path: &Path) -> PathBuf {
        match &self.via {
            Some(v) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
                match path.strip_prefix(&v.from) {
                    Ok(rest) => v.to.join(rest),
                    Err(_) => path,
                }
            }
            None => path.to_owned(),
        }
    }
}

/// Where git run as `run_as` sees the host's `path`.
fn seen(run_as: Option<&RunAs>, path: &Path) -> PathBuf {
    run_as.map_or_else(|| path.to_owned(), |r| r.path(path))
}

/// The server a clone connects to, checked against the egress rule and pinned to the
/// addresses that were checked, so that git does not resolve the name again.
struct Pinned {
    host: String,
    port: u16,
    /// Empty when the host is an address itself.
    addrs: Vec<std::net::IpAddr>,
}

/// Checks where `url` leads (http, https and ssh; `file://` goes nowhere) and pins it.
async fn pin(
    url: &RepoUrl,
    egress: &crate::content::egress::Egress,
) -> Result<Option<Pinned>, GitError> {
    let scheme = url.scheme();
    let (host, port) = match scheme {
        RepoScheme::File => return Ok(None),
        RepoScheme::Http | RepoScheme::Https | RepoScheme::Ssh => {
            match url::Url::parse(url.as_str()) {
                Ok(u) if u.host_str().is_some() => (
                    u.host_str().unwrap_or_default().to_owned(),
                    u.port_or_known_default().unwrap_or(22),
                ),
                // scp-like: user@host:path
                _ => match url
                    .as_str()
                    .split_once('@')
                    .and_then(|(_, rest)| rest.split_once(':'))
                {
                    Some((h, _)) => (h.to_owned(), 22),
                    None => return Ok(None),
                },
            }
        }
    };
    let addrs = egress.resolve(&host, port).await.map_err(|e| match e {
        crate::content::egress::EgressError::Refused { .. } => GitError::Refused {
            message: e.to_string(),
        },
        crate::content::egress::EgressError::Unresolved { message, .. } => GitError::Unreachable {
            url: url.as_str().to_owned(),
            message,
        },
    })?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let literal = bare.parse::<std::net::IpAddr>().is_ok();
    Ok(Some(Pinned {
        host: bare.to_owned(),
        port,
        addrs: if literal {
            Vec::new()
        } else {
            addrs.iter().map(|a| a.ip()).collect()
        },
    }))
}

impl Pinned {
    /// git's settings for an http(s) clone: curl uses the checked addresses, and follows no
    /// redirect (which could lead anywhere).
    fn http_args(&self) -> Vec<String> {
        let mut args = vec!["-c".to_owned(), "http.followRedirects=false".to_owned()];
        if !self.addrs.is_empty() {
            let addrs: Vec<String> = self
                .addrs
                .iter()
                .map(|a| match a {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                })
                .collect();
            args.push("-c".into());
            args.push(format!(
                "http.curloptResolve={}:{}:{}",
                self.host,
                self.port,
                addrs.join(",")
            ));
        }
        args
    }

    /// ssh's options: connect to the checked address, known by the host's name.
    fn ssh_args(&self) -> String {
        match self.addrs.first() {
            Some(addr) => format!(
                " -o HostKeyAlias={} -o HostName={}",
                shell_quote(&self.host),
                shell_quote(&addr.to_string())
            ),
            None => String::new(),
        }
    }
}

/// Clones `c.repo` into `c.dest` and checks out the asked branch or commit.
///
/// git does not fsync what it writes here (`core.fsync=none`): a fresh clone can always be
/// made again, and syncing its pack, index and refs one by one cost an eighth of a small
/// clone. The caller syncs the filesystem once, off the start's critical path.
///
/// On failure nothing is left at `dest` that this call created.
pub async fn clone(c: Clone<'_>) -> Result<(), GitError> {
    clone_within(c, CLONE_TIMEOUT).await
}

async fn clone_within(c: Clone<'_>, limit: Duration) -> Result<(), GitError> {
    let existed = c.dest.exists();
    let result = match tokio::time::timeout(limit, clone_inner(&c)).await {
        Ok(r) => r,
        // Dropping the future kills git (kill_on_drop), so nothing keeps writing to dest.
        Err(_) => Err(GitError::Timeout {
            seconds: limit.as_secs(),
        }),
    };
    if result.is_err() {
        remove_clone(c.dest, existed);
    }
    result
}

async fn clone_inner(c: &Clone<'_>) -> Result<(), GitError> {
    let url = c.repo.url.as_str();
    let pinned = pin(&c.repo.url, c.egress).await?;
    let ids = c.run_as.as_ref().map(RunAs::ids);
    let run_as = c.run_as.as_ref();
    let private = PrivateDir::create(ids).map_err(|e| GitError::Failed {
        message: format!("could not create a private temporary directory: {e}"),
    })?;
    let env = AuthEnv::new(&c.repo.url, c.auth, &private, ids, pinned.as_ref()).map_err(|e| {
        GitError::Failed {
            message: format!("could not prepare the credential: {e}"),
        }
    })?;
    let commit = c.repo.branch.as_deref().filter(|b| is_commit_id(b));

    let mut cmd = git_command(Some(&private.path), run_as);
    env.apply(&mut cmd);
    // An empty helper list makes git ignore the cell host's credential helpers, which
    // could otherwise hand a host credential to a repository the user named.
    cmd.args(["-c", "credential.helper=", "-c", "core.fsync=none"]);
    if let Some(p) = &pinned
        && matches!(c.repo.url.scheme(), RepoScheme::Http | RepoScheme::Https)
    {
        cmd.args(p.http_args());
    }
    // The operator's CA certificates (with the host's) for https repositories: in the
    // variable, which would otherwise win over any setting (the host's is passed through).
    if let Some(trust) = c.egress.trust() {
        cmd.env("GIT_SSL_CAINFO", trust.git_ca_file());
    }
    let local = c.repo.url.scheme() == RepoScheme::File;
    if local {
        // A repository on this host usually belongs to another uid than `run_as`; reading it
        // is what the user asked for, and upload-pack runs none of its hooks or filters.
        // It goes in a global file because git strips `-c` settings from the environment
        // of the local upload-pack.
        let global = private
            .write_secret("gitconfig", "[safe]\n\tdirectory = *\n", ids)
            .map_err(|e| GitError::Failed {
                message: format!("could not prepare git's configuration: {e}"),
            })?;
        cmd.env("GIT_CONFIG_GLOBAL", global);
    }
    // A whole clone, not a partial one: inside the workspace git has no credential and maybe
    // no network to fetch missing objects later, and a backup must hold the full history.
    cmd.args(["clone", "--no-hardlinks"]);
    match (&c.repo.branch, commit) {
        (_, Some(_)) => {
            cmd.arg("--no-checkout");
        }
        (Some(branch), None) => {
            cmd.arg(format!("--branch={branch}"));
        }
        (None, None) => {}
    }
    cmd.arg("--").arg(url).arg(seen(run_as, c.dest));
    let out = run(cmd).await?;
    if !out.ok {
        return Err(classify(&out.stderr, url, c.repo.branch.as_deref(), c.auth));
    }

    if let Some(sha) = commit {
        let mut cmd = git_command(Some(&private.path), run_as);
        env.apply(&mut cmd);
        cmd.arg("-C").arg(seen(run_as, c.dest)).args([
            "-c",
            "credential.helper=",
            "-c",
            "core.fsync=none",
            "checkout",
            "--quiet",
            "--detach",
            sha,
            "--",
        ]);
        let out = run(cmd).await?;
        if !out.ok {
            let e = classify(&out.stderr, url, Some(sha), c.auth);
            // The repository was found and read, so any "not found" now is about the commit.
            return Err(match e {
                GitError::NotFound { .. } => GitError::BranchNotFound { branch: sha.into() },
                GitError::Failed { message } if message.contains(sha) => {
                    GitError::BranchNotFound { branch: sha.into() }
                }
                other => other,
            });
        }
    }

    if matches!(c.auth, GitAuth::None) {
        // Nothing secret was handed to git, so nothing can have leaked into the clone.
        return Ok(());
    }
    check_no_credential(c.dest, c.auth, run_as).await
}

/// Fails if the credential ended up in the clone's configuration, where every process in
/// the workspace (and every backup) could read it.
async fn check_no_credential(
    dest: &Path,
    auth: &GitAuth,
    run_as: Option<&RunAs>,
) -> Result<(), GitError> {
    let mut cmd = git_command(None, run_as);
    cmd.arg("-C")
        .arg(seen(run_as, dest))
        .args(["config", "--local", "--get-regexp", "."]);
    let out = run(cmd).await?;
    if !out.ok {
        return Err(GitError::Failed {
            message: format!(
                "could not read the clone's configuration: {}",
                tail(&scrub(&out.stderr, auth))
            ),
        });
    }
    let config = String::from_utf8_lossy(&out.stdout);
    let lower = config.to_ascii_lowercase();
    let leaked = ["extraheader", "authorization", "private key", "sshcommand"]
        .iter()
        .any(|w| lower.contains(w))
        || scrub(&config, auth) != config;
    if leaked {
        return Err(GitError::Failed {
            message: "git stored the credential in the repository's configuration; \
                      the clone was removed"
                .into(),
        });
    }
    Ok(())
}

/// Removes what a failed clone left behind: the directory if this call created it, or its
/// contents if it existed (empty) before, e.g. as a mount point.
fn remove_clone(dest: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(dest);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dest) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

/// Whether a branch field names a commit (SHA-1 or SHA-256) rather than a branch.
fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A directory only the git process's user can enter, removed when dropped. It is git's
/// `HOME` (so the host's `~/.gitconfig` is not read) and holds the ssh key and known hosts.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(owner: Option<(u32, u32)>) -> io::Result<PrivateDir> {
        let base = std::env::temp_dir();
        for _ in 0..16 {
            let path = base.join(format!("devcell-git-{:016x}", rand::random::<u64>()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let dir = PrivateDir { path };
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid))?;
                    }
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary directory name",
        ))
    }

    /// Writes a file only its owner can read.
    fn write_secret(
        &self,
        name: &str,
        content: &str,
        owner: Option<(u32, u32)>,
    ) -> io::Result<PathBuf> {
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(content.as_bytes())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The environment variables that carry a credential to one git process.
struct AuthEnv {
    vars: Vec<(String, String)>,
}

impl AuthEnv {
    fn new(
        url: &RepoUrl,
        auth: &GitAuth,
        private: &PrivateDir,
        owner: Option<(u32, u32)>,
        pinned: Option<&Pinned>,
    ) -> io::Result<AuthEnv> {
        let mut vars = Vec::new();
        let known_hosts = private.path.join("known_hosts");
        // BatchMode makes ssh fail instead of prompting; accept-new trusts a host on first
        // contact, which is all a fresh workspace can do, and the list dies with the clone.
        let mut ssh = format!(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}{}",
            shell_quote(&known_hosts.to_string_lossy()),
            pinned.map(Pinned::ssh_args).unwrap_or_default()
        );
        match auth {
            GitAuth::None => {}
            GitAuth::Token { username, token } => {
                // The header is limited to the repository's origin so that a redirect to
                // another host does not receive it.
                let key = match origin(url) {
                    Some(origin) => format!("http.{origin}/.extraHeader"),
                    None => "http.extraHeader".to_owned(),
                };
                vars.push(("GIT_CONFIG_COUNT".into(), "1".into()));
                vars.push(("GIT_CONFIG_KEY_0".into(), key));
                vars.push((
                    "GIT_CONFIG_VALUE_0".into(),
                    format!("Authorization: Basic {}", basic(username, token)),
                ));
            }
            GitAuth::SshKey { private_key } => {
                // ssh refuses keys without the final newline, and pasted keys often carry
                // Windows line endings.
                let mut key = private_key.replace("\r\n", "\n");
                if !key.ends_with('\n') {
                    key.push('\n');
                }
                let path = private.write_secret("id_key", &key, owner)?;
                ssh = format!(
                    "ssh -i {} -o IdentitiesOnly=yes {}",
                    shell_quote(&path.to_string_lossy()),
                    &ssh["ssh ".len()..]
                );
            }
        }
        if let Some((uid, gid)) = owner {
            ssh = format!("{} {ssh}", as_named_user(private, uid, gid)?);
        }
        vars.push(("GIT_SSH_COMMAND".into(), ssh));
        Ok(AuthEnv { vars })
    }

    fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
    }
}

/// OpenSSH refuses to run as a uid without an account ("No user exists for uid"), and a
/// workspace's uid has none on the host. This prefix runs ssh under bubblewrap in a user
/// namespace that maps the uid to itself and shows an account for it in its own /etc/passwd;
/// nothing else changes (same root, same network).
fn as_named_user(private: &PrivateDir, uid: u32, gid: u32) -> io::Result<String> {
    let home = private.path.to_string_lossy();
    let passwd = private.write_secret(
        "passwd",
        &format!("root:x:0:0:root:/root:/bin/sh\ndev:x:{uid}:{gid}:dev:{home}:/bin/sh\n"),
        Some((uid, gid)),
    )?;
    let group = private.write_secret(
        "group",
        &format!("root:x:0:\ndev:x:{gid}:\n"),
        Some((uid, gid)),
    )?;
    Ok(format!(
        "bwrap --dev-bind / / --ro-bind {} /etc/passwd --ro-bind {} /etc/group --unshare-user --uid {uid} --gid {gid} --",
        shell_quote(&passwd.to_string_lossy()),
        shell_quote(&group.to_string_lossy())
    ))
}

/// `scheme://host[:port]` of an http(s) URL, the form git's `http.<url>.*` settings match.
fn origin(url: &RepoUrl) -> Option<String> {
    let parsed = url::Url::parse(url.as_str()).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    let host = parsed.host_str()?;
    Some(match parsed.port() {
        Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
        None => format!("{}://{host}", parsed.scheme()),
    })
}

fn basic(username: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{token}"))
}

/// Quotes a word for `sh`, which is how git runs `GIT_SSH_COMMAND`.
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

/// A `git` command with a controlled environment: no host or user configuration, English
/// messages (they are classified), no prompts, and stdin closed.
fn git_command(home: Option<&Path>, run_as: Option<&RunAs>) -> Command {
    // As another uid, git is started through setpriv (util-linux) when the host has it: the
    // cell then spawns with posix_spawn instead of forking itself (std forks to change the
    // uid), which, for a cell of this size, held a start up about a millisecond longer.
    static SETPRIV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let setpriv = run_as.filter(|r| r.via.is_none()).and_then(|r| {
        SETPRIV
            .get_or_init(|| {
                ["/usr/bin/setpriv", "/bin/setpriv"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .as_ref()
            .map(|p| (p, r.ids()))
    });
    let via = run_as.and_then(|r| r.via.as_ref());
    let mut cmd = match (setpriv, via) {
        (_, Some(via)) if !via.prefix.is_empty() => {
            // The launcher drops to the uid itself.
            let mut c = Command::new(&via.prefix[0]);
            c.args(&via.prefix[1..]).arg("git");
            c
        }
        (Some((setpriv, (uid, gid))), _) => {
            let mut c = Command::new(setpriv);
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--", "git"]);
            c
        }
        _ => Command::new("git"),
    };
    cmd.env_clear();
    for key in PASSED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if let Some(home) = home {
        cmd.env("HOME", home).env("XDG_CONFIG_HOME", home);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let (Some(r), None, None) = (run_as, setpriv, via) {
        // std drops the supplementary groups too when it switches from root.
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd
}

struct Output {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

async fn run(mut cmd: Command) -> Result<Output, GitError> {
    let child = cmd.spawn().map_err(|e| GitError::Failed {
        message: format!("could not start git ({e}); install git, e.g. `apt-get install git`"),
    })?;
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| GitError::Failed {
            message: format!("could not read git's output: {e}"),
        })?;
    Ok(Output {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Turns git's error output into an error a user can act on.
fn classify(stderr: &str, url: &str, branch: Option<&str>, auth: &GitAuth) -> GitError {
    let text = scrub(stderr, auth);
    let lower = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    let url = scrub(url, auth);
    if has(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "http 401",
        "http 403",
        "returned error: 401",
        "returned error: 403",
        "permission denied (publickey",
        "permission denied, please try again",
        "invalid username or password",
    ]) {
        return GitError::AuthFailed { url };
    }
    if let Some(branch) = branch {
        let branch_missing = (lower.contains("remote branch") && lower.contains("not found"))
            || has(&[
                "did not match any",
                "reference is not a tree",
                "unable to read tree",
                "not our ref",
                "unknown revision",
                "not a valid object name",
                "invalid reference",
            ]);
        if branch_missing {
            return GitError::BranchNotFound {
                branch: branch.to_owned(),
            };
        }
    }
    if has(&[
        "could not resolve host",
        "could not resolve hostname",
        "name or service not known",
        "temporary failure in name resolution",
        "connection refused",
        "failed to connect",
        "connection timed out",
        "operation timed out",
        "network is unreachable",
        "no route to host",
    ]) {
        let message = text
            .lines()
            .find(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("resolve") || l.contains("connect") || l.contains("unreachable")
            })
            .map(|l| l.trim().trim_start_matches("fatal: ").to_owned())
            .unwrap_or_default();
        return GitError::Unreachable { url, message };
    }
    if has(&[
        "not found",
        "does not appear to be a git repository",
        "http 404",
        "returned error: 404",
        "does not exist",
    ]) {
        return GitError::NotFound { url };
    }
    GitError::Failed {
        message: tail(&text),
    }
}

/// The last lines of `text`, at most [`MAX_MESSAGE_BYTES`], because git puts the cause last.
fn tail(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let mut start = text.len() - MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    // Start at a line boundary unless that would drop everything.
    match cut.find('\n') {
        Some(i) if i + 1 < cut.len() => cut[i + 1..].to_owned(),
        _ => cut.to_owned(),
    }
}

/// Removes secrets from text that may be shown to users or logged: the credential in use
/// (as given, Base64-encoded in a header, or percent-encoded in a URL) and the user
/// information of any URL that carries a password (or any user information over http,
/// where a lone user name is usually a token).
pub fn scrub(text: &str, auth: &GitAuth) -> String {
    let mut out = text.to_owned();
    match auth {
        GitAuth::None => {}
        GitAuth::Token { username, token } => {
            let mut secrets = vec![basic(username, token), token.clone()];
            let encoded = percent_encode(token);
            if encoded != *token {
                secrets.push(encoded);
            }
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        GitAuth::SshKey { private_key } => {
            // Only the key's body lines are secret; short lines could match ordinary text.
            for line in private_key.lines().map(str::trim) {
                if line.len() >= 16 && !line.starts_with("-----") {
                    out = out.replace(line, "***");
                }
            }
        }
    }
    scrub_userinfo(&out)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn scrub_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let scheme = before[..i]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let end = after
            .find(|c: char| c.is_whitespace() || "/?#'\"<>`".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at)
                if authority[..at].contains(':') || matches!(scheme.as_str(), "http" | "https") =>
            {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A directory name for a clone of `url`: the last path segment without `.git`, reduced
/// to `[A-Za-z0-9._-]`, never empty, never hidden and never `.` or `..`.
pub fn dir_name(url: &RepoUrl) -> String {
    let s = url.as_str();
    let path = match s.split_once("://") {
        Some((_, rest)) => rest.split(['?', '#']).next().unwrap_or(rest),
        None => s,
    };
    let segment = path
        .trim_end_matches(['/', '\\'])
        .rsplit(['/', ':', '\\'])
        .next()
        .unwrap_or("");
    let segment = match segment.len().checked_sub(4) {
        Some(i) if segment.is_char_boundary(i) && segment[i..].eq_ignore_ascii_case(".git") => {
            &segment[..i]
        }
        _ => segment,
    };
    let cleaned: String = segment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    // A leading dot would hide the directory (or make it `.git`); a leading dash reads as an
    // option to tools.
    let trimmed = cleaned.trim_start_matches(['.', '-']);
    let mut name: String = trimmed.chars().take(MAX_DIR_NAME).collect();
    if name.is_empty() {
        name = "repo".into();
    }
    name
}

/// What a user would lose by deleting a workspace: changes not committed and commits not pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoStatus {
    /// The repository's directory name.
    pub dir: String,
    /// `None` when HEAD is detached.
    pub branch: Option<String>,
    /// The full commit id of HEAD; `None` before the first commit.
    pub head: Option<String>,
    /// Modified, staged, deleted or renamed paths (at most 200).
    pub uncommitted: Vec<String>,
    /// Files git does not track and does not ignore (at most 200).
    pub untracked: Vec<String>,
    /// `"sha subject"` of commits on no remote-tracking branch, newest first (at most 100).
    pub unpushed: Vec<String>,
}

impl From<RepoStatus> for crate::domain::entities::GitState {
    fn from(s: RepoStatus) -> Self {
        crate::domain::entities::GitState {
            dir: s.dir,
            branch: s.branch,
            head: s.head,
            uncommitted: s.uncommitted,
            untracked: s.untracked,
            unpushed: s.unpushed,
        }
    }
}

impl RepoStatus {
    pub fn is_clean(&self) -> bool {
        self.uncommitted.is_empty() && self.untracked.is_empty() && self.unpushed.is_empty()
    }
}

/// Reads the status of the repository at `dir`.
///
/// The repository's own configuration is the workspace user's and untrusted (a filter or
/// `core.fsmonitor` runs commands), so pass the workspace's uid and gid as `run_as`.
pub async fn status(dir: &Path, run_as: Option<(u32, u32)>) -> Result<RepoStatus, GitError> {
    match tokio::time::timeout(STATUS_TIMEOUT, status_inner(dir, run_as)).await {
        Ok(r) => r,
        Err(_) => Err(GitError::Timeout {
            seconds: STATUS_TIMEOUT.as_secs(),
        }),
    }
}

async fn status_inner(dir: &Path, run_as: Option<(u32, u32)>) -> Result<RepoStatus, GitError> {
    let not_found = || GitError::NotFound {
        url: dir.display().to_string(),
    };
    if !dir.is_dir() {
        return Err(not_found());
    }
    // The files may belong to another uid; `--no-optional-locks` keeps git from rewriting
    // the index, which would leave files owned by the wrong user.
    let git = |args: &[&str]| {
        let as_user = run_as.map(|(uid, gid)| RunAs {
            uid,
            gid,
            via: None,
        });
        let mut cmd = git_command(None, as_user.as_ref());
        cmd.arg("-C").arg(dir).args([
            "-c",
            "safe.directory=*",
            "-c",
            "core.fsmonitor=false",
            "--no-optional-locks",
        ]);
        cmd.args(args);
        cmd
    };

    let out = run(git(&[
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
    ]))
    .await?;
    if !out.ok {
        if out.stderr.contains("not a git repository") {
            return Err(not_found());
        }
        return Err(GitError::Failed {
            message: tail(&out.stderr),
        });
    }
    let (uncommitted, untracked) = parse_porcelain(&out.stdout);

    let out = run(git(&["symbolic-ref", "--quiet", "--short", "HEAD"])).await?;
    let branch = out.ok.then(|| first_line(&out.stdout)).flatten();
    let out = run(git(&["rev-parse", "--quiet", "--verify", "HEAD"])).await?;
    let head = out.ok.then(|| first_line(&out.stdout)).flatten();

    let mut unpushed = Vec::new();
    if head.is_some() {
        let max = format!("--max-count={MAX_UNPUSHED}");
        let out = run(git(&[
            "log",
            "--format=%h %s",
            max.as_str(),
            "HEAD",
            "--not",
            "--remotes",
            "--",
        ]))
        .await?;
        if !out.ok {
            return Err(GitError::Failed {
                message: tail(&out.stderr),
            });
        }
        unpushed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
    }

    Ok(RepoStatus {
        dir: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        branch,
        head,
        uncommitted,
        untracked,
        unpushed,
    })
}

fn first_line(out: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(out);
    let line = s.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// Splits `git status --porcelain=v1 -z` output into (uncommitted, untracked) paths.
fn parse_porcelain(out: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut uncommitted = Vec::new();
    let mut untracked = Vec::new();
    let mut fields = out.split(|b| *b == 0);
    while let Some(entry) = fields.next() {
        if entry.len() < 4 {
            continue;
        }
        let (x, y) = (entry[0], entry[1]);
        let path = String::from_utf8_lossy(&entry[3..]).into_owned();
        // A rename or copy is followed by a field with the original path.
        if matches!(x, b'R' | b'C') || matches!(y, b'R' | b'C') {
            fields.next();
        }
        let list = match (x, y) {
            (b'?', b'?') => &mut untracked,
            (b'!', b'!') => continue,
            _ => &mut uncommitted,
        };
        if list.len() < MAX_STATUS_ENTRIES {
            list.push(path);
        }
    }
    (uncommitted, untracked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> GitAuth {
        GitAuth::Token {
            username: "dev".into(),
            token: "ghp_s3cr3t/+tok".into(),
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let t = format!("{:?}", token());
        assert!(t.contains("dev") && !t.contains("s3cr3t"), "{t}");
        let k = GitAuth::SshKey {
            private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecret\n".into(),
        };
        assert!(!format!("{k:?}").contains("AAAAsecret"));
    }

    #[test]
    fn scrub_removes_token_header_and_url_passwords() {
        let auth = token();
        let b64 = basic("dev", "ghp_s3cr3t/+tok");
        let text = format!(
            "fatal: token ghp_s3cr3t/+tok in header Basic {b64}\n\
             url https://dev:ghp_s3cr3t%2F%2Btok@example.com/x.git\n\
             other https://alice:hunter2@host:8443/path and http://tokenonly@host/r\n\
             keep ssh://git@host:22/r and git@github.com:o/r.git"
        );
        let s = scrub(&text, &auth);
        for secret in ["s3cr3t", "hunter2", "tokenonly", b64.as_str()] {
            assert!(!s.contains(secret), "{secret} left in {s}");
        }
        assert!(s.contains("https://***@host:8443/path"), "{s}");
        assert!(s.contains("http://***@host/r"), "{s}");
        assert!(s.contains("ssh://git@host:22/r"), "{s}");
        assert!(s.contains("git@github.com:o/r.git"), "{s}");
    }

    #[test]
    fn scrub_handles_empty_token_and_no_auth() {
        let auth = GitAuth::Token {
            username: "u".into(),
            token: String::new(),
        };
        assert_eq!(scrub("plain text", &auth), "plain text");
        assert_eq!(scrub("plain text", &GitAuth::None), "plain text");
        assert_eq!(
            scrub("see ftp://u:p@h/x", &GitAuth::None),
            "see ftp://***@h/x"
        );
    }

    #[test]
    fn scrub_removes_key_lines() {
        let auth = GitAuth::SshKey {
            private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n".into(),
        };
        let s = scrub("oops b3BlbnNzaC1rZXktdjEAAAAA", &auth);
        assert_eq!(s, "oops ***");
    }

    #[test]
    fn classify_maps_git_messages() {
        let auth = token();
        let url = "https://example.com/o/r.git";
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                "fatal: Authentication failed for 'https://example.com/o/r.git/'",
                None,
                "repo_auth_failed",
            ),
            (
                "fatal: could not read Username for 'https://example.com': terminal prompts disabled",
                None,
                "repo_auth_failed",
            ),
            (
                "fatal: unable to access 'x': The requested URL returned error: 403",
                None,
                "repo_auth_failed",
            ),
            (
                "git@host: Permission denied (publickey).",
                None,
                "repo_auth_failed",
            ),
            (
                "warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope not found in upstream origin",
                Some("nope"),
                "branch_not_found",
            ),
            (
                "error: pathspec 'abc' did not match any file(s) known to git",
                Some("abc"),
                "branch_not_found",
            ),
            (
                "fatal: repository 'https://example.com/o/r.git/' not found",
                None,
                "repo_not_found",
            ),
            (
                "fatal: '/tmp/x' does not appear to be a git repository",
                None,
                "repo_not_found",
            ),
            (
                "fatal: unable to access 'x': The requested URL returned error: 404",
                None,
                "repo_not_found",
            ),
            (
                "fatal: unable to access 'x': Could not resolve host: nowhere.invalid",
                None,
                "repo_unreachable",
            ),
            (
                "fatal: unable to access 'x': Failed to connect to 127.0.0.1 port 1: Connection refused",
                None,
                "repo_unreachable",
            ),
            (
                "ssh: Could not resolve hostname nowhere: Name or service not known",
                None,
                "repo_unreachable",
            ),
            ("fatal: something odd happened", None, "git_failed"),
        ];
        for (stderr, branch, code) in cases {
            let e = classify(stderr, url, *branch, &auth);
            assert_eq!(e.code(), *code, "{stderr} -> {e}");
        }
    }

    #[test]
    fn classify_scrubs_messages() {
        let auth = token();
        let e = classify(
            "fatal: weird failure with ghp_s3cr3t/+tok inside",
            "https://example.com/r",
            None,
            &auth,
        );
        assert_eq!(e.code(), "git_failed");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let e = classify(
            "fatal: Could not resolve host: h",
            "https://u:ghp_s3cr3t/+tok@h/r",
            None,
            &auth,
        );
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn failed_messages_keep_the_last_two_kilobytes() {
        let long: String = (0..500).map(|i| format!("line {i}\n")).collect();
        let t = tail(&long);
        assert!(t.len() <= MAX_MESSAGE_BYTES);
        assert!(t.ends_with("line 499"));
        assert!(t.starts_with("line "), "{}", &t[..20]);
        assert_eq!(tail("é".repeat(3000).as_str()).len() % 2, 0);
    }

    #[test]
    fn dir_names_are_safe() {
        let cases = [
            ("https://github.com/owner/repo.git", "repo"),
            ("https://github.com/owner/repo", "repo"),
            ("https://github.com/owner/repo/", "repo"),
            ("https://host/owner/My%20Repo.GIT?x=1#frag", "My-20Repo"),
            ("git@github.com:owner/dotfiles.git", "dotfiles"),
            ("git@host:repo.git", "repo"),
            ("ssh://git@host:22/srv/git/project.git", "project"),
            ("file:///tmp/x/bare.git", "bare"),
            ("file:///tmp/x/.git", "repo"),
            ("file:///tmp/x/..", "repo"),
            ("file:///tmp/x/...git", "repo"),
            ("file:///tmp/x/.hidden", "hidden"),
            ("file:///tmp/x/-rf", "rf"),
            ("https://host/o/ünï", "n-"),
            ("https://host/o/%%%.git", "repo"),
        ];
        for (url, want) in cases {
            let got = dir_name(&RepoUrl::from_stored(url.into()));
            assert_eq!(got, want, "{url}");
        }
        let long = format!("https://host/{}", "a".repeat(300));
        assert_eq!(dir_name(&RepoUrl::from_stored(long)).len(), MAX_DIR_NAME);
    }

    #[test]
    fn commit_ids() {
        assert!(is_commit_id(&"a1".repeat(20)));
        assert!(is_commit_id(&"F0".repeat(32)));
        assert!(!is_commit_id("main"));
        assert!(!is_commit_id(&"g1".repeat(20)));
        assert!(!is_commit_id("abc123"));
    }

    #[test]
    fn porcelain_parsing() {
        let out =
            b" M src/a.rs\0A  new.rs\0R  to.rs\0from.rs\0 D gone\0?? notes/x y.txt\0!! ignored\0";
        let (uncommitted, untracked) = parse_porcelain(out);
        assert_eq!(uncommitted, ["src/a.rs", "new.rs", "to.rs", "gone"]);
        assert_eq!(untracked, ["notes/x y.txt"]);
        let many: Vec<u8> = (0..300)
            .flat_map(|i| format!("?? f{i}\0").into_bytes())
            .collect();
        assert_eq!(parse_porcelain(&many).1.len(), MAX_STATUS_ENTRIES);
    }

    #[test]
    fn ssh_command_quotes_paths_and_keeps_key_private() {
        let private = PrivateDir::create(None).unwrap();
        let url = RepoUrl::from_stored("git@host:o/r.git".into());
        let auth = GitAuth::SshKey {
            private_key: "KEYDATA".into(),
        };
        let env = AuthEnv::new(&url, &auth, &private, None, None).unwrap();
        let (_, ssh) = env
            .vars
            .iter()
            .find(|(k, _)| k == "GIT_SSH_COMMAND")
            .unwrap();
        assert!(ssh.starts_with("ssh -i "), "{ssh}");
        assert!(ssh.contains("-o IdentitiesOnly=yes"), "{ssh}");
        assert!(ssh.contains("-o BatchMode=yes"), "{ssh}");
        assert!(!ssh.contains("KEYDATA"));
        let key = private.path.join("id_key");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&private.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "KEYDATA\n");
        let path = private.path.clone();
        drop(private);
        assert!(!path.exists(), "the private directory outlived the clone");
        assert_eq!(shell_quote("/tmp/a b/it's"), r"'/tmp/a b/it'\''s'");
    }

    #[test]
    fn token_header_is_scoped_to_the_origin() {
        let private = PrivateDir::create(None).unwrap();
        let url = RepoUrl::from_stored("https://git.example.com:8443/o/r.git".into());
        let env = AuthEnv::new(&url, &token(), &private, None, None).unwrap();
        let get = |k: &str| {
            env.vars
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("GIT_CONFIG_KEY_0").as_deref(),
            Some("http.https://git.example.com:8443/.extraHeader")
        );
        assert!(
            get("GIT_CONFIG_VALUE_0")
                .unwrap()
                .starts_with("Authorization: Basic ")
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accept connections and hold them open without answering.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let tmp = std::env::temp_dir().join(format!("devcell-timeout-{:x}", rand::random::<u64>()));
        let repo = RepoSpec::new(&format!("http://127.0.0.1:{port}/r.git"), None).unwrap();
        let dest = tmp.join("r");
        let e = clone_within(
            Clone {
                repo: &repo,
                dest: &dest,
                auth: &GitAuth::None,
                run_as: None,
                egress: &crate::content::egress::Egress::new(&["127.0.0.1".into()]).unwrap(),
            },
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "git_timeout", "{e}");
        assert!(!dest.exists());
        holder.abort();
        let _ = std::fs::remove_dir_all(tmp);
    }
}
