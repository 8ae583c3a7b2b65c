//! Port forwarding through the cell, each port on an origin of its own.
//!
//! [`gate`] runs before everything else and routes by `Host`: a port origin
//! (`{port}-{id}.{domain}`, see `service::ports`) goes to the workspace's port, the dashboard's
//! own host names to the dashboard (whose answers then carry `frame-ancestors 'none'`), and any
//! other name is refused, so that a name an attacker points at the cell (DNS rebinding) reaches
//! nothing. On a port origin the cell authenticates with that origin's own credential (or a
//! bearer token from a non-browser client), never with the dashboard's session; a browser
//! without one is sent through `/port-login` on the dashboard to get it.
//!
//! Path URLs (`/w/{id}/p/{port}/...`) redirect to the port's origin, unless the operator turns
//! them on (`server.path_ports`): they are then served on the dashboard's origin, every answer
//! sandboxed by `Content-Security-Policy: sandbox` without `allow-same-origin`.
//!
//! The cell tunnels each connection through the workspace's agent, forwards the request with
//! its path prefix removed, and never passes its own credentials on.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::any;

use crate::api::{ApiError, AppState};
use crate::domain::WorkspaceId;
use crate::service::PortHost;

/// Where a port origin takes the grant the dashboard hands a browser.
pub const AUTH_PATH: &str = "/__devcell/auth";
/// The port origin's own credential.
const PORT_COOKIE: &str = "devcell_port";
/// The same with HTTPS: a browser refuses it from any other host.
const PORT_COOKIE_SECURE: &str = "__Host-devcell_port";

/// What a page from a port served on the dashboard's origin may do: run scripts and forms in an
/// origin of its own (no `allow-same-origin`), so it can read nothing of the cell's.
const SANDBOX: &str = "sandbox allow-scripts allow-forms allow-popups \
    allow-popups-to-escape-sandbox allow-modals allow-downloads allow-pointer-lock \
    allow-presentation";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/w/{id}/p/{port}", any(add_slash))
        .route("/w/{id}/p/{port}/", any(path_root))
        .route("/w/{id}/p/{port}/{*rest}", any(path_rest))
}

/// Marks a response that comes from a workspace's port (the dashboard's headers stay off it).
#[derive(Clone, Copy)]
struct FromPort;

/// Routes every request by its `Host` (see the module's documentation).
pub async fn gate(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(host) = &host {
        if let Some(target) = st.cell.port_of_host(host) {
            return port_origin(st, target, req)
                .await
                .unwrap_or_else(IntoResponse::into_response);
        }
        if !st.cell.is_cell_host(host) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                format!(
                    "this cell does not serve {:?}; open it at {}",
                    crate::service::host_name(host),
                    st.cell.link("")
                ),
            )
            .into_response();
        }
    }
    let mut res = next.run(req).await;
    if res.extensions().get::<FromPort>().is_none() {
        let h = res.headers_mut();
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    res
}

/// A request on a port's own origin.
async fn port_origin(st: AppState, target: PortHost, req: Request) -> Result<Response, ApiError> {
    if req.uri().path() == AUTH_PATH {
        return Ok(redeem(&st, &target, req.uri()));
    }
    let actor = port_caller(&st, &target, req.headers());
    let agent = match st
        .cell
        .authorize_port(actor.as_ref(), &target.workspace, target.port)
    {
        Ok(agent) => agent,
        Err(crate::service::Error::Unauthenticated)
            if matches!(*req.method(), Method::GET | Method::HEAD) =>
        {
            // A browser: the dashboard checks its session and sends it back with a grant.
            let next = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into());
            let login = st.cell.link(&format!(
                "port-login?w={}&p={}&next={}",
                target.workspace,
                target.port,
                encode(&next)
            ));
            return Ok(Redirect::to(&login).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let path = req.uri().path().trim_start_matches('/').to_owned();
    // A WebSocket to the port lasts as long as its caller may reach the port.
    let headers = req.headers().clone();
    let port = target.port;
    let ends = async move {
        st.cell
            .access_ends(|cell| {
                let actor = port_caller(&st, &target, &headers);
                cell.may_reach_port(actor.as_ref(), &target.workspace, target.port)
                    .is_ok()
            })
            .await;
    };
    forward(agent, port, path, String::new(), req, false, ends).await
}

/// Who calls on a port origin: by that origin's cookie, or a bearer token.
fn port_caller(
    st: &AppState,
    target: &PortHost,
    headers: &HeaderMap,
) -> Option<crate::service::Actor> {
    crate::api::cookie_values(headers, port_cookie(st))
        .find_map(|c| st.cell.port_actor(c, target))
        .or_else(|| bearer(st, headers))
}

/// `AUTH_PATH?grant=...&next=...`: the grant becomes this origin's cookie.
fn redeem(st: &AppState, target: &PortHost, uri: &Uri) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    match st.cell.redeem_port_grant(get("grant"), target) {
        Ok(credential) => {
            let secure = if st.cell.config().secure_cookies() {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{}={credential}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
                port_cookie(st),
                st.cell.config().auth.session_ttl.as_secs()
            );
            let mut res = Redirect::to(&local_path(get("next"))).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A path on this origin to go to after signing in; anything else goes to `/`.
pub(crate) fn local_path(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") {
        next.to_owned()
    } else {
        "/".into()
    }
}

/// `s` as one query-string value.
pub(crate) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn port_cookie(st: &AppState) -> &'static str {
    if st.cell.config().secure_cookies() {
        PORT_COOKIE_SECURE
    } else {
        PORT_COOKIE
    }
}

/// The caller of an `Authorization: Bearer` token (clients other than browsers).
fn bearer(st: &AppState, headers: &HeaderMap) -> Option<crate::service::Actor> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))?;
    st.cell.authenticate_token(token.trim()).ok()
}

async fn add_slash(uri: Uri) -> Redirect {
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Redirect::permanent(&format!("{}/{q}", uri.path()))
}

async fn path_root(
    State(st): State<AppState>,
    crate::api::Path((id, port)): crate::api::Path<(String, u16)>,
    req: Request,
) -> Response {
    path_port(st, id, port, String::new(), req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn path_rest(
    State(st): State<AppState>,
    crate::api::Path((id, port, rest)): crate::api::Path<(String, u16, String)>,
    req: Request,
) -> Response {
    path_port(st, id, port, rest, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `/w/{id}/p/{port}/...`: to the port's own origin, or (with `server.path_ports`) served here,
/// sandboxed.
async fn path_port(
    st: AppState,
    id: String,
    port: u16,
    rest: String,
    req: Request,
) -> Result<Response, ApiError> {
    let wsid = WorkspaceId::parse(&id).map_err(|_| ApiError::not_found("workspace"))?;
    if port == 0 {
        return Err(ApiError::not_found("port"));
    }
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if !st.cell.config().server.path_ports {
        // 307 keeps the method and body.
        return Ok(Redirect::temporary(&format!(
            "{}/{rest}{query}",
            st.cell.port_origin(&wsid, port)
        ))
        .into_response());
    }
    let actor = crate::api::auth_identify(&st.cell, req.headers()).ok();
    let agent = st.cell.authorize_port(actor.as_ref(), &wsid, port)?;
    let headers = req.headers().clone();
    let ends = async move {
        st.cell
            .access_ends(|cell| {
                let actor = crate::api::auth_identify(cell, &headers).ok();
                cell.may_reach_port(actor.as_ref(), &wsid, port).is_ok()
            })
            .await;
    };
    forward(
        agent,
        port,
        rest,
        format!("/w/{id}/p/{port}"),
        req,
        true,
        ends,
    )
    .await
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

/// Cookies of the cell's own, which never reach a workspace nor may be set by one.
fn is_cell_cookie(name: &str) -> bool {
    [
        crate::api::SESSION_COOKIE,
        crate::api::SESSION_COOKIE_SECURE,
        PORT_COOKIE,
        PORT_COOKIE_SECURE,
    ]
    .contains(&name)
}

/// The cookie header without the cell's own cookies.
fn strip_cell_cookies(cookie: &str) -> Option<String> {
    let kept: Vec<&str> = cookie
        .split(';')
        .map(str::trim)
        .filter(|kv| !is_cell_cookie(kv.split('=').next().unwrap_or("")))
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

/// Sends `req` to `port` in the workspace as `/{rest}`. `prefix` is the path the port is
/// served under on this host (for `X-Forwarded-Prefix`); `sandboxed` answers carry the CSP
/// sandbox. An upgraded connection (a WebSocket) is cut when `ends` resolves.
async fn forward(
    agent: crate::agent::client::AgentClient,
    port: u16,
    rest: String,
    prefix: String,
    mut req: Request,
    sandboxed: bool,
    ends: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Response, ApiError> {
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
        if n == "authorization" && value.to_str().is_ok_and(|v| v.contains("dct_")) {
            continue;
        }
        if n == "cookie" {
            if let Some(c) = value.to_str().ok().and_then(strip_cell_cookies)
                && let Ok(v) = HeaderValue::from_str(&c)
            {
                out = out.header(name, v);
            }
            continue;
        }
        out = out.header(name, value);
    }
    let host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    out = out
        .header(header::HOST, format!("localhost:{port}"))
        .header("x-forwarded-host", host);
    if !prefix.is_empty() {
        out = out.header("x-forwarded-prefix", &prefix);
    }
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
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        _ = ends => {}
                    }
                }
            });
        }
    }
    let (mut parts, body) = res.into_parts();
    // A workspace's server must not plant the cell's cookies.
    let cookies: Vec<HeaderValue> = parts
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            let name = v
                .to_str()
                .unwrap_or("")
                .trim_start()
                .split('=')
                .next()
                .unwrap_or("")
                .trim();
            !is_cell_cookie(name)
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
    if sandboxed {
        parts.headers.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(SANDBOX),
        );
        parts.headers.remove("service-worker-allowed");
    }
    parts.extensions.insert(FromPort);
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_signing_in() {
        assert_eq!(local_path("/app?x=1"), "/app?x=1");
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "",
        ] {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
    }

    #[test]
    fn the_cells_cookies_are_stripped_and_others_kept() {
        assert_eq!(
            strip_cell_cookies(
                "a=1; devcell_session=s; devcell_port=p; __Host-devcell_port=q; b=2"
            ),
            Some("a=1; b=2".into())
        );
        assert_eq!(strip_cell_cookies("devcell_session=s"), None);
    }
}
