//! Workspace routes.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::ErrorBody;
use super::dto::*;
use super::{ApiError, ApiResult, AppState, Auth, Json, Path, Query};
use crate::domain::{OrgId, WorkspaceId};
use crate::service::MAX_PAGE;
use crate::service::{WorkspaceInput, WorkspacePatch};

fn ws_id(s: &str) -> Result<WorkspaceId, ApiError> {
    WorkspaceId::parse(s).map_err(|_| ApiError::not_found("workspace"))
}

/// A workspace as the API shows it, with when it stops by itself.
fn dto(st: &AppState, ws: &crate::domain::entities::Workspace) -> WorkspaceDto {
    WorkspaceDto::from(ws).with_plan(st.cell.stop_plan(ws))
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route(
            "/api/v1/workspaces/{id}",
            get(get_workspace)
                .patch(update_workspace)
                .delete(delete_workspace),
        )
        .route("/api/v1/workspaces/{id}/events", get(workspace_events))
        .route(
            "/api/v1/workspaces/{id}/transfer",
            axum::routing::post(transfer_workspace),
        )
        .route(
            "/api/v1/workspaces/{id}/start",
            axum::routing::post(start_workspace),
        )
        .route(
            "/api/v1/workspaces/{id}/stop",
            axum::routing::post(stop_workspace),
        )
        .route(
            "/api/v1/workspaces/{id}/restart",
            axum::routing::post(restart_workspace),
        )
        .route("/api/v1/workspaces/{id}/exec", axum::routing::post(exec))
        .route("/api/v1/workspaces/{id}/tasks", get(tasks))
        .route("/api/v1/workspaces/{id}/ports", get(ports))
        .route(
            "/api/v1/workspaces/{id}/ports/{port}",
            axum::routing::put(share_port),
        )
        .route(
            "/api/v1/workspaces/{id}/backups",
            axum::routing::post(backup_now),
        )
        .route(
            "/api/v1/workspaces/{id}/backups/{snapshot}/restore",
            axum::routing::post(restore_backup),
        )
        .route(
            "/api/v1/workspaces/{id}/backups/{snapshot}/archive",
            get(backup_archive),
        )
}

/// Snapshot the workspace's files now (its owner); listed in the workspace's `backups`.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/backups", tag = "backups", params(("id" = String, Path)),
    responses((status = 201, body = SnapshotDto), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn backup_now(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<SnapshotDto>)> {
    let s = st.cell.backup_now(&a, &ws_id(&id)?).await?;
    Ok((StatusCode::CREATED, Json((&s).into())))
}

/// Replace a stopped workspace's files with a snapshot's (its owner). The current files are
/// snapshotted first, so the restore can be undone.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/backups/{snapshot}/restore", tag = "backups",
    params(("id" = String, Path), ("snapshot" = String, Path, description = "a snapshot id, or its first 8 or more hex digits")),
    responses((status = 200, body = WorkspaceDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn restore_backup(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path((id, snapshot)): Path<(String, String)>,
) -> ApiResult<Json<WorkspaceDto>> {
    let ws = st.cell.restore_backup(&a, &ws_id(&id)?, &snapshot).await?;
    Ok(Json(dto(&st, &ws)))
}

/// Download a snapshot of the workspace's files as a tar archive (its owner).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/backups/{snapshot}/archive", tag = "backups",
    params(("id" = String, Path), ("snapshot" = String, Path)),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn backup_archive(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path((id, snapshot)): Path<(String, String)>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let (path, name) = st.cell.backup_archive(&a, &ws_id(&id)?, &snapshot).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::from(crate::service::Error::Internal(e.to_string())))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    // Unlinked now: the open handle keeps the data until the download ends.
    drop(path);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// The caller's workspaces, newest first, a page at a time (or an organization's, for its owners).
#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces", params(WorkspaceQuery),
    responses((status = 200, body = WorkspaceList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody, description = "`not_found`: no such organization"), (status = 422, body = ErrorBody)))]
pub(super) async fn list_workspaces(
    State(st): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<WorkspaceQuery>,
) -> ApiResult<Json<WorkspaceList>> {
    let org = match q.org {
        Some(o) => Some(OrgId::parse(&o).map_err(|_| ApiError::not_found("organization"))?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("a page size from 1 to {MAX_PAGE}"),
        ));
    }
    let page = st
        .cell
        .list_workspaces(&a, org.as_ref(), q.cursor.as_deref(), limit)?;
    Ok(Json(WorkspaceList {
        items: page.items.iter().map(|w| dto(&st, w)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Create a workspace from one or more git repositories.
#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = CreateWorkspace,
    responses((status = 201, body = WorkspaceDto), (status = 404, body = ErrorBody, description = "`not_found`: no such organization"),
        (status = 409, body = ErrorBody, description = "`unknown_class`, `no_class`, `class_not_allowed`, `timeout_not_allowed`, `no_organization`, `too_many_running` or `no_runtime`"),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Json(req): Json<CreateWorkspace>,
) -> ApiResult<(StatusCode, Json<WorkspaceDto>)> {
    let org = match req.org {
        Some(o) => {
            Some(OrgId::parse(&o).map_err(|_| ApiError::field("org", "not an organization id"))?)
        }
        None => None,
    };
    let ws = st.cell.create_workspace(
        &a,
        WorkspaceInput {
            org,
            name: req.name,
            repos: req.repos.into_iter().map(|r| (r.url, r.branch)).collect(),
            class: req.class,
            image: req.image,
            timeout: req.timeout_s.map(Duration::from_secs),
            start: req.start,
        },
    )?;
    Ok((StatusCode::CREATED, Json(dto(&st, &ws))))
}

/// One workspace with its phase history.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 200, body = WorkspaceDto), (status = 404, body = ErrorBody)))]
pub(super) async fn get_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceDto>> {
    Ok(Json(dto(&st, &st.cell.get_workspace(&a, &ws_id(&id)?)?)))
}

/// The workspace as a stream of server-sent events: `workspace` events carry it whole (as
/// `GET /api/v1/workspaces/{id}` does), the first at once and then one after each change, so a
/// client sees every phase the moment it is reached without polling. Changes closer together
/// than the client reads are merged into the latest state (the history lists every step). The
/// stream ends with a
/// `deleted` event when the workspace goes, and closes when the caller's credential or access
/// does. A comment line every 15 s keeps proxies from closing it.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/events", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "`event: workspace` with a WorkspaceDto as `data`, then `event: deleted` at the end"),
        (status = 404, body = ErrorBody)))]
pub(super) async fn workspace_events(
    State(st): State<AppState>,
    Auth(a): Auth,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    use axum::response::sse::{Event, KeepAlive, Sse};
    let id = ws_id(&id)?;
    // Subscribed before the first read, so no change between the two is missed.
    let mut changes = st.cell.workspace_changes();
    changes.borrow_and_update();
    let access = st.cell.access_changes();
    let first = st.cell.get_workspace(&a, &id)?;
    struct Watch {
        st: AppState,
        headers: axum::http::HeaderMap,
        id: WorkspaceId,
        changes: tokio::sync::watch::Receiver<u64>,
        access: tokio::sync::watch::Receiver<u64>,
        first: Option<crate::domain::entities::Workspace>,
        last: String,
        ended: bool,
    }
    let watch = Watch {
        st,
        headers,
        id,
        changes,
        access,
        first: Some(first),
        last: String::new(),
        ended: false,
    };
    let events = futures::stream::unfold(watch, |mut w| async move {
        loop {
            if w.ended {
                return None;
            }
            let ws = match w.first.take() {
                Some(ws) => Ok(ws),
                None => {
                    let moved = tokio::select! {
                        r = w.changes.changed() => r,
                        r = w.access.changed() => r,
                        // Handing over to the next binary: the client reconnects to it.
                        _ = w.st.cell.closing() => return None,
                    };
                    if moved.is_err() {
                        return None; // the cell is stopping
                    }
                    // The credential is checked again, at each change of the workspace and of
                    // anyone's access: a revoked token or ended session stops the stream, as a
                    // removal from the organization does.
                    let Ok(actor) = super::auth::identify(&w.st.cell, &w.headers) else {
                        return None;
                    };
                    w.st.cell.get_workspace(&actor, &w.id)
                }
            };
            match ws {
                Ok(ws) => {
                    let data = serde_json::to_string(&dto(&w.st, &ws)).unwrap_or_default();
                    if data != w.last {
                        w.last.clone_from(&data);
                        let event = Event::default().event("workspace").data(data);
                        return Some((Ok::<_, std::convert::Infallible>(event), w));
                    }
                }
                // Gone, rather than out of the caller's sight (which just ends the stream).
                Err(crate::service::Error::NotFound { .. })
                    if !w.st.cell.workspace_exists(&w.id).unwrap_or(true) =>
                {
                    w.ended = true;
                    let event = Event::default().event("deleted").data(w.id.to_string());
                    return Some((Ok(event), w));
                }
                Err(_) => return None,
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Change a workspace's name, class, image or timeout (its owner).
#[utoipa::path(patch, path = "/api/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)), request_body = UpdateWorkspace,
    responses((status = 200, body = WorkspaceDto), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`unknown_class`, `class_not_allowed` or `timeout_not_allowed`"), (status = 422, body = ErrorBody)))]
pub(super) async fn update_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    Json(req): Json<UpdateWorkspace>,
) -> ApiResult<Json<WorkspaceDto>> {
    let patch = WorkspacePatch {
        name: req.name,
        class: req.class,
        image: req
            .image
            .map(|i| if i.trim().is_empty() { None } else { Some(i) }),
        timeout: req.timeout_s.map(Duration::from_secs),
    };
    Ok(Json(dto(
        &st,
        &st.cell.update_workspace(&a, &ws_id(&id)?, patch)?,
    )))
}

/// Delete a workspace (its owner, or an owner of its organization).
#[utoipa::path(delete, path = "/api/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.cell.delete_workspace(&a, &ws_id(&id)?)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a stopped workspace to another member of its organization (owners of the
/// organization): for the workspaces of someone who left. Its files come as they are.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/transfer", tag = "workspaces", params(("id" = String, Path)), request_body = TransferWorkspace,
    responses((status = 200, body = WorkspaceDto), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn transfer_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    Json(req): Json<TransferWorkspace>,
) -> ApiResult<Json<WorkspaceDto>> {
    let to = crate::domain::UserId::parse(&req.owner)
        .map_err(|_| crate::domain::FieldError::new("owner", "not a user id"))
        .map_err(crate::service::Error::from)?;
    let ws = st.cell.transfer_workspace(&a, &ws_id(&id)?, &to)?;
    Ok(Json(dto(&st, &ws)))
}

/// Start a workspace: its phase moves through creating and initializing to running.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/start", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 202, body = WorkspaceDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn start_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<WorkspaceDto>)> {
    let ws = st.cell.start_workspace(&a, &ws_id(&id)?)?;
    Ok((StatusCode::ACCEPTED, Json(dto(&st, &ws))))
}

/// Stop a workspace; its git state is recorded before the sandbox ends.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/stop", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 202, body = WorkspaceDto), (status = 404, body = ErrorBody)))]
pub(super) async fn stop_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<WorkspaceDto>)> {
    let ws = st.cell.stop_workspace(&a, &ws_id(&id)?)?;
    Ok((StatusCode::ACCEPTED, Json(dto(&st, &ws))))
}

/// Restart a running workspace: it stops as any stop does (git state, snapshot), then starts
/// again on the same files with fresh tasks and terminals.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/restart", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 202, body = WorkspaceDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn restart_workspace(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<WorkspaceDto>)> {
    let ws = st.cell.restart_workspace(&a, &ws_id(&id)?)?;
    Ok((StatusCode::ACCEPTED, Json(dto(&st, &ws))))
}

/// Run a command in a running workspace; answers its exit code and output.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/exec", tag = "workspaces", params(("id" = String, Path)), request_body = ExecDto,
    responses((status = 200, body = ExecResultDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn exec(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    Json(req): Json<ExecDto>,
) -> ApiResult<Json<ExecResultDto>> {
    let out = st
        .cell
        .exec(
            &a,
            &ws_id(&id)?,
            crate::service::ExecInput {
                argv: req.command,
                cwd: req.cwd,
                timeout: req.timeout_s.map(Duration::from_secs),
                stdin: req.stdin,
            },
        )
        .await?;
    Ok(Json(ExecResultDto {
        exit_code: out.exit_code,
        stdout: out.stdout,
        stderr: out.stderr,
        timed_out: out.timed_out,
        truncated: out.truncated,
    }))
}

/// The workspace's tasks (from .gitpod.yml or devcontainer.json) with the end of their logs.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/tasks", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 200, body = [TaskDto]), (status = 404, body = ErrorBody)))]
pub(super) async fn tasks(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<TaskDto>>> {
    let tasks = st.cell.tasks(&a, &ws_id(&id)?).await?;
    Ok(Json(
        tasks
            .into_iter()
            .map(|t| TaskDto {
                index: t.index,
                name: t.name,
                state: t.state,
                exit_code: t.exit_code,
                log: t.log,
            })
            .collect(),
    ))
}

/// The workspace's ports: listening, configured, and who may reach each through the cell.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/ports", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 200, body = [PortDto]), (status = 404, body = ErrorBody)))]
pub(super) async fn ports(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<PortDto>>> {
    let list = st.cell.ports(&a, &ws_id(&id)?).await?;
    Ok(Json(
        list.into_iter()
            .map(|p| PortDto {
                port: p.port,
                listening: p.listening,
                configured: p.configured,
                visibility: p.visibility.as_str().into(),
                url: p.url,
            })
            .collect(),
    ))
}

/// Share a port with the organization or everyone, or make it private again (the owner).
#[utoipa::path(put, path = "/api/v1/workspaces/{id}/ports/{port}", tag = "workspaces", params(("id" = String, Path), ("port" = u16, Path)), request_body = PortShareDto,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn share_port(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path((id, port)): Path<(String, u16)>,
    Json(req): Json<PortShareDto>,
) -> ApiResult<StatusCode> {
    let v = crate::domain::entities::Visibility::parse(&req.visibility)
        .ok_or_else(|| ApiError::field("visibility", "one of private, org, public"))?;
    st.cell.share_port(&a, &ws_id(&id)?, port, v)?;
    Ok(StatusCode::NO_CONTENT)
}
