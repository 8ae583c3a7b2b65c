//! The per-workspace agent: `devcell agent`, the same binary, running inside the workspace's
//! sandbox. It serves the cell over a Unix socket in its run directory, runs the workspace's
//! tasks with their logs, executes commands, and records activity. It is not a child the cell
//! waits on: it keeps running while the cell restarts or updates, and the cell reconnects.

pub mod client;
pub mod protocol;
pub mod terminal;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use protocol::*;

/// Terminals one workspace may have open at once.
const MAX_TERMINALS: usize = 32;
/// Output of one exec is cut at this many bytes per stream.
const MAX_OUTPUT: usize = 1 << 20;

struct Agent {
    spec: AgentSpec,
    run_dir: PathBuf,
    last_activity_ms: AtomicI64,
    next_terminal: std::sync::atomic::AtomicU64,
    tasks: Mutex<Vec<TaskStatus>>,
    terminals: Mutex<std::collections::BTreeMap<String, Arc<terminal::Terminal>>>,
    /// A shell started with the workspace, handed out by the first terminal request: opening
    /// the first terminal, what nearly every user does first, does not wait for a login shell.
    warm: Mutex<Option<Arc<terminal::Terminal>>>,
}

/// bash when the image has it (the host root does), else the POSIX shell.
pub fn shell() -> &'static str {
    if ["/bin/bash", "/usr/bin/bash"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        "bash"
    } else {
        "sh"
    }
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

impl Agent {
    fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// How long an agent waits for its spec: a cell that went away in the middle of a start
/// replaces the sandbox when it comes back, so one still waiting after this is forgotten.
const SPEC_WITHIN: Duration = Duration::from_secs(3600);

/// Runs the agent until it is killed. `run_dir` holds the socket and the task logs.
///
/// The socket answers from the start, while the cell is still cloning: the cell hands the
/// spec over by request the moment the repositories are in (no polling on either side). Until
/// then every request but the spec's answers 503. The spec never travels as a file: the run
/// directory is the workspace's to write, and what the cell keeps for itself lives outside it.
pub async fn run(run_dir: &Path) -> anyhow::Result<()> {
    let socket = run_dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let slot = Slot {
        agent: Arc::default(),
        run_dir: run_dir.to_owned(),
    };
    let watcher = slot.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SPEC_WITHIN).await;
        if watcher.agent.get().is_none() {
            eprintln!("no spec after {SPEC_WITHIN:?}; the agent stops");
            std::process::exit(1);
        }
    });
    let app = Router::new()
        .route("/v1/spec", post(take_spec))
        .route("/v1/status", get(status))
        .route("/v1/exec", post(exec))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/notice", post(notice))
        .route("/v1/terminals", get(list_terminals).post(create_terminal))
        .route("/v1/ports", get(list_ports))
        .route("/v1/ports/{port}/tunnel", get(tunnel))
        .route("/v1/terminals/{id}", get(attach_terminal))
        .with_state(slot);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The agent once its spec is there.
#[derive(Clone)]
struct Slot {
    agent: Arc<tokio::sync::OnceCell<Arc<Agent>>>,
    run_dir: PathBuf,
}

impl Slot {
    /// Sets the agent up from `spec` and starts its tasks; a second spec changes nothing.
    async fn take(&self, spec: AgentSpec) -> anyhow::Result<Arc<Agent>> {
        self.agent
            .get_or_try_init(|| async {
                let logs = self.run_dir.join(LOGS);
                tokio::fs::create_dir_all(&logs).await?;
                Ok::<_, anyhow::Error>(start(spec, &self.run_dir))
            })
            .await
            .cloned()
    }
}

/// The agent, for requests that need it: 503 until the spec is there.
struct Ready(Arc<Agent>);

impl axum::extract::FromRequestParts<Slot> for Ready {
    type Rejection = Response;

    async fn from_request_parts(
        _: &mut axum::http::request::Parts,
        slot: &Slot,
    ) -> Result<Self, Response> {
        slot.agent.get().cloned().map(Ready).ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the workspace is still starting",
            )
        })
    }
}

/// The agent for `spec`, its tasks started (once the outbound network is up, when it has one).
fn start(spec: AgentSpec, run_dir: &Path) -> Arc<Agent> {
    let tasks = spec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| TaskStatus {
            index: i,
            name: t.name.clone(),
            state: TaskState::Pending,
            exit_code: None,
        })
        .collect();
    let agent = Arc::new(Agent {
        spec,
        run_dir: run_dir.to_owned(),
        last_activity_ms: AtomicI64::new(now_ms()),
        next_terminal: std::sync::atomic::AtomicU64::new(1),
        tasks: Mutex::new(tasks),
        terminals: Mutex::default(),
        warm: Mutex::default(),
    });
    let warmer = agent.clone();
    tokio::spawn(async move {
        let id = format!("t{}", warmer.next_terminal.fetch_add(1, Ordering::SeqCst));
        match terminal::Terminal::spawn(id, &warmer.spec.workdir, &warmer.spec.env, 80, 24) {
            Ok(t) => *warmer.warm.lock().await = Some(t),
            Err(e) => eprintln!("no shell ready ahead: {e}"),
        }
    });
    let starter = agent.clone();
    tokio::spawn(async move {
        if starter.spec.wait_for_network {
            wait_for_network().await;
        }
        for i in 0..starter.spec.tasks.len() {
            tokio::spawn(run_task(starter.clone(), i));
        }
    });
    agent
}

/// The cell hands the spec over; answers with the status once the agent is set up.
async fn take_spec(State(slot): State<Slot>, Json(spec): Json<AgentSpec>) -> Response {
    match slot.take(spec).await {
        Ok(a) => status(Ready(a)).await.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Waits until the outbound interface the cell attaches shows up: at most 12 seconds, as a
/// host under load may take seconds to set it up (tasks started without it fail to fetch),
/// while tasks that need no network should not wait long when it never comes.
async fn wait_for_network() {
    for _ in 0..2400 {
        if tokio::fs::read_to_string("/proc/net/dev")
            .await
            .is_ok_and(|d| d.contains("tap0:"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!("no outbound network after 12 s; starting tasks anyway");
}

async fn status(Ready(a): Ready) -> Json<Status> {
    Json(Status {
        version: crate::version::text().into(),
        pid: std::process::id(),
        last_activity_ms: a.last_activity_ms.load(Ordering::Relaxed),
        tasks: a.tasks.lock().await.clone(),
    })
}

/// Stops the workspace from inside: every process in the sandbox ends with the agent's pid
/// namespace init.
async fn shutdown() -> StatusCode {
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(0);
    });
    StatusCode::ACCEPTED
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(AgentError {
            message: message.into(),
        }),
    )
        .into_response()
}

async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut truncated = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf.len() + n > MAX_OUTPUT {
                    buf.extend_from_slice(&chunk[..MAX_OUTPUT - buf.len()]);
                    truncated = true;
                    // Keep draining so the child does not block on a full pipe.
                } else {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    (buf, truncated)
}

async fn exec(Ready(a): Ready, Json(req): Json<ExecRequest>) -> Response {
    a.touch();
    let Some((program, args)) = req.argv.split_first() else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "argv is empty: give a program and its arguments",
        );
    };
    let timeout = Duration::from_secs(req.timeout_s.unwrap_or(60).clamp(1, 3600));
    let mut cmd = tokio::process::Command::new(program);
    let cwd = req.cwd.as_deref().unwrap_or(&a.spec.workdir);
    cmd.args(args)
        .current_dir(cwd)
        .env("PWD", cwd)
        .envs(a.spec.env.iter().cloned())
        .envs(req.env.iter().cloned())
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("cannot run {program}: {e}"),
            );
        }
    };
    if let (Some(input), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes()).await;
        });
    }
    let out = read_capped(child.stdout.take().expect_or_empty());
    let err = read_capped(child.stderr.take().expect_or_empty());
    let waited = tokio::time::timeout(timeout, async {
        let ((o, ot), (e, et)) = tokio::join!(out, err);
        let status = child.wait().await;
        (o, ot, e, et, status)
    })
    .await;
    a.touch();
    match waited {
        Ok((o, ot, e, et, status)) => Json(ExecResponse {
            exit_code: status.ok().and_then(|s| s.code()),
            stdout: String::from_utf8_lossy(&o).into_owned(),
            stderr: String::from_utf8_lossy(&e).into_owned(),
            timed_out: false,
            truncated: ot || et,
        })
        .into_response(),
        Err(_) => Json(ExecResponse {
            exit_code: None,
            stdout: String::new(),
            stderr: format!("killed after {}s", timeout.as_secs()),
            timed_out: true,
            truncated: false,
        })
        .into_response(),
    }
}

/// Gives an empty reader when a pipe was not set up, instead of panicking.
trait OrEmpty<R> {
    fn expect_or_empty(self) -> Box<dyn tokio::io::AsyncRead + Unpin + Send>;
}

impl<R: tokio::io::AsyncRead + Unpin + Send + 'static> OrEmpty<R> for Option<R> {
    fn expect_or_empty(self) -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
        match self {
            Some(r) => Box::new(r),
            None => Box::new(tokio::io::empty()),
        }
    }
}

/// Runs one task: `before`, `init` (only the first time this workspace starts) and `command`,
/// in one bash, with output appended to the task's log.
async fn run_task(a: Arc<Agent>, index: usize) {
    let task = a.spec.tasks[index].clone();
    // Whether `init` ran is the cell's bookkeeping, not the repository's: it is kept in the
    // user's state directory (so it travels with the home when that is backed up), never in
    // /workspace, where git and the delete confirmation would see it.
    let state = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| a.run_dir.clone())
        .join(".local/state/devcell");
    let marker = state.join(format!("init-done-{index}"));
    // Before this moved, the marker sat in the repository: it still counts, and goes.
    let old = Path::new(&a.spec.workdir).join(format!(".devcell-init-done-{index}"));
    let first_start = !marker.exists() && !old.exists();
    if old.exists() {
        let _ = std::fs::create_dir_all(&state);
        let _ = std::fs::write(&marker, b"");
        let _ = std::fs::remove_file(&old);
    }
    let mut script = String::from("set -e\n");
    if let Some(b) = &task.before {
        script.push_str(b);
        script.push('\n');
    }
    if first_start {
        if let Some(i) = &task.init {
            script.push_str(i);
            script.push('\n');
        }
        script.push_str(&format!(
            "mkdir -p '{}' && : > '{}'\n",
            state.display(),
            marker.display()
        ));
    }
    if let Some(c) = &task.command {
        script.push_str(c);
        script.push('\n');
    }
    let log_path = a.run_dir.join(LOGS).join(format!("task-{index}.log"));
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        Ok(f) => f,
        Err(e) => {
            set_task(&a, index, TaskState::Failed, None).await;
            tracing::error!(error = %e, "cannot open task log");
            return;
        }
    };
    let log2 = log.try_clone();
    set_task(&a, index, TaskState::Running, None).await;
    let mut cmd = tokio::process::Command::new(shell());
    cmd.arg("-c")
        .arg(&script)
        .current_dir(&a.spec.workdir)
        .env("PWD", &a.spec.workdir)
        .envs(a.spec.env.iter().cloned())
        .envs(task.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log);
    match log2 {
        Ok(l) => cmd.stderr(l),
        Err(_) => cmd.stderr(Stdio::null()),
    };
    let result = cmd.status().await;
    let (state, code) = match result {
        Ok(s) if s.success() => (TaskState::Done, s.code()),
        Ok(s) => (TaskState::Failed, s.code()),
        Err(_) => (TaskState::Failed, None),
    };
    set_task(&a, index, state, code).await;
}

async fn set_task(a: &Agent, index: usize, state: TaskState, exit_code: Option<i32>) {
    let mut tasks = a.tasks.lock().await;
    if let Some(t) = tasks.get_mut(index) {
        t.state = state;
        t.exit_code = exit_code;
    }
}

/// Shows a message from the cell (such as "stops in 5 minutes") in every live terminal.
async fn notice(Ready(a): Ready, Json(n): Json<Notice>) -> Json<usize> {
    let terms = a.terminals.lock().await;
    let live: Vec<_> = terms.values().filter(|t| t.alive()).collect();
    for t in &live {
        t.notice(&n.text);
    }
    Json(live.len())
}

async fn list_terminals(Ready(a): Ready) -> Json<Vec<TerminalInfo>> {
    let terms = a.terminals.lock().await;
    Json(
        terms
            .values()
            .map(|t| TerminalInfo {
                id: t.id.clone(),
                alive: t.alive(),
            })
            .collect(),
    )
}

async fn create_terminal(Ready(a): Ready, Json(req): Json<NewTerminal>) -> Response {
    a.touch();
    let mut terms = a.terminals.lock().await;
    if terms.len() >= MAX_TERMINALS {
        // Forget terminals whose shell has ended before refusing.
        terms.retain(|_, t| t.alive());
        if terms.len() >= MAX_TERMINALS {
            return error(
                StatusCode::CONFLICT,
                format!("at most {MAX_TERMINALS} terminals per workspace; close one first"),
            );
        }
    }
    let (cols, rows) = (req.cols.unwrap_or(80), req.rows.unwrap_or(24));
    let warm = a.warm.lock().await.take().filter(|t| t.alive());
    if let Some(t) = warm {
        t.resize(cols, rows).await;
        let id = t.id.clone();
        terms.insert(id.clone(), t);
        return Json(TerminalInfo { id, alive: true }).into_response();
    }
    let id = format!("t{}", a.next_terminal.fetch_add(1, Ordering::SeqCst));
    match terminal::Terminal::spawn(id.clone(), &a.spec.workdir, &a.spec.env, cols, rows) {
        Ok(t) => {
            terms.insert(id.clone(), t);
            Json(TerminalInfo { id, alive: true }).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start a shell: {e}"),
        ),
    }
}

async fn attach_terminal(
    Ready(a): Ready,
    axum::extract::Path(id): axum::extract::Path<String>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let Some(t) = a.terminals.lock().await.get(&id).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no terminal {id}"));
    };
    a.touch();
    ws.on_upgrade(move |socket| async move {
        let agent = a.clone();
        t.attach(socket, move || agent.touch()).await;
    })
}

/// TCP ports something listens on inside the workspace (from /proc/net/tcp and tcp6).
async fn list_ports() -> Json<Vec<u16>> {
    let mut ports = std::collections::BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = tokio::fs::read_to_string(file).await else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN; the local address is HEXIP:HEXPORT.
            if cols.len() > 3
                && cols[3] == "0A"
                && let Some(port) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    Json(ports.into_iter().collect())
}

/// Turns the connection into a raw TCP tunnel to `127.0.0.1:port` inside the workspace (HTTP
/// upgrade to `tcp`). The cell speaks HTTP or WebSocket through it to the workspace's server.
async fn tunnel(
    Ready(a): Ready,
    axum::extract::Path(port): axum::extract::Path<u16>,
    mut req: axum::extract::Request,
) -> Response {
    let target = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("nothing answers on port {port} in the workspace: {e}"),
            );
        }
    };
    a.touch();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut upgraded = hyper_util::rt::TokioIo::new(upgraded);
            let mut target = target;
            let _ = tokio::io::copy_bidirectional(&mut upgraded, &mut target).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "tcp")
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::client::{AgentClient, ClientError};
    use super::*;

    fn spec(dir: &Path, id: &str) -> AgentSpec {
        AgentSpec {
            workspace_id: id.into(),
            workdir: dir.to_string_lossy().into_owned(),
            env: vec![],
            tasks: vec![],
            ports: vec![],
            wait_for_network: false,
        }
    }

    /// A command without a shell, cut off after 5 s.
    fn command(argv: Vec<String>) -> ExecRequest {
        ExecRequest {
            argv,
            cwd: None,
            env: vec![],
            timeout_s: Some(5),
            stdin: None,
        }
    }

    #[tokio::test]
    async fn the_agent_listens_at_once_and_is_ready_the_moment_it_has_its_spec() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().to_owned();
        tokio::spawn(async move { run(&run_dir).await });
        let client = AgentClient::new(dir.path());
        // Listening, but nothing but the spec is served before it comes.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let early = loop {
            match client.status().await {
                Err(ClientError::Unreachable(_)) if std::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => break other,
            }
        };
        match early {
            Err(ClientError::Agent {
                status: 503,
                message,
            }) => {
                assert!(message.contains("starting"), "{message}")
            }
            other => panic!("before its spec the agent answered {other:?}"),
        }
        let exec = client.exec(&command(vec!["true".into()])).await;
        assert!(
            matches!(exec, Err(ClientError::Agent { status: 503, .. })),
            "{exec:?}"
        );

        // Handed over: the answer is the status, and everything is served from then on.
        let status = client.give_spec(&spec(dir.path(), "ws_one")).await.unwrap();
        assert_eq!(status.pid, std::process::id());
        client.status().await.unwrap();
        let out = client
            .exec(&command(vec!["echo".into(), "ready".into()]))
            .await
            .unwrap();
        assert_eq!(out.stdout, "ready\n");
        // A second spec changes nothing.
        let mut other = spec(dir.path(), "ws_other");
        other.workdir = "/nonexistent".into();
        client.give_spec(&other).await.unwrap();
        let out = client.exec(&command(vec!["pwd".into()])).await.unwrap();
        assert_eq!(out.stdout.trim(), dir.path().to_string_lossy());
    }
}
