//! A cell updating itself: the binary under test, stamped with a higher version, signed with a
//! test key and served from a release server on loopback, replaces the running cell while
//! requests keep coming and a terminal is open; a release whose binary fails is rolled back;
//! an older signed release is refused after a newer one was seen, across restarts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::smoke::{devcell, devcell_at, get, post, run, spawn, wait_workspace};

const BIN: &str = env!("CARGO_BIN_EXE_devcell");

fn objcopy(args: &[&str]) {
    let out = Command::new("objcopy")
        .args(args)
        .output()
        .expect("objcopy stamps test releases: apt-get install -y binutils");
    assert!(
        out.status.success(),
        "objcopy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary under test without its debug information, made once per build of it and kept
/// in one place (the copies the tests install and stamp are a fifth of its size).
fn stripped() -> &'static Path {
    static STRIPPED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STRIPPED.get_or_init(|| {
        let meta = std::fs::metadata(BIN).unwrap();
        let built = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join("devcell-test-stripped");
        let out = dir.join(format!("devcell-{built}-{}", meta.len()));
        if !out.exists() {
            // Those of earlier builds go.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let partial = dir.join("partial");
            objcopy(&["--strip-debug", BIN, partial.to_str().unwrap()]);
            std::fs::rename(&partial, &out).unwrap();
        }
        out
    })
}

/// The binary under test (without its debug information) at `to`, stamped `version` when
/// given (the section `devcell::version` reads).
fn binary(to: &Path, version: Option<&str>) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let from = stripped();
    match version {
        None => {
            std::fs::copy(from, to).unwrap();
        }
        Some(v) => {
            let stamp = to.with_extension("stamp");
            let mut bytes = v.as_bytes().to_vec();
            bytes.resize(devcell::version::STAMP_LEN, 0);
            std::fs::write(&stamp, bytes).unwrap();
            let section = format!("{}={}", devcell::version::SECTION, stamp.display());
            objcopy(&[
                "--update-section",
                &section,
                from.to_str().unwrap(),
                to.to_str().unwrap(),
            ]);
        }
    }
}

/// The binary under test with `args`, as the smoke tests run it: (success, stdout, stderr).
fn cli(home: &Path, args: &[&str]) -> (bool, String, String) {
    let mut c = devcell(home);
    c.args(args);
    run(c)
}

fn version_of(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A release key pair in `home/keys`: the directory and the public key's base64 line.
fn test_keys(home: &Path) -> (PathBuf, String) {
    let keys = home.join("keys");
    let (ok, said, err) = cli(
        home,
        &["release", "keygen", "--out", keys.to_str().unwrap()],
    );
    assert!(ok, "{said}{err}");
    let public = std::fs::read_to_string(keys.join("devcell.pub")).unwrap();
    let public = public.lines().last().unwrap().to_owned();
    (keys, public)
}

/// `devcell up` from the binary at `installed` on `data`, trusting `public` and looking for
/// releases at `server`'s `stable/`; the caller adds what its test needs.
fn cell_command(installed: &Path, home: &Path, data: &Path, public: &str, server: &str) -> Command {
    let mut c = devcell_at(installed, home);
    c.env("DEVCELL_UPDATE__TRUSTED_KEYS", public)
        .env("DEVCELL_UPDATE__CHANNEL_URL", format!("{server}/stable/"))
        .args([
            "up",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
    c
}

/// Signs `binary` as `version` into `out` (replaced) with the key in `keys`.
fn sign(home: &Path, keys: &Path, binary: &Path, version: &str, out: &Path) {
    let _ = std::fs::remove_dir_all(out);
    let (ok, said, err) = run({
        let mut c = devcell(home);
        c.args(["release", "sign", "--key"])
            .arg(keys.join("devcell.key"))
            .arg("--binary")
            .arg(binary)
            .args(["--version", version, "--out"])
            .arg(out);
        c
    });
    assert!(ok, "{said}{err}");
}

/// Serves the files of `root` over HTTP on a free loopback port: the release server.
pub(crate) async fn release_server(root: PathBuf) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let root = root.clone();
        async move {
            use axum::response::IntoResponse;
            let rel = uri.path().trim_start_matches('/');
            if rel.split('/').any(|p| p == "..") {
                return axum::http::StatusCode::BAD_REQUEST.into_response();
            }
            match tokio::fs::read(root.join(rel)).await {
                Ok(bytes) => bytes.into_response(),
                Err(_) => axum::http::StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

/// Requests that keep coming (four clients, one every 5 ms each), each on a connection of its
/// own: how many were answered 200 and what went wrong with the others.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, token: &str, ws: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let tasks = (0..4)
            .map(|i| {
                let (stop, ok, failures, client) =
                    (stop.clone(), ok.clone(), failures.clone(), client.clone());
                let url = if i % 2 == 0 {
                    format!("{base}/readyz")
                } else {
                    format!("{base}/api/v1/workspaces/{ws}")
                };
                let token = token.to_owned();
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        // Steady, not flat out: on two cores a flood would starve the tests
                        // running beside this one.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        match client.get(&url).bearer_auth(&token).send().await {
                            Ok(r) if r.status().is_success() => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{url}: {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(format!("{url}: {e:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn terminal(base: &str, path: &str, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}{path}", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Terminal output until `needle`, or what came and why it stopped.
async fn read_until(ws: &mut Ws, needle: &str) -> Result<String, String> {
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed {f:?}; got: {seen}")),
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("{other:?}; got: {seen}")),
        }
    }
    Ok(seen)
}

/// The cell's `/readyz`: its status and the version that answered.
async fn readyz(base: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let v = r
        .headers()
        .get("x-devcell-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (r.status().as_u16(), v)
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Every socket the process holds is closed on exec: nothing it starts (a workspace's sandbox
/// above all) inherits the cell's listening sockets.
fn sockets_close_on_exec(pid: u32) {
    let mut sockets = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        sockets += 1;
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap_or(0);
        assert!(
            flags & 0o2000000 != 0,
            "socket descriptor {:?} of the cell is inherited by what it starts",
            fd.file_name()
        );
    }
    assert!(sockets > 0, "the cell holds no sockets?");
}

fn apply(home: &Path, data: &Path, extra: &[&str]) -> (bool, String) {
    let (ok, out, err) = run({
        let mut c = devcell(home);
        c.args(["update", "apply", "--data", data.to_str().unwrap()])
            .args(extra);
        c
    });
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_cell_updates_itself_under_load_and_rolls_back_a_binary_that_fails() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let _unmounts = crate::harness::Unmounts(home.path().to_owned());
    let _cells = EndCellsIn(home.path().to_owned());
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let data = home.path().join("data");

    // The cell runs from a copy of the binary under test; the next release is the same code
    // stamped 99.0.0.
    let installed = home.path().join("bin/devcell");
    binary(&installed, None);
    let next = home.path().join("build/devcell-99.0.0");
    binary(&next, Some("99.0.0"));
    assert_eq!(version_of(&next), "devcell 99.0.0");
    let (keys, public) = test_keys(home.path());
    let channel_dir = home.path().join("releases/stable");
    sign(home.path(), &keys, &next, "99.0.0", &channel_dir);
    let (server, server_task) = release_server(home.path().join("releases")).await;
    // Where systemd would listen for the cell's notifications (Type=notify).
    let notify_path = home.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let notified = || {
        let mut buf = [0u8; 512];
        let n = notify
            .recv(&mut buf)
            .expect("no notification to the service manager");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    let up = || {
        let mut c = cell_command(&installed, home.path(), &data, &public, &server);
        c.env("NOTIFY_SOCKET", &notify_path)
            .env("DEVCELL_UPDATE__HEALTH_DEADLINE", "12s");
        spawn(c)
    };
    let mut cell = up();
    let base = cell.url.clone();
    let said = notified();
    assert!(
        said.contains(&format!("MAINPID={}\n", cell.child.id())) && said.contains("READY=1"),
        "{said}"
    );
    let (ok, token, err) = cli(
        home.path(),
        &["admin", "token", "--data", data.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert_eq!(
        readyz(&base).await,
        (200, env!("CARGO_PKG_VERSION").to_owned())
    );

    // A workspace with a terminal whose shell holds state only in memory.
    let repos = tempfile::tempdir().unwrap();
    let bare = crate::runtime::bare_repo(repos.path(), "app", &[("README.md", "x\n")]);
    let (s, w) = post(
        &format!("{base}/api/v1/workspaces"),
        &token,
        &json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    );
    assert_eq!(s, 201, "{w}");
    let id = w["id"].as_str().unwrap().to_owned();
    wait_workspace(&base, &token, &id, "running", |w| w["phase"] == "running");
    let mut term = terminal(
        &base,
        &format!("/api/v1/workspaces/{id}/terminals/new"),
        &token,
    )
    .await;
    let Some(Ok(Message::Text(opened))) = term.next().await else {
        panic!("no terminal")
    };
    let opened: Value = serde_json::from_str(opened.as_str()).unwrap();
    let attach = opened["attach"].as_str().unwrap().to_owned();
    term.send(Message::Binary(
        "MARK=kept-$((6*7)); echo ready-$MARK-$$\n".into(),
    ))
    .await
    .unwrap();
    let before = read_until(&mut term, "ready-kept-42-").await.unwrap();
    let shell_pid = before
        .rsplit("ready-kept-42-")
        .next()
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();

    // The update, while requests keep coming.
    let load = Load::start(&base, &token, &id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (home_p, data_p) = (home.path().to_owned(), data.clone());
    let t0 = Instant::now();
    let (ok, said) = tokio::task::spawn_blocking(move || apply(&home_p, &data_p, &[]))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(ok, "{said}");
    assert!(said.contains("updated to devcell 99.0.0"), "{said}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answered, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the update: {failures:#?}",
        failures.len(),
        answered + failures.len() as u64
    );
    assert!(answered > 50, "only {answered} requests in {took:?}");
    eprintln!("update took {took:?}; {answered} requests answered, none refused");
    assert_eq!(readyz(&base).await, (200, "99.0.0".to_owned()));

    // The old process handed over and exited; the new one says so.
    let exited = cell.child.wait().unwrap();
    assert!(exited.success(), "{exited}");
    let mut printed = Vec::new();
    while let Ok(l) = cell.more.recv_timeout(Duration::from_secs(2)) {
        printed.push(l);
    }
    let pid: u32 = printed
        .iter()
        .find_map(|l| l.strip_prefix("handed over to devcell 99.0.0 (pid "))
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("{printed:?}"));
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("devcell 99.0.0 took over")),
        "{printed:?}"
    );
    let _new = KillOnDrop(pid);
    sockets_close_on_exec(pid);
    // The service manager was told the new process is the cell, before the old one exited.
    let said = notified();
    assert!(said.contains(&format!("MAINPID={pid}\n")), "{said}");

    // The binary is swapped, the previous one kept beside it.
    assert_eq!(sha256(&installed), sha256(&next));
    assert_eq!(
        version_of(&installed.with_file_name("devcell.prev")),
        format!("devcell {}", env!("CARGO_PKG_VERSION"))
    );

    // The terminal: its connection was closed as a restart; the shell kept running, and the
    // same terminal reattaches to the new process with its state.
    match read_until(&mut term, "never-printed").await {
        Err(why) => assert!(why.contains("1012") || why.contains("Restart"), "{why}"),
        Ok(out) => panic!("the old connection stayed open: {out}"),
    }
    let mut term = terminal(&base, &attach, &token).await;
    term.send(Message::Binary("echo after-$MARK-$$\n".into()))
        .await
        .unwrap();
    let after = read_until(&mut term, &format!("after-kept-42-{shell_pid}"))
        .await
        .unwrap();
    assert!(
        after.contains(&format!("after-kept-42-{shell_pid}")),
        "{after}"
    );
    drop(term);

    let st = status(home.path(), &data);
    assert_eq!(st["running"], "99.0.0", "{st:#}");
    assert_eq!(st["attempts"][0]["outcome"], "applied", "{st:#}");
    assert_eq!(st["attempts"][0]["to"], "99.0.0", "{st:#}");

    // Releases whose binary fails are rolled back: the cell serves on 99.0.0 without a refused
    // request, the binary is put back, and the failure is recorded and shown. One exits at
    // once, one is another version than its manifest says, one never answers.
    let broken = home.path().join("build/broken");
    std::fs::write(&broken, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hangs = home.path().join("build/hangs");
    std::fs::write(&hangs, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hangs, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (binary, version, why) in [
        (&broken, "99.1.0", "exit status: 3"),
        (
            &next,
            "99.2.0",
            "the new binary is version 99.0.0, its manifest says 99.2.0",
        ),
        (&hangs, "99.3.0", "within update.health_deadline"),
    ] {
        sign(home.path(), &keys, binary, version, &channel_dir);
        let load = Load::start(&base, &token, &id);
        let (home_p, data_p) = (home.path().to_owned(), data.clone());
        let (ok, said) = tokio::task::spawn_blocking(move || apply(&home_p, &data_p, &[]))
            .await
            .unwrap();
        assert!(!ok, "{said}");
        assert!(said.contains("[rolled_back]"), "{said}");
        assert!(said.contains(why), "{said}");
        let (answered, failures) = load.finish().await;
        assert!(failures.is_empty(), "{version}: {failures:#?}");
        assert!(answered > 0);
        assert_eq!(readyz(&base).await, (200, "99.0.0".to_owned()));
        assert_eq!(sha256(&installed), sha256(&next), "the binary is put back");
        let (_, st, _) = cli(
            home.path(),
            &["update", "status", "--data", data.to_str().unwrap()],
        );
        assert!(st.contains("rolled_back"), "{st}");
        assert!(st.contains(&format!("99.0.0 → {version}")), "{st}");
    }
    // The process that never answered is gone.
    let hanging: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00600\x00")
                && std::fs::read_link(p.path().join("cwd")).is_ok_and(|c| c == home.path())
        })
        .map(|p| p.file_name())
        .collect();
    assert!(
        hanging.is_empty(),
        "the binary that never answered still runs: {hanging:?}"
    );

    // An older release than the newest seen (99.3.0, though it failed) is refused, also after
    // the cell restarts.
    sign(home.path(), &keys, &next, "99.0.5", &channel_dir);
    let (ok, said) = apply(home.path(), &data, &[]);
    assert!(!ok, "{said}");
    assert!(said.contains("older than 99.3.0"), "{said}");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = up();
    assert_eq!(readyz(&again.url).await, (200, "99.0.0".to_owned()));
    let (ok, said) = apply(home.path(), &data, &[]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("not_newer") && said.contains("99.3.0"),
        "{said}"
    );
    let (_, w) = get(
        &format!("{}/api/v1/workspaces/{id}", again.url),
        Some(&token),
    );
    assert_eq!(w["phase"], "running", "{w:#}");
    drop(again);

    let (ok, _, err) = cli(
        home.path(),
        &["down", "--purge", "--data", data.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    server_task.abort();
}

/// Ends, when the test ends however it ends, every cell process running from `0` (a test's
/// home) and the workspaces of `home/data`: a handover's new process is not the test's child,
/// and a test failing before it learns its pid (or before its own `down`) would leave it and
/// its sandboxes running.
struct EndCellsIn(PathBuf);

impl Drop for EndCellsIn {
    fn drop(&mut self) {
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cwd = std::fs::read_link(p.path().join("cwd"));
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let up = String::from_utf8_lossy(&cmd).contains("\0up\0");
            if up && cwd.is_ok_and(|c| c == self.0) {
                let _ = Command::new("kill")
                    .arg(p.file_name())
                    .stderr(std::process::Stdio::null())
                    .status();
                // Gone before the workspaces are ended below (the database is then free).
                let until = Instant::now() + Duration::from_secs(10);
                while p.path().exists() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let data = self.0.join("data");
        if data.join(devcell::store::DB_FILE).exists() {
            let _ = run({
                let mut c = devcell(&self.0);
                c.args(["down", "--data"]).arg(&data);
                c
            });
        }
    }
}

/// Ends the process taken over by a handover (not our child) when the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The cell's update status, as `devcell update status --json` prints it.
fn status(home: &Path, data: &Path) -> Value {
    let (ok, st, err) = cli(
        home,
        &[
            "update",
            "status",
            "--json",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    serde_json::from_str(&st).unwrap()
}

async fn wait_status(
    home: &Path,
    data: &Path,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (h, d) = (home.to_owned(), data.to_owned());
        let st = tokio::task::spawn_blocking(move || status(&h, &d))
            .await
            .unwrap();
        if check(&st) {
            return st;
        }
        assert!(Instant::now() < until, "never {what}: {st:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_update_loop_applies_application_releases_and_infrastructure_ones_once_approved() {
    let home = tempfile::tempdir().unwrap();
    let _cells = EndCellsIn(home.path().to_owned());
    let data = home.path().join("data");
    let installed = home.path().join("bin/devcell");
    binary(&installed, None);
    let minor = home.path().join("build/devcell-0.2.0");
    binary(&minor, Some("0.2.0"));
    let infra = home.path().join("build/devcell-0.3.0");
    binary(&infra, Some("0.3.0"));
    let (keys, public) = test_keys(home.path());
    let channel_dir = home.path().join("releases/stable");
    sign(home.path(), &keys, &minor, "0.2.0", &channel_dir);
    let (server, server_task) = release_server(home.path().join("releases")).await;

    // The loop looks every second: the application release applies by itself.
    let mut c = cell_command(&installed, home.path(), &data, &public, &server);
    c.env("DEVCELL_UPDATE__CHECK_INTERVAL", "1s");
    let cell = spawn(c);
    let base = cell.url.clone();
    let st = wait_status(home.path(), &data, "applied 0.2.0", |s| {
        s["running"] == "0.2.0" && s["attempts"][0]["outcome"] == "applied"
    })
    .await;
    assert_eq!(
        st["attempts"][0]["from"],
        env!("CARGO_PKG_VERSION"),
        "{st:#}"
    );
    assert_eq!(readyz(&base).await, (200, "0.2.0".to_owned()));
    let _new = KillOnDrop(handed_over(&cell, "0.2.0"));

    // An infrastructure release waits for an owner; approved, it applies.
    let (ok, said, err) = run({
        let mut c = devcell(home.path());
        c.args(["release", "sign", "--kind", "infrastructure", "--key"])
            .arg(keys.join("devcell.key"))
            .arg("--binary")
            .arg(&infra)
            .args(["--version", "0.3.0", "--out"])
            .arg(home.path().join("releases/next"));
        c
    });
    assert!(ok, "{said}{err}");
    std::fs::remove_dir_all(&channel_dir).unwrap();
    std::fs::rename(home.path().join("releases/next"), &channel_dir).unwrap();
    let st = wait_status(home.path(), &data, "0.3.0 waiting for approval", |s| {
        s["waiting_approval"] == true
    })
    .await;
    assert_eq!(st["newest"]["version"], "0.3.0", "{st:#}");
    assert_eq!(st["newest"]["kind"], "infrastructure", "{st:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(readyz(&base).await, (200, "0.2.0".to_owned()), "it waits");
    let (ok, said, err) = cli(
        home.path(),
        &[
            "update",
            "approve",
            "0.3.0",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(ok, "{said}{err}");
    assert!(said.contains("updated to devcell 0.3.0"), "{said}");
    assert_eq!(readyz(&base).await, (200, "0.3.0".to_owned()));
    let _newer = KillOnDrop(handed_over(&cell, "0.3.0"));
    let st = status(home.path(), &data);
    assert_eq!(st["waiting_approval"], false, "{st:#}");
    assert!(st["newest"]["approved_at"].is_string(), "{st:#}");

    // An offline bundle carries the next release and a workspace image, both signed: the
    // import puts the image in the cache and applies the release the same way.
    let next = home.path().join("build/devcell-0.4.0");
    binary(&next, Some("0.4.0"));
    let image = home.path().join("build/tools.tar");
    std::fs::write(
        &image,
        crate::image::oci_archive(
            &[(
                &crate::image::test_image("amd64", "bundled"),
                Some("registry.example/team/tools:1"),
            )],
            &[],
        ),
    )
    .unwrap();
    let rel = home.path().join("build/rel-0.4.0");
    let bundle = home.path().join("build/devcell-0.4.0.tar.zst");
    for args in [
        vec![
            "release".into(),
            "sign".into(),
            "--key".into(),
            keys.join("devcell.key").display().to_string(),
            "--binary".into(),
            next.display().to_string(),
            "--version".into(),
            "0.4.0".into(),
            "--image".into(),
            image.display().to_string(),
            "--out".into(),
            rel.display().to_string(),
        ],
        vec![
            "bundle".into(),
            "build".into(),
            "--release".into(),
            rel.display().to_string(),
            "--out".into(),
            bundle.display().to_string(),
        ],
    ] {
        let (ok, said, err) = run({
            let mut c = devcell(home.path());
            c.args(&args);
            c
        });
        assert!(ok, "{args:?}: {said}{err}");
    }
    let (ok, said, err) = run({
        let mut c = devcell(home.path());
        c.args(["bundle", "import"])
            .arg(&bundle)
            .args(["--data", data.to_str().unwrap()]);
        c
    });
    assert!(ok, "{said}{err}");
    assert!(said.contains("updated to devcell 0.4.0"), "{said}{err}");
    assert_eq!(readyz(&base).await, (200, "0.4.0".to_owned()));
    let (ok, images, err) = cli(
        home.path(),
        &["image", "list", "--json", "--data", data.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(images.contains("registry.example/team/tools:1"), "{images}");
    let pid = handed_over(&cell, "0.4.0");
    let _newest = KillOnDrop(pid);

    // The owner goes back to the binary the last update replaced.
    let (ok, said, err) = cli(
        home.path(),
        &["update", "rollback", "--data", data.to_str().unwrap()],
    );
    assert!(ok, "{said}{err}");
    assert!(said.contains("updated to devcell 0.3.0"), "{said}{err}");
    assert_eq!(readyz(&base).await, (200, "0.3.0".to_owned()));
    let pid = handed_over(&cell, "0.3.0");
    let _back = KillOnDrop(pid);
    let st = status(home.path(), &data);
    assert_eq!(
        st["attempts"][0]["source"], "rollback to the previous binary",
        "{st:#}"
    );
    assert_eq!(st["attempts"][0]["outcome"], "applied", "{st:#}");
    server_task.abort();
}

/// The pid of the process a handover to `version` started, as the cell printed it.
fn handed_over(cell: &crate::smoke::Proc, version: &str) -> u32 {
    let prefix = format!("handed over to devcell {version} (pid ");
    loop {
        let l = cell.more.recv_timeout(Duration::from_secs(10)).unwrap();
        if let Some(p) = l.strip_prefix(&prefix) {
            return p.trim_end_matches(')').parse().unwrap();
        }
    }
}
