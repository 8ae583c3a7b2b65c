//! Backup and restore throughput against the stock restic CLI on the same data, in one run.
//! Run: `cargo bench --bench backup` (DEVCELL_BENCH_BACKUP_MB sets the data size; default 1024).
//!
//! Data: a workspace of many small source-like files and a few large incompressible ones.
//! Prints MB/s for restic and for devcell's store (rustic_core), the ratios, and the time of an
//! incremental backup of the unchanged workspace as a fraction of the full one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use devcell::backup::{BackupStore, Source};

const PASSWORD: &str = "bench-password";

/// A fast deterministic byte stream (xorshift), incompressible enough for the large files.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes about `mb` MiB: 40% in small text files (1–64 KiB), 60% in four large files.
fn generate(root: &Path, mb: usize) -> (usize, u64) {
    let total = mb * 1024 * 1024;
    let small_budget = total * 2 / 5;
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut written = 0;
    let mut i = 0u64;
    while written < small_budget {
        let size = 1024 + (i as usize * 7919) % (63 * 1024);
        let dir = root.join(format!("src/mod{:03}", i % 400));
        std::fs::create_dir_all(&dir).unwrap();
        let line = format!("pub fn item_{i}() -> u64 {{ {i} * 31 + 7 }} // generated\n");
        let text = line.repeat(size / line.len() + 1);
        std::fs::write(dir.join(format!("f{i}.rs")), &text.as_bytes()[..size]).unwrap();
        written += size;
        files += 1;
        bytes += size as u64;
        i += 1;
    }
    let large = (total - small_budget) / 4;
    std::fs::create_dir_all(root.join("assets")).unwrap();
    for n in 0..4 {
        std::fs::write(
            root.join(format!("assets/blob{n}.bin")),
            noise(n + 1, large),
        )
        .unwrap();
        files += 1;
        bytes += large as u64;
    }
    (files, bytes)
}

/// The benchmark workspace, with the snapshot it follows (if any).
fn source<'a>(ws: &'a Path, parent: Option<&'a str>) -> Source<'a> {
    Source {
        dir: ws,
        workspace: "ws_bench",
        org: "org_bench",
        include_home: false,
        trigger: "bench",
        verified_parent: parent,
    }
}

fn restic(repo: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new("restic")
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .output()
        .expect("restic is not installed: apt-get install -y restic");
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1024.0 / 1024.0 / d.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let mb: usize = std::env::var("DEVCELL_BENCH_BACKUP_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws_bench");
    let files_dir = ws.join("workspace");
    let (files, bytes) = generate(&files_dir, mb);
    println!(
        "data: {files} files, {:.0} MiB (small source files and four large incompressible ones)",
        bytes as f64 / 1048576.0
    );

    // Stock restic: init, full backup, incremental backup of the unchanged data, restore.
    let restic_repo = tmp.path().join("restic-repo");
    restic(&restic_repo, &["init"]);
    let r_full = restic(
        &restic_repo,
        &["backup", "--host", "devcell", ws.to_str().unwrap()],
    );
    let r_incr = restic(
        &restic_repo,
        &["backup", "--host", "devcell", ws.to_str().unwrap()],
    );
    let r_target = tmp.path().join("restic-restore");
    let r_restore = restic(
        &restic_repo,
        &["restore", "latest", "--target", r_target.to_str().unwrap()],
    );
    std::fs::remove_dir_all(&r_target).unwrap();

    // devcell's store (rustic_core), the same data.
    let store = BackupStore::local(
        &tmp.path().join("devcell-repo"),
        PASSWORD,
        &tmp.path().join("devcell-cache"),
    )
    .unwrap();
    // Created and opened outside the timing, as restic's `init` is.
    store.list().unwrap();
    let t = Instant::now();
    let first = store.snapshot(&source(&ws, None)).unwrap();
    let d_full = t.elapsed();
    assert_eq!(first.files as usize, files);
    let t = Instant::now();
    let second = store.snapshot(&source(&ws, Some(&first.id))).unwrap();
    let d_incr = t.elapsed();
    let d_target = tmp.path().join("devcell-restore");
    let t = Instant::now();
    store.restore(&second.id, "ws_bench", &d_target).unwrap();
    let d_restore = t.elapsed();
    assert_eq!(
        std::fs::read(d_target.join("workspace/assets/blob0.bin")).unwrap(),
        std::fs::read(files_dir.join("assets/blob0.bin")).unwrap()
    );

    println!(
        "full backup:    restic {:7.1} MB/s ({:.2} s)   devcell {:7.1} MB/s ({:.2} s)   ratio {:.2} (target >= 1.0)",
        mbps(bytes, r_full),
        r_full.as_secs_f64(),
        mbps(bytes, d_full),
        d_full.as_secs_f64(),
        r_full.as_secs_f64() / d_full.as_secs_f64()
    );
    println!(
        "restore:        restic {:7.1} MB/s ({:.2} s)   devcell {:7.1} MB/s ({:.2} s)   ratio {:.2} (target >= 1.0)",
        mbps(bytes, r_restore),
        r_restore.as_secs_f64(),
        mbps(bytes, d_restore),
        d_restore.as_secs_f64(),
        r_restore.as_secs_f64() / d_restore.as_secs_f64()
    );
    println!(
        "incremental of the unchanged workspace: restic {:.2} s ({:.1}% of its full), devcell {:.2} s ({:.1}% of its full; target <= 5%), {} bytes added",
        r_incr.as_secs_f64(),
        100.0 * r_incr.as_secs_f64() / r_full.as_secs_f64(),
        d_incr.as_secs_f64(),
        100.0 * d_incr.as_secs_f64() / d_full.as_secs_f64(),
        second.added_bytes
    );
}
