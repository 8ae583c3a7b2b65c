//! Running workspaces: the start/stop requests of users, and the reconciliation that moves a
//! workspace's observed phase toward its desired state through the runtime
//! (`pending → creating → initializing → running → stopping → stopped`, or `failed`).
//!
//! Users only change the desired state; the reconciler (a worker) does the work, one
//! workspace at a time per id, and records every phase change with its time and message.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Actor, Cell, Error, Result};
use crate::agent::client::AgentClient;
use crate::agent::protocol::{AgentSpec, ExecRequest, ExecResponse, SPEC, TaskState};
use crate::content::git;
use crate::domain::entities::{PortShare, Visibility, Workspace};
use crate::domain::policy::{Policy, StopReason};
use crate::domain::{Desired, Phase, WorkspaceId};
use crate::runtime::cgroup::Limits;
use crate::runtime::{SandboxSpec, disk, local};
use crate::store::Reader;

/// What a caller asks to run inside a workspace.
pub struct ExecInput {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub timeout: Option<Duration>,
    pub stdin: Option<String>,
}

/// A port of a workspace as its owner sees it.
pub struct PortView {
    pub port: u16,
    /// Something listens on it right now.
    pub listening: bool,
    /// Named in the repository's configuration (with that name, if any).
    pub configured: Option<String>,
    pub visibility: Visibility,
    /// Where a browser opens it: the port's own origin (or its path, with `server.path_ports`).
    pub url: String,
}

/// A task of a running (or stopped) workspace with its log.
pub struct TaskView {
    pub index: usize,
    pub name: String,
    /// `pending`, `running`, `done`, `failed`, or `unknown` when the agent is not reachable.
    pub state: String,
    pub exit_code: Option<i32>,
    pub log: String,
}

/// How long the agent gets to answer after the sandbox is launched.
const AGENT_READY: Duration = Duration::from_secs(20);
/// How long after a start its fresh clones are synced to disk.
const SYNC_CLONES_AFTER: Duration = Duration::from_secs(1);
/// Task logs returned by the API are cut to their last this many bytes.
const LOG_TAIL: usize = 64 * 1024;

/// One operation's use of a workspace's files (`Cell::use_files`); the last use of a
/// workspace that does not run unmounts its disk when it ends.
pub struct FilesInUse {
    cell: Cell,
    id: WorkspaceId,
}

impl Drop for FilesInUse {
    fn drop(&mut self) {
        let mut users = self
            .cell
            .inner
            .file_users
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let left = users.get_mut(&self.id).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            users.remove(&self.id);
            self.cell.unmount_if_idle(&self.id);
        }
    }
}

impl Cell {
    pub(crate) fn wake_reconciler(&self) {
        self.inner.wake.notify_one();
    }

    /// Wakes the reconciler (for the worker itself, after finishing a step).
    pub fn wake(&self) {
        self.wake_reconciler();
    }

    /// Resolves when a desired state changed (or right away if one changed since the last call).
    pub async fn reconcile_wanted(&self) {
        self.inner.wake.notified().await;
    }

    pub fn runtime_description(&self) -> String {
        self.inner
            .runtime
            .as_ref()
            .map(|r| r.describe())
            .unwrap_or_else(|| "none: workspaces are records only".into())
    }

    /// When the inactivity timeout or the maximum lifetime will stop a running workspace, and
    /// the warning its user should see now, if any.
    pub fn stop_plan(&self, ws: &Workspace) -> Option<StopPlan> {
        if ws.lifecycle.phase != Phase::Running || ws.lifecycle.desired != Desired::Running {
            return None;
        }
        let policy = self.store().read(|tx| tx.org(&ws.org)).ok()??.policy;
        stop_plan(&policy, ws, self.now())
    }

    /// For a list page: each workspace's class name and stop plan, at one clock reading, each
    /// class and organization read once (a page may hold hundreds of workspaces).
    pub fn list_details(&self, list: &[Workspace]) -> Vec<(String, Option<StopPlan>)> {
        let now = self.now();
        let mut classes: HashMap<crate::domain::ClassId, String> = HashMap::new();
        let mut policies: HashMap<crate::domain::OrgId, Option<Policy>> = HashMap::new();
        self.store()
            .read(|tx| {
                let mut out = Vec::with_capacity(list.len());
                for ws in list {
                    if !classes.contains_key(&ws.class) {
                        let name = tx
                            .class(&ws.class)?
                            .map_or_else(|| "?".into(), |c| c.spec.name);
                        classes.insert(ws.class.clone(), name);
                    }
                    let running = ws.lifecycle.phase == Phase::Running
                        && ws.lifecycle.desired == Desired::Running;
                    let plan = if running {
                        if !policies.contains_key(&ws.org) {
                            policies.insert(ws.org.clone(), tx.org(&ws.org)?.map(|o| o.policy));
                        }
                        policies[&ws.org]
                            .as_ref()
                            .and_then(|p| stop_plan(p, ws, now))
                    } else {
                        None
                    };
                    out.push((classes[&ws.class].clone(), plan));
                }
                Ok::<_, crate::store::StoreError>(out)
            })
            .unwrap_or_else(|_| list.iter().map(|_| ("?".into(), None)).collect())
    }

    /// The policy that bounds a workspace's timeout (the default policy if its organization is
    /// gone), for pages that show the limits to members too.
    pub fn timeout_policy(&self, ws: &Workspace) -> Policy {
        self.store()
            .read(|tx| tx.org(&ws.org))
            .ok()
            .flatten()
            .map(|o| o.policy)
            .unwrap_or_default()
    }

    /// A class's name for display ("?" when it is gone).
    pub fn class_name(&self, id: &crate::domain::ClassId) -> String {
        self.store()
            .read(|tx| tx.class(id))
            .ok()
            .flatten()
            .map(|c| c.spec.name)
            .unwrap_or_else(|| "?".into())
    }

    /// The cache of OCI images (pulled or imported), shared by all workspaces.
    pub fn images(&self) -> crate::content::image::ImageStore {
        crate::content::image::ImageStore::new(self.config().data_dir.join("images"))
            .with_egress(self.inner.egress.clone())
            .with_mirrors(self.config().image.mirrors())
    }

    /// Removes what image builds cached and no build used for `image.build_cache_keep`.
    pub async fn prune_build_cache(
        &self,
    ) -> std::result::Result<crate::content::image::build::Pruned, crate::content::image::ImageError>
    {
        let images = self.images();
        let keep = self.config().image.build_cache_keep;
        tokio::task::spawn_blocking(move || images.prune_build_cache(keep))
            .await
            .map_err(|e| crate::content::image::ImageError::Io {
                context: "pruning the build cache".into(),
                source: std::io::Error::other(e),
            })?
    }

    /// Whether the workspace's organization gives its workspaces outbound network.
    fn outbound(&self, ws: &Workspace) -> bool {
        self.store()
            .read(|tx| tx.org(&ws.org))
            .ok()
            .flatten()
            .is_some_and(|o| o.policy.outbound_network)
    }

    /// Where the cell may connect for a workspace's clones and pulls: the operator's rule,
    /// narrowed to the destinations the operator allows when the organization gives its
    /// workspaces no outbound network.
    fn egress(&self, outbound: bool) -> crate::content::egress::Egress {
        if outbound {
            self.inner.egress.clone()
        } else {
            self.inner.egress.only_allowed()
        }
    }

    /// The host directory of a workspace's files.
    pub fn workspace_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.config().data_dir.join("workspaces").join(id.as_str())
    }

    /// The cell's own directory for a workspace's sandbox (spec, filter, logs): never visible
    /// inside the sandbox.
    fn sandbox_state(&self, id: &WorkspaceId) -> PathBuf {
        self.workspace_dir(id).join(local::STATE_DIR)
    }

    /// What the agent was last told: the configured tasks and ports.
    fn last_spec(&self, id: &WorkspaceId) -> Option<AgentSpec> {
        std::fs::read(self.sandbox_state(id).join(SPEC))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn agent(&self, id: &WorkspaceId) -> AgentClient {
        AgentClient::new(&self.workspace_dir(id).join("run"))
    }

    /// A workspace's files and the disk they may take (`bytes` 0: as it is).
    pub(crate) fn files(&self, id: &WorkspaceId, bytes: u64) -> disk::Files {
        disk::Files {
            dir: self.workspace_dir(id),
            image: self
                .config()
                .data_dir
                .join("disks")
                .join(format!("{id}.ext4")),
            bytes,
        }
    }

    /// Mounts the disk of the workspace's files if it has one and the runtime limits disk
    /// size; with `create`, makes it first at the class's size. Everything that reads or writes
    /// a workspace's files calls this first: after a host restart nothing is mounted.
    pub(crate) fn attach_files(
        &self,
        ws: &Workspace,
        create: bool,
    ) -> std::result::Result<(), String> {
        let Some(runtime) = &self.inner.runtime else {
            return Ok(());
        };
        let bytes = self
            .store()
            .read(|tx| tx.class(&ws.class))
            .ok()
            .flatten()
            .map_or(0, |c| c.spec.disk_bytes);
        runtime
            .attach_files(&self.files(&ws.id, bytes), create)
            .map_err(|e| e.to_string())
    }

    /// Mounts a workspace's files (as `attach_files`) for one operation: the disk stays
    /// mounted while any such use lasts or the workspace runs, and is unmounted when the last
    /// use of a workspace that does not run ends (so a stopped workspace holds no mount and
    /// its data directory can be removed). Mounting and the last use's unmount are serialised
    /// per cell, so an unmount never races a start's mount.
    pub(crate) fn use_files(
        &self,
        ws: &Workspace,
        create: bool,
    ) -> std::result::Result<FilesInUse, String> {
        let mut users = self
            .inner
            .file_users
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.attach_files(ws, create)?;
        *users.entry(ws.id.clone()).or_insert(0) += 1;
        Ok(FilesInUse {
            cell: self.clone(),
            id: ws.id.clone(),
        })
    }

    /// Keeps a workspace's files on the host (its disk mounted at `workspace_dir`) while the
    /// returned guard lives, to look at a stopped workspace's files from the host.
    pub fn hold_files(&self, id: &WorkspaceId) -> Result<FilesInUse> {
        let ws = self
            .load(id)?
            .ok_or(Error::NotFound { what: "workspace" })?;
        self.use_files(&ws, false).map_err(Error::Internal)
    }

    /// Unmounts a workspace's disk when nothing uses its files and it does not run (after a
    /// failed start, for one).
    pub(crate) fn settle_files(&self, id: &WorkspaceId) {
        let users = self
            .inner
            .file_users
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if users.get(id).copied().unwrap_or(0) == 0 {
            self.unmount_if_idle(id);
        }
    }

    /// Unmounts the disk of a workspace that does not run; the caller holds `file_users`.
    fn unmount_if_idle(&self, id: &WorkspaceId) {
        let idle = match self.load(id) {
            Ok(Some(w)) => match w.lifecycle.phase {
                Phase::Stopped | Phase::Failed => true,
                Phase::Pending => w.lifecycle.desired != Desired::Running,
                _ => false,
            },
            _ => false,
        };
        if idle && let Err(e) = self.detach_files(id) {
            tracing::warn!(workspace = %id, error = %e, "the stopped workspace's disk stays mounted");
        }
    }

    /// Unmounts the disk of a workspace's files (they are released to the backup).
    pub(crate) fn detach_files(&self, id: &WorkspaceId) -> Result<()> {
        if let Some(runtime) = &self.inner.runtime {
            runtime
                .detach_files(&self.files(id, 0), false)
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        Ok(())
    }

    pub(crate) fn remove_files(&self, id: &WorkspaceId) -> Result<()> {
        if let Some(runtime) = &self.inner.runtime {
            runtime
                .detach_files(&self.files(id, 0), true)
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        let dir = self.workspace_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Internal(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
        }
    }

    /// Asks for the workspace to run. Returns at once; the reconciler starts it.
    pub fn start_workspace(&self, actor: &Actor, id: &WorkspaceId) -> Result<Workspace> {
        self.owners_workspace(actor, id, "start it")?;
        if self.inner.runtime.is_none() {
            return Err(Error::Conflict {
                code: "no_runtime",
                message: "this cell has no runtime to run workspaces".into(),
            });
        }
        let now = self.now();
        let ws = self.store().write(|tx| -> Result<Workspace> {
            let mut ws = tx
                .workspace(id)?
                .ok_or(Error::NotFound { what: "workspace" })?;
            if ws.lifecycle.desired == Desired::Running && ws.lifecycle.phase != Phase::Failed {
                return Ok(ws);
            }
            let org = tx.org(&ws.org)?.ok_or(Error::NotFound {
                what: "organization",
            })?;
            let running = running_of(tx, &ws.owner, &ws.id)?;
            org.policy.check_can_start(running)?;
            org.policy.check_class(&ws.class)?;
            ws.lifecycle.set_desired(Desired::Running)?;
            if matches!(ws.lifecycle.phase, Phase::Stopped | Phase::Failed) {
                ws.lifecycle
                    .transition(Phase::Pending, now, Some("start requested".into()))?;
            }
            ws.last_activity = now;
            tx.put_workspace(&ws)?;
            Ok(ws)
        })?;
        self.wake_reconciler();
        Ok(ws)
    }

    /// Stops a running workspace as any stop does (git state, snapshot), then starts it again:
    /// its sandbox, tasks and terminals begin afresh on the same files.
    pub fn restart_workspace(&self, actor: &Actor, id: &WorkspaceId) -> Result<Workspace> {
        self.owners_workspace(actor, id, "restart it")?;
        let now = self.now();
        let ws = self.store().write(|tx| -> Result<Workspace> {
            let mut ws = tx
                .workspace(id)?
                .ok_or(Error::NotFound { what: "workspace" })?;
            if ws.lifecycle.desired != Desired::Running || ws.lifecycle.phase != Phase::Running {
                return Err(Error::Conflict {
                    code: "not_running",
                    message: format!(
                        "the workspace is {}; only a running workspace restarts (start it instead)",
                        ws.lifecycle.phase.as_str()
                    ),
                });
            }
            // Desired stays running: once stopped, the reconciler starts it again.
            ws.lifecycle
                .transition(Phase::Stopping, now, Some("restart requested".into()))?;
            ws.last_activity = now;
            tx.put_workspace(&ws)?;
            Ok(ws)
        })?;
        self.wake_reconciler();
        Ok(ws)
    }

    /// Asks for the workspace to stop; the reconciler records its git state and stops it.
    pub fn stop_workspace(&self, actor: &Actor, id: &WorkspaceId) -> Result<Workspace> {
        self.get_workspace(actor, id)?;
        let ws = self.store().write(|tx| -> Result<Workspace> {
            let mut ws = tx
                .workspace(id)?
                .ok_or(Error::NotFound { what: "workspace" })?;
            if ws.lifecycle.desired == Desired::Running {
                ws.lifecycle.set_desired(Desired::Stopped)?;
                tx.put_workspace(&ws)?;
            }
            Ok(ws)
        })?;
        self.wake_reconciler();
        Ok(ws)
    }

    fn running(&self, actor: &Actor, id: &WorkspaceId) -> Result<Workspace> {
        let ws = self.owners_workspace(actor, id, "work in it")?;
        if ws.lifecycle.phase != Phase::Running {
            return Err(Error::Conflict {
                code: "not_running",
                message: format!(
                    "the workspace is {}; start it first",
                    ws.lifecycle.phase.as_str()
                ),
            });
        }
        Ok(ws)
    }

    /// The workspace's ports: what listens, what the configuration names, and who may reach each.
    pub async fn ports(&self, actor: &Actor, id: &WorkspaceId) -> Result<Vec<PortView>> {
        let ws = self.get_workspace(actor, id)?;
        let spec = self.last_spec(&ws.id).unwrap_or_default();
        let listening = if ws.lifecycle.phase == Phase::Running {
            self.agent(&ws.id).ports().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut ports: std::collections::BTreeSet<u16> = listening.iter().copied().collect();
        ports.extend(spec.ports.iter().map(|p| p.port));
        ports.extend(ws.ports.iter().map(|p| p.port));
        Ok(ports
            .into_iter()
            .map(|port| PortView {
                port,
                listening: listening.contains(&port),
                configured: spec
                    .ports
                    .iter()
                    .find(|p| p.port == port)
                    .map(|p| p.name.clone().unwrap_or_default()),
                visibility: ws
                    .ports
                    .iter()
                    .find(|p| p.port == port)
                    .map(|p| p.visibility)
                    .unwrap_or(Visibility::Private),
                url: self.port_url(&ws.id, port),
            })
            .collect())
    }

    /// Shares a port with the organization or everyone, or makes it private again.
    pub fn share_port(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
        port: u16,
        visibility: Visibility,
    ) -> Result<()> {
        self.owners_workspace(actor, id, "share its ports")?;
        if port == 0 {
            return Err(
                crate::domain::FieldError::new("port", "a port between 1 and 65535").into(),
            );
        }
        self.store().write(|tx| -> Result<()> {
            let mut w = tx
                .workspace(id)?
                .ok_or(Error::NotFound { what: "workspace" })?;
            w.ports.retain(|p| p.port != port);
            if visibility != Visibility::Private {
                w.ports.push(PortShare { port, visibility });
                w.ports.sort_by_key(|p| p.port);
            }
            tx.put_workspace(&w)?;
            Ok(())
        })
    }

    /// Whether `actor` (or an anonymous caller) may reach `port` of a running workspace; returns
    /// the agent to tunnel through.
    pub fn authorize_port(
        &self,
        actor: Option<&Actor>,
        id: &WorkspaceId,
        port: u16,
    ) -> Result<AgentClient> {
        self.may_reach_port(actor, id, port)?;
        self.note_activity(id);
        Ok(self.agent(id))
    }

    /// Whether `actor` may reach `port` of the running workspace now: public ports anyone,
    /// organization ports members of its organization, private ports its owner while a member.
    pub fn may_reach_port(&self, actor: Option<&Actor>, id: &WorkspaceId, port: u16) -> Result<()> {
        let ws = self
            .load(id)?
            .ok_or(Error::NotFound { what: "workspace" })?;
        let visibility = ws
            .ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.visibility)
            .unwrap_or(Visibility::Private);
        let allowed = match (visibility, actor) {
            (Visibility::Public, _) => true,
            (_, None) => return Err(Error::Unauthenticated),
            (Visibility::Private, Some(a)) => {
                a.user.id == ws.owner && self.is_member(a, &ws.org)?
            }
            (Visibility::Org, Some(a)) => self.is_member(a, &ws.org)?,
        };
        if !allowed {
            // As for workspaces: people who may not use it learn nothing about it.
            return Err(Error::NotFound { what: "workspace" });
        }
        if ws.lifecycle.phase != Phase::Running {
            return Err(Error::Conflict {
                code: "not_running",
                message: format!("the workspace is {}", ws.lifecycle.phase.as_str()),
            });
        }
        Ok(())
    }

    /// The agent of a running workspace of the caller's, for terminals.
    pub fn workspace_agent(&self, actor: &Actor, id: &WorkspaceId) -> Result<AgentClient> {
        let ws = self.running(actor, id)?;
        self.note_activity(&ws.id);
        Ok(self.agent(&ws.id))
    }

    /// Runs a command in a running workspace and returns its exit code and output.
    pub async fn exec(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
        input: ExecInput,
    ) -> Result<ExecResponse> {
        let ws = self.running(actor, id)?;
        if input.argv.is_empty() || input.argv.iter().any(|a| a.contains('\0')) {
            return Err(crate::domain::FieldError::new(
                "command",
                "give the program and its arguments, e.g. [\"ls\", \"-la\"]",
            )
            .into());
        }
        if let Some(t) = input.timeout
            && (t.is_zero() || t > Duration::from_secs(3600))
        {
            return Err(
                crate::domain::FieldError::new("timeout_s", "between 1 and 3600 seconds").into(),
            );
        }
        self.note_activity(&ws.id);
        let req = ExecRequest {
            argv: input.argv,
            cwd: input.cwd,
            env: Vec::new(),
            timeout_s: input.timeout.map(|t| t.as_secs()),
            stdin: input.stdin,
        };
        self.agent(&ws.id)
            .exec(&req)
            .await
            .map_err(|e| Error::Conflict {
                code: "agent_unavailable",
                message: e.to_string(),
            })
    }

    /// The workspace's tasks and the tail of their logs.
    pub async fn tasks(&self, actor: &Actor, id: &WorkspaceId) -> Result<Vec<TaskView>> {
        let ws = self.get_workspace(actor, id)?;
        let build = self.build_view(&ws);
        let Some(spec) = self.last_spec(&ws.id) else {
            return Ok(build.into_iter().collect());
        };
        let live = if ws.lifecycle.phase == Phase::Running {
            self.agent(&ws.id).status().await.ok()
        } else {
            None
        };
        let count = spec.tasks.len();
        let logs = match (&self.inner.runtime, self.sandbox_spec(&ws, false)) {
            (Some(runtime), Ok(sandbox)) => {
                let runtime = runtime.clone();
                tokio::task::spawn_blocking(move || {
                    runtime.task_logs(&sandbox, count, LOG_TAIL as u64)
                })
                .await
                .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mut views: Vec<TaskView> = spec
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let st = live
                    .as_ref()
                    .and_then(|s| s.tasks.iter().find(|x| x.index == i).cloned());
                let log = logs.get(i).map(Vec::as_slice).unwrap_or_default();
                TaskView {
                    index: i,
                    name: t.name.clone(),
                    state: match st.as_ref().map(|s| &s.state) {
                        Some(TaskState::Pending) => "pending",
                        Some(TaskState::Running) => "running",
                        Some(TaskState::Done) => "done",
                        Some(TaskState::Failed) => "failed",
                        None => "unknown",
                    }
                    .into(),
                    exit_code: st.and_then(|s| s.exit_code),
                    log: String::from_utf8_lossy(log).into_owned(),
                }
            })
            .collect();
        if let Some(mut b) = build {
            b.index = views.len();
            views.push(b);
        }
        Ok(views)
    }

    /// The image build of the workspace's last start, as a task: its log (the step it is on
    /// last) and whether it is still going, finished or failed the start.
    fn build_view(&self, ws: &Workspace) -> Option<TaskView> {
        let live = self.sandbox_state(&ws.id).join(BUILD_LOG);
        let path = if live.is_file() {
            live
        } else if ws.lifecycle.phase == Phase::Failed {
            self.failed_build_log(&ws.id)
        } else {
            return None;
        };
        if !path.is_file() {
            return None;
        }
        let log = String::from_utf8_lossy(&read_tail(&path, LOG_TAIL as u64)).into_owned();
        let finished = log
            .lines()
            .any(|l| l.starts_with("image ") && l.ends_with(" ready"));
        let state = match ws.lifecycle.phase {
            _ if finished => "done",
            Phase::Creating | Phase::Initializing => "running",
            Phase::Failed => "failed",
            _ => "unknown",
        };
        Some(TaskView {
            index: 0,
            name: "image build".into(),
            state: state.into(),
            exit_code: None,
            log,
        })
    }

    /// Remembers activity in memory; [`Cell::flush_activity`] writes it in batches.
    pub fn note_activity(&self, id: &WorkspaceId) {
        if let Ok(mut m) = self.inner.activity.lock() {
            m.insert(id.clone(), self.now());
        }
    }

    /// Writes noted activity (and what running agents report) to the store, one transaction.
    pub async fn flush_activity(&self) -> Result<usize> {
        let running: Vec<Workspace> = self
            .active_workspaces()?
            .into_iter()
            .filter(|w| w.lifecycle.phase == Phase::Running)
            .collect();
        for w in &running {
            if let Ok(s) = self.agent(&w.id).status().await
                && let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(
                    s.last_activity_ms as i128 * 1_000_000,
                )
                && t > w.last_activity
                && let Ok(mut m) = self.inner.activity.lock()
            {
                let e = m.entry(w.id.clone()).or_insert(t);
                if *e < t {
                    *e = t;
                }
            }
        }
        let pending: Vec<_> = match self.inner.activity.lock() {
            Ok(mut m) => m.drain().collect(),
            Err(_) => Vec::new(),
        };
        if pending.is_empty() {
            return Ok(0);
        }
        self.store().write(|tx| -> Result<usize> {
            let mut n = 0;
            for (id, at) in &pending {
                if let Some(mut w) = tx.workspace(id)?
                    && *at > w.last_activity
                {
                    w.last_activity = *at;
                    tx.put_workspace(&w)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// One pass of the timeout rules at one `now`: running workspaces past their inactivity
    /// timeout or maximum lifetime are asked to stop (the history says why), and those within
    /// the warning window are returned so their users can be told. Activity the agents saw is
    /// recorded first, so nobody is stopped for activity that was not yet written.
    pub async fn enforce_timeouts(&self) -> Result<TimeoutPass> {
        self.flush_activity().await?;
        let now = self.now();
        let mut pass = TimeoutPass::default();
        let running: Vec<Workspace> = self
            .active_workspaces()?
            .into_iter()
            .filter(|w| {
                w.lifecycle.phase == Phase::Running && w.lifecycle.desired == Desired::Running
            })
            .collect();
        let mut policies: HashMap<crate::domain::OrgId, Option<Policy>> = HashMap::new();
        for ws in running {
            let policy = match policies.get(&ws.org) {
                Some(p) => p.clone(),
                None => {
                    let p = self.store().read(|tx| tx.org(&ws.org))?.map(|o| o.policy);
                    policies.insert(ws.org.clone(), p.clone());
                    p
                }
            };
            let (Some(policy), Some(started)) = (policy, started_at(&ws)) else {
                continue;
            };
            if let Some(reason) = policy.should_stop(now, ws.last_activity, started, ws.timeout) {
                let message = timeout_message(reason, &ws, &policy);
                let stopped = self.store().write(|tx| -> Result<bool> {
                    let Some(mut w) = tx.workspace(&ws.id)? else {
                        return Ok(false);
                    };
                    // Activity may have come in since the read above.
                    let again = policy.should_stop(now, w.last_activity, started, w.timeout);
                    if w.lifecycle.phase != Phase::Running
                        || w.lifecycle.desired != Desired::Running
                        || again.is_none()
                    {
                        return Ok(false);
                    }
                    w.lifecycle.set_desired(Desired::Stopped)?;
                    w.lifecycle
                        .transition(Phase::Stopping, now, Some(message.clone()))?;
                    tx.put_workspace(&w)?;
                    Ok(true)
                })?;
                if stopped {
                    tracing::info!(workspace = %ws.id, %reason, "stopping: {message}");
                    pass.stopped.push((ws.id.clone(), reason));
                }
            } else if let Some(plan) = stop_plan(&policy, &ws, now)
                && let Some(text) = plan.warning
            {
                pass.warnings.push((ws.id.clone(), plan.at, text));
            }
        }
        if !pass.stopped.is_empty() {
            self.wake_reconciler();
        }
        Ok(pass)
    }

    /// Shows `text` in the workspace's live terminals; returns how many saw it.
    pub async fn notify_terminals(&self, id: &WorkspaceId, text: &str) -> Result<usize> {
        self.agent(id)
            .notice(text)
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Workspaces whose desired state and phase disagree, or that are running.
    pub fn active_workspaces(&self) -> Result<Vec<Workspace>> {
        Ok(self
            .store()
            .read(|tx| tx.all_workspaces())?
            .into_iter()
            .filter(|w| needs_attention(w) || w.lifecycle.is_active())
            .collect())
    }

    /// Workspaces the reconciler must act on.
    pub fn workspaces_to_reconcile(&self) -> Result<Vec<WorkspaceId>> {
        Ok(self
            .store()
            .read(|tx| tx.all_workspaces())?
            .into_iter()
            .filter(needs_attention)
            .map(|w| w.id)
            .collect())
    }

    fn load(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        Ok(self.store().read(|tx| tx.workspace(id))?)
    }

    /// Records a phase change, unless the desired state changed meanwhile in a way that makes
    /// it moot (the stored record is re-read inside the transaction).
    /// Records a phase change if the desired state still is one of `when` (it is re-read inside
    /// the transaction: a user may have changed it since the reconciler decided).
    fn set_phase(
        &self,
        id: &WorkspaceId,
        phase: Phase,
        message: Option<String>,
        when: &[Desired],
    ) -> Result<Workspace> {
        let now = self.now();
        let lazy = matches!(phase, Phase::Creating | Phase::Initializing);
        let write = |tx: &crate::store::WriteTx| -> Result<Workspace> {
            let mut w = tx
                .workspace(id)?
                .ok_or(Error::NotFound { what: "workspace" })?;
            if w.lifecycle.phase != phase && when.contains(&w.lifecycle.desired) {
                w.lifecycle.transition(phase, now, message.clone())?;
                tx.put_workspace(&w)?;
            }
            Ok(w)
        };
        // Intermediate phases need no fsync: after a crash the reconciler starts over.
        if lazy {
            self.store().write_lazy(write)
        } else {
            self.store().write(write)
        }
    }

    /// Moves one workspace as far toward its desired state as it can go now.
    pub async fn reconcile(&self, id: &WorkspaceId) -> Result<()> {
        let Some(ws) = self.load(id)? else {
            return Ok(());
        };
        let Some(runtime) = self.inner.runtime.clone() else {
            return Ok(());
        };
        match (ws.lifecycle.desired, ws.lifecycle.phase) {
            (Desired::Running, Phase::Pending) => {
                if let Err(e) = self.bring_up(&ws, runtime.as_ref()).await {
                    tracing::warn!(workspace = %ws.id, error = %e, "start failed");
                    let _ = runtime.stop(&ws.id).await;
                    self.set_phase(
                        &ws.id,
                        Phase::Failed,
                        Some(e),
                        &[Desired::Running, Desired::Stopped, Desired::Deleted],
                    )?;
                    self.settle_files(&ws.id);
                }
            }
            (
                Desired::Stopped | Desired::Deleted,
                Phase::Creating | Phase::Initializing | Phase::Running,
            ) => {
                self.set_phase(
                    &ws.id,
                    Phase::Stopping,
                    Some("stop requested".into()),
                    &[Desired::Stopped, Desired::Deleted],
                )?;
                self.take_down(&ws, runtime.as_ref()).await?;
            }
            (_, Phase::Stopping) => self.take_down(&ws, runtime.as_ref()).await?,
            (Desired::Stopped, Phase::Pending) => {
                self.set_phase(
                    &ws.id,
                    Phase::Stopped,
                    Some("not started".into()),
                    &[Desired::Stopped],
                )?;
            }
            (Desired::Deleted, Phase::Pending | Phase::Stopped | Phase::Failed)
                if ws.backup.pending.is_some() =>
            {
                // Its files go only once a snapshot holds them (kept for the grace period).
            }
            (Desired::Deleted, Phase::Pending | Phase::Stopped | Phase::Failed) => {
                self.remove_files(&ws.id)?;
                let now = self.now();
                self.store().write(|tx| -> Result<()> {
                    if let Some(mut w) = tx.workspace(&ws.id)? {
                        w.lifecycle
                            .transition(Phase::Deleted, now, Some("deleted".into()))?;
                        tx.purge_workspace(&w, now, "deleted")?;
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// creating → initializing → running. Errors are messages for the workspace's history.
    async fn bring_up(
        &self,
        ws: &Workspace,
        runtime: &dyn crate::runtime::Runtime,
    ) -> std::result::Result<(), String> {
        let internal = |e: Error| e.to_string();
        let phase_start = std::time::Instant::now();
        let step = |what: &str| {
            tracing::debug!(workspace = %ws.id, ms = phase_start.elapsed().as_millis() as u64, "start: {what}");
        };
        tracing::debug!(workspace = %ws.id, since_created_ms = (self.now() - ws.created_at).whole_milliseconds() as i64, "start: picked up");
        let w = self
            .set_phase(
                &ws.id,
                Phase::Creating,
                Some("preparing files".into()),
                &[Desired::Running],
            )
            .map_err(internal)?;
        if w.lifecycle.phase != Phase::Creating {
            return Ok(());
        }
        step("creating");
        let dir = self.workspace_dir(&ws.id);
        if let Some(parent) = dir.parent() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| e.to_string())?;
        }
        // The disk comes first: everything below writes onto it. It stays mounted while the
        // workspace runs; a failed start unmounts it (`settle_files`).
        let _in_use = self.use_files(ws, true)?;
        step("disk ready");
        // Files released after a verified backup come back before anything runs.
        self.restore_released(ws).await?;
        let outbound = self.outbound(ws);
        let base = self.sandbox_spec(ws, outbound)?;
        runtime.prepare(&base).map_err(|e| e.to_string())?;
        let state = self.sandbox_state(&ws.id);
        // The spec and image build of an earlier start say nothing about this one.
        let _ = std::fs::remove_file(state.join(SPEC));
        let _ = std::fs::remove_file(state.join(BUILD_LOG));
        let _ = std::fs::remove_file(self.failed_build_log(&ws.id));
        let sandbox = |root: Option<PathBuf>| SandboxSpec {
            root,
            ..base.clone()
        };
        // A sandbox left from before (a crashed start) is replaced.
        let agent = self.agent(&ws.id);
        if agent.status().await.is_ok() {
            agent.shutdown().await;
        }
        runtime.stop(&ws.id).await.map_err(|e| e.to_string())?;
        step("no sandbox left");

        // The sandbox starts while the repositories are cloned: its agent waits for the spec.
        // Without an image of the workspace's own, the host's root is a guess that the
        // repository's configuration may overturn (then the sandbox starts again).
        let mut image = match &ws.image {
            Some(r) => Some(self.pull_image(ws, r, "the workspace").await?),
            None => None,
        };
        let t = std::time::Instant::now();
        let first_sandbox = sandbox(image.as_ref().map(|i| i.rootfs.clone()));
        let launch = async {
            runtime
                .start(&first_sandbox)
                .await
                .map_err(|e| e.to_string())?;
            step("sandbox launched");
            Ok::<_, String>(t.elapsed())
        };
        let files = dir.join("workspace");
        let egress = self.egress(outbound);
        let mut cloned_now = Vec::new();
        let clones = async {
            let mut first_repo: Option<PathBuf> = None;
            for (i, repo) in ws.repos.iter().enumerate() {
                // The first repository may have been checked out where its configuration
                // asked (`checkoutLocation`) when the workspace was made.
                let dest = files.join(&repo_dirs(ws)[i]);
                if first_repo.is_none() {
                    first_repo = Some(dest.clone());
                }
                if dest.join(".git").exists() {
                    continue;
                }
                self.check_file_repo(&ws.org, &ws.owner, &repo.url)
                    .map_err(|e| e.to_string())?;
                let auth = self
                    .git_auth_for(&ws.owner, &repo.url)
                    .map_err(|e| e.to_string())?;
                git::clone(git::Clone {
                    repo,
                    dest: &dest,
                    auth: &auth,
                    run_as: runtime.git_as(&base),
                    egress: &egress,
                })
                .await
                .map_err(|e| e.to_string())?;
                cloned_now.push(dest);
            }
            Ok::<_, String>(first_repo)
        };
        // git is spawned first, so the sandbox is set up (cgroups, filter, bubblewrap) while
        // it clones. A failed clone is the more telling error of the two.
        let (cloned, launched) = tokio::join!(biased; clones, launch);
        let mut first_repo = cloned?;
        let launched = launched?;
        step("repositories ready");
        let mut config = match &first_repo {
            Some(r) => crate::content::config::load(r).map_err(|e| e.to_string())?,
            None => Default::default(),
        };
        let source = config
            .source
            .clone()
            .unwrap_or_else(|| "the workspace configuration".into());
        if let (Some(at), Some(repo)) = (&config.checkout_location, &first_repo) {
            let moved = self.check_out_at(ws, repo, at, cloned_now.contains(repo), &source)?;
            if let Some(note) = moved.1 {
                config.ignored.push(note);
            }
            if let Some(i) = cloned_now.iter().position(|c| c == repo) {
                cloned_now[i] = moved.0.clone();
            }
            first_repo = Some(moved.0);
        }
        let mut pulled = None;
        if let (None, Some(r)) = (&image, &config.image) {
            pulled = Some(match &first_repo {
                Some(repo) if config.build.is_some() || !config.features.is_empty() => {
                    self.build_image(ws, repo, &config, &source, runtime, &base)
                        .await?
                }
                _ => self.pull_image(ws, r, &source).await?,
            });
        }
        // Who the workspace runs as and where its repository is seen, on the root it runs on.
        let root = pulled.as_ref().or(image.as_ref()).map(|i| i.rootfs.clone());
        let on_root = root.clone().unwrap_or_else(|| PathBuf::from("/"));
        // The repository's `remoteUser`, else the image's `USER`, else `dev`.
        let user = match config
            .user
            .as_deref()
            .or(pulled
                .as_ref()
                .or(image.as_ref())
                .and_then(|i| i.user.as_deref()))
            .filter(|u| !u.trim().is_empty())
        {
            Some(u) => crate::runtime::SandboxUser::of(&on_root, u)
                .map_err(|e| format!("{source}: {e}"))?,
            None => Default::default(),
        };
        let placement = config.placement(
            first_repo
                .as_deref()
                .and_then(|r| r.file_name())
                .map(|n| n.to_string_lossy())
                .as_deref(),
            |name| local::root_has(root.as_deref(), name),
        );
        config.ignored.extend(placement.notes.iter().cloned());
        let wanted = SandboxSpec {
            root: root.clone(),
            user,
            links: placement.link.iter().cloned().collect(),
            ..base.clone()
        };
        if pulled.is_some()
            || wanted.user != first_sandbox.user
            || wanted.links != first_sandbox.links
        {
            // The first sandbox's launcher may still be on its way into the workspace's
            // cgroups (it was handed its request a moment ago); stopped now, it could join the
            // cgroups made next for the image's sandbox and start a second agent beside it,
            // which the spec might reach instead. Once its agent listens it is inside them and
            // the stop ends it. (A first sandbox that never comes up is waited for 5 s.)
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while matches!(
                agent.status().await,
                Err(crate::agent::client::ClientError::Unreachable(_))
            ) && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            runtime.stop(&ws.id).await.map_err(|e| e.to_string())?;
            runtime.start(&wanted).await.map_err(|e| e.to_string())?;
        }
        if let Some(p) = pulled {
            image = Some(p);
        }
        // The image's environment, under the repository's.
        let env = match &image {
            Some(pulled) => {
                let mut merged = pulled.env.clone();
                merged.retain(|(k, _)| !config.env.iter().any(|(k2, _)| k2 == k));
                merged.extend(config.env.iter().cloned());
                merged
            }
            None => config.env.clone(),
        };
        // Repositories the configuration adds beside the first, cloned as the owner's own
        // (the same credentials, destinations and `file://` rules).
        for (url, at) in &config.additional_repos {
            let source = config.source.as_deref().unwrap_or("the configuration");
            let spec = crate::domain::RepoSpec::new(url, None)
                .map_err(|e| format!("{source}: additionalRepositories {url}: {e}"))?;
            let dest = files.join(at.clone().unwrap_or_else(|| git::dir_name(&spec.url)));
            if dest.join(".git").exists() {
                continue;
            }
            self.check_file_repo(&ws.org, &ws.owner, &spec.url)
                .map_err(|e| format!("{source}: additionalRepositories {url}: {e}"))?;
            let auth = self
                .git_auth_for(&ws.owner, &spec.url)
                .map_err(|e| e.to_string())?;
            git::clone(git::Clone {
                repo: &spec,
                dest: &dest,
                auth: &auth,
                run_as: runtime.git_as(&base),
                egress: &egress,
            })
            .await
            .map_err(|e| format!("{source}: additionalRepositories {url}: {e}"))?;
            cloned_now.push(dest);
        }
        // The ports the repository makes public are shared so when the workspace is first
        // made; the owner's choice rules after that.
        if !cloned_now.is_empty() {
            let public: Vec<u16> = config
                .ports
                .iter()
                .filter(|p| p.visibility.as_deref() == Some("public"))
                .map(|p| p.port)
                .collect();
            if !public.is_empty() {
                self.store()
                    .write(|tx| -> Result<()> {
                        if let Some(mut w) = tx.workspace(&ws.id)? {
                            for port in &public {
                                if !w.ports.iter().any(|p| p.port == *port) {
                                    w.ports.push(PortShare {
                                        port: *port,
                                        visibility: Visibility::Public,
                                    });
                                }
                            }
                            w.ports.sort_by_key(|p| p.port);
                            tx.put_workspace(&w)?;
                        }
                        Ok(())
                    })
                    .map_err(internal)?;
            }
        }
        let spec = AgentSpec {
            workspace_id: ws.id.to_string(),
            workdir: placement.workdir,
            env,
            tasks: config.tasks.clone(),
            ports: config.ports.clone(),
            wait_for_network: outbound,
        };
        write_spec(&state, &spec).map_err(|e| format!("cannot keep the agent's spec: {e}"))?;
        step("spec written");

        let w = self
            .set_phase(
                &ws.id,
                Phase::Initializing,
                Some("starting the sandbox".into()),
                &[Desired::Running],
            )
            .map_err(internal)?;
        if w.lifecycle.phase != Phase::Initializing {
            // The owner asked to stop meanwhile; the next reconciliation takes over.
            return Ok(());
        }
        step("initializing");
        // The agent may still be starting (its sandbox started while git cloned): the spec
        // goes to it the moment it listens, and its answer, the status once it is set up, is
        // the readiness check.
        agent
            .give_spec_when_up(&spec, AGENT_READY)
            .await
            .map_err(|e| {
                let log = std::fs::read_to_string(state.join("sandbox.log")).unwrap_or_default();
                format!(
                    "{e}; sandbox log: {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )
            })?;
        step("agent answers");
        if let Some(repo) = &first_repo {
            self.start_services(ws, &config, repo, runtime, &base)
                .await?;
        }
        let now = self.now();
        // What the repository's file asks that devcell does not do is said, never dropped.
        let ready = match (&config.source, config.ignored.as_slice()) {
            (Some(source), [_, ..]) => format!(
                "ready; not honoured from {source}: {}",
                config.ignored.join(", ")
            ),
            _ => "ready".to_owned(),
        };
        // No fsync either: after a crash, recovery finds the agent answering and marks the
        // workspace running again.
        self.store()
            .write_lazy(|tx| -> Result<()> {
                if let Some(mut w) = tx.workspace(&ws.id)? {
                    w.lifecycle
                        .transition(Phase::Running, now, Some(ready.clone()))?;
                    w.last_activity = now;
                    tx.put_workspace(&w)?;
                }
                Ok(())
            })
            .map_err(internal)?;
        // git wrote the clones without syncing them (see `git::clone`): one sync of the
        // workspace's filesystem makes them durable, a moment after the start so that its
        // writeback does not compete with the first shell. A disk unmounted meanwhile (a quick
        // stop) was flushed by its unmount.
        if !cloned_now.is_empty() {
            let files = files.clone();
            let id = ws.id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SYNC_CLONES_AFTER).await;
                let _ = tokio::task::spawn_blocking(move || {
                    let synced = match std::fs::File::open(&files) {
                        Ok(d) => rustix::fs::syncfs(d).map_err(std::io::Error::from),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = synced {
                        tracing::warn!(workspace = %id, error = %e, "the clones were not synced");
                    }
                })
                .await;
            });
        }
        tracing::info!(
            workspace = %ws.id,
            launch_ms = launched.as_millis() as u64,
            agent_ready_ms = t.elapsed().as_millis() as u64,
            "workspace is running"
        );
        Ok(())
    }

    /// Pulls (or finds cached) the image `reference` named by `source` for the workspace.
    async fn pull_image(
        &self,
        ws: &Workspace,
        reference: &str,
        source: &str,
    ) -> std::result::Result<crate::content::image::PulledImage, String> {
        if reference.starts_with("file:") {
            return Err(format!(
                "{source}: building an image from a Dockerfile is not supported; push it to a registry and name it as `image`"
            ));
        }
        let parsed = crate::content::image::ImageRef::parse(reference)
            .map_err(|e| format!("image {reference}: {e}"))?;
        // Through a mirror, the mirror's credentials.
        let (source, _) = self.images().source_of(&parsed);
        let auth = self
            .registry_auth_for(&ws.owner, &source.registry)
            .map_err(|e| e.to_string())?;
        self.images()
            .with_egress(self.egress(self.outbound(ws)))
            .pull(
                &parsed,
                &auth,
                crate::content::image::Puller::User(ws.owner.as_str()),
            )
            .await
            .map_err(|e| format!("image {reference}: {e}"))
    }

    /// Builds the image of the repository's Dockerfile (`build`, named by `source`) in
    /// sandboxes of the workspace; the output goes to the workspace's build log.
    /// Moves the first repository, cloned at `repo` by this start (`cloned_now`), to
    /// `/workspace/AT` as its configuration asks (Gitpod's `checkoutLocation`) and records
    /// where it is. One checked out before stays where it is, which the returned note says.
    fn check_out_at(
        &self,
        ws: &Workspace,
        repo: &std::path::Path,
        at: &str,
        cloned_now: bool,
        source: &str,
    ) -> std::result::Result<(PathBuf, Option<String>), String> {
        let (Some(files), Some(here)) = (repo.parent(), repo.file_name()) else {
            return Ok((repo.to_path_buf(), None));
        };
        let here = here.to_string_lossy().into_owned();
        if here == at {
            return Ok((repo.to_path_buf(), None));
        }
        if !cloned_now {
            return Ok((
                repo.to_path_buf(),
                Some(format!(
                    "checkoutLocation {at}: the repository stays at {}/{here}, where it was checked out before",
                    local::WORKSPACE_MOUNT
                )),
            ));
        }
        // Both names are single folder names in a directory the workspace writes into: the
        // rename follows no link and replaces nothing.
        let dir = crate::beneath::Dir::open(files).map_err(|e| e.to_string())?;
        rustix::fs::renameat_with(
            dir.as_fd(),
            here.as_str(),
            dir.as_fd(),
            at,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY => format!(
                "{source}: checkoutLocation {at}: {}/{at} is taken; name another folder",
                local::WORKSPACE_MOUNT
            ),
            e => format!("{source}: checkoutLocation {at}: cannot move the repository there: {e}"),
        })?;
        self.store()
            .write(|tx| -> Result<()> {
                if let Some(mut w) = tx.workspace(&ws.id)? {
                    w.checkout = Some(at.to_owned());
                    tx.put_workspace(&w)?;
                }
                Ok(())
            })
            .map_err(|e: Error| e.to_string())?;
        Ok((files.join(at), None))
    }

    async fn build_image(
        &self,
        ws: &Workspace,
        repo: &std::path::Path,
        config: &crate::content::config::WorkspaceConfig,
        source: &str,
        runtime: &dyn crate::runtime::Runtime,
        sandbox: &SandboxSpec,
    ) -> std::result::Result<crate::content::image::PulledImage, String> {
        use crate::content::image::build::BuildRequest;
        // One log per start (cleared in `bring_up`): a compose service's build follows the
        // workspace image's.
        let log = self.sandbox_state(&ws.id).join(BUILD_LOG);
        let images = self.images().with_egress(self.egress(self.outbound(ws)));
        let auth_for = |registry: &str| {
            self.registry_auth_for(&ws.owner, registry)
                .unwrap_or(crate::content::image::RegistryAuth::Anonymous)
        };
        let features = images
            .prepare_features(
                &config.features,
                &repo.join(&config.features_root),
                repo,
                &auth_for,
            )
            .await
            .map_err(|e| format!("{source}: {e}"))?;
        let build = config.build.clone().unwrap_or_default();
        let base_image = match &config.image {
            Some(i) if !i.starts_with("file:") => Some(i.as_str()),
            _ => None,
        };
        // The context is bound into the build's sandboxes by path: it must be a directory of
        // the repository, not a link out of it. Nothing of the workspace runs yet that could
        // change it between this check and the build.
        let real_repo = std::fs::canonicalize(repo).map_err(|e| e.to_string())?;
        let shown_context = if build.context.is_empty() {
            "."
        } else {
            &build.context
        };
        let context = std::fs::canonicalize(repo.join(&build.context))
            .map_err(|e| format!("{source}: the build context {shown_context}: {e}"))?;
        if !context.starts_with(&real_repo) || !context.is_dir() {
            return Err(format!(
                "{source}: the build context {shown_context} is not a directory of the repository (a link out of it?)"
            ));
        }
        let text = match &config.build {
            Some(build) => {
                let bytes = crate::beneath::Dir::open(repo)
                    .and_then(|d| d.read_file(std::path::Path::new(&build.dockerfile), 1 << 20, true))
                    .map_err(|e| format!("{source}: {}: {e}", build.dockerfile))?
                    .ok_or_else(|| {
                        format!(
                            "{source}: the Dockerfile {} is not in the repository; commit it or fix the path",
                            build.dockerfile
                        )
                    })?;
                Some(
                    String::from_utf8(bytes)
                        .map_err(|_| format!("{source}: {} is not UTF-8 text", build.dockerfile))?,
                )
            }
            None => None,
        };
        let uid = self
            .store()
            .write(|tx| tx.build_uid())
            .map_err(|e| e.to_string())?;
        let req = BuildRequest {
            dockerfile: text.as_deref(),
            base_image,
            features: &features,
            dockerfile_name: if config.build.is_some() {
                &build.dockerfile
            } else {
                source
            },
            context: &context,
            args: &build.args,
            target: build.target.as_deref(),
            uid,
            who: crate::content::image::Puller::User(ws.owner.as_str()),
            log: &log,
        };
        let runner = StepsIn {
            runtime,
            spec: sandbox,
            uid,
        };
        let bases = BasesFor {
            cell: self,
            ws,
            source,
        };
        let id = ws.id.clone();
        let on_step = move |step: String| tracing::info!(workspace = %id, "image build: {step}");
        let built = images
            .build(&req, &runner, &bases, &on_step)
            .await
            .map_err(|e| e.to_string());
        if built.is_err() {
            // The workspace's disk is unmounted after a failed start, and its log with it:
            // the end of the log is kept where the tasks view still finds it.
            let kept = self.failed_build_log(&ws.id);
            let tail = read_tail(&log, LOG_TAIL as u64);
            if let Some(dir) = kept.parent()
                && std::fs::create_dir_all(dir).is_ok()
            {
                let _ = std::fs::write(&kept, tail);
            }
        }
        built
    }

    /// Starts the compose services the repository's devcontainer runs beside the workspace,
    /// in `depends_on` order: each on its image (pulled or built), with its named volumes on
    /// the workspace's disk, in the workspace's network and limits.
    async fn start_services(
        &self,
        ws: &Workspace,
        config: &crate::content::config::WorkspaceConfig,
        repo: &std::path::Path,
        runtime: &dyn crate::runtime::Runtime,
        sandbox: &SandboxSpec,
    ) -> std::result::Result<(), String> {
        for svc in &config.services {
            let source = format!("compose service {}", svc.name);
            let image = match (&svc.build, &svc.image) {
                (Some(b), _) => {
                    let only = crate::content::config::WorkspaceConfig {
                        build: Some(b.clone()),
                        ..Default::default()
                    };
                    self.build_image(ws, repo, &only, &source, runtime, sandbox)
                        .await?
                }
                (None, Some(i)) => self.pull_image(ws, i, &source).await?,
                (None, None) => {
                    return Err(format!("{source}: has neither `image` nor `build`"));
                }
            };
            let mut argv = svc
                .entrypoint
                .clone()
                .unwrap_or_else(|| image.entrypoint.clone());
            match &svc.command {
                Some(c) => argv.extend(c.iter().cloned()),
                // An entrypoint of the compose file drops the image's command, as Docker does.
                None if svc.entrypoint.is_none() => argv.extend(image.cmd.iter().cloned()),
                None => {}
            }
            if argv.is_empty() {
                return Err(format!(
                    "{source}: nothing to run; give it a `command` (its image has none)"
                ));
            }
            let mut env = image.env.clone();
            for (k, v) in &svc.environment {
                env.retain(|(k2, _)| k2 != k);
                env.push((k.clone(), v.clone()));
            }
            let mut volumes = Vec::new();
            let root = self.workspace_dir(&ws.id).join("volumes");
            for (name, target) in &svc.volumes {
                use std::os::unix::fs::PermissionsExt;
                let dir = root.join(name);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("{source}: volume {name}: {e}"))?;
                std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
                    .map_err(|e| e.to_string())?;
                if let Some((uid, gid)) = sandbox.uid {
                    rustix::fs::chown(
                        &dir,
                        Some(rustix::process::Uid::from_raw(uid)),
                        Some(rustix::process::Gid::from_raw(gid)),
                    )
                    .map_err(|e| format!("{source}: volume {name}: {e}"))?;
                }
                volumes.push((dir, target.clone()));
            }
            let run = crate::runtime::ServiceRun {
                name: svc.name.clone(),
                root: image.rootfs.clone(),
                argv,
                env,
                workdir: svc
                    .working_dir
                    .clone()
                    .or(image.working_dir.clone())
                    .unwrap_or_else(|| "/".into()),
                volumes,
                log: self
                    .sandbox_state(&ws.id)
                    .join(format!("service-{}.log", svc.name)),
            };
            runtime
                .start_service(sandbox, &run)
                .await
                .map_err(|e| format!("{source}: {e}"))?;
            tracing::info!(workspace = %ws.id, service = %svc.name, "compose service started");
        }
        Ok(())
    }

    /// Where the end of a failed build's log is kept (the cell's, outside the workspace).
    fn failed_build_log(&self, id: &WorkspaceId) -> PathBuf {
        self.images()
            .root()
            .join("build/failed")
            .join(format!("{}.log", id.as_str()))
    }

    /// The sandbox a workspace runs in (or its tools run in), on the host's root: its
    /// directories, uid and the limits of its class.
    pub(crate) fn sandbox_spec(
        &self,
        ws: &Workspace,
        network: bool,
    ) -> std::result::Result<SandboxSpec, String> {
        let class = self
            .store()
            .read(|tx| tx.class(&ws.class))
            .map_err(|e| e.to_string())?
            .ok_or("the workspace's class no longer exists; pick another class")?;
        Ok(SandboxSpec {
            id: ws.id.clone(),
            dir: self.workspace_dir(&ws.id),
            state: self.sandbox_state(&ws.id),
            uid: ws.sandbox_uid.map(|u| (u, u)),
            limits: Limits {
                cpu_millis: class.spec.cpu_millis,
                memory_bytes: class.spec.memory_bytes,
                max_processes: class.spec.max_processes,
            },
            network,
            root: None,
            user: Default::default(),
            links: Vec::new(),
        })
    }

    /// Each repository's git state as its files are now (none once they are released), read
    /// by the runtime inside a sandbox of the workspace: the repositories' own configuration
    /// (filters, fsmonitor, hooks) is the workspace's and never runs on the host.
    async fn read_git_state(&self, ws: &Workspace) -> Vec<crate::domain::entities::GitState> {
        let Some(runtime) = &self.inner.runtime else {
            return Vec::new();
        };
        let repos = repo_dirs(ws);
        let spec = match self.sandbox_spec(ws, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(workspace = %ws.id, error = %e, "git state not read");
                return Vec::new();
            }
        };
        match runtime.git_state(&spec, &repos).await {
            // Printed inside the workspace: only repositories it has are taken.
            Ok(states) => states
                .into_iter()
                .filter(|s| repos.contains(&s.dir))
                .map(Into::into)
                .collect(),
            Err(e) => {
                tracing::warn!(workspace = %ws.id, error = %e, "git state not read");
                Vec::new()
            }
        }
    }

    /// What deleting the workspace would lose: its repositories' git state read now when its
    /// files are on this host (a running workspace has no recorded state yet), else the state
    /// recorded at its last stop.
    pub async fn git_state_now(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
    ) -> Result<Vec<crate::domain::entities::GitState>> {
        let ws = self.get_workspace(actor, id)?;
        if ws.backup.released {
            return Ok(ws.git);
        }
        let Ok(_in_use) = self.use_files(&ws, false) else {
            return Ok(ws.git);
        };
        let now = self.read_git_state(&ws).await;
        Ok(if now.is_empty() { ws.git } else { now })
    }

    /// stopping → stopped: records each repository's git state, then ends the sandbox.
    async fn take_down(&self, ws: &Workspace, runtime: &dyn crate::runtime::Runtime) -> Result<()> {
        // Once stopped (not restarting), the disk is unmounted when this use ends.
        let _in_use = self
            .use_files(ws, false)
            .inspect_err(|e| tracing::error!(workspace = %ws.id, error = %e, "the workspace's disk is not mounted"));
        let states = self.read_git_state(ws).await;
        self.agent(&ws.id).shutdown().await;
        runtime
            .stop(&ws.id)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        // The files are snapshotted before the phase says stopped; if that fails they stay on
        // this host, the snapshot stays owed, and the backup loop tries again.
        let message = if ws.backup.released {
            "stopped".to_owned()
        } else {
            self.owe_backup(&ws.id, "stop")?;
            match self.snapshot_workspace(ws, "stop").await {
                Ok(s) => format!(
                    "stopped; files backed up (snapshot {})",
                    super::backups::short(&s.id)
                ),
                Err(e) => format!("stopped — backup pending: {e}"),
            }
        };
        let now = self.now();
        self.store().write(|tx| -> Result<()> {
            if let Some(mut w) = tx.workspace(&ws.id)? {
                if !states.is_empty() {
                    w.git = states.clone();
                }
                if w.lifecycle.phase != Phase::Stopping {
                    w.lifecycle.transition(Phase::Stopping, now, None)?;
                }
                w.lifecycle
                    .transition(Phase::Stopped, now, Some(message.clone()))?;
                // A restart: stopped on the way back to running.
                if w.lifecycle.desired == Desired::Running {
                    w.lifecycle
                        .transition(Phase::Pending, now, Some("restarting".into()))?;
                }
                tx.put_workspace(&w)?;
            }
            Ok(())
        })?;
        self.wake_reconciler();
        Ok(())
    }

    /// Stops every workspace as a stop does (git state, snapshot) and unmounts every disk, for
    /// `devcell down`: waits until nothing runs or `within` has passed. Returns how many were
    /// stopped and how many still ran at the deadline.
    pub async fn down(&self, within: std::time::Duration) -> Result<(usize, usize)> {
        let mut stopped = 0;
        self.store().write(|tx| -> Result<()> {
            for mut w in tx.all_workspaces()? {
                if w.lifecycle.desired == Desired::Running {
                    w.lifecycle.set_desired(Desired::Stopped)?;
                    tx.put_workspace(&w)?;
                    stopped += 1;
                }
            }
            Ok(())
        })?;
        self.wake_reconciler();
        let deadline = tokio::time::Instant::now() + within;
        let still = loop {
            let active = self
                .store()
                .read(|tx| tx.all_workspaces())?
                .iter()
                .filter(|w| w.lifecycle.is_active())
                .count();
            if active == 0 || tokio::time::Instant::now() >= deadline {
                break active;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        for w in self.store().read(|tx| tx.all_workspaces())? {
            if !w.lifecycle.is_active()
                && let Err(e) = self.detach_files(&w.id)
            {
                tracing::warn!(workspace = %w.id, error = %e, "a disk stays mounted");
            }
        }
        Ok((stopped, still))
    }

    /// After the cell (re)starts: workspaces whose sandbox still answers are running again;
    /// the others (host rebooted, sandbox gone) are marked stopped with their files kept.
    pub async fn recover(&self) -> Result<()> {
        // After a host restart no disk is mounted: every workspace that runs (or is on its way
        // up or down) gets its disk back before anything reads its files. A stopped one's disk
        // is mounted only while something uses its files (`use_files`), and unmounted here if
        // an older cell left it mounted.
        for ws in self.store().read(|tx| tx.all_workspaces())? {
            if ws.lifecycle.phase == Phase::Deleted || ws.backup.released {
                continue;
            }
            let wanted = ws.lifecycle.is_active()
                || (ws.lifecycle.phase == Phase::Pending
                    && ws.lifecycle.desired == Desired::Running);
            if !wanted {
                self.settle_files(&ws.id);
            } else if let Err(e) = self.attach_files(&ws, false) {
                tracing::error!(workspace = %ws.id, error = %e, "the workspace's disk is not mounted");
            }
        }
        for ws in self.active_workspaces()? {
            if !ws.lifecycle.is_active() {
                continue;
            }
            let alive = self.agent(&ws.id).status().await.is_ok();
            let now = self.now();
            self.store().write(|tx| -> Result<()> {
                let Some(mut w) = tx.workspace(&ws.id)? else {
                    return Ok(());
                };
                if alive {
                    if w.lifecycle.phase == Phase::Creating {
                        w.lifecycle.transition(Phase::Initializing, now, None)?;
                    }
                    if w.lifecycle.phase == Phase::Initializing {
                        w.lifecycle.transition(
                            Phase::Running,
                            now,
                            Some("reconnected after a cell restart".into()),
                        )?;
                    }
                } else {
                    // The reconciler finishes the stop as any other: git state, then the
                    // snapshot (resumed, if the cell died in the middle of one), then stopped.
                    if w.lifecycle.phase != Phase::Stopping {
                        w.lifecycle.transition(
                            Phase::Stopping,
                            now,
                            Some("the sandbox was gone after a restart; files are kept".into()),
                        )?;
                    }
                    if w.lifecycle.desired == Desired::Running {
                        w.lifecycle.set_desired(Desired::Stopped)?;
                    }
                }
                tx.put_workspace(&w)?;
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// How many of `owner`'s workspaces (other than `except`) run or are asked to.
pub(crate) fn running_of(
    tx: &crate::store::WriteTx,
    owner: &crate::domain::UserId,
    except: &WorkspaceId,
) -> Result<u32> {
    let mut running = 0u32;
    let mut cursor: Option<String> = None;
    loop {
        let page = tx.workspaces_of(owner, cursor.as_deref(), 500)?;
        running += page
            .iter()
            .filter(|w| {
                // A failed workspace holds nothing: it does not count until started again.
                &w.id != except
                    && w.lifecycle.phase != Phase::Failed
                    && (w.lifecycle.is_active() || w.lifecycle.desired == Desired::Running)
            })
            .count() as u32;
        match page.last() {
            Some(w) if page.len() == 500 => cursor = Some(w.id.to_string()),
            _ => break,
        }
    }
    Ok(running)
}

fn needs_attention(w: &Workspace) -> bool {
    // A deleted workspace waits for the backup loop to take its owed snapshot.
    let waiting_for_backup = w.lifecycle.desired == Desired::Deleted
        && w.backup.pending.is_some()
        && matches!(
            w.lifecycle.phase,
            Phase::Pending | Phase::Stopped | Phase::Failed
        );
    !waiting_for_backup
        && matches!(
            (w.lifecycle.desired, w.lifecycle.phase),
            (Desired::Running, Phase::Pending)
                | (
                    Desired::Stopped,
                    Phase::Pending | Phase::Creating | Phase::Initializing | Phase::Running
                )
                | (_, Phase::Stopping)
                | (Desired::Deleted, _)
        )
}

/// What one pass of the timeout rules did.
#[derive(Debug, Default)]
pub struct TimeoutPass {
    pub stopped: Vec<(WorkspaceId, StopReason)>,
    /// Workspaces within the warning window: id, deadline, the text for their users.
    pub warnings: Vec<(WorkspaceId, OffsetDateTime, String)>,
}

/// When and why a running workspace will stop, as its user sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopPlan {
    pub at: OffsetDateTime,
    pub reason: StopReason,
    /// Set within the warning window before `at`: what to tell the user.
    pub warning: Option<String>,
}

/// When the workspace last became running (the start its lifetime counts from).
fn started_at(ws: &Workspace) -> Option<OffsetDateTime> {
    ws.lifecycle
        .history
        .iter()
        .rev()
        .find(|c| c.phase == Phase::Running)
        .map(|c| c.at)
}

fn stop_plan(policy: &Policy, ws: &Workspace, now: OffsetDateTime) -> Option<StopPlan> {
    let started = started_at(ws)?;
    let (at, reason) = policy.stop_deadline(ws.last_activity, started, ws.timeout);
    let warning = policy
        .stop_warning(now, ws.last_activity, started, ws.timeout)
        .map(|_| warning_text(at, reason, now));
    Some(StopPlan {
        at,
        reason,
        warning,
    })
}

fn warning_text(at: OffsetDateTime, reason: StopReason, now: OffsetDateTime) -> String {
    let minutes = ((at - now).whole_seconds() + 59) / 60;
    let when = format!(
        "in {minutes} minute{} (at {:02}:{:02} UTC)",
        if minutes == 1 { "" } else { "s" },
        at.hour(),
        at.minute()
    );
    match reason {
        StopReason::Inactivity => format!(
            "This workspace stops {when} because it has been idle. Type anything, or extend its timeout, to keep it running."
        ),
        StopReason::MaxLifetime => format!(
            "This workspace reaches its maximum lifetime and stops {when}. Commit and push your work; its files are kept."
        ),
    }
}

/// The history message of a stop made by a timeout.
fn timeout_message(reason: StopReason, ws: &Workspace, policy: &Policy) -> String {
    match reason {
        StopReason::Inactivity => format!(
            "stopped by the inactivity timeout: no activity for {}",
            crate::human::duration(ws.timeout)
        ),
        StopReason::MaxLifetime => format!(
            "stopped at the maximum lifetime of {}",
            crate::human::duration(policy.max_lifetime)
        ),
    }
}

/// Keeps the agent's spec whole (a temporary file renamed into place) in the cell's own
/// directory for the sandbox, for the task and port lists.
fn write_spec(state: &std::path::Path, spec: &AgentSpec) -> std::io::Result<()> {
    let tmp = state.join(format!("{SPEC}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, state.join(SPEC))
}

/// The build log's name in the sandbox's cell-only directory.
const BUILD_LOG: &str = "build.log";

/// Build steps run by the runtime in sandboxes of the workspace.
struct StepsIn<'a> {
    runtime: &'a dyn crate::runtime::Runtime,
    spec: &'a SandboxSpec,
    uid: u32,
}

impl crate::content::image::build::StepRunner for StepsIn<'_> {
    fn run<'a>(
        &'a self,
        step: &'a crate::content::image::build::StepRun,
    ) -> futures::future::BoxFuture<'a, std::result::Result<i32, String>> {
        Box::pin(async move {
            self.runtime
                .build_step(self.spec, step, self.uid)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Base images of a build, pulled as the workspace's own image would be.
struct BasesFor<'a> {
    cell: &'a Cell,
    ws: &'a Workspace,
    source: &'a str,
}

impl crate::content::image::build::BasePuller for BasesFor<'_> {
    fn pull<'a>(
        &'a self,
        reference: &'a str,
    ) -> futures::future::BoxFuture<
        'a,
        std::result::Result<crate::content::image::PulledImage, String>,
    > {
        Box::pin(self.cell.pull_image(self.ws, reference, self.source))
    }
}

/// The last `max` bytes of a file (empty when it cannot be read).
fn read_tail(path: &std::path::Path, max: u64) -> Vec<u8> {
    use std::io::{Read as _, Seek as _};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(max)));
    let mut tail = Vec::new();
    let _ = file.take(max).read_to_end(&mut tail);
    tail
}

/// The folders under `/workspace` of a workspace's repositories, in order: each its own name,
/// the first where its configuration had it checked out.
pub(crate) fn repo_dirs(ws: &Workspace) -> Vec<String> {
    ws.repos
        .iter()
        .enumerate()
        .map(|(i, r)| match (i, &ws.checkout) {
            (0, Some(at)) => at.clone(),
            _ => git::dir_name(&r.url),
        })
        .collect()
}
