//! The messages between the cell and a workspace's agent, as JSON over HTTP on the agent's
//! Unix socket. Both sides compile from this one file, so they cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::content::config::Task;

/// The path of the agent's socket inside the run directory (host side: `WSDIR/run/agent.sock`).
pub const SOCKET: &str = "agent.sock";
/// The cell's record of what the agent was told (in the cell's own directory for the
/// sandbox, never in the run directory).
pub const SPEC: &str = "spec.json";
/// Task logs, one file per task, in the run directory so the cell can read them even when the
/// agent is gone (beneath a handle, as the workspace's user: the directory is the workspace's).
pub const LOGS: &str = "logs";

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct AgentSpec {
    pub workspace_id: String,
    /// Where tasks and terminals start (inside the sandbox).
    pub workdir: String,
    pub env: Vec<(String, String)>,
    pub tasks: Vec<Task>,
    /// Ports the repository's configuration names (for the port list).
    #[serde(default)]
    pub ports: Vec<crate::content::config::Port>,
    /// Outbound network is being attached (tap0): tasks wait for it, terminals and exec do not.
    #[serde(default)]
    pub wait_for_network: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Running,
    /// The task's command finished with exit code 0.
    Done,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TaskStatus {
    pub index: usize,
    pub name: String,
    pub state: TaskState,
    pub exit_code: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// Unix milliseconds of the last user activity the agent saw (exec, terminal, proxy).
    pub last_activity_ms: i64,
    pub tasks: Vec<TaskStatus>,
}

/// A message from the cell for the people in the workspace's terminals.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Notice {
    pub text: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ExecRequest {
    /// Program and arguments; run without a shell.
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Seconds before the command is killed (default 60, max 3600).
    pub timeout_s: Option<u64>,
    /// Bytes fed to standard input.
    pub stdin: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ExecResponse {
    /// `None` when the command was killed by a signal or the timeout.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// True when output was cut at the limit.
    pub truncated: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AgentError {
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct NewTerminal {
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TerminalInfo {
    pub id: String,
    /// False once the shell has exited (its output can still be read).
    pub alive: bool,
}
