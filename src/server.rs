//! Starting and stopping a cell: open the store, bootstrap the first owner, start the loops,
//! the admin socket and the HTTP server, and shut all of it down within the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::AppState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime::{LocalRuntime, Runtime};
use crate::service::{Cell, Clock, SystemClock};
use crate::store::Store;
use crate::workers::{
    BackupWorker, CleanupWorker, ExpiryWorker, ReconcileWorker, Supervisor, TimeoutWorker,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Service(#[from] crate::service::Error),
    #[error("cannot serve HTTPS: {0}")]
    Tls(String),
    #[error("tls.trust_bundle does not load, so outbound connections could not trust it: {0}")]
    Trust(String),
}

pub struct Options {
    /// The address in the configuration is used unless this is set.
    pub clock: Arc<dyn Clock>,
    /// Create the first owner (with this email) when the database has none.
    pub bootstrap_owner: Option<(String, Option<String>)>,
    /// Where workspaces run; `None` picks the local runtime when bubblewrap is installed.
    pub runtime: Option<Arc<dyn Runtime>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            bootstrap_owner: None,
            runtime: None,
        }
    }
}

/// A running cell.
pub struct Running {
    pub addr: SocketAddr,
    pub cell: Cell,
    /// Set when this start created the first owner.
    pub created_owner: bool,
    /// Whether the listener speaks HTTPS.
    pub tls: bool,
    /// The plain HTTP listener that only redirects to HTTPS (with `server.https_listen`).
    pub redirect_addr: Option<SocketAddr>,
    redirects: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    admin: JoinHandle<()>,
    supervisor: Supervisor,
    grace: Duration,
}

async fn bind(
    at: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|source| StartError::Listen { addr: at, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: at, source })?;
    Ok((listener, addr))
}

pub async fn start(mut config: Config, opts: Options) -> Result<Running, StartError> {
    let t0 = Instant::now();
    let (listener, addr) = bind(config.server.listen).await?;
    // With an HTTPS address as well, the plain one only redirects there.
    let https = match config.server.https_listen {
        Some(at) if config.serves_tls() => Some(bind(at).await?),
        _ => None,
    };
    // Certificates first: a cell that cannot serve what it was configured to starts nothing.
    // A trust bundle that does not load would leave every outbound connection untrusting.
    if let Some(bundle) = &config.tls.trust_bundle {
        crate::trust::pem_certificates(bundle).map_err(StartError::Trust)?;
    }
    let served = Arc::new(crate::edge::tls::Served::default());
    let cert_files = match config.tls.files() {
        Some((cert, key)) => Some(
            crate::edge::tls::CertFiles::load(cert, key, served.clone())
                .map_err(StartError::Tls)?,
        ),
        None => None,
    };
    if config.server.public_url.is_none() {
        // Links must carry the real port, also when the configuration asked for port 0.
        let mut shown = config.clone();
        shown.server.listen = addr;
        shown.server.https_listen = https.as_ref().map(|(_, a)| *a);
        config.server.public_url = Some(shown.public_url());
    }
    let data = config.data_dir.clone();
    create_private_dir(&data).map_err(|source| StartError::DataDir {
        path: data.display().to_string(),
        source,
    })?;
    let store = Store::open(&data.join(crate::store::DB_FILE))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join(crate::store::DB_FILE),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(|source| StartError::DataDir {
            path: data.display().to_string(),
            source,
        })?;
    }
    let runtime: Option<Arc<dyn Runtime>> = match opts.runtime {
        Some(r) => Some(r),
        None => match LocalRuntime::new() {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "workspaces cannot run on this host");
                None
            }
        },
    };
    if let Some(r) = &runtime {
        tracing::info!(runtime = r.name(), details = %r.describe(), "workspace runtime");
    }
    let cell = Cell::with_runtime(store, config.clone(), opts.clock, runtime);

    let mut created_owner = false;
    if let Some((email, password)) = &opts.bootstrap_owner {
        created_owner = cell.bootstrap(email, password.as_deref()).await?.created;
    }

    let metrics = Arc::new(Metrics::default());
    let mut supervisor = Supervisor::new(metrics.clone());
    supervisor.spawn(ExpiryWorker {
        cell: cell.clone(),
        interval: config.workers.expiry_interval,
        pruned_at: None,
    });
    supervisor.spawn(ReconcileWorker::new(cell.clone()));
    supervisor.spawn(BackupWorker {
        cell: cell.clone(),
        interval: config.backup.loop_interval,
    });
    supervisor.spawn(CleanupWorker {
        cell: cell.clone(),
        interval: config.backup.cleanup_interval,
    });
    supervisor.spawn(TimeoutWorker::new(
        cell.clone(),
        config.workers.timeouts_interval,
    ));

    let http01 = Arc::new(crate::edge::acme::Http01::default());
    if config.acme() {
        let acme = crate::edge::acme::AcmeWorker::new(
            cell.clone(),
            &config,
            served.clone(),
            http01.clone(),
            metrics.clone(),
        )
        .map_err(StartError::Tls)?;
        supervisor.spawn(acme);
    }

    let (shutdown, stop_rx) = watch::channel(false);
    let admin = crate::admin::serve(cell.clone(), &data, stop_rx.clone()).map_err(|source| {
        StartError::DataDir {
            path: data.display().to_string(),
            source,
        }
    })?;

    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        cell: cell.clone(),
        metrics,
        workers: supervisor.statuses(),
        ready: ready.clone(),
        flashes: Default::default(),
    };
    let tls = config.serves_tls();
    let public_url = config.public_url();
    if let Some(files) = &cert_files {
        files.watch(stop_rx.clone(), state.metrics.clone(), cell.clone());
    }
    let acme_http01 = config.acme().then_some(http01);
    let (addr, redirects, server) = match (tls, https) {
        (true, Some((secure, secure_addr))) => {
            let redirects =
                crate::edge::serve_redirects(listener, public_url, acme_http01, stop_rx.clone());
            let server = crate::edge::serve_tls(secure, state, stop_rx, served);
            (secure_addr, Some((addr, redirects)), server)
        }
        (true, None) => (
            addr,
            None,
            crate::edge::serve_tls(listener, state, stop_rx, served),
        ),
        (false, _) => (addr, None, crate::edge::serve(listener, state, stop_rx)),
    };
    let (redirect_addr, redirects) = match redirects {
        Some((a, task)) => (Some(a), Some(task)),
        None => (None, None),
    };
    ready.store(true, Ordering::SeqCst);
    tracing::info!(%addr, elapsed_ms = t0.elapsed().as_millis() as u64, "cell is ready");
    Ok(Running {
        addr,
        cell,
        created_owner,
        tls,
        redirect_addr,
        redirects,
        shutdown,
        server,
        admin,
        supervisor,
        grace: config.workers.shutdown_grace,
    })
}

impl Running {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting work, drains the loops and connections, within the grace period.
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = self.shutdown.send(true);
        self.supervisor.shutdown(self.grace).await;
        let abort = self.server.abort_handle();
        if tokio::time::timeout_at(deadline, self.server)
            .await
            .is_err()
        {
            tracing::warn!("open connections did not finish in time; closing them");
            abort.abort();
        }
        // Awaited after the abort, so their sockets are closed when `stop` returns (a cell
        // started again at once binds the same addresses).
        self.admin.abort();
        let _ = self.admin.await;
        if let Some(r) = self.redirects {
            r.abort();
            let _ = r.await;
        }
        crate::admin::remove_socket(&self.cell.config().data_dir);
    }
}

/// The data directory: others may traverse it (a sandbox's bubblewrap, running as the
/// workspace's uid, must reach that workspace's directory) but not list it; everything secret
/// in it is mode 0600 (database, admin socket) or 0700 per workspace.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
}

impl IntoResponse for StartError {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}
