//! The standing attack suite: a member in their own workspace, and a page served from one of
//! its ports, try what an attacker would. The cell runs as root, as in production. Each test
//! failed on the code before its fix; each asserts what an attacker would have gained.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::backup::restic;
use crate::harness::TestCell;
use crate::runtime::{START_WITHIN, bare_repo, create_started, exec};

/// A host directory only root may enter, holding files an attacker wants: `secret.txt` to read
/// and `target.txt` to overwrite or take over.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-only");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(path.join("secret.txt"), "HOST-SECRET-0xdead\n").unwrap();
        std::fs::write(path.join("target.txt"), "untouched\n").unwrap();
        std::fs::set_permissions(
            path.join("target.txt"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        Victim { _dir: dir, path }
    }

    fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }

    /// Fails when anything in the directory changed: names, contents, owners or modes.
    fn assert_untouched(&self, when: &str) {
        let mut names: Vec<String> = std::fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "listen.sock")
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["secret.txt", "target.txt"],
            "{when}: files appeared"
        );
        assert_eq!(
            std::fs::read_to_string(self.path.join("target.txt")).unwrap(),
            "untouched\n",
            "{when}: the root-only file was overwritten"
        );
        for name in ["secret.txt", "target.txt"] {
            let m = std::fs::metadata(self.path.join(name)).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0), "{when}: {name} changed owner");
        }
        let m = std::fs::metadata(self.path.join("target.txt")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600, "{when}: target.txt changed mode");
    }
}

/// Runs `cmd` in the workspace and fails the test unless it succeeds.
async fn run_ok(c: &TestCell, id: &str, cmd: &str) -> Value {
    let out = exec(c, id, cmd).await;
    assert_eq!(out["exit_code"], 0, "{cmd}: {out:#}");
    out
}

/// A started workspace on a repository of `files`; the repository directory is returned too.
async fn workspace_with(c: &TestCell, files: &[(&str, &str)]) -> (String, tempfile::TempDir) {
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "app", files);
    let id = create_started(
        c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    (id, repos)
}

async fn post(c: &TestCell, path: &str) -> (StatusCode, Value) {
    c.owner(Method::POST, path, None).await
}

async fn stop(c: &TestCell, id: &str) -> Value {
    let (s, w) = post(c, &format!("/api/v1/workspaces/{id}/stop")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{w}");
    c.wait_phase(id, "stopped", START_WITHIN).await
}

async fn start(c: &TestCell, id: &str) -> Value {
    let (s, w) = post(c, &format!("/api/v1/workspaces/{id}/start")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{w}");
    c.wait_phase(id, "running", START_WITHIN).await
}

/// The host uid a workspace's sandbox runs as (the owner of its files).
fn sandbox_uid(c: &TestCell, id: &str) -> u32 {
    std::fs::metadata(c.data_dir().join("workspaces").join(id).join("workspace"))
        .unwrap()
        .uid()
}

/// Host processes whose command line holds `needle`, for leftovers of a payload.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(cmd);
        }
    }
    found
}

#[tokio::test]
async fn links_planted_in_the_run_directory_give_the_cell_nothing_of_the_host() {
    let c = TestCell::start_with_runtime().await;
    let victim = Victim::new();
    let listen = std::os::unix::net::UnixListener::bind(victim.path.join("listen.sock")).unwrap();
    listen.set_nonblocking(true).unwrap();
    let (id, _repos) = workspace_with(
        &c,
        &[(
            ".gitpod.yml",
            "tasks:\n  - name: one\n    command: echo task-output\n",
        )],
    )
    .await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = c
            .owner(Method::GET, &format!("/api/v1/workspaces/{id}/tasks"), None)
            .await;
        if t[0]["log"].as_str().unwrap_or("").contains("task-output") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the task never logged: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The task log becomes a link to a host file only root may read.
    run_ok(
        &c,
        &id,
        &format!(
            "cd /run/devcell && rm -f logs/task-0.log && ln -s {} logs/task-0.log",
            victim.file("secret.txt")
        ),
    )
    .await;
    let (s, t) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}/tasks"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t[0]["name"], "one", "{t}");
    assert!(
        !t.to_string().contains("HOST-SECRET"),
        "the task log read a root-only host file: {t}"
    );
    // Every other name the cell ever read or wrote in the run directory becomes a link to a
    // host file only root may write.
    run_ok(
        &c,
        &id,
        &format!(
            "cd /run/devcell && for f in spec.json spec.json.tmp seccomp.bpf git.bpf sandbox.log network.log; do \
               rm -f $f; ln -s {} $f; done",
            victim.file("target.txt")
        ),
    )
    .await;

    // The agent's socket becomes a link to another socket on the host: the cell must not
    // connect there (it could be the cell's admin socket or another workspace's agent).
    run_ok(
        &c,
        &id,
        &format!(
            "cd /run/devcell && mv agent.sock agent.real && ln -s {} agent.sock",
            victim.file("listen.sock")
        ),
    )
    .await;
    let (s, e) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/exec"),
            Some(json!({ "command": ["true"] })),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    c.owner(Method::GET, &format!("/api/v1/workspaces/{id}/ports"), None)
        .await;
    c.owner(Method::GET, &format!("/api/v1/workspaces/{id}/tasks"), None)
        .await;
    assert!(
        listen.accept().is_err(),
        "the cell connected to a socket a link in the run directory pointed at"
    );

    // A restart writes the spec, the filter and the logs again: none of it lands on the host
    // file, which stays root's.
    let (s, w) = post(&c, &format!("/api/v1/workspaces/{id}/restart")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{w}");
    c.wait_for(&id, "restarted", |w| {
        w["phase"] == "running"
            && w["history"]
                .as_array()
                .is_some_and(|h| h.iter().any(|e| e["message"] == "restarting"))
    })
    .await;
    victim.assert_untouched("after a restart");
    let out = exec(&c, &id, "echo still works").await;
    assert_eq!(out["stdout"], "still works\n", "{out:#}");
    stop(&c, &id).await;
    victim.assert_untouched("after a stop");
    assert!(
        listen.accept().is_err(),
        "the cell connected to the planted socket"
    );
    c.stop().await;
}

#[tokio::test]
async fn git_programs_in_the_clone_never_run_outside_the_sandbox() {
    let c = TestCell::start_with_runtime().await;
    let (id, _repos) = workspace_with(&c, &[("README.md", "hello\n")]).await;
    // A listener on the host's loopback, as the cell's own API is: the payload knocks.
    let knock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = knock.local_addr().unwrap().port();
    let suffix = rand_suffix();
    let mark = format!("/tmp/devcell-attack-{suffix}");
    // A process the payload leaves behind, recognisable by its argument.
    let linger = format!("3000.{}", &suffix[suffix.len() - 6..]);
    // The payload leaves a mark in the host's /tmp, knocks on the host's loopback and leaves a
    // process behind; inside a sandbox /tmp is its own and there is no such network.
    let payload = format!(
        "#!/bin/sh\necho \"$(id -u) $(readlink /proc/self/ns/pid)\" >> {mark}\n\
         (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null\n\
         setsid sleep {linger} </dev/null >/dev/null 2>&1 &\ncat\n"
    );
    let setup = format!(
        "cd /workspace/app && mkdir -p .hooks && cat > .hooks/payload <<'EOF'\n{payload}EOF\n\
         chmod +x .hooks/payload && P=.hooks/payload && \
         git config filter.evil.clean \"$P\" && git config filter.evil.smudge cat && \
         git config filter.evil.required true && \
         git config core.fsmonitor \"$P\" && git config core.hooksPath .hooks && \
         for h in post-index-change pre-commit post-checkout reference-transaction; do cp $P .hooks/$h; done && \
         git config diff.external \"$P\" && git config core.pager \"$P\" && \
         git config log.showSignature true && git config gpg.program \"$P\" && \
         echo '* filter=evil' > .gitattributes && printf 'HELLO\\n' > README.md && \
         git status --porcelain >/dev/null 2>&1; cat {mark}",
    );
    let out = exec(&c, &id, &setup).await;
    // The payload is live: git inside the workspace runs it (into the sandbox's own /tmp).
    assert!(
        out["stdout"].as_str().unwrap().contains("1000 "),
        "the payload did not run even inside the workspace: {out:#}"
    );
    assert!(
        !Path::new(&mark).exists(),
        "the workspace wrote the host's /tmp"
    );

    let check = |when: &str| {
        assert!(
            !Path::new(&mark).exists(),
            "{when}: a program from the repository's git configuration ran on the host: {}",
            std::fs::read_to_string(&mark).unwrap_or_default()
        );
    };
    // The delete page reads the git state now.
    let page = c.owner_page(&format!("/workspaces/{id}/delete")).await;
    assert!(
        page.contains("README.md"),
        "the delete page lost the git state: {page}"
    );
    check("the delete page");
    // A restart and a stop record the git state too.
    let (s, w) = post(&c, &format!("/api/v1/workspaces/{id}/restart")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{w}");
    c.wait_for(&id, "restarted", |w| {
        w["phase"] == "running"
            && w["history"]
                .as_array()
                .is_some_and(|h| h.iter().any(|e| e["message"] == "restarting"))
    })
    .await;
    check("a restart");
    let w = stop(&c, &id).await;
    check("a stop");
    assert!(
        w["git"][0]["uncommitted"]
            .as_array()
            .is_some_and(|u| u.iter().any(|p| p == "README.md")),
        "the stop lost the git state: {w:#}"
    );
    let page = c.owner_page(&format!("/workspaces/{id}/delete")).await;
    assert!(page.contains("README.md"), "{page}");
    check("the delete page of a stopped workspace");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), knock.accept())
            .await
            .is_err(),
        "a payload reached the host's loopback"
    );
    let left = processes_with(&format!("sleep {linger}"));
    assert!(
        left.is_empty(),
        "a payload's process outlived the workspace: {left:?}"
    );
    c.stop().await;
}

fn rand_suffix() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn fast_backups(c: &mut devcell::config::Config) {
    c.backup.loop_interval = Duration::from_millis(100);
    c.backup.cleanup_interval = Duration::from_secs(3600);
    c.backup.release_after = Duration::from_secs(3600);
}

#[tokio::test]
async fn a_restore_writes_nothing_through_a_link_that_replaced_a_directory() {
    let c = TestCell::start_with(fast_backups, None).await;
    let victim = Victim::new();
    let (id, _repos) = workspace_with(&c, &[("README.md", "hello\n")]).await;
    exec(
        &c,
        &id,
        "mkdir -p /workspace/app/d && echo restored > /workspace/app/d/f.txt",
    )
    .await;
    let (s, snap) = post(&c, &format!("/api/v1/workspaces/{id}/backups")).await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    let first = snap["id"].as_str().unwrap().to_owned();
    // The directory the snapshot holds becomes a link to a root-only host directory.
    run_ok(
        &c,
        &id,
        &format!(
            "rm -rf /workspace/app/d && ln -s {} /workspace/app/d",
            victim.path.display()
        ),
    )
    .await;
    stop(&c, &id).await;
    let (s, w) = post(
        &c,
        &format!("/api/v1/workspaces/{id}/backups/{first}/restore"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{w}");
    victim.assert_untouched("after the restore");
    let _files = c.cell().hold_files(&id.parse().unwrap()).unwrap();
    let d = c
        .data_dir()
        .join("workspaces")
        .join(&id)
        .join("workspace/app/d");
    let m = std::fs::symlink_metadata(&d).unwrap();
    assert!(m.is_dir(), "the restore kept the link");
    assert_eq!(
        std::fs::read_to_string(d.join("f.txt")).unwrap(),
        "restored\n"
    );
    assert_eq!(
        m.uid(),
        sandbox_uid(&c, &id),
        "restored files belong to the workspace"
    );
    start(&c, &id).await;
    let out = exec(&c, &id, "cat /workspace/app/d/f.txt").await;
    assert_eq!(out["stdout"], "restored\n", "{out:#}");
    c.stop().await;
}

/// The names of every kind of entry a workspace may hold (see the script below).
const KINDS: &str = r#"set -e
cd /workspace/app && mkdir -p kinds/empty kinds/deep/er
ln -s ../README.md kinds/link
ln -s /nonexistent/target kinds/dangling
echo hard > kinds/h1 && ln kinds/h1 kinds/h2
mkfifo kinds/fifo
python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind("kinds/sock")'
dd if=/dev/zero of=kinds/sparse bs=1 count=0 seek=67108864 2>/dev/null && printf end >> kinds/sparse
long=$(printf 'n%.0s' $(seq 1 250)) && echo long > "kinds/$long"
printf 'not utf-8\n' > "kinds/$(printf 'bad\377\376name')"
echo deep > kinds/deep/er/file
"#;

#[tokio::test]
async fn a_tree_with_every_kind_of_file_backs_up_verifies_and_restores() {
    let c = TestCell::start_with(fast_backups, None).await;
    let (id, _repos) = workspace_with(&c, &[("README.md", "hello\n")]).await;
    run_ok(&c, &id, KINDS).await;
    let (s, snap) = post(&c, &format!("/api/v1/workspaces/{id}/backups")).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "a tree with links and special files: {snap}"
    );
    let first = snap["id"].as_str().unwrap().to_owned();
    let w = c.workspace(&id).await;
    assert_eq!(w["backup"]["state"], "ok", "{w:#}");

    // Stock restic reads every entry.
    let key = backup_key(&c);
    let repo = c.data_dir().join("backups");
    let listed = restic(&repo, &key, &["ls", &first]);
    for name in [
        "kinds/link",
        "kinds/dangling",
        "kinds/fifo",
        "kinds/sock",
        "kinds/empty",
        "kinds/sparse",
        "kinds/h2",
        "kinds/deep/er/file",
        "nnnnnnnnnn",
    ] {
        assert!(
            listed.contains(name),
            "restic does not list {name}: {listed}"
        );
    }
    let target = tempfile::tempdir().unwrap();
    restic(
        &repo,
        &key,
        &[
            "restore",
            &first,
            "--target",
            target.path().to_str().unwrap(),
        ],
    );
    let kinds = target.path().join(&id).join("workspace/app/kinds");
    assert_eq!(
        std::fs::read_link(kinds.join("link")).unwrap(),
        Path::new("../README.md")
    );
    assert_eq!(std::fs::read_to_string(kinds.join("h2")).unwrap(), "hard\n");
    assert_eq!(
        std::fs::metadata(kinds.join("sparse")).unwrap().len(),
        67108867
    );

    // The cell restores them all into the workspace.
    exec(&c, &id, "rm -rf /workspace/app/kinds").await;
    stop(&c, &id).await;
    let (s, w) = post(
        &c,
        &format!("/api/v1/workspaces/{id}/backups/{first}/restore"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{w}");
    start(&c, &id).await;
    let check = r#"cd /workspace/app/kinds && readlink link && readlink dangling && cat h1 h2 \
        && test -p fifo && test -S sock && test -d empty && stat -c %s sparse && tail -c 3 sparse \
        && cat n*nnn && cat "$(printf 'bad\377\376name')" && cat deep/er/file"#;
    let out = exec(&c, &id, check).await;
    assert_eq!(
        out["stdout"],
        "../README.md\n/nonexistent/target\nhard\nhard\n67108867\nendlong\nnot utf-8\ndeep\n",
        "{out:#}"
    );
    // Every snapshot in the store is one the cell lists: no unverified ones pile up.
    let w = stop(&c, &id).await;
    let mine = w["backups"].as_array().unwrap().len();
    let stored = restic(&repo, &key, &["snapshots", "--json", "--tag", &id]);
    let stored: Vec<Value> = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored.len(), mine, "{stored:#?}");
    c.stop().await;
}

#[tokio::test]
async fn backups_of_a_running_workspace_raced_by_link_swaps_hold_no_host_file() {
    let c = TestCell::start_with(fast_backups, None).await;
    let victim = Victim::new();
    let (id, _repos) = workspace_with(&c, &[("README.md", "hello\n")]).await;
    // A file that is a regular file one moment and a link to a root-only host file the next,
    // as fast as the workspace can swap them.
    let swap = format!(
        "cd /workspace/app && echo plain > f && \
         (while :; do ln -sf {} f.l && mv -f f.l f; echo plain > f.p && mv -f f.p f; done) \
         >/dev/null 2>&1 </dev/null & echo started",
        victim.file("secret.txt")
    );
    let out = exec(&c, &id, &swap).await;
    assert_eq!(out["stdout"], "started\n", "{out:#}");
    let mut taken = Vec::new();
    for _ in 0..8 {
        let (s, snap) = post(&c, &format!("/api/v1/workspaces/{id}/backups")).await;
        assert_eq!(s, StatusCode::CREATED, "{snap}");
        taken.push(snap["id"].as_str().unwrap().to_owned());
    }
    // The workspace was let go after each backup: it still answers and still swaps.
    let out = exec(&c, &id, "ls -l /workspace/app/f >/dev/null && echo alive").await;
    assert_eq!(out["stdout"], "alive\n", "{out:#}");
    let key = backup_key(&c);
    let repo = c.data_dir().join("backups");
    for snap in &taken {
        let target = tempfile::tempdir().unwrap();
        restic(
            &repo,
            &key,
            &["restore", snap, "--target", target.path().to_str().unwrap()],
        );
        let f = target.path().join(&id).join("workspace/app/f");
        let m = std::fs::symlink_metadata(&f).unwrap();
        if m.is_file() {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(
                !text.contains("HOST-SECRET"),
                "snapshot {snap} holds a root-only host file: {text}"
            );
        }
    }
    victim.assert_untouched("after the backups");
    c.stop().await;
}

/// The repository password the cell prints for stock restic.
fn backup_key(c: &TestCell) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["backup", "key", "--data"])
        .arg(c.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A workspace serving `tests/fixtures/port_server.py` on port 3000, running and listening.
async fn serving_workspace(c: &TestCell, repos: &Path, name: &str) -> String {
    let gitpod = "tasks:\n  - command: python3 server.py 3000\n";
    let bare = bare_repo(
        repos,
        name,
        &[
            (".gitpod.yml", gitpod),
            ("server.py", include_str!("../fixtures/port_server.py")),
        ],
    );
    let id = create_started(
        c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ports) = c
            .owner(Method::GET, &format!("/api/v1/workspaces/{id}/ports"), None)
            .await;
        if ports.as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["port"] == 3000 && p["listening"] == true)
        }) {
            return id;
        }
        assert!(
            std::time::Instant::now() < until,
            "port 3000 never listened: {ports}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn share(c: &TestCell, id: &str, visibility: &str) {
    let (s, e) = c
        .owner(
            Method::PUT,
            &format!("/api/v1/workspaces/{id}/ports/3000"),
            Some(json!({ "visibility": visibility })),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
}

/// The owner's API tokens by name.
async fn token_names(c: &TestCell) -> Vec<String> {
    let (s, tokens) = c.owner(Method::GET, "/api/v1/tokens", None).await;
    assert_eq!(s, StatusCode::OK, "{tokens}");
    tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Opens `url` in the browser and returns what its script reported in `#result`.
async fn page_result(b: &fantoccini::Client, url: &str) -> Value {
    b.goto(url).await.unwrap();
    let text = crate::browser::wait_for(
        b,
        &format!("the script of {url}"),
        "var r = document.getElementById('result'); return r ? r.textContent : ''",
        |t| t.starts_with('{'),
    )
    .await;
    serde_json::from_str(&text).unwrap()
}

/// What a page served from a port gained against its visitor: nothing of the cell's.
fn assert_gained_nothing(out: &Value, real_csrf: &str, when: &str) {
    let text = out.to_string();
    assert!(
        !text.contains(real_csrf),
        "{when}: the page read the visitor's CSRF token: {out:#}"
    );
    for k in ["token", "token_here"] {
        let t = out[k].as_str().unwrap_or("");
        assert!(
            !t.starts_with("201") && !t.contains("dct_"),
            "{when}: the page made an API token: {out:#}"
        );
    }
    assert!(
        !out["other"].as_str().unwrap_or("").contains("path="),
        "{when}: the page read another workspace's port: {out:#}"
    );
    assert!(
        !out["cookie"].as_str().unwrap_or("").contains("devcell"),
        "{when}: the page read the cell's cookies: {out:#}"
    );
    assert!(
        !out["term"].as_str().unwrap_or("").starts_with("opened"),
        "{when}: the page opened a terminal: {out:#}"
    );
}

/// In real Chromium, as the owner signed in to the dashboard: a page served from a port tries to
/// read the CSRF token from `/`, make an API token, read another workspace's private port, read
/// cookies and open a terminal, with the port private, shared with the organization, public,
/// and with path URLs turned on; a normal page's script, its fetch to its own origin and its
/// WebSocket work through the port's URL.
#[tokio::test]
async fn a_page_served_from_a_port_cannot_act_as_its_visitor() {
    let driver = crate::browser::start_chromedriver();
    for path_ports in [false, true] {
        let profile = tempfile::tempdir().unwrap();
        let c = TestCell::start_with(|cfg| cfg.server.path_ports = path_ports, None).await;
        let repos = tempfile::tempdir().unwrap();
        let hostile = serving_workspace(&c, repos.path(), "hostile").await;
        let victim = serving_workspace(&c, repos.path(), "victim").await;
        let owner = c.cell().find_user(None).unwrap();
        let b = crate::browser::browser(&driver, profile.path()).await;
        let name = format!(
            "port-attack-{}",
            if path_ports { "paths" } else { "origins" }
        );
        let failure = crate::browser::scenario(&b, &name, Duration::from_secs(240), async {
            b.goto(&c.cell().create_login_link(&owner.id).unwrap())
                .await
                .unwrap();
            crate::browser::wait_for(&b, "the dashboard", "return document.title", |t| {
                t.starts_with("Workspaces")
            })
            .await;
            let csrf = b
                .execute(
                    "return document.querySelector('meta[name=csrf-token]').content",
                    vec![],
                )
                .await
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned();
            let before = token_names(&c).await;
            let other = c
                .cell()
                .port_url(&devcell::domain::WorkspaceId::parse(&victim).unwrap(), 3000);
            let hostile_id = devcell::domain::WorkspaceId::parse(&hostile).unwrap();
            let base = if path_ports {
                c.url(&format!("/w/{hostile}/p/3000/"))
            } else {
                c.cell().port_url(&hostile_id, 3000)
            };
            assert_eq!(c.cell().port_url(&hostile_id, 3000), base);
            for visibility in ["private", "org", "public"] {
                share(&c, &hostile, visibility).await;
                let attack = format!(
                    "{base}attack?cell={}&other={}&ws={hostile}",
                    c.url.trim_end_matches('/'),
                    other
                );
                let out = page_result(&b, &attack).await;
                let when = format!("{visibility} port, path URLs {path_ports}");
                assert_gained_nothing(&out, &csrf, &when);
                assert!(
                    !token_names(&c).await.iter().any(|n| n == "stolen"),
                    "{when}: a token was made: {out:#}"
                );
            }
            assert_eq!(token_names(&c).await, before);
            if !path_ports {
                // What a port is for still works on its own origin.
                share(&c, &hostile, "private").await;
                let out = page_result(&b, &format!("{base}normal")).await;
                assert!(
                    out["fetch"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("path=/data"),
                    "{out:#}"
                );
                assert_eq!(out["ws"], "echo:hi", "{out:#}");
                let shot = b.screenshot().await.unwrap();
                let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/browser-artifacts");
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(dir.join("port-normal-page.png"), shot);
            }
        })
        .await;
        drop(b);
        c.stop().await;
        if let Some(f) = failure {
            std::panic::resume_unwind(f);
        }
    }
}

/// A listener on this host's loopback that counts who connects (the cell's API and admin
/// services are such listeners).
struct Knock {
    addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Knock {
    async fn start() -> Knock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
        Knock { addr, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Knock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a workspace from `body` and returns the message of its failed start.
async fn failed_start(c: &TestCell, token: &str, body: Value) -> String {
    let (s, ws) = c
        .call(Method::POST, "/api/v1/workspaces", Some(token), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    let id = ws["id"].as_str().unwrap().to_owned();
    let w = c.wait_phase(&id, "failed", START_WITHIN).await;
    // Gone again, so that the next start is not over the running limit.
    let (s, e) = c
        .call(
            Method::DELETE,
            &format!("/api/v1/workspaces/{id}"),
            Some(token),
            None,
        )
        .await;
    assert!(s.is_success(), "{e}");
    c.wait_gone(&id).await;
    w["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn clone_and_pull_urls_on_the_hosts_loopback_reach_nothing_and_say_nothing() {
    let c = TestCell::start_with_runtime().await;
    let knock = Knock::start().await;
    let cell_port = c.url.rsplit(':').next().unwrap().to_owned();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "ok", &[("README.md", "x\n")]);
    let mut messages = Vec::new();
    for target in [
        format!("127.0.0.1:{}", knock.addr.port()),
        format!("127.0.0.1:{cell_port}"),
        format!("localhost:{}", knock.addr.port()),
        format!("127.0.0.1:{closed}"),
        "169.254.169.254:80".to_owned(),
    ] {
        let clone = failed_start(
            &c,
            &c.owner_token,
            json!({ "repos": [{ "url": format!("http://{target}/team/app.git") }], "start": true }),
        )
        .await;
        assert!(
            clone.contains("not reachable from this cell's workspaces"),
            "{target}: {clone}"
        );
        let pull = failed_start(
            &c,
            &c.owner_token,
            json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "image": format!("{target}/team/app:1"), "start": true }),
        )
        .await;
        assert!(
            pull.contains("not reachable from this cell's workspaces"),
            "{target}: {pull}"
        );
        // The answer names the host, never what answered there.
        messages.push(
            clone
                .replace(&target, "TARGET")
                .replace(target.split(':').next().unwrap(), "HOST"),
        );
    }
    assert_eq!(
        knock.hits(),
        0,
        "a clone or pull connected to the host's loopback"
    );
    // An organization whose workspaces have no outbound network: the cell fetches nothing
    // from outside for them either (192.0.2.1 is an ordinary, if unrouted, address).
    c.set_policy(json!({ "outbound_network": false })).await;
    for body in [
        json!({ "repos": [{ "url": "https://192.0.2.1/team/app.git" }], "start": true }),
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "image": "192.0.2.1/team/app:1", "start": true }),
    ] {
        let m = failed_start(&c, &c.owner_token, body).await;
        assert!(m.contains("no outbound network"), "{m}");
    }
    let first = messages[0].clone();
    for m in &messages[1..4] {
        assert_eq!(
            m, &first,
            "refusals differ between an open and a closed port"
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn file_repositories_are_for_owners_from_listed_directories_only() {
    let listed = tempfile::tempdir().unwrap();
    let unlisted = tempfile::Builder::new()
        .prefix("unlisted")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = listed.path().to_owned();
    let c = TestCell::start_with(move |cfg| cfg.workspace.file_repos = vec![dir], None).await;
    let ok = bare_repo(listed.path(), "ok", &[("README.md", "x\n")]);
    let outside = bare_repo(unlisted.path(), "outside", &[("README.md", "y\n")]);
    // A link inside a listed directory to one outside it is outside.
    std::os::unix::fs::symlink(&outside, listed.path().join("sneaky.git")).unwrap();
    let (_, member) = c.add_user("member@example.com", "member").await;
    let create = |token: String, url: String| {
        let c = &c;
        async move {
            c.call(
                Method::POST,
                "/api/v1/workspaces",
                Some(&token),
                Some(json!({ "repos": [{ "url": url }] })),
            )
            .await
        }
    };
    let (s, e) = create(member.clone(), format!("file://{}", ok.display())).await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a member named a host path: {e}"
    );
    assert_eq!(e["field"], "repos[0].url", "{e}");
    assert!(e["message"].as_str().unwrap().contains("owners"), "{e}");
    for url in [
        format!("file://{}", outside.display()),
        format!("file://{}", listed.path().join("sneaky.git").display()),
        "file:///etc".to_owned(),
        format!(
            "file://{}/../{}",
            listed.path().display(),
            unlisted.path().file_name().unwrap().to_string_lossy()
        ),
    ] {
        let (s, e) = create(c.owner_token.clone(), url.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("workspace.file_repos"),
            "{url}: {e}"
        );
    }
    let (s, e) = create(c.owner_token.clone(), format!("file://{}", ok.display())).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    c.stop().await;
}

#[tokio::test]
async fn credentials_go_only_where_and_how_they_were_stored_for() {
    use crate::image::{Pusher, Registry, sha256};
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "private", &[("README.md", "secret\n")]);
    let (git_addr, server) = crate::content::serve_git_http(repos.path().to_owned()).await;
    let registry = Registry::start(true).await;
    let pusher = Pusher::new(&registry, true);
    let tiny = crate::runtime::push_tiny(&pusher, &["PATH=/bin"]).await;
    let digest = sha256(&tiny.manifest);
    let c = TestCell::start_with(
        |cfg| cfg.workspace.allow_destinations = vec!["127.0.0.1".into()],
        None,
    )
    .await;
    let git_url = format!(
        "http://{git_addr}/{}",
        bare.file_name().unwrap().to_string_lossy()
    );

    // A git token for a plain-http host stays home: the start fails before anything is sent.
    let (s, _) = c
        .owner(Method::POST, "/api/v1/git-credentials", Some(json!({ "host": git_addr.to_string(), "username": crate::content::USER, "token": crate::content::TOKEN })))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let m = failed_start(
        &c,
        &c.owner_token,
        json!({ "repos": [{ "url": git_url }], "start": true }),
    )
    .await;
    assert!(m.contains("plain http"), "{m}");

    // A git credential for the registry's host is not a registry login.
    let (s, _) = c
        .owner(Method::POST, "/api/v1/git-credentials", Some(json!({ "host": registry.addr, "username": crate::image::USER, "token": crate::image::PASSWORD })))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let image = format!("{}/devcell/tiny:1", registry.addr);
    let repo = json!([{ "url": format!("file://{}", bare.display()) }]);
    let m = failed_start(
        &c,
        &c.owner_token,
        json!({ "repos": repo, "image": image, "start": true }),
    )
    .await;
    assert!(
        m.contains("refused access"),
        "a git token was sent to the registry: {m}"
    );
    // Stored as one, it pulls; the private image is then in the cache.
    let (s, _) = c
        .owner(Method::POST, "/api/v1/git-credentials", Some(json!({ "host": registry.addr, "username": crate::image::USER, "token": crate::image::PASSWORD, "registry": true })))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = create_started(&c, json!({ "repos": repo, "image": image, "start": true })).await;
    c.wait_phase(&id, "running", START_WITHIN).await;

    // Another owner without access names it by digest: the cache does not hand it over.
    let (_, other) = c.add_user("other@example.com", "owner").await;
    let by_digest = format!("{}/devcell/tiny@{digest}", registry.addr);
    let m = failed_start(
        &c,
        &other,
        json!({ "repos": repo, "image": by_digest, "start": true }),
    )
    .await;
    assert!(
        m.contains("refused access"),
        "a private image leaked from the cache: {m}"
    );
    // With a login of their own that the registry accepts, it is theirs too.
    let (s, _) = c
        .call(Method::POST, "/api/v1/git-credentials", Some(&other), Some(json!({ "host": registry.addr, "username": crate::image::USER, "token": crate::image::PASSWORD, "registry": true })))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, ws) = c
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(&other),
            Some(json!({ "repos": repo, "image": by_digest, "start": true })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    c.wait_phase(ws["id"].as_str().unwrap(), "running", START_WITHIN)
        .await;
    server.abort();
    c.stop().await;
}

#[tokio::test]
async fn a_repository_whose_configuration_links_out_reveals_nothing() {
    let c = TestCell::start_with_runtime().await;
    let victim = Victim::new();
    let repos = tempfile::tempdir().unwrap();
    // Committed links: the configuration file points at a root-only host file, and another
    // repository's devcontainer directory at a root-only host directory.
    let mut messages = Vec::new();
    for (name, link, target) in [
        ("gitpod", ".gitpod.yml", victim.file("secret.txt")),
        (
            "devcontainer",
            ".devcontainer",
            victim.path.display().to_string(),
        ),
    ] {
        let work = repos.path().join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("README.md"), "x\n").unwrap();
        std::os::unix::fs::symlink(&target, work.join(link)).unwrap();
        if name == "devcontainer" {
            std::fs::write(
                victim.path.join("devcontainer.json"),
                "{ \"image\": \"HOST-SECRET\" }",
            )
            .unwrap();
        }
        for args in [
            vec!["init", "-q", "-b", "main"],
            vec!["add", "-A"],
            vec![
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "commit",
                "-q",
                "-m",
                "links",
            ],
        ] {
            let out = std::process::Command::new("git")
                .args(&args)
                .current_dir(&work)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let bare = repos.path().join(format!("{name}.git"));
        let out = std::process::Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&bare)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(repos.path())
            .status()
            .unwrap();
        let m = failed_start(
            &c,
            &c.owner_token,
            json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
        )
        .await;
        messages.push(m);
        if name == "devcontainer" {
            std::fs::remove_file(victim.path.join("devcontainer.json")).unwrap();
        }
    }
    for m in &messages {
        assert!(m.contains("outside the repository"), "{m}");
        assert!(
            !m.contains("HOST-SECRET"),
            "the start read a host file: {m}"
        );
    }
    victim.assert_untouched("after the starts");
    c.stop().await;
}

/// A workspace nests directories deeper than any path may be long (each level made relative
/// to the last) and asks for a backup. The cell's walk used to recurse once per level; on a
/// blocking thread's 2 MiB stack that overflowed and aborted the whole cell. Now the backup
/// answers (the levels past the longest path cannot be read by anyone, restic included) and
/// everything readable is in the snapshot.
#[test]
fn a_workspace_nested_deeper_than_any_path_does_not_bring_the_cell_down() {
    use devcell::backup::{BackupStore, Source};
    use rustix::fs::{Mode, OFlags};
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws_01deep");
    std::fs::create_dir_all(ws.join("workspace")).unwrap();
    std::fs::write(ws.join("workspace/README.md"), b"still here\n").unwrap();
    let mut fd = rustix::fs::open(ws.join("workspace"), OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..2500 {
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, "d", OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let repo = tmp.path().join("repo");
    let cache = tmp.path().join("cache");
    let dir = ws.clone();
    let (r, c) = (repo.clone(), cache.clone());
    let taken = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let store = BackupStore::local(&r, "pw-1", &c).unwrap();
            store.snapshot(&Source {
                dir: &dir,
                workspace: "ws_01deep",
                org: "org_01test",
                include_home: false,
                trigger: "manual",
                verified_parent: None,
            })
        })
        .unwrap()
        .join()
        .expect("the backup overflowed its stack");
    let taken = taken.expect("the readable files are backed up");
    let out = tmp.path().join("out");
    // (restic cannot restore the levels past the longest path either: only the file.)
    restic(
        &repo,
        "pw-1",
        &[
            "restore",
            &taken.id,
            "--include",
            "/ws_01deep/workspace/README.md",
            "--target",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(out.join("ws_01deep/workspace/README.md")).unwrap(),
        b"still here\n"
    );
}

/// Gitpod's `checkoutLocation` has the cell (root) move a fresh clone under `/workspace`. A
/// member who removed the clone and planted a link where the repository's configuration
/// (changed meanwhile) asks for it gets a refused start: the move replaces nothing and
/// follows no link.
#[tokio::test]
async fn a_link_planted_where_the_checkout_goes_is_never_moved_onto_or_through() {
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "app", &[(".gitpod.yml", "tasks: []\n")]);
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    run_ok(
        &c,
        &id,
        "rm -rf /workspace/app && ln -s /etc /workspace/core && ls -la /workspace",
    )
    .await;
    stop(&c, &id).await;
    // The repository now asks for `core`; the next start clones it afresh (it is gone).
    let work = repos.path().join("app-src");
    std::fs::write(work.join(".gitpod.yml"), "checkoutLocation: core\n").unwrap();
    crate::runtime::commit_all(&work, &bare);
    let (s, w) = post(&c, &format!("/api/v1/workspaces/{id}/start")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{w}");
    let w = c.wait_phase(&id, "failed", START_WITHIN).await;
    let message = w["history"].as_array().unwrap().last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("checkoutLocation core: /workspace/core is taken"),
        "{message}"
    );
    assert!(!Path::new("/etc/app").exists() && !Path::new("/etc/.git").exists());
    assert!(Path::new("/etc/passwd").is_file());
    c.stop().await;
}
