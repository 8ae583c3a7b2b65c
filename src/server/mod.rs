//! Starting and stopping a cell: open the store, bootstrap the first owner, start the loops,
//! the admin socket and the HTTP server, and shut all of it down within the grace period;
//! handing the cell over to its next binary (`handover`).

pub mod handover;

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
    UpdateWorker,
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
    #[error("cannot take over from the previous process: {0}")]
    Handover(String),
}

pub struct Options {
    /// The address in the configuration is used unless this is set.
    pub clock: Arc<dyn Clock>,
    /// Create the first owner (with this email) when the database has none.
    pub bootstrap_owner: Option<(String, Option<String>)>,
    /// Where workspaces run; `None` picks the local runtime when bubblewrap is installed.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// Serve on these sockets instead of binding the configured addresses (a cell serving
    /// again after a failed update).
    pub listeners: Option<handover::Listeners>,
    /// This process was started by a handover: its sockets, and its predecessor to wait for
    /// before opening the database.
    pub inherited: Option<handover::Inherited>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            bootstrap_owner: None,
            runtime: None,
            listeners: None,
            inherited: None,
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
    /// Duplicates of the listening sockets, for a handover (`None` when they could not be
    /// duplicated: such a cell cannot update itself).
    listeners: Option<handover::Listeners>,
    /// The process this one took over from, when a handover started it.
    pub took_over: bool,
    /// Turned true when the edge takes no more connections (before `shutdown`).
    closed: watch::Sender<bool>,
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

/// A socket kept from before (a handover's, or this process's own before a failed update).
fn adopt(
    l: std::net::TcpListener,
    at: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Listen { addr: at, source };
    l.set_nonblocking(true).map_err(err)?;
    let addr = l.local_addr().map_err(err)?;
    Ok((tokio::net::TcpListener::from_std(l).map_err(err)?, addr))
}

pub async fn start(mut config: Config, mut opts: Options) -> Result<Running, StartError> {
    let t0 = Instant::now();
    let kept = opts
        .inherited
        .as_mut()
        .map(|i| i.listeners.try_clone())
        .or_else(|| opts.listeners.take().map(Ok))
        .transpose()
        .map_err(|source| StartError::Listen {
            addr: config.server.listen,
            source,
        })?;
    let serves_https = config.server.https_listen.is_some() && config.serves_tls();
    let (listener, addr, https) = match kept {
        Some(k) => {
            let https = match (k.https, config.server.https_listen) {
                (Some(l), Some(at)) if serves_https => Some(adopt(l, at)?),
                _ => None,
            };
            let (listener, addr) = adopt(k.listen, config.server.listen)?;
            (listener, addr, https)
        }
        None => {
            let (listener, addr) = bind(config.server.listen).await?;
            // With an HTTPS address as well, the plain one only redirects there.
            let https = match config.server.https_listen {
                Some(at) if serves_https => Some(bind(at).await?),
                _ => None,
            };
            (listener, addr, https)
        }
    };
    // Kept for a handover: duplicates of the same sockets.
    let listeners = (|| {
        Ok::<_, std::io::Error>(handover::Listeners {
            listen: std::net::TcpListener::from(
                std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?,
            ),
            https: https
                .as_ref()
                .map(|(l, _)| {
                    std::os::fd::AsFd::as_fd(l)
                        .try_clone_to_owned()
                        .map(std::net::TcpListener::from)
                })
                .transpose()?,
        })
    })()
    .map_err(|e| tracing::warn!(error = %e, "the listening sockets cannot be kept for updates"))
    .ok();
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
    // Started by a handover: the previous process lets go of the database first.
    let inherited = match opts.inherited.take() {
        Some(mut i) => Some(
            tokio::task::spawn_blocking(move || i.wait_for_go().map(|()| i))
                .await
                .map_err(|e| StartError::Handover(e.to_string()))?
                .map_err(StartError::Handover)?,
        ),
        None => None,
    };
    let took_over = inherited.is_some();
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
    if config.update.channel_url.is_some() && !config.update.check_interval.is_zero() {
        supervisor.spawn(UpdateWorker {
            cell: cell.clone(),
            interval: config.update.check_interval,
        });
    }

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
    let (closed, closed_rx) = watch::channel(false);
    let edge_stop = crate::edge::Stop {
        closed: closed_rx,
        stop: stop_rx.clone(),
    };
    // Everything is started: ready from the first connection served (after a handover,
    // connections are waiting in the backlog and are accepted at once).
    ready.store(true, Ordering::SeqCst);
    let (addr, redirects, server) = match (tls, https) {
        (true, Some((secure, secure_addr))) => {
            let redirects =
                crate::edge::serve_redirects(listener, public_url, acme_http01, edge_stop.clone());
            let server = crate::edge::serve_tls(secure, state, edge_stop, served);
            (secure_addr, Some((addr, redirects)), server)
        }
        (true, None) => (
            addr,
            None,
            crate::edge::serve_tls(listener, state, edge_stop, served),
        ),
        (false, _) => (addr, None, crate::edge::serve(listener, state, edge_stop)),
    };
    let (redirect_addr, redirects) = match redirects {
        Some((a, task)) => (Some(a), Some(task)),
        None => (None, None),
    };
    tracing::info!(%addr, elapsed_ms = t0.elapsed().as_millis() as u64, version = crate::version::text(), "cell is ready");
    // An update this process finishes: applied once the previous process saw it healthy.
    match inherited {
        Some(i) => {
            let confirmed = i.ready();
            let cell = cell.clone();
            tokio::spawn(async move {
                if confirmed.await.unwrap_or(false)
                    && let Err(e) = cell.settle_updates()
                {
                    tracing::error!(error = %e, "the update's outcome could not be recorded");
                }
            });
        }
        None => {
            if let Err(e) = cell.settle_updates() {
                tracing::error!(error = %e, "unfinished updates could not be settled");
            }
        }
    }
    Ok(Running {
        addr,
        cell,
        created_owner,
        tls,
        redirect_addr,
        redirects,
        listeners,
        took_over,
        closed,
        shutdown,
        server,
        admin,
        supervisor,
        grace: config.workers.shutdown_grace,
    })
}

/// How long a cell handing over waits, after it stopped accepting, for the requests of the
/// connections it has just accepted to arrive (a connection without a request yet would be
/// closed as idle).
const SETTLE: Duration = Duration::from_millis(300);

impl Running {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting work, drains the loops and connections, within the grace period.
    pub async fn stop(self) {
        drop(self.halt().await);
    }

    /// Stops as [`Running::stop`] does, having first ended every long-lived stream, and closes
    /// the database whoever still holds it; the listening sockets stay open (and are
    /// returned) so connections wait in their backlog for whoever serves next.
    pub async fn halt(mut self) -> Option<handover::Listeners> {
        // No new connection; those just accepted get a moment to send their requests, which
        // then count as open and finish here.
        let _ = self.closed.send(true);
        tokio::time::sleep(SETTLE).await;
        self.cell.close_streams();
        let cell = self.cell.clone();
        let listeners = self.listeners.take();
        self.stop_serving().await;
        cell.store().close();
        listeners
    }

    async fn stop_serving(self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = self.closed.send(true);
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
