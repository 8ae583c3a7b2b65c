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
