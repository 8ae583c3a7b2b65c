//! Backup and restore times against the stock restic CLI on the same data, in one run, for
//! several kinds of workspace data (source and blobs, text-heavy, zero-heavy, incompressible,
//! many tiny files, one huge file).
//! Run: `cargo bench --bench backup`; `DEVCELL_BENCH_BACKUP_MB` sets the size per mix (default
//! 256), `DEVCELL_BENCH_MIXES=text-heavy,one-huge` picks mixes, `DEVCELL_BENCH_ONLY_DEVCELL=1`
//! times devcell's full backups alone (for a profiler), `DEVCELL_BENCH_CELL_LOG=devcell=debug`
//! prints the cell's log (its `RUST_LOG`) after each backup through the API.
//!
//! Then the same mixes through the product's path: a real cell, a running workspace and
//! `POST /api/v1/workspaces/{id}/backups`, against restic on the workspace's files.
//!
//! Both sides are timed alike: restic as a whole process, devcell with its store opened afresh
//! (key derivation included). Prints, per mix, the full-backup ratio (two rounds in turns and
//! their mean), incremental backups of the unchanged workspace (restic; devcell in the same
//! process and after a restart) and the restore ratio.

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

/// Words for natural-language text: compressible the way prose and documentation are.
const WORDS: &[&str] = &[
    "the",
    "workspace",
    "cell",
    "backup",
    "snapshot",
    "restore",
    "file",
    "commit",
    "branch",
    "terminal",
    "port",
    "server",
    "request",
    "answer",
    "developer",
    "repository",
    "change",
    "and",
    "of",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "with",
    "as",
    "was",
    "on",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
];

/// About `bytes` of prose: words from `WORDS` in a deterministic order, in lines.
fn prose(seed: u64, bytes: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(bytes + 16);
    let mut col = 0;
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = WORDS[(x % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        col += w.len() + 1;
        if col > 72 {
            out.push(b'\n');
            col = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(bytes);
    out
}

/// One kind of workspace data.
#[derive(Clone, Copy)]
enum Mix {
    /// 40% small source-like files (1–64 KiB), 60% in four incompressible files.
    Source,
    /// Many small natural-language text files (2–10 KiB).
    Text,
    /// Four large files, each half zeros and half random (disk images, sparse data).
    Zeros,
    /// Four large random files (media, archives).
    Incompressible,
    /// Very many tiny files (0–512 bytes): metadata-bound.
    Tiny,
    /// One huge random file.
    Huge,
}

impl Mix {
    const ALL: [Mix; 6] = [
        Mix::Source,
        Mix::Text,
        Mix::Zeros,
        Mix::Incompressible,
        Mix::Tiny,
        Mix::Huge,
    ];

    fn name(self) -> &'static str {
        match self {
            Mix::Source => "source+blobs",
            Mix::Text => "text-heavy",
            Mix::Zeros => "zero-heavy",
            Mix::Incompressible => "incompressible",
            Mix::Tiny => "many-tiny",
            Mix::Huge => "one-huge",
        }
    }

    /// Writes about `mb` MiB of this mix under `root`: (files, bytes).
    fn generate(self, root: &Path, mb: usize) -> (usize, u64) {
        let total = mb * 1024 * 1024;
        let (mut files, mut bytes) = (0usize, 0u64);
        let mut put = |rel: String, data: &[u8]| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
            files += 1;
            bytes += data.len() as u64;
        };
        let halves = |n: u64, len: usize| {
            let mut v = vec![0u8; len / 2];
            v.extend(noise(n + 1, len - len / 2));
            v
        };
        match self {
            Mix::Source => {
                let small = total * 2 / 5;
                let (mut written, mut i) = (0, 0u64);
                while written < small {
                    let size = 1024 + (i as usize * 7919) % (63 * 1024);
                    let line =
                        format!("pub fn item_{i}() -> u64 {{ {i} * 31 + 7 }} // generated\n");
                    let text = line.repeat(size / line.len() + 1);
                    put(
                        format!("src/mod{:03}/f{i}.rs", i % 400),
                        &text.as_bytes()[..size],
                    );
                    written += size;
                    i += 1;
                }
                for n in 0..4 {
                    put(
                        format!("assets/blob{n}.bin"),
                        &noise(n + 1, (total - small) / 4),
                    );
                }
            }
            Mix::Text => {
                let (mut written, mut i) = (0, 0u64);
                while written < total {
                    let size = 2048 + (i as usize * 7919) % (8 * 1024);
                    put(
                        format!("docs/d{:03}/page{i}.txt", i % 200),
                        &prose(i + 1, size),
                    );
                    written += size;
                    i += 1;
                }
            }
            Mix::Zeros => {
                for n in 0..4 {
                    put(format!("images/disk{n}.img"), &halves(n, total / 4));
                }
            }
            Mix::Incompressible => {
                for n in 0..4 {
                    put(format!("media/clip{n}.bin"), &noise(n + 1, total / 4));
                }
            }
            Mix::Tiny => {
                // Tiny files are few bytes each: a tenth of the budget in files of up to 512.
                let (mut written, mut i) = (0, 0u64);
                while written < total / 10 {
                    let size = (i as usize * 131) % 512;
                    put(
                        format!("node_modules/p{:04}/f{i}.js", i % 2000),
                        &prose(i + 7, size),
                    );
                    written += size.max(64);
                    i += 1;
                }
            }
            Mix::Huge => put("data/huge.bin".into(), &noise(99, total)),
        }
        (files, bytes)
    }
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

/// One mix, timed: every step starts after `sync`, both tools are timed the same way — restic
/// as a whole process, devcell with a store opened afresh (key derivation included), as a
/// restarted cell would — and the full backups run twice, in turns.
fn run_mix(base: &Path, mix: Mix, mb: usize, only_devcell: bool) {
    let root = base.join(mix.name());
    let ws = root.join("ws_bench");
    let files_dir = ws.join("workspace");
    let (files, bytes) = mix.generate(&files_dir, mb);
    let open = |name: &str| {
        BackupStore::local(
            &root.join(name),
            PASSWORD,
            &root.join(format!("{name}-cache")),
        )
        .unwrap()
    };
    // Created outside the timing, as restic's `init` is.
    for name in ["devcell-1", "devcell-2"] {
        open(name).list().unwrap();
    }
    let restic_full = |repo: &Path| {
        restic(repo, &["init"]);
        settle();
        restic(repo, &["backup", "--host", "devcell", ws.to_str().unwrap()])
    };
    let devcell_full = |name: &str| {
        settle();
        let t = Instant::now();
        let taken = open(name).snapshot(&source(&ws, None)).unwrap();
        assert_eq!(taken.files as usize, files);
        (t.elapsed(), taken)
    };
    if only_devcell {
        // Several full backups and incrementals after a restart, so that they, not the data's
        // making, fill a profile.
        for name in ["devcell-1", "devcell-2"] {
            let (d, taken) = devcell_full(name);
            let t = Instant::now();
            open(name).snapshot(&source(&ws, Some(&taken.id))).unwrap();
            println!(
                "{:>15}: devcell full {:.2} s, incremental after a restart {:.2} s",
                mix.name(),
                d.as_secs_f64(),
                t.elapsed().as_secs_f64()
            );
        }
        return;
    }
    let (r1, r2) = (root.join("restic-1"), root.join("restic-2"));
    let r_full_1 = restic_full(&r1);
    let (d_full_1, first) = devcell_full("devcell-1");
    let (d_full_2, _) = devcell_full("devcell-2");
    let r_full_2 = restic_full(&r2);

    // The unchanged workspace again: restic as a new process; devcell in the same process
    // (its fingerprint of the unchanged tree) and after a restart (a new store, no memory of
    // the last snapshot but its id, as a restarted cell has).
    settle();
    let r_incr = restic(&r1, &["backup", "--host", "devcell", ws.to_str().unwrap()]);
    let warm = open("devcell-1");
    warm.list().unwrap();
    let second = warm.snapshot(&source(&ws, Some(&first.id))).unwrap();
    settle();
    let t = Instant::now();
    let third = warm.snapshot(&source(&ws, Some(&second.id))).unwrap();
    let d_incr_warm = t.elapsed();
    settle();
    let t = Instant::now();
    let fourth = open("devcell-1")
        .snapshot(&source(&ws, Some(&third.id)))
        .unwrap();
    let d_incr_restart = t.elapsed();

    // Restore into new directories, once each.
    settle();
    let r_restore = restic(
        &r1,
        &[
            "restore",
            "latest",
            "--target",
            root.join("restic-restore").to_str().unwrap(),
        ],
    );
    settle();
    let target = root.join("devcell-restore");
    let t = Instant::now();
    open("devcell-1")
        .restore(&fourth.id, "ws_bench", &target)
        .unwrap();
    let d_restore = t.elapsed();
    assert_eq!(
        std::fs::read_dir(target.join("workspace")).unwrap().count(),
        std::fs::read_dir(&files_dir).unwrap().count()
    );

    let mean = |a: Duration, b: Duration| (a + b) / 2;
    let (r_full, d_full) = (mean(r_full_1, r_full_2), mean(d_full_1, d_full_2));
    let ratio = |r: Duration, d: Duration| r.as_secs_f64() / d.as_secs_f64();
    println!(
        "{:>15}: {files:>6} files {:>5.0} MiB | full: restic {:5.2} s, devcell {:5.2} s, ratio {:.2} (rounds {:.2} {:.2}) | incremental: restic {:.2} s, devcell {:.2} s in-process, {:.2} s after a restart | restore: ratio {:.2}",
        mix.name(),
        bytes as f64 / 1048576.0,
        r_full.as_secs_f64(),
        d_full.as_secs_f64(),
        ratio(r_full, d_full),
        ratio(r_full_1, d_full_1),
        ratio(r_full_2, d_full_2),
        r_incr.as_secs_f64(),
        d_incr_warm.as_secs_f64(),
        d_incr_restart.as_secs_f64(),
        ratio(r_restore, d_restore),
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// The product's path: a real cell (`devcell up`), a running workspace, its files on the
/// workspace's own disk, and `POST /api/v1/workspaces/{id}/backups` timed from the client,
/// against restic as a whole process on the same directory. Needs root (sandboxes, disks).
fn api_path(base: &Path, mixes: &[Mix], mb: usize) {
    use std::io::BufRead;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !rustix::process::geteuid().is_root() {
        println!("through the API: not measured (the cell needs root for its sandboxes and disks)");
        return;
    }
    let root = base.join("api");
    std::fs::create_dir_all(root.join("repos/src")).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let ok = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.email=b@e", "-c", "user.name=bench"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    let src = root.join("repos/src");
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README.md"), "bench\n").unwrap();
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "bench"]);
    git(
        &root.join("repos"),
        &["clone", "-q", "--bare", "src", "app.git"],
    );
    assert!(
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(root.join("repos"))
            .status()
            .unwrap()
            .success()
    );

    let bin = env!("CARGO_BIN_EXE_devcell");
    let data = root.join("data");
    // The cell refuses DEVCELL_ variables it does not know, such as this bench's own.
    let devcell = || {
        let mut c = Command::new(bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DEVCELL_")) {
            c.env_remove(k);
        }
        c
    };
    let mut cell = devcell()
        .args(["up", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("DEVCELL_WORKSPACE__FILE_REPOS", root.join("repos"))
        .env(
            "RUST_LOG",
            std::env::var("DEVCELL_BENCH_CELL_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(root.join("cell.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(cell.stdout.take().unwrap()).lines();
    let url = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!(
                "the cell ended before it was ready: {}",
                std::fs::read_to_string(root.join("cell.log")).unwrap_or_default()
            );
        };
        if let Some(u) = line.strip_prefix("devcell is ready: ") {
            break u.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let token = String::from_utf8(
        devcell()
            .args(["admin", "token", "--data"])
            .arg(&data)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let api = |method: &str, path: &str, body: Option<&str>| -> serde_json::Value {
        let mut c = Command::new("curl");
        c.args(["-sf", "-X", method, "-H"])
            .arg(format!("authorization: Bearer {token}"))
            .args(["-H", "content-type: application/json"])
            .arg(format!("{url}/api/v1/{path}"));
        if let Some(b) = body {
            c.args(["-d", b]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{method} {path} failed");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let repo_url = format!("file://{}", root.join("repos/app.git").display());
    let ws = api(
        "POST",
        "workspaces",
        Some(&format!(
            r#"{{"repos":[{{"url":"{repo_url}"}}],"start":true}}"#
        )),
    );
    let id = ws["id"].as_str().unwrap().to_owned();
    let until = Instant::now() + Duration::from_secs(60);
    while api("GET", &format!("workspaces/{id}"), None)["phase"] != "running" {
        assert!(Instant::now() < until, "the workspace did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let files_dir = data.join("workspaces").join(&id).join("workspace");
    let owner = std::fs::metadata(&files_dir).unwrap();
    println!("through the API (a running workspace, POST /backups) against restic on its files:");
    let mut logged = 0;
    for (n, mix) in mixes.iter().enumerate() {
        let bench_dir = files_dir.join("app/bench");
        let (files, bytes) = mix.generate(&bench_dir, mb);
        assert!(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", owner.uid(), owner.gid()))
                .arg(&bench_dir)
                .status()
                .unwrap()
                .success()
        );
        // Both tools read the files cold: whoever went second would find them cached.
        let cold = || {
            settle();
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        };
        cold();
        let t = Instant::now();
        let snap = api("POST", &format!("workspaces/{id}/backups"), None);
        let d = t.elapsed();
        assert!(snap["id"].is_string(), "{snap}");
        let repo = root.join(format!("restic-{n}"));
        restic(&repo, &["init"]);
        cold();
        let r = restic(
            &repo,
            &["backup", "--host", "devcell", files_dir.to_str().unwrap()],
        );
        println!(
            "{:>15}: {files:>6} files {:>5.0} MiB | full: restic {:5.2} s, devcell {:5.2} s, ratio {:.2}",
            mix.name(),
            bytes as f64 / 1048576.0,
            r.as_secs_f64(),
            d.as_secs_f64(),
            r.as_secs_f64() / d.as_secs_f64()
        );
        if std::env::var_os("DEVCELL_BENCH_CELL_LOG").is_some() {
            let log = std::fs::read_to_string(root.join("cell.log")).unwrap_or_default();
            for line in log.lines().skip(logged) {
                println!("    cell: {line}");
            }
            logged = log.lines().count();
        }
        std::fs::remove_dir_all(&bench_dir).unwrap();
        std::fs::remove_dir_all(&repo).unwrap();
    }
    let _ = cell.kill();
    let _ = cell.wait();
    let _ = devcell()
        .args(["down", "--purge", "--data"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .status();
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
        .unwrap_or(256);
    let wanted = std::env::var("DEVCELL_BENCH_MIXES").unwrap_or_default();
    let only_devcell = std::env::var_os("DEVCELL_BENCH_ONLY_DEVCELL").is_some();
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "backup bench: about {mb} MiB per mix; ratio = restic time / devcell time (target >= 1.0)"
    );
    let mixes: Vec<Mix> = Mix::ALL
        .into_iter()
        .filter(|m| wanted.is_empty() || wanted.split(',').any(|w| w == m.name()))
        .collect();
    for &mix in &mixes {
        run_mix(tmp.path(), mix, mb, only_devcell);
    }
    if !only_devcell {
        api_path(tmp.path(), &mixes, mb);
    }
}
