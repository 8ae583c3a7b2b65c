//! Workspace backups: one repository in restic's format per cell, written through rustic_core,
//! so the stock `restic` CLI opens it with the key `devcell backup key` prints. Deduplicated
//! across all workspaces, compressed (repository version 2) and encrypted.
//!
//! Each snapshot holds one workspace directory as `<workspace id>/workspace/...` (and
//! `<workspace id>/home/...` when the policy backs up homes), tagged with the workspace and
//! organization ids. The agent's run directory is never included.
//!
//! rustic_core writes every snapshot; the cell walks the workspace itself (`source`) and
//! stores small files' contents ahead of it (`small`), in the same format, for speed.
//!
//! rustic_core is blocking and takes no locks of its own: every operation here runs on the
//! caller's thread (use `spawn_blocking`) and holds the store's mutex, so a prune never runs
//! beside a backup.

pub mod s3;
mod small;
mod source;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustic_core::{
    BackupOptions, ConfigOptions, Credentials, KeyOptions, LocalDestination, LsOptions, OpenStatus,
    PathList, PruneOptions, Repository, RepositoryBackends, RepositoryOptions, RestoreOptions,
    SnapshotOptions, WriteBackend, repofile::SnapshotFile,
};
use time::OffsetDateTime;

/// The names at the top of a workspace directory that no snapshot holds.
fn skipped(include_home: bool) -> Vec<&'static str> {
    let mut skip = vec!["run", STATE, RESTORING];
    if !include_home {
        skip.push("home");
    }
    skip
}

/// The cell's own directory for the sandbox, never backed up.
const STATE: &str = crate::runtime::local::STATE_DIR;

/// Where a restore writes before its files replace the workspace's; never backed up.
const RESTORING: &str = crate::runtime::local::RESTORING;

/// The host name recorded in every snapshot (the cell, not the machine, owns them).
const HOST: &str = "devcell";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup store {location}: {message}")]
    Store { location: String, message: String },
    #[error("no snapshot {0} of this workspace")]
    NoSnapshot(String),
    #[error("the snapshot {id} failed verification: {reason}")]
    Unverified { id: String, reason: String },
}

/// A snapshot just written and read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub id: String,
    pub files: u64,
    pub bytes: u64,
    pub added_bytes: u64,
}

/// A snapshot as listed from the store.
#[derive(Clone, Debug)]
pub struct Listed {
    pub id: String,
    pub time: OffsetDateTime,
    pub workspace: Option<String>,
}

/// What to snapshot.
pub struct Source<'a> {
    /// The workspace's host directory (holding `workspace/`, `home/` and `run/`).
    pub dir: &'a Path,
    pub workspace: &'a str,
    pub org: &'a str,
    pub include_home: bool,
    /// `stop`, `interval` or `manual`; recorded as the snapshot's label.
    pub trigger: &'a str,
    /// The workspace's newest verified snapshot: an unchanged tree needs no second walk.
    pub verified_parent: Option<&'a str>,
}

pub struct BackupStore {
    backend: Arc<dyn WriteBackend>,
    password: String,
    cache: PathBuf,
    /// The master key after the first open, so later opens skip the key derivation.
    key: Mutex<Option<rustic_core::repofile::MasterKey>>,
    /// One operation at a time.
    lock: Mutex<()>,
    /// Per workspace, the last snapshot taken and verified, with the fingerprint of the files
    /// it holds (see [`source::Survey::print`]); kept in the cache directory, so that a restarted cell
    /// backs an unchanged workspace up without walking it through rustic again.
    prints: Mutex<Prints>,
}

type Prints = std::collections::HashMap<String, (String, [u8; 32])>;

/// Where the fingerprints live: the cell's own cache directory, never a workspace's.
const PRINTS_FILE: &str = "devcell-fingerprints.json";

/// The fingerprints saved by an earlier process; none when the file is missing or damaged
/// (the next backups then take the long way).
fn load_prints(cache: &Path) -> Prints {
    let Ok(text) = std::fs::read_to_string(cache.join(PRINTS_FILE)) else {
        return Prints::new();
    };
    let saved: std::collections::HashMap<String, (String, String)> =
        serde_json::from_str(&text).unwrap_or_default();
    saved
        .into_iter()
        .filter_map(|(ws, (snap, print))| {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(print, &mut bytes).ok()?;
            Some((ws, (snap, bytes)))
        })
        .collect()
}

/// Saves the fingerprints whole (a temporary file renamed into place).
fn save_prints(cache: &Path, prints: &Prints) -> std::io::Result<()> {
    let saved: std::collections::HashMap<&String, (&String, String)> = prints
        .iter()
        .map(|(ws, (snap, print))| (ws, (snap, hex::encode(print))))
        .collect();
    std::fs::create_dir_all(cache)?;
    let tmp = cache.join(format!("{PRINTS_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&saved).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, cache.join(PRINTS_FILE))
}

impl BackupStore {
    /// A repository in a local directory (created on first use).
    pub fn local(dir: &Path, password: &str, cache: &Path) -> Result<BackupStore, BackupError> {
        let location = dir.display().to_string();
        let backend = rustic_backend::LocalBackend::new(&location, [])
            .map_err(|e| store_error(&location, e))?;
        Ok(Self::with_backend(Arc::new(backend), password, cache))
    }

    pub fn with_backend(
        backend: Arc<dyn WriteBackend>,
        password: &str,
        cache: &Path,
    ) -> BackupStore {
        BackupStore {
            backend,
            password: password.to_owned(),
            cache: cache.to_owned(),
            key: Mutex::new(None),
            lock: Mutex::new(()),
            prints: Mutex::new(load_prints(cache)),
        }
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    fn err(&self, e: impl std::fmt::Display) -> BackupError {
        store_error(&self.location(), e)
    }

    /// Opens the repository, creating it the first time.
    fn open(&self) -> Result<Repository<OpenStatus>, BackupError> {
        let options = RepositoryOptions::default().cache_dir(self.cache.clone());
        let backends = RepositoryBackends::new(self.backend.clone(), None);
        let repo = Repository::new(&options, &backends).map_err(|e| self.err(e))?;
        let known = self.key.lock().ok().and_then(|k| k.clone());
        let repo = match known {
            Some(key) => repo
                .open(&Credentials::Masterkey(key))
                .map_err(|e| self.err(e))?,
            None => {
                let creds = Credentials::password(&self.password);
                let exists = repo.config_id().map_err(|e| self.err(e))?.is_some();
                if exists {
                    repo.open(&creds).map_err(|e| self.err(e))?
                } else {
                    let key = KeyOptions::default()
                        .hostname(HOST.to_string())
                        .username("devcell".to_string());
                    // zstd level 1: about restic's "auto" speed; workspace files are mostly
                    // source and build output, where higher levels buy little.
                    let mut config = ConfigOptions::default();
                    config.set_compression = Some(1);
                    // As restic: a blob is not decrypted and decompressed again right after
                    // it was made (rustic's default; 5-8% of a full backup). Every backup
                    // still reads back its snapshot, the index and the trees; data blobs are
                    // checked, as restic's are, whenever they are read (a restore, or
                    // `restic check --read-data`).
                    config.set_extra_verify = Some(false);
                    // Fixed 1 MiB chunks rather than content-defined ones: rustic_core 0.13
                    // builds the Rabin chunker's tables for every file, which was 40% of a
                    // backup of many small files (0.26× restic on 100,000 tiny files, 0.47×
                    // on 44,000 text files; 0.67× and 1.05× with fixed chunks, see
                    // benches/backup.rs). Dedup is the same for files under 512 KiB (one
                    // chunk either way), for identical files and for appends and in-place
                    // changes; only a large file with bytes inserted stores more of itself
                    // again. Stock restic reads such a repository as any other. Stores made
                    // before keep their chunker.
                    config.set_chunker = Some(rustic_core::repofile::Chunker::FixedSize);
                    repo.init(&creds, &key, &config).map_err(|e| self.err(e))?
                }
            }
        };
        if let Ok(mut k) = self.key.lock() {
            *k = Some(repo.key());
        }
        Ok(repo)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new snapshot holding the tree of `parent` (files unchanged since), read back once
    /// saved.
    fn same_tree(
        &self,
        repo: &Repository<impl rustic_core::Open>,
        p: &SnapshotFile,
        mut snap: SnapshotFile,
    ) -> Result<Taken, BackupError> {
        let mut summary = p.summary.clone().unwrap_or_default();
        summary.files_new = 0;
        summary.files_changed = 0;
        summary.files_unmodified = summary.total_files_processed;
        summary.dirs_new = 0;
        summary.dirs_changed = 0;
        summary.dirs_unmodified = summary.total_dirs_processed;
        summary.data_added = 0;
        summary.data_added_packed = 0;
        summary.data_added_files = 0;
        summary.data_added_files_packed = 0;
        summary.data_added_trees = 0;
        summary.data_added_trees_packed = 0;
        snap.tree = p.tree;
        snap.paths = p.paths.clone();
        snap.parent = Some(p.id);
        snap.summary = Some(summary.clone());
        let before: std::collections::HashSet<rustic_core::repofile::SnapshotId> =
            repo.list().map_err(|e| self.err(e))?.collect();
        repo.save_snapshots(vec![snap]).map_err(|e| self.err(e))?;
        let id = repo
            .list::<rustic_core::repofile::SnapshotId>()
            .map_err(|e| self.err(e))?
            .find(|id| !before.contains(id))
            .ok_or_else(|| self.err("the new snapshot is not listed"))?;
        let id = id.to_hex().as_str().to_owned();
        let stored = repo
            .get_snapshots(&[id.as_str()])
            .map_err(|e| BackupError::Unverified {
                id: id.clone(),
                reason: e.to_string(),
            })?;
        if stored.first().map(|s| s.tree) != Some(p.tree) {
            return Err(BackupError::Unverified {
                id,
                reason: "its tree is not the one saved".into(),
            });
        }
        Ok(Taken {
            id,
            files: summary.total_files_processed,
            bytes: summary.total_bytes_processed,
            added_bytes: 0,
        })
    }

    /// Writes a snapshot of the workspace's files, then reads it back: its tree must list as
    /// many files as were written.
    pub fn snapshot(&self, src: &Source<'_>) -> Result<Taken, BackupError> {
        let _g = self.guard();
        let result = self.snapshot_locked(src);
        if let Err(BackupError::Unverified { id, reason }) = &result {
            // A snapshot that did not read back is never listed: it goes, so that unverified
            // snapshots do not pile up in the repository.
            if let Err(e) = self.forget_locked(std::slice::from_ref(id)) {
                tracing::warn!(snapshot = %id, error = %e, %reason, "an unverified snapshot is still in the store");
            }
        }
        if result.is_err() {
            // The store may have been replaced or recreated meanwhile: open it afresh next time.
            if let Ok(mut k) = self.key.lock() {
                *k = None;
            }
        }
        result
    }

    fn snapshot_locked(&self, src: &Source<'_>) -> Result<Taken, BackupError> {
        let t = std::time::Instant::now();
        let repo = self.open()?;
        // Taken before any file is read: a change made during the backup makes the next
        // fingerprint differ, so it is never mistaken for unchanged.
        let survey = source::survey(src.dir, &skipped(src.include_home));
        let print = survey.as_ref().map(|s| s.print);
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "fingerprint taken");
        let snap = SnapshotOptions::default()
            .host(HOST.to_string())
            .label(src.trigger.to_string())
            .command(format!("devcell backup ({})", src.trigger))
            .add_tags(&format!("{},{}", src.workspace, src.org))
            .and_then(|o| o.to_snapshot())
            .map_err(|e| self.err(e))?;
        // A parent gone from the store (pruned by hand) leaves rustic to choose.
        let parent = src
            .verified_parent
            .and_then(|p| repo.get_snapshots(&[p]).ok())
            .and_then(|s| s.into_iter().next());
        let taken = self.snapshot_open(repo, src, parent.as_ref(), snap, survey)?;
        if let Some(p) = print
            && let Ok(mut prints) = self.prints.lock()
        {
            prints.insert(src.workspace.to_owned(), (taken.id.clone(), p));
            if let Err(e) = save_prints(&self.cache, &prints) {
                tracing::warn!(error = %e, "backup fingerprints not saved; a restarted cell walks unchanged workspaces again");
            }
        }
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "snapshot taken and verified"
        );
        Ok(taken)
    }

    fn snapshot_open(
        &self,
        repo: Repository<OpenStatus>,
        src: &Source<'_>,
        parent: Option<&SnapshotFile>,
        snap: SnapshotFile,
        survey: Option<source::Survey>,
    ) -> Result<Taken, BackupError> {
        // Nothing changed since the last verified snapshot (same fingerprint): a new snapshot
        // of the same tree, without loading the index or rustic walking every file again.
        if let (Some(parent), Some(survey)) = (parent, &survey) {
            let unchanged = self
                .prints
                .lock()
                .ok()
                .and_then(|p| p.get(src.workspace).cloned())
                .is_some_and(|(id, p)| id == parent.id.to_hex().as_str() && p == survey.print);
            if unchanged {
                match self.same_tree(&repo, parent, snap.clone()) {
                    Ok(taken) => return Ok(taken),
                    Err(e) => tracing::warn!(error = %e, "unchanged files backed up the long way"),
                }
            }
        }
        let packed = match &survey {
            Some(survey) => self.pack_small(&repo, src.dir, parent, survey),
            None => small::Packed::default(),
        };
        let t = std::time::Instant::now();
        let repo = repo.to_indexed_ids().map_err(|e| self.err(e))?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "backup store indexed");
        self.snapshot_indexed(repo, src, parent, snap, survey, packed.bytes)
    }

    /// Stores the small files changed since `parent` (all of them without one) ahead of
    /// rustic (see [`small`]). Only a shortcut: on failure rustic stores them itself.
    fn pack_small(
        &self,
        repo: &Repository<OpenStatus>,
        dir: &Path,
        parent: Option<&SnapshotFile>,
        survey: &source::Survey,
    ) -> small::Packed {
        let t = std::time::Instant::now();
        // A file changed since the parent was taken has a later change time (which a workspace
        // cannot set back); a second of slack for coarse clocks. Unchanged ones rustic skips by
        // their metadata without reading them.
        let since = parent.map(|p| p.time.timestamp().as_second() - 1);
        let config = repo.config();
        let below = config.chunk_min_size().min(config.chunk_size()) as u64;
        let files: Vec<PathBuf> = survey
            .small(below)
            .filter(|(_, ctime)| since.is_none_or(|s| *ctime >= s))
            .map(|(rel, _)| rel.to_owned())
            .collect();
        if files.is_empty() {
            return small::Packed::default();
        }
        let Some(key) = self.key.lock().ok().and_then(|k| k.clone()) else {
            return small::Packed::default();
        };
        // The data blobs the store holds, from its index files (rustic loads them again for
        // the backup, with these packs).
        let stored: Result<std::collections::HashSet<rustic_core::Id>, _> = repo
            .stream_files::<rustic_core::repofile::IndexFile>()
            .and_then(|files| {
                let mut ids = std::collections::HashSet::new();
                for file in files {
                    let (_, index) = file?;
                    for pack in index.packs {
                        ids.extend(
                            pack.blobs
                                .iter()
                                .filter(|b| b.tpe == rustic_core::repofile::BlobType::Data)
                                .map(|b| *b.id),
                        );
                    }
                }
                Ok(ids)
            });
        let stored = match stored {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "small files not packed ahead: the index did not read");
                return small::Packed::default();
            }
        };
        let known = |id: &small::BlobId| stored.contains(&rustic_core::Id::new(*id));
        let job = small::Job {
            backend: self.backend.as_ref(),
            key: &key,
            zstd: config.zstd().ok().flatten(),
            pack_size: config.packsize(rustic_core::repofile::BlobType::Data).0 as usize,
            dir,
            files: &files,
            below,
            known: &known,
        };
        match small::pack(&job) {
            Ok(packed) => {
                tracing::debug!(
                    ms = t.elapsed().as_millis() as u64,
                    files = files.len(),
                    blobs = packed.blobs,
                    packs = packed.packs,
                    "small files packed"
                );
                packed
            }
            Err(e) => {
                tracing::warn!(error = %e, "small files not packed ahead; rustic stores them");
                small::Packed::default()
            }
        }
    }

    fn snapshot_indexed(
        &self,
        repo: Repository<impl rustic_core::IndexedIds>,
        src: &Source<'_>,
        parent: Option<&SnapshotFile>,
        snap: SnapshotFile,
        survey: Option<source::Survey>,
        packed_bytes: u64,
    ) -> Result<Taken, BackupError> {
        let dir = src.dir.to_string_lossy();
        let mut globs = vec![
            format!("!{dir}/run"),
            format!("!{dir}/{STATE}"),
            format!("!{dir}/{RESTORING}"),
        ];
        if !src.include_home {
            globs.push(format!("!{dir}/home"));
        }
        // No size scan first: it only feeds progress estimates, and walks every file once more.
        let mut opts = BackupOptions::default()
            .as_path(PathBuf::from(src.workspace))
            .no_scan(true);
        opts.excludes.globs = globs;
        // The parent is the workspace's last snapshot whatever its trigger: rustic's own
        // choice groups by label, and a "stop" snapshot after "interval" ones would then read
        // every file again instead of only the changed ones.
        if let Some(parent) = parent {
            opts.parent_opts.parents = vec![parent.id.to_hex().as_str().to_owned()];
        }
        let tb = std::time::Instant::now();
        let written = match survey {
            // The entries already walked (see `source`).
            Some(survey) => {
                let files =
                    source::WorkspaceSource::new(src.dir, survey).map_err(|e| self.err(e))?;
                repo.archive(&opts, &files, snap, &[src.dir.to_path_buf()])
            }
            // Something could not be read on the way: rustic walks by itself and skips it.
            None => {
                let sources = PathList::from_string(&dir)
                    .map_err(|e| self.err(e))?
                    .sanitize()
                    .map_err(|e| self.err(e))?;
                repo.backup(&opts, &sources, snap)
            }
        }
        .map_err(|e| self.err(e))?;
        tracing::debug!(ms = tb.elapsed().as_millis() as u64, "rustic backup done");
        let summary = written.summary.clone().unwrap_or_default();
        let id = written.id.to_hex().as_str().to_owned();

        // Verify: the snapshot file comes back from the store, and so do the index and every
        // tree under it — unless its tree is the very tree of the last verified snapshot (trees
        // are addressed by content, so nothing under it changed).
        let unverified = |reason: String| BackupError::Unverified {
            id: id.clone(),
            reason,
        };
        let stored = repo
            .get_snapshots(&[id.as_str()])
            .map_err(|e| unverified(e.to_string()))?;
        let stored = stored
            .first()
            .ok_or_else(|| unverified("not in the store".into()))?;
        if parent.is_some_and(|p| p.tree == stored.tree) {
            return Ok(Taken {
                id,
                files: summary.total_files_processed,
                bytes: summary.total_bytes_processed,
                added_bytes: summary.data_added + packed_bytes,
            });
        }
        let repo = repo
            .drop_index()
            .to_indexed_ids()
            .map_err(|e| self.err(e))?;
        let root = repo
            .node_from_snapshot_and_path(stored, src.workspace)
            .map_err(|e| unverified(e.to_string()))?;
        // rustic counts every entry that is not a directory as a file (links, fifos, sockets
        // and devices too), and so does this.
        let mut files = 0u64;
        for item in repo
            .ls(&root, &LsOptions::default())
            .map_err(|e| unverified(e.to_string()))?
        {
            let (_, node) = item.map_err(|e| unverified(e.to_string()))?;
            if !node.is_dir() {
                files += 1;
            }
        }
        if files != summary.total_files_processed {
            return Err(unverified(format!(
                "{files} files listed, {} written",
                summary.total_files_processed
            )));
        }
        Ok(Taken {
            id,
            files,
            bytes: summary.total_bytes_processed,
            added_bytes: summary.data_added + packed_bytes,
        })
    }

    /// Restores a snapshot of `workspace` into `dir` (its `workspace/` and `home/` land in
    /// `dir/workspace` and `dir/home`), with the files' numeric owners. `dir` must be a new
    /// directory nothing else writes into: the restore opens paths by name, as root, and would
    /// follow a link that a workspace left there.
    pub fn restore(&self, id: &str, workspace: &str, dir: &Path) -> Result<(), BackupError> {
        let _g = self.guard();
        let repo = self.open()?.to_indexed().map_err(|e| self.err(e))?;
        let snap = self.find(&repo, id, workspace)?;
        let node = repo
            .node_from_snapshot_and_path(&snap, workspace)
            .map_err(|e| self.err(e))?;
        let ls = repo
            .ls(&node, &LsOptions::default())
            .map_err(|e| self.err(e))?;
        std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        let dest = LocalDestination::new(&format!("{}/", dir.display()), true, false)
            .map_err(|e| self.err(e))?;
        let opts = RestoreOptions::default().numeric_id(true);
        let plan = repo
            .prepare_restore(&opts, ls.clone(), &dest, false)
            .map_err(|e| self.err(e))?;
        repo.restore(plan, &opts, ls, &dest)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn find(
        &self,
        repo: &Repository<impl rustic_core::Open>,
        id: &str,
        workspace: &str,
    ) -> Result<SnapshotFile, BackupError> {
        let valid = id.len() >= 8 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(BackupError::NoSnapshot(id.into()));
        }
        let found = repo
            .get_snapshots(&[id])
            .map_err(|_| BackupError::NoSnapshot(id.into()))?;
        found
            .into_iter()
            .find(|s| s.tags.contains(workspace))
            .ok_or_else(|| BackupError::NoSnapshot(id.into()))
    }

    /// Every snapshot in the store.
    pub fn list(&self) -> Result<Vec<Listed>, BackupError> {
        let _g = self.guard();
        let repo = self.open()?;
        let snaps = repo.get_all_snapshots().map_err(|e| self.err(e))?;
        Ok(snaps
            .into_iter()
            .map(|s| Listed {
                id: s.id.to_hex().as_str().to_owned(),
                time: OffsetDateTime::from_unix_timestamp(s.time.timestamp().as_second())
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                workspace: s
                    .tags
                    .iter()
                    .find(|t| t.starts_with("ws_"))
                    .map(|t| t.to_string()),
            })
            .collect())
    }

    /// Removes snapshots (by full id); their data goes at the next [`BackupStore::prune`].
    pub fn forget(&self, ids: &[String]) -> Result<usize, BackupError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let _g = self.guard();
        self.forget_locked(ids)
    }

    fn forget_locked(&self, ids: &[String]) -> Result<usize, BackupError> {
        let repo = self.open()?;
        let snaps = repo.get_snapshots(ids).map_err(|e| self.err(e))?;
        let ids: Vec<_> = snaps.iter().map(|s| s.id).collect();
        repo.delete_snapshots(&ids).map_err(|e| self.err(e))?;
        Ok(ids.len())
    }

    /// Deletes data no snapshot references any more; returns the packs removed or repacked.
    pub fn prune(&self) -> Result<u64, BackupError> {
        let _g = self.guard();
        let repo = self.open()?;
        let opts = PruneOptions::default().instant_delete(true);
        let plan = repo.prune_plan(&opts).map_err(|e| self.err(e))?;
        let changed = plan.stats.packs_to_delete.remove + plan.stats.packs.repack;
        repo.prune(&opts, plan).map_err(|e| self.err(e))?;
        Ok(changed)
    }
}

fn store_error(location: &str, e: impl std::fmt::Display) -> BackupError {
    BackupError::Store {
        location: location.to_owned(),
        message: e.to_string(),
    }
}
