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
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    if !st.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    }
    match st.cell.store().workspace_count() {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
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
}

/// The background loops and their status (owners).
#[utoipa::path(get, path = "/api/v1/admin/workers", tag = "admin",
    responses((status = 200, body = [WorkerDto]), (status = 403, body = ErrorBody)))]
pub(super) async fn workers(
    State(st): State<AppState>,
    Auth(a): Auth,
) -> ApiResult<Json<Vec<WorkerDto>>> {
    st.cell.admin_facts(&a)?;
    Ok(Json(st.workers.list().iter().map(Into::into).collect()))
}

/// Version, uptime and size of the cell (owners).
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
