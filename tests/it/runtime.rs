//! Workspaces that really run: real git repositories, real bubblewrap sandboxes with cgroup
//! limits, the real agent. Each test tries what a user does, and what a hostile workspace would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::TestCell;

pub const START_WITHIN: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("git is needed: apt-get install -y git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository (readable by every uid) holding `files`, with `main` checked in.
pub fn bare_repo(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = root.join(format!("{name}-src"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    for (path, content) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "initial"]);
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&bare)
        .status()
        .unwrap();
    bare
}

/// Commits everything in `work` (the source of a [`bare_repo`]) and pushes it to `bare`.
pub fn commit_all(work: &Path, bare: &Path) {
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", "more"]);
    git(work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(bare)
        .status()
        .unwrap();
}

pub async fn create_started(c: &TestCell, body: Value) -> String {
    let (s, ws) = c
        .owner(Method::POST, "/api/v1/workspaces", Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    ws["id"].as_str().unwrap().to_owned()
}

/// A workspace on a one-file repository `name` under `repos`, started and running.
pub async fn running_workspace(c: &TestCell, repos: &Path, name: &str) -> String {
    let bare = bare_repo(repos, name, &[("README.md", "x\n")]);
    let id = create_started(
        c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    id
}

pub async fn exec(c: &TestCell, id: &str, cmd: &str) -> Value {
    let (s, out) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/exec"),
            Some(json!({ "command": ["sh", "-c", cmd] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    out
}

#[tokio::test]
async fn a_workspace_starts_runs_its_tasks_executes_commands_and_stops_with_its_git_state() {
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let gitpod = "tasks:\n  - name: setup\n    init: echo initialized > /workspace/init.txt\n    command: echo hello from the task\nports:\n  - port: 3000\n";
    let bare = bare_repo(
        repos.path(),
        "app",
        &[(".gitpod.yml", gitpod), ("README.md", "# app\n")],
    );
    let t = Instant::now();
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    let ws = c.wait_phase(&id, "running", START_WITHIN).await;
    let took = t.elapsed();
    let phases: Vec<_> = ws["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["phase"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        phases,
        ["pending", "creating", "initializing", "running"],
        "{ws:#}"
    );
    eprintln!("create → running in {took:?}");

    let out = exec(&c, &id, "echo hi; pwd; id -u; hostname; ls /workspace/app").await;
    assert_eq!(out["exit_code"], 0, "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with("hi\n/workspace/app\n1000\nws-"),
        "{stdout}"
    );
    assert!(stdout.contains("README.md"), "{stdout}");
    let out = exec(&c, &id, "echo oops >&2; exit 3").await;
    assert_eq!(
        (out["exit_code"].as_i64(), out["stderr"].as_str()),
        (Some(3), Some("oops\n"))
    );

    // The task ran: init once, then its command, with its output in the log.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, tasks) = c
            .owner(Method::GET, &format!("/api/v1/workspaces/{id}/tasks"), None)
            .await;
        let task = &tasks[0];
        if task["state"] == "done" {
            assert_eq!(task["name"], "setup");
            assert!(
                task["log"]
                    .as_str()
                    .unwrap()
                    .contains("hello from the task"),
                "{task}"
            );
            break;
        }
        assert!(Instant::now() < until, "task did not finish: {tasks}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        exec(&c, &id, "cat /workspace/init.txt").await["stdout"],
        "initialized\n"
    );
    // The cell keeps its bookkeeping out of the repository, and the user has the sandbox's
    // own name whatever the host calls uid 1000.
    let out = exec(
        &c,
        &id,
        "git status --porcelain --untracked-files=all; id -un; id -gn; getent passwd dev | cut -d: -f6",
    )
    .await;
    assert_eq!(out["stdout"], "dev\ndev\n/home/dev\n", "{out}");

    // Work that is not pushed is recorded when the workspace stops.
    exec(
        &c,
        &id,
        "cd /workspace/app && echo change >> README.md && echo new > notes.txt",
    )
    .await;
    let (s, _) = c
        .owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let ws = c.wait_phase(&id, "stopped", START_WITHIN).await;
    let g = &ws["git"][0];
    assert_eq!(g["dir"], "app", "{ws:#}");
    assert_eq!(g["clean"], false);
    assert!(g["uncommitted"].to_string().contains("README.md"), "{g}");
    assert_eq!(g["untracked"], json!(["notes.txt"]), "{g}");
    let (s, b) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/exec"),
            Some(json!({ "command": ["true"] })),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_running"))
    );

    // Starting again keeps the files and does not run `init` a second time.
    c.owner(
        Method::POST,
        &format!("/api/v1/workspaces/{id}/start"),
        None,
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let out = exec(
        &c,
        &id,
        "cat /workspace/app/notes.txt; rm /workspace/init.txt; sleep 0.5; ls /workspace",
    )
    .await;
    assert!(
        out["stdout"].as_str().unwrap().starts_with("new\n"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        exec(
            &c,
            &id,
            "test -e /workspace/init.txt && echo again || echo once"
        )
        .await["stdout"],
        "once\n"
    );

    c.owner(Method::DELETE, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    let until = Instant::now() + START_WITHIN;
    while c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
        .await
        .0
        != StatusCode::NOT_FOUND
    {
        assert!(Instant::now() < until, "not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !c.cell()
            .workspace_dir(&devcell::domain::WorkspaceId::parse(&id).unwrap())
            .exists(),
        "files removed"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_workspace_sees_nothing_of_the_cell_or_other_workspaces() {
    let c = TestCell::start_with_runtime().await;
    // Outbound access off: only loopback inside (the other case is its own test).
    c.set_policy(json!({ "outbound_network": false })).await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "iso", &[("README.md", "x\n")]);
    let url = format!("file://{}", bare.display());
    let a = create_started(
        &c,
        json!({ "name": "a", "repos": [{ "url": url }], "start": true }),
    )
    .await;
    let b = create_started(
        &c,
        json!({ "name": "b", "repos": [{ "url": url }], "start": true }),
    )
    .await;
    c.wait_phase(&a, "running", START_WITHIN).await;
    c.wait_phase(&b, "running", START_WITHIN).await;
    exec(
        &c,
        &a,
        "echo secret-of-a > /workspace/iso/secret.txt; echo home-of-a > ~/private",
    )
    .await;

    let data = c.data_dir();
    let a_dir = c
        .cell()
        .workspace_dir(&devcell::domain::WorkspaceId::parse(&a).unwrap());
    let probes = format!(
        "ls {data}; cat {data}/devcell.redb; ls {data}/admin.sock; ls {a}/workspace; cat {a}/workspace/iso/secret.txt; \
         grep -rs secret-of-a / --include=secret.txt; ls /root /home/dev/..; cat /etc/shadow; echo pids:$(ls /proc | grep -c '^[0-9]'); \
         kill -0 {cell_pid} && echo killed-cell; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; touch /usr/x; \
         unshare -U true 2>/dev/null && echo nested-namespace; \
         python3 -c 'import ctypes; libc=ctypes.CDLL(None, use_errno=True); print(\"keyctl:\", libc.syscall(250, 0, 0, 0, 0, 0), ctypes.get_errno())'",
        data = data.display(),
        a = a_dir.display(),
        cell_pid = std::process::id()
    );
    let out = exec(&c, &b, &probes).await;
    let stdout = out["stdout"].as_str().unwrap();
    assert!(!stdout.contains("secret-of-a"), "b read a's files: {out:#}");
    assert!(!stdout.contains("home-of-a"), "{out:#}");
    assert!(
        !stdout.contains("killed-cell"),
        "b could signal the cell: {out:#}"
    );
    assert!(!stdout.contains("root:"), "b read /etc/shadow: {out:#}");
    assert!(
        !stdout.contains("nested-namespace"),
        "the seccomp filter lets namespaces be made: {out:#}"
    );
    assert!(
        stdout.contains("keyctl: -1 1\n"),
        "keyctl is not refused with EPERM: {out:#}"
    );
    let pids: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pids:"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids < 10, "b sees {pids} processes: {out:#}");
    let ifaces: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("pids:"))
        .skip(1)
        .filter(|l| !l.starts_with("keyctl:"))
        .collect();
    assert_eq!(ifaces, ["lo"], "only loopback inside: {out:#}");
    let stderr = out["stderr"].as_str().unwrap();
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(
        stderr.contains("Read-only file system") || stderr.contains("Permission denied"),
        "{stderr}"
    );
    // a still has its file.
    assert_eq!(
        exec(&c, &a, "cat /workspace/iso/secret.txt").await["stdout"],
        "secret-of-a\n"
    );
    c.stop().await;
}

#[tokio::test]
async fn class_limits_contain_memory_hogs_and_fork_bombs() {
    let c = TestCell::start_with_runtime().await;
    let org = c.org_id().await;
    let (s, cls) = c
        .owner(Method::POST, &format!("/api/v1/orgs/{org}/classes"), Some(json!({ "name": "tiny", "cpu_millis": 500, "memory_bytes": 128u64 << 20, "disk_bytes": 1u64 << 30, "max_processes": 64 })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{cls}");
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "lim", &[("README.md", "x\n")]);
    let id = create_started(&c, json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "class": "tiny", "start": true })).await;
    c.wait_phase(&id, "running", START_WITHIN).await;

    // 400 MB through `tail`, which buffers it all: killed inside the workspace only.
    let out = exec(
        &c,
        &id,
        "head -c 400000000 /dev/zero | tail > /dev/null; echo tail-exit:$?",
    )
    .await;
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("tail-exit:137"),
        "the hog was not OOM-killed: {out:#}"
    );

    // A fork storm hits the process limit; the workspace and its agent survive it.
    // The shell itself gives up when fork fails (dash exits 2): what matters is the count.
    exec(
        &c,
        &id,
        "for i in $(seq 1 200); do sleep 3 & done 2>/dev/null; echo spawned",
    )
    .await;
    let pids_dir = format!("/sys/fs/cgroup/pids/devcell/{id}");
    if std::path::Path::new(&pids_dir).exists() {
        let current: usize = std::fs::read_to_string(format!("{pids_dir}/pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            current <= 64,
            "{current} processes in a class limited to 64"
        );
        let events = std::fs::read_to_string(format!("{pids_dir}/pids.events")).unwrap();
        assert!(
            !events.contains("max 0"),
            "the limit was never hit: {events}"
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = exec(&c, &id, "echo still alive").await;
    assert_eq!(out["stdout"], "still alive\n");
    c.stop().await;
}

#[tokio::test]
async fn broken_configuration_and_missing_branches_fail_the_start_with_the_reason() {
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let broken = bare_repo(
        repos.path(),
        "broken",
        &[(
            ".gitpod.yml",
            "tasks:\n  - name: ok\n   init: bad indentation\n",
        )],
    );
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", broken.display()) }], "start": true }),
    )
    .await;
    let ws = c.wait_phase(&id, "failed", START_WITHIN).await;
    let msg = ws["message"].as_str().unwrap();
    assert!(
        msg.contains(".gitpod.yml:3:"),
        "the message names file and line: {msg}"
    );

    let fine = bare_repo(repos.path(), "fine", &[("README.md", "x\n")]);
    let id = create_started(&c, json!({ "repos": [{ "url": format!("file://{}", fine.display()), "branch": "nope" }], "start": true })).await;
    let ws = c.wait_phase(&id, "failed", START_WITHIN).await;
    assert!(ws["message"].as_str().unwrap().contains("nope"), "{ws:#}");

    let id = create_started(&c, json!({ "repos": [{ "url": format!("file://{}/missing.git", repos.path().display()) }], "start": true })).await;
    let ws = c.wait_phase(&id, "failed", START_WITHIN).await;
    assert!(
        ws["message"].as_str().unwrap().contains("not found"),
        "{ws:#}"
    );
    c.stop().await;
}

#[tokio::test]
async fn workspaces_keep_running_through_a_cell_restart() {
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "keep", &[("README.md", "x\n")]);
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    // A process that must survive: it holds state in memory.
    exec(
        &c,
        &id,
        "nohup sh -c 'echo $$ > /tmp/survivor.pid; exec sleep 600' >/dev/null 2>&1 &",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = exec(&c, &id, "cat /tmp/survivor.pid").await["stdout"]
        .as_str()
        .unwrap()
        .to_owned();

    let dir = c.stop_keep_data().await;
    let c = TestCell::restart(dir).await;
    let ws = c.wait_phase(&id, "running", START_WITHIN).await;
    assert_eq!(ws["desired"], "running");
    let after = exec(
        &c,
        &id,
        "cat /tmp/survivor.pid; kill -0 $(cat /tmp/survivor.pid) && echo alive",
    )
    .await;
    assert_eq!(
        after["stdout"].as_str().unwrap(),
        format!("{before}alive\n"),
        "{after:#}"
    );

    // If the sandbox is gone (host reboot), the workspace is stopped and files are kept.
    exec(&c, &id, "echo kept > /workspace/keep/file.txt").await;
    let dir = c.stop_keep_data().await;
    let rt = crate::harness::local_runtime();
    rt.stop(&devcell::domain::WorkspaceId::parse(&id).unwrap())
        .await
        .unwrap();
    let c = TestCell::restart(dir).await;
    let ws = c.wait_phase(&id, "stopped", START_WITHIN).await;
    assert_eq!(ws["desired"], "stopped", "{ws:#}");
    // ... and its files are backed up on the way, as at any stop.
    assert_eq!(ws["backup"]["state"], "ok", "{ws:#}");
    assert_eq!(ws["backups"].as_array().unwrap().len(), 1, "{ws:#}");
    let wsid = devcell::domain::WorkspaceId::parse(&id).unwrap();
    let file = c
        .cell()
        .workspace_dir(&wsid)
        .join("workspace/keep/file.txt");
    let _held = c.cell().hold_files(&wsid).unwrap();
    assert_eq!(std::fs::read_to_string(file).unwrap(), "kept\n");
    c.stop().await;
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn attach(c: &TestCell, path: &str, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}{path}", c.url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Reads terminal output until `needle` shows up (or fails after 10 s with what came).
pub async fn read_until(ws: &mut Ws, needle: &str) -> String {
    use futures::StreamExt;
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b)))) => {
                seen.push_str(&String::from_utf8_lossy(&b))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no {needle:?} in terminal output ({other:?}); got: {seen}"),
        }
    }
    seen
}

#[tokio::test]
async fn terminals_run_resize_and_replay_their_scrollback_on_reconnect() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "term", &[("README.md", "x\n")]);
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;

    let (s, t) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/terminals"),
            Some(json!({ "cols": 100, "rows": 30 })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let path = t["attach"].as_str().unwrap().to_owned();
    let token = c.owner_token.clone();
    let mut ws = attach(&c, &path, &token).await;
    ws.send(Message::Binary(
        "stty size; echo hel''lo-from-term\n".into(),
    ))
    .await
    .unwrap();
    let out = read_until(&mut ws, "hello-from-term").await;
    assert!(out.contains("30 100"), "{out}");
    ws.send(Message::Text(
        r#"{"type":"resize","cols":120,"rows":40}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary("stty size\n".into()))
        .await
        .unwrap();
    read_until(&mut ws, "40 120").await;
    // A process started in the terminal keeps running without a client.
    ws.send(Message::Binary("export MARK=still-here\n".into()))
        .await
        .unwrap();
    drop(ws);

    let mut again = attach(&c, &path, &token).await;
    let replay = read_until(&mut again, "hello-from-term").await;
    assert!(replay.contains("40 120"), "{replay}");
    again
        .send(Message::Binary("echo \"[$MARK]\"\n".into()))
        .await
        .unwrap();
    read_until(&mut again, "[still-here]").await;

    // Several terminals, each its own shell.
    let (s, _) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/terminals"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let terminals = || async {
        let (_, list) = c
            .owner(
                Method::GET,
                &format!("/api/v1/workspaces/{id}/terminals"),
                None,
            )
            .await;
        list.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(terminals().await.len(), 2);

    // Opened and attached in one step: the first frame names the terminal, sized as asked.
    use futures::StreamExt;
    let mut fresh = attach(
        &c,
        &format!("/api/v1/workspaces/{id}/terminals/new?cols=90&rows=20"),
        &token,
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(10), fresh.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(opened) = first else {
        panic!("the first frame is not the terminal's name: {first:?}")
    };
    let opened: Value = serde_json::from_str(opened.as_str()).unwrap();
    assert_eq!(opened["type"], "opened", "{opened}");
    let tid = opened["id"].as_str().unwrap().to_owned();
    assert_eq!(
        opened["attach"],
        format!("/api/v1/workspaces/{id}/terminals/{tid}")
    );
    fresh
        .send(Message::Binary("stty size; echo one''-step\n".into()))
        .await
        .unwrap();
    let out = read_until(&mut fresh, "one-step").await;
    assert!(out.contains("20 90"), "{out}");
    drop(fresh);
    assert!(terminals().await.contains(&tid));
    let mut back = attach(&c, opened["attach"].as_str().unwrap(), &token).await;
    read_until(&mut back, "one-step").await;

    // Somebody else's terminal is out of reach.
    let (_, member) = c.add_user("dev@example.com", "member").await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}{path}", c.url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {member}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    c.stop().await;
}

#[tokio::test]
async fn ports_are_reachable_through_the_cell_private_by_default_and_shareable() {
    use futures::{SinkExt, StreamExt};
    use reqwest::header;
    use tokio_tungstenite::tungstenite::Message;
    let c = TestCell::start_full(
        |cfg| cfg.server.workspace_domain = Some("ws.test".into()),
        None,
        Some(crate::harness::local_runtime()),
    )
    .await;
    let repos = tempfile::tempdir().unwrap();
    let server = include_str!("../fixtures/port_server.py");
    let gitpod = "tasks:\n  - name: web\n    command: python3 server.py 3000\nports:\n  - port: 3000\n    name: web\n";
    let bare = bare_repo(
        repos.path(),
        "web",
        &[(".gitpod.yml", gitpod), ("server.py", server)],
    );
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ports) = c
            .owner(Method::GET, &format!("/api/v1/workspaces/{id}/ports"), None)
            .await;
        if ports[0]["listening"] == true {
            assert_eq!(
                (
                    ports[0]["port"].as_u64(),
                    ports[0]["configured"].as_str(),
                    ports[0]["visibility"].as_str()
                ),
                (Some(3000), Some("web"), Some("private"))
            );
            assert_eq!(
                ports[0]["url"],
                format!(
                    "http://3000-{}.ws.test:{}/",
                    id.replace('_', "-"),
                    c.url.rsplit(':').next().unwrap()
                ),
                "{ports}"
            );
            break;
        }
        assert!(Instant::now() < until, "port 3000 never listened: {ports}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each port answers on an origin of its own; the cell reaches it at its own address.
    let origin = format!("3000-{}.ws.test", id.replace('_', "-"));
    let on_port = |path: &str, port_host: &str| {
        c.http.get(c.url(path)).header(
            header::HOST,
            format!("{port_host}:{}", c.url.rsplit(':').next().unwrap()),
        )
    };
    let res = on_port("/hello?x=1", &origin)
        .bearer_auth(&c.owner_token)
        .header(
            header::COOKIE,
            "devcell_session=stolen; devcell_port=forged; other=1",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().get(header::X_FRAME_OPTIONS).is_none(),
        "the port's answer is its own"
    );
    let cookies: Vec<String> = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cookies,
        ["app=1; Path=/"],
        "the workspace cannot plant the cell's cookie"
    );
    let body = res.text().await.unwrap();
    assert_eq!(
        body, "path=/hello?x=1 cookie=other=1 auth= prefix=",
        "cell credentials are not passed on"
    );

    // Private by default: a browser without the port's credential goes to the dashboard to get
    // it; another member gets nothing.
    let res = on_port("/hello?x=1", &origin).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let login = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(
        login.starts_with(&c.url("/port-login?"))
            && login.contains(&format!("w={id}&p=3000&next=%2Fhello%3Fx%3D1")),
        "{login}"
    );
    // Not signed in at the dashboard either: its sign-in page goes on to the port.
    let res = c.http.get(&login).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("Sign in to open port 3000") && page.contains("name=\"next\""),
        "{page}"
    );
    let back = format!("/port-login?w={id}&p=3000&next=%2Fhello%3Fx%3D1");
    for (next, to) in [(back.as_str(), back.as_str()), ("//evil.example/", "/")] {
        let res = c
            .http
            .post(c.url("/login"))
            .form(&[
                ("email", crate::harness::OWNER_EMAIL),
                ("password", crate::harness::OWNER_PASSWORD),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{next}");
        assert_eq!(res.headers()[header::LOCATION], to, "{next}");
    }
    let post = c
        .http
        .post(c.url("/anything"))
        .header(header::HOST, &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    let (_, member) = c.add_user("dev@example.com", "member").await;
    let status = |r: reqwest::Response| r.status();
    assert_eq!(
        status(
            on_port("/", &origin)
                .bearer_auth(&member)
                .send()
                .await
                .unwrap()
        ),
        StatusCode::NOT_FOUND
    );
    let (s, _) = c
        .call(
            Method::PUT,
            &format!("/api/v1/workspaces/{id}/ports/3000"),
            Some(&member),
            Some(json!({ "visibility": "public" })),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "members cannot share others' ports"
    );

    // A browser's way in: the dashboard session mints a grant for this port's origin, which
    // turns it into a cookie of its own; the grant works once, the cookie on this origin only.
    let owner = c.cell().find_user(None).unwrap();
    let session = c.login_cookie(&owner.id).await;
    let res = c
        .http
        .get(&login)
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let grant = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let grant_path = grant
        .strip_prefix(&format!(
            "http://{origin}:{}",
            c.url.rsplit(':').next().unwrap()
        ))
        .unwrap_or_else(|| panic!("the grant goes elsewhere: {grant}"))
        .to_owned();
    assert!(grant_path.starts_with("/__devcell/auth?grant="), "{grant}");
    let res = on_port(&grant_path, &origin).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/hello?x=1");
    let cookie = crate::harness::cookie_of(&res);
    assert!(cookie.starts_with("devcell_port="), "{cookie}");
    let again = on_port(&grant_path, &origin).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::GONE, "a grant works once");
    let res = on_port("/hello", &origin)
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.text()
            .await
            .unwrap()
            .starts_with("path=/hello cookie= ")
    );
    let other_origin = format!("3001-{}.ws.test", id.replace('_', "-"));
    let res = on_port("/", &other_origin)
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "a port's credential opens no other port"
    );
    // The dashboard session itself opens nothing on the port's origin.
    let res = on_port("/", &origin)
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // Signing out ends the port's credential with the session.
    let secret = session.split_once('=').unwrap().1;
    let signed_in = c.cell().authenticate_session(secret).unwrap();
    c.cell().logout(&signed_in).unwrap();
    let res = on_port("/", &origin)
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "the session is gone");

    let (s, _) = c
        .owner(
            Method::PUT,
            &format!("/api/v1/workspaces/{id}/ports/3000"),
            Some(json!({ "visibility": "org" })),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        status(
            on_port("/", &origin)
                .bearer_auth(&member)
                .send()
                .await
                .unwrap()
        ),
        StatusCode::OK
    );
    assert_eq!(
        status(on_port("/", &origin).send().await.unwrap()),
        StatusCode::SEE_OTHER
    );
    c.owner(
        Method::PUT,
        &format!("/api/v1/workspaces/{id}/ports/3000"),
        Some(json!({ "visibility": "public" })),
    )
    .await;
    assert_eq!(
        status(on_port("/", &origin).send().await.unwrap()),
        StatusCode::OK
    );

    // A path URL redirects to the port's origin, path and query kept.
    let res = c
        .http
        .get(c.url(&format!("/w/{id}/p/3000/hello?x=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        res.headers()[header::LOCATION],
        format!(
            "http://{origin}:{}/hello?x=1",
            c.url.rsplit(':').next().unwrap()
        )
    );
    // A name the cell does not serve is refused (DNS rebinding); the dashboard's answers may
    // not be framed.
    let res = c
        .http
        .get(c.url("/healthz"))
        .header(header::HOST, "rebound.attacker.test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "unknown_host");
    let res = c.http.get(c.url("/login")).send().await.unwrap();
    assert_eq!(res.headers()[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(
        res.headers()[header::CONTENT_SECURITY_POLICY],
        "frame-ancestors 'none'"
    );

    // WebSockets pass through.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/ws", c.url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("host", origin.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text("ping".into())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::Text("echo:ping".into()));

    // A port nobody listens on is a clear 502.
    c.owner(
        Method::PUT,
        &format!("/api/v1/workspaces/{id}/ports/3001"),
        Some(json!({ "visibility": "public" })),
    )
    .await;
    let res = on_port("/", &other_origin).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "port_unreachable"
    );
    c.stop().await;
}

#[tokio::test]
async fn private_repositories_clone_with_a_stored_token_that_goes_nowhere_else() {
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(
        repos.path(),
        "private",
        &[("README.md", "secret project\n")],
    );
    let (addr, server) = crate::content::serve_git_http(repos.path().to_owned()).await;
    let c = crate::content::cell_trusting_git_at(addr).await;
    let url = format!(
        "http://{addr}/{}",
        bare.file_name().unwrap().to_string_lossy()
    );

    // Without a credential the start fails and says why.
    let id = create_started(&c, json!({ "repos": [{ "url": url }], "start": true })).await;
    let ws = c.wait_phase(&id, "failed", START_WITHIN).await;
    assert!(
        ws["message"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{ws:#}"
    );

    let token = crate::content::TOKEN;
    let (s, cred) = c
        .owner(Method::POST, "/api/v1/git-credentials", Some(json!({ "host": addr.to_string(), "username": crate::content::USER, "token": token })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{cred}");
    assert!(!cred.to_string().contains(token));
    let (_, list) = c.owner(Method::GET, "/api/v1/git-credentials", None).await;
    assert!(!list.to_string().contains(token), "{list}");

    c.owner(
        Method::POST,
        &format!("/api/v1/workspaces/{id}/start"),
        None,
    )
    .await;
    let ws = c.wait_phase(&id, "running", START_WITHIN).await;
    assert!(!ws.to_string().contains(token));
    let out = exec(
        &c,
        &id,
        "cat README.md; git config --list --show-origin; env",
    )
    .await;
    assert!(
        out["stdout"]
            .as_str()
            .unwrap()
            .starts_with("secret project\n"),
        "{out:#}"
    );
    assert!(
        !out.to_string().contains(token),
        "the token reached the workspace: {out:#}"
    );
    let dir = c
        .cell()
        .workspace_dir(&devcell::domain::WorkspaceId::parse(&id).unwrap());
    let grep = Command::new("grep")
        .args(["-rl", token])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "token in workspace files: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
    let db = std::fs::read(c.data_dir().join("devcell.redb")).unwrap();
    assert!(
        !db.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is sealed at rest"
    );
    server.abort();
    c.stop().await;
}

#[tokio::test]
async fn outbound_network_follows_the_policy_and_never_reaches_the_cell() {
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    // Tasks wait for the network: this one records what it saw.
    let gitpod = "tasks:\n  - command: |\n      cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort | tr '\\n' ' ' > /workspace/seen-by-task\n";
    let bare = bare_repo(repos.path(), "net", &[(".gitpod.yml", gitpod)]);
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let port = c.url.rsplit(':').next().unwrap().to_owned();
    let probe = format!(
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '; echo; grep -c . /proc/net/route; \
         python3 -c \"import socket\nfor h in ('10.0.2.2', '127.0.0.1'):\n  s = socket.socket(); s.settimeout(2)\n  try:\n    s.connect((h, {port})); print(h, 'reached')\n  except OSError as e:\n    print(h, 'refused')\""
    );
    let until = Instant::now() + Duration::from_secs(10);
    while exec(&c, &id, "cat /workspace/seen-by-task 2>/dev/null").await["stdout"] == "" {
        assert!(Instant::now() < until, "the task never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        exec(&c, &id, "cat /workspace/seen-by-task").await["stdout"],
        "lo tap0 ",
        "the task started before the network"
    );
    let out = exec(&c, &id, &probe).await;
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with("lo tap0 \n"),
        "outbound on (the default): a tap device: {out:#}"
    );
    let routes: usize = stdout.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(routes >= 2, "a default route: {out:#}");
    assert!(
        stdout.contains("10.0.2.2 refused") && stdout.contains("127.0.0.1 refused"),
        "the cell's port is out of reach: {out:#}"
    );
    c.stop().await;
}

/// A tiny image built from host files: dash as /bin/sh with its C library, and a marker file.
/// The blobs of the tiny image of [`tiny_image_layer`].
pub struct TinyImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

/// Pushes the tiny image as `devcell/tiny:1`, with `env` in its configuration.
pub async fn push_tiny(pusher: &crate::image::Pusher, env: &[&str]) -> TinyImage {
    let (layer, diff_id) = tiny_image_layer();
    let (config, manifest) = push_one_layer(
        pusher,
        "devcell/tiny:1",
        &layer,
        &diff_id,
        json!({ "Env": env }),
    )
    .await;
    TinyImage {
        layer,
        config,
        manifest,
    }
}

/// Pushes a linux/amd64 image of one gzipped layer (`diff_id`: its uncompressed digest) with
/// `config` as its runtime configuration, as `repo:tag`; returns its config and manifest.
pub async fn push_one_layer(
    pusher: &crate::image::Pusher,
    name: &str,
    layer: &[u8],
    diff_id: &str,
    config: Value,
) -> (Vec<u8>, Vec<u8>) {
    use crate::image::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256};
    let (repo, tag) = name.rsplit_once(':').unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] }
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "size": config.len(), "digest": sha256(&config) },
        "layers": [{ "mediaType": OCI_LAYER_GZIP, "size": layer.len(), "digest": sha256(layer) }]
    }))
    .unwrap();
    pusher.blob(repo, layer).await;
    pusher.blob(repo, &config).await;
    pusher.manifest(repo, tag, OCI_MANIFEST, &manifest).await;
    (config, manifest)
}

pub fn tiny_image_layer() -> (Vec<u8>, String) {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("bin/sh", &std::fs::read("/usr/bin/dash").unwrap(), 0o755);
    add(
        "lib/x86_64-linux-gnu/libc.so.6",
        &std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap(),
        0o755,
    );
    add(
        "lib64/ld-linux-x86-64.so.2",
        &std::fs::read("/lib64/ld-linux-x86-64.so.2").unwrap(),
        0o755,
    );
    add("etc/image-release", b"from-the-image\n", 0o644);
    let tar = b.into_inner().unwrap();
    let diff_id = crate::image::sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

#[tokio::test]
async fn a_workspace_runs_on_an_oci_image_pulled_from_a_registry() {
    use crate::image::{OCI_MANIFEST, Pusher, Registry, sha256};
    let registry = Registry::start(false).await;
    let pusher = Pusher::new(&registry, false);
    let TinyImage {
        layer,
        config,
        manifest,
    } = push_tiny(&pusher, &["PATH=/bin", "FROM_IMAGE=yes"]).await;

    // The test's registries listen on this host's loopback: the operator allows it.
    let c = TestCell::start_with(
        |cfg| cfg.workspace.allow_destinations = vec!["127.0.0.1".into()],
        None,
    )
    .await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(
        repos.path(),
        "img",
        &[(
            ".gitpod.yml",
            "tasks:\n  - command: echo task-ran-in-image\n",
        )],
    );
    let image = format!("{}/devcell/tiny:1", registry.addr);
    let id = create_started(&c, json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "image": image, "start": true })).await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let out = exec(&c, &id, "echo $FROM_IMAGE; read l < /etc/image-release; echo $l; test -e /usr/bin/git && echo host || echo no-host-files").await;
    assert_eq!(
        out["stdout"], "yes\nfrom-the-image\nno-host-files\n",
        "{out:#}"
    );
    // The repository's task ran with the image's shell.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, tasks) = c
            .owner(Method::GET, &format!("/api/v1/workspaces/{id}/tasks"), None)
            .await;
        if tasks[0]["state"] == "done" {
            assert!(
                tasks[0]["log"]
                    .as_str()
                    .unwrap()
                    .contains("task-ran-in-image"),
                "{tasks}"
            );
            break;
        }
        assert!(Instant::now() < until, "{tasks}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The image named by the repository's own configuration: the sandbox started on the host's
    // root while cloning is replaced by one on the image.
    let named = bare_repo(
        repos.path(),
        "named",
        &[(
            ".gitpod.yml",
            &format!("image: {}/devcell/tiny:1\n", registry.addr),
        )],
    );
    let id2 = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", named.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id2, "running", START_WITHIN).await;
    let out = exec(&c, &id2, "echo $FROM_IMAGE; read l < /etc/image-release; echo $l; test -f /workspace/named/.gitpod.yml && echo cloned; pwd").await;
    assert_eq!(
        out["stdout"], "yes\nfrom-the-image\ncloned\n/workspace/named\n",
        "{out:#}"
    );
    c.owner(
        Method::POST,
        &format!("/api/v1/workspaces/{id2}/stop"),
        None,
    )
    .await;
    c.wait_phase(&id2, "stopped", START_WITHIN).await;

    // A private registry: unauthorized until the owner stores a credential for its host.
    let private = Registry::start(true).await;
    let pusher = Pusher::new(&private, true);
    pusher.blob("devcell/tiny", &layer).await;
    pusher.blob("devcell/tiny", &config).await;
    pusher
        .manifest("devcell/tiny", "1", OCI_MANIFEST, &manifest)
        .await;
    let image = format!("{}/devcell/tiny:1", private.addr);
    let id3 = create_started(&c, json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "image": image, "start": true })).await;
    let ws = c.wait_phase(&id3, "failed", START_WITHIN).await;
    assert!(
        ws["message"].as_str().unwrap().contains("refused access"),
        "{ws:#}"
    );
    let (s, _) = c
        .owner(Method::POST, "/api/v1/git-credentials", Some(json!({ "host": private.addr, "username": crate::image::USER, "token": crate::image::PASSWORD, "registry": true })))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    c.owner(
        Method::POST,
        &format!("/api/v1/workspaces/{id3}/start"),
        None,
    )
    .await;
    c.wait_phase(&id3, "running", START_WITHIN).await;

    // Offline: an OCI archive imported with the real CLI serves a workspace without any registry.
    let archive = repos.path().join("offline.tar");
    let tiny = crate::image::TestImage {
        layers: vec![layer.clone()],
        config: config.clone(),
        manifest: manifest.clone(),
        digest: sha256(&manifest),
    };
    std::fs::write(
        &archive,
        crate::image::oci_archive(&[(&tiny, Some("127.0.0.1:9/offline/tiny:1"))], &[]),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["image", "import"])
        .arg(&archive)
        .arg("--data")
        .arg(c.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:9/offline/tiny:1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let id4 = create_started(&c, json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "image": "127.0.0.1:9/offline/tiny:1", "start": true })).await;
    c.wait_phase(&id4, "running", START_WITHIN).await;
    assert_eq!(
        exec(&c, &id4, "read l < /etc/image-release; echo $l").await["stdout"],
        "from-the-image\n"
    );

    // A missing image fails the start with the reason.
    let id2 = create_started(&c, json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "image": format!("{}/devcell/none:1", registry.addr), "start": true })).await;
    let ws = c.wait_phase(&id2, "failed", START_WITHIN).await;
    assert!(
        ws["message"].as_str().unwrap().contains("devcell/none"),
        "{ws:#}"
    );
    c.stop().await;
}

#[tokio::test]
async fn dashboard_pages_create_a_workspace_and_serve_the_terminal_assets() {
    use reqwest::header;
    let c = TestCell::start_with_runtime().await;
    let owner = c.cell().find_user(None).unwrap();
    let (cookie, csrf) = c.session(&owner.id).await;
    let get = |path: &str| {
        c.http
            .get(c.url(path))
            .header(header::COOKIE, &cookie)
            .send()
    };

    let home = get("/").await.unwrap().text().await.unwrap();
    assert!(
        home.contains("href=\"/new\"") && home.contains("/assets/dashboard.js"),
        "{home}"
    );

    for (path, kind, needle) in [
        ("/assets/xterm.js", "text/javascript", "Terminal"),
        ("/assets/addon-fit.js", "text/javascript", "FitAddon"),
        ("/assets/xterm.css", "text/css", ".xterm"),
        ("/assets/dashboard.js", "text/javascript", "WebSocket"),
    ] {
        let res = get(path).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(
            res.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        assert!(res.text().await.unwrap().contains(needle), "{path}");
    }

    let form = get("/new").await.unwrap().text().await.unwrap();
    assert!(
        form.contains("name=\"repo\"") && form.contains("<option value=\"small\">"),
        "{form}"
    );
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "page", &[("README.md", "x\n")]);
    let url = format!("file://{}", bare.display());
    let extra_repo = bare_repo(repos.path(), "extra", &[("EXTRA.md", "x\n")]);
    let extra = format!("file://{}#main", extra_repo.display());
    // Bad input comes back on the form with the reason.
    let (s, page) = c
        .post_form(
            &cookie,
            "/new",
            &[("_csrf", csrf.as_str()), ("repo", "ftp://nope")],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // The error sits under the repository field, which keeps what was typed.
    let (before, after) = page
        .split_once("id=\"repo-error\"")
        .expect("an error by the field");
    assert!(
        after.contains("scheme") && before.contains("value=\"ftp://nope\""),
        "{page}"
    );
    assert_eq!(
        page.matches("role=\"alert\"").count(),
        1,
        "the error shows once, by its field: {page}"
    );
    // Without the CSRF token nothing is created.
    let (s, _) = c
        .post_form(
            &cookie,
            "/new",
            &[("_csrf", "forged"), ("repo", url.as_str())],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, location) = c
        .post_form(
            &cookie,
            "/new",
            &[
                ("_csrf", csrf.as_str()),
                ("repo", url.as_str()),
                ("more", extra.as_str()),
                ("class", "small"),
                ("image", ""),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let id = location.trim_start_matches("/workspaces/").to_owned();
    c.wait_phase(&id, "running", START_WITHIN).await;
    let (_, w) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert_eq!(w["repos"].as_array().unwrap().len(), 2, "{w}");
    assert_eq!(w["repos"][1]["branch"], "main");
    let page = get(&location).await.unwrap().text().await.unwrap();
    assert!(
        page.contains(&format!("data-workspace=\"{id}\""))
            && page.contains("id=\"terminal\"")
            && page.contains("/assets/xterm.js"),
        "{page}"
    );
    assert!(
        page.contains(&format!("action=\"/workspaces/{id}/stop\"")),
        "{page}"
    );

    // The workspace page: timeline, tasks, ports with sharing, timeout, git.
    for section in ["Timeline", "Tasks", "Ports", "Timeout", "Git"] {
        assert!(
            page.contains(&format!("<h2>{section}</h2>")),
            "{section}: {page}"
        );
    }
    let (s, _) = c
        .post_form(
            &cookie,
            &format!("/workspaces/{id}/ports/3000"),
            &[("_csrf", csrf.as_str()), ("visibility", "org")],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, ports) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}/ports"), None)
        .await;
    assert_eq!(ports[0]["visibility"], "org", "{ports}");
    let (s, _) = c
        .post_form(
            &cookie,
            &format!("/workspaces/{id}/timeout"),
            &[("_csrf", csrf.as_str()), ("timeout_min", "120")],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, w) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert_eq!(w["timeout_s"], 7200);
    // Past the policy's limit: refused with the reason and the way back to this workspace.
    let (s, page) = c
        .post_form(
            &cookie,
            &format!("/workspaces/{id}/timeout"),
            &[("_csrf", csrf.as_str()), ("timeout_min", "100000")],
        )
        .await;
    // The same status the API answers (409 `timeout_not_allowed`).
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        page.contains(&format!("href=\"/workspaces/{id}\">Back to the workspace")),
        "{page}"
    );
    // The list shows class, activity, when it stops, and the actions.
    let list = get("/").await.unwrap().text().await.unwrap();
    assert!(
        list.contains(&format!("action=\"/workspaces/{id}/stop\""))
            && list.contains(">small<")
            && list.contains(" UTC (just now)<")
            && (list.contains(" UTC (in 2 h)<") || list.contains(" UTC (in 1 h 59 min)<")),
        "{list}"
    );
    // A page cursor that is not one is the user's mistake, said on a page, not a server error.
    let bad = get("/?after=nonsense").await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text().await.unwrap().contains("cursor"));
    // Restart from the page: files stay, processes begin afresh, and the history says why.
    let page = get(&location).await.unwrap().text().await.unwrap();
    assert!(
        page.contains(&format!("action=\"/workspaces/{id}/restart\"")),
        "{page}"
    );
    exec(
        &c,
        &id,
        "echo kept > restart.txt; sleep 600 >/dev/null 2>&1 &",
    )
    .await;
    let (s, _) = c
        .post_form(
            &cookie,
            &format!("/workspaces/{id}/restart"),
            &[("_csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let w = c
        .wait_for(&id, "running again after the restart", |w| {
            w["phase"] == "running" && w["history"].to_string().contains("restarting")
        })
        .await;
    let said: Vec<&str> = w["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["message"].as_str())
        .collect();
    let from = said.iter().position(|m| *m == "restart requested").unwrap();
    assert!(
        said[from + 1].starts_with("stopped; files backed up"),
        "{said:?}"
    );
    assert_eq!(said[from + 2], "restarting", "{said:?}");
    let out = exec(&c, &id, "cat restart.txt; pgrep -c sleep || true").await;
    assert_eq!(out["stdout"], "kept\n0\n", "{out:#}");
    // Deleting a running workspace first names the work it holds now, read from its files:
    // nothing was recorded since it started.
    exec(
        &c,
        &id,
        "git -c user.name=t -c user.email=t@e commit -q --allow-empty -m local-only-work",
    )
    .await;
    let confirm = get(&format!("/workspaces/{id}/delete"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .replace("<!>", "");
    assert!(
        confirm.contains("It is running")
            && confirm.contains("Untracked files: restart.txt")
            && confirm.contains("Unpushed commits: ")
            && confirm.contains("local-only-work"),
        "{confirm}"
    );
    // Leave work behind, so the delete confirmation has something to say.
    let (s, _) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/exec"),
            Some(json!({ "command": ["sh", "-c", "echo more >> README.md"] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Stop from the page, then a member cannot open it.
    let (s, _) = c
        .post_form(
            &cookie,
            &format!("/workspaces/{id}/stop"),
            &[("_csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    c.wait_phase(&id, "stopped", START_WITHIN).await;
    // Only a running workspace restarts.
    let (s, body) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/restart"),
            None,
        )
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_running")),
        "{body}"
    );
    let (_, member) = c.add_user("dev@example.com", "member").await;
    let res = c
        .http
        .get(c.url(&location))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let confirm = get(&format!("/workspaces/{id}/delete"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        confirm.contains("Uncommitted changes: ") && confirm.contains("README.md</p>"),
        "{confirm}"
    );
    let (s, _) = c
        .post_form(
            &cookie,
            &format!("/workspaces/{id}/delete"),
            &[("_csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        c.owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    c.stop().await;
}

/// Bytes the host really spends on a file (sparse files take less than their length).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[tokio::test]
async fn the_class_disk_size_holds_and_the_disk_follows_the_files() {
    let (c, clock) = TestCell::with_clock(|c| {
        c.backup.loop_interval = Duration::from_millis(100);
        c.backup.cleanup_interval = Duration::from_millis(100);
        c.backup.release_after = Duration::from_secs(60);
        c.workers.timeouts_interval = Duration::from_secs(3600);
    })
    .await;
    let (s, facts) = c.owner(Method::GET, "/api/v1/admin/cell", None).await;
    assert_eq!(s, StatusCode::OK, "{facts}");
    assert!(
        facts["runtime"]
            .as_str()
            .unwrap()
            .contains("disk size by an ext4 image per workspace"),
        "{facts}"
    );
    let org = c.org_id().await;
    let (s, cls) = c
        .owner(Method::POST, &format!("/api/v1/orgs/{org}/classes"), Some(json!({ "name": "small-disk", "cpu_millis": 1000, "memory_bytes": 1u64 << 30, "disk_bytes": 256u64 << 20, "max_processes": 256 })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{cls}");
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "disk", &[("README.md", "x\n")]);
    let id = create_started(&c, json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "class": "small-disk", "start": true })).await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let other = running_workspace(&c, repos.path(), "roomy").await;
    let dir = c.data_dir().join("workspaces").join(&id);
    let image = c.data_dir().join("disks").join(format!("{id}.ext4"));
    assert!(devcell::runtime::disk::is_mount_point(&dir));

    // The workspace sees a disk of its class's size, shared by /workspace and home.
    let out = exec(
        &c,
        &id,
        "df -B1 --output=size /workspace | tail -1; df -B1 --output=size ~ | tail -1",
    )
    .await;
    let sizes: Vec<u64> = out["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(
        sizes.len() == 2 && sizes[0] == sizes[1] && sizes[0] > 200 << 20 && sizes[0] <= 256 << 20,
        "{out:#}"
    );

    // Writing past it fails inside the workspace; the workspace keeps working.
    let out = exec(
        &c,
        &id,
        "head -c 400000000 /dev/zero > big; echo rc=$?; stat -c %s big",
    )
    .await;
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{out:#}"
    );
    let written: u64 = stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(stdout.contains("rc=1") && written <= 256 << 20, "{out:#}");
    // Home is on the same disk: it is full too. (A few bytes may still fit in what ext4
    // frees of the big file's preallocation once it is closed; 400 MB cannot.)
    let out = exec(
        &c,
        &id,
        "head -c 400000000 /dev/zero > ~/fill; echo rc=$?; stat -c %s ~/fill; rm -f ~/fill",
    )
    .await;
    let stdout = out["stdout"].as_str().unwrap();
    let written: u64 = stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        stdout.contains("rc=1") && written < 64 << 20,
        "home shares the disk: {out:#}"
    );
    assert_eq!(exec(&c, &id, "echo alive").await["stdout"], "alive\n");
    // Another workspace is untouched by it.
    let out = exec(
        &c,
        &other,
        "head -c 50000000 /dev/zero > ok.bin && sync && echo wrote",
    )
    .await;
    assert_eq!(out["stdout"], "wrote\n", "{out:#}");
    // The operator sees what the data directory takes, workspace disks included.
    let (_, facts) = c.owner(Method::GET, "/api/v1/admin/cell", None).await;
    let (used, free) = (
        facts["data_dir_bytes"].as_u64().unwrap(),
        facts["data_dir_free_bytes"].as_u64().unwrap(),
    );
    assert!(used >= 50_000_000 && free > 0, "{facts}");
    let admin = c.owner_page("/admin").await;
    assert!(
        admin.contains("Data directory size")
            && admin.contains("workspace disks")
            && admin.contains("data-section=\"backups\"")
            && admin.contains("Backups owed (retrying)"),
        "{admin}"
    );

    // Deleting gives the space back, in the workspace and on the host (the image is sparse).
    let out = exec(
        &c,
        &id,
        "rm big && sync && head -c 10000000 /dev/zero > fine.bin && echo wrote",
    )
    .await;
    assert_eq!(out["stdout"], "wrote\n", "{out:#}");
    let mut host = allocated(&image);
    let until = Instant::now() + Duration::from_secs(10);
    while host > 100 << 20 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        host = allocated(&image);
    }
    assert!(
        host < 100 << 20,
        "the image holds {host} bytes of the host's disk after the file went"
    );

    // Stopped, backed up, released: the disk is unmounted and the files live in the backup.
    exec(&c, &id, "echo keep > notes.txt").await;
    c.owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    let w = c.wait_phase(&id, "stopped", START_WITHIN).await;
    assert_eq!(w["backup"]["state"], "ok", "{w:#}");
    // The snapshot is of the disk's files, not of an empty mount point.
    assert!(
        w["backups"][0]["bytes"].as_u64().unwrap() >= 10_000_000,
        "{w:#}"
    );
    clock.advance(Duration::from_secs(61));
    c.wait_for(&id, "released", |w| w["backup"]["files_released"] == true)
        .await;
    assert!(!devcell::runtime::disk::is_mount_point(&dir));
    assert!(image.exists());

    // A larger class grows the disk at the next start; the files come back onto it.
    let (s, body) = c
        .owner(Method::PUT, &format!("/api/v1/classes/{}", cls["id"].as_str().unwrap()), Some(json!({ "name": "small-disk", "cpu_millis": 1000, "memory_bytes": 1u64 << 30, "disk_bytes": 512u64 << 20, "max_processes": 256 })))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/start"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    c.wait_phase(&id, "running", START_WITHIN).await;
    let out = exec(
        &c,
        &id,
        "cat notes.txt; df -B1 --output=size /workspace | tail -1",
    )
    .await;
    let stdout = out["stdout"].as_str().unwrap();
    let size: u64 = stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        stdout.starts_with("keep\n") && size > 450 << 20 && size <= 512 << 20,
        "{out:#}"
    );
    for w in [&id, &other] {
        c.owner(Method::POST, &format!("/api/v1/workspaces/{w}/stop"), None)
            .await;
        c.wait_phase(w, "stopped", START_WITHIN).await;
    }

    // Stopped, the workspaces hold no mount (the data directory can go); their files are on
    // their disks, mounted while something uses them.
    assert!(!devcell::runtime::disk::is_mount_point(&dir));
    {
        let _held = c.cell().hold_files(&id.parse().unwrap()).unwrap();
        assert!(devcell::runtime::disk::is_mount_point(&dir));
        assert!(dir.join("workspace/disk/notes.txt").exists());
    }
    assert!(!devcell::runtime::disk::is_mount_point(&dir));
    // A host restart unmounts everything; a restarted cell mounts no stopped workspace's disk
    // (and unmounts one an older cell left mounted).
    let data = c.stop_keep_data().await;
    let held = devcell::runtime::disk::is_mount_point(&dir);
    devcell::runtime::disk::unmount_all_under(data.path());
    assert!(
        !held,
        "a stopped workspace's disk was still mounted when the cell stopped"
    );
    let c = TestCell::restart(data).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!devcell::runtime::disk::is_mount_point(&dir));

    // Deleting the workspace deletes its disk.
    let (s, body) = c
        .owner(Method::DELETE, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert!(s.is_success(), "{body}");
    c.wait_gone(&id).await;
    assert!(!image.exists());
    assert!(!devcell::runtime::disk::is_mount_point(&dir) && !dir.exists());
    c.stop().await;
}

/// The next `workspace` event's phase, or `deleted` (with the id it names); None at the end.
async fn next_event(
    events: &mut (
             impl futures::Stream<
        Item = Result<
            eventsource_stream::Event,
            eventsource_stream::EventStreamError<reqwest::Error>,
        >,
    > + Unpin
         ),
) -> Option<(String, Value)> {
    use futures::StreamExt;
    let event = tokio::time::timeout(START_WITHIN, events.next())
        .await
        .expect("no event within a minute")?
        .unwrap();
    let data = match event.event.as_str() {
        "workspace" => serde_json::from_str(&event.data).unwrap(),
        _ => Value::String(event.data),
    };
    Some((event.event, data))
}

#[tokio::test]
async fn a_workspaces_event_stream_shows_each_phase_as_it_comes_and_ends_when_it_is_deleted() {
    use eventsource_stream::Eventsource;
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "events", &[("README.md", "x\n")]);
    let (s, ws) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "repos": [{ "url": format!("file://{}", bare.display()) }] })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    let id = ws["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/workspaces/{id}/events");
    let http = reqwest::Client::new();

    // Nobody else gets the stream: no credential is 401, another member's is 404.
    let res = http.get(c.url(&path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (_, member) = c.add_user("member@example.com", "member").await;
    let res = http
        .get(c.url(&path))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let res = http
        .get(c.url(&path))
        .bearer_auth(&c.owner_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut events = res.bytes_stream().eventsource();
    // The workspace as it is now comes at once.
    let (kind, first) = next_event(&mut events).await.unwrap();
    assert_eq!((kind.as_str(), &first["id"]), ("workspace", &json!(id)));
    assert_eq!(first["phase"], "stopped", "{first:#}");

    // Each phase of a start, in order, the moment it is reached; nothing sent twice.
    let (s, b) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/start"),
            None,
        )
        .await;
    assert!(s.is_success(), "{b}");
    let mut seen = vec![first];
    while seen.last().unwrap()["phase"] != "running" {
        let (kind, w) = next_event(&mut events).await.unwrap();
        assert_eq!(kind, "workspace");
        assert_ne!(&w, seen.last().unwrap(), "the same workspace sent twice");
        assert_ne!(w["phase"], "failed", "{w:#}");
        seen.push(w);
    }
    // Changes closer together than the reader reads are merged into the latest state, so on
    // a loaded machine a step may be skipped, but never reordered; the history has them all.
    let order = ["stopped", "pending", "creating", "initializing", "running"];
    let at = |w: &Value| order.iter().position(|p| w["phase"] == *p).unwrap();
    assert!(seen.windows(2).all(|p| at(&p[0]) <= at(&p[1])), "{seen:#?}");
    let history: Vec<&str> = seen.last().unwrap()["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["phase"].as_str().unwrap())
        .collect();
    assert!(history.ends_with(&order[1..]), "{history:?}");
    // What the stream says is what the workspace's record says.
    assert_eq!(
        seen.last().unwrap()["history"],
        c.workspace(&id).await["history"]
    );

    let (s, b) = c
        .owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    assert!(s.is_success(), "{b}");
    let mut phases = Vec::new();
    while phases.last() != Some(&"stopped".to_owned()) {
        let (kind, w) = next_event(&mut events).await.unwrap();
        assert_eq!(kind, "workspace");
        phases.push(w["phase"].as_str().unwrap().to_owned());
    }
    assert!(phases.contains(&"stopping".to_owned()), "{phases:?}");

    // A stream opened with a token ends when the token is revoked, at the next change.
    let (s, token) = c
        .owner(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "watcher" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{token}");
    let res = http
        .get(c.url(&path))
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut watcher = res.bytes_stream().eventsource();
    assert_eq!(
        next_event(&mut watcher).await.unwrap().1["phase"],
        "stopped"
    );
    let (s, _) = c
        .owner(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", token["info"]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/workspaces/{id}"),
            Some(json!({ "name": "renamed" })),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let (_, renamed) = next_event(&mut events).await.unwrap();
    assert_eq!(renamed["name"], "renamed");
    assert!(next_event(&mut watcher).await.is_none());

    // Deleted: a last `deleted` event naming it, then the stream ends.
    let (s, b) = c
        .owner(Method::DELETE, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert!(s.is_success(), "{b}");
    loop {
        match next_event(&mut events).await {
            Some((kind, w)) if kind == "workspace" => {
                assert_ne!(w["phase"], "running", "{w:#}");
            }
            Some((kind, data)) => {
                assert_eq!((kind.as_str(), data), ("deleted", json!(id)));
                break;
            }
            None => panic!("the stream ended without a deleted event"),
        }
    }
    assert!(next_event(&mut events).await.is_none());
    c.stop().await;
}

/// The launcher a start finds waiting (`devcell sandbox-exec --request-on-stdin`): it joins the
/// cgroups, takes the filter as standard input and the log as output, drops to the uid and
/// becomes the program; it says in the log why it could not; it leaves quietly without a request.
#[test]
fn a_launcher_started_ahead_runs_the_request_it_is_given_later() {
    use std::io::Write;
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let procs = tmp.path().join("cgroup.procs");
    std::fs::write(&procs, "").unwrap();
    let input = tmp.path().join("filter");
    std::fs::write(&input, "from-the-filter-file\n").unwrap();
    let log = tmp.path().join("sandbox.log");
    let root = devcell::runtime::cgroup::is_root();
    let launcher = |request: Option<Value>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_devcell"))
            .args(["sandbox-exec", "--request-on-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Started ahead: it waits for its request.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the launcher did not wait"
        );
        let mut pipe = child.stdin.take().unwrap();
        if let Some(r) = request {
            pipe.write_all(r.to_string().as_bytes()).unwrap();
        }
        drop(pipe);
        let pid = child.id();
        (pid, child.wait_with_output().unwrap())
    };

    let uid = if root {
        json!([65534, 65534])
    } else {
        Value::Null
    };
    let (pid, out) = launcher(Some(json!({
        "cgroup_procs": [procs],
        "uid": uid,
        "argv": ["/bin/sh", "-c", "echo uid=$(id -u); cat"],
        "stdin": input,
        "log": log,
    })));
    assert!(out.status.success(), "{out:?}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("from-the-filter-file"), "{said}");
    let want_uid = if root {
        "uid=65534".to_owned()
    } else {
        String::new()
    };
    assert!(said.contains(&want_uid), "{said}");
    // It joined before it became the program (same pid: exec, no fork).
    assert_eq!(std::fs::read_to_string(&procs).unwrap(), pid.to_string());

    // A request it cannot carry out: the reason is in the sandbox's log.
    let (_, out) = launcher(Some(json!({
        "cgroup_procs": [tmp.path().join("no-such-cgroup/cgroup.procs")],
        "uid": null,
        "argv": ["/bin/true"],
        "stdin": input,
        "log": log,
    })));
    assert!(!out.status.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("devcell: cannot start the sandbox: No such file"),
        "{said}"
    );

    // No request (the cell went away): it exits, quietly.
    let before = std::fs::read_to_string(&log).unwrap();
    let (_, out) = launcher(None);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), before);
}

/// A stopped workspace holds no mount, and the operations that mount its disk for a moment (a
/// backup here) never unmount it from under a start racing them: the started workspace always
/// sees its files.
#[tokio::test]
async fn a_backup_racing_a_start_never_hides_the_files_from_the_started_workspace() {
    let c = TestCell::start().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "race", &[("README.md", "x\n")]);
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let out = exec(
        &c,
        &id,
        "echo mine > /workspace/race.txt && cat /workspace/race.txt",
    )
    .await;
    assert_eq!(out["stdout"], "mine\n", "{out:#}");
    let dir = c
        .cell()
        .workspace_dir(&devcell::domain::WorkspaceId::parse(&id).unwrap());
    assert!(devcell::runtime::disk::is_mount_point(&dir));
    for round in 0..4 {
        let (s, body) = c
            .owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        c.wait_phase(&id, "stopped", START_WITHIN).await;
        assert!(
            !devcell::runtime::disk::is_mount_point(&dir),
            "round {round}: a stopped workspace keeps its disk mounted"
        );
        let (backup_path, start_path) = (
            format!("/api/v1/workspaces/{id}/backups"),
            format!("/api/v1/workspaces/{id}/start"),
        );
        let backup = c.owner(Method::POST, &backup_path, None);
        let start = c.owner(Method::POST, &start_path, None);
        let ((bs, bbody), (ss, sbody)) = tokio::join!(backup, start);
        assert!(bs.is_success(), "round {round}: {bbody}");
        assert_eq!(ss, StatusCode::ACCEPTED, "round {round}: {sbody}");
        c.wait_phase(&id, "running", START_WITHIN).await;
        let out = exec(&c, &id, "cat /workspace/race.txt").await;
        assert_eq!(out["stdout"], "mine\n", "round {round}: {out:#}");
        assert!(
            devcell::runtime::disk::is_mount_point(&dir),
            "round {round}"
        );
    }
    c.stop().await;
}

/// A `file://` repository the workspaces' user cannot reach (under a directory closed to other
/// users, as anything in /root is) is refused when the workspace is created, naming the
/// directory and what to do, rather than failing later as "repository not found".
#[tokio::test]
async fn a_file_repository_behind_a_closed_directory_is_refused_with_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let c = TestCell::start().await;
    let outer = tempfile::tempdir().unwrap();
    let closed = outer.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    let bare = bare_repo(&closed, "private", &[("README.md", "x\n")]);
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (s, body) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "repos": [{ "url": format!("file://{}", bare.display()) }] })),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "file_repo_unreachable", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&closed.display().to_string()) && message.contains("/srv/git"),
        "{message}"
    );
    // Opened to others, the same repository is accepted.
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    c.stop().await;
}
