//! Wire types of the JSON API, separate from the domain types, with explicit conversions.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::domain::entities::{ApiToken, Class, Invitation, Membership, Org, User, Workspace};
use crate::domain::{Policy, Role};
use crate::workers::Status;

/// Integers of request bodies. The document is OpenAPI 3.1, whose JSON Schema counts a whole
/// number spelled as a float (`2.0`) as an integer, so the API takes that spelling too.
mod whole {
    use serde::de::{Deserializer, Error, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number, not negative")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is the first f64 past u64::MAX.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!(
                    "{v} is not a whole number of this range"
                )))
            }
        }
    }

    pub fn int<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        let v = d.deserialize_any(Whole)?;
        T::try_from(v).map_err(|_| D::Error::custom(format!("{v} is out of range")))
    }

    pub fn opt<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
        struct Maybe;
        impl<'de> Visitor<'de> for Maybe {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number or null")
            }
            fn visit_none<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
                d.deserialize_any(Whole).map(Some)
            }
        }
        match d.deserialize_option(Maybe)? {
            None => Ok(None),
            Some(v) => T::try_from(v)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("{v} is out of range"))),
        }
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Serialize, ToSchema)]
pub struct UserDto {
    pub id: String,
    pub email: String,
    pub name: String,
    pub is_admin: bool,
    pub created_at: String,
}

impl From<&User> for UserDto {
    fn from(u: &User) -> Self {
        UserDto {
            id: u.id.to_string(),
            email: u.email.clone(),
            name: u.name.clone(),
            is_admin: u.is_admin,
            created_at: rfc3339(u.created_at),
        }
    }
}

/// A change to a user's cell role.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub is_admin: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkLoginRequest {
    /// The secret part of a one-time login link (`dcl_...`).
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub user: UserDto,
    /// Send this as `X-CSRF-Token` with every cookie-authenticated request that changes something.
    pub csrf_token: String,
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    pub user: UserDto,
    pub orgs: Vec<OrgDto>,
    /// Present for session (cookie) authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current: String,
    pub new: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenDto {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used: Option<String>,
}

impl From<&ApiToken> for TokenDto {
    fn from(t: &ApiToken) -> Self {
        TokenDto {
            id: t.id.to_string(),
            name: t.name.clone(),
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(rfc3339),
            last_used: t.last_used.map(rfc3339),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// Lifetime in seconds; without it the token lives until revoked.
    #[serde(default, deserialize_with = "whole::opt")]
    pub expires_in_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// The secret, shown only this once. Use it as `Authorization: Bearer <token>`.
    pub token: String,
    pub info: TokenDto,
}

#[derive(Serialize, ToSchema)]
pub struct OrgDto {
    pub id: String,
    pub name: String,
    /// The caller's role: `owner` or `member`.
    pub role: String,
    pub created_at: String,
}

impl OrgDto {
    pub fn new(o: &Org, role: Role) -> Self {
        OrgDto {
            id: o.id.to_string(),
            name: o.name.clone(),
            role: role.as_str().into(),
            created_at: rfc3339(o.created_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgInput {
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct MemberDto {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub since: String,
}

impl MemberDto {
    pub fn new(m: &Membership, u: &User) -> Self {
        MemberDto {
            user_id: u.id.to_string(),
            email: u.email.clone(),
            name: u.name.clone(),
            role: m.role.as_str().into(),
            since: rfc3339(m.since),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    /// `owner` or `member`.
    pub role: String,
}

#[derive(Serialize, ToSchema)]
pub struct InvitationDto {
    pub id: String,
    pub role: String,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: String,
}

impl From<&Invitation> for InvitationDto {
    fn from(i: &Invitation) -> Self {
        InvitationDto {
            id: i.id.to_string(),
            role: i.role.as_str().into(),
            created_by: i.created_by.to_string(),
            created_at: rfc3339(i.created_at),
            expires_at: rfc3339(i.expires_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedInvitation {
    pub invitation: InvitationDto,
    /// The one-time link for the invitee.
    pub url: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The secret part of the invitation link (`dci_...`).
    pub token: String,
    /// For a new account (when not signed in): email, name and password.
    pub email: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AcceptedInvitation {
    pub org_id: String,
    pub role: String,
    /// For a new account: the session's CSRF token (the session cookie is set too).
    pub csrf_token: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassInputDto {
    pub name: String,
    /// CPU in thousandths of a core.
    #[serde(deserialize_with = "whole::int")]
    pub cpu_millis: u32,
    #[serde(deserialize_with = "whole::int")]
    pub memory_bytes: u64,
    #[serde(deserialize_with = "whole::int")]
    pub disk_bytes: u64,
    #[serde(deserialize_with = "whole::int")]
    pub max_processes: u32,
    #[serde(default)]
    pub is_default: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ClassDto {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub max_processes: u32,
    pub is_default: bool,
}

impl From<&Class> for ClassDto {
    fn from(c: &Class) -> Self {
        ClassDto {
            id: c.id.to_string(),
            org_id: c.org.to_string(),
            name: c.spec.name.clone(),
            cpu_millis: c.spec.cpu_millis,
            memory_bytes: c.spec.memory_bytes,
            disk_bytes: c.spec.disk_bytes,
            max_processes: c.spec.max_processes,
            is_default: c.is_default,
        }
    }
}

/// An organization's policy; durations in seconds.
#[derive(Serialize, ToSchema)]
pub struct PolicyDto {
    pub default_timeout_s: u64,
    pub max_timeout_s: u64,
    /// False when the owner has locked the timeout.
    pub users_can_extend: bool,
    pub max_lifetime_s: u64,
    /// Class ids members may use; empty means all.
    pub allowed_classes: Vec<String>,
    pub max_running_per_user: u32,
    pub backup_keep_last: u32,
    pub backup_keep_within_s: u64,
    pub deleted_backup_grace_s: u64,
    /// Stopped workspaces are deleted after this long; null never.
    pub dormancy_s: Option<u64>,
    pub outbound_network: bool,
    pub backup_home: bool,
}

impl From<&Policy> for PolicyDto {
    fn from(p: &Policy) -> Self {
        PolicyDto {
            default_timeout_s: p.default_timeout.as_secs(),
            max_timeout_s: p.max_timeout.as_secs(),
            users_can_extend: p.users_can_extend,
            max_lifetime_s: p.max_lifetime.as_secs(),
            allowed_classes: p.allowed_classes.iter().map(|c| c.to_string()).collect(),
            max_running_per_user: p.max_running_per_user,
            backup_keep_last: p.backup_keep_last,
            backup_keep_within_s: p.backup_keep_within.as_secs(),
            deleted_backup_grace_s: p.deleted_backup_grace.as_secs(),
            dormancy_s: p.dormancy.map(|d| d.as_secs()),
            outbound_network: p.outbound_network,
            backup_home: p.backup_home,
        }
    }
}

/// Changes to a policy; absent fields keep their value. `dormancy_s: 0` turns dormancy off.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatchDto {
    #[serde(default, deserialize_with = "whole::opt")]
    pub default_timeout_s: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub max_timeout_s: Option<u64>,
    pub users_can_extend: Option<bool>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub max_lifetime_s: Option<u64>,
    pub allowed_classes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub max_running_per_user: Option<u32>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub backup_keep_last: Option<u32>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub backup_keep_within_s: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub deleted_backup_grace_s: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub dormancy_s: Option<u64>,
    pub outbound_network: Option<bool>,
    pub backup_home: Option<bool>,
}

#[derive(Serialize, Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct RepoDto {
    /// https://, ssh://, user@host:path or file:// URL of a git repository.
    pub url: String,
    /// Branch or commit; the repository's default branch when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Organization id; defaults to the caller's first organization.
    pub org: Option<String>,
    pub name: Option<String>,
    pub repos: Vec<RepoDto>,
    /// Class id or name; defaults to the organization's default class.
    pub class: Option<String>,
    pub image: Option<String>,
    /// Inactivity timeout in seconds, within the organization's policy.
    #[serde(default, deserialize_with = "whole::opt")]
    pub timeout_s: Option<u64>,
    /// Start it right away.
    #[serde(default)]
    pub start: bool,
}

/// A workspace given to another member of its organization.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferWorkspace {
    /// The new owner's user id; they must be a member of the workspace's organization.
    pub owner: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkspace {
    pub name: Option<String>,
    pub class: Option<String>,
    /// An image reference, or an empty string to clear it.
    pub image: Option<String>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub timeout_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct PhaseChangeDto {
    pub phase: String,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceDto {
    pub id: String,
    pub org_id: String,
    pub owner_id: String,
    pub name: String,
    pub repos: Vec<RepoDto>,
    pub class_id: String,
    pub image: Option<String>,
    pub timeout_s: u64,
    /// What the owner asked for: `running`, `stopped` or `deleted`.
    pub desired: String,
    /// What the cell observes: `pending`, `creating`, `initializing`, `running`, `stopping`, `stopped`, `failed`, `deleted`.
    pub phase: String,
    pub history: Vec<PhaseChangeDto>,
    /// What went wrong, when the phase is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Each repository's state when the workspace last stopped: work that is not pushed.
    pub git: Vec<GitStateDto>,
    pub created_at: String,
    pub last_activity: String,
    /// While running: when the inactivity timeout or the maximum lifetime stops it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stops_at: Option<String>,
    /// `inactivity` or `max_lifetime`, with `stops_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Within five minutes of `stops_at`: the warning for its user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_warning: Option<String>,
    /// Snapshots of its files in the backup store, newest first.
    pub backups: Vec<SnapshotDto>,
    pub backup: BackupStatusDto,
}

#[derive(Serialize, ToSchema)]
pub struct SnapshotDto {
    /// The restic snapshot id.
    pub id: String,
    pub taken_at: String,
    /// `stop`, `interval` or `manual`.
    pub trigger: String,
    pub files: u64,
    pub bytes: u64,
    /// New data the snapshot added to the store, after deduplication.
    pub added_bytes: u64,
    /// Always `verified`: a snapshot is listed only once it was read back from the store.
    pub status: String,
}

impl From<&crate::domain::entities::Snapshot> for SnapshotDto {
    fn from(x: &crate::domain::entities::Snapshot) -> Self {
        SnapshotDto {
            id: x.id.clone(),
            taken_at: rfc3339(x.taken_at),
            trigger: x.trigger.clone(),
            files: x.files,
            bytes: x.bytes,
            added_bytes: x.added_bytes,
            status: "verified".into(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct BackupStatusDto {
    /// `ok`, or `pending` when a snapshot is owed and not yet taken (the files stay on local disk).
    pub state: String,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// The local files were removed after a verified backup; the next start restores them.
    pub files_released: bool,
}

impl WorkspaceDto {
    /// Adds when and why the workspace will stop by itself.
    pub fn with_plan(mut self, plan: Option<crate::service::StopPlan>) -> Self {
        if let Some(p) = plan {
            self.stops_at = Some(rfc3339(p.at));
            self.stop_reason = Some(p.reason.as_str().into());
            self.stop_warning = p.warning;
        }
        self
    }
}

#[derive(Serialize, ToSchema)]
pub struct GitStateDto {
    /// The repository's directory under /workspace.
    pub dir: String,
    pub branch: Option<String>,
    pub head: Option<String>,
    /// Modified, staged or deleted paths.
    pub uncommitted: Vec<String>,
    pub untracked: Vec<String>,
    /// Commits on no remote branch, as "sha subject".
    pub unpushed: Vec<String>,
    pub clean: bool,
}

impl From<&crate::domain::entities::GitState> for GitStateDto {
    fn from(g: &crate::domain::entities::GitState) -> Self {
        GitStateDto {
            dir: g.dir.clone(),
            branch: g.branch.clone(),
            head: g.head.clone(),
            uncommitted: g.uncommitted.clone(),
            untracked: g.untracked.clone(),
            unpushed: g.unpushed.clone(),
            clean: g.is_clean(),
        }
    }
}

/// A deleted workspace as the organization's record keeps it: what it held when it went.
#[derive(Serialize, ToSchema)]
pub struct DeletedWorkspaceDto {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub deleted_at: String,
    /// "deleted by its owner", or why a loop deleted it (e.g. "dormant: …").
    pub reason: String,
    /// Each repository's state at its last stop, recorded before the deletion.
    pub git: Vec<GitStateDto>,
    /// Its snapshots are gone from the backup store (after the grace period).
    pub snapshots_purged: bool,
}

impl From<&crate::domain::entities::DeletedWorkspace> for DeletedWorkspaceDto {
    fn from(d: &crate::domain::entities::DeletedWorkspace) -> Self {
        DeletedWorkspaceDto {
            id: d.id.to_string(),
            name: d.name.clone(),
            owner_id: d.owner.to_string(),
            deleted_at: rfc3339(d.deleted_at),
            reason: d.reason.clone(),
            git: d.git.iter().map(GitStateDto::from).collect(),
            snapshots_purged: d.snapshots_purged,
        }
    }
}

impl From<&Workspace> for WorkspaceDto {
    fn from(w: &Workspace) -> Self {
        WorkspaceDto {
            id: w.id.to_string(),
            org_id: w.org.to_string(),
            owner_id: w.owner.to_string(),
            name: w.name.clone(),
            repos: w
                .repos
                .iter()
                .map(|r| RepoDto {
                    url: r.url.as_str().to_owned(),
                    branch: r.branch.clone(),
                })
                .collect(),
            class_id: w.class.to_string(),
            image: w.image.clone(),
            timeout_s: w.timeout.as_secs(),
            desired: w.lifecycle.desired.as_str().into(),
            phase: w.lifecycle.phase.as_str().into(),
            history: w
                .lifecycle
                .history
                .iter()
                .map(|c| PhaseChangeDto {
                    phase: c.phase.as_str().into(),
                    at: rfc3339(c.at),
                    message: c.message.clone(),
                })
                .collect(),
            message: if w.lifecycle.phase == crate::domain::Phase::Failed {
                w.lifecycle.history.last().and_then(|c| c.message.clone())
            } else {
                None
            },
            git: w.git.iter().map(GitStateDto::from).collect(),
            created_at: rfc3339(w.created_at),
            last_activity: rfc3339(w.last_activity),
            stops_at: None,
            stop_reason: None,
            stop_warning: None,
            backups: w.snapshots.iter().rev().map(Into::into).collect(),
            backup: BackupStatusDto {
                state: if w.backup.pending.is_some() {
                    "pending".into()
                } else {
                    "ok".into()
                },
                last_error: w.backup.last_error.clone(),
                next_attempt: w.backup.next_attempt.map(rfc3339),
                files_released: w.backup.released,
            },
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecDto {
    /// Program and arguments, run without a shell: `["sh", "-c", "echo hi"]`.
    pub command: Vec<String>,
    /// Working directory inside the workspace (default: the first repository).
    pub cwd: Option<String>,
    /// Seconds before the command is killed (default 60, at most 3600).
    #[serde(default, deserialize_with = "whole::opt")]
    pub timeout_s: Option<u64>,
    /// Text fed to standard input.
    pub stdin: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ExecResultDto {
    /// Null when the command was killed (signal or timeout).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub truncated: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TaskDto {
    pub index: usize,
    pub name: String,
    /// `pending`, `running`, `done`, `failed`, or `unknown` when the workspace is not running.
    pub state: String,
    pub exit_code: Option<i32>,
    /// The end of the task's output (at most 64 KiB).
    pub log: String,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceList {
    pub items: Vec<WorkspaceDto>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkspaceQuery {
    /// List every workspace of this organization (owners only) instead of your own.
    pub org: Option<String>,
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 100).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkerDto {
    pub name: String,
    /// `idle`, `running`, `backoff` or `stopped`.
    pub state: String,
    pub interval_s: u64,
    pub runs: u64,
    pub last_run: Option<String>,
    pub next_run: Option<String>,
    pub last_note: Option<String>,
    pub last_error: Option<String>,
    pub error_count: u64,
}

impl From<&Status> for WorkerDto {
    fn from(s: &Status) -> Self {
        WorkerDto {
            name: s.name.into(),
            state: s.state.as_str().into(),
            interval_s: s.interval.as_secs(),
            runs: s.runs,
            last_run: s.last_run.map(rfc3339),
            next_run: s.next_run.map(rfc3339),
            last_note: s.last_note.clone(),
            last_error: s.last_error.clone(),
            error_count: s.error_count,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CellDto {
    pub version: String,
    pub started_at: String,
    pub uptime_s: u64,
    pub data_dir: String,
    /// What the data directory takes on disk (database, workspace disks and files, images,
    /// local backups).
    pub data_dir_bytes: u64,
    /// Free space left on the data directory's filesystem.
    pub data_dir_free_bytes: u64,
    pub database_bytes: u64,
    pub workspaces: u64,
    /// Where workspaces run and what enforces their limits.
    pub runtime: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewTerminalDto {
    #[serde(default, deserialize_with = "whole::opt")]
    pub cols: Option<u16>,
    #[serde(default, deserialize_with = "whole::opt")]
    pub rows: Option<u16>,
}

/// The size of a terminal opened by attaching to `new`.
#[derive(Deserialize, utoipa::IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct NewTerminalQuery {
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

#[derive(Serialize, ToSchema)]
pub struct TerminalDto {
    pub id: String,
    /// False once the shell has exited.
    pub alive: bool,
    /// WebSocket path to attach: binary frames are output and keyboard input; text frames
    /// `{"type":"resize","cols":C,"rows":R}` resize. Reconnecting replays recent output.
    pub attach: String,
}

#[derive(Serialize, ToSchema)]
pub struct PortDto {
    pub port: u16,
    /// Something listens on it right now.
    pub listening: bool,
    /// Named in .gitpod.yml or devcontainer.json (the name, possibly empty).
    pub configured: Option<String>,
    /// `private` (owner only, the default), `org` or `public`.
    pub visibility: String,
    /// Where to reach it through the cell.
    pub url: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortShareDto {
    /// `private`, `org` or `public`.
    pub visibility: String,
}
