//! The things a cell keeps: users, organizations, memberships, classes, workspaces and the
//! credentials that authenticate people. Plain data; storage and wire formats live elsewhere.

use std::time::Duration;

use time::OffsetDateTime;

use super::{
    ClassId, ClassSpec, InvitationId, Lifecycle, OrgId, Policy, RepoSpec, Role, TokenId, UserId,
    WorkspaceId,
};

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    /// PHC string of an argon2id hash; `None` until the user sets a password (link-only login).
    pub password_hash: Option<String>,
    /// Cell administrators see the admin pages (loops, cell facts); the first owner is one.
    pub is_admin: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub policy: Policy,
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Membership {
    pub org: OrgId,
    pub user: UserId,
    pub role: Role,
    pub since: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    pub id: ClassId,
    pub org: OrgId,
    pub spec: ClassSpec,
    /// The class a workspace gets when its creator names none.
    pub is_default: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub org: OrgId,
    pub owner: UserId,
    pub name: String,
    pub repos: Vec<RepoSpec>,
    pub class: ClassId,
    /// An OCI image reference; `None` means the image named by the repository's config, or the host root.
    pub image: Option<String>,
    pub timeout: Duration,
    pub lifecycle: Lifecycle,
    pub created_at: OffsetDateTime,
    pub last_activity: OffsetDateTime,
    /// Host uid (and gid) the sandbox runs as, fixed at creation so files keep their owner.
    pub sandbox_uid: Option<u32>,
    /// The folder under `/workspace` its first repository was checked out into when the
    /// repository's configuration named one (Gitpod's `checkoutLocation`); else its own name.
    pub checkout: Option<String>,
    /// Git state of each repository, recorded when the workspace last stopped.
    pub git: Vec<GitState>,
    /// Ports shared beyond the owner; every other port is private.
    pub ports: Vec<PortShare>,
    /// Snapshots of its files in the backup store, oldest first.
    pub snapshots: Vec<Snapshot>,
    pub backup: BackupState,
}

/// What is kept of a deleted workspace: when and why it went, what its repositories held, and
/// whether its snapshots (kept for the organization's grace period) are purged yet.
#[derive(Clone, Debug, PartialEq)]
pub struct DeletedWorkspace {
    pub id: WorkspaceId,
    pub org: OrgId,
    pub owner: UserId,
    pub name: String,
    pub deleted_at: OffsetDateTime,
    pub reason: String,
    pub git: Vec<GitState>,
    pub snapshots_purged: bool,
}

/// One snapshot of a workspace's files in the backup store.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The restic snapshot id (64 hex digits).
    pub id: String,
    pub taken_at: OffsetDateTime,
    /// What made it: `stop`, `interval` or `manual`.
    pub trigger: String,
    pub files: u64,
    /// Total size of the files it holds.
    pub bytes: u64,
    /// New data it added to the store, after deduplication.
    pub added_bytes: u64,
}

/// A workspace's backup bookkeeping.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BackupState {
    /// A snapshot is owed (set before one is tried, cleared by a verified one): its trigger.
    pub pending: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub attempts: u32,
    /// When the loop tries again (exponential backoff).
    pub next_attempt: Option<OffsetDateTime>,
    /// The local files were removed after a verified backup; the next start restores them.
    pub released: bool,
}

/// Who may reach a port of a workspace through the cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Only the workspace's owner (the default).
    Private,
    /// Every member of the workspace's organization.
    Org,
    /// Anyone with the URL.
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Org => "org",
            Visibility::Public => "public",
        }
    }
    pub fn parse(s: &str) -> Option<Visibility> {
        match s {
            "private" => Some(Visibility::Private),
            "org" => Some(Visibility::Org),
            "public" => Some(Visibility::Public),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PortShare {
    pub port: u16,
    pub visibility: Visibility,
}

/// What a repository held that is not on its remote, recorded at stop and shown before delete.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GitState {
    pub dir: String,
    pub branch: Option<String>,
    pub head: Option<String>,
    pub uncommitted: Vec<String>,
    pub untracked: Vec<String>,
    pub unpushed: Vec<String>,
}

impl GitState {
    pub fn is_clean(&self) -> bool {
        self.uncommitted.is_empty() && self.untracked.is_empty() && self.unpushed.is_empty()
    }
}

/// A browser session. The cookie holds a secret whose hash is the session's key.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub user: UserId,
    /// Per-session token that cookie-authenticated mutations must echo (CSRF protection).
    pub csrf: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiToken {
    pub id: TokenId,
    pub user: UserId,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub last_used: Option<OffsetDateTime>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Invitation {
    pub id: InvitationId,
    pub org: OrgId,
    pub role: Role,
    pub created_by: UserId,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A credential the cell uses to clone a user's private repositories from one host. The secret
/// is sealed with the cell's key; it never reaches the workspace or an API response.
#[derive(Clone, Debug, PartialEq)]
pub struct GitCredential {
    pub id: crate::domain::CredentialId,
    pub user: UserId,
    /// Host name as in the repository URLs, e.g. `github.com` or `git.example.com:8443`.
    pub host: String,
    /// `token` (HTTPS, with `username`) or `ssh_key`.
    pub kind: String,
    pub username: Option<String>,
    pub sealed_secret: String,
    pub created_at: OffsetDateTime,
}

/// A certificate the cell got by ACME, kept so that a restart serves it at once. The private
/// key is sealed with the cell's key.
#[derive(Clone, Debug, PartialEq)]
pub struct IssuedCertificate {
    /// Which of the cell's certificates: `main` (the public URL's host and `tls.acme.names`) or
    /// `wildcard` (`*.{workspace_domain}`).
    pub slot: String,
    pub names: Vec<String>,
    /// The ACME directory that issued it.
    pub directory: String,
    /// PEM chain, leaf first.
    pub chain_pem: String,
    pub sealed_key: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub issued_at: OffsetDateTime,
}

/// The newest release this cell has seen with a valid signature, from any source: anything
/// older, or the same version with another manifest, is refused from then on (restarts
/// included), so an old signed release cannot be replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct NewestRelease {
    pub version: semver::Version,
    /// Hex SHA-256 of the manifest's bytes.
    pub manifest_sha256: String,
    pub channel: String,
    /// `application` or `infrastructure`.
    pub kind: String,
    /// Where it was seen: the channel URL, a bundle's file name or a directory.
    pub source: String,
    pub seen_at: OffsetDateTime,
    /// When an owner approved it (releases that wait for approval).
    pub approved_at: Option<OffsetDateTime>,
}

/// How an update ended (or that it is under way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    Applying,
    /// The new binary serves.
    Applied,
    /// The new binary did not become healthy in time: the previous one serves again.
    RolledBack,
    /// Refused or failed before the binary was swapped; nothing changed.
    Failed,
}

impl UpdateOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOutcome::Applying => "applying",
            UpdateOutcome::Applied => "applied",
            UpdateOutcome::RolledBack => "rolled_back",
            UpdateOutcome::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<UpdateOutcome> {
        [
            UpdateOutcome::Applying,
            UpdateOutcome::Applied,
            UpdateOutcome::RolledBack,
            UpdateOutcome::Failed,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// One update of the cell's binary, kept as its history.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateAttempt {
    pub started_at: OffsetDateTime,
    pub from: semver::Version,
    pub to: semver::Version,
    /// The channel URL, bundle or directory it came from.
    pub source: String,
    pub outcome: UpdateOutcome,
    /// Why it failed or was rolled back; what it did otherwise.
    pub message: String,
    pub ended_at: Option<OffsetDateTime>,
}

/// A one-time login link (printed by `devcell up`, or made by an admin).
#[derive(Clone, Debug, PartialEq)]
pub struct LoginLink {
    pub user: UserId,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}
