//! The local runtime: each workspace is a bubblewrap sandbox (user, mount, pid, network, uts
//! and ipc namespaces, a read-only view of the host's system directories, a writable
//! `/workspace` and home) whose processes sit in a cgroup with the class limits.
//!
//! Bubblewrap was chosen over hand-written namespace code: it is small, maintained, audited,
//! works unprivileged and as root, and needs no daemon (crun and podman fail on this host's
//! hybrid cgroups). The sandbox is launched through `devcell sandbox-exec`, which puts itself
//! into the workspace's cgroups and then becomes bubblewrap, so no process of the workspace
//! ever runs outside its limits. The sandbox is not tied to the cell's lifetime: it survives a
//! restart or update of the cell, which reconnects to its agent.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cgroup::{Cgroup, Hierarchy};
use super::disk::{Disks, Files};
use super::rebase::{self, Rebase};
use super::{Runtime, RuntimeError, SandboxSpec, SandboxUser};
use crate::domain::WorkspaceId;
use futures::future::BoxFuture;

/// Inside the sandbox.
pub const WORKSPACE_MOUNT: &str = "/workspace";
pub const HOME_MOUNT: &str = "/home/dev";
pub const RUN_MOUNT: &str = "/run/devcell";
const AGENT_PATH: &str = "/.devcell/devcell";
const AGENT_LIBS: &str = "/.devcell/lib";

/// Every sandbox's namespaces of its own: user, pid, ipc, uts, cgroup and network.
const NAMESPACES: &[&str] = &[
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--unshare-net",
];

/// How long reading the git state of a workspace's repositories may take.
const GIT_STATE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// What a sandbox on the host's root sees of it.
const HOST_DIRS: &[&str] = &[
    "usr", "etc", "opt", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
];

/// The default image: the host's system directories, read-only. Nothing else of the host
/// (homes, /root, /var, /srv, the cell's data directory) is visible.
fn host_root(push: &mut impl FnMut(&[&str])) {
    for dir in HOST_DIRS {
        bind_entry(Path::new("/"), Path::new("/"), dir, push);
    }
}

/// Whether a sandbox on `root` (an image's root filesystem, or `None` for the host's) has the
/// top-level `name` from it, or keeps it for itself.
pub fn root_has(root: Option<&Path>, name: &str) -> bool {
    SANDBOX_OWN.contains(&name)
        || match root {
            Some(r) => std::fs::symlink_metadata(r.join(name)).is_ok(),
            None => HOST_DIRS.contains(&name) && Path::new("/").join(name).exists(),
        }
}

/// Top-level names of a sandbox's root that are its own, never an image's.
pub(crate) const SANDBOX_OWN: &[&str] = &[
    "proc",
    "dev",
    "sys",
    "tmp",
    "run",
    "workspace",
    "home",
    ".devcell",
];

/// An image's root filesystem, read-only, entry by entry (so that /workspace, /tmp and the
/// rest can be mounted on the sandbox's own root).
fn image_root(rootfs: &Path, seen_as: &str, push: &mut impl FnMut(&[&str])) {
    const OWN: &[&str] = SANDBOX_OWN;
    let Ok(entries) = std::fs::read_dir(rootfs) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names.iter().filter(|n| !OWN.contains(&n.as_str())) {
        bind_entry(rootfs, Path::new(seen_as), name, push);
    }
}

/// Mounts `base/name` (which bubblewrap sees as `seen_as/name`) at `/name`: directories and
/// files read-only, symlinks as symlinks.
fn bind_entry(base: &Path, seen_as: &Path, name: &str, push: &mut impl FnMut(&[&str])) {
    let src = base.join(name);
    let dest = format!("/{name}");
    match std::fs::symlink_metadata(&src) {
        Ok(m) if m.file_type().is_symlink() => {
            if let Ok(target) = std::fs::read_link(&src) {
                push(&["--symlink", &target.to_string_lossy(), &dest]);
            }
        }
        Ok(m) if m.is_dir() || m.is_file() => {
            push(&["--ro-bind", &seen_as.join(name).to_string_lossy(), &dest])
        }
        _ => {}
    }
}

/// Where the sandbox's `/etc/passwd` and `/etc/group` are kept: root's, beside the files the
/// sandbox writes, bound read-only over the root's own.
const ACCOUNTS_DIR: &str = ".etc";

/// `/etc/passwd` and `/etc/group` for a sandbox on `root` (the host's `/` or an image): the
/// root's own accounts, with the workspace's user's ids named as it is (by default `dev`, uid
/// and gid 1000: the host may name 1000 after one of its own users, which would show in every
/// prompt) and its home where the sandbox mounts it.
fn accounts(root: &Path, user: &SandboxUser) -> (String, String) {
    let read = |rel: &str| {
        crate::beneath::Dir::open(root)
            .and_then(|d| d.read_file(Path::new(rel), 1 << 20, true))
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let others = |text: &str, name: &str, id: u32| -> String {
        text.lines()
            .filter(|l| {
                let f: Vec<&str> = l.split(':').collect();
                !l.trim().is_empty()
                    && f.first() != Some(&name)
                    && f.get(2) != Some(&id.to_string().as_str())
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let group_name = if user.gid == user.uid {
        user.name.clone()
    } else {
        // The group's own name when the root has one for the gid.
        read("etc/group")
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2) == Some(&user.gid.to_string().as_str())).then(|| f[0].to_owned())
            })
            .unwrap_or_else(|| user.name.clone())
    };
    let has_bash = crate::beneath::Dir::open(root)
        .and_then(|d| d.open_regular(Path::new("bin/bash"), true))
        .is_ok_and(|f| f.is_some());
    let shell = if has_bash { "/bin/bash" } else { "/bin/sh" };
    let SandboxUser {
        name,
        uid,
        gid,
        home,
    } = user;
    (
        format!(
            "{}{name}:x:{uid}:{gid}:{name}:{home}:{shell}\n",
            others(&read("etc/passwd"), name, *uid)
        ),
        format!(
            "{}{group_name}:x:{gid}:\n",
            others(&read("etc/group"), &group_name, *gid)
        ),
    )
}

/// Writes the sandbox's account files into `dir/.etc` (see [`accounts`]).
fn write_accounts(dir: &Path, root: &Path, user: &SandboxUser) -> std::io::Result<PathBuf> {
    let etc = dir.join(ACCOUNTS_DIR);
    match std::fs::DirBuilder::new().mode(0o711).create(&etc) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let (passwd, group) = accounts(root, user);
    for (name, text) in [("passwd", passwd), ("group", group)] {
        let tmp = etc.join(format!("{name}.new"));
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, etc.join(name))?;
    }
    Ok(etc)
}

/// The shared libraries this process has loaded (the agent is this binary), including the
/// dynamic loader, read from /proc/self/maps.
fn host_libraries() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// The file name of the dynamic loader among [`host_libraries`].
fn loader_name() -> String {
    host_libraries()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .find(|n| n.starts_with("ld-linux") || n.starts_with("ld-musl"))
        .unwrap_or_else(|| "ld-linux-x86-64.so.2".into())
}

pub struct LocalRuntime {
    hierarchy: Hierarchy,
    disks: Disks,
    /// The executable to run as the agent and launcher (this binary).
    exe: PathBuf,
    bwrap: PathBuf,
    /// A launcher started ahead, waiting for its sandbox (see [`Spare`]).
    spare: Arc<std::sync::Mutex<Option<Spare>>>,
    /// The launchers this cell started per workspace (sandboxes and services), for a stop
    /// to end: one still on its way into the workspace's cgroups would otherwise escape the
    /// stop and start its sandbox after it.
    launchers: Arc<std::sync::Mutex<HashMap<WorkspaceId, Vec<KillLauncher>>>>,
}

/// Asks a launcher's supervisor to kill it; answered once it is reaped.
type KillLauncher = tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>;

impl LocalRuntime {
    pub fn new() -> Result<LocalRuntime, RuntimeError> {
        let bwrap = which("bwrap").ok_or_else(|| {
            RuntimeError::Start("bubblewrap is not installed: apt-get install -y bubblewrap".into())
        })?;
        let exe = std::env::current_exe()?;
        if rustix::process::geteuid().is_root()
            && let Err(e) = rebase::make_mount_point()
        {
            tracing::warn!(error = %e, dir = rebase::REBASE_MOUNT, "workspaces whose files are under a private directory cannot start");
        }
        Ok(LocalRuntime {
            hierarchy: Hierarchy::detect(),
            disks: Disks::detect(),
            exe,
            bwrap,
            spare: Arc::default(),
            launchers: Arc::default(),
        })
    }

    /// Hands a launcher of workspace `id` to its supervisor (see [`Launch::supervise`]),
    /// recorded for the workspace's stop to end.
    fn supervise(&self, launch: Launch, child: tokio::process::Child, id: &WorkspaceId) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut l) = self.launchers.lock() {
            let list = l.entry(id.clone()).or_default();
            // Those whose supervisor ended (their sandbox is gone) are dropped on the way.
            list.retain(|k| !k.is_closed());
            list.push(tx);
        }
        tokio::spawn(launch.supervise(child, id.clone(), rx));
    }

    /// What a launcher for `spec` binds where the workspace's uid can walk: nothing when the
    /// cell does not drop to another uid or that uid reaches the workspace's directory, this
    /// binary and the image; else all three (see [`Rebase`]).
    fn rebase(&self, spec: &SandboxSpec) -> Option<Rebase> {
        spec.uid?;
        let paths = [Some(&spec.dir), Some(&self.exe), spec.root.as_ref()];
        if paths.iter().flatten().all(|p| rebase::walkable(p)) {
            return None;
        }
        let dir = rebase::absolute(&spec.dir);
        let mut binds = vec![
            (dir.clone(), "ws".to_owned()),
            (rebase::absolute(&self.exe), "agent".to_owned()),
        ];
        if let Some(root) = &spec.root {
            binds.push((rebase::absolute(root), "root".to_owned()));
        }
        Some(Rebase {
            binds,
            detach_under: dir.parent().unwrap_or(&dir).to_owned(),
            overlays: Vec::new(),
            join_net: None,
        })
    }

    /// Uses `exe` as the agent binary (tests run from a test harness, not from `devcell`).
    pub fn with_exe(mut self, exe: PathBuf) -> LocalRuntime {
        self.exe = exe;
        self
    }

    /// Without disk-size limits (tests of other limits on hosts where they are not wanted).
    pub fn without_disk_limits(mut self, reason: &str) -> LocalRuntime {
        self.disks = Disks::off(reason);
        self
    }

    /// The bubblewrap arguments for a workspace (without the launcher), with the paths as the
    /// launcher's namespace shows them (`rebase`).
    fn bwrap_args(&self, spec: &SandboxSpec, rebase: Option<&Rebase>) -> Vec<String> {
        let seen = |p: &Path| seen_by_launcher(rebase, p);
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(NAMESPACES);
        // Always a network namespace of its own: only loopback, unless the organization allows
        // outbound access, which slirp4netns then adds (see `connect_outbound`).
        // A new session: no terminal of the cell can be reached (TIOCSTI).
        push(&["--new-session"]);
        // The default seccomp filter (see `seccomp`), read by bubblewrap from its standard input.
        push(&["--seccomp", "0"]);
        match &spec.root {
            Some(rootfs) => image_root(rootfs, &seen(rootfs), &mut push),
            None => host_root(&mut push),
        }
        let d = |sub: &str| seen(&spec.dir.join(sub));
        push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        // An image's read-only /var without a tmp directory has no place for one.
        let var_tmp = match &spec.root {
            Some(rootfs) => !rootfs.join("var").is_dir() || rootfs.join("var/tmp").is_dir(),
            None => true,
        };
        if var_tmp {
            push(&["--tmpfs", "/var/tmp"]);
        }
        push(&[
            "--bind",
            &d("workspace"),
            WORKSPACE_MOUNT,
            "--bind",
            &d("home"),
            &spec.user.home,
            "--bind",
            &d("run"),
            RUN_MOUNT,
        ]);
        // Links where the repository's configuration expects its files, in directories of the
        // sandbox's own root (bubblewrap would make them for the root user only).
        for (path, target) in &spec.links {
            let mut parent = Path::new(path).parent();
            let mut dirs = Vec::new();
            while let Some(p) = parent.filter(|p| *p != Path::new("/")) {
                dirs.push(p.to_string_lossy().into_owned());
                parent = p.parent();
            }
            for dir in dirs.iter().rev() {
                push(&["--perms", "0755", "--dir", dir]);
            }
            push(&["--symlink", target, path]);
        }
        push(&["--ro-bind", &seen(&self.exe), AGENT_PATH]);
        // Over the root's own files only: a read-only /etc without them has no place for them.
        let root = crate::beneath::Dir::open(spec.root.as_deref().unwrap_or(Path::new("/")));
        for name in ["passwd", "group"] {
            let there = root.as_ref().is_ok_and(|d| {
                d.open_regular(&Path::new("etc").join(name), true)
                    .is_ok_and(|f| f.is_some())
            });
            if there {
                push(&[
                    "--ro-bind",
                    &seen(&spec.dir.join(ACCOUNTS_DIR).join(name)),
                    &format!("/etc/{name}"),
                ]);
            }
        }
        let host = format!(
            "ws-{}",
            &spec.id.as_str()[spec.id.as_str().len().saturating_sub(8)..]
        );
        let (uid, gid) = (spec.user.uid.to_string(), spec.user.gid.to_string());
        push(&["--hostname", &host, "--uid", &uid, "--gid", &gid]);
        push(&[
            "--setenv",
            "HOME",
            &spec.user.home,
            "--setenv",
            "USER",
            &spec.user.name,
            "--setenv",
            "DEVCELL_WORKSPACE_ID",
            spec.id.as_str(),
        ]);
        push(&[
            "--setenv",
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]);
        push(&["--chdir", WORKSPACE_MOUNT]);
        if spec.root.is_some() {
            // The image may have another C library, or none: the agent runs with the host's
            // loader and libraries, mounted privately under /.devcell/lib.
            for lib in host_libraries() {
                if let Some(name) = lib.file_name() {
                    let inside = format!("{AGENT_LIBS}/{}", name.to_string_lossy());
                    push(&["--ro-bind", &lib.to_string_lossy(), &inside]);
                }
            }
            let loader = format!("{AGENT_LIBS}/{}", loader_name());
            push(&[
                "--",
                &loader,
                "--library-path",
                AGENT_LIBS,
                AGENT_PATH,
                "agent",
                "--run",
                RUN_MOUNT,
            ]);
        } else {
            push(&["--", AGENT_PATH, "agent", "--run", RUN_MOUNT]);
        }
        a
    }
}

impl LocalRuntime {
    /// The bubblewrap arguments of a short-lived sandbox that runs one of this binary's tools
    /// (`argv`, after the program) over a workspace's files: the host's system directories and
    /// the workspace's `/workspace`, both read-only, no network, a pid namespace that ends
    /// every process with the tool, run as the workspace's user.
    fn tool_args(
        &self,
        spec: &SandboxSpec,
        rebase: Option<&Rebase>,
        argv: &[String],
    ) -> Vec<String> {
        let seen = |p: &Path| seen_by_launcher(rebase, p);
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(NAMESPACES);
        push(&["--new-session", "--die-with-parent", "--seccomp", "0"]);
        host_root(&mut push);
        push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        push(&[
            "--ro-bind",
            &seen(&spec.dir.join("workspace")),
            WORKSPACE_MOUNT,
            "--ro-bind",
            &seen(&self.exe),
            AGENT_PATH,
        ]);
        push(&["--uid", "1000", "--gid", "1000", "--chdir", WORKSPACE_MOUNT]);
        push(&[
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--",
            AGENT_PATH,
        ]);
        a.extend(argv.iter().cloned());
        a
    }

    /// Runs one of this binary's tools in a sandbox of the workspace (see [`Self::tool_args`])
    /// in a cgroup of its own with the class limits, and returns what it printed (at most
    /// `max` bytes). Everything it started is gone when this returns.
    async fn run_tool(
        &self,
        spec: &SandboxSpec,
        tool: &str,
        argv: &[String],
        max: u64,
        within: std::time::Duration,
    ) -> Result<Vec<u8>, RuntimeError> {
        use tokio::io::AsyncReadExt;
        let name = format!("{}_{tool}", spec.id.as_str());
        let cg = Gone(match &self.hierarchy {
            Hierarchy::Unavailable { .. } => None,
            h => Some(h.create(&name, &spec.limits)?),
        });
        let filter = spec.state.join(format!("{tool}.bpf"));
        let result = async {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&spec.state)?;
            super::seccomp::write_default_filter(&filter)
                .map_err(|e| RuntimeError::Start(e.to_string()))?;
            let mut cmd = launcher(&self.exe);
            for f in cg.0.as_ref().map(|c| c.procs_files()).unwrap_or_default() {
                cmd.arg("--cgroup-procs").arg(f);
            }
            if let Some((u, g)) = spec.uid {
                cmd.args(["--uid", &u.to_string(), "--gid", &g.to_string()]);
            }
            let rebase = self.rebase(spec);
            if let Some(r) = &rebase {
                cmd.arg("--rebase").arg(rebase_arg(r)?);
            }
            cmd.arg("--")
                .arg(&self.bwrap)
                .args(self.tool_args(spec, rebase.as_ref(), argv))
                .stdin(std::fs::File::open(&filter)?)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|e| RuntimeError::Start(format!("{}: {e}", self.exe.display())))?;
            let mut out = Vec::new();
            let stdout = child.stdout.take();
            let read = async {
                if let Some(s) = stdout {
                    // Whatever runs in there may write to this pipe too: read no more than `max`.
                    s.take(max).read_to_end(&mut out).await?;
                }
                child.wait().await
            };
            let status = tokio::time::timeout(within, read).await.map_err(|_| {
                RuntimeError::Start(format!("{tool} did not finish within {within:?}"))
            })??;
            if !status.success() {
                return Err(RuntimeError::Start(format!("{tool} failed ({status})")));
            }
            Ok(out)
        }
        .await;
        drop(cg);
        let _ = std::fs::remove_file(&filter);
        result
    }
}

impl LocalRuntime {
    /// Starts a compose service beside a running workspace: in the workspace's cgroups (its
    /// class limits cover the group, and its stop ends the service), in the workspace
    /// sandbox's network namespace (so `localhost` is shared), as the workspace's uid, on the
    /// service's image read-only with its named volumes writable.
    async fn run_service(
        &self,
        spec: &SandboxSpec,
        svc: &super::ServiceRun,
    ) -> Result<(), RuntimeError> {
        if !rustix::process::geteuid().is_root() {
            return Err(RuntimeError::Start(
                "compose services need the cell to run as root (they join the workspace's network)"
                    .into(),
            ));
        }
        let cg = self.hierarchy.open(spec.id.as_str());
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let pids = cg.as_ref().map(|c| c.pids()).unwrap_or_default();
        let net = pids
            .into_iter()
            .find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != ours)
            })
            .ok_or_else(|| RuntimeError::Start("the workspace's sandbox is not running".into()))?;
        let filter = spec.state.join(format!("service-{}.bpf", svc.name));
        super::seccomp::write_default_filter(&filter)
            .map_err(|e| RuntimeError::Start(e.to_string()))?;
        let mut binds = vec![(rebase::absolute(&svc.root), "root".to_owned())];
        for (i, (host, _)) in svc.volumes.iter().enumerate() {
            binds.push((rebase::absolute(host), format!("vol{i}")));
        }
        let r = Rebase {
            binds,
            detach_under: spec.dir.parent().unwrap_or(&spec.dir).to_owned(),
            overlays: Vec::new(),
            join_net: Some(net),
        };
        let at = |name: &str| format!("{}/{name}", rebase::REBASE_MOUNT);
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(
            NAMESPACES
                .iter()
                .copied()
                .filter(|n| *n != "--unshare-net")
                .collect::<Vec<_>>()
                .as_slice(),
        );
        push(&["--new-session", "--seccomp", "0"]);
        image_root(&svc.root, &at("root"), &mut push);
        push(&[
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
        ]);
        for (i, (_, target)) in svc.volumes.iter().enumerate() {
            push(&["--bind", &at(&format!("vol{i}")), target]);
        }
        push(&["--uid", "0", "--gid", "0", "--hostname", &svc.name]);
        push(&["--chdir", &svc.workdir]);
        for (k, v) in &svc.env {
            push(&["--setenv", k, v]);
        }
        push(&["--"]);
        a.extend(svc.argv.iter().cloned());
        let launch = Launch {
            exe: self.exe.clone(),
            request: SandboxRequest {
                cgroup_procs: cg.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
                uid: spec.uid,
                argv: std::iter::once(self.bwrap.to_string_lossy().into_owned())
                    .chain(a)
                    .collect(),
                stdin: filter,
                log: svc.log.clone(),
                rebase: Some(r),
            },
        };
        let child = launch
            .spawn()
            .map_err(|e| RuntimeError::Start(format!("{}: {e}", self.exe.display())))?;
        self.supervise(launch, child, &spec.id);
        Ok(())
    }
}

/// How long one build step may run.
const BUILD_STEP_WITHIN: std::time::Duration = std::time::Duration::from_secs(3600);

impl LocalRuntime {
    /// Runs a build step: the launcher (root, in a mount namespace of its own) mounts the
    /// step's overlay and binds the context and this binary under [`rebase::REBASE_MOUNT`],
    /// drops to `uid` and becomes bubblewrap, which makes the overlay the root (writable),
    /// maps `uid` to the step's user and runs the command; in a cgroup of its own with the
    /// class's limits, without network unless the workspace has it.
    async fn run_build_step(
        &self,
        spec: &SandboxSpec,
        step: &crate::content::image::build::StepRun,
        uid: u32,
    ) -> Result<i32, RuntimeError> {
        use crate::content::image::build::{CONTEXT_MOUNT, FROM_MOUNT, StepCommand};
        if !rustix::process::geteuid().is_root() {
            return Err(RuntimeError::Start(
                "building an image needs the cell to run as root (it mounts the build's overlay)"
                    .into(),
            ));
        }
        let t = std::time::Instant::now();
        // A cgroup of its own per step: the last step's may still be going away (below).
        static STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cg = Gone(match &self.hierarchy {
            Hierarchy::Unavailable { .. } => None,
            h => Some(h.create(&format!("{}_build{n}", spec.id.as_str()), &spec.limits)?),
        });
        tracing::debug!(
            us = t.elapsed().as_micros() as u64,
            "build step: cgroup made"
        );
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&spec.state)?;
        let filter = spec.state.join("build.bpf");
        super::seccomp::write_default_filter(&filter)
            .map_err(|e| RuntimeError::Start(e.to_string()))?;
        let mut binds = vec![(rebase::absolute(&self.exe), "agent".to_owned())];
        if let Some(c) = &step.context {
            binds.push((rebase::absolute(c), "context".to_owned()));
        }
        let mut overlays = vec![rebase::Overlay {
            name: "root".into(),
            lowers: step.lowers.clone(),
            upper: Some(step.upper.clone()),
            work: Some(step.work.clone()),
        }];
        if let Some(from) = &step.from {
            overlays.push(rebase::Overlay {
                name: "from".into(),
                lowers: from.clone(),
                upper: None,
                work: None,
            });
        }
        let r = Rebase {
            binds,
            detach_under: spec.dir.parent().unwrap_or(&spec.dir).to_owned(),
            overlays,
            join_net: None,
        };
        let at = |name: &str| format!("{}/{name}", rebase::REBASE_MOUNT);
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(NAMESPACES);
        push(&["--new-session", "--die-with-parent", "--seccomp", "0"]);
        push(&[
            "--bind",
            &at("root"),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]);
        push(&["--ro-bind", &at("agent"), AGENT_PATH]);
        if step.context.is_some() {
            push(&["--ro-bind", &at("context"), CONTEXT_MOUNT]);
        }
        if step.from.is_some() {
            push(&["--ro-bind", &at("from"), FROM_MOUNT]);
        }
        let (u, g) = step.user;
        push(&["--uid", &u.to_string(), "--gid", &g.to_string()]);
        push(&["--hostname", "build", "--chdir", &step.workdir]);
        for (k, v) in &step.env {
            push(&["--setenv", k, v]);
        }
        match &step.command {
            StepCommand::Exec(argv) => {
                push(&["--"]);
                a.extend(argv.iter().cloned());
            }
            StepCommand::Tool(argv) => {
                for lib in host_libraries() {
                    if let Some(name) = lib.file_name() {
                        let inside = format!("{AGENT_LIBS}/{}", name.to_string_lossy());
                        push(&["--ro-bind", &lib.to_string_lossy(), &inside]);
                    }
                }
                let loader = format!("{AGENT_LIBS}/{}", loader_name());
                push(&["--", &loader, "--library-path", AGENT_LIBS, AGENT_PATH]);
                a.extend(argv.iter().cloned());
            }
        }
        // Bubblewrap setting up loopback in a fresh network namespace occasionally fails with
        // ECHILD while many namespaces are made at once (see `Launch::supervise`); it fails
        // before running anything, so the step is tried again.
        for attempt in 1..=3 {
            let started = std::time::Instant::now();
            let logged = std::fs::metadata(&step.log).map(|m| m.len()).unwrap_or(0);
            tracing::debug!(us = t.elapsed().as_micros() as u64, "build step: launching");
            let code = self
                .launch_build_step(spec, step, uid, &r, &a, &cg, &filter)
                .await?;
            tracing::debug!(us = t.elapsed().as_micros() as u64, "build step: exited");
            let transient = code != 0
                && started.elapsed() < std::time::Duration::from_secs(3)
                && std::fs::read_to_string(&step.log)
                    .ok()
                    .and_then(|l| l.lines().last().map(str::to_owned))
                    .is_some_and(|l| l.contains("bwrap: loopback"));
            if !transient || attempt == 3 {
                // Its processes are gone; removing a v1 cgroup can take tens of milliseconds
                // more (the kernel answers EBUSY meanwhile), which no step needs to wait for.
                tokio::task::spawn_blocking(move || drop(cg));
                let _ = std::fs::remove_file(&filter);
                return Ok(code);
            }
            tracing::warn!(workspace = %spec.id, attempt, "build step sandbox setup failed; trying again");
            // What the failed setup printed is not the step's output.
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&step.log) {
                let _ = f.set_len(logged);
            }
        }
        unreachable!("the last attempt returns")
    }

    /// One launch of a build step's sandbox (see [`Self::run_build_step`]); its exit code.
    #[allow(clippy::too_many_arguments)]
    async fn launch_build_step(
        &self,
        spec: &SandboxSpec,
        step: &crate::content::image::build::StepRun,
        uid: u32,
        r: &Rebase,
        a: &[String],
        cg: &Gone,
        filter: &Path,
    ) -> Result<i32, RuntimeError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&step.log)?;
        let mut cmd = launcher(&self.exe);
        for f in cg.0.as_ref().map(|c| c.procs_files()).unwrap_or_default() {
            cmd.arg("--cgroup-procs").arg(f);
        }
        cmd.args(["--uid", &uid.to_string(), "--gid", &uid.to_string()])
            .arg("--rebase")
            .arg(rebase_arg(r)?)
            .arg("--")
            .arg(&self.bwrap)
            .args(a)
            .stdin(std::fs::File::open(filter)?)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| RuntimeError::Start(format!("{}: {e}", self.exe.display())))?;
        if spec.network
            && let Some(pid) = child.id()
        {
            let (state, cgroup) = (spec.state.clone(), cg.0.clone());
            tokio::spawn(async move {
                if let Err(e) = connect_outbound(pid, &state, cgroup.as_ref()).await {
                    tracing::warn!(error = %e, "a build step has no outbound network");
                }
            });
        }
        let status = tokio::time::timeout(BUILD_STEP_WITHIN, child.wait())
            .await
            .map_err(|_| {
                RuntimeError::Start(format!(
                    "the step did not finish within {} minutes",
                    BUILD_STEP_WITHIN.as_secs() / 60
                ))
            })??;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

/// A tool's cgroup, destroyed (whatever is left in it killed) when dropped: also when the
/// future running the tool is dropped half-way (the cell stopping in the middle of a stop).
struct Gone(Option<Cgroup>);

impl Drop for Gone {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take()
            && let Err(e) = cg.destroy()
        {
            tracing::warn!(error = %e, "a tool's cgroup is left behind");
        }
    }
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or(None)
}

/// Where a restore writes, under the workspace's directory, before its files replace the
/// workspace's (root's, 0700: nothing of the workspace can reach it).
pub const RESTORING: &str = ".restore";

/// Removes a directory tree; `std::fs::remove_dir_all` never follows a link inside it.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The cell's own directory for a sandbox, under the workspace's directory `dir` (so that the
/// class's disk bounds what the sandbox's output adds to its log) but never bound into the
/// sandbox: the agent's spec, the seccomp filter, the sandbox's and the network helper's logs.
pub const STATE_DIR: &str = ".cell";

/// Prepares the host directories of a workspace: `workspace/`, `home/` and `run/` owned by the
/// sandbox's uid (mode 0700) under `dir` (root's, 0711), and the cell's [`STATE_DIR`] (0700,
/// the cell's user). Each is created and set through a handle that refuses links: names
/// under `dir` pass through the workspace's backups and restores.
pub fn prepare_dirs(dir: &Path, uid: Option<(u32, u32)>) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    std::fs::create_dir_all(dir)?;
    let parent = crate::beneath::Dir::open(dir)?;
    let make = |name: &str, owner: Option<(u32, u32)>| -> std::io::Result<()> {
        match rustix::fs::mkdirat(parent.as_fd(), name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = parent.open_at(Path::new(name), OFlags::RDONLY | OFlags::DIRECTORY, false)?;
        if let Some((u, g)) = owner {
            rustix::fs::fchown(
                &fd,
                Some(rustix::process::Uid::from_raw(u)),
                Some(rustix::process::Gid::from_raw(g)),
            )?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
        Ok(())
    };
    for sub in ["workspace", "home", "run"] {
        make(sub, uid)?;
    }
    make(STATE_DIR, None)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    Ok(())
}

impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    fn describe(&self) -> String {
        format!(
            "bubblewrap sandboxes with a seccomp filter; memory, CPU and process limits by {}; {}",
            self.hierarchy.describe(),
            self.disks.describe()
        )
    }

    fn attach_files(&self, files: &Files, create: bool) -> Result<(), RuntimeError> {
        Ok(self.disks.attach(files, create)?)
    }

    fn detach_files(&self, files: &Files, delete: bool) -> Result<(), RuntimeError> {
        Ok(self.disks.detach(files, delete)?)
    }

    fn start<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let t = std::time::Instant::now();
            let cg: Option<Cgroup> = match &self.hierarchy {
                Hierarchy::Unavailable { reason } => {
                    tracing::warn!(workspace = %spec.id, %reason, "class limits are not enforced");
                    None
                }
                h => Some(h.create(spec.id.as_str(), &spec.limits)?),
            };
            tracing::debug!(workspace = %spec.id, us = t.elapsed().as_micros() as u64, "cgroups ready");
            let state = &spec.state;
            let filter = state.join("seccomp.bpf");
            super::seccomp::write_default_filter(&filter)
                .map_err(|e| RuntimeError::Start(e.to_string()))?;
            write_accounts(
                &spec.dir,
                spec.root.as_deref().unwrap_or(Path::new("/")),
                &spec.user,
            )
            .map_err(|e| {
                RuntimeError::Start(format!("cannot write the sandbox's accounts: {e}"))
            })?;
            let rebase = self.rebase(spec);
            let launch = Launch {
                exe: self.exe.clone(),
                request: SandboxRequest {
                    cgroup_procs: cg.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
                    uid: spec.uid,
                    argv: std::iter::once(self.bwrap.to_string_lossy().into_owned())
                        .chain(self.bwrap_args(spec, rebase.as_ref()))
                        .collect(),
                    stdin: filter,
                    log: state.join("sandbox.log"),
                    rebase,
                },
            };
            let spare = self.spare.lock().map(|mut s| s.take()).unwrap_or(None);
            let child = match spare {
                Some(spare) => match spare.launch(&launch.request).await {
                    Ok(child) => child,
                    Err(e) => {
                        tracing::debug!(workspace = %spec.id, error = %e, "the spare launcher is gone");
                        launch.spawn()
                    }
                    .map_err(|e| RuntimeError::Start(format!("{}: {e}", self.exe.display())))?,
                },
                None => launch
                    .spawn()
                    .map_err(|e| RuntimeError::Start(format!("{}: {e}", self.exe.display())))?,
            };
            tracing::debug!(workspace = %spec.id, us = t.elapsed().as_micros() as u64, "sandbox spawned");
            Spare::refill(&self.spare, &self.exe);
            let outer = child.id();
            self.supervise(launch, child, &spec.id);
            if spec.network {
                // Set up beside the agent's own start instead of before it: the agent holds its
                // tasks until the network is there (AgentSpec::wait_for_network).
                let Some(pid) = outer else {
                    return Err(RuntimeError::Start(
                        "the sandbox exited at once; see its sandbox.log".into(),
                    ));
                };
                let (state, cg, id) = (state.clone(), cg.clone(), spec.id.clone());
                tokio::spawn(async move {
                    if let Err(e) = connect_outbound(pid, &state, cg.as_ref()).await {
                        tracing::warn!(workspace = %id, error = %e, "outbound network not set up");
                    }
                });
            }
            Ok(())
        })
    }

    fn build_step<'a>(
        &'a self,
        spec: &'a SandboxSpec,
        step: &'a crate::content::image::build::StepRun,
        uid: u32,
    ) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        Box::pin(self.run_build_step(spec, step, uid))
    }

    fn start_service<'a>(
        &'a self,
        spec: &'a SandboxSpec,
        service: &'a super::ServiceRun,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.run_service(spec, service))
    }

    fn git_as(&self, spec: &SandboxSpec) -> Option<crate::content::git::RunAs> {
        let (uid, gid) = spec.uid?;
        // Where the uid cannot walk to the files, git starts as the sandbox does: through the
        // launcher, which binds the workspace's directory where the uid can reach it.
        let via = self.rebase(spec).and_then(|r| {
            let prefix = vec![
                self.exe.to_string_lossy().into_owned(),
                "sandbox-exec".into(),
                "--uid".into(),
                uid.to_string(),
                "--gid".into(),
                gid.to_string(),
                "--rebase".into(),
                rebase_arg(&r).ok()?,
                "--".into(),
            ];
            Some(crate::content::git::Via {
                prefix,
                to: r.map(&spec.dir),
                from: rebase::absolute(&spec.dir),
            })
        });
        Some(crate::content::git::RunAs { uid, gid, via })
    }

    fn prepare(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        prepare_dirs(&spec.dir, spec.uid)
            .map_err(|e| RuntimeError::Start(format!("cannot prepare {}: {e}", spec.dir.display())))
    }

    fn task_logs(&self, spec: &SandboxSpec, count: usize, tail: u64) -> Vec<Vec<u8>> {
        // The logs are in the run directory, which the workspace writes: read beneath it,
        // without following links, as the workspace's user.
        // The run directory itself (its path is the cell's) is opened here, as root: its
        // parents may be closed to the workspace's uid (a data directory under /root).
        let Ok(dir) = crate::beneath::Dir::open(&spec.dir.join("run")) else {
            return vec![Vec::new(); count];
        };
        crate::beneath::as_user(spec.uid, || {
            Ok((0..count)
                .map(|i| {
                    let name = format!("{}/task-{i}.log", crate::agent::protocol::LOGS);
                    dir.read_tail(Path::new(&name), tail)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                })
                .collect())
        })
        .unwrap_or_else(|_| vec![Vec::new(); count])
    }

    fn replace_files(
        &self,
        spec: &SandboxSpec,
        restore: super::Restore<'_>,
    ) -> Result<(), RuntimeError> {
        let staging = spec.dir.join(RESTORING);
        let fail = |e: std::io::Error| RuntimeError::Start(format!("cannot restore: {e}"));
        // Left by a restore that was cut off: nothing in it is in use.
        remove_tree(&staging).map_err(fail)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(fail)?;
        restore(&staging).map_err(RuntimeError::Start)?;
        for sub in ["workspace", "home"] {
            let restored = staging.join(sub);
            if std::fs::symlink_metadata(&restored).is_err() {
                continue;
            }
            match std::fs::rename(spec.dir.join(sub), staging.join(format!("old-{sub}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e)),
            }
            std::fs::rename(&restored, spec.dir.join(sub)).map_err(fail)?;
        }
        remove_tree(&staging).map_err(fail)
    }

    fn hold(&self, id: &WorkspaceId, held: bool) -> Result<(), RuntimeError> {
        // Without a cgroup nothing of the workspace runs in one: its sandbox is gone (or this
        // host has no cgroups at all, which the admin page shows).
        match self.hierarchy.open(id.as_str()) {
            Some(cg) => Ok(cg.set_frozen(held, std::time::Duration::from_secs(5))?),
            None => Ok(()),
        }
    }

    fn git_state<'a>(
        &'a self,
        spec: &'a SandboxSpec,
        repos: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<crate::content::git::RepoStatus>, RuntimeError>> {
        Box::pin(async move {
            if repos.is_empty() {
                return Ok(Vec::new());
            }
            let mut argv = vec!["git-state".to_owned()];
            argv.extend(repos.iter().map(|r| format!("{WORKSPACE_MOUNT}/{r}")));
            let out = self
                .run_tool(spec, "git", &argv, 4 << 20, GIT_STATE_WITHIN)
                .await?;
            // Printed inside the workspace: only its shape is trusted.
            serde_json::from_slice(&out)
                .map_err(|e| RuntimeError::Start(format!("unreadable git state: {e}")))
        })
    }

    fn stop<'a>(&'a self, id: &'a WorkspaceId) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            // The launchers first: one that has not joined the cgroups yet is not in them.
            let launchers = self
                .launchers
                .lock()
                .map(|mut l| l.remove(id))
                .unwrap_or_default()
                .unwrap_or_default();
            for kill in launchers {
                let (ack, reaped) = tokio::sync::oneshot::channel();
                if kill.send(ack).is_ok() {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reaped).await;
                }
            }
            if let Some(cg) = self.hierarchy.open(id.as_str()) {
                cg.destroy()?;
            }
            Ok(())
        })
    }
}

/// What a launcher is to start: bubblewrap's command line, the cgroups to join first, the uid
/// to run as, and the files for its standard input (the seccomp filter) and output (the log).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SandboxRequest {
    cgroup_procs: Vec<PathBuf>,
    uid: Option<(u32, u32)>,
    argv: Vec<String>,
    stdin: PathBuf,
    log: PathBuf,
    /// Paths the workspace's uid cannot walk to, bound where it can (see [`Rebase`]).
    #[serde(default)]
    rebase: Option<Rebase>,
}

/// `devcell sandbox-exec --request-on-stdin`, a launcher started ahead of need: it waits for a
/// [`SandboxRequest`] on its standard input, then does what [`sandbox_exec`] does with it.
/// Without a request (the cell went away) it exits quietly. Only returns on failure, which it
/// also writes to the sandbox's log.
pub fn sandbox_exec_requested() -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut text = Vec::new();
    std::io::stdin().read_to_end(&mut text)?;
    if text.is_empty() {
        return Ok(());
    }
    let req: SandboxRequest = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&req.log)?;
    let stdio = || -> std::io::Result<_> {
        Ok((
            std::fs::File::open(&req.stdin)?,
            log.try_clone()?,
            log.try_clone()?,
        ))
    };
    let err = match stdio() {
        Ok((stdin, stdout, stderr)) => become_sandbox(
            &req.cgroup_procs,
            req.uid.map(|(u, _)| u),
            req.uid.map(|(_, g)| g),
            req.rebase.as_ref(),
            &req.argv,
            |cmd| {
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
            },
        ),
        Err(e) => e,
    };
    let _ = writeln!(log, "devcell: cannot start the sandbox: {err}");
    Err(err)
}

/// The launcher, `devcell sandbox-exec`: joins the cgroups, binds what the workspace's uid
/// cannot walk to (`rebase`), drops to the workspace's uid and becomes bubblewrap (or git).
/// Only returns on failure.
pub fn sandbox_exec(
    procs: &[PathBuf],
    uid: Option<u32>,
    gid: Option<u32>,
    rebase: Option<&Rebase>,
    argv: &[String],
) -> std::io::Error {
    become_sandbox(procs, uid, gid, rebase, argv, |_| {})
}

/// Joins the cgroups, enters `rebase`'s mount namespace, drops to `uid` and `gid` and becomes
/// `argv`, with the standard streams `stdio` sets. Only returns on failure.
fn become_sandbox(
    procs: &[PathBuf],
    uid: Option<u32>,
    gid: Option<u32>,
    rebase: Option<&Rebase>,
    argv: &[String],
    stdio: impl FnOnce(&mut std::process::Command),
) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    if let Err(e) = super::cgroup::enter(procs) {
        return e;
    }
    if let Some(r) = rebase
        && let Err(e) = r.enter()
    {
        return e;
    }
    let Some((program, args)) = argv.split_first() else {
        return std::io::Error::new(std::io::ErrorKind::InvalidInput, "nothing to run");
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    stdio(&mut cmd);
    if let Some(g) = gid {
        cmd.gid(g);
    }
    if let Some(u) = uid {
        cmd.uid(u);
    }
    cmd.exec()
}

/// The process inside the sandbox's network namespace: a child of the outer bubblewrap whose
/// namespace differs from ours.
async fn sandbox_pid(outer: u32, cg: Option<&Cgroup>) -> Option<u32> {
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    for _ in 0..2000 {
        // The workspace's cgroup holds a handful of pids; all of /proc is the fallback.
        let candidates: Vec<u32> = match cg {
            Some(c) => c.pids(),
            None => std::fs::read_dir("/proc")
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        for pid in candidates {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(outer)
                && std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != ours)
            {
                return Some(pid);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    None
}

/// Gives the sandbox outbound network access through slirp4netns (user-mode TCP/IP: no bridge,
/// no firewall rules, no privileges inside). `--disable-host-loopback` keeps the cell and
/// other local services out of reach; nothing from outside can connect in.
async fn connect_outbound(
    outer: u32,
    state: &Path,
    cg: Option<&Cgroup>,
) -> Result<(), RuntimeError> {
    let slirp = which("slirp4netns").ok_or_else(|| {
        RuntimeError::Start(
            "outbound network needs slirp4netns: apt-get install -y slirp4netns".into(),
        )
    })?;
    let pid = sandbox_pid(outer, cg)
        .await
        .ok_or_else(|| RuntimeError::Start("the sandbox's process did not appear".into()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("network.log"))?;
    let mut cmd = tokio::process::Command::new(&slirp);
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--netns-type=path",
    ])
    // Joining by path (not by pid) works for a namespace owned by another user namespace.
    .arg(format!("/proc/{pid}/ns/net"))
    .arg("tap0")
    .stdin(std::process::Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| RuntimeError::Start(format!("slirp4netns: {e}")))?;
    // Into the workspace's cgroups, so it ends with the workspace and counts against it.
    if let (Some(cg), Some(slirp_pid)) = (cg, child.id()) {
        for f in cg.procs_files() {
            let _ = std::fs::write(&f, slirp_pid.to_string());
        }
    }
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

/// How to launch one sandbox, kept so that a launch that fails for a transient reason can be
/// repeated.
struct Launch {
    exe: PathBuf,
    request: SandboxRequest,
}

impl Launch {
    /// Starts a launcher for the request (`devcell sandbox-exec ARGS`).
    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let r = &self.request;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)?;
        let mut cmd = launcher(&self.exe);
        for f in &r.cgroup_procs {
            cmd.arg("--cgroup-procs").arg(f);
        }
        if let Some((u, g)) = r.uid {
            cmd.args(["--uid", &u.to_string(), "--gid", &g.to_string()]);
        }
        if let Some(rebase) = &r.rebase {
            cmd.arg("--rebase").arg(rebase_arg(rebase)?);
        }
        cmd.arg("--").args(&r.argv);
        cmd
            // bubblewrap reads the seccomp filter from its standard input (`--seccomp 0`).
            .stdin(std::fs::File::open(&r.stdin)?)
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.spawn()
    }

    /// Reaps the sandbox when it ends while this cell runs (after a restart, init does), and
    /// relaunches it when bubblewrap failed at once for a known transient reason: setting up
    /// loopback in a fresh network namespace occasionally fails with ECHILD while many
    /// namespaces are created at the same time.
    async fn supervise(
        self,
        mut child: tokio::process::Child,
        id: WorkspaceId,
        mut kill: tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<()>>,
    ) {
        for attempt in 1..=3 {
            let started = std::time::Instant::now();
            let status = tokio::select! {
                status = child.wait() => status,
                Some(reaped) = kill.recv() => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    let _ = reaped.send(());
                    return;
                }
            };
            let early = started.elapsed() < std::time::Duration::from_secs(3)
                && !status.is_ok_and(|s| s.success());
            let last = std::fs::read_to_string(&self.request.log)
                .ok()
                .and_then(|l| l.lines().last().map(str::to_owned))
                .unwrap_or_default();
            if !(early && last.contains("bwrap: loopback")) || attempt == 3 {
                return;
            }
            tracing::warn!(workspace = %id, error = %last, attempt, "sandbox setup failed; launching again");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            match self.spawn() {
                Ok(c) => child = c,
                Err(_) => return,
            }
        }
    }
}

/// Where the launcher shows the host's `path`: under the rebase mount when it binds it there.
fn seen_by_launcher(rebase: Option<&Rebase>, path: &Path) -> String {
    match rebase {
        Some(r) => r.map(path).to_string_lossy().into_owned(),
        None => path.to_string_lossy().into_owned(),
    }
}

/// A [`Rebase`] as the launcher's `--rebase` argument.
fn rebase_arg(r: &Rebase) -> std::io::Result<String> {
    serde_json::to_string(r).map_err(std::io::Error::other)
}

/// `devcell sandbox-exec`, with a clean environment, in a process group of its own: a signal
/// to the cell (Ctrl-C, SIGTERM) does not reach the sandbox it becomes.
fn launcher(exe: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("sandbox-exec")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .process_group(0);
    cmd
}

/// How long after a start its replacement launcher is started: past that start's busiest part,
/// so the launcher's own start-up (an exec of this binary) does not slow the start down.
const SPARE_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// A launcher (`devcell sandbox-exec --request-on-stdin`) started ahead, blocked reading its
/// request. Loading this 60 MB binary (relocations and all) took 2-3 ms of every start on the
/// critical path; a spare has it done beforehand. It is a child of the cell, in its own process
/// group, and exits when its standard input closes without a request (the cell went away).
/// A start that finds no spare launches directly.
struct Spare {
    child: tokio::process::Child,
    request: tokio::process::ChildStdin,
}

impl Spare {
    fn spawn(exe: &Path) -> std::io::Result<Spare> {
        let mut child = launcher(exe)
            .arg("--request-on-stdin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let request = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no pipe to the launcher"))?;
        Ok(Spare { child, request })
    }

    /// Hands the request over; the launcher then becomes the sandbox.
    async fn launch(mut self, req: &SandboxRequest) -> std::io::Result<tokio::process::Child> {
        use tokio::io::AsyncWriteExt;
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(std::io::Error::other(format!("it exited ({status})")));
        }
        let text = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        self.request.write_all(&text).await?;
        drop(self.request);
        Ok(self.child)
    }

    /// Starts a new spare a moment from now, unless one is there.
    fn refill(slot: &Arc<std::sync::Mutex<Option<Spare>>>, exe: &Path) {
        let (slot, exe) = (slot.clone(), exe.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_AFTER).await;
            let Ok(mut s) = slot.lock() else { return };
            if s.is_none() {
                match Spare::spawn(&exe) {
                    Ok(spare) => *s = Some(spare),
                    Err(e) => tracing::debug!(error = %e, "no spare launcher"),
                }
            }
        });
    }
}
