//! The cell's state in one redb file. This is the only module that touches redb: it owns the
//! tables, the versioned record codecs and the schema migrations.
//!
//! Every value is a record: a two-byte little-endian record version followed by JSON. The
//! database carries a schema version in the `meta` table; opening an older database runs the
//! ordered migrations (each in one write transaction), opening a newer one is refused.
//!
//! Access goes through closures over [`ReadTx`] and [`WriteTx`], so a write transaction can
//! never be held across an `.await`.

mod migrate;
mod records;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use records::Record;

use crate::domain::entities::{
    ApiToken, Class, GitCredential, Invitation, LoginLink, Membership, Org, Session, User,
    Workspace,
};
use crate::domain::{ClassId, CredentialId, InvitationId, OrgId, TokenId, UserId, WorkspaceId};

/// The schema this build writes. Bump it together with a new entry in `migrate::MIGRATIONS`.
pub const SCHEMA_VERSION: u32 = 2;

/// The database's file name in the data directory.
pub const DB_FILE: &str = "devcell.redb";

type Def = TableDefinition<'static, &'static str, &'static [u8]>;

pub(crate) const META: Def = TableDefinition::new("meta");
pub(crate) const USERS: Def = TableDefinition::new("users");
pub(crate) const USER_BY_EMAIL: Def = TableDefinition::new("user_by_email");
pub(crate) const ORGS: Def = TableDefinition::new("orgs");
/// Key `org/user`.
pub(crate) const MEMBERS: Def = TableDefinition::new("members");
/// Key `user/org`: the same memberships, found from the user's side.
pub(crate) const MEMBER_OF: Def = TableDefinition::new("member_of");
pub(crate) const CLASSES: Def = TableDefinition::new("classes");
pub(crate) const WORKSPACES: Def = TableDefinition::new("workspaces");
/// Key `user/workspace`.
pub(crate) const WS_BY_OWNER: Def = TableDefinition::new("ws_by_owner");
/// Key `org/workspace`.
pub(crate) const WS_BY_ORG: Def = TableDefinition::new("ws_by_org");
/// Key: hex SHA-256 of the session secret.
pub(crate) const SESSIONS: Def = TableDefinition::new("sessions");
/// Key: hex SHA-256 of the token secret.
pub(crate) const TOKENS: Def = TableDefinition::new("tokens");
/// Key `user/token-id` → token hash.
pub(crate) const TOKEN_BY_USER: Def = TableDefinition::new("token_by_user");
/// Key: hex SHA-256 of the invitation secret.
pub(crate) const INVITATIONS: Def = TableDefinition::new("invitations");
/// Key `org/invitation-id` → invitation hash.
pub(crate) const INVITATION_BY_ORG: Def = TableDefinition::new("invitation_by_org");
/// Key: hex SHA-256 of the link secret.
pub(crate) const LOGIN_LINKS: Def = TableDefinition::new("login_links");

/// Key `user/credential-id`.
pub(crate) const GIT_CREDENTIALS: Def = TableDefinition::new("git_credentials");

/// Key: workspace id. Tombstones of deleted workspaces (added without a schema bump: a missing
/// table reads as empty).
pub(crate) const DELETED: Def = TableDefinition::new("deleted_workspaces");

/// Key: certificate slot (`main`, `wildcard`). Certificates got by ACME (added without a schema
/// bump, like the tables below: a missing table reads as empty).
pub(crate) const CERTIFICATES: Def = TableDefinition::new("certificates");
/// Key: ACME directory URL.
pub(crate) const ACME_ACCOUNTS: Def = TableDefinition::new("acme_accounts");

/// Key `newest` (the newest release seen) and `attempt/{started_at ms, 20 digits}` (the
/// history of updates).
pub(crate) const UPDATES: Def = TableDefinition::new("updates");

/// Every table, for copies and for creating a fresh database.
pub(crate) const ALL_TABLES: &[Def] = &[
    META,
    USERS,
    USER_BY_EMAIL,
    ORGS,
    MEMBERS,
    MEMBER_OF,
    CLASSES,
    WORKSPACES,
    WS_BY_OWNER,
    WS_BY_ORG,
    SESSIONS,
    TOKENS,
    TOKEN_BY_USER,
    INVITATIONS,
    INVITATION_BY_ORG,
    LOGIN_LINKS,
    GIT_CREDENTIALS,
    DELETED,
    CERTIFICATES,
    ACME_ACCOUNTS,
    UPDATES,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the database {path} is already open in another process (is the cell running? then use its admin socket)"
    )]
    Locked { path: PathBuf },
    #[error(
        "the database has schema version {found}, newer than this devcell understands ({supported}); run a newer devcell or restore a database backup"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record in table {table} at key {key}: {reason}")]
    Corrupt {
        table: String,
        key: String,
        reason: String,
    },
    #[error("migration to schema {to} failed: {reason}")]
    Migration { to: u32, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the database is closed: the cell is handing over to its next binary")]
    Closed,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// `None` once [`Store::close`] has run.
    db: Arc<std::sync::RwLock<Option<redb::Database>>>,
    path: PathBuf,
    /// Counts commits that changed a workspace record, for those who watch workspaces.
    workspace_changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Store {
    /// Opens (or creates) the database, migrating it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Store> {
        let db = match redb::Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        migrate::run(&db)?;
        Ok(Store {
            db: Arc::new(std::sync::RwLock::new(Some(db))),
            path: path.to_owned(),
            workspace_changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the database now, whoever else holds this store: its file and lock are released
    /// once the transactions already begun end (they never wait on anything), and every later
    /// use fails with [`StoreError::Closed`]. A cell handing over to its next binary does this
    /// so the next process can open the file while stray tasks of this one still hold handles.
    pub fn close(&self) {
        let db = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(db);
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        Ok(db.as_ref().ok_or(StoreError::Closed)?.begin_read()?)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        Ok(db.as_ref().ok_or(StoreError::Closed)?.begin_write()?)
    }

    /// Wakes after every commit that changed, added or removed a workspace record (any
    /// workspace: the receiver reads again what it watches). Closed when the store goes.
    pub fn workspace_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.workspace_changes.subscribe()
    }

    pub fn read<T>(&self, f: impl FnOnce(&ReadTx) -> Result<T>) -> Result<T> {
        let tx = ReadTx {
            tx: self.begin_read()?,
        };
        f(&tx)
    }

    /// Runs `f` in one write transaction, committed only if `f` returns `Ok`.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&WriteTx) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = WriteTx {
            tx: self.begin_write()?,
            workspaces_changed: Default::default(),
        };
        let out = f(&tx)?;
        self.commit(tx)?;
        Ok(out)
    }

    fn commit(&self, tx: WriteTx) -> Result<()> {
        let changed = tx.workspaces_changed.get();
        tx.tx.commit()?;
        if changed {
            self.workspace_changes
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// Like [`Store::write`], but the commit is not flushed to disk on its own: it becomes
    /// durable with the next ordinary write. For progress records that a crash may lose
    /// without harm (the reconciler redoes the step), where an fsync would cost more than
    /// the step itself.
    pub fn write_lazy<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&WriteTx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut tx = self.begin_write()?;
        let _ = tx.set_durability(redb::Durability::None);
        let tx = WriteTx {
            tx,
            workspaces_changed: Default::default(),
        };
        let out = f(&tx)?;
        self.commit(tx)?;
        Ok(out)
    }

    /// Writes a consistent copy of every table to a new database file at `dest`, from one read
    /// transaction, so the cell can keep serving while it runs.
    pub fn backup_to(&self, dest: &Path) -> Result<u64> {
        if dest.exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists; choose a new file", dest.display()),
            )));
        }
        let tmp = dest.with_extension("partial");
        let _ = std::fs::remove_file(&tmp);
        let copy = redb::Database::create(&tmp)?;
        let src = self.begin_read()?;
        let out = copy.begin_write()?;
        let mut records = 0u64;
        for def in ALL_TABLES {
            let from = match src.open_table(*def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut to = out.open_table(*def)?;
            for row in from.iter()? {
                let (k, v) = row?;
                to.insert(k.value(), v.value())?;
                records += 1;
            }
        }
        out.commit()?;
        drop(copy);
        std::fs::rename(&tmp, dest)?;
        Ok(records)
    }

    /// Number of workspace records, for metrics and the admin page.
    pub fn workspace_count(&self) -> Result<u64> {
        let tx = self.begin_read()?;
        Ok(tx.open_table(WORKSPACES)?.len()?)
    }
}

pub(crate) fn encode<R: Serialize>(version: u16, rec: &R) -> Vec<u8> {
    let mut out = version.to_le_bytes().to_vec();
    // Serializing plain structs of strings and numbers to JSON cannot fail.
    if let Err(e) = serde_json::to_writer(&mut out, rec) {
        tracing::error!(error = %e, "record encoding failed");
    }
    out
}

pub(crate) fn decode<R: DeserializeOwned>(
    table: &str,
    key: &str,
    expect_version: u16,
    bytes: &[u8],
) -> Result<R> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: table.to_owned(),
        key: key.to_owned(),
        reason,
    };
    if bytes.len() < 2 {
        return Err(corrupt("shorter than its version header".into()));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    if version != expect_version {
        return Err(corrupt(format!(
            "record version {version}, expected {expect_version}"
        )));
    }
    serde_json::from_slice(&bytes[2..]).map_err(|e| corrupt(e.to_string()))
}

/// Reads shared by both transaction kinds.
pub trait Reader {
    #[doc(hidden)]
    fn get_raw(&self, def: Def, key: &str) -> Result<Option<Vec<u8>>>;
    /// Rows whose key starts with `prefix`, in key order (or reverse), starting strictly after
    /// `after` when given, at most `limit`.
    #[doc(hidden)]
    fn scan_raw(
        &self,
        def: Def,
        prefix: &str,
        after: Option<&str>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;

    fn get<R: Record>(&self, key: &str) -> Result<Option<R>> {
        match self.get_raw(R::TABLE, key)? {
            Some(bytes) => Ok(Some(decode(R::TABLE.name(), key, R::VERSION, &bytes)?)),
            None => Ok(None),
        }
    }

    fn index(&self, def: Def, key: &str) -> Result<Option<String>> {
        Ok(self
            .get_raw(def, key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Keys of an index table under `prefix/`, with the prefix stripped.
    fn index_scan(
        &self,
        def: Def,
        prefix: &str,
        after: Option<&str>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<String>> {
        let p = format!("{prefix}/");
        let after = after.map(|a| format!("{p}{a}"));
        Ok(self
            .scan_raw(def, &p, after.as_deref(), reverse, limit)?
            .into_iter()
            .map(|(k, _)| k[p.len()..].to_owned())
            .collect())
    }

    fn scan<R: Record>(&self, prefix: &str, limit: usize) -> Result<Vec<(String, R)>> {
        self.scan_raw(R::TABLE, prefix, None, false, limit)?
            .into_iter()
            .map(|(k, v)| {
                let r = decode(R::TABLE.name(), &k, R::VERSION, &v)?;
                Ok((k, r))
            })
            .collect()
    }

    // Typed reads used by the services.

    fn user(&self, id: &UserId) -> Result<Option<User>> {
        self.get::<records::UserRecord>(id.as_str())?
            .map(TryInto::try_into)
            .transpose()
    }
    fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        match self.index(USER_BY_EMAIL, email)? {
            Some(id) => self
                .get::<records::UserRecord>(&id)?
                .map(TryInto::try_into)
                .transpose(),
            None => Ok(None),
        }
    }
    fn users(&self) -> Result<Vec<User>> {
        self.scan::<records::UserRecord>("", usize::MAX)?
            .into_iter()
            .map(|(_, r)| r.try_into())
            .collect()
    }
    fn org(&self, id: &OrgId) -> Result<Option<Org>> {
        self.get::<records::OrgRecord>(id.as_str())?
            .map(TryInto::try_into)
            .transpose()
    }
    fn orgs(&self) -> Result<Vec<Org>> {
        self.scan::<records::OrgRecord>("", usize::MAX)?
            .into_iter()
            .map(|(_, r)| r.try_into())
            .collect()
    }
    fn membership(&self, org: &OrgId, user: &UserId) -> Result<Option<Membership>> {
        self.get::<records::MemberRecord>(&format!("{org}/{user}"))?
            .map(TryInto::try_into)
            .transpose()
    }
    fn members(&self, org: &OrgId) -> Result<Vec<Membership>> {
        self.scan::<records::MemberRecord>(&format!("{org}/"), usize::MAX)?
            .into_iter()
            .map(|(_, r)| r.try_into())
            .collect()
    }
    fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>> {
        let orgs = self.index_scan(MEMBER_OF, user.as_str(), None, false, usize::MAX)?;
        let mut out = Vec::with_capacity(orgs.len());
        for org in orgs {
            if let Some(m) = self.get::<records::MemberRecord>(&format!("{org}/{user}"))? {
                out.push(m.try_into()?);
            }
        }
        Ok(out)
    }
    fn class(&self, id: &ClassId) -> Result<Option<Class>> {
        self.get::<records::ClassRecord>(id.as_str())?
            .map(TryInto::try_into)
            .transpose()
    }
    fn classes(&self, org: &OrgId) -> Result<Vec<Class>> {
        let all = self.scan::<records::ClassRecord>("", usize::MAX)?;
        let mut out = Vec::new();
        for (_, r) in all {
            if r.org == org.as_str() {
                out.push(r.try_into()?);
            }
        }
        Ok(out)
    }
    fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        self.get::<records::WorkspaceRecord>(id.as_str())?
            .map(TryInto::try_into)
            .transpose()
    }
    /// Every workspace record (for reconciliation after a restart and periodic sweeps).
    fn all_workspaces(&self) -> Result<Vec<Workspace>> {
        self.scan::<records::WorkspaceRecord>("", usize::MAX)?
            .into_iter()
            .map(|(_, r)| r.try_into())
            .collect()
    }
    /// A page of a user's workspaces, newest first, after the `cursor` id.
    fn workspaces_of(
        &self,
        user: &UserId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Workspace>> {
        let ids = self.index_scan(WS_BY_OWNER, user.as_str(), cursor, true, limit)?;
        self.workspaces_by_ids(&ids)
    }
    /// A page of an organization's workspaces, newest first, after the `cursor` id.
    fn workspaces_in(
        &self,
        org: &OrgId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Workspace>> {
        let ids = self.index_scan(WS_BY_ORG, org.as_str(), cursor, true, limit)?;
        self.workspaces_by_ids(&ids)
    }
    #[doc(hidden)]
    fn workspaces_by_ids(&self, ids: &[String]) -> Result<Vec<Workspace>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get::<records::WorkspaceRecord>(id)? {
                out.push(r.try_into()?);
            }
        }
        Ok(out)
    }
    fn session(&self, hash: &str) -> Result<Option<Session>> {
        self.get::<records::SessionRecord>(hash)?
            .map(TryInto::try_into)
            .transpose()
    }
    fn token(&self, hash: &str) -> Result<Option<ApiToken>> {
        self.get::<records::TokenRecord>(hash)?
            .map(TryInto::try_into)
            .transpose()
    }
    /// A user's tokens with their hashes (the key for updates and revocation).
    fn tokens_of(&self, user: &UserId) -> Result<Vec<(String, ApiToken)>> {
        let mut out = Vec::new();
        for id in self.index_scan(TOKEN_BY_USER, user.as_str(), None, false, usize::MAX)? {
            if let Some(hash) = self.index(TOKEN_BY_USER, &format!("{user}/{id}"))?
                && let Some(t) = self.get::<records::TokenRecord>(&hash)?
            {
                out.push((hash, t.try_into()?));
            }
        }
        Ok(out)
    }
    fn token_hash(&self, user: &UserId, id: &TokenId) -> Result<Option<String>> {
        self.index(TOKEN_BY_USER, &format!("{user}/{id}"))
    }
    fn invitation(&self, hash: &str) -> Result<Option<Invitation>> {
        self.get::<records::InvitationRecord>(hash)?
            .map(TryInto::try_into)
            .transpose()
    }
    fn invitations(&self, org: &OrgId) -> Result<Vec<(String, Invitation)>> {
        let mut out = Vec::new();
        for id in self.index_scan(INVITATION_BY_ORG, org.as_str(), None, false, usize::MAX)? {
            if let Some(hash) = self.index(INVITATION_BY_ORG, &format!("{org}/{id}"))?
                && let Some(i) = self.get::<records::InvitationRecord>(&hash)?
            {
                out.push((hash, i.try_into()?));
            }
        }
        Ok(out)
    }
    fn invitation_hash(&self, org: &OrgId, id: &InvitationId) -> Result<Option<String>> {
        self.index(INVITATION_BY_ORG, &format!("{org}/{id}"))
    }
    fn login_link(&self, hash: &str) -> Result<Option<LoginLink>> {
        self.get::<records::LoginLinkRecord>(hash)?
            .map(TryInto::try_into)
            .transpose()
    }
    fn deleted_workspaces(&self) -> Result<Vec<crate::domain::entities::DeletedWorkspace>> {
        self.scan::<records::DeletedRecord>("", usize::MAX)?
            .into_iter()
            .map(|(_, r)| r.try_into())
            .collect()
    }
    fn git_credentials(&self, user: &UserId) -> Result<Vec<GitCredential>> {
        self.scan::<records::GitCredentialRecord>(&format!("{user}/"), usize::MAX)?
            .into_iter()
            .map(|(_, r)| r.try_into())
            .collect()
    }
    fn issued_certificates(&self) -> Result<Vec<crate::domain::entities::IssuedCertificate>> {
        self.scan::<records::CertificateRecord>("", usize::MAX)?
            .into_iter()
            .map(|(_, r)| r.try_into())
            .collect()
    }
    /// The sealed credentials of the ACME account at `directory`.
    fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        Ok(self
            .get::<records::AcmeAccountRecord>(directory)?
            .map(|r| r.sealed_credentials))
    }
    /// The newest release seen with a valid signature.
    fn newest_release(&self) -> Result<Option<crate::domain::entities::NewestRelease>> {
        self.get::<records::NewestReleaseRecord>("newest")?
            .map(TryInto::try_into)
            .transpose()
    }
    /// The latest `limit` updates, newest first.
    fn update_attempts(&self, limit: usize) -> Result<Vec<crate::domain::entities::UpdateAttempt>> {
        let mut all = self.scan::<records::UpdateAttemptRecord>("attempt/", usize::MAX)?;
        all.reverse();
        all.into_iter()
            .take(limit)
            .map(|(_, r)| r.try_into())
            .collect()
    }
    /// All expirable credentials as (kind, key, expiry in unix milliseconds), for the expiry loop.
    fn expirables(&self) -> Result<Vec<(&'static str, String, i64)>> {
        let mut out = Vec::new();
        for (k, r) in self.scan::<records::SessionRecord>("", usize::MAX)? {
            out.push(("session", k, r.expires_at));
        }
        for (k, r) in self.scan::<records::LoginLinkRecord>("", usize::MAX)? {
            out.push(("login_link", k, r.expires_at));
        }
        for (k, r) in self.scan::<records::InvitationRecord>("", usize::MAX)? {
            out.push(("invitation", k, r.expires_at));
        }
        for (k, r) in self.scan::<records::TokenRecord>("", usize::MAX)? {
            if let Some(e) = r.expires_at {
                out.push(("token", k, e));
            }
        }
        Ok(out)
    }
}

pub struct ReadTx {
    tx: redb::ReadTransaction,
}

pub struct WriteTx {
    tx: redb::WriteTransaction,
    workspaces_changed: std::cell::Cell<bool>,
}

fn scan_table<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    prefix: &str,
    after: Option<&str>,
    reverse: bool,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut push = |row: std::result::Result<
        (redb::AccessGuard<&str>, redb::AccessGuard<&[u8]>),
        redb::StorageError,
    >|
     -> Result<bool> {
        let (k, v) = row?;
        let key = k.value();
        if !key.starts_with(prefix) {
            return Ok(false);
        }
        out.push((key.to_owned(), v.value().to_vec()));
        Ok(out.len() < limit)
    };
    if limit == 0 {
        return Ok(out);
    }
    if reverse {
        // Everything under the prefix sorts before `prefix` + U+10FFFF.
        let end = format!("{prefix}\u{10ffff}");
        let upper = after.unwrap_or(&end);
        for row in t.range::<&str>(prefix..upper)?.rev() {
            if !push(row)? {
                break;
            }
        }
    } else {
        let iter = match after {
            Some(a) => {
                t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
            }
            None => t.range::<&str>(prefix..)?,
        };
        for row in iter {
            if !push(row)? {
                break;
            }
        }
    }
    Ok(out)
}

impl Reader for ReadTx {
    fn get_raw(&self, def: Def, key: &str) -> Result<Option<Vec<u8>>> {
        let t = match self.tx.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }
    fn scan_raw(
        &self,
        def: Def,
        prefix: &str,
        after: Option<&str>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let t = match self.tx.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        scan_table(&t, prefix, after, reverse, limit)
    }
}

impl Reader for WriteTx {
    fn get_raw(&self, def: Def, key: &str) -> Result<Option<Vec<u8>>> {
        let t = self.tx.open_table(def)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }
    fn scan_raw(
        &self,
        def: Def,
        prefix: &str,
        after: Option<&str>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let t = self.tx.open_table(def)?;
        scan_table(&t, prefix, after, reverse, limit)
    }
}

impl WriteTx {
    fn put<R: Record>(&self, key: &str, rec: &R) -> Result<()> {
        self.tx
            .open_table(R::TABLE)?
            .insert(key, encode(R::VERSION, rec).as_slice())?;
        Ok(())
    }
    fn del(&self, def: Def, key: &str) -> Result<bool> {
        Ok(self.tx.open_table(def)?.remove(key)?.is_some())
    }
    fn put_index(&self, def: Def, key: &str, value: &str) -> Result<()> {
        self.tx.open_table(def)?.insert(key, value.as_bytes())?;
        Ok(())
    }

    pub fn put_user(&self, u: &User) -> Result<()> {
        if let Some(old) = self.user(&u.id)?
            && old.email != u.email
        {
            self.del(USER_BY_EMAIL, &old.email)?;
        }
        self.put(u.id.as_str(), &records::UserRecord::from(u))?;
        self.put_index(USER_BY_EMAIL, &u.email, u.id.as_str())
    }
    /// A host uid for a new workspace's sandbox, never handed out twice.
    pub fn allocate_sandbox_uid(&self) -> Result<u32> {
        const KEY: &str = "next_sandbox_uid";
        const FIRST: u32 = 200_000;
        let next = match self.get_raw(META, KEY)? {
            Some(b) if b.len() == 4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            _ => FIRST,
        };
        self.tx
            .open_table(META)?
            .insert(KEY, next.saturating_add(1).to_le_bytes().as_slice())?;
        Ok(next)
    }

    /// The host uid image builds run as: one of the sandbox uids, taken once for the cell.
    pub fn build_uid(&self) -> Result<u32> {
        const KEY: &str = "build_uid";
        if let Some(b) = self.get_raw(META, KEY)?
            && b.len() == 4
        {
            return Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        let uid = self.allocate_sandbox_uid()?;
        self.tx
            .open_table(META)?
            .insert(KEY, uid.to_le_bytes().as_slice())?;
        Ok(uid)
    }

    pub fn put_deleted(&self, d: &crate::domain::entities::DeletedWorkspace) -> Result<()> {
        self.put(d.id.as_str(), &records::DeletedRecord::from(d))
    }

    pub fn put_git_credential(&self, c: &GitCredential) -> Result<()> {
        self.put(
            &format!("{}/{}", c.user, c.id),
            &records::GitCredentialRecord::from(c),
        )
    }
    pub fn put_issued_certificate(
        &self,
        c: &crate::domain::entities::IssuedCertificate,
    ) -> Result<()> {
        self.put(&c.slot, &records::CertificateRecord::from(c))
    }
    pub fn put_newest_release(&self, r: &crate::domain::entities::NewestRelease) -> Result<()> {
        self.put("newest", &records::NewestReleaseRecord::from(r))
    }
    /// Adds the attempt, or replaces the one that started at the same moment.
    pub fn put_update_attempt(&self, a: &crate::domain::entities::UpdateAttempt) -> Result<()> {
        self.put(
            &format!("attempt/{:020}", records::ms(a.started_at).max(0)),
            &records::UpdateAttemptRecord::from(a),
        )
    }
    pub fn put_acme_account(
        &self,
        directory: &str,
        sealed: &str,
        at: time::OffsetDateTime,
    ) -> Result<()> {
        self.put(
            directory,
            &records::AcmeAccountRecord {
                directory: directory.to_owned(),
                sealed_credentials: sealed.to_owned(),
                created_at: records::ms(at),
            },
        )
    }
    pub fn delete_git_credential(&self, user: &UserId, id: &CredentialId) -> Result<bool> {
        self.del(GIT_CREDENTIALS, &format!("{user}/{id}"))
    }

    pub fn put_org(&self, o: &Org) -> Result<()> {
        self.put(o.id.as_str(), &records::OrgRecord::from(o))
    }
    pub fn put_membership(&self, m: &Membership) -> Result<()> {
        self.put(
            &format!("{}/{}", m.org, m.user),
            &records::MemberRecord::from(m),
        )?;
        self.put_index(MEMBER_OF, &format!("{}/{}", m.user, m.org), "")
    }
    pub fn delete_membership(&self, org: &OrgId, user: &UserId) -> Result<bool> {
        self.del(MEMBER_OF, &format!("{user}/{org}"))?;
        self.del(MEMBERS, &format!("{org}/{user}"))
    }
    pub fn put_class(&self, c: &Class) -> Result<()> {
        self.put(c.id.as_str(), &records::ClassRecord::from(c))
    }
    pub fn delete_class(&self, id: &ClassId) -> Result<bool> {
        self.del(CLASSES, id.as_str())
    }
    pub fn put_workspace(&self, w: &Workspace) -> Result<()> {
        self.workspaces_changed.set(true);
        if let Some(old) = self.get::<records::WorkspaceRecord>(w.id.as_str())?
            && old.owner != w.owner.as_str()
        {
            // Given to another owner: the old owner's index entry goes with it.
            self.del(WS_BY_OWNER, &format!("{}/{}", old.owner, w.id))?;
        }
        self.put(w.id.as_str(), &records::WorkspaceRecord::from(w))?;
        self.put_index(WS_BY_OWNER, &format!("{}/{}", w.owner, w.id), "")?;
        self.put_index(WS_BY_ORG, &format!("{}/{}", w.org, w.id), "")
    }
    /// Removes the record (after the lifecycle has reached `deleted`), leaving a tombstone with
    /// when and why, and the repositories' last git state.
    pub fn purge_workspace(
        &self,
        w: &Workspace,
        at: time::OffsetDateTime,
        reason: &str,
    ) -> Result<()> {
        self.workspaces_changed.set(true);
        self.put_deleted(&crate::domain::entities::DeletedWorkspace {
            id: w.id.clone(),
            org: w.org.clone(),
            owner: w.owner.clone(),
            name: w.name.clone(),
            deleted_at: at,
            reason: reason.to_owned(),
            git: w.git.clone(),
            snapshots_purged: w.snapshots.is_empty(),
        })?;
        self.del(WS_BY_OWNER, &format!("{}/{}", w.owner, w.id))?;
        self.del(WS_BY_ORG, &format!("{}/{}", w.org, w.id))?;
        self.del(WORKSPACES, w.id.as_str())?;
        Ok(())
    }
    pub fn put_session(&self, hash: &str, s: &Session) -> Result<()> {
        self.put(hash, &records::SessionRecord::from(s))
    }
    pub fn delete_session(&self, hash: &str) -> Result<bool> {
        self.del(SESSIONS, hash)
    }
    /// Ends every session of a user (password reset, logout everywhere).
    pub fn delete_sessions_of(&self, user: &UserId) -> Result<usize> {
        let all = self.scan::<records::SessionRecord>("", usize::MAX)?;
        let mut n = 0;
        for (k, r) in all {
            if r.user == user.as_str() {
                self.del(SESSIONS, &k)?;
                n += 1;
            }
        }
        Ok(n)
    }
    pub fn put_token(&self, hash: &str, t: &ApiToken) -> Result<()> {
        self.put(hash, &records::TokenRecord::from(t))?;
        self.put_index(TOKEN_BY_USER, &format!("{}/{}", t.user, t.id), hash)
    }
    pub fn delete_token(&self, hash: &str) -> Result<bool> {
        if let Some(t) = self.token(hash)? {
            self.del(TOKEN_BY_USER, &format!("{}/{}", t.user, t.id))?;
        }
        self.del(TOKENS, hash)
    }
    pub fn put_invitation(&self, hash: &str, i: &Invitation) -> Result<()> {
        self.put(hash, &records::InvitationRecord::from(i))?;
        self.put_index(INVITATION_BY_ORG, &format!("{}/{}", i.org, i.id), hash)
    }
    pub fn delete_invitation(&self, hash: &str) -> Result<bool> {
        if let Some(i) = self.invitation(hash)? {
            self.del(INVITATION_BY_ORG, &format!("{}/{}", i.org, i.id))?;
        }
        self.del(INVITATIONS, hash)
    }
    pub fn put_login_link(&self, hash: &str, l: &LoginLink) -> Result<()> {
        self.put(hash, &records::LoginLinkRecord::from(l))
    }
    pub fn delete_login_link(&self, hash: &str) -> Result<bool> {
        self.del(LOGIN_LINKS, hash)
    }
    /// Deletes one expirable credential found by [`Reader::expirables`].
    pub fn delete_expired(&self, kind: &str, key: &str) -> Result<bool> {
        match kind {
            "session" => self.delete_session(key),
            "login_link" => self.delete_login_link(key),
            "invitation" => self.delete_invitation(key),
            "token" => self.delete_token(key),
            _ => Ok(false),
        }
    }
}

/// Milliseconds since the Unix epoch, the stored form of every time.
pub fn unix_ms(t: time::OffsetDateTime) -> i64 {
    records::ms(t)
}
