//! Stored forms of the domain types, one serde struct per record kind and version, with
//! explicit conversions. A change to a stored shape gets a new `VERSION` and a migration.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Def, StoreError};
use crate::domain::entities::{
    ApiToken, BackupState, Class, GitState, Invitation, LoginLink, Membership, Org, PortShare,
    Session, Snapshot, User, Visibility, Workspace,
};
use crate::domain::{
    ClassId, ClassSpec, Desired, InvitationId, Lifecycle, OrgId, Phase, PhaseChange, Policy,
    RepoSpec, RepoUrl, Role, TokenId, UserId, WorkspaceId,
};

/// A stored record kind: which table it lives in and its current version.
pub trait Record: Serialize + DeserializeOwned {
    const TABLE: Def;
    const VERSION: u16;
}

pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_ms(v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(v as i128 * 1_000_000).map_err(|e| corrupt("time", e))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table: "-".into(),
        key: what.into(),
        reason: e.to_string(),
    }
}

fn id<T>(
    parse: impl Fn(&str) -> Result<T, crate::domain::ids::IdError>,
    s: &str,
) -> Result<T, StoreError> {
    parse(s).map_err(|e| corrupt(s, e))
}

#[derive(Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub created_at: i64,
}

impl Record for UserRecord {
    const TABLE: Def = super::USERS;
    const VERSION: u16 = 1;
}

impl From<&User> for UserRecord {
    fn from(u: &User) -> Self {
        UserRecord {
            id: u.id.to_string(),
            email: u.email.clone(),
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            is_admin: u.is_admin,
            created_at: ms(u.created_at),
        }
    }
}

impl TryFrom<UserRecord> for User {
    type Error = StoreError;
    fn try_from(r: UserRecord) -> Result<Self, StoreError> {
        Ok(User {
            id: id(UserId::parse, &r.id)?,
            email: r.email,
            name: r.name,
            password_hash: r.password_hash,
            is_admin: r.is_admin,
            created_at: from_ms(r.created_at)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct PolicyRecord {
    pub default_timeout_s: u64,
    pub max_timeout_s: u64,
    pub users_can_extend: bool,
    pub max_lifetime_s: u64,
    pub allowed_classes: Vec<String>,
    pub max_running_per_user: u32,
    pub backup_keep_last: u32,
    pub backup_keep_within_s: u64,
    pub deleted_backup_grace_s: u64,
    pub dormancy_s: Option<u64>,
    pub outbound_network: bool,
    pub backup_home: bool,
}

impl From<&Policy> for PolicyRecord {
    fn from(p: &Policy) -> Self {
        PolicyRecord {
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

impl TryFrom<PolicyRecord> for Policy {
    type Error = StoreError;
    fn try_from(r: PolicyRecord) -> Result<Self, StoreError> {
        Ok(Policy {
            default_timeout: Duration::from_secs(r.default_timeout_s),
            max_timeout: Duration::from_secs(r.max_timeout_s),
            users_can_extend: r.users_can_extend,
            max_lifetime: Duration::from_secs(r.max_lifetime_s),
            allowed_classes: r
                .allowed_classes
                .iter()
                .map(|c| id(ClassId::parse, c))
                .collect::<Result<_, _>>()?,
            max_running_per_user: r.max_running_per_user,
            backup_keep_last: r.backup_keep_last,
            backup_keep_within: Duration::from_secs(r.backup_keep_within_s),
            deleted_backup_grace: Duration::from_secs(r.deleted_backup_grace_s),
            dormancy: r.dormancy_s.map(Duration::from_secs),
            outbound_network: r.outbound_network,
            backup_home: r.backup_home,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct OrgRecord {
    pub id: String,
    pub name: String,
    pub policy: PolicyRecord,
    pub created_at: i64,
}

impl Record for OrgRecord {
    const TABLE: Def = super::ORGS;
    const VERSION: u16 = 1;
}

impl From<&Org> for OrgRecord {
    fn from(o: &Org) -> Self {
        OrgRecord {
            id: o.id.to_string(),
            name: o.name.clone(),
            policy: (&o.policy).into(),
            created_at: ms(o.created_at),
        }
    }
}

impl TryFrom<OrgRecord> for Org {
    type Error = StoreError;
    fn try_from(r: OrgRecord) -> Result<Self, StoreError> {
        Ok(Org {
            id: id(OrgId::parse, &r.id)?,
            name: r.name,
            policy: r.policy.try_into()?,
            created_at: from_ms(r.created_at)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct MemberRecord {
    pub org: String,
    pub user: String,
    pub role: String,
    pub since: i64,
}

impl Record for MemberRecord {
    const TABLE: Def = super::MEMBERS;
    const VERSION: u16 = 1;
}

impl From<&Membership> for MemberRecord {
    fn from(m: &Membership) -> Self {
        MemberRecord {
            org: m.org.to_string(),
            user: m.user.to_string(),
            role: m.role.as_str().into(),
            since: ms(m.since),
        }
    }
}

impl TryFrom<MemberRecord> for Membership {
    type Error = StoreError;
    fn try_from(r: MemberRecord) -> Result<Self, StoreError> {
        Ok(Membership {
            org: id(OrgId::parse, &r.org)?,
            user: id(UserId::parse, &r.user)?,
            role: Role::parse(&r.role).ok_or_else(|| corrupt("role", &r.role))?,
            since: from_ms(r.since)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct ClassRecord {
    pub id: String,
    pub org: String,
    pub name: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub max_processes: u32,
    pub is_default: bool,
    pub created_at: i64,
}

impl Record for ClassRecord {
    const TABLE: Def = super::CLASSES;
    const VERSION: u16 = 1;
}

impl From<&Class> for ClassRecord {
    fn from(c: &Class) -> Self {
        ClassRecord {
            id: c.id.to_string(),
            org: c.org.to_string(),
            name: c.spec.name.clone(),
            cpu_millis: c.spec.cpu_millis,
            memory_bytes: c.spec.memory_bytes,
            disk_bytes: c.spec.disk_bytes,
            max_processes: c.spec.max_processes,
            is_default: c.is_default,
            created_at: ms(c.created_at),
        }
    }
}

impl TryFrom<ClassRecord> for Class {
    type Error = StoreError;
    fn try_from(r: ClassRecord) -> Result<Self, StoreError> {
        Ok(Class {
            id: id(ClassId::parse, &r.id)?,
            org: id(OrgId::parse, &r.org)?,
            spec: ClassSpec {
                name: r.name,
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                disk_bytes: r.disk_bytes,
                max_processes: r.max_processes,
            },
            is_default: r.is_default,
            created_at: from_ms(r.created_at)?,
        })
    }
}

#[derive(Serialize, Deserialize, Clone)]
pub struct RepoRecord {
    pub url: String,
    pub branch: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct PhaseRecord {
    pub phase: String,
    pub at: i64,
    pub message: Option<String>,
}

/// Version 2: several repositories per workspace (version 1 had one `repo_url` and `branch`).
#[derive(Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub id: String,
    pub org: String,
    pub owner: String,
    pub name: String,
    pub repos: Vec<RepoRecord>,
    pub class: String,
    pub image: Option<String>,
    pub timeout_s: u64,
    pub desired: String,
    pub phase: String,
    pub history: Vec<PhaseRecord>,
    pub created_at: i64,
    pub last_activity: i64,
    /// Added without a version bump: absent in older records, which read as `None`.
    #[serde(default)]
    pub sandbox_uid: Option<u32>,
    /// Added without a version bump: absent in older records, which read as `None`.
    #[serde(default)]
    pub checkout: Option<String>,
    /// Added without a version bump: absent in older records, which read as empty.
    #[serde(default)]
    pub git: Vec<GitRecord>,
    /// Added without a version bump: absent in older records, which read as empty.
    #[serde(default)]
    pub ports: Vec<PortRecord>,
    /// Added without a version bump: absent in older records, which read as empty.
    #[serde(default)]
    pub snapshots: Vec<SnapshotRecord>,
    /// Added without a version bump: absent in older records, which read as "nothing owed".
    #[serde(default)]
    pub backup: BackupRecord,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct SnapshotRecord {
    pub id: String,
    pub taken_at: i64,
    pub trigger: String,
    pub files: u64,
    pub bytes: u64,
    pub added_bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Default)]
pub struct BackupRecord {
    pub pending: Option<String>,
    pub last_error: Option<String>,
    pub attempts: u32,
    pub next_attempt: Option<i64>,
    pub released: bool,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct PortRecord {
    pub port: u16,
    pub visibility: String,
}

#[derive(Serialize, Deserialize, Clone, Default)]
pub struct GitRecord {
    pub dir: String,
    pub branch: Option<String>,
    pub head: Option<String>,
    pub uncommitted: Vec<String>,
    pub untracked: Vec<String>,
    pub unpushed: Vec<String>,
}

impl Record for WorkspaceRecord {
    const TABLE: Def = super::WORKSPACES;
    const VERSION: u16 = 2;
}

impl From<&Workspace> for WorkspaceRecord {
    fn from(w: &Workspace) -> Self {
        WorkspaceRecord {
            id: w.id.to_string(),
            org: w.org.to_string(),
            owner: w.owner.to_string(),
            name: w.name.clone(),
            repos: w
                .repos
                .iter()
                .map(|r| RepoRecord {
                    url: r.url.as_str().to_owned(),
                    branch: r.branch.clone(),
                })
                .collect(),
            class: w.class.to_string(),
            image: w.image.clone(),
            timeout_s: w.timeout.as_secs(),
            desired: w.lifecycle.desired.as_str().into(),
            phase: w.lifecycle.phase.as_str().into(),
            history: w
                .lifecycle
                .history
                .iter()
                .map(|c| PhaseRecord {
                    phase: c.phase.as_str().into(),
                    at: ms(c.at),
                    message: c.message.clone(),
                })
                .collect(),
            created_at: ms(w.created_at),
            last_activity: ms(w.last_activity),
            sandbox_uid: w.sandbox_uid,
            checkout: w.checkout.clone(),
            ports: w
                .ports
                .iter()
                .map(|p| PortRecord {
                    port: p.port,
                    visibility: p.visibility.as_str().into(),
                })
                .collect(),
            git: w.git.iter().map(GitRecord::from).collect(),
            snapshots: w
                .snapshots
                .iter()
                .map(|x| SnapshotRecord {
                    id: x.id.clone(),
                    taken_at: ms(x.taken_at),
                    trigger: x.trigger.clone(),
                    files: x.files,
                    bytes: x.bytes,
                    added_bytes: x.added_bytes,
                })
                .collect(),
            backup: BackupRecord {
                pending: w.backup.pending.clone(),
                last_error: w.backup.last_error.clone(),
                attempts: w.backup.attempts,
                next_attempt: w.backup.next_attempt.map(ms),
                released: w.backup.released,
            },
        }
    }
}

impl TryFrom<WorkspaceRecord> for Workspace {
    type Error = StoreError;
    fn try_from(r: WorkspaceRecord) -> Result<Self, StoreError> {
        let phase = |s: &str| Phase::parse(s).ok_or_else(|| corrupt("phase", s));
        let history = r
            .history
            .iter()
            .map(|c| {
                Ok(PhaseChange {
                    phase: phase(&c.phase)?,
                    at: from_ms(c.at)?,
                    message: c.message.clone(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Workspace {
            id: id(WorkspaceId::parse, &r.id)?,
            org: id(OrgId::parse, &r.org)?,
            owner: id(UserId::parse, &r.owner)?,
            name: r.name,
            repos: r
                .repos
                .into_iter()
                .map(|x| {
                    Ok(RepoSpec {
                        url: RepoUrl::from_stored(x.url),
                        branch: x.branch,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            class: id(ClassId::parse, &r.class)?,
            image: r.image,
            timeout: Duration::from_secs(r.timeout_s),
            lifecycle: Lifecycle::restore(
                Desired::parse(&r.desired).ok_or_else(|| corrupt("desired", &r.desired))?,
                phase(&r.phase)?,
                history,
            ),
            created_at: from_ms(r.created_at)?,
            last_activity: from_ms(r.last_activity)?,
            sandbox_uid: r.sandbox_uid,
            checkout: r.checkout,
            ports: r
                .ports
                .iter()
                .filter_map(|p| {
                    Visibility::parse(&p.visibility).map(|v| PortShare {
                        port: p.port,
                        visibility: v,
                    })
                })
                .collect(),
            git: r.git.into_iter().map(GitState::from).collect(),
            snapshots: r
                .snapshots
                .into_iter()
                .map(|x| {
                    Ok(Snapshot {
                        id: x.id,
                        taken_at: from_ms(x.taken_at)?,
                        trigger: x.trigger,
                        files: x.files,
                        bytes: x.bytes,
                        added_bytes: x.added_bytes,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            backup: BackupState {
                pending: r.backup.pending,
                last_error: r.backup.last_error,
                attempts: r.backup.attempts,
                next_attempt: r.backup.next_attempt.map(from_ms).transpose()?,
                released: r.backup.released,
            },
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Record for SessionRecord {
    const TABLE: Def = super::SESSIONS;
    const VERSION: u16 = 1;
}

impl From<&Session> for SessionRecord {
    fn from(s: &Session) -> Self {
        SessionRecord {
            user: s.user.to_string(),
            csrf: s.csrf.clone(),
            created_at: ms(s.created_at),
            expires_at: ms(s.expires_at),
        }
    }
}

impl TryFrom<SessionRecord> for Session {
    type Error = StoreError;
    fn try_from(r: SessionRecord) -> Result<Self, StoreError> {
        Ok(Session {
            user: id(UserId::parse, &r.user)?,
            csrf: r.csrf,
            created_at: from_ms(r.created_at)?,
            expires_at: from_ms(r.expires_at)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used: Option<i64>,
}

impl Record for TokenRecord {
    const TABLE: Def = super::TOKENS;
    const VERSION: u16 = 1;
}

impl From<&ApiToken> for TokenRecord {
    fn from(t: &ApiToken) -> Self {
        TokenRecord {
            id: t.id.to_string(),
            user: t.user.to_string(),
            name: t.name.clone(),
            created_at: ms(t.created_at),
            expires_at: t.expires_at.map(ms),
            last_used: t.last_used.map(ms),
        }
    }
}

impl TryFrom<TokenRecord> for ApiToken {
    type Error = StoreError;
    fn try_from(r: TokenRecord) -> Result<Self, StoreError> {
        Ok(ApiToken {
            id: id(TokenId::parse, &r.id)?,
            user: id(UserId::parse, &r.user)?,
            name: r.name,
            created_at: from_ms(r.created_at)?,
            expires_at: r.expires_at.map(from_ms).transpose()?,
            last_used: r.last_used.map(from_ms).transpose()?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct InvitationRecord {
    pub id: String,
    pub org: String,
    pub role: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Record for InvitationRecord {
    const TABLE: Def = super::INVITATIONS;
    const VERSION: u16 = 1;
}

impl From<&Invitation> for InvitationRecord {
    fn from(i: &Invitation) -> Self {
        InvitationRecord {
            id: i.id.to_string(),
            org: i.org.to_string(),
            role: i.role.as_str().into(),
            created_by: i.created_by.to_string(),
            created_at: ms(i.created_at),
            expires_at: ms(i.expires_at),
        }
    }
}

impl TryFrom<InvitationRecord> for Invitation {
    type Error = StoreError;
    fn try_from(r: InvitationRecord) -> Result<Self, StoreError> {
        Ok(Invitation {
            id: id(InvitationId::parse, &r.id)?,
            org: id(OrgId::parse, &r.org)?,
            role: Role::parse(&r.role).ok_or_else(|| corrupt("role", &r.role))?,
            created_by: id(UserId::parse, &r.created_by)?,
            created_at: from_ms(r.created_at)?,
            expires_at: from_ms(r.expires_at)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct LoginLinkRecord {
    pub user: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Record for LoginLinkRecord {
    const TABLE: Def = super::LOGIN_LINKS;
    const VERSION: u16 = 1;
}

impl From<&LoginLink> for LoginLinkRecord {
    fn from(l: &LoginLink) -> Self {
        LoginLinkRecord {
            user: l.user.to_string(),
            created_at: ms(l.created_at),
            expires_at: ms(l.expires_at),
        }
    }
}

impl TryFrom<LoginLinkRecord> for LoginLink {
    type Error = StoreError;
    fn try_from(r: LoginLinkRecord) -> Result<Self, StoreError> {
        Ok(LoginLink {
            user: id(UserId::parse, &r.user)?,
            created_at: from_ms(r.created_at)?,
            expires_at: from_ms(r.expires_at)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct GitCredentialRecord {
    pub id: String,
    pub user: String,
    pub host: String,
    pub kind: String,
    pub username: Option<String>,
    /// Sealed with the cell's key (see `service::secrets`).
    pub sealed_secret: String,
    pub created_at: i64,
}

impl Record for GitCredentialRecord {
    const TABLE: Def = super::GIT_CREDENTIALS;
    const VERSION: u16 = 1;
}

impl From<&crate::domain::entities::GitCredential> for GitCredentialRecord {
    fn from(c: &crate::domain::entities::GitCredential) -> Self {
        GitCredentialRecord {
            id: c.id.to_string(),
            user: c.user.to_string(),
            host: c.host.clone(),
            kind: c.kind.clone(),
            username: c.username.clone(),
            sealed_secret: c.sealed_secret.clone(),
            created_at: ms(c.created_at),
        }
    }
}

impl TryFrom<GitCredentialRecord> for crate::domain::entities::GitCredential {
    type Error = StoreError;
    fn try_from(r: GitCredentialRecord) -> Result<Self, StoreError> {
        Ok(crate::domain::entities::GitCredential {
            id: id(crate::domain::CredentialId::parse, &r.id)?,
            user: id(UserId::parse, &r.user)?,
            host: r.host,
            kind: r.kind,
            username: r.username,
            sealed_secret: r.sealed_secret,
            created_at: from_ms(r.created_at)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct DeletedRecord {
    pub id: String,
    pub org: String,
    pub owner: String,
    pub name: String,
    pub deleted_at: i64,
    pub reason: String,
    pub git: Vec<GitRecord>,
    pub snapshots_purged: bool,
}

impl Record for DeletedRecord {
    const TABLE: Def = super::DELETED;
    const VERSION: u16 = 1;
}

impl From<&crate::domain::entities::DeletedWorkspace> for DeletedRecord {
    fn from(d: &crate::domain::entities::DeletedWorkspace) -> Self {
        DeletedRecord {
            id: d.id.to_string(),
            org: d.org.to_string(),
            owner: d.owner.to_string(),
            name: d.name.clone(),
            deleted_at: ms(d.deleted_at),
            reason: d.reason.clone(),
            git: d.git.iter().map(GitRecord::from).collect(),
            snapshots_purged: d.snapshots_purged,
        }
    }
}

impl TryFrom<DeletedRecord> for crate::domain::entities::DeletedWorkspace {
    type Error = StoreError;
    fn try_from(r: DeletedRecord) -> Result<Self, StoreError> {
        Ok(crate::domain::entities::DeletedWorkspace {
            id: id(WorkspaceId::parse, &r.id)?,
            org: id(OrgId::parse, &r.org)?,
            owner: id(UserId::parse, &r.owner)?,
            name: r.name,
            deleted_at: from_ms(r.deleted_at)?,
            reason: r.reason,
            git: r.git.into_iter().map(GitState::from).collect(),
            snapshots_purged: r.snapshots_purged,
        })
    }
}

impl From<&GitState> for GitRecord {
    fn from(g: &GitState) -> Self {
        GitRecord {
            dir: g.dir.clone(),
            branch: g.branch.clone(),
            head: g.head.clone(),
            uncommitted: g.uncommitted.clone(),
            untracked: g.untracked.clone(),
            unpushed: g.unpushed.clone(),
        }
    }
}

impl From<GitRecord> for GitState {
    fn from(g: GitRecord) -> Self {
        GitState {
            dir: g.dir,
            branch: g.branch,
            head: g.head,
            uncommitted: g.uncommitted,
            untracked: g.untracked,
            unpushed: g.unpushed,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct CertificateRecord {
    pub slot: String,
    pub names: Vec<String>,
    pub directory: String,
    pub chain_pem: String,
    /// Sealed with the cell's key (see `service::secrets`).
    pub sealed_key: String,
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
}

impl Record for CertificateRecord {
    const TABLE: Def = super::CERTIFICATES;
    const VERSION: u16 = 1;
}

impl From<&crate::domain::entities::IssuedCertificate> for CertificateRecord {
    fn from(c: &crate::domain::entities::IssuedCertificate) -> Self {
        CertificateRecord {
            slot: c.slot.clone(),
            names: c.names.clone(),
            directory: c.directory.clone(),
            chain_pem: c.chain_pem.clone(),
            sealed_key: c.sealed_key.clone(),
            not_before: ms(c.not_before),
            not_after: ms(c.not_after),
            issued_at: ms(c.issued_at),
        }
    }
}

impl TryFrom<CertificateRecord> for crate::domain::entities::IssuedCertificate {
    type Error = StoreError;
    fn try_from(r: CertificateRecord) -> Result<Self, StoreError> {
        Ok(crate::domain::entities::IssuedCertificate {
            slot: r.slot,
            names: r.names,
            directory: r.directory,
            chain_pem: r.chain_pem,
            sealed_key: r.sealed_key,
            not_before: from_ms(r.not_before)?,
            not_after: from_ms(r.not_after)?,
            issued_at: from_ms(r.issued_at)?,
        })
    }
}

/// An ACME account: its credentials (key and URL) as JSON, sealed with the cell's key.
#[derive(Serialize, Deserialize)]
pub struct AcmeAccountRecord {
    pub directory: String,
    pub sealed_credentials: String,
    pub created_at: i64,
}

impl Record for AcmeAccountRecord {
    const TABLE: Def = super::ACME_ACCOUNTS;
    const VERSION: u16 = 1;
}

/// The newest release seen (key `newest` in the updates table).
#[derive(Serialize, Deserialize)]
pub struct NewestReleaseRecord {
    pub version: String,
    pub manifest_sha256: String,
    pub channel: String,
    pub kind: String,
    pub source: String,
    pub seen_at: i64,
    pub approved_at: Option<i64>,
}

impl Record for NewestReleaseRecord {
    const TABLE: Def = super::UPDATES;
    const VERSION: u16 = 1;
}

impl From<&crate::domain::entities::NewestRelease> for NewestReleaseRecord {
    fn from(r: &crate::domain::entities::NewestRelease) -> Self {
        NewestReleaseRecord {
            version: r.version.to_string(),
            manifest_sha256: r.manifest_sha256.clone(),
            channel: r.channel.clone(),
            kind: r.kind.clone(),
            source: r.source.clone(),
            seen_at: ms(r.seen_at),
            approved_at: r.approved_at.map(ms),
        }
    }
}

impl TryFrom<NewestReleaseRecord> for crate::domain::entities::NewestRelease {
    type Error = StoreError;
    fn try_from(r: NewestReleaseRecord) -> Result<Self, StoreError> {
        Ok(crate::domain::entities::NewestRelease {
            version: r.version.parse().map_err(|e| corrupt("version", e))?,
            manifest_sha256: r.manifest_sha256,
            channel: r.channel,
            kind: r.kind,
            source: r.source,
            seen_at: from_ms(r.seen_at)?,
            approved_at: r.approved_at.map(from_ms).transpose()?,
        })
    }
}

/// One update (key `attempt/{started_at}` in the updates table).
#[derive(Serialize, Deserialize)]
pub struct UpdateAttemptRecord {
    pub started_at: i64,
    pub from: String,
    pub to: String,
    pub source: String,
    pub outcome: String,
    pub message: String,
    pub ended_at: Option<i64>,
}

impl Record for UpdateAttemptRecord {
    const TABLE: Def = super::UPDATES;
    const VERSION: u16 = 1;
}

impl From<&crate::domain::entities::UpdateAttempt> for UpdateAttemptRecord {
    fn from(a: &crate::domain::entities::UpdateAttempt) -> Self {
        UpdateAttemptRecord {
            started_at: ms(a.started_at),
            from: a.from.to_string(),
            to: a.to.to_string(),
            source: a.source.clone(),
            outcome: a.outcome.as_str().into(),
            message: a.message.clone(),
            ended_at: a.ended_at.map(ms),
        }
    }
}

impl TryFrom<UpdateAttemptRecord> for crate::domain::entities::UpdateAttempt {
    type Error = StoreError;
    fn try_from(r: UpdateAttemptRecord) -> Result<Self, StoreError> {
        Ok(crate::domain::entities::UpdateAttempt {
            started_at: from_ms(r.started_at)?,
            from: r.from.parse().map_err(|e| corrupt("from", e))?,
            to: r.to.parse().map_err(|e| corrupt("to", e))?,
            source: r.source,
            outcome: crate::domain::entities::UpdateOutcome::parse(&r.outcome)
                .ok_or_else(|| corrupt("outcome", &r.outcome))?,
            message: r.message,
            ended_at: r.ended_at.map(from_ms).transpose()?,
        })
    }
}
