//! The JSON API under `/api/v1`: routing, authentication, request extraction and the OpenAPI
//! document. Handlers translate HTTP to [`crate::service`] calls and back, nothing more.

mod auth;
mod credentials;
pub mod dto;
pub mod error;
mod openapi;
mod ops;
mod orgs;
mod terminals;
mod workspaces;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use openapi::Constraints;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

pub use auth::{
    Auth, SESSION_COOKIE, SESSION_COOKIE_SECURE, cookie_values, identify as auth_identify,
    session_cookie, session_cookie_name,
};
pub use error::{ApiError, ApiResult, ErrorBody};
pub use terminals::ACCESS_ENDED;

use crate::metrics::Metrics;
use crate::service::Cell;
use crate::workers::StatusBoard;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub cell: Cell,
    pub metrics: Arc<Metrics>,
    pub workers: StatusBoard,
    /// Set once startup is complete; `/readyz` reports it.
    pub ready: Arc<AtomicBool>,
    /// What dashboard forms have to say on the page they send the browser back to.
    pub flashes: Arc<crate::web::Flashes>,
}

/// A JSON body whose rejections use the API's error format.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", r.body_text())
    }
}

/// Every route under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(auth::routes())
        .merge(orgs::routes())
        .merge(workspaces::routes())
        .merge(terminals::routes())
        .merge(credentials::routes())
        .merge(ops::api_routes())
        .route("/api/v1/openapi.json", axum::routing::get(openapi_json))
}

/// Liveness, readiness and metrics, outside `/api`.
pub fn ops_router() -> Router<AppState> {
    ops::routes()
}

/// The OpenAPI document, with this cell's own limits on class sizes.
async fn openapi_json(
    axum::extract::State(st): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    openapi::class_limits(&mut doc, &st.cell.class_limits());
    axum::Json(doc)
}

/// Adds to every operation the error statuses the extractors and the authentication give it,
/// so the document lists every status an operation can really answer.
struct Statuses;

impl Statuses {
    fn error(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into()
    }
}

impl utoipa::Modify for Statuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::security::SecurityRequirement;
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                (&mut item.get, false),
                (&mut item.head, false),
                (&mut item.options, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.patch, true),
                (&mut item.delete, true),
            ];
            for (op, mutating) in ops {
                let Some(op) = op.as_mut() else { continue };
                // `security(())` marks an operation anonymous callers may use; one that also
                // lists the schemes (invitations) takes a credential when there is one.
                let (anonymous, credentials) = match &op.security {
                    None => (false, true),
                    Some(reqs) => (
                        reqs.iter().any(|r| *r == SecurityRequirement::default()),
                        reqs.iter().any(|r| *r != SecurityRequirement::default()),
                    ),
                };
                let params = op.parameters.as_deref().unwrap_or_default();
                let in_path = params
                    .iter()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Path));
                let in_query = params
                    .iter()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query));
                let body = op.request_body.is_some();
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Self::error(description));
                };
                if !anonymous {
                    add("401", "`unauthenticated`: no valid token or session");
                }
                if credentials && mutating {
                    add(
                        "403",
                        "`csrf`: a session caller without its X-CSRF-Token header",
                    );
                }
                if body {
                    add("400", "`malformed_json`: the body is not JSON");
                    add(
                        "413",
                        "`body_too_large`: the body is larger than the cell accepts",
                    );
                    add(
                        "415",
                        "`unsupported_media_type`: the body is not sent as application/json",
                    );
                    add(
                        "422",
                        "`invalid_field`: a field is missing, unknown or invalid",
                    );
                }
                if in_path {
                    add(
                        "404",
                        "`not_found`: no such resource, or not visible to the caller",
                    );
                }
                if in_query {
                    add("422", "`invalid_field`: a query parameter is invalid");
                }
            }
        }
    }
}

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`devcell admin token`, or POST /api/v1/tokens)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "Session cookie from POST /api/v1/auth/login; mutations also need the X-CSRF-Token header",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "devcell API", description = "The JSON API of a devcell cell. Errors are `{code, message}` with a stable code."),
    modifiers(&Security, &Statuses, &Constraints),
    security(("token" = []), ("session" = [])),
    paths(
        auth::login, auth::login_link, auth::logout, auth::logout_all, auth::me, auth::update_me, auth::change_password,
        auth::list_tokens, auth::create_token, auth::revoke_token,
        orgs::list_orgs, orgs::create_org, orgs::get_org, orgs::update_org,
        orgs::list_members, orgs::set_role, orgs::remove_member,
        orgs::list_invitations, orgs::create_invitation, orgs::revoke_invitation, orgs::accept_invitation,
        orgs::list_classes, orgs::create_class, orgs::update_class, orgs::delete_class,
        orgs::get_policy, orgs::update_policy, orgs::list_deleted_workspaces,
        workspaces::list_workspaces, workspaces::create_workspace, workspaces::get_workspace, workspaces::workspace_events,
        workspaces::update_workspace, workspaces::delete_workspace, workspaces::transfer_workspace,
        workspaces::start_workspace, workspaces::stop_workspace, workspaces::restart_workspace, workspaces::exec, workspaces::tasks,
        workspaces::ports, workspaces::share_port,
        workspaces::backup_now, workspaces::restore_backup, workspaces::backup_archive,
        credentials::list_git_credentials, credentials::create_git_credential, credentials::delete_git_credential,
        terminals::list_terminals, terminals::create_terminal, terminals::attach_terminal,
        ops::workers, ops::cell_facts, ops::list_users, ops::update_user,
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;
