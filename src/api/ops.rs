//! Operations endpoints: liveness, readiness, Prometheus metrics, and the admin views of loops
//! and cell facts.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::ErrorBody;
use super::dto::*;
use super::{ApiResult, AppState, Auth, Json};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

pub(super) fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/workers", get(workers))
        .route("/api/v1/admin/cell", get(cell_facts))
        .route("/api/v1/admin/users", get(list_users))
        .route(
            "/api/v1/admin/users/{id}",
            axum::routing::patch(update_user),
        )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once started and while the database answers; says which version answers (a
/// handover checks that the new binary does).
async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let version = [(crate::version::HEADER, crate::version::text())];
    if !st.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, version, "starting\n");
    }
    match st.cell.store().workspace_count() {
        Ok(_) => (StatusCode::OK, version, "ready\n"),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            version,
            "database unavailable\n",
        ),
    }
}

/// Prometheus metrics: with `server.metrics_token` set, for callers presenting it; without,
/// for clients on this host's loopback only (404 to anyone else).
async fn metrics(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(refused) = metrics_refusal(
        st.cell.config().server.metrics_token.as_ref(),
        peer.ip(),
        &headers,
    ) {
        return refused.into_response();
    }
    if let Ok(n) = st.cell.store().workspace_count() {
        st.metrics.workspaces.set(n as i64);
    }
    // The cell counts; the exported counters catch up to it.
    let b = st.cell.backup_stats();
    for (counter, now) in [
        (&st.metrics.backups, &b.taken),
        (&st.metrics.backup_failures, &b.failed),
        (&st.metrics.backup_bytes, &b.bytes_added),
    ] {
        let now = now.load(Ordering::Relaxed);
        counter.inc_by(now.saturating_sub(counter.get()));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// Why `/metrics` is refused to this caller, if it is.
fn metrics_refusal(
    token: Option<&crate::config::Secret>,
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
) -> Option<super::ApiError> {
    match token {
        Some(token) => {
            use sha2::Digest;
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            // Compared as digests, so the time taken says nothing about the token.
            (sha2::Sha256::digest(presented.trim()) != sha2::Sha256::digest(token.expose())).then(
                || {
                    super::ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "/metrics needs the token set in server.metrics_token (Authorization: Bearer ...)",
                    )
                },
            )
        }
        None => (!peer.to_canonical().is_loopback()).then(|| {
            super::ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "/metrics answers on this host's loopback only; set server.metrics_token to scrape it from elsewhere",
            )
        }),
    }
}

/// The background loops and their status (cell administrators).
#[utoipa::path(get, path = "/api/v1/admin/workers", tag = "admin",
    responses((status = 200, body = [WorkerDto]), (status = 403, body = ErrorBody)))]
pub(super) async fn workers(
    State(st): State<AppState>,
    Auth(a): Auth,
) -> ApiResult<Json<Vec<WorkerDto>>> {
    st.cell.admin_facts(&a)?;
    Ok(Json(st.workers.list().iter().map(Into::into).collect()))
}

/// Version, uptime and size of the cell (cell administrators).
#[utoipa::path(get, path = "/api/v1/admin/cell", tag = "admin",
    responses((status = 200, body = CellDto), (status = 403, body = ErrorBody)))]
pub(super) async fn cell_facts(
    State(st): State<AppState>,
    Auth(a): Auth,
) -> ApiResult<Json<CellDto>> {
    let f = st.cell.admin_facts(&a)?;
    let uptime = (st.cell.now() - f.started_at).whole_seconds().max(0) as u64;
    Ok(Json(CellDto {
        version: f.version.into(),
        started_at: rfc3339(f.started_at),
        uptime_s: uptime,
        data_dir: f.data_dir,
        data_dir_bytes: f.usage.total,
        data_dir_free_bytes: f.usage.filesystem_free,
        database_bytes: f.database_bytes,
        workspaces: f.workspaces,
        runtime: f.runtime,
    }))
}

/// Every account on the cell (cell administrators).
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin",
    responses((status = 200, body = [UserDto]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_users(
    State(st): State<AppState>,
    Auth(a): Auth,
) -> ApiResult<Json<Vec<UserDto>>> {
    Ok(Json(
        st.cell.list_users(&a)?.iter().map(Into::into).collect(),
    ))
}

/// Make a user a cell administrator or not (cell administrators; the cell keeps at least one).
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)), request_body = UpdateUser,
    responses((status = 200, body = UserDto), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn update_user(
    State(st): State<AppState>,
    Auth(a): Auth,
    super::Path(id): super::Path<String>,
    Json(req): Json<UpdateUser>,
) -> ApiResult<Json<UserDto>> {
    let id = crate::domain::UserId::parse(&id).map_err(|_| super::ApiError::not_found("user"))?;
    Ok(Json(
        (&st.cell.set_cell_admin(&a, &id, req.is_admin)?).into(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_for_loopback_or_the_token_holder() {
        let none = axum::http::HeaderMap::new();
        let mut bearer = axum::http::HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer t0k".parse().unwrap());
        let remote: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let token = crate::config::Secret::new("t0k");
        assert!(metrics_refusal(None, "127.0.0.1".parse().unwrap(), &none).is_none());
        assert!(metrics_refusal(None, mapped, &none).is_none());
        assert!(metrics_refusal(None, "::1".parse().unwrap(), &none).is_none());
        assert!(metrics_refusal(None, remote, &bearer).is_some());
        assert!(metrics_refusal(Some(&token), remote, &bearer).is_none());
        assert!(metrics_refusal(Some(&token), remote, &none).is_some());
        // With a token, loopback clients need it too.
        assert!(metrics_refusal(Some(&token), "127.0.0.1".parse().unwrap(), &none).is_some());
    }
}
