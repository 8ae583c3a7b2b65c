//! The local admin socket: a Unix socket in the data directory (owner-only permissions) that
//! lets `devcell admin ...` and `devcell db backup` work while the cell holds the database.
//! When no cell runs, the same requests are executed against the database directly.
//!
//! Protocol: one JSON request line, one JSON response line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::service::Cell;

pub const SOCKET_FILE: &str = "admin.sock";

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// A new API token for the user (the first administrator when `user` is absent).
    Token { user: Option<String>, name: String },
    /// A new password (generated when absent); ends the user's sessions.
    ResetPassword {
        user: Option<String>,
        password: Option<String>,
    },
    /// A one-time login link.
    LoginLink { user: Option<String> },
    /// Makes a user a cell administrator, or no longer one.
    SetAdmin { user: String, admin: bool },
    /// A consistent copy of the database at `path`.
    DbBackup { path: PathBuf },
    /// Stops every workspace and unmounts their disks (`devcell down`).
    Down,
    /// The certificates served (or, with no cell running, those stored), as JSON.
    CertStatus,
    /// The running version, the newest release seen and the history of updates, as JSON.
    UpdateStatus,
    /// Fetches the channel's release and stages it (applies nothing).
    UpdateCheck,
    /// Applies a release: a directory (`devcell release sign`'s), a bundle file, or (neither)
    /// the channel's. Answers once the update is under way, with its version and start (JSON).
    UpdateApply { from: Option<PathBuf> },
    /// Approves the newest release (one that waits for approval) and applies it.
    UpdateApprove { version: String },
    /// Goes back to the previous binary (`devcell.prev`); answers like `UpdateApply`.
    UpdateRollback,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok { user: Option<String>, value: String },
    Error { message: String },
}

pub fn socket_path(data: &Path) -> PathBuf {
    data.join(SOCKET_FILE)
}

pub fn remove_socket(data: &Path) {
    let _ = std::fs::remove_file(socket_path(data));
}

/// Carries out one request on a cell (running, or opened just for this).
pub async fn execute(cell: &Cell, req: Request) -> Response {
    let result = match req {
        Request::Token { user, name } => cell
            .admin_token(user.as_deref(), &name)
            .map(|(u, t)| (Some(u.email), t.secret)),
        Request::ResetPassword { user, password } => cell
            .reset_password(user.as_deref(), password)
            .await
            .map(|(u, p)| (Some(u.email), p)),
        Request::LoginLink { user } => cell
            .find_user(user.as_deref())
            .and_then(|u| Ok((Some(u.email.clone()), cell.create_login_link(&u.id)?))),
        Request::SetAdmin { user, admin } => cell
            .find_user(Some(&user))
            .and_then(|u| cell.grant_cell_admin(&u.id, admin))
            .map(|u| {
                let what = if u.is_admin {
                    "is a cell administrator"
                } else {
                    "is no longer a cell administrator"
                };
                (Some(u.email.clone()), format!("{} {what}", u.email))
            }),
        Request::Down => cell
            .down(std::time::Duration::from_secs(600))
            .await
            .and_then(|(stopped, still)| {
                if still > 0 {
                    Err(crate::service::Error::Internal(format!(
                        "{still} workspace(s) did not stop within 10 minutes"
                    )))
                } else {
                    Ok((
                        None,
                        format!("stopped {stopped} workspace(s); their disks are unmounted"),
                    ))
                }
            }),
        Request::CertStatus => {
            let mut status = cell.certificate_status();
            if status.is_empty() {
                status = cell.stored_certificate_status().unwrap_or_default();
            }
            serde_json::to_string(&status)
                .map(|json| (None, json))
                .map_err(|e| crate::service::Error::Internal(e.to_string()))
        }
        Request::UpdateStatus => cell
            .update_status()
            .map(|s| (None, status_json(&s).to_string())),
        Request::UpdateCheck => check_channel(cell).await,
        Request::UpdateApply { from } => apply(cell, from).await,
        Request::UpdateRollback => match crate::version::previous() {
            Ok(prev) => cell
                .request_rollback(&prev)
                .await
                .map(|a| (None, attempt_json(&a))),
            Err(e) => Err(crate::service::Error::Internal(e)),
        },
        Request::UpdateApprove { version } => cell
            .approve_and_request(&version)
            .map(|a| (None, attempt_json(&a))),
        Request::DbBackup { path } => {
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir().unwrap_or_default().join(path)
            };
            cell.store()
                .backup_to(&path)
                .map(|n| (None, format!("wrote {} records to {}", n, path.display())))
                .map_err(crate::service::Error::from)
        }
    };
    match result {
        Ok((user, value)) => Response::Ok { user, value },
        // A refusal with a stable code says it, as the API's error bodies do.
        Err(crate::service::Error::Conflict { code, message }) => Response::Error {
            message: format!("[{code}] {message}"),
        },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// The status as `devcell update status --json` prints it.
fn status_json(s: &crate::service::updates::UpdateStatus) -> serde_json::Value {
    let t = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    serde_json::json!({
        "running": s.running.to_string(),
        "channel": s.channel.as_ref().map(|u| u.to_string()),
        "waiting_approval": s.waiting_approval,
        "newest": s.newest.as_ref().map(|n| serde_json::json!({
            "version": n.version.to_string(),
            "channel": n.channel,
            "kind": n.kind,
            "source": n.source,
            "seen_at": t(n.seen_at),
            "approved_at": n.approved_at.map(t),
        })),
        "attempts": s.attempts.iter().map(|a| serde_json::json!({
            "started_at": t(a.started_at),
            "from": a.from.to_string(),
            "to": a.to.to_string(),
            "source": a.source,
            "outcome": a.outcome.as_str(),
            "message": a.message,
            "ended_at": a.ended_at.map(t),
        })).collect::<Vec<_>>(),
    })
}

fn no_channel() -> crate::service::Error {
    crate::service::Error::Conflict {
        code: "no_channel",
        message: "no update.channel_url is configured: name a release directory or bundle, or set the channel".into(),
    }
}

async fn check_channel(cell: &Cell) -> crate::service::Result<(Option<String>, String)> {
    let Some(url) = cell.config().update.channel_url.clone() else {
        return Err(no_channel());
    };
    let s = cell.fetch_release(&url).await?;
    let wait = if s.needs_approval() {
        "; it waits for an owner's approval (`devcell update approve`)"
    } else {
        ""
    };
    Ok((
        None,
        format!(
            "release {} ({}, {}) from {url} is checked and staged{wait}",
            s.manifest.version,
            s.manifest.channel,
            s.manifest.kind.as_str()
        ),
    ))
}

async fn apply(
    cell: &Cell,
    from: Option<PathBuf>,
) -> crate::service::Result<(Option<String>, String)> {
    let staged = match from {
        None => match cell.config().update.channel_url.clone() {
            Some(url) => cell.fetch_release(&url).await,
            None => Err(no_channel()),
        },
        // Hashing a release reads hundreds of megabytes: off the runtime's threads.
        Some(path) => {
            let cell = cell.clone();
            tokio::task::spawn_blocking(move || {
                if path.is_dir() {
                    cell.stage_directory(&path)
                } else {
                    cell.stage_bundle(&path)
                }
            })
            .await
            .map_err(|e| crate::service::Error::Internal(e.to_string()))
            .and_then(|r| r)
        }
    };
    staged_then_apply(cell, staged).await
}

async fn staged_then_apply(
    cell: &Cell,
    staged: crate::service::Result<crate::service::updates::Staged>,
) -> crate::service::Result<(Option<String>, String)> {
    let attempt = cell.request_update(staged?)?;
    Ok((None, attempt_json(&attempt)))
}

/// What `update apply` follows: the attempt's version and start.
fn attempt_json(a: &crate::domain::entities::UpdateAttempt) -> String {
    let started = a
        .started_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({ "version": a.to.to_string(), "started_at": started }).to_string()
}

/// Listens on the admin socket until `stop` turns true.
pub fn serve(
    cell: Cell,
    data: &Path,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data);
    // We hold the database lock, so a socket file left here belongs to a dead cell.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                conn = listener.accept() => match conn {
                    Ok((stream, _)) => {
                        let cell = cell.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle(cell, stream).await {
                                tracing::warn!(error = %e, "admin socket request failed");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "admin socket accept failed"),
                },
            }
        }
    }))
}

async fn handle(cell: Cell, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            tracing::info!(request = ?redact(&req), "admin socket request");
            execute(&cell, req).await
        }
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

fn redact(r: &Request) -> String {
    match r {
        Request::ResetPassword { user, .. } => format!("reset_password {user:?}"),
        other => format!("{other:?}"),
    }
}

trait TakeLine {
    async fn take_line(&mut self, buf: &mut String) -> std::io::Result<usize>;
}

impl<R: tokio::io::AsyncBufRead + Unpin> TakeLine for R {
    /// Reads one line of at most 64 KiB.
    async fn take_line(&mut self, buf: &mut String) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut limited = (&mut *self).take(64 * 1024);
        limited.read_line(buf).await
    }
}

/// Sends a request to a running cell. `Ok(None)` means no cell answers on this data directory.
pub async fn call(data: &Path, req: &Request) -> std::io::Result<Option<Response>> {
    let path = socket_path(data);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    let mut out = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(std::io::Error::other)
}
