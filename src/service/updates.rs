//! Updates of the cell's own binary, as use cases: a release fetched from the channel or
//! unpacked from a bundle is checked against this cell (the keys it trusts, the running version
//! and the newest release it has seen) and staged under `DATA/updates/VERSION`; applying it is
//! asked of the server, which owns the process and its listeners; how it went is kept as
//! history for `devcell update status` and the dashboard.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use time::OffsetDateTime;

use super::{Actor, Cell, Error, Result};
use crate::domain::entities::{NewestRelease, UpdateAttempt, UpdateOutcome};
use crate::store::Reader;
use crate::update::{Manifest, Trust, UpdateError};

/// The directory under the data directory where releases are staged.
pub const UPDATES_DIR: &str = "updates";
/// The source an owner's rollback is recorded with.
pub const ROLLBACK_SOURCE: &str = "rollback to the previous binary";
/// A staged release's copy of the database from just before it was applied (restored when
/// the new binary changed the database and then failed).
pub const DATABASE_BEFORE: &str = "database-before.redb";

/// A release that passed every check and waits in `dir` to be applied.
#[derive(Clone, Debug)]
pub struct Staged {
    pub manifest: Manifest,
    pub key_id: String,
    /// `DATA/updates/VERSION`.
    pub dir: PathBuf,
    /// The artifact for this host.
    pub binary: PathBuf,
    pub source: String,
}

impl Staged {
    /// Infrastructure releases and new major versions wait for an owner's approval.
    pub fn needs_approval(&self) -> bool {
        self.manifest.kind == crate::update::Kind::Infrastructure
            || self.manifest.version.major != crate::version::current().major
    }
}

/// What `devcell update status` and the dashboard show.
#[derive(Clone, Debug)]
pub struct UpdateStatus {
    pub running: semver::Version,
    pub newest: Option<NewestRelease>,
    /// The latest updates, newest first.
    pub attempts: Vec<UpdateAttempt>,
    pub channel: Option<url::Url>,
    /// The newest release is newer than what runs, staged, and waits for an owner.
    pub waiting_approval: bool,
}

/// What one look at the channel found and did.
#[derive(Debug)]
pub struct Checked {
    pub note: String,
    /// A release may apply by itself once the maintenance window opens.
    pub waits_for_window: bool,
}

/// An update the server is asked to carry out: the binary to run as `version`.
#[derive(Debug)]
pub struct ApplyRequest {
    pub version: semver::Version,
    pub binary: PathBuf,
    /// Where the database is copied before the handover (`DATA/updates/VERSION`).
    pub dir: PathBuf,
    /// The history entry (outcome `applying`) to finish.
    pub attempt: UpdateAttempt,
}

/// The cell's side of updates: requests for the server, and whether one is under way.
pub(super) struct Updates {
    requests: tokio::sync::mpsc::UnboundedSender<ApplyRequest>,
    receiver: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ApplyRequest>>>,
    under_way: std::sync::atomic::AtomicBool,
    /// Turned true when the cell hands over to another process: long-lived streams end.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Updates {
    fn default() -> Self {
        let (requests, receiver) = tokio::sync::mpsc::unbounded_channel();
        Updates {
            requests,
            receiver: std::sync::Mutex::new(Some(receiver)),
            under_way: Default::default(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

fn refused(e: UpdateError) -> Error {
    Error::Conflict {
        code: e.code(),
        message: e.to_string(),
    }
}

impl Cell {
    pub fn updates_dir(&self) -> PathBuf {
        self.config().data_dir.join(UPDATES_DIR)
    }

    /// `DATA/updates`, made when missing (only the cell reaches it).
    fn updates_dir_made(&self) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.updates_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// A new empty directory under `DATA/updates` to fetch or unpack a release into.
    fn incoming_dir(&self) -> Result<tempfile::TempDir> {
        let dir = self.updates_dir_made()?;
        tempfile::Builder::new()
            .prefix(".incoming-")
            .tempdir_in(&dir)
            .map_err(|e| Error::Internal(format!("creating a directory in {}: {e}", dir.display())))
    }

    /// The keys this cell trusts for the release in `dir`.
    fn release_trust(&self, dir: &Path) -> std::result::Result<Trust, UpdateError> {
        let base = Trust::default()
            .with_keys(&self.config().update.trusted_keys, "update.trusted_keys")?;
        crate::update::trust_for(dir, base)
    }

    /// Checks the release in `dir` as one about to be applied: signed by a trusted key, not
    /// expired, newer than what runs and may update from it, not older than (nor another
    /// manifest of) the newest release seen, every artifact as declared, one for this host.
    /// Then it is the newest release seen, and moves to `DATA/updates/VERSION`.
    pub fn stage_release(&self, dir: &Path, source: &str) -> Result<Staged> {
        let trust = self.release_trust(dir).map_err(refused)?;
        let verified =
            crate::update::verify_release(dir, &trust, crate::version::current(), self.now())
                .map_err(refused)?;
        let m = verified.manifest;
        let manifest_sha256 = {
            use sha2::Digest as _;
            let bytes =
                crate::update::read_small(&dir.join(crate::update::MANIFEST)).map_err(refused)?;
            hex::encode(sha2::Sha256::digest(bytes))
        };
        let target = crate::update::host_target();
        let Some(artifact) = m.artifacts.iter().find(|a| a.target == target) else {
            return Err(refused(UpdateError::ArtifactMismatch(format!(
                "release {} has no artifact for {target} (it has: {})",
                m.version,
                m.artifacts
                    .iter()
                    .map(|a| a.target.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))));
        };
        let now = self.now();
        // The check and the record in one transaction: two releases checked at once cannot
        // both pass as the newest.
        self.store().write(|tx| {
            if let Some(seen) = tx.newest_release()? {
                if m.version < seen.version {
                    return Err(refused(UpdateError::NotNewer(format!(
                        "release {} is older than {}, the newest release this cell has seen ({}, {}); an older release is never installed",
                        m.version,
                        seen.version,
                        seen.source,
                        crate::human::moment(seen.seen_at, now)
                    ))));
                }
                if m.version == seen.version && manifest_sha256 != seen.manifest_sha256 {
                    return Err(refused(UpdateError::NotNewer(format!(
                        "release {} was seen before with another manifest; a release is never replaced under the same version",
                        m.version
                    ))));
                }
                if m.version == seen.version {
                    return Ok(());
                }
            }
            tx.put_newest_release(&NewestRelease {
                version: m.version.clone(),
                manifest_sha256: manifest_sha256.clone(),
                channel: m.channel.clone(),
                kind: m.kind.as_str().into(),
                source: source.into(),
                seen_at: now,
                approved_at: None,
            })?;
            Ok(())
        })?;
        let staged_dir = self.updates_dir().join(m.version.to_string());
        if staged_dir != dir {
            if staged_dir.exists() {
                std::fs::remove_dir_all(&staged_dir).map_err(|e| {
                    Error::Internal(format!("removing {}: {e}", staged_dir.display()))
                })?;
            }
            std::fs::rename(dir, &staged_dir).map_err(|e| {
                Error::Internal(format!(
                    "staging the release in {}: {e}",
                    staged_dir.display()
                ))
            })?;
        }
        // Workspace images it carries go into the image cache (checked like the binary).
        for a in m
            .artifacts
            .iter()
            .filter(|a| a.target == crate::update::IMAGE_TARGET)
        {
            let imported = self
                .images()
                .import_archive(&staged_dir.join(&a.name))
                .map_err(|e| Error::Conflict {
                    code: "bad_image",
                    message: format!("the release's image {}: {e}", a.name),
                })?;
            for i in imported {
                tracing::info!(image = %i.reference, version = %m.version, "image from the release imported");
            }
        }
        tracing::info!(version = %m.version, key = %verified.key_id, %source, "release checked and staged");
        Ok(Staged {
            binary: staged_dir.join(&artifact.name),
            dir: staged_dir,
            key_id: verified.key_id,
            manifest: m,
            source: source.into(),
        })
    }

    /// Copies a release directory (the files its manifest names, each no larger than it
    /// declares, no link followed) and stages the copy; the directory itself is left as it is.
    pub fn stage_directory(&self, dir: &Path) -> Result<Staged> {
        use crate::update::{MANIFEST, SIGNATURE, trust};
        let incoming = self.incoming_dir()?;
        let manifest = crate::update::read_small(&dir.join(MANIFEST)).map_err(refused)?;
        let m = Manifest::parse(&manifest).map_err(refused)?;
        let copy = |name: &str, limit: u64, needed: bool| -> Result<()> {
            let from = dir.join(name);
            if !needed && !from.exists() {
                return Ok(());
            }
            crate::update::copy_limited(&from, &incoming.path().join(name), limit).map_err(refused)
        };
        copy(MANIFEST, 1 << 20, true)?;
        copy(SIGNATURE, 1 << 20, false)?;
        copy(trust::KEY_LIST, 1 << 20, false)?;
        copy(trust::KEY_LIST_SIGNATURE, 1 << 20, false)?;
        for a in &m.artifacts {
            copy(&a.name, a.size, true)?;
        }
        let staged = self.stage_release(incoming.path(), &dir.display().to_string())?;
        drop(incoming);
        Ok(staged)
    }

    /// Unpacks a bundle (checked entry by entry, its signature before its artifacts) and
    /// stages its release.
    pub fn stage_bundle(&self, file: &Path) -> Result<Staged> {
        self.stage_bundle_from(file, &format!("bundle {}", file.display()))
    }

    /// [`Cell::stage_bundle`], saying where the bundle came from in the history.
    fn stage_bundle_from(&self, file: &Path, source: &str) -> Result<Staged> {
        let incoming = self.incoming_dir()?;
        let trust = self.release_trust(incoming.path()).map_err(refused)?;
        crate::update::bundle::unpack(file, &trust, incoming.path()).map_err(refused)?;
        let staged = self.stage_release(incoming.path(), source)?;
        // Moved away by staging; the temporary directory is gone either way.
        drop(incoming);
        Ok(staged)
    }

    /// Fetches the release published at the channel URL (the manifest and its signature
    /// first, checked before any artifact is downloaded; each artifact no larger than it
    /// declares) and stages it.
    pub async fn fetch_release(&self, channel: &url::Url) -> Result<Staged> {
        let incoming = self.incoming_dir()?;
        let check = self.release_fetch_check();
        let fetched = crate::update::fetch::release(channel, incoming.path(), &check)
            .await
            .map_err(refused)?;
        match (fetched, check.staged) {
            // The same release as staged: checked again where it is.
            (None, Some((version, _))) => self.staged_release(&version),
            _ => self.stage_release(incoming.path(), channel.as_str()),
        }
    }

    /// What a fetch checks before downloading artifacts: trust, expiry and versions.
    fn release_fetch_check(&self) -> crate::update::fetch::Check {
        let newest = self.store().read(|tx| tx.newest_release()).ok().flatten();
        let staged = newest
            .as_ref()
            .filter(|n| {
                self.updates_dir()
                    .join(n.version.to_string())
                    .join(crate::update::MANIFEST)
                    .exists()
            })
            .map(|n| (n.version.clone(), n.manifest_sha256.clone()));
        crate::update::fetch::Check {
            trusted_keys: self.config().update.trusted_keys.clone(),
            running: crate::version::current().clone(),
            newest_seen: newest.map(|n| n.version),
            staged,
            now: self.now(),
        }
    }

    /// Whether `staged` waits for an owner's approval before it applies: infrastructure
    /// releases, new major versions, and every release when `update.auto_apply` is off;
    /// not once approved.
    fn waits_for_approval(&self, staged: &Staged) -> Result<bool> {
        if !staged.needs_approval() && self.config().update.auto_apply {
            return Ok(false);
        }
        let approved = self
            .store()
            .read(|tx| tx.newest_release())?
            .is_some_and(|n| n.version == staged.manifest.version && n.approved_at.is_some());
        Ok(!approved)
    }

    /// One look at the channel: a newer release is fetched, checked and staged, then applied
    /// when it may apply by itself (an application release of the same major version, within
    /// the maintenance window, not one that was rolled back before); otherwise it waits for
    /// an owner.
    pub async fn check_for_update(&self) -> Result<Checked> {
        let Some(url) = self.config().update.channel_url.clone() else {
            return Ok(Checked {
                note: "no update.channel_url".into(),
                waits_for_window: false,
            });
        };
        let staged = match self.fetch_release(&url).await {
            Ok(s) => s,
            // Nothing newer: the usual answer.
            Err(Error::Conflict {
                code: "not_newer", ..
            }) => {
                return Ok(Checked {
                    note: format!("{} is the newest release", crate::version::current()),
                    waits_for_window: false,
                });
            }
            Err(e) => return Err(e),
        };
        let v = staged.manifest.version.clone();
        let failed_before = self
            .store()
            .read(|tx| tx.update_attempts(20))?
            .iter()
            .any(|a| {
                (a.to == v && a.outcome == UpdateOutcome::RolledBack)
                    || (a.from == v && a.source == ROLLBACK_SOURCE)
            });
        let note = |n: String| {
            Ok(Checked {
                note: n,
                waits_for_window: false,
            })
        };
        if failed_before {
            return note(format!(
                "release {v} was rolled back before; it applies only when asked (`devcell update apply`)"
            ));
        }
        if self.waits_for_approval(&staged)? {
            tracing::info!(version = %v, "a release waits for an owner's approval");
            return note(format!("release {v} waits for an owner's approval"));
        }
        if !self.in_update_window(self.now()) {
            return Ok(Checked {
                note: format!("release {v} waits for the maintenance window"),
                waits_for_window: true,
            });
        }
        self.request_update(staged)?;
        note(format!("applying release {v}"))
    }

    /// Asks the server to apply `staged`; returns the history entry it will finish. Refused
    /// while another update is under way.
    pub fn request_update(&self, staged: Staged) -> Result<UpdateAttempt> {
        self.request_binary(
            staged.manifest.version.clone(),
            staged.binary,
            staged.dir,
            staged.source,
        )
    }

    /// Asks the server to run `binary` (which says it is `version`) in place of this one.
    fn request_binary(
        &self,
        version: semver::Version,
        binary: PathBuf,
        dir: PathBuf,
        source: String,
    ) -> Result<UpdateAttempt> {
        let updates = &self.inner.updates;
        let served = updates
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        if !served {
            return Err(Error::Conflict {
                code: "cannot_apply",
                message: "no cell runs on this data directory: start it (`devcell up` or `serve`), then apply the update".into(),
            });
        }
        if updates.under_way.swap(true, Ordering::SeqCst) {
            return Err(Error::Conflict {
                code: "update_under_way",
                message: "an update is under way; wait for it to finish (`devcell update status`)"
                    .into(),
            });
        }
        // Kept to the millisecond, as stored: the history finds it by this moment.
        let now = self.now();
        let started_at = now - time::Duration::nanoseconds(i64::from(now.nanosecond() % 1_000_000));
        let attempt = UpdateAttempt {
            started_at,
            from: crate::version::current().clone(),
            to: version.clone(),
            source,
            outcome: UpdateOutcome::Applying,
            message: format!("applying {version}"),
            ended_at: None,
        };
        let recorded = self.store().write(|tx| tx.put_update_attempt(&attempt));
        if let Err(e) = recorded {
            updates.under_way.store(false, Ordering::SeqCst);
            return Err(e.into());
        }
        let request = ApplyRequest {
            version,
            binary,
            dir,
            attempt: attempt.clone(),
        };
        if updates.requests.send(request).is_err() {
            let message =
                "this cell cannot apply updates (it does not run as `devcell up` or `serve`)";
            self.finish_update(&attempt, UpdateOutcome::Failed, message)?;
            return Err(Error::Conflict {
                code: "cannot_apply",
                message: message.into(),
            });
        }
        Ok(attempt)
    }

    /// The requests to apply updates, for the server (once).
    pub fn take_update_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<ApplyRequest>> {
        self.inner
            .updates
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Records how an update ended; another may start.
    pub fn finish_update(
        &self,
        attempt: &UpdateAttempt,
        outcome: UpdateOutcome,
        message: &str,
    ) -> Result<()> {
        self.inner.updates.under_way.store(false, Ordering::SeqCst);
        let done = UpdateAttempt {
            outcome,
            message: message.into(),
            ended_at: Some(self.now()),
            ..attempt.clone()
        };
        self.store().write(|tx| tx.put_update_attempt(&done))?;
        Ok(())
    }

    /// Finishes every attempt still marked `applying`: applied when this binary is the
    /// version it went to (a new process, once its predecessor confirmed it healthy), failed
    /// otherwise (the cell was started again in the middle of one).
    pub fn settle_updates(&self) -> Result<()> {
        let running = crate::version::current();
        let attempts = self.store().read(|tx| tx.update_attempts(20))?;
        for a in attempts
            .iter()
            .filter(|a| a.outcome == UpdateOutcome::Applying)
        {
            if a.to == *running {
                self.finish_update(a, UpdateOutcome::Applied, &format!("{running} serves"))?;
            } else {
                let message = format!(
                    "the cell was started again on {running} during the update to {}",
                    a.to
                );
                self.finish_update(a, UpdateOutcome::Failed, &message)?;
            }
        }
        Ok(())
    }

    pub fn update_status(&self) -> Result<UpdateStatus> {
        let (newest, attempts) = self
            .store()
            .read(|tx| Ok((tx.newest_release()?, tx.update_attempts(20)?)))?;
        let running = crate::version::current().clone();
        let waiting_approval = newest.as_ref().is_some_and(|n| {
            n.version > running
                && n.approved_at.is_none()
                && (n.kind == "infrastructure"
                    || n.version.major != running.major
                    || !self.config().update.auto_apply)
        });
        Ok(UpdateStatus {
            running,
            newest,
            attempts,
            channel: self.config().update.channel_url.clone(),
            waiting_approval,
        })
    }

    /// The staged release of `version`, checked again (as if it were applied now).
    pub fn staged_release(&self, version: &semver::Version) -> Result<Staged> {
        let dir = self.updates_dir().join(version.to_string());
        if !dir.join(crate::update::MANIFEST).exists() {
            return Err(Error::NotFound {
                what: "staged release",
            });
        }
        let source = self
            .store()
            .read(|tx| tx.newest_release())?
            .filter(|n| n.version == *version)
            .map(|n| n.source)
            .unwrap_or_else(|| dir.display().to_string());
        self.stage_release(&dir, &source)
    }

    /// An owner approves the newest release (one that waits for approval).
    pub fn approve_update(&self, version: &semver::Version) -> Result<NewestRelease> {
        let now = self.now();
        self.store().write(|tx| {
            let Some(mut n) = tx.newest_release()? else {
                return Err(Error::NotFound { what: "release" });
            };
            if n.version != *version {
                return Err(Error::Conflict {
                    code: "not_newest",
                    message: format!(
                        "{version} is not the newest release seen ({}); approve that one",
                        n.version
                    ),
                });
            }
            n.approved_at.get_or_insert(now);
            tx.put_newest_release(&n)?;
            Ok(n)
        })
    }

    /// Goes back to the binary kept beside this one (`devcell.prev`, the one this replaced):
    /// an owner's explicit step, the one way to an older version. The channel's newer release
    /// then applies only when asked (`devcell update apply`), not by itself.
    pub async fn request_rollback(&self, previous: &Path) -> Result<UpdateAttempt> {
        let not_there = || Error::Conflict {
            code: "no_previous",
            message: format!(
                "there is no previous binary at {}: this cell has not been updated since it was installed, or the last update was rolled back",
                previous.display()
            ),
        };
        if !previous.is_file() {
            return Err(not_there());
        }
        // The previous binary says what it is (it ran here before).
        let out = tokio::process::Command::new(previous)
            .arg("--version")
            .output()
            .await
            .map_err(|_| not_there())?;
        let said = String::from_utf8_lossy(&out.stdout);
        let version: semver::Version = said
            .trim()
            .strip_prefix("devcell ")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Conflict {
                code: "no_previous",
                message: format!(
                    "{} does not say which devcell it is ({said:?})",
                    previous.display()
                ),
            })?;
        let dir = self.updates_dir_made()?.join(format!("rollback-{version}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
        // A copy: the swap replaces `devcell.prev` with the binary that runs now.
        let binary = dir.join("devcell");
        std::fs::copy(previous, &binary)
            .map_err(|e| Error::Internal(format!("copying {}: {e}", previous.display())))?;
        self.request_binary(version, binary, dir, ROLLBACK_SOURCE.into())
    }

    /// The update status, for cell administrators.
    pub fn updates_for(&self, actor: &Actor) -> Result<UpdateStatus> {
        self.require_admin(actor)?;
        self.update_status()
    }

    /// An administrator approves the newest release and has it applied.
    pub fn approve_and_apply(&self, actor: &Actor, version: &str) -> Result<UpdateAttempt> {
        self.require_admin(actor)?;
        self.approve_and_request(version)
    }

    /// Approves the newest release and has it applied (the admin socket's, whoever can reach
    /// the data directory).
    pub fn approve_and_request(&self, version: &str) -> Result<UpdateAttempt> {
        let v: semver::Version = version.trim().parse().map_err(|e| Error::Conflict {
            code: "invalid_version",
            message: format!("{version:?} is not a version: {e}"),
        })?;
        self.approve_update(&v)?;
        let staged = self.staged_release(&v)?;
        match self.request_update(staged) {
            // The loop saw the approval first and applies it: that is this approval's update.
            Err(Error::Conflict {
                code: "update_under_way",
                message,
            }) => self
                .store()
                .read(|tx| tx.update_attempts(1))?
                .into_iter()
                .find(|a| a.to == v && a.outcome == UpdateOutcome::Applying)
                .ok_or(Error::Conflict {
                    code: "update_under_way",
                    message,
                }),
            other => other,
        }
    }

    /// An administrator asks the channel now (applying as the loop would).
    pub async fn check_now(&self, actor: &Actor) -> Result<Checked> {
        self.require_admin(actor)?;
        self.check_for_update().await
    }

    /// An administrator's uploaded bundle (a file under `DATA/updates`): checked, staged, and
    /// applied; the upload is removed either way.
    pub async fn apply_uploaded_bundle(
        &self,
        actor: &Actor,
        file: PathBuf,
    ) -> Result<UpdateAttempt> {
        self.require_admin(actor)?;
        let cell = self.clone();
        let source = format!("a bundle {} uploaded", actor.user.email);
        let staged = tokio::task::spawn_blocking(move || {
            let staged = cell.stage_bundle_from(&file, &source);
            let _ = std::fs::remove_file(&file);
            staged
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        self.request_update(staged)
    }

    /// A new file under `DATA/updates` for an upload (only the cell reaches it).
    pub fn upload_file(&self) -> Result<(std::fs::File, PathBuf)> {
        let dir = self.updates_dir_made()?;
        let f = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&dir)
            .map_err(|e| {
                Error::Internal(format!("creating an upload in {}: {e}", dir.display()))
            })?;
        f.keep()
            .map_err(|e| Error::Internal(format!("keeping the upload: {e}")))
    }

    /// Ends every long-lived stream (terminals get a close frame saying the cell restarts,
    /// event streams end), for a handover to the next binary.
    pub fn close_streams(&self) {
        self.inner.updates.closing.send_replace(true);
    }

    /// Resolves once [`Cell::close_streams`] has run.
    pub async fn closing(&self) {
        let mut rx = self.inner.updates.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// When `at` falls in the maintenance window (`update.window`, UTC); always without one.
    pub fn in_update_window(&self, at: OffsetDateTime) -> bool {
        let Some(Ok((start, end))) = self
            .config()
            .update
            .window
            .as_deref()
            .map(crate::config::parse_window)
        else {
            return true;
        };
        let now = at.to_offset(time::UtcOffset::UTC);
        let m = u16::from(now.hour()) * 60 + u16::from(now.minute());
        if start < end {
            (start..end).contains(&m)
        } else {
            m >= start || m < end
        }
    }
}
