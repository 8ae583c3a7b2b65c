//! Smoke tests of the real executable: trial start, restart on the same data, SIGTERM, serve
//! with layered configuration, the admin commands with and without a running cell, and the
//! command-line API client.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_devcell");

pub(crate) fn devcell(home: &Path) -> Command {
    devcell_at(Path::new(BIN), home)
}

/// The binary at `bin`, run as [`devcell`] runs the one under test.
pub(crate) fn devcell_at(bin: &Path, home: &Path) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("DEVCELL_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        // The tests' repositories are in temporary directories, named as file:// URLs.
        .env("DEVCELL_WORKSPACE__FILE_REPOS", std::env::temp_dir())
        .current_dir(home);
    c
}

/// A running cell process and what it printed up to its ready line.
pub(crate) struct Proc {
    pub child: Child,
    pub url: String,
    pub printed: Vec<String>,
    /// What it prints after its ready line.
    pub more: mpsc::Receiver<String>,
}

/// A test that fails midway leaves no cell running behind it.
impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn spawn(mut cmd: Command) -> Proc {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no ready line; printed: {printed:?}"));
        printed.push(line.clone());
        if let Some(u) = line.strip_prefix("devcell is ready: ") {
            break u.to_owned();
        }
    };
    // The login link follows the ready line.
    if let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        printed.push(l);
    }
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
        printed.push(l);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?} to become ready",
        started.elapsed()
    );
    Proc {
        child,
        url,
        printed,
        more: rx,
    }
}

fn sigterm_and_wait(p: &mut Proc) -> Duration {
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the cell did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl with `args`, answering (status, JSON body or null).
fn curl(args: &[String]) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is needed: apt-get install -y curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn bearer(token: &str) -> [String; 2] {
    ["-H".into(), format!("Authorization: Bearer {token}")]
}

pub(crate) fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut args = vec![url.to_owned()];
    args.extend(token.into_iter().flat_map(bearer));
    curl(&args)
}

/// A JSON POST with a bearer token, by curl; answers (status, body).
pub(crate) fn post(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let mut args: Vec<String> = vec!["-X".into(), "POST".into()];
    args.extend(bearer(token));
    args.extend([
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        body.to_string(),
        url.to_owned(),
    ]);
    curl(&args)
}

/// A DELETE with a bearer token, by curl; answers its status.
fn delete(url: &str, token: &str) -> u16 {
    let mut args: Vec<String> = vec!["-X".into(), "DELETE".into()];
    args.extend(bearer(token));
    args.push(url.to_owned());
    curl(&args).0
}

pub(crate) fn wait_workspace(
    url: &str,
    token: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, w) = get(&format!("{url}/api/v1/workspaces/{id}"), Some(token));
        if check(&w) {
            return w;
        }
        assert!(Instant::now() < until, "never {what}: {w:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_cell_killed_in_the_middle_of_a_backup_resumes_it_after_restart() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let _unmounts = crate::harness::Unmounts(home.path().to_owned());
    // Workspace uids must traverse to their files.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let data = home.path().join("data");
    let up = || {
        let mut c = devcell(home.path());
        c.args([
            "up",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        spawn(c)
    };
    let mut p = up();
    let (ok, token, err) = run({
        let mut c = devcell(home.path());
        c.args(["admin", "token", "--data", data.to_str().unwrap()]);
        c
    });
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    let repos = tempfile::tempdir().unwrap();
    let bare = crate::runtime::bare_repo(repos.path(), "big", &[("README.md", "x\n")]);
    let (s, w) = post(
        &format!("{}/api/v1/workspaces", p.url),
        &token,
        &serde_json::json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    );
    assert_eq!(s, 201, "{w}");
    let id = w["id"].as_str().unwrap().to_owned();
    wait_workspace(&p.url, &token, &id, "running", |w| w["phase"] == "running");
    // Enough incompressible data that the backup at stop takes a while.
    let (s, out) = post(
        &format!("{}/api/v1/workspaces/{id}/exec", p.url),
        &token,
        &serde_json::json!({ "command": ["sh", "-c", "head -c 300000000 /dev/urandom > big.bin && echo done"], "timeout_s": 120 }),
    );
    assert_eq!((s, out["stdout"].as_str()), (200, Some("done\n")), "{out}");

    post(
        &format!("{}/api/v1/workspaces/{id}/stop", p.url),
        &token,
        &Value::Null,
    );
    wait_workspace(&p.url, &token, &id, "stopping", |w| {
        w["phase"] == "stopping"
    });
    std::thread::sleep(Duration::from_millis(300));
    p.child.kill().unwrap();
    p.child.wait().unwrap();

    // Killed mid-backup: the database says the snapshot is owed and the phase never said stopped.
    {
        use devcell::store::Reader;
        let store = devcell::store::Store::open(&data.join(devcell::store::DB_FILE)).unwrap();
        let wsid = devcell::domain::WorkspaceId::parse(&id).unwrap();
        let w = store.read(|tx| tx.workspace(&wsid)).unwrap().unwrap();
        assert_eq!(w.lifecycle.phase, devcell::domain::Phase::Stopping);
        assert_eq!(w.backup.pending.as_deref(), Some("stop"));
        assert!(w.snapshots.is_empty());
    }

    // The restarted cell finishes the stop, snapshot first.
    let mut p = up();
    let w = wait_workspace(&p.url, &token, &id, "stopped and backed up", |w| {
        w["phase"] == "stopped"
    });
    assert_eq!(w["backup"]["state"], "ok", "{w:#}");
    let backups = w["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{w:#}");
    assert!(
        backups[0]["bytes"].as_u64().unwrap() >= 300_000_000,
        "{w:#}"
    );
    sigterm_and_wait(&mut p);
}

#[test]
fn up_prints_a_login_link_stops_on_sigterm_and_restarts_on_the_same_data() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let up = |home: &Path| {
        let mut c = devcell(home);
        c.args([
            "up",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        spawn(c)
    };
    let mut p = up(home.path());
    let all = p.printed.join("\n");
    assert!(
        all.contains("created the owner account owner@devcell.local"),
        "{all}"
    );
    let link1 = p
        .printed
        .iter()
        .find(|l| l.contains("one-time login link"))
        .unwrap_or_else(|| panic!("{all}"))
        .clone();
    assert!(
        link1.contains(&format!("{}/login/link/dcl_", p.url)),
        "{link1}"
    );
    assert_eq!(get(&format!("{}/healthz", p.url), None).0, 200);

    // The admin command talks to the running cell through its socket.
    let (ok, token, err) = run({
        let mut c = devcell(home.path());
        c.args(["admin", "token", "--data", data.to_str().unwrap()]);
        c
    });
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    let (s, me) = get(&format!("{}/api/v1/me", p.url), Some(&token));
    assert_eq!(s, 200, "{me}");
    let user_id = me["user"]["id"].clone();

    // A consistent copy of the database while the cell serves.
    let copy = home.path().join("online-copy.redb");
    let (ok, out, err) = run({
        let mut c = devcell(home.path());
        c.args([
            "db",
            "backup",
            copy.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        c
    });
    assert!(ok, "{err}");
    assert!(out.contains("wrote"), "{out}");
    let store = devcell::store::Store::open(&copy).unwrap();
    let owner = store
        .read(|tx| devcell::store::Reader::user_by_email(tx, "owner@devcell.local"))
        .unwrap();
    assert_eq!(owner.unwrap().id.to_string(), user_id.as_str().unwrap());
    drop(store);

    let took = sigterm_and_wait(&mut p);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        !data.join("admin.sock").exists(),
        "the socket is removed on shutdown"
    );

    let mut p2 = up(home.path());
    let all2 = p2.printed.join("\n");
    assert!(
        !all2.contains("created the owner"),
        "no second owner: {all2}"
    );
    let link2 = p2
        .printed
        .iter()
        .find(|l| l.contains("one-time login link"))
        .unwrap()
        .clone();
    assert_ne!(link1, link2, "a fresh link each start");
    let (s, me2) = get(&format!("{}/api/v1/me", p2.url), Some(&token));
    assert_eq!(s, 200, "the token survives a restart: {me2}");
    assert_eq!(me2["user"]["id"], user_id);
    sigterm_and_wait(&mut p2);
}

#[test]
fn serve_layers_file_env_and_flags_and_config_check_masks_secrets() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("state");
    let pw_file = home.path().join("owner-password");
    std::fs::write(&pw_file, "a very secret password\n").unwrap();
    let cfg = home.path().join("devcell.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[server]\nlisten = \"127.0.0.1:1\"\n[auth]\nowner_email = \"boss@example.com\"\nowner_password_file = \"{}\"\nsession_ttl = \"1h\"\n",
            data.display(),
            pw_file.display()
        ),
    )
    .unwrap();

    // config check: env beats file, flag beats env, secrets masked.
    let (ok, out, err) = run({
        let mut c = devcell(home.path());
        c.args([
            "config",
            "check",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("DEVCELL_AUTH__SESSION_TTL", "2h")
        .env("DEVCELL_SERVER__LISTEN", "127.0.0.1:2");
        c
    });
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:0\""), "{out}");
    assert!(out.contains("session_ttl = \"2h\""), "{out}");
    assert!(out.contains("boss@example.com"), "{out}");
    assert!(!out.contains("a very secret password"), "{out}");
    assert!(out.contains("********"), "{out}");

    // Unknown keys and bad values name the key and where it came from.
    let (ok, _, err) = run({
        let mut c = devcell(home.path());
        c.args(["config", "check", "--config", cfg.to_str().unwrap()])
            .env("DEVCELL_SERVER__LISTN", "x");
        c
    });
    assert!(!ok);
    assert!(err.contains("DEVCELL_SERVER__LISTN"), "{err}");
    let (ok, _, err) = run({
        let mut c = devcell(home.path());
        c.args(["config", "check", "--config", cfg.to_str().unwrap()])
            .env("DEVCELL_AUTH__SESSION_TTL", "soon");
        c
    });
    assert!(!ok);
    assert!(err.contains("auth.session_ttl"), "{err}");

    // serve uses the same layers; the owner from the file logs in with the password from the secret file.
    let mut c = devcell(home.path());
    c.args([
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .env("DEVCELL_LOG__FORMAT", "json");
    let mut p = spawn(c);
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(r#"{"email":"boss@example.com","password":"a very secret password"}"#)
        .arg(format!("{}/api/v1/auth/login", p.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert!(data.join("devcell.redb").exists());
    sigterm_and_wait(&mut p);
}

#[test]
fn admin_commands_work_without_a_running_cell_and_the_cli_client_manages_workspaces() {
    let home = tempfile::tempdir().unwrap();
    {
        // Sandboxes run as their own uid and must reach their directories under here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let data = home.path().join("data");
    let d = data.to_str().unwrap().to_owned();
    let mut c = devcell(home.path());
    c.args(["up", "--data", &d, "--listen", "127.0.0.1:0"]);
    let mut p = spawn(c);
    sigterm_and_wait(&mut p);

    // With the cell stopped, the commands open the database themselves.
    let cmd = |args: &[&str]| {
        let mut c = devcell(home.path());
        c.args(args);
        run(c)
    };
    let (ok, token, err) = cmd(&["admin", "token", "--data", &d]);
    assert!(ok, "{err}");
    let (ok, out, err) = cmd(&["admin", "reset-password", "--data", &d]);
    assert!(ok, "{err}");
    let password = out.trim().rsplit(": ").next().unwrap().to_owned();
    assert!(password.len() >= 10, "{out}");
    let backup = home.path().join("backup.redb");
    let (ok, out, err) = cmd(&["db", "backup", backup.to_str().unwrap(), "--data", &d]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote"), "{out}");
    assert!(backup.exists());

    let mut c = devcell(home.path());
    c.args(["up", "--data", &d, "--listen", "127.0.0.1:0"]);
    let mut p = spawn(c);

    // Log in with the reset password through the CLI, then manage workspaces.
    let mut login = devcell(home.path());
    login
        .args([
            "login",
            &p.url,
            "--email",
            "owner@devcell.local",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = login.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let creds = home.path().join(".config/devcell/credentials.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (ok, out, err) = cmd(&[
        "ws",
        "create",
        "--repo",
        "https://git.example.com/team/app.git#main",
        "--repo",
        "file:///tmp/git/lib",
        "--json",
    ]);
    assert!(ok, "{err}");
    let ws: Value = serde_json::from_str(&out).unwrap();
    let id = ws["id"].as_str().unwrap().to_owned();
    assert_eq!(ws["repos"][0]["branch"], "main");
    assert_eq!(ws["repos"].as_array().unwrap().len(), 2);

    let (ok, out, _) = cmd(&["ws", "list"]);
    assert!(ok);
    assert!(out.starts_with("ID"), "a table with headers: {out}");
    assert!(out.contains(&id) && out.contains("stopped"), "{out}");

    let (ok, out, _) = cmd(&["ws", "get", &id, "--json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["id"],
        id.as_str()
    );

    let (ok, _, err) = cmd(&["ws", "create", "--repo", "not a url"]);
    assert!(!ok);
    assert!(err.contains("invalid_field"), "{err}");

    let (ok, out, err) = cmd(&["image", "list", "--data", &d]);
    assert!(ok && out.starts_with("REFERENCE"), "{out} {err}");
    let (ok, _, err) = cmd(&["image", "import", "/nonexistent.tar", "--data", &d]);
    assert!(!ok && err.contains("nonexistent"), "{err}");

    // A real workspace through the CLI: start, exec (its exit code becomes ours), stop.
    let repos = home.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let bare = crate::runtime::bare_repo(
        &repos,
        "cli",
        &[
            ("README.md", "from the cli\n"),
            (
                ".gitpod.yml",
                "tasks:\n  - name: web\n    command: echo serving-now && python3 -m http.server 8000\nports:\n  - port: 8000\n    name: docs\n",
            ),
        ],
    );
    let (ok, out, err) = cmd(&[
        "ws",
        "create",
        "--repo",
        &format!("file://{}", bare.display()),
        "--json",
    ]);
    assert!(ok, "{err}");
    let run_id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out, err) = cmd(&["ws", "start", &run_id]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("running"), "{out}");
    let mut exec = devcell(home.path());
    exec.args([
        "ws",
        "exec",
        &run_id,
        "--",
        "sh",
        "-c",
        "cat README.md; echo oops >&2; exit 3",
    ]);
    let out = exec.stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the cli\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // The daily loop: the task's output, the ports with their URLs, the page.
    let until = Instant::now() + Duration::from_secs(20);
    let (logs, ports) = loop {
        let (ok, logs, err) = cmd(&["ws", "logs", &run_id]);
        assert!(ok, "{err}");
        let (ok, ports, err) = cmd(&["ws", "ports", &run_id]);
        assert!(ok, "{err}");
        if logs.contains("serving-now") && ports.contains("yes") {
            break (logs, ports);
        }
        assert!(Instant::now() < until, "{logs}\n{ports}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(logs.starts_with("== web (running) ==\n"), "{logs}");
    assert!(ports.starts_with("PORT"), "{ports}");
    let row = ports
        .lines()
        .find(|l| l.starts_with("8000"))
        .unwrap_or_else(|| panic!("{ports}"));
    assert!(row.contains("docs") && row.contains("private"), "{row}");
    assert!(
        row.contains(&format!("8000-{}.localhost", run_id.replace('_', "-"))),
        "{row}"
    );
    let (ok, out, err) = cmd(&["ws", "open", &run_id]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("{}/workspaces/{run_id}", p.url),
        "{out}"
    );
    let (ok, _, err) = cmd(&["ws", "open", "ws_01m9300000000000000000000x"]);
    assert!(!ok && err.contains("not_found"), "{err}");
    shell_in_the_current_terminal(home.path(), &run_id);
    let (ok, out, err) = cmd(&["ws", "stop", &run_id]);
    assert!(ok && out.contains("stopped"), "{out} {err}");
    let (ok, _, _) = cmd(&["ws", "delete", &run_id]);
    assert!(ok);

    let (ok, out, _) = cmd(&["ws", "delete", &id]);
    assert!(ok, "{out}");
    let (ok, out, _) = cmd(&["ws", "list", "--json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // The admin token made while the cell was down works too.
    assert_eq!(
        get(&format!("{}/api/v1/me", p.url), Some(token.trim())).0,
        200
    );
    sigterm_and_wait(&mut p);
}

/// `devcell ws shell`: from a pipe (the input's end ends the shell; twice, because the second
/// gets a shell that starts after its input arrived), then in a real terminal whose size
/// changes while the shell runs, left as it was found.
fn shell_in_the_current_terminal(home: &Path, id: &str) {
    use std::io::{Read, Write};
    for input in [
        &b"echo shell-$((6*7)) in $(pwd)\n"[..],
        b"echo shell-$((6*7)) in $(pwd)",
    ] {
        let mut piped = devcell(home);
        piped
            .args(["ws", "shell", id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = piped.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        let out = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ws shell did not end when its input did")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("shell-42 in /workspace/"), "{text}");
    }

    let (pty, pts) = pty_process::blocking::open().unwrap();
    pty.resize(pty_process::Size::new(30, 100)).unwrap();
    let before = rustix::termios::tcgetattr(&pty).unwrap();
    let mut cmd = pty_process::blocking::Command::new(BIN)
        .args(["ws", "shell", id])
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DEVCELL_")) {
        cmd = cmd.env_remove(k);
    }
    let mut child = cmd.spawn(pts).unwrap();
    let pty = std::sync::Arc::new(pty);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = pty.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = (&*reader).read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut expect = |needle: &str| {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(at) = seen.find(needle) {
                seen.drain(..at + needle.len());
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("no {needle:?} in the shell's output: {seen}"),
            }
        }
    };
    // In raw mode the local terminal does not echo: what shows is the remote shell's output.
    (&*pty).write_all(b"stty size; echo size-shown\r").unwrap();
    expect("30 100");
    expect("size-shown");
    pty.resize(pty_process::Size::new(40, 120)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    (&*pty).write_all(b"stty size; echo resized\r").unwrap();
    expect("40 120");
    expect("resized");
    (&*pty).write_all(b"exit\r").unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "ws shell did not end with the shell"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let after = rustix::termios::tcgetattr(&*pty).unwrap();
    assert_eq!(
        after.local_modes, before.local_modes,
        "the terminal is left in raw mode"
    );
}

#[test]
fn the_trial_runs_workspaces_with_its_data_and_binary_under_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    // Like root's home: mode 0700, which no workspace uid may enter. The binary sits in it too
    // (`cargo run` from a clone under /root), and `up` makes `./devcell-data` beside it.
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let _unmounts = crate::harness::Unmounts(home.path().to_owned());
    let bin = home.path().join("bin/devcell");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    let trial = home.path().join("trial");
    std::fs::create_dir(&trial).unwrap();
    let cmd = |args: &[&str]| {
        let mut c = devcell(home.path());
        c.current_dir(&trial).args(args);
        let mut own = Command::new(&bin);
        own.args(c.get_args())
            .current_dir(&trial)
            .env_clear()
            .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        own
    };
    let mut p = spawn(cmd(&["up", "--listen", "127.0.0.1:0"]));
    let (ok, token, err) = run(cmd(&["admin", "token"]));
    assert!(ok, "{err}");
    let token = token.trim().to_owned();

    let repos = tempfile::tempdir().unwrap();
    let bare = crate::runtime::bare_repo(
        repos.path(),
        "app",
        &[
            ("README.md", "app\n"),
            (".gitpod.yml", "tasks:\n  - command: echo task-says-hello\n"),
        ],
    );
    let create = || {
        let (s, w) = post(
            &format!("{}/api/v1/workspaces", p.url),
            &token,
            &serde_json::json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
        );
        assert_eq!(s, 201, "{w}");
        w["id"].as_str().unwrap().to_owned()
    };
    let running = |id: &str| {
        wait_workspace(&p.url, &token, id, "running", |w| {
            assert_ne!(w["phase"], "failed", "{w:#}");
            w["phase"] == "running"
        })
    };
    let a = create();
    running(&a);
    let (s, out) = post(
        &format!("{}/api/v1/workspaces/{a}/exec", p.url),
        &token,
        &serde_json::json!({ "command": ["sh", "-c", "cat README.md && echo more >> README.md"] }),
    );
    assert_eq!((s, out["stdout"].as_str()), (200, Some("app\n")), "{out}");
    // The task log is read from the workspace's files.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, tasks) = get(
            &format!("{}/api/v1/workspaces/{a}/tasks", p.url),
            Some(&token),
        );
        if tasks.to_string().contains("task-says-hello") {
            break;
        }
        assert!(Instant::now() < until, "no task output: {tasks:#}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A second workspace starts while the first runs; the first then goes, disk and all,
    // though the second's launcher saw its disk mounted.
    let b = create();
    running(&b);
    // The launchers' own mount namespaces (where the workspace's directory is bound under
    // /run/devcell/rebase) hold no other workspace's disk.
    let a_dir = trial.join(format!("devcell-data/workspaces/{a}"));
    let mut launchers = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path().join("mountinfo")) else {
            continue;
        };
        if info.contains(" /run/devcell/rebase/ws ") {
            launchers += 1;
            assert!(
                !info.contains(a_dir.to_str().unwrap()),
                "the second workspace's namespace holds the first one's disk: {info}"
            );
        }
    }
    assert!(
        launchers >= 2,
        "{launchers} sandboxes run in a launcher's namespace"
    );
    let a_disk = trial.join(format!("devcell-data/disks/{a}.ext4"));
    assert!(a_disk.exists());
    let (s, _) = post(
        &format!("{}/api/v1/workspaces/{a}/stop", p.url),
        &token,
        &Value::Null,
    );
    assert_eq!(s, 202);
    // Stopped with its git state, read by git in a sandbox of the workspace.
    let w = wait_workspace(&p.url, &token, &a, "stopped", |w| w["phase"] == "stopped");
    assert_eq!(
        w["git"][0]["uncommitted"],
        serde_json::json!(["README.md"]),
        "{w:#}"
    );
    assert_eq!(
        delete(&format!("{}/api/v1/workspaces/{a}", p.url), &token),
        204
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let loops: String = std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter_map(|d| std::fs::read_to_string(d.path().join("loop/backing_file")).ok())
            .collect();
        let gone =
            !mounts.contains(a_dir.to_str().unwrap()) && !loops.contains(a_disk.to_str().unwrap());
        if gone {
            break;
        }
        assert!(
            Instant::now() < until,
            "the deleted workspace's disk is still mounted or bound: {loops}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (s, out) = post(
        &format!("{}/api/v1/workspaces/{b}/exec", p.url),
        &token,
        &serde_json::json!({ "command": ["cat", "README.md"] }),
    );
    assert_eq!((s, out["stdout"].as_str()), (200, Some("app\n")), "{out}");

    // The cell stops; the second workspace keeps running, its disk mounted...
    sigterm_and_wait(&mut p);
    let b_dir = trial.join(format!("devcell-data/workspaces/{b}"));
    let mounted = |dir: &Path| {
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(dir.to_str().unwrap())
    };
    let sandbox_runs = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(b.as_str()))
        })
    };
    assert!(mounted(&b_dir) && sandbox_runs());
    // ...until `down` stops it as a stop does (snapshot first) and unmounts its disk.
    let (ok, out, err) = run(cmd(&["down"]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("stopped 1 workspace(s)"), "{out}");
    assert!(!mounted(&b_dir), "the disk is still mounted after down");
    assert!(!sandbox_runs(), "the sandbox still runs after down");
    {
        use devcell::store::Reader;
        let db = trial.join("devcell-data").join(devcell::store::DB_FILE);
        let store = devcell::store::Store::open(&db).unwrap();
        let wsid = devcell::domain::WorkspaceId::parse(&b).unwrap();
        let w = store.read(|tx| tx.workspace(&wsid)).unwrap().unwrap();
        assert_eq!(w.lifecycle.phase, devcell::domain::Phase::Stopped);
        assert_eq!(w.snapshots.len(), 1, "{:?}", w.backup);
    }
    // --purge then takes the data directory away, which a plain rm -rf could not do before.
    let (ok, out, err) = run(cmd(&["down", "--purge"]));
    assert!(ok, "{out}{err}");
    assert!(!trial.join("devcell-data").exists(), "{out}");
}
