//! Organization routes: the organization itself, members, invitations, classes and policy.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};

use super::ErrorBody;
use super::auth::{identify, session_cookie};
use super::dto::*;
use super::{ApiError, ApiResult, AppState, Auth, Json, Path};
use crate::domain::{ClassId, ClassSpec, FieldError, InvitationId, OrgId, Role, UserId};
use crate::service::{ClassInput, PolicyPatch, Signup};

fn org_id(s: &str) -> Result<OrgId, ApiError> {
    OrgId::parse(s).map_err(|_| ApiError::not_found("organization"))
}

fn role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| ApiError::field("role", "role must be `owner` or `member`"))
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/orgs", get(list_orgs).post(create_org))
        .route("/api/v1/orgs/{org}", get(get_org).patch(update_org))
        .route("/api/v1/orgs/{org}/members", get(list_members))
        .route(
            "/api/v1/orgs/{org}/members/{user}",
            patch(set_role).delete(remove_member),
        )
        .route(
            "/api/v1/orgs/{org}/invitations",
            get(list_invitations).post(create_invitation),
        )
        .route(
            "/api/v1/orgs/{org}/invitations/{id}",
            delete(revoke_invitation),
        )
        .route("/api/v1/invitations/accept", post(accept_invitation))
        .route(
            "/api/v1/orgs/{org}/classes",
            get(list_classes).post(create_class),
        )
        .route(
            "/api/v1/classes/{id}",
            put(update_class).delete(delete_class),
        )
        .route(
            "/api/v1/orgs/{org}/policy",
            get(get_policy).patch(update_policy),
        )
        .route(
            "/api/v1/orgs/{org}/deleted-workspaces",
            get(list_deleted_workspaces),
        )
}

/// Deleted workspaces, newest first, with the git state each had when it went (owners).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/deleted-workspaces", tag = "orgs", params(("org" = String, Path)),
    responses((status = 200, body = [DeletedWorkspaceDto]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_deleted_workspaces(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<Vec<DeletedWorkspaceDto>>> {
    Ok(Json(
        st.cell
            .deleted_workspaces(&a, &org_id(&org)?)?
            .iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Organizations the caller belongs to.
#[utoipa::path(get, path = "/api/v1/orgs", tag = "orgs", responses((status = 200, body = [OrgDto]), (status = 401, body = ErrorBody)))]
pub(super) async fn list_orgs(
    State(st): State<AppState>,
    Auth(a): Auth,
) -> ApiResult<Json<Vec<OrgDto>>> {
    Ok(Json(
        st.cell
            .list_orgs(&a)?
            .iter()
            .map(|(o, r)| OrgDto::new(o, *r))
            .collect(),
    ))
}

/// Create an organization; the caller becomes its owner.
#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = OrgInput,
    responses((status = 201, body = OrgDto), (status = 422, body = ErrorBody)))]
pub(super) async fn create_org(
    State(st): State<AppState>,
    Auth(a): Auth,
    Json(req): Json<OrgInput>,
) -> ApiResult<(StatusCode, Json<OrgDto>)> {
    let o = st.cell.create_org(&a, &req.name)?;
    Ok((StatusCode::CREATED, Json(OrgDto::new(&o, Role::Owner))))
}

/// One organization (members and owners).
#[utoipa::path(get, path = "/api/v1/orgs/{org}", tag = "orgs", params(("org" = String, Path)),
    responses((status = 200, body = OrgDto), (status = 404, body = ErrorBody)))]
pub(super) async fn get_org(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<OrgDto>> {
    let (o, r) = st.cell.get_org(&a, &org_id(&org)?)?;
    Ok(Json(OrgDto::new(&o, r)))
}

/// Rename an organization (owners).
#[utoipa::path(patch, path = "/api/v1/orgs/{org}", tag = "orgs", params(("org" = String, Path)), request_body = OrgInput,
    responses((status = 200, body = OrgDto), (status = 403, body = ErrorBody)))]
pub(super) async fn update_org(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
    Json(req): Json<OrgInput>,
) -> ApiResult<Json<OrgDto>> {
    let o = st.cell.rename_org(&a, &org_id(&org)?, &req.name)?;
    Ok(Json(OrgDto::new(&o, Role::Owner)))
}

/// Members and their roles (owners).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/members", tag = "orgs", params(("org" = String, Path)),
    responses((status = 200, body = [MemberDto]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_members(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<Vec<MemberDto>>> {
    Ok(Json(
        st.cell
            .list_members(&a, &org_id(&org)?)?
            .iter()
            .map(|(m, u)| MemberDto::new(m, u))
            .collect(),
    ))
}

/// Change a member's role (owners; an organization keeps at least one owner).
#[utoipa::path(patch, path = "/api/v1/orgs/{org}/members/{user}", tag = "orgs", params(("org" = String, Path), ("user" = String, Path)),
    request_body = RoleInput, responses((status = 200, body = MemberDto), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn set_role(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path((org, user)): Path<(String, String)>,
    Json(req): Json<RoleInput>,
) -> ApiResult<Json<MemberDto>> {
    let org = org_id(&org)?;
    let user = UserId::parse(&user).map_err(|_| ApiError::not_found("member"))?;
    let m = st.cell.set_role(&a, &org, &user, role(&req.role)?)?;
    let u = st
        .cell
        .store()
        .read(|tx| crate::store::Reader::user(tx, &user))
        .map_err(crate::service::Error::from)?
        .ok_or_else(|| ApiError::not_found("member"))?;
    Ok(Json(MemberDto::new(&m, &u)))
}

/// Remove a member (owners).
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/members/{user}", tag = "orgs", params(("org" = String, Path), ("user" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn remove_member(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path((org, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = UserId::parse(&user).map_err(|_| ApiError::not_found("member"))?;
    st.cell.remove_member(&a, &org_id(&org)?, &user)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Open invitations (owners).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/invitations", tag = "orgs", params(("org" = String, Path)),
    responses((status = 200, body = [InvitationDto]), (status = 403, body = ErrorBody)))]
pub(super) async fn list_invitations(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<Vec<InvitationDto>>> {
    Ok(Json(
        st.cell
            .list_invitations(&a, &org_id(&org)?)?
            .iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Create a one-time invitation link (owners).
#[utoipa::path(post, path = "/api/v1/orgs/{org}/invitations", tag = "orgs", params(("org" = String, Path)), request_body = RoleInput,
    responses((status = 201, body = CreatedInvitation), (status = 403, body = ErrorBody)))]
pub(super) async fn create_invitation(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
    Json(req): Json<RoleInput>,
) -> ApiResult<(StatusCode, Json<CreatedInvitation>)> {
    let out = st
        .cell
        .create_invitation(&a, &org_id(&org)?, role(&req.role)?)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedInvitation {
            invitation: (&out.invitation).into(),
            url: out.url,
        }),
    ))
}

/// Revoke an invitation (owners).
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/invitations/{id}", tag = "orgs", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_invitation(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = InvitationId::parse(&id).map_err(|_| ApiError::not_found("invitation"))?;
    st.cell.revoke_invitation(&a, &org_id(&org)?, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Use an invitation: join as the signed-in user, or create an account with email, name and password.
#[utoipa::path(post, path = "/api/v1/invitations/accept", tag = "orgs", security((), ("token" = []), ("session" = [])), request_body = AcceptInvitation,
    responses((status = 200, body = AcceptedInvitation), (status = 410, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn accept_invitation(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Json(req): Json<AcceptInvitation>,
) -> ApiResult<Response> {
    let actor = identify(&st.cell, &headers).ok();
    if let Some(a) = &actor {
        st.cell.check_csrf(
            a,
            headers
                .get(super::auth::CSRF_HEADER)
                .and_then(|v| v.to_str().ok()),
        )?;
    }
    let signup = match (&actor, req.email, req.name, req.password) {
        (None, Some(email), name, Some(password)) => {
            let name = name.unwrap_or_else(|| email.split('@').next().unwrap_or("").to_owned());
            Some(Signup {
                email,
                name,
                password,
            })
        }
        (None, _, _, _) => {
            return Err(ApiError::field(
                "email",
                "sign in, or give email and password for a new account",
            ));
        }
        _ => None,
    };
    let (m, session) = st
        .cell
        .accept_invitation(&req.token, actor.as_ref(), signup)
        .await?;
    let body = AcceptedInvitation {
        org_id: m.org.to_string(),
        role: m.role.as_str().into(),
        csrf_token: session.as_ref().map(|s| s.session.csrf.clone()),
    };
    let mut res = axum::Json(body).into_response();
    if let Some(s) = session {
        res.headers_mut().insert(
            header::SET_COOKIE,
            session_cookie(&st.cell, Some(&s.secret)),
        );
    }
    Ok(res)
}

/// Workspace classes: owners see all, members those the policy allows.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/classes", tag = "classes", params(("org" = String, Path)),
    responses((status = 200, body = [ClassDto]), (status = 404, body = ErrorBody)))]
pub(super) async fn list_classes(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<Vec<ClassDto>>> {
    Ok(Json(
        st.cell
            .list_classes(&a, &org_id(&org)?)?
            .iter()
            .map(Into::into)
            .collect(),
    ))
}

fn class_input(d: ClassInputDto) -> ClassInput {
    ClassInput {
        spec: ClassSpec {
            name: d.name,
            cpu_millis: d.cpu_millis,
            memory_bytes: d.memory_bytes,
            disk_bytes: d.disk_bytes,
            max_processes: d.max_processes,
        },
        is_default: d.is_default,
    }
}

/// Add a workspace class (owners).
#[utoipa::path(post, path = "/api/v1/orgs/{org}/classes", tag = "classes", params(("org" = String, Path)), request_body = ClassInputDto,
    responses((status = 201, body = ClassDto), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "`name_taken`"), (status = 422, body = ErrorBody)))]
pub(super) async fn create_class(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
    Json(req): Json<ClassInputDto>,
) -> ApiResult<(StatusCode, Json<ClassDto>)> {
    let c = st.cell.create_class(&a, &org_id(&org)?, class_input(req))?;
    Ok((StatusCode::CREATED, Json((&c).into())))
}

/// Replace a workspace class (owners).
#[utoipa::path(put, path = "/api/v1/classes/{id}", tag = "classes", params(("id" = String, Path)), request_body = ClassInputDto,
    responses((status = 200, body = ClassDto), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "`name_taken`"), (status = 422, body = ErrorBody)))]
pub(super) async fn update_class(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    Json(req): Json<ClassInputDto>,
) -> ApiResult<Json<ClassDto>> {
    let id = ClassId::parse(&id).map_err(|_| ApiError::not_found("class"))?;
    Ok(Json(
        (&st.cell.update_class(&a, &id, class_input(req))?).into(),
    ))
}

/// Delete a workspace class no workspace uses (owners).
#[utoipa::path(delete, path = "/api/v1/classes/{id}", tag = "classes", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_class(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = ClassId::parse(&id).map_err(|_| ApiError::not_found("class"))?;
    st.cell.delete_class(&a, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The organization's policy (owners).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/policy", tag = "orgs", params(("org" = String, Path)),
    responses((status = 200, body = PolicyDto), (status = 403, body = ErrorBody)))]
pub(super) async fn get_policy(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
) -> ApiResult<Json<PolicyDto>> {
    Ok(Json((&st.cell.get_policy(&a, &org_id(&org)?)?).into()))
}

/// Change the organization's policy (owners); absent fields keep their value.
#[utoipa::path(patch, path = "/api/v1/orgs/{org}/policy", tag = "orgs", params(("org" = String, Path)), request_body = PolicyPatchDto,
    responses((status = 200, body = PolicyDto), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`policy_conflict` (settings at odds with each other) or `unknown_class`"), (status = 422, body = ErrorBody)))]
pub(super) async fn update_policy(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(org): Path<String>,
    Json(p): Json<PolicyPatchDto>,
) -> ApiResult<Json<PolicyDto>> {
    let secs = |v: Option<u64>| v.map(Duration::from_secs);
    let allowed = match p.allowed_classes {
        Some(list) => Some(
            list.iter()
                .map(|c| {
                    ClassId::parse(c).map_err(|_| {
                        FieldError::new("allowed_classes", format!("{c} is not a class id"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(crate::service::Error::from)?,
        ),
        None => None,
    };
    let patch = PolicyPatch {
        default_timeout: secs(p.default_timeout_s),
        max_timeout: secs(p.max_timeout_s),
        users_can_extend: p.users_can_extend,
        max_lifetime: secs(p.max_lifetime_s),
        allowed_classes: allowed,
        max_running_per_user: p.max_running_per_user,
        backup_keep_last: p.backup_keep_last,
        backup_keep_within: secs(p.backup_keep_within_s),
        deleted_backup_grace: secs(p.deleted_backup_grace_s),
        dormancy: p.dormancy_s.map(|d| {
            if d == 0 {
                None
            } else {
                Some(Duration::from_secs(d))
            }
        }),
        outbound_network: p.outbound_network,
        backup_home: p.backup_home,
    };
    Ok(Json(
        (&st.cell.update_policy(&a, &org_id(&org)?, patch)?).into(),
    ))
}
