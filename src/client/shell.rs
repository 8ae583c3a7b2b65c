//! `devcell ws shell ID`: a shell in the workspace, in the current terminal. It opens a
//! terminal over the same WebSocket the dashboard uses, puts the local terminal in raw mode
//! (restored on every way out), relays keys and output both ways and sends the window size
//! whenever it changes. The shell's exit ends the command; a lost connection leaves the shell
//! running and says how to attach to it again.

use std::io::{Read, Write};

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use rustix::termios::{OptionalActions, Termios, isatty, tcgetattr, tcgetwinsize, tcsetattr};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Saved, get_json};
use crate::api::ACCESS_ENDED;

/// Opens (or, with `terminal`, re-attaches to) a terminal in workspace `id` and relays it to
/// this process's standard streams until the shell exits.
pub(super) async fn shell(
    http: &reqwest::Client,
    saved: &Saved,
    id: &str,
    terminal: Option<&str>,
) -> Result<i32> {
    let w = get_json(http, saved, &format!("workspaces/{id}")).await?;
    let phase = w["phase"].as_str().unwrap_or("unknown");
    if phase != "running" {
        bail!("the workspace is {phase}: start it first with `devcell ws start {id}`");
    }
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let tid = terminal.unwrap_or("new");
    let mut url = saved
        .url
        .join(&format!("api/v1/workspaces/{id}/terminals/{tid}"))?;
    url.query_pairs_mut()
        .append_pair("cols", &cols.to_string())
        .append_pair("rows", &rows.to_string());
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| anyhow!("cannot make a WebSocket address of {url}"))?;
    let mut req = url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", saved.token)
            .parse()
            .context("the saved token is not a valid header value; log in again")?,
    );
    let (socket, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(refused)?;
    let (mut tx, mut rx) = socket.split();

    let mut attached = terminal.map(str::to_owned);
    let mut keys = read_keys();
    let mut ends_line = true;
    let mut resized = signal(SignalKind::window_change())?;
    let raw = RawMode::enter();
    let ending = loop {
        tokio::select! {
            key = keys.recv() => match key {
                Some(k) => {
                    ends_line = k.last() == Some(&b'\n');
                    if tx.send(Message::Binary(k.into())).await.is_err() { break Ending::Lost }
                }
                // Standard input ended (a pipe, not a terminal): the shell is asked to exit
                // after what came, and its output keeps coming until it does. (Not Ctrl-D: typed
                // ahead of the shell's first prompt, the terminal's line discipline eats it.)
                None => {
                    keys = closed();
                    let exit: &[u8] = if ends_line { b"exit\n" } else { b"\nexit\n" };
                    if tx.send(Message::Binary(exit.to_vec().into())).await.is_err() { break Ending::Lost }
                }
            },
            _ = resized.recv() => {
                if let Some((cols, rows)) = window_size() {
                    let msg = json!({ "type": "resize", "cols": cols, "rows": rows }).to_string();
                    if tx.send(Message::Text(msg.into())).await.is_err() { break Ending::Lost }
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&b)?;
                    out.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                        && v["type"] == "opened"
                    {
                        attached = v["id"].as_str().map(str::to_owned);
                    }
                }
                Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == ACCESS_ENDED => {
                    break Ending::AccessEnded
                }
                Some(Ok(Message::Close(_))) | None => break Ending::Exited,
                Some(Ok(_)) => {}
                Some(Err(_)) => break Ending::Lost,
            }
        }
    };
    drop(raw);
    match ending {
        Ending::Exited => Ok(0),
        Ending::AccessEnded => bail!("access ended (token revoked or signed out): log in again"),
        Ending::Lost => {
            let again = attached
                .map(|t| format!(": `devcell ws shell {id} --terminal {t}` attaches to it again"))
                .unwrap_or_default();
            bail!("the connection to the cell was lost; the shell keeps running{again}")
        }
    }
}

enum Ending {
    Exited,
    AccessEnded,
    Lost,
}

/// Standard input, read on a thread of its own (a blocking read must not hold up the runtime
/// at exit); the channel closes when input ends.
fn read_keys() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    rx
}

/// A channel that never yields: input after it ended.
fn closed() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::mem::forget(tx);
    rx
}

/// The local terminal's size as (columns, rows), when standard output or input is one.
fn window_size() -> Option<(u16, u16)> {
    let ws = if isatty(std::io::stdout()) {
        tcgetwinsize(std::io::stdout())
    } else {
        tcgetwinsize(std::io::stdin())
    }
    .ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Raw mode on standard input while it lives, when standard input is a terminal: keys go to
/// the remote shell as typed (Ctrl-C included) and the remote terminal does the echoing.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !isatty(&stdin) {
            return RawMode(None);
        }
        let Ok(before) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = before.clone();
        raw.make_raw();
        match tcsetattr(&stdin, OptionalActions::Now, &raw) {
            Ok(()) => RawMode(Some(before)),
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, before);
        }
    }
}

/// A refused WebSocket handshake as the API's error (code and message), like other commands.
fn refused(e: WsError) -> anyhow::Error {
    match e {
        WsError::Http(res) => {
            let status = res.status();
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok());
            match body {
                Some(b) => anyhow!(
                    "{} ({}): {}",
                    b["code"].as_str().unwrap_or("error"),
                    status.as_u16(),
                    b["message"].as_str().unwrap_or("")
                ),
                None => anyhow!("the cell refused the terminal ({status})"),
            }
        }
        other => anyhow!("cannot reach the cell's terminal: {other}"),
    }
}
