//! The HTTP edge: one router for the API, the dashboard's pages, the port proxy and the
//! operational routes, with the layers every request passes (body limit, the port-origin gate,
//! request counting), and the listener that serves it with a graceful shutdown. Failures leave
//! through one classification (`api::ApiError`), which the pages use as well.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod acme;
pub mod dns;
pub mod tls;

use crate::api::{self, ApiError, AppState};
use crate::metrics::HttpLabels;

/// How a server stops: first it takes no new connection (`closed` turns true; those arriving
/// wait in the listening socket's backlog, for the process that serves next), then (`stop`)
/// it lets the open requests finish and ends. A plain stop turns both at once.
#[derive(Clone)]
pub struct Stop {
    pub closed: watch::Receiver<bool>,
    pub stop: watch::Receiver<bool>,
}

impl Stop {
    async fn closed(&mut self) {
        let _ = self.closed.wait_for(|c| *c).await;
    }
    async fn stopped(mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }
}

/// A listener that accepts nothing more once its server is closed.
struct Closable<L> {
    inner: L,
    stop: Stop,
}

impl<L: axum::serve::Listener> axum::serve::Listener for Closable<L> {
    type Io = L::Io;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        tokio::select! {
            biased;
            _ = self.stop.closed() => std::future::pending().await,
            c = self.inner.accept() => c,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Builds the whole HTTP application for a state.
pub fn app(state: AppState) -> Router {
    let max_body = state.cell.config().server.max_body_bytes;
    Router::new()
        .merge(api::router())
        .merge(api::ops_router())
        .merge(crate::web::router())
        .merge(crate::proxy::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::proxy::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; the API lives under /api/v1 (see /api/v1/openapi.json)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let res = next.run(req).await;
    st.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

/// Serves the application on `listener` until `stop` turns true, then lets open requests
/// finish (the caller bounds how long).
pub fn serve(listener: tokio::net::TcpListener, state: AppState, stop: Stop) -> JoinHandle<()> {
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let signal = stop.clone().stopped();
        // No Nagle: an event stream writes small events one after another, and each would
        // wait for the client's delayed acknowledgement (up to 40 ms) behind the one before.
        let listener = Closable {
            inner: listener,
            stop,
        };
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    })
}

/// Serves the application over TLS on `listener` until `stop` turns true, then lets open
/// connections finish (the caller bounds how long). A handshake that does not finish within
/// ten seconds is dropped.
pub fn serve_tls(
    listener: tokio::net::TcpListener,
    state: AppState,
    mut stop: Stop,
    served: std::sync::Arc<tls::Served>,
) -> JoinHandle<()> {
    let app = app(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(served.server_config()));
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (tcp, addr) = tokio::select! {
                biased;
                _ = stop.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
            let (acceptor, app) = (acceptor.clone(), app.clone());
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let app = app.layer(axum::Extension(axum::extract::ConnectInfo(addr)));
                let service = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let conn = builder
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(%addr, error = %e, "connection ended with an error");
                }
            });
        }
        stop.stopped().await;
        graceful.shutdown().await;
    })
}

/// Answers every request on `listener` with a permanent redirect to the same path and query
/// under `public` (the HTTPS address), until `stop`; with `http01`, ACME's HTTP-01 validation
/// requests get their key authorization instead.
pub fn serve_redirects(
    listener: tokio::net::TcpListener,
    public: url::Url,
    http01: Option<std::sync::Arc<acme::Http01>>,
    stop: Stop,
) -> JoinHandle<()> {
    let to_https = move |uri: axum::http::Uri| {
        let public = public.clone();
        async move {
            let mut target = public.clone();
            target.set_path(uri.path());
            target.set_query(uri.query());
            axum::response::Redirect::permanent(target.as_str())
        }
    };
    let mut app = Router::new().fallback(to_https);
    if let Some(http01) = http01 {
        let answer = move |axum::extract::Path(token): axum::extract::Path<String>| {
            let answer = http01.answer(&token);
            async move {
                match answer {
                    Some(key_authorization) => (
                        StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
                        key_authorization,
                    )
                        .into_response(),
                    None => (StatusCode::NOT_FOUND, "no such challenge").into_response(),
                }
            }
        };
        app = app.route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(answer),
        );
    }
    tokio::spawn(async move {
        let signal = stop.clone().stopped();
        let listener = Closable {
            inner: listener,
            stop,
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(error = %e, "HTTP redirect server failed");
        }
    })
}
