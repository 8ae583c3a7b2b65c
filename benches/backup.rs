//! Backup and restore throughput against the stock restic CLI on the same data, in one run.
//! Run: `cargo bench --bench backup` (DEVCELL_BENCH_BACKUP_MB sets the data size; default 1024).
//!
//! Data: a workspace of many small source-like files and a few large incompressible ones.
//! Prints MB/s for restic and for devcell's store (rustic_core), the ratios (two rounds in
//! turns, and their means), and the time of an incremental backup of the unchanged workspace
//! as a fraction of the full one.

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

/// Writes back everything dirty, so the next timed step pays only for its own writes.
fn settle() {
    assert!(Command::new("sync").status().unwrap().success());
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

    // Each tool backs up and restores the same data twice, in turns: restic first in round
    // one, devcell first in round two. Every timed step starts after `sync` (no writeback of
    // an earlier step bleeds into it) and nothing is deleted until the end: ext4 is slow to
    // allocate inodes next to ones deleted moments ago, which would penalise whoever restores
    // after the other's restore was removed.
    let store_at = |name: &str| {
        let store = BackupStore::local(
            &tmp.path().join(name),
            PASSWORD,
            &tmp.path().join(format!("{name}-cache")),
        )
        .unwrap();
        // Created and opened outside the timing, as restic's `init` is.
        store.list().unwrap();
        store
    };
    let restic_full = |repo: &Path| {
        restic(repo, &["init"]);
        settle();
        restic(repo, &["backup", "--host", "devcell", ws.to_str().unwrap()])
    };
    let restic_restore = |repo: &Path, target: &Path| {
        settle();
        restic(
            repo,
            &["restore", "latest", "--target", target.to_str().unwrap()],
        )
    };
    let devcell_full = |store: &BackupStore| {
        settle();
        let t = Instant::now();
        let taken = store.snapshot(&source(&ws, None)).unwrap();
        assert_eq!(taken.files as usize, files);
        (t.elapsed(), taken)
    };
    let devcell_restore = |store: &BackupStore, id: &str, target: &Path| {
        settle();
        let t = Instant::now();
        store.restore(id, "ws_bench", target).unwrap();
        let d = t.elapsed();
        assert_eq!(
            std::fs::read(target.join("workspace/assets/blob0.bin")).unwrap(),
            std::fs::read(files_dir.join("assets/blob0.bin")).unwrap()
        );
        d
    };
    let (r1, r2) = (tmp.path().join("restic-1"), tmp.path().join("restic-2"));
    let (s1, s2) = (store_at("devcell-1"), store_at("devcell-2"));

    // Round one: restic first.
    let r_full_1 = restic_full(&r1);
    let (d_full_1, first) = devcell_full(&s1);
    // Round two: devcell first.
    let (d_full_2, taken_2) = devcell_full(&s2);
    let r_full_2 = restic_full(&r2);

    // The unchanged workspace again, once each.
    settle();
    let r_incr = restic(&r1, &["backup", "--host", "devcell", ws.to_str().unwrap()]);
    settle();
    let t = Instant::now();
    let second = s1.snapshot(&source(&ws, Some(&first.id))).unwrap();
    let d_incr = t.elapsed();

    let r_restore_1 = restic_restore(&r1, &tmp.path().join("restic-restore-1"));
    let d_restore_1 = devcell_restore(&s1, &second.id, &tmp.path().join("devcell-restore-1"));
    let d_restore_2 = devcell_restore(&s2, &taken_2.id, &tmp.path().join("devcell-restore-2"));
    let r_restore_2 = restic_restore(&r2, &tmp.path().join("restic-restore-2"));

    let mean = |a: Duration, b: Duration| (a + b) / 2;
    let (r_full, d_full) = (mean(r_full_1, r_full_2), mean(d_full_1, d_full_2));
    let (r_restore, d_restore) = (
        mean(r_restore_1, r_restore_2),
        mean(d_restore_1, d_restore_2),
    );
    let ratio = |r: Duration, d: Duration| r.as_secs_f64() / d.as_secs_f64();
    println!(
        "rounds (restic first, then devcell first): full backup ratios {:.2} and {:.2}; restore ratios {:.2} and {:.2}",
        ratio(r_full_1, d_full_1),
        ratio(r_full_2, d_full_2),
        ratio(r_restore_1, d_restore_1),
        ratio(r_restore_2, d_restore_2)
    );
    println!("means of the two rounds:");
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
