//! Per-workspace cgroups: enforce a class's CPU, memory and process limits, watch usage and OOM kills, and kill everything at stop.
//!
//! Two layouts are supported:
//! - pure cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists): one directory
//!   `/sys/fs/cgroup/devcell/<name>` carries `memory.max`, `cpu.max` and `pids.max`;
//! - cgroup v1 or "hybrid" hosts (v1 controllers, plus a v2 mount that lacks them): one directory
//!   per controller, `/sys/fs/cgroup/{memory,cpu,pids}/devcell/<name>`, plus `freezer` when the
//!   host mounts it, so that `destroy` can stop fork bombs before killing them.
//!
//! Workspaces go under a `devcell` child of the cgroup *root* of each controller, not under the
//! cell's own cgroup: the cell may run inside a small service cgroup (systemd unit, container)
//! whose limits must not be shared with the workspaces, and the workspaces must survive a
//! restart of the cell.
//!
//! A launcher joins the workspace's cgroups itself ([`enter`] with [`Cgroup::procs_files`]) right
//! before it execs the sandbox, so that every process of the workspace is confined from the start.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Where cgroup file systems are mounted on a normal Linux host.
const DEFAULT_MOUNT: &str = "/sys/fs/cgroup";
/// The child of each controller's root that holds all workspace cgroups.
const BASE_DIR: &str = "devcell";
/// CFS period for CPU quotas: 100 ms, the kernel default, so `cpu_millis * 100` is the quota.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below 1 ms.
const CPU_MIN_QUOTA_US: u64 = 1_000;
/// How long `destroy` keeps killing before it gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest accepted cgroup name; workspace ids are far shorter.
const MAX_NAME_LEN: usize = 64;

/// The resources a workspace may use. A zero field means "no limit" for that resource
/// (a class always sets all three; zero exists for tests and for the `unlimited` admin class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per wall-clock second, in thousandths of a core (1000 = one full core).
    pub cpu_millis: u32,
    /// Memory (page cache included) before the kernel reclaims and then OOM-kills; swap is not allowed on top.
    pub memory_bytes: u64,
    /// Processes and threads alive at once; further forks fail with EAGAIN.
    pub max_processes: u32,
}

/// Failures to set up, change or tear down a workspace cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The name would not be a single safe path component.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// Detection found nothing usable (not root, no cgroup file system, ...).
    #[error("cgroups are unavailable on this host: {0}")]
    Unavailable(String),
    /// `mkdir` of a cgroup directory failed.
    #[error("cannot create {}: {source}{}", path.display(), hint(source))]
    Create { path: PathBuf, source: io::Error },
    /// Writing a control file failed (bad value, limit below current usage, missing controller).
    #[error("cannot write {value:?} to {}: {source}{}", path.display(), hint(source))]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    /// `rmdir` of a cgroup directory failed.
    #[error("cannot remove {}: {source}{}", path.display(), hint(source))]
    Remove { path: PathBuf, source: io::Error },
    /// Processes survived SIGKILL for the whole timeout (e.g. stuck in uninterruptible I/O).
    #[error("{} process(es) still alive in {} after {}s of SIGKILL: {pids:?}", pids.len(), path.display(), KILL_TIMEOUT.as_secs())]
    StillRunning { path: PathBuf, pids: Vec<u32> },
}

/// Turns the common errno values into advice an operator can act on.
fn hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied => " (is the cell running as root?)",
        io::ErrorKind::ReadOnlyFilesystem => {
            " (the cgroup file system is mounted read-only; inside a container it must be delegated)"
        }
        io::ErrorKind::ResourceBusy => {
            " (cgroup v2 forbids enabling controllers in a cgroup that has processes of its own)"
        }
        _ => "",
    }
}

/// The controllers a workspace cgroup uses. `Freezer` only exists on v1 (v2 has `cgroup.freeze`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ctl {
    Memory,
    Cpu,
    Pids,
    Freezer,
}

impl Ctl {
    /// The three controllers limits are written to, in the order reports list them.
    const LIMITED: [Ctl; 3] = [Ctl::Memory, Ctl::Cpu, Ctl::Pids];

    fn name(self) -> &'static str {
        match self {
            Ctl::Memory => "memory",
            Ctl::Cpu => "cpu",
            Ctl::Pids => "pids",
            Ctl::Freezer => "freezer",
        }
    }
}

/// Where workspace cgroups live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified hierarchy: `root` is the `devcell` directory (child of the v2 mount).
    V2 { root: PathBuf },
    /// Legacy hierarchies: the `devcell` directory of each controller.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
    /// No usable cgroups; workspaces would run without resource limits.
    Unavailable { reason: String },
}

impl Hierarchy {
    /// Finds where to put workspace cgroups: a `devcell` child of the cgroup root of each controller.
    ///
    /// Creates those `devcell` directories, because a successful `mkdir` is the only reliable
    /// proof that we may manage cgroups (root in a user namespace, read-only mounts and
    /// delegation all make permission bits misleading).
    pub fn detect() -> Hierarchy {
        Self::detect_at(Path::new(DEFAULT_MOUNT))
    }

    /// For tests: detect under a given mount root (default "/sys/fs/cgroup").
    pub fn detect_at(mount: &Path) -> Hierarchy {
        // Pure v2: the mount itself is the unified root.
        if mount.join("cgroup.controllers").is_file() {
            return Self::v2_at(mount);
        }
        // v1 or hybrid: controllers are separate mounts below `mount`.
        let memory = v1_mount(mount, "memory");
        let cpu = v1_mount(mount, "cpu");
        let pids = v1_mount(mount, "pids");
        match (memory, cpu, pids) {
            (Some(memory), Some(cpu), Some(pids)) => {
                let dirs = [
                    memory.join(BASE_DIR),
                    cpu.join(BASE_DIR),
                    pids.join(BASE_DIR),
                ];
                for dir in &dirs {
                    if let Err(err) = mkdir(dir) {
                        return Hierarchy::Unavailable {
                            reason: not_writable(&err),
                        };
                    }
                }
                let [memory, cpu, pids] = dirs;
                Hierarchy::V1 { memory, cpu, pids }
            }
            (memory, cpu, pids) => {
                // A hybrid host whose v2 mount carries the controllers v1 lacks (rare, but
                // systemd allows it) is still usable as v2.
                let unified = mount.join("unified");
                if memory.is_none() && controllers_of(&unified).contains(&Ctl::Memory) {
                    return Self::v2_at(&unified);
                }
                let missing: Vec<&str> = [("memory", &memory), ("cpu", &cpu), ("pids", &pids)]
                    .iter()
                    .filter(|(_, p)| p.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                Hierarchy::Unavailable {
                    reason: format!(
                        "no cgroup v2 mount at {} and no cgroup v1 controller(s) {} there",
                        mount.display(),
                        missing.join(", ")
                    ),
                }
            }
        }
    }

    fn v2_at(mount: &Path) -> Hierarchy {
        let present = controllers_of(mount);
        if !Ctl::LIMITED.iter().any(|c| present.contains(c)) {
            return Hierarchy::Unavailable {
                reason: format!(
                    "cgroup v2 at {} offers none of memory, cpu, pids",
                    mount.display()
                ),
            };
        }
        let root = mount.join(BASE_DIR);
        match mkdir(&root) {
            Ok(()) => Hierarchy::V2 { root },
            Err(err) => Hierarchy::Unavailable {
                reason: not_writable(&err),
            },
        }
    }

    /// One line for logs and the admin page, e.g. "cgroup v1 (memory, cpu, pids)".
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { root } => {
                let present = root.parent().map(controllers_of).unwrap_or_default();
                let (have, lack): (Vec<Ctl>, Vec<Ctl>) =
                    Ctl::LIMITED.iter().partition(|c| present.contains(c));
                let mut text = format!("cgroup v2 ({})", names(&have));
                if !lack.is_empty() {
                    text.push_str(&format!("; missing {}: not enforced", names(&lack)));
                }
                text
            }
            Hierarchy::V1 { memory, .. } => {
                if freezer_base(memory).is_some() {
                    "cgroup v1 (memory, cpu, pids, freezer)".to_string()
                } else {
                    "cgroup v1 (memory, cpu, pids)".to_string()
                }
            }
            Hierarchy::Unavailable { reason } => format!("cgroups unavailable: {reason}"),
        }
    }

    /// Creates (or reuses) the cgroup named `name` (a workspace id like ws_01...) with the limits.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        validate_name(name)?;
        let layout = match self {
            Hierarchy::V2 { root } => {
                let enabled = enable_v2_controllers(root)?;
                let dir = root.join(name);
                mkdir(&dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
                Layout::V2 { dir, ctls: enabled }
            }
            Hierarchy::V1 { memory, cpu, pids } => {
                let mut dirs = vec![
                    (Ctl::Memory, memory.join(name)),
                    (Ctl::Cpu, cpu.join(name)),
                    (Ctl::Pids, pids.join(name)),
                ];
                if let Some(freezer) = freezer_base(memory) {
                    // The freezer only makes `destroy` race-free; without it we still work.
                    match mkdir(&freezer) {
                        Ok(()) => dirs.push((Ctl::Freezer, freezer.join(name))),
                        Err(err) => tracing::warn!(
                            path = %freezer.display(), error = %err,
                            "cannot use the v1 freezer; destroy will kill without freezing"
                        ),
                    }
                }
                for (_, dir) in &dirs {
                    mkdir(dir).map_err(|source| CgroupError::Create {
                        path: dir.clone(),
                        source,
                    })?;
                }
                Layout::V1 { dirs }
            }
            Hierarchy::Unavailable { reason } => {
                return Err(CgroupError::Unavailable(reason.clone()));
            }
        };
        let cgroup = Cgroup {
            name: name.to_string(),
            layout,
        };
        cgroup.update(limits)?;
        Ok(cgroup)
    }

    /// The existing cgroup of `name`, if any (after a cell restart).
    pub fn open(&self, name: &str) -> Option<Cgroup> {
        validate_name(name).ok()?;
        let layout = match self {
            Hierarchy::V2 { root } => {
                let dir = root.join(name);
                if !dir.is_dir() {
                    return None;
                }
                // A real v2 child lists the controllers its parent delegates to it.
                let ctls = controllers_of(&dir)
                    .into_iter()
                    .filter(|c| Ctl::LIMITED.contains(c))
                    .collect();
                Layout::V2 { dir, ctls }
            }
            Hierarchy::V1 { memory, cpu, pids } => {
                let mut candidates = vec![
                    (Ctl::Memory, memory.join(name)),
                    (Ctl::Cpu, cpu.join(name)),
                    (Ctl::Pids, pids.join(name)),
                ];
                if let Some(freezer) = freezer_base(memory) {
                    candidates.push((Ctl::Freezer, freezer.join(name)));
                }
                let dirs: Vec<(Ctl, PathBuf)> =
                    candidates.into_iter().filter(|(_, d)| d.is_dir()).collect();
                if dirs.is_empty() {
                    return None;
                }
                Layout::V1 { dirs }
            }
            Hierarchy::Unavailable { .. } => return None,
        };
        Some(Cgroup {
            name: name.to_string(),
            layout,
        })
    }
}

/// The directories of one workspace cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// One directory; `ctls` are the controllers enabled for it (limits of others are skipped).
    V2 { dir: PathBuf, ctls: Vec<Ctl> },
    /// One directory per controller.
    V1 { dirs: Vec<(Ctl, PathBuf)> },
}

/// One workspace's cgroup (a directory per v1 controller, or one v2 directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    name: String,
    layout: Layout,
}

impl Cgroup {
    /// The name given at creation (the workspace id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All directories of this cgroup (for logs and diagnostics).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { dir, .. } => vec![dir.clone()],
            Layout::V1 { dirs } => dirs.iter().map(|(_, d)| d.clone()).collect(),
        }
    }

    /// The files a launcher writes its own pid into (cgroup.procs of each controller dir) before exec'ing the sandbox, so every process of the workspace is inside from the start.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Processes currently inside (in any controller directory, sub-cgroups included), sorted.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = BTreeSet::new();
        for dir in self.dirs() {
            collect_pids(&dir, &mut pids);
        }
        pids.into_iter().collect()
    }

    /// Bytes of memory charged to the workspace (page cache included), if the controller is there.
    pub fn memory_usage(&self) -> Option<u64> {
        let (dir, file) = match &self.layout {
            Layout::V2 { dir, .. } => (dir.clone(), "memory.current"),
            Layout::V1 { .. } => (self.dir_of(Ctl::Memory)?, "memory.usage_in_bytes"),
        };
        read_trimmed(&dir.join(file))?.parse().ok()
    }

    /// How many processes the kernel OOM-killed in this cgroup (v2 `memory.events`,
    /// v1 `memory.oom_control`, which only has the counter since Linux 4.13).
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match &self.layout {
            Layout::V2 { dir, .. } => dir.join("memory.events"),
            Layout::V1 { .. } => self.dir_of(Ctl::Memory)?.join("memory.oom_control"),
        };
        keyed_value(&read_trimmed(&file)?, "oom_kill")
    }

    /// Applies new limits (also used by `create`, so a reused cgroup gets the current class).
    pub fn update(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2 { dir, ctls } => {
                if ctls.contains(&Ctl::Memory) {
                    write_file(&dir.join("memory.max"), &v2_limit(limits.memory_bytes))?;
                    // No swap on top of the memory limit; absent when the kernel has no swap accounting.
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write_file(&swap, "0")?;
                    }
                }
                if ctls.contains(&Ctl::Cpu) {
                    let quota =
                        cpu_quota(limits.cpu_millis).map_or("max".to_string(), |q| q.to_string());
                    write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if ctls.contains(&Ctl::Pids) {
                    write_file(
                        &dir.join("pids.max"),
                        &v2_limit(u64::from(limits.max_processes)),
                    )?;
                }
            }
            Layout::V1 { dirs } => {
                for (ctl, dir) in dirs {
                    match ctl {
                        Ctl::Memory => set_v1_memory(dir, limits.memory_bytes)?,
                        Ctl::Cpu => {
                            write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                            let quota = cpu_quota(limits.cpu_millis)
                                .map_or("-1".to_string(), |q| q.to_string());
                            write_file(&dir.join("cpu.cfs_quota_us"), &quota)?;
                        }
                        Ctl::Pids => {
                            write_file(
                                &dir.join("pids.max"),
                                &v2_limit(u64::from(limits.max_processes)),
                            )?;
                        }
                        Ctl::Freezer => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// SIGKILL everything inside (v2: cgroup.kill when present; otherwise freeze if possible, kill each pid, repeat until empty, max 5 s) then rmdir the dirs.
    pub fn destroy(self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            self.kill_all(deadline)?;
            // A process that joined after the kill (a launcher handed its request a moment
            // before) keeps its directory busy: it is killed in the next round.
            let removed = self
                .dirs()
                .iter()
                .try_for_each(|dir| remove_tree(dir, Instant::now()));
            match removed {
                Err(CgroupError::Remove { source, .. })
                    if source.kind() == io::ErrorKind::ResourceBusy
                        && Instant::now() < deadline + Duration::from_secs(1) =>
                {
                    sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Freezes every process inside (or thaws them): a frozen workspace changes none of its
    /// files, so the cell can read them by path without a link being swapped in meanwhile.
    /// Waits (at most `within`) until the kernel reports the whole cgroup frozen; fails when
    /// this host cannot freeze it.
    pub fn set_frozen(&self, frozen: bool, within: Duration) -> Result<(), CgroupError> {
        let (file, value, done) = match &self.layout {
            Layout::V2 { dir, .. } => (
                dir.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                dir.join("cgroup.events"),
            ),
            Layout::V1 { .. } => {
                let dir = self
                    .dir_of(Ctl::Freezer)
                    .ok_or_else(|| CgroupError::Write {
                        path: PathBuf::from("freezer"),
                        value: String::new(),
                        source: io::Error::other("no freezer controller on this host"),
                    })?;
                let state = dir.join("freezer.state");
                (
                    state.clone(),
                    if frozen { "FROZEN" } else { "THAWED" },
                    state,
                )
            }
        };
        write_file(&file, value)?;
        let mut rounds = 0u32;
        let reached = wait_until(Instant::now() + within, || match &self.layout {
            Layout::V2 { .. } => {
                read_trimmed(&done).and_then(|e| keyed_value(&e, "frozen"))
                    == Some(u64::from(frozen))
            }
            Layout::V1 { .. } => {
                let settled = read_trimmed(&done).as_deref() == Some(value);
                // The v1 freezer gives up on a task it cannot freeze at once (one in the
                // middle of a fork) and stays FREEZING until it is asked again.
                rounds += 1;
                if !settled && rounds.is_multiple_of(5) {
                    let _ = write_file(&file, value);
                }
                settled
            }
        });
        if !reached {
            if frozen {
                let _ = self.set_frozen(false, within);
            }
            return Err(CgroupError::Write {
                path: file,
                value: value.into(),
                source: io::Error::new(io::ErrorKind::TimedOut, "the cgroup did not settle"),
            });
        }
        Ok(())
    }

    fn dir_of(&self, ctl: Ctl) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 { dir, .. } => Some(dir.clone()),
            Layout::V1 { dirs } => dirs.iter().find(|(c, _)| *c == ctl).map(|(_, d)| d.clone()),
        }
    }

    /// Kills every process inside and waits until the cgroup is empty.
    fn kill_all(&self, deadline: Instant) -> Result<(), CgroupError> {
        if self.pids().is_empty() {
            return Ok(());
        }
        match &self.layout {
            Layout::V2 { dir, .. } => {
                // cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks included.
                let kill_file = dir.join("cgroup.kill");
                if kill_file.exists()
                    && write_file(&kill_file, "1").is_ok()
                    && self.wait_empty(deadline)
                {
                    return Ok(());
                }
                // Older kernels: freeze so nothing forks between listing and killing. Frozen v2
                // tasks still die on SIGKILL, so thawing is only needed if we give up.
                let freeze = dir.join("cgroup.freeze");
                let frozen = freeze.exists() && write_file(&freeze, "1").is_ok();
                if frozen {
                    wait_until(
                        deadline.min(Instant::now() + Duration::from_secs(1)),
                        || {
                            read_trimmed(&dir.join("cgroup.events"))
                                .and_then(|e| keyed_value(&e, "frozen"))
                                == Some(1)
                        },
                    );
                }
                let result = self.kill_loop(deadline);
                if frozen && result.is_err() {
                    let _ = write_file(&freeze, "0");
                }
                result
            }
            Layout::V1 { .. } => {
                // v1 frozen tasks only act on SIGKILL once thawed: freeze, signal everything
                // (no new forks can appear meanwhile), thaw, then mop up with the usual loop.
                if let Some(freezer) = self.dir_of(Ctl::Freezer) {
                    let state = freezer.join("freezer.state");
                    if write_file(&state, "FROZEN").is_ok() {
                        wait_until(
                            deadline.min(Instant::now() + Duration::from_secs(1)),
                            || read_trimmed(&state).as_deref() == Some("FROZEN"),
                        );
                        send_sigkill(&self.pids());
                        let _ = write_file(&state, "THAWED");
                    }
                }
                self.kill_loop(deadline)
            }
        }
    }

    /// SIGKILL whatever is listed, until nothing is left or the deadline passes. Each round
    /// catches children forked since the previous listing; `pids.max` bounds how many appear.
    fn kill_loop(&self, deadline: Instant) -> Result<(), CgroupError> {
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::StillRunning {
                    path: self.dirs().into_iter().next().unwrap_or_default(),
                    pids,
                });
            }
            send_sigkill(&pids);
            // SIGKILLed tasks leave the cgroup once they finish exiting; give them a moment.
            wait_until(
                deadline.min(Instant::now() + Duration::from_millis(100)),
                || self.pids().is_empty(),
            );
        }
    }

    /// Polls until the cgroup is empty; false on timeout.
    fn wait_empty(&self, deadline: Instant) -> bool {
        wait_until(deadline, || self.pids().is_empty())
    }
}

/// Writes the current process's pid into the given cgroup.procs files (used by the launcher right before exec).
///
/// Allocation-free (the pid is formatted on the stack and std opens short paths from a stack
/// buffer), so it may also run in a `pre_exec` hook between fork and exec.
pub fn enter(procs_files: &[PathBuf]) -> io::Result<()> {
    let mut buf = [0u8; 12];
    let text = format_u32(std::process::id(), &mut buf);
    for file in procs_files {
        // One write(2) with the whole number: cgroupfs parses each write on its own.
        fs::OpenOptions::new()
            .write(true)
            .open(file)?
            .write_all(text)?;
    }
    Ok(())
}

/// Decimal digits of `n` into `buf`, without allocating.
fn format_u32(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Workspace ids only: lowercase letters, digits and `_`, so the name is one harmless path component.
fn validate_name(name: &str) -> Result<(), CgroupError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        "only a-z, 0-9 and _ are allowed"
    } else {
        return Ok(());
    };
    Err(CgroupError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// The v1 mount of `controller` under `mount`: `mount/<controller>` or a co-mounted
/// `mount/cpu,cpuacct` style directory. Must look like a cgroup (have `cgroup.procs`).
fn v1_mount(mount: &Path, controller: &str) -> Option<PathBuf> {
    let is_cgroup = |p: &Path| p.join("cgroup.procs").is_file();
    let direct = mount.join(controller);
    if is_cgroup(&direct) {
        return Some(direct);
    }
    fs::read_dir(mount)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(',').any(|c| c == controller))
                && is_cgroup(p)
        })
}

/// The v1 freezer's `devcell` directory, next to the memory one (`<mount>/memory/devcell`).
fn freezer_base(memory_base: &Path) -> Option<PathBuf> {
    let mount = memory_base.parent()?.parent()?;
    v1_mount(mount, "freezer").map(|f| f.join(BASE_DIR))
}

/// The controllers a v2 directory offers (its `cgroup.controllers`), limited to the ones we use.
fn controllers_of(dir: &Path) -> Vec<Ctl> {
    let text = read_trimmed(&dir.join("cgroup.controllers")).unwrap_or_default();
    Ctl::LIMITED
        .into_iter()
        .filter(|c| text.split_whitespace().any(|w| w == c.name()))
        .collect()
}

/// Delegates memory, cpu and pids from the v2 mount to `root` and from `root` to its children.
/// Each controller is written separately: one unknown name would make the kernel reject the
/// whole line. Returns the controllers that are enabled for workspace cgroups.
fn enable_v2_controllers(root: &Path) -> Result<Vec<Ctl>, CgroupError> {
    let mount = root.parent().unwrap_or(root);
    mkdir(root).map_err(|source| CgroupError::Create {
        path: root.to_path_buf(),
        source,
    })?;
    let mut enabled = Vec::new();
    let mut first_error = None;
    for ctl in controllers_of(mount) {
        let value = format!("+{}", ctl.name());
        let outcome = write_file(&mount.join("cgroup.subtree_control"), &value)
            .and_then(|()| write_file(&root.join("cgroup.subtree_control"), &value));
        match outcome {
            Ok(()) => enabled.push(ctl),
            Err(err) => {
                tracing::warn!(controller = ctl.name(), error = %err, "cgroup v2 controller not enabled; its limit is not enforced");
                first_error.get_or_insert(err);
            }
        }
    }
    // Limits silently missing would be worse than an error: fail when nothing could be enabled.
    match (enabled.is_empty(), first_error) {
        (true, Some(err)) => Err(err),
        _ => Ok(enabled),
    }
}

/// v1 memory: `memory.memsw.limit_in_bytes` (memory + swap) must never be below
/// `memory.limit_in_bytes`, or the kernel answers EINVAL. So when raising, memsw goes first;
/// when lowering, the plain limit goes first.
fn set_v1_memory(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    let value = if bytes == 0 {
        "-1".to_string()
    } else {
        bytes.to_string()
    };
    let limit = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if !memsw.exists() {
        // Swap accounting off (swapaccount=0): only the RAM limit can be set.
        return write_file(&limit, &value);
    }
    let current_memsw = read_trimmed(&memsw)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let new = if bytes == 0 { u64::MAX } else { bytes };
    if new >= current_memsw {
        write_file(&memsw, &value)?;
        write_file(&limit, &value)
    } else {
        write_file(&limit, &value)?;
        write_file(&memsw, &value)
    }
}

/// CFS quota in µs per period, or None for "no limit".
fn cpu_quota(cpu_millis: u32) -> Option<u64> {
    (cpu_millis > 0).then(|| (u64::from(cpu_millis) * (CPU_PERIOD_US / 1000)).max(CPU_MIN_QUOTA_US))
}

/// "max" for no limit (v2 files and v1 `pids.max` share the syntax).
fn v2_limit(value: u64) -> String {
    if value == 0 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// `mkdir`, accepting an existing directory (reuse after a restart).
fn mkdir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// The Unavailable reason for a `devcell` directory we could not create.
fn not_writable(err: &io::Error) -> String {
    let who = if is_root() {
        "running as root"
    } else {
        "not running as root"
    };
    format!(
        "cannot create the devcell cgroup directory ({who}): {err}{}",
        hint(err)
    )
}

/// Effective uid 0, read from /proc (std has no geteuid and this crate avoids unsafe).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|r| r.split_whitespace().nth(1) == Some("0"))
            })
        })
        .unwrap_or(false)
}

/// Writes one value to a control file with a single write(2).
///
/// Opens with O_CREAT: on cgroupfs the files already exist and O_CREAT is a no-op, while tests
/// can stand in for cgroupfs with a plain directory. A file of a controller that is not enabled
/// cannot be created on cgroupfs, so this still fails loudly there.
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The number after `key` in "key value" lines (memory.events, memory.oom_control, cgroup.events).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// Adds the pids of `dir` and of any sub-cgroups (a sandbox may create its own) to `out`.
fn collect_pids(dir: &Path, out: &mut BTreeSet<u32>) {
    if let Some(text) = read_trimmed(&dir.join("cgroup.procs")) {
        // pid 0 stands for a process outside our pid namespace; it can never be signalled by
        // number (and kill(0) would hit our own process group), so it is left out.
        out.extend(
            text.lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .filter(|&p| p > 0),
        );
    }
    for sub in subdirs(dir) {
        collect_pids(&sub, out);
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL the given pids, never ourselves.
///
/// std cannot signal arbitrary pids and the crate denies unsafe code, so the shell's `kill`
/// builtin does it (destroy is rare; one short-lived process per round is cheap).
fn send_sigkill(pids: &[u32]) {
    let own = std::process::id();
    let targets: Vec<String> = pids
        .iter()
        .filter(|&&p| p != own && p > 1)
        .map(u32::to_string)
        .collect();
    if targets.is_empty() {
        return;
    }
    // Some pids may already be gone, making kill exit non-zero; the next round re-checks.
    let result = Command::new("/bin/sh")
        .arg("-c")
        .arg("kill -KILL \"$@\" 2>/dev/null")
        .arg("sh")
        .args(&targets)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(err) = result {
        tracing::warn!(error = %err, "cannot run /bin/sh to kill workspace processes");
    }
}

/// Polls `done` every 10 ms until it is true (returns true) or the deadline passes (false).
fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// rmdir `dir` after its sub-cgroups (deepest first). EBUSY right after the last process
/// exited is normal (the kernel finishes tearing tasks down asynchronously), so retry briefly.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    for sub in subdirs(dir) {
        remove_tree(&sub, deadline)?;
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::ResourceBusy && Instant::now() < deadline => {
                sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn names(ctls: &[Ctl]) -> String {
    ctls.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Output;

    const MIB: u64 = 1024 * 1024;

    /// Destroys the named cgroup when the test ends, passed or panicked.
    struct Guard {
        hierarchy: Hierarchy,
        name: String,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(cgroup) = self.hierarchy.open(&self.name)
                && let Err(err) = cgroup.destroy()
            {
                eprintln!("cleanup of {} failed: {err}", self.name);
            }
        }
    }

    /// The host's hierarchy and a unique name (tests of several checkouts may run at once).
    fn real(tag: &str) -> (Hierarchy, Guard) {
        assert!(
            is_root(),
            "the cgroup tests need root: run the suite as root (bash tests/run.sh)"
        );
        let hierarchy = Hierarchy::detect();
        assert!(
            !matches!(hierarchy, Hierarchy::Unavailable { .. }),
            "{}",
            hierarchy.describe()
        );
        let name = format!("t_{tag}_{}", std::process::id());
        let guard = Guard {
            hierarchy: hierarchy.clone(),
            name,
        };
        (hierarchy, guard)
    }

    /// Runs a shell script that first moves itself into the cgroup (like a launcher would).
    fn run_inside(cgroup: &Cgroup, script: &str) -> Output {
        let full = format!("for f in \"$@\"; do echo $$ > \"$f\" || exit 99; done; {script}");
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(full)
            .arg("sh")
            .args(cgroup.procs_files())
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(99), "could not enter the cgroup");
        out
    }

    fn limits(cpu_millis: u32, memory_bytes: u64, max_processes: u32) -> Limits {
        Limits {
            cpu_millis,
            memory_bytes,
            max_processes,
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap().trim().to_string()
    }

    #[test]
    fn detect_on_this_host_finds_memory_cpu_pids() {
        let (hierarchy, _guard) = real("detect");
        let text = hierarchy.describe();
        for controller in ["memory", "cpu", "pids"] {
            assert!(text.contains(controller), "{text}");
        }
        let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if !pure_v2 && Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            assert!(
                matches!(hierarchy, Hierarchy::V1 { .. }),
                "hybrid host must use v1: {text}"
            );
            assert!(text.starts_with("cgroup v1"), "{text}");
        }
        if pure_v2 {
            assert!(matches!(hierarchy, Hierarchy::V2 { .. }), "{text}");
        }
    }

    #[test]
    fn memory_limit_oom_kills_inside_but_not_outside() {
        let (hierarchy, guard) = real("mem");
        let cgroup = hierarchy
            .create(&guard.name, &limits(1000, 64 * MIB, 64))
            .unwrap();
        // tail keeps a newline-free stream in memory, so it must cross 64 MiB and be OOM-killed.
        let out = run_inside(&cgroup, "head -c 400000000 /dev/zero | tail > /dev/null");
        assert!(
            !out.status.success(),
            "400 MB inside a 64 MiB cgroup succeeded: {out:?}"
        );
        if let Some(kills) = cgroup.oom_kills() {
            assert!(kills >= 1, "no OOM kill counted");
        }
        assert!(cgroup.memory_usage().is_some());
        // The limit is the workspace's alone: 100 MB outside is fine.
        let outside = vec![1u8; 100_000_000];
        assert_eq!(
            outside.iter().map(|&b| u64::from(b)).sum::<u64>(),
            100_000_000
        );
    }

    #[test]
    fn pids_limit_stops_fork_storm_and_destroy_kills_everything() {
        let (hierarchy, guard) = real("pids");
        let cgroup = hierarchy
            .create(&guard.name, &limits(1000, 256 * MIB, 20))
            .unwrap();
        let files = cgroup.procs_files();
        let script = "i=0; while [ $i -lt 100 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done";
        let full =
            format!("for f in \"$@\"; do echo $$ > \"$f\" || exit 99; done; {script}; exit 0");
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(full)
            .arg("sh")
            .args(&files)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Sample while the storm runs and after.
        let mut max_seen = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(500) {
            max_seen = max_seen.max(cgroup.pids().len());
            sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.to_lowercase().contains("fork"),
            "no fork failure: {stderr:?} {:?}",
            out.status
        );
        let pids = cgroup.pids();
        max_seen = max_seen.max(pids.len());
        assert!(max_seen <= 20, "saw {max_seen} processes");
        assert!(pids.len() >= 10, "sleeps should still run: {pids:?}");

        let dirs = cgroup.dirs();
        cgroup.destroy().unwrap();
        for dir in &dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        for pid in pids {
            // Gone, or a zombie waiting for its (new) parent to reap it.
            let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = state
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            assert!(
                state.is_empty() || state == "Z" || state == "X",
                "pid {pid} still {state}"
            );
        }
        assert!(hierarchy.open(&guard.name).is_none());
    }

    #[test]
    fn v2_destroy_uses_cgroup_kill_on_a_real_unified_mount() {
        // Hybrid hosts still have a real (controller-less) v2 mount: enough to exercise
        // cgroup.procs listing and cgroup.kill on the kernel, not just on a fake directory.
        assert!(
            is_root(),
            "the cgroup tests need root: run the suite as root (bash tests/run.sh)"
        );
        // Hybrid hosts mount v2 at `unified`, pure v2 hosts at the top.
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .map(Path::new)
            .into_iter()
            .find(|p| p.join("cgroup.controllers").exists())
            .expect("no cgroup v2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup");
        let hierarchy = Hierarchy::V2 {
            root: unified.join("devcell"),
        };
        let name = format!("t_v2kill_{}", std::process::id());
        let _guard = Guard {
            hierarchy: hierarchy.clone(),
            name: name.clone(),
        };
        let cgroup = hierarchy.create(&name, &limits(100, MIB, 10)).unwrap();
        let out = run_inside(
            &cgroup,
            "sleep 30 >/dev/null 2>&1 & sleep 30 >/dev/null 2>&1 & exit 0",
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(cgroup.pids().len(), 2);
        let dir = unified.join("devcell").join(&name);
        cgroup.destroy().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn cpu_quota_and_updates_are_written() {
        let (hierarchy, guard) = real("cpu");
        let cgroup = hierarchy
            .create(&guard.name, &limits(200, 64 * MIB, 50))
            .unwrap();
        match &hierarchy {
            Hierarchy::V1 { cpu, memory, pids } => {
                let cpu = cpu.join(&guard.name);
                assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "20000");
                assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
                assert_eq!(read(&pids.join(&guard.name).join("pids.max")), "50");
                let mem = memory.join(&guard.name);
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                let check_mem = |bytes: u64| {
                    assert_eq!(read(&mem.join("memory.limit_in_bytes")), bytes.to_string());
                    if memsw.exists() {
                        assert_eq!(read(&memsw), bytes.to_string());
                    }
                };
                check_mem(64 * MIB);
                // Raising and lowering both work (memsw must never drop below the plain limit).
                cgroup.update(&limits(1500, 128 * MIB, 0)).unwrap();
                check_mem(128 * MIB);
                assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "150000");
                assert_eq!(read(&pids.join(&guard.name).join("pids.max")), "max");
                cgroup.update(&limits(0, 32 * MIB, 10)).unwrap();
                check_mem(32 * MIB);
                assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "-1");
            }
            Hierarchy::V2 { root } => {
                let dir = root.join(&guard.name);
                assert_eq!(read(&dir.join("cpu.max")), "20000 100000");
                cgroup.update(&limits(1500, 128 * MIB, 0)).unwrap();
                assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
            }
            Hierarchy::Unavailable { .. } => unreachable!(),
        }
        // Reuse after a "restart": open finds it, create again succeeds with new limits.
        assert_eq!(
            hierarchy.open(&guard.name).unwrap().procs_files(),
            cgroup.procs_files()
        );
        hierarchy
            .create(&guard.name, &limits(300, 64 * MIB, 20))
            .unwrap();
        assert!(cgroup.pids().is_empty());
        cgroup.destroy().unwrap();
        assert!(hierarchy.open(&guard.name).is_none());
    }

    #[test]
    fn fake_pure_v2_mount_gets_v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        let hierarchy = Hierarchy::detect_at(tmp.path());
        assert_eq!(
            hierarchy,
            Hierarchy::V2 {
                root: tmp.path().join("devcell")
            }
        );
        assert_eq!(hierarchy.describe(), "cgroup v2 (memory, cpu, pids)");

        let cgroup = hierarchy
            .create("ws_01fake", &limits(200, 64 * MIB, 20))
            .unwrap();
        let dir = tmp.path().join("devcell/ws_01fake");
        assert_eq!(read(&dir.join("memory.max")), (64 * MIB).to_string());
        assert_eq!(read(&dir.join("cpu.max")), "20000 100000");
        assert_eq!(read(&dir.join("pids.max")), "20");
        // memory.swap.max is only written when the kernel offers it.
        assert!(!dir.join("memory.swap.max").exists());
        fs::write(dir.join("memory.swap.max"), "max").unwrap();
        hierarchy.create("ws_01fake", &limits(0, 0, 0)).unwrap();
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert_eq!(read(&dir.join("memory.max")), "max");
        assert_eq!(read(&dir.join("cpu.max")), "max 100000");
        assert_eq!(read(&dir.join("pids.max")), "max");
        assert_eq!(cgroup.procs_files(), vec![dir.join("cgroup.procs")]);
        assert!(cgroup.pids().is_empty());
        assert!(hierarchy.open("ws_01fake").is_some());
        assert!(hierarchy.open("ws_missing").is_none());
    }

    #[test]
    fn fake_v2_mount_without_pids_reports_it() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "cpu memory").unwrap();
        fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        let hierarchy = Hierarchy::detect_at(tmp.path());
        assert_eq!(
            hierarchy.describe(),
            "cgroup v2 (memory, cpu); missing pids: not enforced"
        );
        hierarchy.create("ws_x", &limits(100, MIB, 5)).unwrap();
        assert!(!tmp.path().join("devcell/ws_x/pids.max").exists());
        assert_eq!(
            read(&tmp.path().join("devcell/ws_x/cpu.max")),
            "10000 100000"
        );
    }

    #[test]
    fn fake_v1_layout_with_comounted_cpu() {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["memory", "cpu,cpuacct", "pids"] {
            fs::create_dir(tmp.path().join(dir)).unwrap();
            fs::write(tmp.path().join(dir).join("cgroup.procs"), "").unwrap();
        }
        let hierarchy = Hierarchy::detect_at(tmp.path());
        assert_eq!(
            hierarchy,
            Hierarchy::V1 {
                memory: tmp.path().join("memory/devcell"),
                cpu: tmp.path().join("cpu,cpuacct/devcell"),
                pids: tmp.path().join("pids/devcell"),
            }
        );
        assert_eq!(hierarchy.describe(), "cgroup v1 (memory, cpu, pids)");
        hierarchy
            .create("ws_v1", &limits(250, 32 * MIB, 7))
            .unwrap();
        assert_eq!(
            read(
                &tmp.path()
                    .join("cpu,cpuacct/devcell/ws_v1/cpu.cfs_quota_us")
            ),
            "25000"
        );
        assert_eq!(
            read(
                &tmp.path()
                    .join("memory/devcell/ws_v1/memory.limit_in_bytes")
            ),
            (32 * MIB).to_string()
        );
        assert_eq!(read(&tmp.path().join("pids/devcell/ws_v1/pids.max")), "7");
    }

    #[test]
    fn nothing_mounted_is_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::detect_at(tmp.path());
        assert!(
            matches!(hierarchy, Hierarchy::Unavailable { .. }),
            "{hierarchy:?}"
        );
        assert!(
            hierarchy.describe().starts_with("cgroups unavailable"),
            "{}",
            hierarchy.describe()
        );
        let err = hierarchy.create("ws_a", &limits(100, MIB, 1)).unwrap_err();
        assert!(matches!(err, CgroupError::Unavailable(_)), "{err}");
        assert!(hierarchy.open("ws_a").is_none());
    }

    #[test]
    fn names_are_validated() {
        for good in ["ws_01hx3k9", "a", "0_9", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "WS_1",
            "ws-1",
            "ws 1",
            "ws.1",
            "é",
            &"x".repeat(65),
        ] {
            let err = validate_name(bad).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidName { .. }), "{bad}");
        }
        // create refuses before touching the file system.
        let tmp = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V2 {
            root: tmp.path().join("devcell"),
        };
        let err = hierarchy.create("../escape", &limits(1, 1, 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid cgroup name \"../escape\": only a-z, 0-9 and _ are allowed"
        );
        assert!(!tmp.path().join("escape").exists());
        assert!(hierarchy.open("../escape").is_none());
    }

    #[test]
    fn create_failure_names_path_and_errno() {
        let tmp = tempfile::tempdir().unwrap();
        let memory = tmp.path().join("missing/devcell");
        let hierarchy = Hierarchy::V1 {
            memory: memory.clone(),
            cpu: memory.clone(),
            pids: memory.clone(),
        };
        let err = hierarchy.create("ws_e", &limits(1, 1, 1)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot create {}", memory.join("ws_e").display())),
            "{text}"
        );
        assert!(text.contains("os error 2"), "{text}");
        let denied = CgroupError::Create {
            path: PathBuf::from("/sys/fs/cgroup/memory/devcell/ws_x"),
            source: io::Error::from_raw_os_error(13),
        };
        assert_eq!(
            denied.to_string(),
            "cannot create /sys/fs/cgroup/memory/devcell/ws_x: Permission denied (os error 13) (is the cell running as root?)"
        );
    }

    #[test]
    fn enter_writes_own_pid_to_each_file() {
        let tmp = tempfile::tempdir().unwrap();
        let files = vec![tmp.path().join("a"), tmp.path().join("b")];
        for f in &files {
            fs::write(f, "").unwrap();
        }
        enter(&files).unwrap();
        for f in &files {
            assert_eq!(read(f), std::process::id().to_string());
        }
        // Missing files are an error (no O_CREAT: cgroupfs files always exist).
        assert!(enter(&[tmp.path().join("nope")]).is_err());
        let mut buf = [0u8; 12];
        assert_eq!(format_u32(0, &mut buf), b"0");
        assert_eq!(format_u32(u32::MAX, &mut buf), b"4294967295");
    }

    #[test]
    fn keyed_values_parse() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(2));
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
        assert_eq!(cpu_quota(5), Some(1000));
        assert_eq!(cpu_quota(0), None);
        assert_eq!(cpu_quota(u32::MAX), Some(u64::from(u32::MAX) * 100));
    }
}
