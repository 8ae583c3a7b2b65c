//! The dashboard: server-rendered pages from the `ui` crate, their form posts, and static
//! assets. Pages call the same service functions as the JSON API.

use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::net::SocketAddr;

use crate::api::{AppState, session_cookie};
use crate::service::{AuthVia, Credentials, Error};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login_submit))
        .route("/login/link/{secret}", get(login_link))
        .route("/logout", post(logout))
        .route("/invite/{secret}", get(invite_form).post(invite_submit))
        .route("/assets/style.css", get(stylesheet))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../embedded/style.css"),
    )
}

async fn home(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let actor = match crate::api::auth_identify(&st.cell, &headers) {
        Ok(a) => a,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    let csrf = match &actor.via {
        AuthVia::Session { csrf, .. } => csrf.clone(),
        _ => String::new(),
    };
    match st.cell.list_workspaces(&actor, None, None, 100) {
        Ok(page) => {
            let rows = page
                .items
                .iter()
                .map(|w| ui::WorkspaceRow {
                    id: w.id.to_string(),
                    name: w.name.clone(),
                    repo: w
                        .repos
                        .first()
                        .map(|r| r.url.as_str().to_owned())
                        .unwrap_or_default(),
                    phase: w.lifecycle.phase.as_str().into(),
                })
                .collect();
            Html(ui::workspaces_page(actor.user.email.clone(), csrf, rows)).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn login_form() -> Html<String> {
    Html(ui::login_page(None))
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
}

async fn login_submit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    match st
        .cell
        .login_password(Credentials {
            email: f.email,
            password: f.password,
            client: peer.ip().to_string(),
        })
        .await
    {
        Ok(out) => (
            [(
                header::SET_COOKIE,
                session_cookie(&st.cell, Some(&out.secret)),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Err(e @ (Error::BadCredentials | Error::RateLimited { .. })) => {
            let status = if matches!(e, Error::RateLimited { .. }) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            (status, Html(ui::login_page(Some(e.to_string())))).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(ui::login_page(Some(e.to_string()))),
        )
            .into_response(),
    }
}

/// A one-time login link: exchange it for a session and go to the dashboard.
async fn login_link(
    State(st): State<AppState>,
    crate::api::Path(secret): crate::api::Path<String>,
) -> Response {
    match st.cell.login_with_link(&secret) {
        Ok(out) => (
            [(
                header::SET_COOKIE,
                session_cookie(&st.cell, Some(&out.secret)),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Err(e) => (StatusCode::GONE, Html(ui::login_page(Some(e.to_string())))).into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(rename = "_csrf")]
    csrf: String,
}

async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Ok(actor) = crate::api::auth_identify(&st.cell, &headers) {
        if st.cell.check_csrf(&actor, Some(&f.csrf)).is_err() {
            return (StatusCode::FORBIDDEN, Error::Csrf.to_string()).into_response();
        }
        let _ = st.cell.logout(&actor);
    }
    (
        [(header::SET_COOKIE, session_cookie(&st.cell, None))],
        Redirect::to("/login"),
    )
        .into_response()
}

fn invite_view(
    st: &AppState,
    headers: &HeaderMap,
    secret: &str,
    error: Option<String>,
) -> Result<ui::InviteView, Error> {
    let (inv, org) = st.cell.peek_invitation(secret)?;
    let actor = crate::api::auth_identify(&st.cell, headers).ok();
    let csrf = match actor.as_ref().map(|a| &a.via) {
        Some(AuthVia::Session { csrf, .. }) => csrf.clone(),
        _ => String::new(),
    };
    Ok(ui::InviteView {
        org: org.name,
        role: inv.role.as_str().into(),
        signed_in_as: actor.map(|a| a.user.email),
        csrf,
        error,
    })
}

/// The page behind an invitation link: sign up, or join as the signed-in user.
async fn invite_form(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(secret): crate::api::Path<String>,
) -> Response {
    match invite_view(&st, &headers, &secret, None) {
        Ok(v) => Html(ui::invite_page(v)).into_response(),
        Err(e) => (StatusCode::GONE, Html(ui::login_page(Some(e.to_string())))).into_response(),
    }
}

#[derive(Deserialize)]
struct InviteForm {
    #[serde(rename = "_csrf", default)]
    csrf: Option<String>,
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

async fn invite_submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(secret): crate::api::Path<String>,
    Form(f): Form<InviteForm>,
) -> Response {
    let actor = crate::api::auth_identify(&st.cell, &headers).ok();
    let result = match &actor {
        Some(a) => match st.cell.check_csrf(a, f.csrf.as_deref()) {
            Ok(()) => st.cell.accept_invitation(&secret, Some(a), None).await,
            Err(e) => Err(e),
        },
        None => {
            let signup = crate::service::Signup {
                email: f.email.unwrap_or_default(),
                name: f.name.unwrap_or_default(),
                password: f.password.unwrap_or_default(),
            };
            st.cell.accept_invitation(&secret, None, Some(signup)).await
        }
    };
    match result {
        Ok((_, Some(session))) => (
            [(
                header::SET_COOKIE,
                session_cookie(&st.cell, Some(&session.secret)),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Ok((_, None)) => Redirect::to("/").into_response(),
        Err(e @ Error::BadLink) => {
            (StatusCode::GONE, Html(ui::login_page(Some(e.to_string())))).into_response()
        }
        Err(e) => {
            let status = match e {
                Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                Error::Conflict { .. } => StatusCode::CONFLICT,
                Error::Csrf => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            match invite_view(&st, &headers, &secret, Some(e.to_string())) {
                Ok(v) => (status, Html(ui::invite_page(v))).into_response(),
                Err(e) => {
                    (StatusCode::GONE, Html(ui::login_page(Some(e.to_string())))).into_response()
                }
            }
        }
    }
}
