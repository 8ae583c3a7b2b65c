//! Terminals inside the workspace: a login shell on a pseudo-terminal that outlives the
//! WebSocket attached to it. Output is kept in a bounded scrollback, replayed to whoever
//! attaches next, and broadcast live to every attached client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, broadcast};

/// How much output a terminal keeps for reconnecting clients.
pub const SCROLLBACK: usize = 256 * 1024;

/// Control messages a client sends as WebSocket text frames; binary frames are keyboard input.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Control {
    Resize { cols: u16, rows: u16 },
    Input { data: String },
}

pub struct Terminal {
    pub id: String,
    writer: Mutex<pty_process::OwnedWritePty>,
    output: std::sync::Mutex<Output>,
    alive: AtomicBool,
}

/// What the terminal printed, and the live feed of what it prints next: `None` once its
/// program has exited, so attached clients get the last output and then a close.
struct Output {
    scrollback: VecDeque<u8>,
    live: Option<broadcast::Sender<Bytes>>,
}

/// The close code an attached client gets when the terminal's program has exited (a normal
/// close: there is nothing to reconnect to).
pub const EXITED: u16 = 1000;

impl Terminal {
    /// Starts `bash -l` on a new pseudo-terminal in `cwd`.
    pub fn spawn(
        id: String,
        cwd: &str,
        env: &[(String, String)],
        cols: u16,
        rows: u16,
    ) -> std::io::Result<Arc<Terminal>> {
        let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
        pty.resize(pty_process::Size::new(rows.max(1), cols.max(1)))
            .map_err(std::io::Error::other)?;
        let mut child = pty_process::Command::new(super::shell())
            .arg("-l")
            .current_dir(cwd)
            // Shells show the folder by this name, link and all (`/workspaces/NAME`).
            .env("PWD", cwd)
            .envs(env.iter().cloned())
            .env("TERM", "xterm-256color")
            .spawn(pts)
            .map_err(std::io::Error::other)?;
        let (mut reader, writer) = pty.into_split();
        let (live, _) = broadcast::channel(256);
        let term = Arc::new(Terminal {
            id,
            writer: Mutex::new(writer),
            output: std::sync::Mutex::new(Output {
                scrollback: VecDeque::new(),
                live: Some(live),
            }),
            alive: AtomicBool::new(true),
        });
        let t = term.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => t.output(&buf[..n]),
                }
            }
            let _ = child.wait().await;
            t.alive.store(false, Ordering::SeqCst);
            t.output(b"\r\n[process exited]\r\n");
            if let Ok(mut out) = t.output.lock() {
                out.live = None;
            }
        });
        Ok(term)
    }

    fn output(&self, data: &[u8]) {
        // Appending and broadcasting under one lock keeps a new client's replay and its live
        // stream free of gaps and duplicates.
        if let Ok(mut out) = self.output.lock() {
            out.scrollback.extend(data);
            let excess = out.scrollback.len().saturating_sub(SCROLLBACK);
            out.scrollback.drain(..excess);
            if let Some(live) = &out.live {
                let _ = live.send(Bytes::copy_from_slice(data));
            }
        }
    }

    /// Shows a message from the cell in the terminal (not as input to its program).
    pub fn notice(&self, text: &str) {
        let line = text.replace(['\r', '\n'], " ");
        self.output(format!("\r\n\x1b[1;33m[devcell] {line}\x1b[0m\r\n").as_bytes());
    }

    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn input(&self, data: &[u8]) {
        let mut w = self.writer.lock().await;
        let _ = w.write_all(data).await;
    }

    pub(super) async fn resize(&self, cols: u16, rows: u16) {
        let w = self.writer.lock().await;
        let _ = w.resize(pty_process::Size::new(
            rows.clamp(1, 1000),
            cols.clamp(1, 1000),
        ));
    }

    /// Serves one attached client until it goes away; the shell keeps running.
    pub async fn attach(self: Arc<Self>, mut ws: WebSocket, on_input: impl Fn() + Send + 'static) {
        let (replay, rx) = match self.output.lock() {
            Ok(out) => (
                out.scrollback.iter().copied().collect::<Vec<u8>>(),
                out.live.as_ref().map(|l| l.subscribe()),
            ),
            Err(_) => return,
        };
        if !replay.is_empty() && ws.send(Message::Binary(replay.into())).await.is_err() {
            return;
        }
        let exited = || {
            Message::Close(Some(axum::extract::ws::CloseFrame {
                code: EXITED,
                reason: "the program exited".into(),
            }))
        };
        let Some(mut rx) = rx else {
            let _ = ws.send(exited()).await;
            return;
        };
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Ok(data) => if ws.send(Message::Binary(data)).await.is_err() { break },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = ws.send(exited()).await;
                        break;
                    }
                },
                msg = ws.recv() => match msg {
                    Some(Ok(Message::Binary(data))) => {
                        on_input();
                        self.input(&data).await;
                    }
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                        Ok(Control::Resize { cols, rows }) => self.resize(cols, rows).await,
                        Ok(Control::Input { data }) => {
                            on_input();
                            self.input(data.as_bytes()).await;
                        }
                        Err(_) => {
                            on_input();
                            self.input(text.as_bytes()).await;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}
