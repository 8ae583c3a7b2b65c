//! Backups of workspace files: snapshots at stop and on an interval, retried with backoff until
//! one is verified, restored when a workspace starts without its local files, and restored or
//! downloaded on request. The files of a workspace are released (removed from local disk) only
//! after a verified snapshot holds them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Actor, Cell, Error, Result};
use crate::backup::{BackupStore, Source};
use crate::domain::entities::{Snapshot, Workspace};
use crate::domain::{Desired, Phase, WorkspaceId};
use crate::store::Reader;

/// First retry of a failed backup after this long; doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// Counters for `/metrics`.
#[derive(Default)]
pub struct BackupStats {
    pub taken: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_added: AtomicU64,
}

/// What one cleanup pass did.
#[derive(Debug, Default)]
pub struct CleanupPass {
    pub forgotten: usize,
    pub pruned: u64,
    pub released: usize,
    pub dormant: usize,
    pub purged_workspaces: usize,
}

impl std::fmt::Display for CleanupPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} snapshots forgotten ({} of deleted workspaces), {} packs pruned, files of {} workspaces released, {} dormant workspaces deleted",
            self.forgotten, self.purged_workspaces, self.pruned, self.released, self.dormant
        )
    }
}

/// The wait before attempt number `attempts + 1`.
pub fn retry_after(attempts: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(RETRY_MAX)
}

impl Cell {
    pub fn backup_store(&self) -> Option<Arc<BackupStore>> {
        self.inner.backups.clone()
    }

    pub fn backup_stats(&self) -> &BackupStats {
        &self.inner.backup_stats
    }

    /// The backups section of the admin page: where snapshots go and how they are doing.
    pub fn backup_overview(&self, actor: &Actor) -> Result<Vec<(String, String)>> {
        self.require_admin(actor)?;
        let c = &self.config().backup;
        let store = match (&c.s3.bucket, self.backup_store()) {
            (_, None) => "unavailable: see the cell's log".to_owned(),
            (Some(bucket), Some(_)) => format!(
                "S3 bucket {bucket}{}{}",
                if c.s3.prefix.is_empty() {
                    String::new()
                } else {
                    format!(", prefix {}", c.s3.prefix)
                },
                c.s3.endpoint
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            (None, Some(_)) => local_store_dir(&self.config().data_dir)
                .display()
                .to_string(),
        };
        let all = self.store().read(|tx| tx.all_workspaces())?;
        let owed = all.iter().filter(|w| w.backup.pending.is_some()).count();
        let released = all.iter().filter(|w| w.backup.released).count();
        let snapshots: usize = all.iter().map(|w| w.snapshots.len()).sum();
        let stats = self.backup_stats();
        Ok(vec![
            ("Store".into(), store),
            (
                "Schedule".into(),
                format!(
                    "at every stop and every {} while running; local files released {} after a verified backup",
                    crate::human::duration(c.interval),
                    crate::human::duration(c.release_after)
                ),
            ),
            ("Snapshots held".into(), snapshots.to_string()),
            (
                "Since this start".into(),
                format!(
                    "{} taken, {} failed, {} added",
                    stats.taken.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed),
                    crate::human::bytes(stats.bytes_added.load(Ordering::Relaxed))
                ),
            ),
            ("Backups owed (retrying)".into(), owed.to_string()),
            ("Workspaces only in the backup".into(), released.to_string()),
        ])
    }

    /// Snapshots the workspace's files now and records the snapshot; on failure records the
    /// error and when to try again, and returns it. Any verified snapshot settles a pending one.
    pub async fn snapshot_workspace(
        &self,
        ws: &Workspace,
        trigger: &str,
    ) -> std::result::Result<Snapshot, String> {
        let Some(store) = self.backup_store() else {
            return Err("no backup store is configured".into());
        };
        let include_home = self
            .store()
            .read(|tx| tx.org(&ws.org))
            .ok()
            .flatten()
            .is_some_and(|o| o.policy.backup_home);
        // Never a snapshot of an empty mount point: the disk is mounted first (and, for a
        // stopped workspace, unmounted again when the snapshot is done).
        let in_use = self.use_files(ws, false);
        let attached = in_use.as_ref().map(|_| ()).map_err(Clone::clone);
        // The backup reads the files by path, as root: a running workspace is held still
        // meanwhile, so that no file is swapped for a link to a host file under it.
        let held = if ws.lifecycle.is_active() {
            Held::new(self.inner.runtime.clone(), &ws.id)
                .map_err(|e| format!("cannot hold the workspace still for its backup: {e}"))
        } else {
            Ok(None)
        };
        let dir = self.workspace_dir(&ws.id);
        let (workspace, org, trigger_s) =
            (ws.id.to_string(), ws.org.to_string(), trigger.to_owned());
        let parent = ws.snapshots.last().map(|s| s.id.clone());
        let result = match &held {
            Err(e) => Err(e.clone()),
            Ok(_) => tokio::task::spawn_blocking(move || {
                attached?;
                if !dir.join("workspace").is_dir() {
                    return Err(format!(
                        "the files are not on this host ({})",
                        dir.display()
                    ));
                }
                store
                    .snapshot(&Source {
                        dir: &dir,
                        workspace: &workspace,
                        org: &org,
                        include_home,
                        trigger: &trigger_s,
                        verified_parent: parent.as_deref(),
                    })
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the backup stopped unexpectedly: {e}"))),
        };
        // The workspace goes on the moment its files are read.
        drop(held);
        drop(in_use);
        let now = self.now();
        match result {
            Ok(taken) => {
                let snapshot = Snapshot {
                    id: taken.id,
                    taken_at: now,
                    trigger: trigger.to_owned(),
                    files: taken.files,
                    bytes: taken.bytes,
                    added_bytes: taken.added_bytes,
                };
                let stats = self.backup_stats();
                stats.taken.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_added
                    .fetch_add(snapshot.added_bytes, Ordering::Relaxed);
                let recorded = snapshot.clone();
                self.store()
                    .write(|tx| -> Result<()> {
                        if let Some(mut w) = tx.workspace(&ws.id)? {
                            w.snapshots.push(recorded.clone());
                            w.backup.pending = None;
                            w.backup.last_error = None;
                            w.backup.attempts = 0;
                            w.backup.next_attempt = None;
                            tx.put_workspace(&w)?;
                        }
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                tracing::info!(workspace = %ws.id, snapshot = %snapshot.id, files = snapshot.files, added = snapshot.added_bytes, trigger, "backed up");
                // A deletion may have been waiting for this snapshot.
                self.wake_reconciler();
                Ok(snapshot)
            }
            Err(e) => {
                self.backup_stats().failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(workspace = %ws.id, error = %e, trigger, "backup failed");
                let _ = self.store().write(|tx| -> Result<()> {
                    if let Some(mut w) = tx.workspace(&ws.id)? {
                        w.backup.last_error = Some(e.clone());
                        w.backup.attempts = w.backup.attempts.saturating_add(1);
                        let wait = time::Duration::try_from(retry_after(w.backup.attempts))
                            .unwrap_or(time::Duration::HOUR);
                        w.backup.next_attempt = Some(now + wait);
                        tx.put_workspace(&w)?;
                    }
                    Ok(())
                });
                Err(e)
            }
        }
    }

    /// Marks a snapshot as owed (durably, before it is tried): a cell that dies meanwhile
    /// tries again after it restarts, and the files are kept until one succeeds.
    pub(crate) fn owe_backup(&self, id: &WorkspaceId, trigger: &str) -> Result<()> {
        self.store().write(|tx| -> Result<()> {
            if let Some(mut w) = tx.workspace(id)?
                && w.backup.pending.is_none()
            {
                w.backup.pending = Some(trigger.to_owned());
                tx.put_workspace(&w)?;
            }
            Ok(())
        })
    }

    /// One pass of the backup loop: owed snapshots whose retry time has come, then running
    /// workspaces whose newest snapshot is older than the interval. Returns (taken, failed).
    pub async fn run_backups(&self) -> Result<(usize, usize)> {
        let now = self.now();
        let interval =
            time::Duration::try_from(self.config().backup.interval).unwrap_or(time::Duration::HOUR);
        let all = self.store().read(|tx| tx.all_workspaces())?;
        let mut due: Vec<(Workspace, &'static str)> = Vec::new();
        for w in all {
            let phase = w.lifecycle.phase;
            if w.backup.pending.is_some()
                && matches!(phase, Phase::Stopped | Phase::Failed | Phase::Running)
                && w.backup.next_attempt.is_none_or(|t| t <= now)
            {
                due.push((w, "retry"));
            } else if phase == Phase::Running {
                let since = w
                    .snapshots
                    .last()
                    .map(|s| s.taken_at)
                    .into_iter()
                    .chain(
                        w.lifecycle
                            .history
                            .iter()
                            .rev()
                            .find(|c| c.phase == Phase::Running)
                            .map(|c| c.at),
                    )
                    .max();
                if since.is_some_and(|t| t + interval <= now) {
                    due.push((w, "interval"));
                }
            }
        }
        let (mut ok, mut failed) = (0, 0);
        for (w, why) in due {
            let trigger = match why {
                "retry" => w.backup.pending.clone().unwrap_or_else(|| "stop".into()),
                other => other.to_owned(),
            };
            match self.snapshot_workspace(&w, &trigger).await {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        Ok((ok, failed))
    }

    /// Restores the newest snapshot into a workspace whose local files were released.
    pub(crate) async fn restore_released(&self, ws: &Workspace) -> std::result::Result<(), String> {
        if !ws.backup.released {
            return Ok(());
        }
        let newest = ws
            .snapshots
            .last()
            .ok_or("the files were released but the workspace has no snapshot")?;
        self.restore_snapshot_files(ws, &newest.id).await?;
        self.store()
            .write(|tx| -> Result<()> {
                if let Some(mut w) = tx.workspace(&ws.id)? {
                    w.backup.released = false;
                    tx.put_workspace(&w)?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    }

    /// Puts a snapshot's files in place of the workspace's. The runtime has the restore
    /// write into a new directory only the cell can enter, never over the workspace's current
    /// files: a link among them (a directory where the snapshot has one, swapped for a link to
    /// `/etc`) would otherwise take the restore's writes, as root, anywhere on the host.
    async fn restore_snapshot_files(
        &self,
        ws: &Workspace,
        snapshot: &str,
    ) -> std::result::Result<(), String> {
        let store = self.backup_store().ok_or("no backup store is configured")?;
        let runtime = self
            .inner
            .runtime
            .clone()
            .ok_or("this cell has no runtime to hold files")?;
        let _in_use = self.use_files(ws, true)?;
        let spec = self.sandbox_spec(ws, false)?;
        let (workspace, snapshot) = (ws.id.to_string(), snapshot.to_owned());
        tokio::task::spawn_blocking(move || {
            runtime
                .replace_files(&spec, &mut |staging| {
                    store
                        .restore(&snapshot, &workspace, staging)
                        .map_err(|e| format!("cannot restore snapshot {snapshot}: {e}"))
                })
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the restore stopped unexpectedly: {e}")))
    }

    /// The owner takes a snapshot now (the workspace may be running or stopped).
    pub async fn backup_now(&self, actor: &Actor, id: &WorkspaceId) -> Result<Snapshot> {
        let ws = self.owned(actor, id)?;
        // After `devcell down` a stopped workspace's disk is not mounted: its files are on the disk.
        let has_files = !ws.backup.released
            && (self.workspace_dir(id).join("workspace").is_dir()
                || self.files(id, 0).image.exists());
        if !ws.backup.released && !has_files {
            return Err(Error::Conflict {
                code: "no_files",
                message: "the workspace has no files yet; start it first".into(),
            });
        }
        if ws.backup.released {
            return Err(Error::Conflict {
                code: "files_released",
                message: "the files are only in the backup now; start the workspace first".into(),
            });
        }
        self.snapshot_workspace(&ws, "manual")
            .await
            .map_err(|e| Error::Unavailable { message: e })
    }

    /// Replaces a stopped workspace's files with those of one of its snapshots. The current
    /// files are snapshotted first, so the restore itself can be undone.
    pub async fn restore_backup(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
        snapshot: &str,
    ) -> Result<Workspace> {
        let ws = self.owned(actor, id)?;
        if !matches!(ws.lifecycle.phase, Phase::Stopped | Phase::Failed) {
            return Err(Error::Conflict {
                code: "workspace_not_stopped",
                message: "stop the workspace before restoring a backup into it".into(),
            });
        }
        let snap = find_snapshot(&ws, snapshot)?;
        if !ws.backup.released {
            self.snapshot_workspace(&ws, "before-restore")
                .await
                .map_err(|e| Error::Unavailable {
                    message: format!("the current files could not be saved first: {e}"),
                })?;
        }
        self.restore_snapshot_files(&ws, &snap.id)
            .await
            .map_err(|message| Error::Unavailable { message })?;
        let now = self.now();
        tracing::info!(workspace = %id, snapshot = short(&snap.id), "files restored from a snapshot");
        let w = self.store().write(|tx| -> Result<Workspace> {
            let mut w = tx
                .workspace(id)?
                .ok_or(Error::NotFound { what: "workspace" })?;
            w.backup.released = false;
            w.last_activity = now;
            tx.put_workspace(&w)?;
            Ok(w)
        })?;
        Ok(w)
    }

    /// A snapshot as a tar archive in a temporary file (removed when the returned guard drops).
    pub async fn backup_archive(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
        snapshot: &str,
    ) -> Result<(tempfile::TempPath, String)> {
        let ws = self.owned(actor, id)?;
        let snap = find_snapshot(&ws, snapshot)?;
        let store = self.backup_store().ok_or(Error::Unavailable {
            message: "no backup store is configured".into(),
        })?;
        let tmp = self.config().data_dir.join("tmp");
        let workspace = ws.id.to_string();
        let snap_id = snap.id.clone();
        let path = tokio::task::spawn_blocking(move || -> std::result::Result<_, String> {
            std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
            let scratch = tempfile::tempdir_in(&tmp).map_err(|e| e.to_string())?;
            store
                .restore(&snap_id, &workspace, scratch.path())
                .map_err(|e| e.to_string())?;
            let file = tempfile::NamedTempFile::new_in(&tmp).map_err(|e| e.to_string())?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file.as_file()));
            tar.follow_symlinks(false);
            tar.append_dir_all(&workspace, scratch.path())
                .map_err(|e| e.to_string())?;
            tar.into_inner()
                .and_then(|mut w| std::io::Write::flush(&mut w))
                .map_err(|e| e.to_string())?;
            Ok(file.into_temp_path())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
        .map_err(|message| Error::Unavailable { message })?;
        Ok((path, format!("{}-{}.tar", ws.id, short(&snap.id))))
    }

    /// Removes the local files of a stopped workspace whose newest snapshot is verified; the
    /// next start restores them.
    pub(crate) fn release_files(&self, ws: &Workspace) -> Result<bool> {
        if ws.backup.released
            || ws.backup.pending.is_some()
            || ws.snapshots.is_empty()
            || !matches!(ws.lifecycle.phase, Phase::Stopped)
        {
            return Ok(false);
        }
        // The files are removed from its disk, not from beneath an empty mount point.
        let in_use = self.use_files(ws, false).map_err(Error::Internal)?;
        // Recorded first: a crash in the middle leaves a workspace that restores on start.
        self.store().write(|tx| -> Result<()> {
            if let Some(mut w) = tx.workspace(&ws.id)? {
                w.backup.released = true;
                tx.put_workspace(&w)?;
            }
            Ok(())
        })?;
        let dir = self.workspace_dir(&ws.id);
        for sub in ["workspace", "home"] {
            remove_dir(&dir.join(sub))?;
        }
        // Its disk is unmounted (the workspace is stopped), and mounted again when the files
        // come back.
        drop(in_use);
        Ok(true)
    }

    /// One cleanup pass at one `now`: retention forgets snapshots each organization no longer
    /// keeps, the store is pruned when anything went, and stopped workspaces whose newest
    /// snapshot is verified give up their local files after `backup.release_after`.
    pub async fn clean_up(&self) -> Result<CleanupPass> {
        let now = self.now();
        let mut pass = CleanupPass::default();
        let all = self.store().read(|tx| tx.all_workspaces())?;
        let release_after = time::Duration::try_from(self.config().backup.release_after)
            .unwrap_or(time::Duration::DAY);
        let store = self.backup_store();
        for w in all {
            let Some(policy) = self.store().read(|tx| tx.org(&w.org))?.map(|o| o.policy) else {
                continue;
            };
            let times: Vec<_> = w.snapshots.iter().map(|s| s.taken_at).collect();
            let gone: Vec<String> = policy
                .snapshots_to_forget(&times, now)
                .into_iter()
                .map(|i| w.snapshots[i].id.clone())
                .collect();
            if let (false, Some(store)) = (gone.is_empty(), store.clone()) {
                let ids = gone.clone();
                let n = tokio::task::spawn_blocking(move || store.forget(&ids))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(|e| Error::Unavailable {
                        message: e.to_string(),
                    })?;
                pass.forgotten += n;
                self.store().write(|tx| -> Result<()> {
                    if let Some(mut x) = tx.workspace(&w.id)? {
                        x.snapshots.retain(|s| !gone.contains(&s.id));
                        tx.put_workspace(&x)?;
                    }
                    Ok(())
                })?;
            }
            if let Some(period) = policy.dormancy
                && w.lifecycle.phase == Phase::Stopped
                && w.lifecycle.desired == Desired::Stopped
                && w.backup.pending.is_none()
                && policy.dormant(w.lifecycle.since(), now)
            {
                self.delete_dormant(&w, period, now)?;
                pass.dormant += 1;
                continue;
            }
            if w.lifecycle.phase == Phase::Stopped
                && w.lifecycle.since() + release_after <= now
                && self.release_files(&w)?
            {
                pass.released += 1;
            }
        }
        // Snapshots of deleted workspaces go after their organization's grace period.
        let deleted = self.store().read(|tx| tx.deleted_workspaces())?;
        let due: Vec<_> = deleted
            .into_iter()
            .filter(|d| !d.snapshots_purged)
            .filter(|d| {
                let grace = self
                    .store()
                    .read(|tx| tx.org(&d.org))
                    .ok()
                    .flatten()
                    .map(|o| o.policy.deleted_backup_grace)
                    .unwrap_or_else(|| crate::domain::Policy::default().deleted_backup_grace);
                time::Duration::try_from(grace).is_ok_and(|g| d.deleted_at + g <= now)
            })
            .collect();
        if let (false, Some(store)) = (due.is_empty(), self.backup_store()) {
            let ids: Vec<String> = due.iter().map(|d| d.id.to_string()).collect();
            let n = tokio::task::spawn_blocking(move || -> std::result::Result<usize, String> {
                let gone: Vec<String> = store
                    .list()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|s| s.workspace.as_ref().is_some_and(|w| ids.contains(w)))
                    .map(|s| s.id)
                    .collect();
                store.forget(&gone).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|message| Error::Unavailable { message })?;
            pass.forgotten += n;
            self.store().write(|tx| -> Result<()> {
                for mut d in due.clone() {
                    d.snapshots_purged = true;
                    tx.put_deleted(&d)?;
                }
                Ok(())
            })?;
            pass.purged_workspaces += due.len();
        }
        if pass.forgotten > 0
            && let Some(store) = store
        {
            pass.pruned = tokio::task::spawn_blocking(move || store.prune())
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(|e| Error::Unavailable {
                    message: e.to_string(),
                })?;
        }
        Ok(pass)
    }

    /// Deletes a workspace stopped for longer than its organization's dormancy period; its git
    /// state stays in the tombstone and its snapshots for the grace period.
    fn delete_dormant(
        &self,
        w: &Workspace,
        period: std::time::Duration,
        now: time::OffsetDateTime,
    ) -> Result<()> {
        let reason = format!(
            "dormant: stopped for more than {}",
            crate::human::duration(period)
        );
        tracing::info!(workspace = %w.id, git = ?w.git, "{reason}; deleting");
        self.remove_files(&w.id)?;
        self.store().write(|tx| -> Result<()> {
            if let Some(mut x) = tx.workspace(&w.id)? {
                x.lifecycle.set_desired(crate::domain::Desired::Deleted)?;
                x.lifecycle
                    .transition(Phase::Deleted, now, Some(reason.clone()))?;
                tx.purge_workspace(&x, now, &reason)?;
            }
            Ok(())
        })
    }

    fn owned(&self, actor: &Actor, id: &WorkspaceId) -> Result<Workspace> {
        self.owners_workspace(actor, id, "use its backups")
    }
}

/// One of the workspace's snapshots, by its id or its first 8 or more hex digits.
fn find_snapshot(ws: &Workspace, snapshot: &str) -> Result<Snapshot> {
    ws.snapshots
        .iter()
        .find(|s| s.id == snapshot || (snapshot.len() >= 8 && s.id.starts_with(snapshot)))
        .cloned()
        .ok_or(Error::NotFound { what: "snapshot" })
}

/// A running workspace held still (see `Runtime::hold`) until this is dropped.
struct Held {
    runtime: std::sync::Arc<dyn crate::runtime::Runtime>,
    id: WorkspaceId,
}

impl Held {
    /// Holds the workspace; `None` without a runtime (nothing runs).
    fn new(
        runtime: Option<std::sync::Arc<dyn crate::runtime::Runtime>>,
        id: &WorkspaceId,
    ) -> std::result::Result<Option<Held>, crate::runtime::RuntimeError> {
        let Some(runtime) = runtime else {
            return Ok(None);
        };
        runtime.hold(id, true)?;
        Ok(Some(Held {
            runtime,
            id: id.clone(),
        }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.hold(&self.id, false) {
            tracing::error!(workspace = %self.id, error = %e, "the workspace could not be let go after its backup");
        }
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Internal(format!(
            "cannot remove {}: {e}",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// The first 8 hex digits, as restic shows snapshot ids.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// The repository of a cell without S3: `DATA/backups`.
pub fn local_store_dir(data: &Path) -> PathBuf {
    data.join("backups")
}
