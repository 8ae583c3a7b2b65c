//! Port forwarding through the cell: `/w/{id}/p/{port}/...` reaches a server listening on that
//! port inside the workspace, WebSockets included. The cell tunnels each connection through
//! the workspace's agent (the workspace has no network reachable from outside), forwards the
//! request with its path prefix removed, and never passes the cell's own credentials on.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::any;

use crate::api::{ApiError, AppState, SESSION_COOKIE};
use crate::domain::WorkspaceId;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/w/{id}/p/{port}", any(add_slash))
        .route("/w/{id}/p/{port}/", any(forward_root))
        .route("/w/{id}/p/{port}/{*rest}", any(forward))
}

async fn add_slash(uri: Uri) -> Redirect {
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Redirect::permanent(&format!("{}/{q}", uri.path()))
}

async fn forward_root(
    State(st): State<AppState>,
    crate::api::Path((id, port)): crate::api::Path<(String, u16)>,
    req: Request,
) -> Response {
    proxy(st, id, port, String::new(), req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn forward(
    State(st): State<AppState>,
    crate::api::Path((id, port, rest)): crate::api::Path<(String, u16, String)>,
    req: Request,
) -> Response {
    proxy(st, id, port, rest, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Headers that describe one hop and are not forwarded (except the upgrade pair, which a
/// WebSocket handshake needs end to end).
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).is_some()
        && headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// The cookie header without the cell's session cookie.
fn strip_session(cookie: &str) -> Option<String> {
    let kept: Vec<&str> = cookie
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.starts_with(&format!("{SESSION_COOKIE}=")))
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

/// `{port}-{workspace id}.{workspace_domain}` when a wildcard domain is configured: the whole
/// path goes to the workspace's port.
pub async fn route_by_host(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let target = st
        .cell
        .config()
        .server
        .workspace_domain
        .as_deref()
        .and_then(|domain| {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            let host = host
                .rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map(|(h, _)| h)
                .unwrap_or(host);
            let label = host.strip_suffix(domain)?.strip_suffix('.')?;
            let (port, id) = label.split_once('-')?;
            Some((id.to_owned(), port.parse::<u16>().ok()?))
        });
    match target {
        Some((id, port)) => {
            let rest = req.uri().path().trim_start_matches('/').to_owned();
            proxy(st, id, port, rest, req)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }
        None => next.run(req).await,
    }
}

async fn proxy(
    st: AppState,
    id: String,
    port: u16,
    rest: String,
    mut req: Request,
) -> Result<Response, ApiError> {
    let wsid = WorkspaceId::parse(&id).map_err(|_| ApiError::not_found("workspace"))?;
    let actor = crate::api::auth_identify(&st.cell, req.headers()).ok();
    let agent = st.cell.authorize_port(actor.as_ref(), &wsid, port)?;
    let io = agent
        .tunnel(port)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "port_unreachable", e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(io)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "port_unreachable", e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });

    let upgrade = is_upgrade(req.headers());
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut out = axum::http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("/{rest}{query}"));
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || n == "host"
            || (!upgrade && (n == "connection" || n == "upgrade"))
        {
            continue;
        }
        if n == "authorization" && value.to_str().is_ok_and(|v| v.starts_with("Bearer dct_")) {
            continue;
        }
        if n == "cookie" {
            if let Some(c) = value.to_str().ok().and_then(strip_session)
                && let Ok(v) = HeaderValue::from_str(&c)
            {
                out = out.header(name, v);
            }
            continue;
        }
        out = out.header(name, value);
    }
    let prefix = format!("/w/{id}/p/{port}");
    let host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    out = out
        .header(header::HOST, format!("localhost:{port}"))
        .header("x-forwarded-prefix", &prefix)
        .header("x-forwarded-host", host);
    let upstream = out
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let mut res = sender.send_request(upstream).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "port_unreachable",
            format!("the server on port {port} broke off: {e}"),
        )
    })?;

    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let server_upgrade = hyper::upgrade::on(&mut res);
        if let Some(client_upgrade) = client_upgrade {
            tokio::spawn(async move {
                if let (Ok(c), Ok(s)) = (client_upgrade.await, server_upgrade.await) {
                    let (mut c, mut s) = (
                        hyper_util::rt::TokioIo::new(c),
                        hyper_util::rt::TokioIo::new(s),
                    );
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                }
            });
        }
    }
    let (mut parts, body) = res.into_parts();
    // A workspace's server must not plant the cell's session cookie.
    let cookies: Vec<HeaderValue> = parts
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            !v.to_str()
                .unwrap_or("")
                .trim_start()
                .starts_with(&format!("{SESSION_COOKIE}="))
        })
        .cloned()
        .collect();
    parts.headers.remove(header::SET_COOKIE);
    for c in cookies {
        parts.headers.append(header::SET_COOKIE, c);
    }
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}
