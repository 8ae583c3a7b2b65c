//! Who is calling: the session cookie or bearer token extractor with its CSRF check, and the
//! login, logout, profile and API-token routes.

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use std::net::SocketAddr;

use super::ErrorBody;
use super::dto::*;
use super::{ApiError, ApiResult, AppState, Json, Path};
use crate::domain::TokenId;
use crate::service::{Actor, AuthVia, Cell, Credentials, LoginOutcome};

pub const SESSION_COOKIE: &str = "devcell_session";
/// The session cookie's name with HTTPS: a browser refuses a `__Host-` cookie from any other
/// host, so a page on a port's origin (a sibling subdomain) cannot plant a session of its own.
pub const SESSION_COOKIE_SECURE: &str = "__Host-devcell_session";

/// The name of the session cookie of this cell.
pub fn session_cookie_name(cell: &Cell) -> &'static str {
    if cell.config().secure_cookies() {
        SESSION_COOKIE_SECURE
    } else {
        SESSION_COOKIE
    }
}
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The authenticated caller. Cookie-authenticated requests that change something must carry
/// the session's CSRF token in `X-CSRF-Token` (or `_csrf` for dashboard forms, checked there).
pub struct Auth(pub Actor);

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    cookie_values(headers, name).next()
}

/// Every value of the cookie `name` (a sibling origin may have added one of its own).
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Finds the caller from headers without the CSRF check (for pages that only read).
pub fn identify(cell: &Cell, headers: &HeaderMap) -> Result<Actor, crate::service::Error> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .ok_or(crate::service::Error::Unauthenticated)?;
        return cell.authenticate_token(token.trim());
    }
    match cookie_value(headers, session_cookie_name(cell)) {
        Some(secret) => cell.authenticate_session(secret),
        None => Err(crate::service::Error::Unauthenticated),
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let actor = identify(&state.cell, &parts.headers)?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            state.cell.check_csrf(&actor, presented)?;
        }
        Ok(Auth(actor))
    }
}

/// The `Set-Cookie` value for a session (or for clearing it with `None`).
pub fn session_cookie(cell: &Cell, secret: Option<&str>) -> HeaderValue {
    let secure = if cell.config().secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let name = session_cookie_name(cell);
    let v = match secret {
        Some(s) => format!(
            "{name}={s}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            cell.config().auth.session_ttl.as_secs()
        ),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn login_response(cell: &Cell, out: LoginOutcome) -> Response {
    let body = LoginResponse {
        user: (&out.user).into(),
        csrf_token: out.session.csrf.clone(),
        expires_at: rfc3339(out.session.expires_at),
    };
    let mut res = axum::Json(body).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(cell, Some(&out.secret)));
    res
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/link", post(login_link))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/logout-all", post(logout_all))
        .route("/api/v1/me", get(me).patch(update_me))
        .route("/api/v1/me/password", post(change_password))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
}

/// Sign in with email and password; sets the session cookie.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()), request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(super) async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Response> {
    let out = st
        .cell
        .login_password(Credentials {
            email: req.email,
            password: req.password,
            client: peer.ip().to_string(),
        })
        .await?;
    Ok(login_response(&st.cell, out))
}

/// Sign in with a one-time login link; sets the session cookie.
#[utoipa::path(post, path = "/api/v1/auth/link", tag = "auth", security(()), request_body = LinkLoginRequest,
    responses((status = 200, body = LoginResponse), (status = 410, body = ErrorBody)))]
pub(super) async fn login_link(
    State(st): State<AppState>,
    Json(req): Json<LinkLoginRequest>,
) -> ApiResult<Response> {
    let out = st.cell.login_with_link(&req.token)?;
    Ok(login_response(&st.cell, out))
}

/// End this session.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 204), (status = 401, body = ErrorBody)))]
pub(super) async fn logout(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Response> {
    st.cell.logout(&actor)?;
    Ok((
        [(header::SET_COOKIE, session_cookie(&st.cell, None))],
        StatusCode::NO_CONTENT,
    )
        .into_response())
}

/// End every session of the caller, on every device.
#[utoipa::path(post, path = "/api/v1/auth/logout-all", tag = "auth", responses((status = 204), (status = 401, body = ErrorBody)))]
pub(super) async fn logout_all(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Response> {
    st.cell.logout_everywhere(&actor)?;
    Ok((
        [(header::SET_COOKIE, session_cookie(&st.cell, None))],
        StatusCode::NO_CONTENT,
    )
        .into_response())
}

/// The caller and their organizations.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
pub(super) async fn me(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Json<MeResponse>> {
    let orgs = st
        .cell
        .list_orgs(&actor)?
        .iter()
        .map(|(o, r)| OrgDto::new(o, *r))
        .collect();
    let csrf_token = match &actor.via {
        AuthVia::Session { csrf, .. } => Some(csrf.clone()),
        _ => None,
    };
    Ok(Json(MeResponse {
        user: (&actor.user).into(),
        orgs,
        csrf_token,
    }))
}

/// Change the caller's display name.
#[utoipa::path(patch, path = "/api/v1/me", tag = "auth", request_body = ProfilePatch,
    responses((status = 200, body = UserDto), (status = 422, body = ErrorBody)))]
pub(super) async fn update_me(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<ProfilePatch>,
) -> ApiResult<Json<UserDto>> {
    Ok(Json((&st.cell.update_profile(&actor, &req.name)?).into()))
}

/// Change the caller's password.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "auth", request_body = PasswordChange,
    responses((status = 204), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn change_password(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    st.cell
        .change_password(&actor, &req.current, &req.new)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's API tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = [TokenDto]), (status = 401, body = ErrorBody)))]
pub(super) async fn list_tokens(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Json<Vec<TokenDto>>> {
    Ok(Json(
        st.cell
            .list_tokens(&actor)?
            .iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Create an API token; the secret is in this response only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 422, body = ErrorBody)))]
pub(super) async fn create_token(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let t = st.cell.create_token(
        &actor,
        &req.name,
        req.expires_in_s.map(std::time::Duration::from_secs),
    )?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: t.secret,
            info: (&t.token).into(),
        }),
    ))
}

/// Revoke one of the caller's API tokens.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "Token id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = TokenId::parse(&id).map_err(|_| ApiError::not_found("token"))?;
    st.cell.revoke_token(&actor, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
