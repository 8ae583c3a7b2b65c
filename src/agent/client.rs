//! The cell's side of the agent protocol: HTTP/1.1 over the agent's Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{
    AgentError, AgentSpec, ExecRequest, ExecResponse, NewTerminal, Notice, SOCKET, Status,
    TerminalInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the workspace's agent is not reachable: {0}")]
    Unreachable(String),
    #[error("the workspace's agent answered {status}: {message}")]
    Agent { status: u16, message: String },
    #[error("the workspace's agent did not answer within {0:?}")]
    Timeout(Duration),
}

/// The most the cell reads of one answer: the agent runs inside the workspace, so whatever
/// answers on its socket may be the workspace's own program.
const MAX_ANSWER: usize = 16 << 20;

#[derive(Clone, Debug)]
pub struct AgentClient {
    run_dir: PathBuf,
}

impl AgentClient {
    pub fn new(run_dir: &Path) -> AgentClient {
        AgentClient {
            run_dir: run_dir.to_owned(),
        }
    }

    /// Connects to the agent's socket. The run directory is writable inside the sandbox: the
    /// socket is opened beneath it without following links (see [`crate::beneath`]), so a
    /// link in its place cannot send the cell's requests to another socket.
    async fn connect(&self) -> Result<tokio::net::UnixStream, ClientError> {
        let socket = crate::beneath::SocketRef::open(&self.run_dir, SOCKET)
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        tokio::net::UnixStream::connect(socket.path())
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let fut = async {
            let stream = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ClientError::Unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let bytes = match body {
                Some(b) => {
                    serde_json::to_vec(b).map_err(|e| ClientError::Unreachable(e.to_string()))?
                }
                None => Vec::new(),
            };
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "agent")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| ClientError::Unreachable(e.to_string()))?;
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| ClientError::Unreachable(e.to_string()))?;
            let status = res.status();
            let body = http_body_util::Limited::new(res.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable(format!("bad answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<AgentError>(&body)
                    .map(|e| e.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                return Err(ClientError::Agent {
                    status: status.as_u16(),
                    message,
                });
            }
            serde_json::from_slice(&body)
                .map_err(|e| ClientError::Unreachable(format!("bad answer: {e}")))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Hands the agent its spec; answers once the agent is set up (as `status` then would).
    pub async fn give_spec(&self, spec: &AgentSpec) -> Result<Status, ClientError> {
        self.call(Method::POST, "/v1/spec", Some(spec), Duration::from_secs(5))
            .await
    }

    /// Hands the spec over once the agent listens (it may still be starting: then it is
    /// tried again every millisecond), and returns its answer: its status once set up.
    /// Gives up after `within`.
    pub async fn give_spec_when_up(
        &self,
        spec: &AgentSpec,
        within: Duration,
    ) -> Result<Status, ClientError> {
        let until = tokio::time::Instant::now() + within;
        loop {
            match self.give_spec(spec).await {
                Err(ClientError::Unreachable(_)) if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/status", None, Duration::from_secs(5))
            .await
    }

    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResponse, ClientError> {
        let limit = Duration::from_secs(req.timeout_s.unwrap_or(60).clamp(1, 3600) + 10);
        self.call(Method::POST, "/v1/exec", Some(req), limit).await
    }

    /// Asks the agent to end the sandbox; errors are ignored (it may already be gone).
    pub async fn shutdown(&self) {
        let _ = self
            .call::<(), serde_json::Value>(
                Method::POST,
                "/v1/shutdown",
                None,
                Duration::from_secs(2),
            )
            .await;
    }

    /// Shows `text` in every live terminal; returns how many.
    pub async fn notice(&self, text: &str) -> Result<usize, ClientError> {
        let n = Notice { text: text.into() };
        self.call(Method::POST, "/v1/notice", Some(&n), Duration::from_secs(5))
            .await
    }

    pub async fn terminals(&self) -> Result<Vec<TerminalInfo>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/terminals", None, Duration::from_secs(5))
            .await
    }

    pub async fn create_terminal(&self, req: &NewTerminal) -> Result<TerminalInfo, ClientError> {
        self.call(
            Method::POST,
            "/v1/terminals",
            Some(req),
            Duration::from_secs(10),
        )
        .await
    }

    /// Opens the WebSocket of terminal `id` on the agent.
    pub async fn attach_terminal(
        &self,
        id: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>, ClientError> {
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) || id.is_empty() || id.len() > 20 {
            return Err(ClientError::Agent {
                status: 404,
                message: format!("no terminal {id}"),
            });
        }
        let stream = self.connect().await?;
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://agent/v1/terminals/{id}"), stream)
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(r) => ClientError::Agent {
                        status: r.status().as_u16(),
                        message: format!("no terminal {id}"),
                    },
                    other => ClientError::Unreachable(other.to_string()),
                })?;
        Ok(ws)
    }

    /// Ports something listens on inside the workspace.
    pub async fn ports(&self) -> Result<Vec<u16>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/ports", None, Duration::from_secs(5))
            .await
    }

    /// A raw byte stream to `127.0.0.1:port` inside the workspace.
    pub async fn tunnel(&self, port: u16) -> Result<hyper::upgrade::Upgraded, ClientError> {
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        let req = Request::builder()
            .uri(format!("/v1/ports/{port}/tunnel"))
            .header("host", "agent")
            .header("connection", "upgrade")
            .header("upgrade", "tcp")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        if res.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let status = res.status().as_u16();
            let body = http_body_util::Limited::new(res.into_body(), 64 << 10)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<AgentError>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Agent { status, message });
        }
        let upgraded = hyper::upgrade::on(res)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        Ok(upgraded)
    }
}
