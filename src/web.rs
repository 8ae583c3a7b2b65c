//! The dashboard: server-rendered pages from the `ui` crate, their form posts, and static
//! assets. Pages call the same service functions as the JSON API.

use axum::Router;
use axum::extract::{ConnectInfo, Form, Query, State};
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
        .route("/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .route(
            "/assets/dashboard.js",
            get(|| {
                asset(
                    "text/javascript; charset=utf-8",
                    include_bytes!("../embedded/dashboard.js"),
                )
            }),
        )
        .route(
            "/assets/xterm.js",
            get(|| asset("text/javascript; charset=utf-8", ui::XTERM_JS)),
        )
        .route(
            "/assets/addon-fit.js",
            get(|| asset("text/javascript; charset=utf-8", ui::XTERM_FIT_JS)),
        )
        .route(
            "/assets/xterm.css",
            get(|| asset("text/css; charset=utf-8", ui::XTERM_CSS)),
        )
        .route("/workspaces/{id}", get(workspace_page))
        .route("/workspaces/{id}/start", post(start_form))
        .route("/workspaces/{id}/stop", post(stop_form))
        .route("/workspaces/{id}/restart", post(restart_form))
        .route("/new", get(new_form).post(new_submit))
        .route("/org", get(org_page))
        .route(
            "/workspaces/{id}/delete",
            get(confirm_delete).post(delete_submit),
        )
        .route("/logout-all", post(logout_all))
        .route("/workspaces/{id}/ports/{port}", post(share_port_form))
        .route("/workspaces/{id}/timeout", post(timeout_form))
        .route(
            "/workspaces/{id}/backups/{snapshot}/restore",
            post(restore_form),
        )
        .route("/org/invite", post(org_invite))
        .route("/org/policy", post(org_policy))
        .route("/org/classes", post(org_class_new))
        .route("/org/classes/{id}", post(org_class_edit))
        .route("/org/members/{user}/role", post(org_role))
        .route("/org/members/{user}/remove", post(org_member_remove))
        .route("/org/invitations/{id}/revoke", post(org_invitation_revoke))
        .route("/org/classes/{id}/delete", post(org_class_delete))
        .route("/admin", get(admin_page))
        .route("/admin/updates/approve", post(admin_update_approve))
        .route("/admin/updates/check", post(admin_update_check))
        .route(
            "/admin/updates/bundle",
            post(admin_update_bundle).layer(axum::extract::DefaultBodyLimit::max(MAX_BUNDLE)),
        )
        .route("/port-login", get(port_login))
}

async fn favicon() -> impl IntoResponse {
    asset("image/svg+xml", include_bytes!("../embedded/favicon.svg")).await
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../embedded/style.css"),
    )
}

/// The API's largest page: rendering it stays fast (see benches/api.rs).
const WORKSPACES_PER_PAGE: usize = 500;

#[derive(Deserialize)]
struct HomeQuery {
    after: Option<String>,
}

async fn home(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HomeQuery>,
) -> Response {
    let actor = match crate::api::auth_identify(&st.cell, &headers) {
        Ok(a) => a,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    let csrf = match &actor.via {
        AuthVia::Session { csrf, .. } => csrf.clone(),
        _ => String::new(),
    };
    let listed = st
        .cell
        .list_workspaces(&actor, None, q.after.as_deref(), WORKSPACES_PER_PAGE);
    match listed {
        Ok(page) => {
            let details = st.cell.list_details(&page.items);
            let rows = page
                .items
                .iter()
                .zip(details)
                .map(|(w, (class, plan))| ui::WorkspaceRow {
                    id: w.id.to_string(),
                    name: w.name.clone(),
                    repo: w
                        .repos
                        .first()
                        .map(|r| r.url.as_str().to_owned())
                        .unwrap_or_default(),
                    phase: w.lifecycle.phase.as_str().into(),
                    class,
                    last_activity: when(&st, w.last_activity),
                    stops_at: plan.map(|p| when(&st, p.at)),
                    wanted_running: w.lifecycle.desired == crate::domain::Desired::Running,
                })
                .collect();
            let more = page.next_cursor.map(|c| format!("/?after={c}"));
            Html(ui::workspaces_page(viewer(&st, &actor, &csrf), rows, more)).into_response()
        }
        Err(e) => error_page(&st, e),
    }
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

async fn login_form(
    State(st): State<AppState>,
    query: Result<axum::extract::Query<Next>, axum::extract::rejection::QueryRejection>,
) -> Html<String> {
    let next = query.ok().and_then(|q| q.0.next);
    Html(ui::login_page_to(None, next, public_warnings(&st)))
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
    /// Where to go once signed in (a path on the dashboard).
    #[serde(default)]
    next: String,
}

async fn login_submit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = crate::proxy::local_path(&f.next);
    // A failed attempt keeps where the user was going.
    let again = (!f.next.is_empty()).then(|| f.next.clone());
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
            Redirect::to(&next),
        )
            .into_response(),
        Err(e @ (Error::BadCredentials | Error::RateLimited { .. })) => {
            let status = if matches!(e, Error::RateLimited { .. }) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            (
                status,
                Html(ui::login_page_to(
                    Some(e.to_string()),
                    again,
                    public_warnings(&st),
                )),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(ui::login_page_to(
                Some(e.to_string()),
                again,
                public_warnings(&st),
            )),
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

async fn asset(content_type: &'static str, bytes: &'static [u8]) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        bytes,
    )
}

/// The signed-in caller with their CSRF token, or a redirect to the login page.
fn signed_in(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<(crate::service::Actor, String), Box<Response>> {
    match crate::api::auth_identify(&st.cell, headers) {
        Ok(a) => {
            let csrf = match &a.via {
                AuthVia::Session { csrf, .. } => csrf.clone(),
                _ => String::new(),
            };
            Ok((a, csrf))
        }
        Err(_) => Err(Box::new(Redirect::to("/login").into_response())),
    }
}

fn error_page(st: &AppState, e: Error) -> Response {
    error_page_back(st, e, "/", "Back to your workspaces")
}

/// A refused workspace action: the reason, and the way back to the workspace it was about.
fn workspace_error(st: &AppState, e: Error, id: &str) -> Response {
    error_page_back(st, e, &format!("/workspaces/{id}"), "Back to the workspace")
}

/// A refusal or failure as a page. Status and message come from the API's classification
/// (`api::ApiError`), so a page and a JSON answer never disagree: an internal error is logged
/// there and shows only that the log has details.
fn error_page_back(st: &AppState, e: Error, back: &str, label: &str) -> Response {
    if matches!(
        e,
        Error::Unauthenticated | Error::BadCredentials | Error::BadLink
    ) {
        return (
            StatusCode::UNAUTHORIZED,
            Html(ui::login_page(Some(e.to_string()))),
        )
            .into_response();
    }
    let answer = crate::api::ApiError::from(e);
    let title = match answer.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::UNPROCESSABLE_ENTITY => "That did not work",
        StatusCode::CONFLICT => "Not now",
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
        StatusCode::SERVICE_UNAVAILABLE => "Not available right now",
        _ => "Something went wrong",
    };
    (
        answer.status,
        Html(ui::error_page(
            title,
            answer.body.message,
            back,
            label,
            public_warnings(st),
        )),
    )
        .into_response()
}

#[derive(Deserialize)]
struct PortLogin {
    w: String,
    p: u16,
    #[serde(default)]
    next: String,
}

/// Where a port's origin sends a browser without its credential: the session here says who
/// it is, the port's visibility whether it may, and the browser goes back with a grant that
/// works once (see `service::ports`).
async fn port_login(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<PortLogin>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(q)) = query else {
        return error_page(&st, Error::NotFound { what: "port" });
    };
    let actor = match crate::api::auth_identify(&st.cell, &headers) {
        Ok(a) => a,
        Err(_) => {
            // Signed in, the browser goes on to the port.
            let enc = crate::proxy::encode;
            let back = format!(
                "/port-login?w={}&p={}&next={}",
                enc(&q.w),
                q.p,
                enc(&q.next)
            );
            return (
                StatusCode::UNAUTHORIZED,
                Html(ui::login_page_to(
                    Some(format!("Sign in to open port {} of this workspace.", q.p)),
                    Some(back),
                    public_warnings(&st),
                )),
            )
                .into_response();
        }
    };
    let Ok(id) = crate::domain::WorkspaceId::parse(&q.w) else {
        return error_page(&st, Error::NotFound { what: "workspace" });
    };
    match st.cell.port_grant(&actor, &id, q.p) {
        Ok(grant) => Redirect::to(&format!(
            "{}{}?grant={grant}&next={}",
            st.cell.port_origin(&id, q.p),
            crate::proxy::AUTH_PATH,
            crate::proxy::encode(&q.next)
        ))
        .into_response(),
        Err(e) => workspace_error(&st, e, id.as_str()),
    }
}

async fn workspace_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Ok(id) = crate::domain::WorkspaceId::parse(&id) else {
        return error_page(&st, Error::NotFound { what: "workspace" });
    };
    let w = match st.cell.get_workspace(&actor, &id) {
        Ok(w) => w,
        Err(e) => return error_page(&st, e),
    };
    let phase = w.lifecycle.phase;
    let live = matches!(
        phase,
        crate::domain::Phase::Running | crate::domain::Phase::Initializing
    );
    // Tasks and ports belong to the session that runs now: a stopped workspace's last logs
    // and a task not yet started this session are not shown as if they were current. An
    // image build is shown while the workspace is created and after it failed the start.
    let tasks = if live {
        st.cell.tasks(&actor, &id).await.unwrap_or_default()
    } else if matches!(
        phase,
        crate::domain::Phase::Creating | crate::domain::Phase::Failed
    ) {
        let mut all = st.cell.tasks(&actor, &id).await.unwrap_or_default();
        all.retain(|t| t.name == "image build");
        all
    } else {
        Vec::new()
    };
    let ports = if phase == crate::domain::Phase::Running {
        st.cell.ports(&actor, &id).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let plan = st.cell.stop_plan(&w);
    let viewer = viewer(&st, &actor, &csrf);
    Html(ui::workspace_page(ui::WorkspaceView {
        viewer,
        id: w.id.to_string(),
        name: w.name.clone(),
        phase: phase.as_str().into(),
        desired: w.lifecycle.desired.as_str().into(),
        message: (phase == crate::domain::Phase::Failed)
            .then(|| w.lifecycle.history.last().and_then(|c| c.message.clone()))
            .flatten(),
        repos: w.repos.iter().map(|r| r.url.as_str().to_owned()).collect(),
        history: w
            .lifecycle
            .history
            .iter()
            .rev()
            .map(|c| {
                (
                    c.phase.as_str().to_owned(),
                    when(&st, c.at),
                    c.message.clone().unwrap_or_default(),
                )
            })
            .collect(),
        tasks: tasks
            .into_iter()
            .map(|t| {
                let log = if t.state == "pending" {
                    String::new()
                } else {
                    t.log
                };
                (t.index, t.name, t.state, log)
            })
            .collect(),
        ports: ports
            .into_iter()
            .map(|p| {
                (
                    p.port,
                    p.configured.unwrap_or_default(),
                    p.listening,
                    p.visibility.as_str().to_owned(),
                    p.url,
                )
            })
            .collect(),
        git: git_views(&w.git),
        timeout_min: w.timeout.as_secs() / 60,
        timeout_limits: {
            let p = st.cell.timeout_policy(&w);
            (
                p.default_timeout.as_secs() / 60,
                p.max_timeout.as_secs() / 60,
                p.users_can_extend,
            )
        },
        stops_at: plan.as_ref().map(|p| {
            let why = match p.reason {
                crate::domain::StopReason::Inactivity => "if idle",
                crate::domain::StopReason::MaxLifetime => "maximum lifetime",
            };
            (when(&st, p.at), why.to_owned())
        }),
        stop_warning: plan.and_then(|p| p.warning),
        backups: w
            .snapshots
            .iter()
            .rev()
            .map(|b| ui::BackupView {
                id: b.id.clone(),
                taken_at: when(&st, b.taken_at),
                trigger: b.trigger.clone(),
                files: b.files,
                size: crate::human::bytes(b.bytes),
            })
            .collect(),
        backup_state: match (&w.backup.pending, &w.backup.last_error, w.snapshots.last()) {
            (Some(_), Some(e), _) => format!("A backup is pending and being retried: {e}"),
            (Some(_), None, _) => "A backup is being taken.".into(),
            _ if w.backup.released => {
                "Its files are in the backup only; starting it restores them.".into()
            }
            (None, _, Some(_)) => {
                "Backed up: the newest backup is first below. Another is taken when it stops."
                    .into()
            }
            (None, _, None) => {
                "No backup yet: one is taken when it stops, and every so often while it runs."
                    .into()
            }
        },
        can_restore: matches!(
            phase,
            crate::domain::Phase::Stopped | crate::domain::Phase::Failed
        ),
    }))
    .into_response()
}

async fn start_form(
    st: State<AppState>,
    headers: HeaderMap,
    id: crate::api::Path<String>,
    form: Form<CsrfForm>,
) -> Response {
    change(st, headers, id, form, Change::Start).await
}

async fn stop_form(
    st: State<AppState>,
    headers: HeaderMap,
    id: crate::api::Path<String>,
    form: Form<CsrfForm>,
) -> Response {
    change(st, headers, id, form, Change::Stop).await
}

async fn restart_form(
    st: State<AppState>,
    headers: HeaderMap,
    id: crate::api::Path<String>,
    form: Form<CsrfForm>,
) -> Response {
    change(st, headers, id, form, Change::Restart).await
}

enum Change {
    Start,
    Stop,
    Restart,
}

async fn change(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
    Form(f): Form<CsrfForm>,
    what: Change,
) -> Response {
    let (actor, _) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Err(e) = st.cell.check_csrf(&actor, Some(&f.csrf)) {
        return error_page(&st, e);
    }
    let Ok(wsid) = crate::domain::WorkspaceId::parse(&id) else {
        return error_page(&st, Error::NotFound { what: "workspace" });
    };
    let result = match what {
        Change::Start => st.cell.start_workspace(&actor, &wsid),
        Change::Stop => st.cell.stop_workspace(&actor, &wsid),
        Change::Restart => st.cell.restart_workspace(&actor, &wsid),
    };
    match result {
        Ok(_) => Redirect::to(&format!("/workspaces/{id}")).into_response(),
        Err(e) => workspace_error(&st, e, &id),
    }
}

/// The classes the caller may choose, the default first, each with its sizes for the label.
fn class_names(st: &AppState, actor: &crate::service::Actor) -> Vec<(String, String)> {
    let orgs = st.cell.list_orgs(actor).unwrap_or_default();
    orgs.first()
        .and_then(|(o, _)| st.cell.usable_classes(actor, &o.id).ok())
        .map(|cs| {
            let mut v: Vec<_> = cs.iter().collect();
            v.sort_by_key(|c| std::cmp::Reverse(c.is_default));
            v.into_iter()
                .map(|c| {
                    let spec = &c.spec;
                    let cpus = spec.cpu_millis as f64 / 1000.0;
                    let label = format!(
                        "{} — {cpus} CPU{}, {} memory, {} disk",
                        spec.name,
                        if cpus == 1.0 { "" } else { "s" },
                        crate::human::bytes(spec.memory_bytes),
                        crate::human::bytes(spec.disk_bytes)
                    );
                    (spec.name.clone(), label)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn new_form(State(st): State<AppState>, headers: HeaderMap) -> Response {
    match signed_in(&st, &headers) {
        Ok((actor, csrf)) => Html(ui::new_workspace_page(ui::NewWorkspaceView {
            viewer: viewer(&st, &actor, &csrf),
            classes: class_names(&st, &actor),
            ..Default::default()
        }))
        .into_response(),
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
struct NewForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    repo: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    class: String,
    #[serde(default)]
    more: String,
    #[serde(default)]
    image: String,
}

async fn new_submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<NewForm>,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Err(e) = st.cell.check_csrf(&actor, Some(&f.csrf)) {
        return error_page(&st, e);
    }
    let mut view = ui::NewWorkspaceView {
        viewer: viewer(&st, &actor, &csrf),
        classes: Vec::new(),
        repo: f.repo.clone(),
        branch: f.branch.clone(),
        more: f.more.clone(),
        class: f.class.clone(),
        image: f.image.clone(),
        error: None,
    };
    let input = crate::service::WorkspaceInput {
        org: None,
        name: None,
        repos: std::iter::once((f.repo, Some(f.branch).filter(|b| !b.trim().is_empty())))
            .chain(
                f.more
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| match l.rsplit_once('#') {
                        Some((url, branch)) => (url.to_owned(), Some(branch.to_owned())),
                        None => (l.to_owned(), None),
                    }),
            )
            .collect(),
        class: Some(f.class).filter(|c| !c.is_empty()),
        image: Some(f.image).filter(|i| !i.trim().is_empty()),
        timeout: None,
        start: true,
    };
    match st.cell.create_workspace(&actor, input) {
        Ok(w) => Redirect::to(&format!("/workspaces/{}", w.id)).into_response(),
        Err(e) => {
            let status = if matches!(e, Error::Invalid(_) | Error::Rule(_)) {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::CONFLICT
            };
            // The field the error is about, in the form's terms.
            let field = match &e {
                Error::Invalid(f) if f.field == "repos[0].url" => "repo",
                Error::Invalid(f) if f.field == "repos[0].branch" => "branch",
                Error::Invalid(f) if f.field.starts_with("repos") => "more",
                Error::Invalid(f) if f.field == "class" => "class",
                Error::Invalid(f) if f.field == "image" => "image",
                Error::Rule(crate::domain::RuleError::ClassNotAllowed { .. }) => "class",
                _ => "",
            };
            view.classes = class_names(&st, &actor);
            // Beside its field the message needs no field name ("repos[0].url: ...").
            let message = match &e {
                Error::Invalid(f) if !field.is_empty() => f.reason.clone(),
                _ => e.to_string(),
            };
            view.error = Some((field.to_owned(), message));
            (status, Html(ui::new_workspace_page(view))).into_response()
        }
    }
}

/// The caller's organization for the settings page: the first one they own.
fn owned_org(
    st: &AppState,
    actor: &crate::service::Actor,
) -> Result<crate::domain::entities::Org, Error> {
    st.cell
        .list_orgs(actor)?
        .into_iter()
        .find(|(_, r)| *r == crate::domain::Role::Owner)
        .map(|(o, _)| o)
        .ok_or_else(|| Error::Forbidden("only organization owners may open this page".into()))
}

fn org_view(
    st: &AppState,
    actor: &crate::service::Actor,
    csrf: String,
    new_invitation: Option<String>,
    message: Option<String>,
) -> Result<ui::OrgView, Error> {
    let org = owned_org(st, actor)?;
    let policy = st.cell.get_policy(actor, &org.id)?;
    let members = st
        .cell
        .list_members(actor, &org.id)?
        .into_iter()
        .map(|(m, u)| {
            let me = u.id == actor.user.id;
            (u.id.to_string(), u.email, m.role.as_str().to_owned(), me)
        })
        .collect();
    let gib = |b: u64| format!("{}", b as f64 / (1u64 << 30) as f64);
    let classes = st
        .cell
        .list_classes(actor, &org.id)?
        .into_iter()
        .map(|c| ui::ClassView {
            id: c.id.to_string(),
            name: c.spec.name.clone(),
            cpu_cores: format!("{}", c.spec.cpu_millis as f64 / 1000.0),
            memory_gib: gib(c.spec.memory_bytes),
            disk_gib: gib(c.spec.disk_bytes),
            max_processes: c.spec.max_processes,
            is_default: c.is_default,
        })
        .collect();
    Ok(ui::OrgView {
        viewer: viewer(st, actor, &csrf),
        name: org.name,
        members,
        classes,
        default_timeout_min: policy.default_timeout.as_secs() / 60,
        max_timeout_min: policy.max_timeout.as_secs() / 60,
        users_can_extend: policy.users_can_extend,
        max_lifetime_h: policy.max_lifetime.as_secs() / 3600,
        max_running_per_user: policy.max_running_per_user,
        outbound_network: policy.outbound_network,
        allowed_classes: policy
            .allowed_classes
            .iter()
            .map(|c| c.to_string())
            .collect(),
        backup_keep_last: policy.backup_keep_last,
        backup_keep_within_days: policy.backup_keep_within.as_secs() / 86_400,
        deleted_backup_grace_days: policy.deleted_backup_grace.as_secs() / 86_400,
        dormancy_days: policy
            .dormancy
            .map(|d| (d.as_secs() / 86_400).to_string())
            .unwrap_or_default(),
        backup_home: policy.backup_home,
        invitations: st
            .cell
            .list_invitations(actor, &org.id)?
            .into_iter()
            .map(|i| {
                (
                    i.id.to_string(),
                    i.role.as_str().to_owned(),
                    when(st, i.expires_at),
                )
            })
            .collect(),
        new_invitation,
        deleted: st
            .cell
            .deleted_workspaces(actor, &org.id)?
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    when(st, d.deleted_at),
                    d.reason.clone(),
                    git_summary(&d.git),
                )
            })
            .collect(),
        message,
    })
}

/// One line on what the repositories held: "clean", or what would have been lost.
fn git_summary(git: &[crate::domain::entities::GitState]) -> String {
    if git.is_empty() {
        return "no state recorded".into();
    }
    git.iter()
        .map(|g| {
            if g.is_clean() {
                return format!("{}: clean", g.dir);
            }
            let mut parts = Vec::new();
            for (n, what) in [
                (g.uncommitted.len(), "uncommitted"),
                (g.untracked.len(), "untracked"),
                (g.unpushed.len(), "unpushed commits"),
            ] {
                if n > 0 {
                    parts.push(format!("{n} {what}"));
                }
            }
            format!("{}: {}", g.dir, parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn org_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let flash = st.flashes.take(&csrf);
    match org_view(&st, &actor, csrf, flash.invitation, flash.message) {
        Ok(v) => Html(ui::org_page(v)).into_response(),
        Err(e) => error_page(&st, e),
    }
}

/// What a form's answer has to say on the page the browser is sent back to: kept in the
/// cell's memory under the session's CSRF token for a minute, and shown once. Not a cookie:
/// port origins share the dashboard's cookie domain and could plant one.
#[derive(Default)]
pub struct Flashes(
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Flash)>>,
);

#[derive(Default)]
pub struct Flash {
    message: Option<String>,
    /// The message says what went wrong.
    failed: bool,
    /// A new invitation's link (a secret: shown to the owner who made it, once).
    invitation: Option<String>,
}

impl Flashes {
    const KEPT: std::time::Duration = std::time::Duration::from_secs(60);

    fn put(&self, session_csrf: &str, flash: Flash) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (at, _)| at.elapsed() < Self::KEPT);
        m.insert(session_csrf.to_owned(), (std::time::Instant::now(), flash));
    }

    fn take(&self, session_csrf: &str) -> Flash {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(session_csrf)
            .filter(|(at, _)| at.elapsed() < Self::KEPT)
            .map(|(_, f)| f)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct RoleForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    role: String,
}

async fn org_invite(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<RoleForm>,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = st.cell.check_csrf(&actor, Some(&f.csrf)).and_then(|_| {
        let org = owned_org(&st, &actor)?;
        let role = parse_role(&f.role)?;
        st.cell.create_invitation(&actor, &org.id, role)
    });
    match result {
        Ok(inv) if !csrf.is_empty() => {
            st.flashes.put(
                &csrf,
                Flash {
                    invitation: Some(inv.url),
                    ..Flash::default()
                },
            );
            Redirect::to("/org").into_response()
        }
        Ok(inv) => match org_view(&st, &actor, csrf, Some(inv.url), None) {
            Ok(v) => Html(ui::org_page(v)).into_response(),
            Err(e) => error_page(&st, e),
        },
        Err(e) => error_page(&st, e),
    }
}

async fn org_role(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(user): crate::api::Path<String>,
    Form(f): Form<RoleForm>,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = st.cell.check_csrf(&actor, Some(&f.csrf)).and_then(|_| {
        let org = owned_org(&st, &actor)?;
        let role = parse_role(&f.role)?;
        let user =
            crate::domain::UserId::parse(&user).map_err(|_| Error::NotFound { what: "member" })?;
        st.cell.set_role(&actor, &org.id, &user, role)
    });
    back_to_org(
        &st,
        &actor,
        csrf,
        result.map(|_| ()),
        StatusCode::CONFLICT,
        |e| matches!(e, Error::Conflict { .. } | Error::Invalid(_)),
    )
}

/// A submitted form as name → values (checkbox groups repeat a name).
struct FormFields(std::collections::HashMap<String, Vec<String>>);

impl FormFields {
    fn parse(body: &[u8]) -> FormFields {
        let mut m: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (k, v) in url::form_urlencoded::parse(body) {
            m.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        FormFields(m)
    }
    fn text(&self, name: &str) -> &str {
        self.0
            .get(name)
            .and_then(|v| v.first())
            .map_or("", |s| s.trim())
    }
    fn checked(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map_or(&[], |v| v.as_slice())
    }
    /// A whole number, or a field error naming `field` (the API's name for it).
    fn number(&self, name: &str, field: &str) -> Result<u64, Error> {
        self.text(name)
            .parse::<u64>()
            .map_err(|_| crate::domain::FieldError::new(field, "must be a whole number").into())
    }
}

async fn org_policy(
    State(st): State<AppState>,
    headers: HeaderMap,
    axum::extract::RawForm(body): axum::extract::RawForm,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let f = FormFields::parse(&body);
    let min = |m: u64| std::time::Duration::from_secs(m.saturating_mul(60));
    let days = |d: u64| std::time::Duration::from_secs(d.saturating_mul(86_400));
    let result = st
        .cell
        .check_csrf(&actor, Some(f.text("_csrf")))
        .and_then(|_| {
            let org = owned_org(&st, &actor)?;
            let classes = st.cell.list_classes(&actor, &org.id)?;
            let allowed: Vec<crate::domain::ClassId> = classes
                .iter()
                .filter(|c| f.all("allowed").contains(&c.id.to_string()))
                .map(|c| c.id.clone())
                .collect();
            if allowed.is_empty() && !classes.is_empty() {
                return Err(crate::domain::FieldError::new(
                    "allowed_classes",
                    "check at least one",
                )
                .into());
            }
            // Every class checked: all of them, including classes added later.
            let allowed = if allowed.len() == classes.len() {
                Vec::new()
            } else {
                allowed
            };
            let dormancy = match f.text("dormancy_days") {
                "" => None,
                _ => Some(days(f.number("dormancy_days", "dormancy")?)),
            };
            st.cell.update_policy(
                &actor,
                &org.id,
                crate::service::PolicyPatch {
                    default_timeout: Some(min(f.number("default_timeout_min", "default_timeout")?)),
                    max_timeout: Some(min(f.number("max_timeout_min", "max_timeout")?)),
                    users_can_extend: Some(f.checked("users_can_extend")),
                    max_lifetime: Some(min(f
                        .number("max_lifetime_h", "max_lifetime")?
                        .saturating_mul(60))),
                    max_running_per_user: Some(
                        u32::try_from(f.number("max_running_per_user", "max_running_per_user")?)
                            .unwrap_or(u32::MAX),
                    ),
                    outbound_network: Some(f.checked("outbound_network")),
                    allowed_classes: Some(allowed),
                    backup_keep_last: Some(
                        u32::try_from(f.number("backup_keep_last", "backup_keep_last")?)
                            .unwrap_or(u32::MAX),
                    ),
                    backup_keep_within: Some(days(
                        f.number("backup_keep_within_days", "backup_keep_within")?,
                    )),
                    deleted_backup_grace: Some(days(
                        f.number("deleted_backup_grace_days", "deleted_backup_grace")?,
                    )),
                    dormancy: Some(dormancy),
                    backup_home: Some(f.checked("backup_home")),
                },
            )
        });
    back_to_org(
        &st,
        &actor,
        csrf,
        result.map(|_| ()),
        StatusCode::UNPROCESSABLE_ENTITY,
        |e| matches!(e, Error::Invalid(_) | Error::Rule(_)),
    )
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(rename = "_csrf")]
    csrf: String,
}

/// An owner's form on the organization page: signed in, CSRF checked, on the owner's
/// organization; the result shows on the page (refusals `refused` says are the user's, with
/// `status`).
fn org_form(
    st: &AppState,
    headers: &HeaderMap,
    token: &str,
    status: StatusCode,
    refused: impl Fn(&Error) -> bool,
    act: impl FnOnce(&crate::service::Actor, &crate::domain::entities::Org) -> Result<(), Error>,
) -> Response {
    let (actor, csrf) = match signed_in(st, headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = st
        .cell
        .check_csrf(&actor, Some(token))
        .and_then(|_| act(&actor, &owned_org(st, &actor)?));
    back_to_org(st, &actor, csrf, result, status, refused)
}

/// Conflicts, broken rules and things already gone are said on the page.
fn said_on_page(e: &Error) -> bool {
    matches!(
        e,
        Error::Conflict { .. } | Error::Rule(_) | Error::NotFound { .. }
    )
}

/// Removes a member (their workspaces stay theirs to delete or an owner's to clean up).
async fn org_member_remove(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(user): crate::api::Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    org_form(
        &st,
        &headers,
        &f.csrf,
        StatusCode::CONFLICT,
        said_on_page,
        |actor, org| {
            let user = crate::domain::UserId::parse(&user)
                .map_err(|_| Error::NotFound { what: "member" })?;
            st.cell.remove_member(actor, &org.id, &user).map(|_| ())
        },
    )
}

async fn org_invitation_revoke(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    org_form(
        &st,
        &headers,
        &f.csrf,
        StatusCode::NOT_FOUND,
        said_on_page,
        |actor, org| {
            let id = crate::domain::InvitationId::parse(&id)
                .map_err(|_| Error::NotFound { what: "invitation" })?;
            st.cell.revoke_invitation(actor, &org.id, &id)
        },
    )
}

async fn org_class_delete(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    org_form(
        &st,
        &headers,
        &f.csrf,
        StatusCode::CONFLICT,
        said_on_page,
        |actor, _| {
            let id = crate::domain::ClassId::parse(&id)
                .map_err(|_| Error::NotFound { what: "class" })?;
            st.cell.delete_class(actor, &id)
        },
    )
}

#[derive(Deserialize)]
struct ClassForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    name: String,
    cpu_cores: String,
    memory_gib: String,
    disk_gib: String,
    max_processes: String,
    is_default: Option<String>,
}

async fn org_class_new(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ClassForm>,
) -> Response {
    save_class(st, headers, None, f)
}

async fn org_class_edit(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
    Form(f): Form<ClassForm>,
) -> Response {
    save_class(st, headers, Some(id), f)
}

/// Adds a class (no id) or changes one; bad numbers come back on the page naming the field.
fn save_class(st: AppState, headers: HeaderMap, id: Option<String>, f: ClassForm) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let number = |field: &str, text: &str, scale: f64| -> Result<u64, Error> {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| (v * scale).round() as u64)
            .ok_or_else(|| crate::domain::FieldError::new(field, "must be a number").into())
    };
    let result = st.cell.check_csrf(&actor, Some(&f.csrf)).and_then(|_| {
        let gib = (1u64 << 30) as f64;
        let input = crate::service::ClassInput {
            spec: crate::domain::ClassSpec {
                name: f.name.trim().to_owned(),
                cpu_millis: u32::try_from(number("cpu_millis", &f.cpu_cores, 1000.0)?)
                    .unwrap_or(u32::MAX),
                memory_bytes: number("memory_bytes", &f.memory_gib, gib)?,
                disk_bytes: number("disk_bytes", &f.disk_gib, gib)?,
                max_processes: u32::try_from(number("max_processes", &f.max_processes, 1.0)?)
                    .unwrap_or(u32::MAX),
            },
            is_default: f.is_default.is_some(),
        };
        match &id {
            Some(id) => {
                let cid = crate::domain::ClassId::parse(id)
                    .map_err(|_| Error::NotFound { what: "class" })?;
                st.cell.update_class(&actor, &cid, input).map(|_| ())
            }
            None => {
                let org = owned_org(&st, &actor)?;
                st.cell.create_class(&actor, &org.id, input).map(|_| ())
            }
        }
    });
    back_to_org(
        &st,
        &actor,
        csrf,
        result.map(|_| ()),
        StatusCode::UNPROCESSABLE_ENTITY,
        |e| {
            matches!(
                e,
                Error::Invalid(_) | Error::Rule(_) | Error::Conflict { .. }
            )
        },
    )
}

/// "1.2 GiB (database 3.0 MiB, workspace disks 800 MiB, …); 40.0 GiB free of 100.0 GiB".
fn usage_line(u: &crate::service::DataUsage) -> String {
    let parts = u
        .parts
        .iter()
        .map(|(name, b)| format!("{name} {}", crate::human::bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = format!(
        "{}{} ({parts})",
        if u.partial { "at least " } else { "" },
        crate::human::bytes(u.total)
    );
    if u.filesystem_bytes > 0 {
        line += &format!(
            "; {} free of {} on its filesystem",
            crate::human::bytes(u.filesystem_free),
            crate::human::bytes(u.filesystem_bytes)
        );
    }
    line
}

async fn admin_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let facts = match st.cell.admin_facts(&actor) {
        Ok(f) => f,
        Err(e) => return error_page(&st, e),
    };
    let uptime = (st.cell.now() - facts.started_at).whole_seconds().max(0) as u64;
    let facts_rows = vec![
        ("Version".to_string(), facts.version.to_string()),
        (
            "Uptime".to_string(),
            crate::human::duration(std::time::Duration::from_secs(uptime)),
        ),
        ("Data directory".to_string(), facts.data_dir),
        ("Data directory size".to_string(), usage_line(&facts.usage)),
        ("Workspaces".to_string(), facts.workspaces.to_string()),
        ("Runtime".to_string(), facts.runtime),
    ];
    let loops = st
        .workers
        .list()
        .iter()
        .map(|w| ui::LoopRow {
            name: w.name.to_string(),
            state: w.state.as_str().to_string(),
            last_run: w.last_run.map(|t| when(&st, t)),
            next_run: w.next_run.map(|t| when(&st, t)),
            last_error: w.last_error.clone().unwrap_or_default(),
        })
        .collect();
    let mut sections = vec![ui::AdminSection {
        id: "cell".into(),
        title: "Cell".into(),
        facts: facts_rows,
    }];
    match st.cell.backup_overview(&actor) {
        Ok(facts) => sections.push(ui::AdminSection {
            id: "backups".into(),
            title: "Backups".into(),
            facts,
        }),
        Err(e) => return error_page(&st, e),
    }
    sections.push(ui::AdminSection {
        id: "tls".into(),
        title: "TLS certificates".into(),
        facts: certificate_facts(&st),
    });
    let flash = st.flashes.take(&csrf);
    let updates = match st.cell.updates_for(&actor) {
        Ok(u) => updates_view(&st, u, flash),
        Err(e) => return error_page(&st, e),
    };
    Html(ui::admin_page(
        viewer(&st, &actor, &csrf),
        sections,
        updates,
        loops,
    ))
    .into_response()
}

/// The largest bundle the updates page takes (a binary and workspace images).
const MAX_BUNDLE: usize = 8 << 30;

fn updates_view(
    st: &AppState,
    u: crate::service::updates::UpdateStatus,
    flash: Flash,
) -> ui::UpdatesView {
    ui::UpdatesView {
        running: u.running.to_string(),
        has_channel: u.channel.is_some(),
        channel: match &u.channel {
            Some(c) => format!(
                "{c} (checked every {})",
                humantime::format_duration(st.cell.config().update.check_interval)
            ),
            None => "none: this cell updates from bundles (upload one below, or `devcell bundle import`)".into(),
        },
        newest: u.newest.as_ref().map(|n| {
            format!(
                "{} ({}, {}) from {}, seen {}",
                n.version,
                n.channel,
                n.kind,
                n.source,
                when(st, n.seen_at).text
            )
        }),
        waiting: u
            .waiting_approval
            .then(|| u.newest.as_ref().map(|n| n.version.to_string()))
            .flatten(),
        message: flash.message.map(|m| (!flash.failed, m)),
        history: u
            .attempts
            .into_iter()
            .map(|a| ui::UpdateRow {
                started: when(st, a.started_at),
                versions: format!("{} → {}", a.from, a.to),
                outcome: a.outcome.as_str().to_string(),
                message: a.message,
            })
            .collect(),
    }
}

/// Back to the updates section with what the action did; refusals of the caller themselves
/// (not signed in, not an administrator, a stale form) get the error page.
fn updates_done(st: &AppState, csrf: &str, result: Result<String, Error>) -> Response {
    let flash = match result {
        Ok(m) => Flash {
            message: Some(m),
            ..Flash::default()
        },
        Err(e @ (Error::Forbidden(_) | Error::Csrf | Error::Unauthenticated)) => {
            return error_page(st, e);
        }
        Err(e) => Flash {
            message: Some(match &e {
                Error::Conflict { code, message } => format!("{message} ({code})"),
                e => e.to_string(),
            }),
            failed: true,
            ..Flash::default()
        },
    };
    st.flashes.put(csrf, flash);
    Redirect::to("/admin#updates").into_response()
}

fn applying(a: &crate::domain::entities::UpdateAttempt) -> String {
    format!(
        "devcell {} is being applied: the cell hands over to it without dropping a connection; this section follows it as it goes.",
        a.to
    )
}

#[derive(Deserialize)]
struct ApproveForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    version: String,
}

async fn admin_update_approve(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ApproveForm>,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = st
        .cell
        .check_csrf(&actor, Some(&f.csrf))
        .and_then(|_| st.cell.approve_and_apply(&actor, &f.version))
        .map(|a| applying(&a));
    updates_done(&st, &csrf, result)
}

async fn admin_update_check(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = match st.cell.check_csrf(&actor, Some(&f.csrf)) {
        Ok(()) => st.cell.check_now(&actor).await.map(|c| c.note),
        Err(e) => Err(e),
    };
    updates_done(&st, &csrf, result)
}

/// An uploaded bundle: the form's CSRF token must come first, then the file, written under
/// `DATA/updates` as it arrives and checked whole before anything changes.
async fn admin_update_bundle(
    State(st): State<AppState>,
    headers: HeaderMap,
    mut form: axum::extract::Multipart,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let bad = |m: String| Error::Conflict {
        code: "bad_upload",
        message: m,
    };
    let result = async {
        let first = form
            .next_field()
            .await
            .map_err(|e| bad(format!("the upload is not a form: {e}")))?;
        let token = match first {
            Some(f) if f.name() == Some("_csrf") => f.text().await.ok(),
            _ => None,
        };
        st.cell.check_csrf(&actor, token.as_deref())?;
        let Some(mut file) = form
            .next_field()
            .await
            .map_err(|e| bad(format!("the upload broke off: {e}")))?
            .filter(|f| f.name() == Some("bundle"))
        else {
            return Err(bad("choose a bundle file to upload".into()));
        };
        let (out, path) = st.cell.upload_file()?;
        let mut out = tokio::fs::File::from_std(out);
        let written = async {
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = file
                .chunk()
                .await
                .map_err(|e| bad(format!("the upload broke off: {e}")))?
            {
                out.write_all(&chunk)
                    .await
                    .map_err(|e| Error::Internal(format!("writing the upload: {e}")))?;
            }
            out.sync_all()
                .await
                .map_err(|e| Error::Internal(format!("writing the upload: {e}")))
        }
        .await;
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        st.cell.apply_uploaded_bundle(&actor, path).await
    }
    .await
    .map(|a| applying(&a));
    updates_done(&st, &csrf, result)
}

/// One fact per certificate served: its names, then where it comes from, its expiry, the next
/// renewal and the last error.
fn certificate_facts(st: &AppState) -> Vec<(String, String)> {
    let status = st.cell.certificate_status();
    if status.is_empty() {
        return vec![(
            "HTTPS".into(),
            "off: the cell speaks plain HTTP. Set an https server.public_url for a certificate by ACME, or tls.cert_file and tls.key_file".into(),
        )];
    }
    status
        .into_iter()
        .map(|s| {
            let mut parts = vec![match s.source {
                crate::service::CertSource::Acme => "by ACME".to_string(),
                crate::service::CertSource::Files => "from tls.cert_file".to_string(),
                crate::service::CertSource::SelfSigned => "self-signed (browsers warn)".to_string(),
            }];
            if let Some(issuer) = &s.issuer
                && s.source != crate::service::CertSource::SelfSigned
            {
                parts.push(format!("issuer {issuer}"));
            }
            if let Some(t) = s.not_after
                && s.source != crate::service::CertSource::SelfSigned
            {
                parts.push(format!("expires {}", when(st, t).text));
            }
            if let Some(t) = s.next_renewal {
                parts.push(format!("next renewal {}", when(st, t).text));
            }
            if let Some(e) = &s.last_error {
                parts.push(format!("last error ({} in a row): {e}", s.failures));
            }
            (s.names.join(", "), parts.join("; "))
        })
        .collect()
}

/// A moment as every page shows it (`ui::When`): "2026-12-05 12:54 UTC (3 min ago)"; the
/// page's script renders the same in the viewer's time zone.
fn when(st: &AppState, t: time::OffsetDateTime) -> ui::When {
    ui::When {
        iso: crate::api::dto::rfc3339(t),
        text: crate::human::moment(t, st.cell.now()),
    }
}

/// The certificate warnings everyone sees: a self-signed certificate (browsers warn about it,
/// and users should know it is not an attack). Administrators see every warning.
fn public_warnings(st: &AppState) -> Vec<String> {
    certificate_warnings(st, false)
}

fn certificate_warnings(st: &AppState, admin: bool) -> Vec<String> {
    let now = st.cell.now();
    st.cell
        .certificate_status()
        .iter()
        .filter_map(|s| {
            if admin {
                s.warning(now)
                    .map(|w| format!("{w} (see Admin → TLS certificates or `devcell cert status`)"))
            } else {
                s.public_warning()
            }
        })
        .collect()
}

/// Who is looking, for the header: administrators see Admin, owners their organization.
fn viewer(st: &AppState, actor: &crate::service::Actor, csrf: &str) -> ui::Viewer {
    let admin = st.cell.require_admin(actor).is_ok();
    ui::Viewer {
        email: actor.user.email.clone(),
        csrf: csrf.to_owned(),
        warnings: certificate_warnings(st, admin),
        admin,
        owner: st
            .cell
            .list_orgs(actor)
            .map(|orgs| orgs.iter().any(|(_, r)| *r == crate::domain::Role::Owner))
            .unwrap_or(false),
    }
}

async fn confirm_delete(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
) -> Response {
    let (actor, csrf) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Ok(wsid) = crate::domain::WorkspaceId::parse(&id) else {
        return error_page(&st, Error::NotFound { what: "workspace" });
    };
    let state = match st.cell.git_state_now(&actor, &wsid).await {
        Ok(s) => s,
        Err(e) => return error_page(&st, e),
    };
    match st.cell.get_workspace(&actor, &wsid) {
        Ok(w) => {
            let git = git_views(&state);
            Html(ui::confirm_delete_page(
                viewer(&st, &actor, &csrf),
                w.id.to_string(),
                w.name.clone(),
                w.lifecycle.is_active(),
                git,
            ))
            .into_response()
        }
        Err(e) => error_page(&st, e),
    }
}

async fn delete_submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (actor, _) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = st.cell.check_csrf(&actor, Some(&f.csrf)).and_then(|_| {
        let wsid = workspace_id(&id)?;
        st.cell.delete_workspace(&actor, &wsid)
    });
    match result {
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => error_page(&st, e),
    }
}

async fn logout_all(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Ok(actor) = crate::api::auth_identify(&st.cell, &headers) {
        if st.cell.check_csrf(&actor, Some(&f.csrf)).is_err() {
            return error_page(&st, Error::Csrf);
        }
        let _ = st.cell.logout_everywhere(&actor);
    }
    (
        [(header::SET_COOKIE, session_cookie(&st.cell, None))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ShareForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    visibility: String,
}

async fn share_port_form(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path((id, port)): crate::api::Path<(String, u16)>,
    Form(f): Form<ShareForm>,
) -> Response {
    let (actor, _) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = st.cell.check_csrf(&actor, Some(&f.csrf)).and_then(|_| {
        let wsid = workspace_id(&id)?;
        let v = crate::domain::entities::Visibility::parse(&f.visibility).ok_or_else(|| {
            crate::domain::FieldError::new("visibility", "private, org or public")
        })?;
        st.cell.share_port(&actor, &wsid, port, v)
    });
    match result {
        Ok(()) => Redirect::to(&format!("/workspaces/{id}")).into_response(),
        Err(e) => workspace_error(&st, e, &id),
    }
}

#[derive(Deserialize)]
struct TimeoutForm {
    #[serde(rename = "_csrf")]
    csrf: String,
    timeout_min: u64,
}

async fn timeout_form(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path(id): crate::api::Path<String>,
    Form(f): Form<TimeoutForm>,
) -> Response {
    let (actor, _) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = st.cell.check_csrf(&actor, Some(&f.csrf)).and_then(|_| {
        let wsid = workspace_id(&id)?;
        let patch = crate::service::WorkspacePatch {
            timeout: Some(std::time::Duration::from_secs(
                f.timeout_min.saturating_mul(60),
            )),
            ..Default::default()
        };
        st.cell.update_workspace(&actor, &wsid, patch)
    });
    match result {
        Ok(_) => Redirect::to(&format!("/workspaces/{id}")).into_response(),
        Err(e) => workspace_error(&st, e, &id),
    }
}

async fn restore_form(
    State(st): State<AppState>,
    headers: HeaderMap,
    crate::api::Path((id, snapshot)): crate::api::Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (actor, _) = match signed_in(&st, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let result = match st
        .cell
        .check_csrf(&actor, Some(&f.csrf))
        .and_then(|_| workspace_id(&id))
    {
        Ok(wsid) => st.cell.restore_backup(&actor, &wsid, &snapshot).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Redirect::to(&format!("/workspaces/{id}")).into_response(),
        Err(e) => workspace_error(&st, e, &id),
    }
}

/// After an organization form: back to the page; for refused input, the page again with the
/// message and `status`; any other failure, an error page.
fn back_to_org(
    st: &AppState,
    actor: &crate::service::Actor,
    csrf: String,
    result: Result<(), Error>,
    status: StatusCode,
    refused: impl Fn(&Error) -> bool,
) -> Response {
    match result {
        Ok(()) => Redirect::to("/org").into_response(),
        // Said on the organization page, which the browser goes back to.
        Err(e) if refused(&e) && !csrf.is_empty() => {
            st.flashes.put(
                &csrf,
                Flash {
                    message: Some(org_message(&e)),
                    ..Flash::default()
                },
            );
            Redirect::to("/org").into_response()
        }
        Err(e) if refused(&e) => match org_view(st, actor, csrf, None, Some(org_message(&e))) {
            Ok(v) => (status, Html(ui::org_page(v))).into_response(),
            Err(e) => error_page(st, e),
        },
        Err(e) => error_page(st, e),
    }
}

/// A refusal as the organization page says it: a field by its label on the page, not by the
/// API's name for it.
fn org_message(e: &Error) -> String {
    let Error::Invalid(f) = e else {
        return e.to_string();
    };
    let label = match f.field.as_str() {
        "allowed_classes" => "Classes members may use",
        "default_timeout" => "Inactivity timeout",
        "max_timeout" => "Longest timeout members may choose",
        "max_lifetime" => "Maximum lifetime",
        "max_running_per_user" => "Running workspaces per member",
        "backup_keep_last" => "Backups always kept per workspace",
        "backup_keep_within" => "Also keep backups younger than",
        "deleted_backup_grace" => "Backups of deleted workspaces stay for",
        "dormancy" => "Delete workspaces stopped for longer than",
        "name" => "Class name",
        "cpu_millis" => "CPU cores",
        "memory_bytes" => "Memory",
        "disk_bytes" => "Disk",
        "max_processes" => "Processes",
        "role" => "Role",
        _ => return e.to_string(),
    };
    format!("{label}: {}", f.reason)
}

/// The page form of a workspace id: an unknown one is simply not found.
fn workspace_id(id: &str) -> Result<crate::domain::WorkspaceId, Error> {
    crate::domain::WorkspaceId::parse(id).map_err(|_| Error::NotFound { what: "workspace" })
}

fn parse_role(role: &str) -> Result<crate::domain::Role, Error> {
    crate::domain::Role::parse(role)
        .ok_or_else(|| crate::domain::FieldError::new("role", "owner or member").into())
}

/// Recorded git state as the pages show it.
fn git_views(git: &[crate::domain::entities::GitState]) -> Vec<ui::GitView> {
    git.iter()
        .map(|g| ui::GitView {
            dir: g.dir.clone(),
            branch: g.branch.clone().unwrap_or_default(),
            uncommitted: g.uncommitted.clone(),
            untracked: g.untracked.clone(),
            unpushed: g.unpushed.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {

    /// A page and the API answer a failure with the same status; what the API hides (an
    /// internal error's detail) the page hides too.
    #[tokio::test]
    async fn pages_classify_failures_as_the_api_does() {
        use super::{Error, error_page};
        use axum::response::IntoResponse;
        let cases = || {
            [
                Error::NotFound { what: "workspace" },
                Error::Forbidden("owners only".into()),
                Error::Conflict {
                    code: "name_taken",
                    message: "the name is taken".into(),
                },
                Error::Unavailable {
                    message: "the backup store is unreachable".into(),
                },
                Error::Internal("disk I/O error at /var/secret".into()),
            ]
        };
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let store = crate::store::Store::open(&dir.path().join("db")).unwrap();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let st = crate::api::AppState {
            cell: crate::service::Cell::new(
                store,
                config,
                std::sync::Arc::new(crate::service::SystemClock),
            ),
            workers: crate::workers::Supervisor::new(metrics.clone()).statuses(),
            metrics,
            ready: Default::default(),
            flashes: Default::default(),
        };
        for (for_api, for_page) in cases().into_iter().zip(cases()) {
            let api = crate::api::ApiError::from(for_api).into_response();
            let page = error_page(&st, for_page);
            assert_eq!(page.status(), api.status());
            let body = axum::body::to_bytes(page.into_body(), 1 << 20)
                .await
                .unwrap();
            let body = String::from_utf8_lossy(&body);
            assert!(
                !body.contains("/var/secret"),
                "an internal error's detail stays in the log: {body}"
            );
        }
    }

    #[test]
    fn time_left_reads_like_a_person_would_say_it() {
        let m = time::Duration::minutes;
        assert_eq!(crate::human::time_left(m(27)), "in 27 min");
        assert_eq!(
            crate::human::time_left(time::Duration::seconds(30)),
            "in 1 min"
        );
        assert_eq!(crate::human::time_left(m(120)), "in 2 h");
        assert_eq!(crate::human::time_left(m(185)), "in 3 h 5 min");
        assert_eq!(crate::human::time_left(time::Duration::seconds(-5)), "now");
    }
}
