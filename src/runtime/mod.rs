//! Where workspaces run. The [`Runtime`] trait is what the reconciler and the API use; `local`
//! runs each workspace as a bubblewrap sandbox on this host, limited by cgroups. A Kubernetes
//! backend can be added behind the same trait.

pub mod cgroup;
pub mod disk;
pub mod local;
mod loopdev;
pub mod rebase;
pub mod seccomp;

use std::path::PathBuf;

use crate::content::git::RepoStatus;
use crate::domain::WorkspaceId;
use futures::future::BoxFuture;

pub use local::LocalRuntime;

/// A compose service to run beside a workspace.
#[derive(Debug, Clone)]
pub struct ServiceRun {
    pub name: String,
    /// The service image's root filesystem.
    pub root: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    /// Named volumes: host directory (on the workspace's disk) and where the service sees it.
    pub volumes: Vec<(PathBuf, String)>,
    /// Where its output goes (the cell's, outside the sandbox).
    pub log: PathBuf,
}

/// Everything a runtime needs to start one workspace.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub id: WorkspaceId,
    /// Host directory holding `workspace/`, `home/` and `run/` of this workspace: the
    /// sandbox writes into all three.
    pub dir: PathBuf,
    /// The cell's own directory for this sandbox (its filter, logs, the agent's spec): never
    /// visible inside the sandbox (`local::STATE_DIR` under `dir`).
    pub state: PathBuf,
    /// Host uid and gid the sandbox runs as (when the cell runs as root).
    pub uid: Option<(u32, u32)>,
    pub limits: cgroup::Limits,
    /// Outbound network access (organization policy).
    pub network: bool,
    /// An unpacked OCI image to use as the root filesystem; `None` is the host's own system
    /// directories, read-only.
    pub root: Option<PathBuf>,
    /// Who the workspace's processes are inside the sandbox.
    pub user: SandboxUser,
    /// Symbolic links made in the sandbox's own root: (path, target), for the places a
    /// repository's configuration expects its files (`/workspaces/NAME` → `/workspace/NAME`).
    pub links: Vec<(String, String)>,
}

/// The workspace's user inside its sandbox: `dev` (uid and gid 1000, home `/home/dev`) unless
/// the repository names one of the image's users (devcontainer `remoteUser`). Whichever it is,
/// it is the workspace's own host uid seen through the sandbox's user namespace, and its home
/// is the workspace's `home/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl Default for SandboxUser {
    fn default() -> Self {
        SandboxUser {
            name: "dev".into(),
            uid: 1000,
            gid: 1000,
            home: local::HOME_MOUNT.into(),
        }
    }
}

impl SandboxUser {
    /// The user `spec` (a name, `uid` or `uid:gid`) names in the accounts of the root
    /// filesystem `root` (an image's, or the host's `/`). Its home is where the workspace's
    /// `home/` is mounted: the account's own when the sandbox can mount there (a path the
    /// sandbox makes itself, or a directory of the root), else `/home/NAME`.
    pub fn of(root: &std::path::Path, spec: &str) -> Result<SandboxUser, String> {
        let dir = crate::beneath::Dir::open(root).ok();
        let read = |rel: &str| -> String {
            dir.as_ref()
                .and_then(|d| d.read_file(std::path::Path::new(rel), 1 << 20, true).ok())
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let passwd = read("etc/passwd");
        let entry = |f: &dyn Fn(&[&str]) -> bool| -> Option<Vec<String>> {
            passwd.lines().find_map(|l| {
                let fields: Vec<&str> = l.split(':').collect();
                (fields.len() >= 4 && f(&fields))
                    .then(|| fields.iter().map(|s| s.to_string()).collect())
            })
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u.trim(), Some(g.trim())),
            None => (spec.trim(), None),
        };
        let found = match user.parse::<u32>() {
            Ok(uid) => entry(&|f| f[2] == uid.to_string()).or_else(|| {
                Some(vec![
                    if uid == 0 { "root" } else { "dev" }.into(),
                    "x".into(),
                    uid.to_string(),
                    uid.to_string(),
                    String::new(),
                    String::new(),
                ])
            }),
            Err(_) => entry(&|f| f[0] == user),
        }
        .ok_or_else(|| {
            format!("remoteUser {user:?} is not a user of the image (its /etc/passwd); name one that is, or a uid")
        })?;
        let uid: u32 = found[2]
            .parse()
            .map_err(|_| format!("the image's /etc/passwd gives {user:?} no numeric uid"))?;
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => read("etc/group")
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.first() == Some(&g)).then(|| f.get(2)?.parse().ok())?
                    })
                    .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
            },
            None => found[3].parse().unwrap_or(uid),
        };
        // The name goes into the sandbox's /etc/passwd: nothing that would break its lines.
        let name = found[0].clone();
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        };
        if !plain(&name) {
            return Err(format!(
                "remoteUser {user:?}: the image's account name {name:?} cannot be used"
            ));
        }
        let home = found.get(5).cloned().unwrap_or_default();
        let home = if home_mountable(dir.as_ref(), &home) {
            home
        } else if uid == 0 {
            "/root".into()
        } else {
            format!("/home/{name}")
        };
        Ok(SandboxUser {
            name,
            uid,
            gid,
            home,
        })
    }
}

/// Whether a sandbox on `root` can mount the workspace's home at `home`: an absolute, plain
/// path under none of the sandbox's own mounts, whose first name the root does not have (the
/// sandbox makes it) or which is a directory of the root, reached without a link.
fn home_mountable(root: Option<&crate::beneath::Dir>, home: &str) -> bool {
    let Some(rel) = home.strip_prefix('/') else {
        return false;
    };
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some(first) = parts.first() else {
        return false;
    };
    if parts.iter().any(|p| matches!(*p, "." | ".."))
        || local::SANDBOX_OWN.contains(first) && *first != "home"
    {
        return false;
    }
    // Never over a whole top-level folder of the image (`/usr`, `/etc`), but root's.
    let in_root = |rel: &str| {
        root.is_some_and(|d| {
            d.open_at(std::path::Path::new(rel), rustix::fs::OFlags::PATH, false)
                .is_ok()
        })
    };
    if parts.len() == 1 && *first != "root" && in_root(first) {
        return false;
    }
    *first == "home"
        || root.is_some_and(|d| d.has_dir(std::path::Path::new(rel)))
        || root.is_some() && !in_root(first)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the sandbox: {0}")]
    Start(String),
    #[error("cannot apply the class limits: {0}")]
    Limits(#[from] cgroup::CgroupError),
    #[error("{0}")]
    Disk(#[from] disk::DiskError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes a snapshot's files into the directory it is given (a new one, which only the cell
/// can reach); see [`Runtime::replace_files`].
pub type Restore<'a> = &'a mut (dyn FnMut(&std::path::Path) -> Result<(), String> + Send);

pub trait Runtime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Makes what a workspace needs before its sandbox starts: its directories (owned by its
    /// user) and the cell's own place for its sandbox.
    fn prepare(&self, _spec: &SandboxSpec) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// The last `tail` bytes of each of the first `count` task logs, as the workspace's files
    /// hold them (read the way the workspace's user could, never following its links).
    fn task_logs(&self, _spec: &SandboxSpec, count: usize, _tail: u64) -> Vec<Vec<u8>> {
        vec![Vec::new(); count]
    }
    /// Replaces the workspace's files (`workspace/`, and `home/` when restored) with what
    /// `restore` writes into a new directory that nothing of the workspace can reach; the old
    /// files go. Never writes through a link the workspace left.
    fn replace_files(
        &self,
        _spec: &SandboxSpec,
        _restore: Restore<'_>,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Start(
            "this runtime cannot restore files".into(),
        ))
    }
    /// Who git runs as when it clones into the workspace's files (`spec.dir`), and how it
    /// becomes them.
    fn git_as(&self, spec: &SandboxSpec) -> Option<crate::content::git::RunAs> {
        spec.uid.map(|(uid, gid)| crate::content::git::RunAs {
            uid,
            gid,
            via: None,
        })
    }
    /// What enforces limits here, for the admin page ("cgroup v1 (memory, cpu, pids)").
    fn describe(&self) -> String;
    /// Starts the sandbox with its agent; returns when the process is launched.
    fn start<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Ends every process of the workspace and releases its limits.
    fn stop<'a>(&'a self, id: &'a WorkspaceId) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Gives a workspace's files a disk of the class's size where this runtime limits disk
    /// size: mounts it, or with `create` makes it first. Blocks for a few milliseconds.
    fn attach_files(&self, _files: &disk::Files, _create: bool) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Unmounts the disk of a workspace's files; with `delete` it goes, with every file on it.
    fn detach_files(&self, _files: &disk::Files, _delete: bool) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Holds every process of a running workspace still (`true`) or lets them go on: while
    /// held, the workspace changes none of its files, so the cell may read them by path (a
    /// backup of a running workspace) without a link being swapped in under it.
    fn hold(&self, _id: &WorkspaceId, _held: bool) -> Result<(), RuntimeError> {
        Err(RuntimeError::Start(
            "this runtime cannot hold a workspace still".into(),
        ))
    }
    /// The git state of the repositories `repos` (directory names under `/workspace`) as the
    /// workspace's files hold them now, running or not. git runs the repository's own
    /// configuration (filters, fsmonitor, hooks), which is the workspace's: it runs inside a
    /// sandbox of the workspace, never on the host. Repositories that cannot be read are left
    /// out.
    fn git_state<'a>(
        &'a self,
        spec: &'a SandboxSpec,
        repos: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<RepoStatus>, RuntimeError>>;
    /// Starts a compose service of the running workspace `spec` beside its sandbox, sharing
    /// its network and limits; it ends with the workspace.
    fn start_service<'a>(
        &'a self,
        _spec: &'a SandboxSpec,
        _service: &'a ServiceRun,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async {
            Err(RuntimeError::Start(
                "this runtime cannot run compose services".into(),
            ))
        })
    }
    /// Runs one step of an image build for the workspace `spec` (its limits, its network
    /// policy, its cell-only directory) as the host uid `uid`, and returns its exit code.
    fn build_step<'a>(
        &'a self,
        _spec: &'a SandboxSpec,
        _step: &'a crate::content::image::build::StepRun,
        _uid: u32,
    ) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        Box::pin(async {
            Err(RuntimeError::Start(
                "this runtime cannot build images; name a prebuilt image instead".into(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_user_is_one_of_the_image_with_a_home_the_sandbox_can_mount() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("root")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::create_dir_all(r.join("etc/svc")).unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nvscode:x:1000:1000::/home/vscode:/bin/bash\n\
             node:x:1001:1002::/usr/lib/node-home:/bin/sh\nsvc:x:1003:1003::/nonexistent:/bin/false\n\
             etc:x:1005:1005::/etc:/bin/sh\ndaemon:x:1006:1006::/etc/svc:/bin/sh\n\
             procs:x:1007:1007::/proc/1/root:/bin/sh\nclimb:x:1008:1008::/home/../etc:/bin/sh\n\
             we ird:x:1009:1009::/home/w:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let user = |s: &str| SandboxUser::of(r, s);
        let u = user("vscode").unwrap();
        assert_eq!(
            (u.name.as_str(), u.uid, u.gid, u.home.as_str()),
            ("vscode", 1000, 1000, "/home/vscode")
        );
        let u = user("root").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        // A home in a folder of the image that is not there: the sandbox cannot make it.
        assert_eq!(user("node").unwrap().home, "/home/node");
        // A home the sandbox makes on its own root is fine.
        assert_eq!(user("svc").unwrap().home, "/nonexistent");
        assert_eq!(user("vscode:staff").unwrap().gid, 50);
        // Never over a whole folder of the image; a folder inside one that it has is fine.
        assert_eq!(user("etc").unwrap().home, "/home/etc");
        assert_eq!(user("daemon").unwrap().home, "/etc/svc");
        // Never under the sandbox's own mounts, never climbing out.
        assert_eq!(user("procs").unwrap().home, "/home/procs");
        assert_eq!(user("climb").unwrap().home, "/home/climb");
        // A name that would not be one line of /etc/passwd is refused.
        assert!(user("we ird").unwrap_err().contains("cannot be used"));
        assert_eq!(user("0").unwrap().name, "root");
        assert_eq!(user("4242:4242").unwrap().uid, 4242);
        for missing in ["nobody-here", "vscode:nogroup"] {
            let e = user(missing).unwrap_err();
            assert!(e.contains("is not"), "{missing}: {e}");
        }
    }
}
