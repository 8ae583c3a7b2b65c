//! Terminals of a running workspace: create and list them, and attach over a WebSocket that
//! the cell relays to the workspace's agent. The shell keeps running when the socket closes.

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as TMessage;

use super::ErrorBody;
use super::dto::*;
use super::{ApiError, ApiResult, AppState, Auth, Json, Path, Query};
use crate::agent::protocol::NewTerminal;
use crate::domain::WorkspaceId;

fn ws_id(s: &str) -> Result<WorkspaceId, ApiError> {
    WorkspaceId::parse(s).map_err(|_| ApiError::not_found("workspace"))
}

fn agent_error(e: crate::agent::client::ClientError) -> ApiError {
    match e {
        crate::agent::client::ClientError::Agent {
            status: 404,
            message,
        } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
        other => ApiError::new(StatusCode::CONFLICT, "agent_unavailable", other.to_string()),
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/workspaces/{id}/terminals",
            get(list_terminals).post(create_terminal),
        )
        .route(
            "/api/v1/workspaces/{id}/terminals/{tid}",
            get(attach_terminal),
        )
}

fn dto(ws: &str, t: crate::agent::protocol::TerminalInfo) -> TerminalDto {
    TerminalDto {
        attach: format!("/api/v1/workspaces/{ws}/terminals/{}", t.id),
        id: t.id,
        alive: t.alive,
    }
}

/// The workspace's terminals.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/terminals", tag = "terminals", params(("id" = String, Path)),
    responses((status = 200, body = [TerminalDto]), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn list_terminals(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<TerminalDto>>> {
    let agent = st.cell.workspace_agent(&a, &ws_id(&id)?)?;
    let list = agent.terminals().await.map_err(agent_error)?;
    Ok(Json(list.into_iter().map(|t| dto(&id, t)).collect()))
}

/// Open a new terminal (a login shell) in the workspace.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/terminals", tag = "terminals", params(("id" = String, Path)), request_body = NewTerminalDto,
    responses((status = 201, body = TerminalDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_terminal(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    Json(req): Json<NewTerminalDto>,
) -> ApiResult<(StatusCode, Json<TerminalDto>)> {
    let agent = st.cell.workspace_agent(&a, &ws_id(&id)?)?;
    let t = open(&agent, &id, req.cols, req.rows).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// A new terminal (the shell started ahead with the workspace, the first time).
async fn open(
    agent: &crate::agent::client::AgentClient,
    ws: &str,
    cols: Option<u16>,
    rows: Option<u16>,
) -> ApiResult<TerminalDto> {
    let t = agent
        .create_terminal(&NewTerminal { cols, rows })
        .await
        .map_err(agent_error)?;
    Ok(dto(ws, t))
}

/// Attach to a terminal over a WebSocket (see `TerminalDto.attach`). With `new` as the
/// terminal id it opens a new terminal and attaches in one step (`cols` and `rows` in the
/// query): the first frame is then a text frame `{"type":"opened","id":..,"attach":..}` naming
/// the terminal, for reconnecting later.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/terminals/{tid}", tag = "terminals",
    params(("id" = String, Path), ("tid" = String, Path, description = "a terminal's id, or `new`"), NewTerminalQuery),
    responses((status = 101, description = "WebSocket"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn attach_terminal(
    State(st): State<AppState>,
    Auth(a): Auth,
    Path((id, tid)): Path<(String, String)>,
    Query(size): Query<NewTerminalQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // A page on another site must not drive a user's terminal with their cookie.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let ours = st.cell.link("");
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let same = origin.trim_end_matches('/') == ours.trim_end_matches('/')
            || origin.ends_with(&format!("//{host}"));
        if !same {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "cross-origin terminal connections are refused",
            ));
        }
    }
    let wsid = ws_id(&id)?;
    let agent = st.cell.workspace_agent(&a, &wsid)?;
    let Ok(upgrade) = upgrade else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            "connect with a WebSocket client",
        ));
    };
    let (tid, opened) = if tid == "new" {
        let t = open(&agent, &id, size.cols, size.rows).await?;
        let opened = serde_json::json!({ "type": "opened", "id": t.id, "attach": t.attach });
        (t.id, Some(opened.to_string()))
    } else {
        (tid, None)
    };
    let inner = agent.attach_terminal(&tid).await.map_err(agent_error)?;
    let cell = st.cell.clone();
    Ok(upgrade
        .on_upgrade(move |mut socket| async move {
            if let Some(text) = opened
                && socket.send(AxMessage::Text(text.into())).await.is_err()
            {
                return;
            }
            // The terminal lasts as long as its caller's credential and access: a revoked
            // token, a sign-out or a removal from the organization closes it.
            let watcher = cell.clone();
            let id = wsid.clone();
            let ends = async move {
                watcher
                    .access_ends(|cell| {
                        super::auth::identify(cell, &headers)
                            .and_then(|a| cell.owners_workspace(&a, &id, "work in it"))
                            .is_ok()
                    })
                    .await
            };
            relay(socket, inner, ends, move || cell.note_activity(&wsid)).await
        })
        .into_response())
}

/// The close code a terminal gets when its caller's access ends (4000-4999 are the
/// application's): the page says so rather than reconnecting.
pub const ACCESS_ENDED: u16 = 4403;
/// The close code a terminal gets when the cell hands over to its next binary (WebSocket's
/// "service restart"): the page reconnects to the same terminal, whose shell kept running.
pub const RESTARTING: u16 = 1012;

/// Copies frames both ways until either side closes, or `ends` resolves (then the client gets
/// a close frame with [`ACCESS_ENDED`]).
async fn relay(
    client: WebSocket,
    agent: tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
    ends: impl std::future::Future<Output = crate::service::Ended>,
    on_input: impl Fn() + Send + 'static,
) {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut a_tx, mut a_rx) = agent.split();
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            let out = match m {
                AxMessage::Binary(b) => TMessage::Binary(b),
                AxMessage::Text(t) => TMessage::Text(t.as_str().into()),
                AxMessage::Close(_) => break,
                _ => continue,
            };
            on_input();
            if a_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = a_tx.close().await;
    };
    let down = async {
        tokio::pin!(ends);
        loop {
            let m = tokio::select! {
                m = a_rx.next() => m,
                why = &mut ends => {
                    let (code, reason) = match why {
                        crate::service::Ended::Access => (ACCESS_ENDED, "access ended: sign in again"),
                        crate::service::Ended::Closing => (RESTARTING, "the cell restarts: reconnect"),
                    };
                    let _ = c_tx
                        .send(AxMessage::Close(Some(axum::extract::ws::CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await;
                    return;
                }
            };
            let Some(Ok(m)) = m else { break };
            let out = match m {
                TMessage::Binary(b) => AxMessage::Binary(b),
                TMessage::Text(t) => AxMessage::Text(t.as_str().into()),
                // The agent's reason to close (the shell exited) reaches the client as is.
                TMessage::Close(Some(f)) => {
                    let _ = c_tx
                        .send(AxMessage::Close(Some(axum::extract::ws::CloseFrame {
                            code: f.code.into(),
                            reason: f.reason.as_str().into(),
                        })))
                        .await;
                    return;
                }
                TMessage::Close(None) => break,
                _ => continue,
            };
            if c_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = c_tx.close().await;
    };
    // When one direction ends the other gets a moment to finish: keys typed just before the
    // tab closed still reach the shell, and output already on its way still reaches the page.
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(DRAIN, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(DRAIN, up).await; }
    }
}

/// How long the relay waits for the second direction after the first has ended.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
