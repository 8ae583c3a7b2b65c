//! Workspace start latency and density on this host, with the real local runtime. Prints
//! figures and ratios against baselines measured in the same run; never a timed test.
//! Run: `cargo bench --bench workspaces` (DEVCELL_BENCH_DENSITY=N sets how many idle
//! workspaces the density part starts; default 200).
//!
//! - start: create → running with a terminal answering, for a small repository, against the
//!   floor of a plain `git clone` plus a bare bubblewrap sandbox spawn;
//! - density: N idle workspaces at once: memory they take on the host, and in the cell.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{bare_repo, git, median, ms};
use devcell::config::{self, Overrides};
use serde_json::{Value, json};

const RUNS: usize = 30;

/// A small repository: a few dozen source files and a task.
fn small_repo(root: &Path) -> std::path::PathBuf {
    let mut files: Vec<(String, String)> = (0..40)
        .map(|i| {
            (
                format!("src/mod{i}.rs"),
                format!("pub fn f{i}() -> u32 {{ {i} }}\n").repeat(20),
            )
        })
        .collect();
    files.push((
        ".gitpod.yml".into(),
        "tasks:\n  - command: echo ready\n".into(),
    ));
    bare_repo(root, "app", &files)
}

/// The floor onto a fresh ext4 disk, as a workspace's files get: the disk is made and mounted
/// outside the timing (for devcell it is inside). Steadier than the host's filesystem here,
/// whose speed at creating files swings with what was deleted on it moments before.
fn floor_on_disk(bare: &Path, scratch: &Path, i: usize) -> Duration {
    let image = scratch.join(format!("disk-{i}.ext4"));
    let mnt = scratch.join(format!("disk-{i}"));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&image));
    std::fs::create_dir(&mnt).unwrap();
    ok(Command::new("mount")
        .args(["-o", "loop,discard,noinit_itable"])
        .arg(&image)
        .arg(&mnt));
    let d = floor_once(bare, &mnt, i);
    ok(Command::new("umount").arg(&mnt));
    std::fs::remove_file(&image).unwrap();
    d
}

/// The floor: what any CDE must do at least: clone the repository and spawn a sandbox.
fn floor_once(bare: &Path, scratch: &Path, i: usize) -> Duration {
    let dest = scratch.join(format!("floor-{i}"));
    let t = Instant::now();
    git(
        scratch,
        &[
            "clone",
            "-q",
            &format!("file://{}", bare.display()),
            dest.to_str().unwrap(),
        ],
    );
    let ok = Command::new("bwrap")
        .args([
            "--unshare-all",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--bind",
        ])
        .arg(&dest)
        .args(["/workspace", "--", "/bin/true"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    t.elapsed()
}

fn meminfo_available_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits for the phase through the workspace's event stream, as `devcell ws start` does.
async fn wait_phase(http: &reqwest::Client, base: &str, token: &str, id: &str, want: &str) {
    let base = reqwest::Url::parse(base).unwrap();
    let w = devcell::client::wait_for_phase(
        http,
        &base,
        token,
        id,
        &[want, "failed"],
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert_eq!(w["phase"], want, "{w:#}");
}

/// Opens a terminal (in one step, as `GET .../terminals/new` does) and waits for the shell's
/// first output after the frame that names the terminal.
async fn terminal_ready(base: &str, token: &str, id: &str) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!(
        "{}/api/v1/workspaces/{id}/terminals/new",
        base.replace("http://", "ws://")
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if m.is_binary() {
            return;
        }
    }
}

async fn run() {
    let scratch = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let bare = small_repo(&scratch.path().join("repos"));
    let overrides = Overrides {
        data_dir: Some(scratch.path().join("data")),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Overrides::default()
    };
    let config = config::load(None, &[], &overrides).unwrap();
    let runtime: Arc<dyn devcell::runtime::Runtime> = Arc::new(
        devcell::runtime::LocalRuntime::new()
            .unwrap()
            .with_exe(env!("CARGO_BIN_EXE_devcell").into()),
    );
    let (running, owner, token) = common::start_cell(config, Some(runtime.clone())).await;
    let cell = running.cell.clone();
    let actor = devcell::service::Actor {
        user: owner,
        via: devcell::service::AuthVia::Token,
    };
    let org = cell.list_orgs(&actor).unwrap()[0].0.id.clone();
    cell.update_policy(
        &actor,
        &org,
        devcell::service::PolicyPatch {
            max_running_per_user: Some(10_000),
            ..Default::default()
        },
    )
    .unwrap();
    let base = running.url();
    let http = reqwest::Client::new();
    let url = format!("file://{}", bare.display());

    println!("runtime: {}", runtime.describe());
    // Warm the page cache for both paths.
    floor_once(&bare, scratch.path(), 999);
    for outbound in [true, false] {
        cell.update_policy(
            &actor,
            &org,
            devcell::service::PolicyPatch {
                outbound_network: Some(outbound),
                ..Default::default()
            },
        )
        .unwrap();
        let mut floor = Vec::new();
        let mut to_running = Vec::new();
        let mut to_terminal = Vec::new();
        let mut answered = Vec::new();
        let mut disk_floor = Vec::new();
        for i in 0..RUNS {
            floor.push(floor_once(
                &bare,
                scratch.path(),
                i + if outbound { 0 } else { 100 },
            ));
            disk_floor.push(floor_on_disk(
                &bare,
                scratch.path(),
                i + if outbound { 200 } else { 300 },
            ));
            let t = Instant::now();
            let w: Value = http
                .post(format!("{base}/api/v1/workspaces"))
                .bearer_auth(&token)
                .json(&json!({ "repos": [{ "url": url }], "start": true }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answered.push(t.elapsed());
            let id = w["id"].as_str().unwrap().to_owned();
            wait_phase(&http, &base, &token, &id, "running").await;
            to_running.push(t.elapsed());
            terminal_ready(&base, &token, &id).await;
            to_terminal.push(t.elapsed());
            http.post(format!("{base}/api/v1/workspaces/{id}/stop"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            wait_phase(&http, &base, &token, &id, "stopped").await;
            // A quiet host for the next floor: the cell starts its spare sandbox launcher
            // 200 ms after a start, and that must not land in the floor's timing either.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Each start is paired with the floor measured just before it: on a host whose speed
        // drifts (this one's floor moves between 25 and 65 ms across runs), the median of the
        // pairs' ratios compares like with like.
        let paired = |ours: &[Duration], floor: &[Duration]| {
            let mut r: Vec<f64> = ours
                .iter()
                .zip(floor)
                .map(|(o, f)| o.as_secs_f64() / f.as_secs_f64())
                .collect();
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        };
        let (pr, pt) = (paired(&to_running, &floor), paired(&to_terminal, &floor));
        let (dr, dt) = (
            paired(&to_running, &disk_floor),
            paired(&to_terminal, &disk_floor),
        );
        let (f, r, t) = (median(floor), median(to_running), median(to_terminal));
        let df = median(disk_floor);
        let net = if outbound {
            "with outbound network (slirp4netns)"
        } else {
            "loopback only, as the floor"
        };
        println!("start latency, small repository, median of {RUNS}, {net}:");
        println!("  floor (git clone + bare bwrap spawn): {}", ms(f));
        println!(
            "  devcell create answered:              {}",
            ms(median(answered))
        );
        println!(
            "  devcell create → running:             {}  ratio of medians {:.2}, median of paired ratios {:.2}",
            ms(r),
            r.as_secs_f64() / f.as_secs_f64(),
            pr
        );
        println!(
            "  devcell create → terminal answers:    {}  ratio of medians {:.2}, median of paired ratios {:.2} (target <= 1.50)",
            ms(t),
            t.as_secs_f64() / f.as_secs_f64(),
            pt
        );
        println!(
            "  floor onto a fresh ext4 disk:         {}  running ratio {:.2}, terminal ratio {:.2} (medians of paired ratios)",
            ms(df),
            dr,
            dt
        );
    }
    cell.update_policy(
        &actor,
        &org,
        devcell::service::PolicyPatch {
            outbound_network: Some(true),
            ..Default::default()
        },
    )
    .unwrap();

    let n: usize = std::env::var("DEVCELL_BENCH_DENSITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let cell_rss_before = rss_kb(std::process::id());
    let avail_before = meminfo_available_kb();
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        let w: Value = http
            .post(format!("{base}/api/v1/workspaces"))
            .bearer_auth(&token)
            .json(&json!({ "repos": [{ "url": url }], "start": true }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(w["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_phase(&http, &base, &token, id, "running").await;
    }
    let started = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every workspace answers.
    for id in &ids {
        let r = http
            .post(format!("{base}/api/v1/workspaces/{id}/exec"))
            .bearer_auth(&token)
            .json(&json!({ "command": ["true"] }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let avail_after = meminfo_available_kb();
    let cell_rss_after = rss_kb(std::process::id());
    let host_per_ws = (avail_before.saturating_sub(avail_after)) as f64 / n as f64 / 1024.0;
    let cell_per_ws = (cell_rss_after.saturating_sub(cell_rss_before)) as f64 / n as f64;
    println!(
        "density: {n} idle workspaces running at once (started in {:.1} s), all answering exec",
        started.as_secs_f64()
    );
    println!("  host memory per idle workspace (MemAvailable drop / n): {host_per_ws:.2} MB");
    println!(
        "  cell memory per running workspace (cell RSS growth / n): {cell_per_ws:.0} KB (target <= 2048 KB)"
    );
    println!(
        "  projected idle workspaces in 24 GB at that rate: {:.0} (target >= 200)",
        24.0 * 1024.0 / host_per_ws.max(0.01)
    );
    for id in &ids {
        let _ = runtime
            .stop(&devcell::domain::WorkspaceId::parse(id).unwrap())
            .await;
    }
    running.stop().await;
    devcell::runtime::disk::unmount_all_under(scratch.path());
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
