//! Git credentials routes: users store a token or SSH key per host for private repositories.
//! Secrets go in and never come out.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ErrorBody;
use super::dto::rfc3339;
use super::{ApiError, ApiResult, AppState, Auth, Json, Path};
use crate::domain::CredentialId;
use crate::domain::entities::GitCredential;
use crate::service::NewCredential;

#[derive(Serialize, ToSchema)]
pub struct GitCredentialDto {
    pub id: String,
    /// The host it is used for, as in repository URLs.
    pub host: String,
    /// `token` or `ssh_key` (for git), or `registry` (for image pulls).
    pub kind: String,
    pub username: Option<String>,
    pub created_at: String,
}

impl From<&GitCredential> for GitCredentialDto {
    fn from(c: &GitCredential) -> Self {
        GitCredentialDto {
            id: c.id.to_string(),
            host: c.host.clone(),
            kind: c.kind.clone(),
            username: c.username.clone(),
            created_at: rfc3339(c.created_at),
        }
    }
}

/// Either `token` (with `username`) or `ssh_private_key`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGitCredential {
    pub host: String,
    pub username: Option<String>,
    pub token: Option<String>,
    pub ssh_private_key: Option<String>,
    /// True for a container registry login (`username` and `token`) used to pull images from
    /// `host`; a git credential is never sent to a registry, nor a registry login to git.
    #[serde(default)]
    pub registry: bool,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/git-credentials",
            get(list_git_credentials).post(create_git_credential),
        )
        .route(
            "/api/v1/git-credentials/{id}",
            delete(delete_git_credential),
        )
}

/// The caller's git credentials (never their secrets).
#[utoipa::path(get, path = "/api/v1/git-credentials", tag = "git-credentials", responses((status = 200, body = [GitCredentialDto]), (status = 401, body = ErrorBody)))]
pub(super) async fn list_git_credentials(
    State(st): State<AppState>,
    Auth(a): Auth,
) -> ApiResult<Json<Vec<GitCredentialDto>>> {
    Ok(Json(
        st.cell
            .list_git_credentials(&a)?
            .iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Store a token or SSH key for cloning private repositories from a host (replaces the caller's
/// previous one for that host).
#[utoipa::path(post, path = "/api/v1/git-credentials", tag = "git-credentials", request_body = CreateGitCredential,
    responses((status = 201, body = GitCredentialDto), (status = 422, body = ErrorBody)))]
pub(super) async fn create_git_credential(
    State(st): State<AppState>,
    Auth(a): Auth,
    Json(req): Json<CreateGitCredential>,
) -> ApiResult<(StatusCode, Json<GitCredentialDto>)> {
    let new = match (req.token, req.ssh_private_key) {
        (Some(token), None) if req.registry => NewCredential::Registry {
            username: req.username.unwrap_or_default(),
            token,
        },
        (Some(token), None) => NewCredential::Token {
            username: req.username.unwrap_or_else(|| "git".into()),
            token,
        },
        (None, Some(_)) if req.registry => {
            return Err(ApiError::field(
                "ssh_private_key",
                "a registry login is `username` and `token`, not an SSH key",
            ));
        }
        (None, Some(private_key)) => NewCredential::SshKey { private_key },
        _ => {
            return Err(ApiError::field(
                "token",
                "give either `token` (with `username`) or `ssh_private_key`",
            ));
        }
    };
    let c = st.cell.add_git_credential(&a, &req.host, new)?;
    Ok((StatusCode::CREATED, Json((&c).into())))
}

/// Delete one of the caller's git credentials.
#[utoipa::path(delete, path = "/api/v1/git-credentials/{id}", tag = "git-credentials", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_git_credential(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = CredentialId::parse(&id).map_err(|_| ApiError::not_found("git credential"))?;
    st.cell.delete_git_credential(&a, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
