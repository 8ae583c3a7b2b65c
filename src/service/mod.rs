//! The cell's use cases: every rule about who may do what, called alike by the JSON API, the
//! dashboard, the admin socket and the workers. Handlers only translate between HTTP and these
//! functions; no business rule lives in a handler or a page.

mod auth;
mod backups;
mod certificates;
mod credentials;
mod lifecycle;
mod orgs;
mod ports;
pub mod secrets;
pub mod updates;
pub use auth::Ended;
mod workspaces;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

pub use auth::{Credentials, LoginOutcome, NewToken};
pub use backups::{BackupStats, CleanupPass, retry_after};
pub use certificates::{CertSource, CertStatus, renewal_point};
pub use credentials::NewCredential;
pub use lifecycle::{ExecInput, PortView, StopPlan, TaskView, TimeoutPass};
pub use orgs::{ClassInput, InvitationOutcome, PolicyPatch, Signup};
pub use ports::{PortHost, host_name};
pub use workspaces::{MAX_PAGE, WorkspaceInput, WorkspacePage, WorkspacePatch};

use crate::config::Config;
use crate::domain::entities::{Membership, User};
use crate::domain::{FieldError, LifecycleError, OrgId, Role, RuleError};
use crate::store::{Reader, Store, StoreError};

/// The source of "now". Tests use a manual clock so that expiry and timeouts need no sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> ManualClock {
        ManualClock(AtomicI64::new(start.unix_timestamp()))
    }
    pub fn advance(&self, d: std::time::Duration) {
        self.0.fetch_add(d.as_secs() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.0.load(Ordering::SeqCst))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Every way a use case can fail. Each variant maps to one HTTP status and one stable code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sign in first: this needs a session cookie or an `Authorization: Bearer` token")]
    Unauthenticated,
    #[error("wrong email or password")]
    BadCredentials,
    #[error("this link is invalid, used or expired; ask for a new one")]
    BadLink,
    #[error("{0}")]
    Forbidden(String),
    #[error("missing or wrong CSRF token: send the X-CSRF-Token header you got at login")]
    Csrf,
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("too many attempts; try again in {retry_after_s} seconds")]
    RateLimited { retry_after_s: u64 },
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    /// The backup store could not do what was asked (unreachable, failing); nothing was lost.
    #[error("{message}")]
    Unavailable { message: String },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a request proved who it is.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthVia {
    /// A browser session; mutations must carry this CSRF token.
    Session {
        hash: String,
        csrf: String,
    },
    Token,
    /// The local admin socket (someone with access to the data directory).
    Local,
}

/// The authenticated caller of a use case.
#[derive(Clone, Debug)]
pub struct Actor {
    pub user: User,
    pub via: AuthVia,
}

/// The cell's core, shared by every front end; cheap to clone.
#[derive(Clone)]
pub struct Cell {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: Config,
    clock: Arc<dyn Clock>,
    limiter: auth::LoginLimiter,
    auth_cache: auth::AuthCache,
    started_at: OffsetDateTime,
    runtime: Option<Arc<dyn crate::runtime::Runtime>>,
    /// Seals stored secrets; `None` when the key file could not be read (reported at start).
    sealer: Option<secrets::Sealer>,
    /// Wakes the reconciler when a desired state changes.
    wake: tokio::sync::Notify,
    /// Where workspace files are backed up; `None` when the store could not be set up.
    backups: Option<Arc<crate::backup::BackupStore>>,
    backup_stats: backups::BackupStats,
    /// Where clones and image pulls may connect (`workspace.allow_destinations`).
    egress: crate::content::egress::Egress,
    /// Port grants already redeemed (nonce → expiry): each works once.
    redeemed: std::sync::Mutex<std::collections::HashMap<String, OffsetDateTime>>,
    /// Workspaces whose activity the agents reported but the store has not seen yet.
    activity:
        std::sync::Mutex<std::collections::HashMap<crate::domain::WorkspaceId, OffsetDateTime>>,
    /// How many operations use each workspace's files now (see `Cell::use_files`); mounting
    /// and unmounting happen under this lock.
    file_users: std::sync::Mutex<std::collections::HashMap<crate::domain::WorkspaceId, usize>>,
    /// What the edge serves, as it last said.
    certs: certificates::CertStatuses,
    updates: updates::Updates,
}

impl Cell {
    pub fn new(store: Store, config: Config, clock: Arc<dyn Clock>) -> Cell {
        Cell::with_runtime(store, config, clock, None)
    }

    /// A cell that runs workspaces on `runtime`.
    pub fn with_runtime(
        store: Store,
        config: Config,
        clock: Arc<dyn Clock>,
        runtime: Option<Arc<dyn crate::runtime::Runtime>>,
    ) -> Cell {
        let limiter = auth::LoginLimiter::new(config.auth.login_attempts_per_minute);
        let config_dir = config.data_dir.clone();
        let started_at = clock.now();
        let sealer = match secrets::Sealer::load_or_create(&config_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "stored secrets are unavailable");
                None
            }
        };
        let trust = trust_of(&config);
        let backups = sealer.as_ref().and_then(|s| {
            open_backup_store(&config, &config_dir, s.backup_password(), trust.as_deref())
        });
        let egress = crate::content::egress::Egress::new(&config.workspace.allow_destinations)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "workspace.allow_destinations ignored");
                Default::default()
            })
            .with_trust(trust.clone());
        Cell {
            inner: Arc::new(Inner {
                store,
                config,
                clock,
                limiter,
                auth_cache: auth::AuthCache::default(),
                started_at,
                runtime,
                backups,
                backup_stats: Default::default(),
                sealer,
                wake: tokio::sync::Notify::new(),
                egress,
                redeemed: Default::default(),
                activity: Default::default(),
                file_users: Default::default(),
                certs: Default::default(),
                updates: Default::default(),
            }),
        }
    }

    /// Replaces the backup store (tests point it at a store of their own).
    pub fn with_backup_store(mut self, store: Arc<crate::backup::BackupStore>) -> Cell {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.backups = Some(store);
        }
        self
    }

    /// Where workspaces run (handed to the cell that serves again after a failed update).
    pub fn runtime(&self) -> Option<Arc<dyn crate::runtime::Runtime>> {
        self.inner.runtime.clone()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    pub fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }
    pub fn started_at(&self) -> OffsetDateTime {
        self.inner.started_at
    }

    /// The caller's membership in `org`, or `NotFound` so that outsiders learn nothing.
    fn membership(&self, actor: &Actor, org: &OrgId) -> Result<Membership> {
        self.store()
            .read(|tx| tx.membership(org, &actor.user.id))?
            .ok_or(Error::NotFound {
                what: "organization",
            })
    }

    /// Whether the caller belongs to `org` now.
    pub(crate) fn is_member(&self, actor: &Actor, org: &OrgId) -> Result<bool> {
        Ok(self
            .store()
            .read(|tx| tx.membership(org, &actor.user.id))?
            .is_some())
    }

    fn require_owner(&self, actor: &Actor, org: &OrgId) -> Result<Membership> {
        let m = self.membership(actor, org)?;
        if m.role != Role::Owner {
            return Err(Error::Forbidden(
                "only owners of this organization may do this".into(),
            ));
        }
        Ok(m)
    }

    /// The cell's administration (its loops, facts, users and backups) is a cell role of its
    /// own: cell administrators (the user who set the cell up and whoever an administrator
    /// makes one) and the local admin socket. Owning an organization does not make one.
    pub(crate) fn require_admin(&self, actor: &Actor) -> Result<()> {
        if actor.user.is_admin || actor.via == AuthVia::Local {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "only cell administrators may do this".into(),
            ))
        }
    }

    /// Facts about the cell for the admin page and API.
    pub fn admin_facts(&self, actor: &Actor) -> Result<CellFacts> {
        self.require_admin(actor)?;
        let data_dir = &self.config().data_dir;
        let db_bytes = std::fs::metadata(self.store().path())
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(CellFacts {
            version: crate::version::text(),
            started_at: self.started_at(),
            data_dir: data_dir.display().to_string(),
            usage: DataUsage::measure(data_dir),
            database_bytes: db_bytes,
            workspaces: self.store().workspace_count()?,
            runtime: self.runtime_description(),
        })
    }
}

pub struct CellFacts {
    pub version: &'static str,
    pub started_at: OffsetDateTime,
    pub data_dir: String,
    pub usage: DataUsage,
    pub database_bytes: u64,
    pub workspaces: u64,
    /// Where workspaces run and what enforces their limits.
    pub runtime: String,
}

/// What the data directory takes on the host's disk, part by part, and what its filesystem has
/// left. Sizes are allocated bytes (sparse workspace disks count what they hold).
#[derive(Clone, Debug, Default)]
pub struct DataUsage {
    /// ("database", bytes), ("workspace disks", …), ("workspace files", …), ("images", …),
    /// ("backups", …), in that order; a part is absent when its directory is.
    pub parts: Vec<(&'static str, u64)>,
    pub total: u64,
    /// Some part has more entries than are counted (see [`WALK_LIMIT`]): the sizes are lower
    /// bounds.
    pub partial: bool,
    pub filesystem_bytes: u64,
    pub filesystem_free: u64,
}

/// Entries counted per part at most, so that the admin page answers quickly on any host.
const WALK_LIMIT: usize = 200_000;

impl DataUsage {
    pub fn measure(data: &std::path::Path) -> DataUsage {
        let mut u = DataUsage::default();
        for (name, sub) in [
            ("database", crate::store::DB_FILE),
            ("workspace disks", "disks"),
            // Files of workspaces without a disk of their own; mounted disks are counted above.
            ("workspace files", "workspaces"),
            ("images", "images"),
            ("backups", "backups"),
        ] {
            let path = data.join(sub);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mut seen = 0usize;
            let bytes = allocated(&path, &meta, &mut seen);
            u.partial |= seen >= WALK_LIMIT;
            u.total += bytes;
            u.parts.push((name, bytes));
        }
        if let Ok(fs) = rustix::fs::statvfs(data) {
            u.filesystem_bytes = fs.f_blocks.saturating_mul(fs.f_frsize);
            u.filesystem_free = fs.f_bavail.saturating_mul(fs.f_frsize);
        }
        u
    }
}

/// Allocated bytes under `path`, not crossing into other filesystems (mounted workspace disks).
fn allocated(path: &std::path::Path, meta: &std::fs::Metadata, seen: &mut usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    *seen += 1;
    let mut bytes = meta.blocks() * 512;
    if !meta.is_dir() {
        return bytes;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return bytes;
    };
    for e in entries.flatten() {
        if *seen >= WALK_LIMIT {
            break;
        }
        let Ok(m) = e.metadata() else { continue };
        if m.dev() != meta.dev() {
            continue;
        }
        bytes += allocated(&e.path(), &m, seen);
    }
    bytes
}

/// A new id: time-ordered and strictly increasing within this process, so that listings by
/// id are in creation order even for records made in the same millisecond.
pub(crate) fn new_ulid() -> ulid::Ulid {
    static GENERATOR: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(ulid::Generator::new)
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
}

/// The operator's extra CA certificates (`tls.trust_bundle`), loaded once for every client.
fn trust_of(config: &Config) -> Option<Arc<crate::trust::Outbound>> {
    let bundle = config.tls.trust_bundle.as_deref()?;
    match crate::trust::Outbound::load(bundle) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            tracing::error!(error = %e, "tls.trust_bundle cannot be used; connections trust the host's CA certificates only");
            None
        }
    }
}

/// The backup store the configuration names: S3 when a bucket is set, else `DATA/backups`.
fn open_backup_store(
    config: &Config,
    data: &std::path::Path,
    password: &str,
    trust: Option<&crate::trust::Outbound>,
) -> Option<Arc<crate::backup::BackupStore>> {
    let cache = data.join("backup-cache");
    let store = if config.backup.s3.bucket.is_some() {
        crate::backup::s3::S3Backend::from_config(&config.backup.s3, trust)
            .map(|b| crate::backup::BackupStore::with_backend(Arc::new(b), password, &cache))
    } else {
        crate::backup::BackupStore::local(&backups::local_store_dir(data), password, &cache)
            .map_err(|e| e.to_string())
    };
    match store {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::error!(error = %e, "workspace backups are unavailable");
            None
        }
    }
}
