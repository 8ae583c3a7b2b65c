//! Dockerfile builds on this host, with the real local runtime. Prints figures and ratios
//! against baselines measured in the same run; never a timed test.
//! Run: `cargo bench --bench builds` (as root, with bubblewrap and busybox-static installed).
//!
//! - cached rebuild: create → running for a repository whose Dockerfile is built already,
//!   against the same start on the built image named by digest (target <= 1.1);
//! - first build: the builder's time for a Dockerfile of CPU- and file-heavy RUN steps,
//!   against the same commands run one after the other in a bare bubblewrap sandbox on a
//!   writable copy of the base image (target <= 1.3), for short steps (the fixed cost of a
//!   step shows most) and for steps of about a second, as installs and compiles take.
//!
//! The base image is imported from an OCI archive the bench makes (busybox), as an air-gapped
//! site would: no registry is involved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{bare_repo, median, ms};
use devcell::config::{self, Overrides};
use devcell::content::image::build::{BasePuller, BuildRequest, StepRun, StepRunner};
use devcell::content::image::{ImageRef, ImageStore, PulledImage, Puller, RegistryAuth};
use devcell::runtime::Runtime;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sha2::Digest as _;

const RUNS: usize = 10;
const BASE: &str = "bench.invalid/busybox:1";

/// Short steps (a quarter second in all): the fixed cost of a step shows most.
const SHORT_STEPS: &[&str] = &[
    "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo $i > /counted",
    "mkdir -p /data && for i in $(seq 1 2000); do echo line $i > /data/f$i; done",
    "cat /data/* | wc -l > /data/total && rm /data/f1*",
];

/// Steps of a second or more, as package installs and compiles take: CPU, many files written,
/// read back and partly deleted.
const TYPICAL_STEPS: &[&str] = &[
    "i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done; echo $i > /counted",
    "mkdir -p /data && for d in $(seq 1 20); do mkdir /data/$d; for i in $(seq 1 500); do echo line $i > /data/$d/f$i; done; done",
    "cat /data/*/* | wc -l > /data/total && rm -r /data/1*",
];

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// An OCI archive holding busybox as `BASE`.
fn busybox_archive(dir: &Path) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("apt-get install -y busybox-static");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for applet in ["sh", "echo", "seq", "mkdir", "cat", "wc", "rm", "true"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    for d in ["tmp/", "etc/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    let layer = b.into_inner().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&layer)] }
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": sha256(&config) },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "size": layer.len(), "digest": sha256(&layer) }]
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "size": manifest.len(),
                        "digest": sha256(&manifest), "annotations": { "org.opencontainers.image.ref.name": BASE } }]
    }))
    .unwrap();
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        out.append_data(&mut h, path, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion": "1.0.0"}"#);
    add("index.json".into(), &index);
    for blob in [&layer, &config, &manifest] {
        add(format!("blobs/sha256/{}", &sha256(blob)[7..]), blob);
    }
    let path = dir.join("busybox.tar");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&out.into_inner().unwrap())
        .unwrap();
    path
}

fn dockerfile(nonce: &str, steps: &[&str]) -> String {
    let mut d = format!("FROM {BASE}\nARG NONCE={nonce}\n");
    for r in steps {
        d.push_str(&format!("RUN {r}\n"));
    }
    d
}

struct Steps<'a> {
    runtime: &'a dyn Runtime,
    spec: devcell::runtime::SandboxSpec,
    uid: u32,
}

impl StepRunner for Steps<'_> {
    fn run<'a>(&'a self, step: &'a StepRun) -> BoxFuture<'a, Result<i32, String>> {
        Box::pin(async move {
            self.runtime
                .build_step(&self.spec, step, self.uid)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

struct Offline<'a>(&'a ImageStore);

impl BasePuller for Offline<'_> {
    fn pull<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<PulledImage, String>> {
        Box::pin(async move {
            let r = ImageRef::parse(reference).map_err(|e| e.to_string())?;
            self.0
                .pull(&r, &RegistryAuth::Anonymous, Puller::Operator)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A new ext4 filesystem (no journal, like this host's) mounted at `dir`, gone when dropped.
///
/// On this host's journal-less ext4, creating files within a minute or more after thousands
/// were deleted costs several times as much: the inode allocator reads the inode table to skip
/// recently deleted inodes (`recently_deleted` in a profile). Whatever was deleted before
/// (another run's scratch, the baseline's `rm`) would slow down whatever came next; each side
/// of the comparison gets a filesystem of its own instead.
struct Ext4 {
    dir: PathBuf,
    image: PathBuf,
}

fn run_ok(cmd: &mut Command) {
    assert!(cmd.status().unwrap().success(), "{cmd:?}");
}

impl Ext4 {
    fn new(dir: &Path, size: &str) -> Ext4 {
        let image = dir.with_extension("ext4");
        run_ok(Command::new("truncate").args(["-s", size]).arg(&image));
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^has_journal"])
                .arg(&image),
        );
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir),
        );
        Ext4 {
            dir: dir.to_owned(),
            image,
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// The same commands, one after the other, in a bare sandbox on a writable copy of the base,
/// on a filesystem of its own made for this run (the best case for this baseline).
fn direct(rootfs: &Path, scratch: &Path, what: &str, i: usize, steps: &[&str]) -> Duration {
    let fs = Ext4::new(
        &scratch.join(format!("direct-{}-{i}", what.replace(' ', "-"))),
        "2G",
    );
    let copy = fs.dir.join("root");
    assert!(
        Command::new("cp")
            .args(["-a"])
            .arg(rootfs)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    for d in ["proc", "dev"] {
        std::fs::create_dir_all(copy.join(d)).unwrap();
    }
    assert!(Command::new("sync").status().unwrap().success());
    let t = Instant::now();
    for r in steps {
        let ok = Command::new("bwrap")
            .args(["--unshare-all", "--bind"])
            .arg(&copy)
            .args(["/", "--proc", "/proc", "--dev", "/dev", "/bin/sh", "-c", r])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{r}");
    }
    t.elapsed()
}

async fn run() {
    // RUST_LOG=devcell::runtime=debug shows where a build step's time goes.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let scratch = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    // The builds' store, and the cell's data directory after them, on a filesystem of their own.
    let data_fs = Ext4::new(&scratch.path().join("data"), "16G");
    let data = data_fs.dir.clone();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let store = ImageStore::new(data.join("images"));
    store
        .import_archive(&busybox_archive(scratch.path()))
        .unwrap();
    let base = store
        .find(&ImageRef::parse(BASE).unwrap().to_string())
        .unwrap()
        .unwrap();

    // First builds, straight through the builder.
    let runtime: Arc<dyn Runtime> = Arc::new(
        devcell::runtime::LocalRuntime::new()
            .unwrap()
            .with_exe(env!("CARGO_BIN_EXE_devcell").into()),
    );
    let ws = scratch.path().join("ws");
    std::fs::create_dir_all(ws.join(".cell")).unwrap();
    let spec = devcell::runtime::SandboxSpec {
        id: devcell::domain::WorkspaceId::from_ulid(ulid::Ulid::new()),
        dir: ws.clone(),
        state: ws.join(".cell"),
        uid: Some((299_999, 299_999)),
        limits: devcell::runtime::cgroup::Limits {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            max_processes: 4096,
        },
        network: false,
        root: None,
        user: Default::default(),
        links: Vec::new(),
    };
    let steps = Steps {
        runtime: runtime.as_ref(),
        spec,
        uid: 299_999,
    };
    let context = scratch.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    let log = scratch.path().join("build.log");
    direct(&base.rootfs, scratch.path(), "warm-up", 0, SHORT_STEPS);
    for (what, workload, runs) in [
        ("short steps", SHORT_STEPS, RUNS),
        ("typical steps", TYPICAL_STEPS, 9),
    ] {
        // DEVCELL_BENCH_RUNS=N for a quicker look.
        let runs = std::env::var("DEVCELL_BENCH_RUNS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(runs);
        let mut built = Vec::new();
        let mut directly = Vec::new();
        // Both start with the disk synced.
        let quiet = || assert!(Command::new("sync").status().unwrap().success());
        for i in 0..runs {
            quiet();
            directly.push(direct(&base.rootfs, scratch.path(), what, i, workload));
            quiet();
            let text = dockerfile(&format!("first-{}-{i}", what.replace(' ', "-")), workload);
            let req = BuildRequest {
                dockerfile: Some(&text),
                base_image: None,
                features: &[],
                dockerfile_name: "Dockerfile",
                context: &context,
                args: &[],
                target: None,
                uid: 299_999,
                who: Puller::Operator,
                log: &log,
            };
            let t = Instant::now();
            store
                .build(&req, &steps, &Offline(&store), &|_| {})
                .await
                .unwrap_or_else(|e| {
                    panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
                });
            built.push(t.elapsed());
        }
        let (b, d) = (median(built.clone()), median(directly.clone()));
        let mut paired: Vec<f64> = built
            .iter()
            .zip(&directly)
            .map(|(b, d)| b.as_secs_f64() / d.as_secs_f64())
            .collect();
        paired.sort_by(f64::total_cmp);
        println!(
            "first build, {} RUN {what}, median of {runs}:",
            workload.len()
        );
        // Where the time of the last one went, step by step.
        let last = std::fs::read_to_string(&log).unwrap_or_default();
        let from = last.rfind("#1 [").unwrap_or(0);
        // DEVCELL_BENCH_LOG=1 prints the whole log of the last build.
        let whole = std::env::var_os("DEVCELL_BENCH_LOG").is_some();
        for line in last[from..]
            .lines()
            .filter(|l| whole || l.contains(" ran ") || l.contains("assembled"))
        {
            println!("  (last build) {line}");
        }
        println!("  the commands in a bare bwrap sandbox: {}", ms(d));
        println!(
            "  devcell build (uncached):             {}  ratio of medians {:.2}, median of paired ratios {:.2} (target <= 1.30)",
            ms(b),
            b.as_secs_f64() / d.as_secs_f64(),
            paired[paired.len() / 2]
        );
    }

    // Cached rebuilds against the built image, through the cell.
    let overrides = Overrides {
        data_dir: Some(data.clone()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Overrides::default()
    };
    let mut config = config::load(None, &[], &overrides).unwrap();
    config.workspace.file_repos = vec![scratch.path().join("repos")];
    let (running, _, token) = common::start_cell(config, Some(runtime.clone())).await;
    let base_url = running.url();
    let http = reqwest::Client::new();
    let repos = scratch.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let built_repo = bare_repo(
        &repos,
        "built",
        &[
            (".gitpod.yml".into(), "image:\n  file: Dockerfile\n".into()),
            ("Dockerfile".into(), dockerfile("cached", SHORT_STEPS)),
        ],
    );
    let start = |url: String| {
        let (http, base_url, token) = (&http, &base_url, &token);
        async move {
            let t = Instant::now();
            let w: Value = http
                .post(format!("{base_url}/api/v1/workspaces"))
                .bearer_auth(token)
                .json(&json!({ "repos": [{ "url": url }], "start": true }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = w["id"]
                .as_str()
                .unwrap_or_else(|| panic!("not created: {w:#}"))
                .to_owned();
            let base = reqwest::Url::parse(base_url).unwrap();
            let w = devcell::client::wait_for_phase(
                http,
                &base,
                token,
                &id,
                &["running", "failed"],
                Duration::from_secs(300),
            )
            .await
            .unwrap();
            assert_eq!(w["phase"], "running", "{w:#}");
            let took = t.elapsed();
            http.post(format!("{base_url}/api/v1/workspaces/{id}/stop"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            devcell::client::wait_for_phase(
                http,
                &base,
                token,
                &id,
                &["stopped"],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            took
        }
    };
    let built_url = format!("file://{}", built_repo.display());
    // The first start builds; its image is then named by digest for the baseline.
    let before: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    start(built_url.clone()).await;
    let digest = store
        .list()
        .unwrap()
        .into_iter()
        .find(|i| i.reference.starts_with("build/") && !before.contains(&i.digest))
        .unwrap_or_else(|| panic!("no new built image: {:#?}", store.list()))
        .digest;
    let prebuilt_repo = bare_repo(
        &repos,
        "prebuilt",
        &[(
            ".gitpod.yml".into(),
            format!("image: bench.invalid/built@{digest}\n"),
        )],
    );
    let prebuilt_url = format!("file://{}", prebuilt_repo.display());
    start(prebuilt_url.clone()).await;
    let mut cached = Vec::new();
    let mut prebuilt = Vec::new();
    for _ in 0..RUNS {
        prebuilt.push(start(prebuilt_url.clone()).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cached.push(start(built_url.clone()).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (c, p) = (median(cached.clone()), median(prebuilt.clone()));
    let mut paired: Vec<f64> = cached
        .iter()
        .zip(&prebuilt)
        .map(|(c, p)| c.as_secs_f64() / p.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    println!("create → running, median of {RUNS}:");
    println!("  on the built image by digest:          {}", ms(p));
    println!(
        "  from the Dockerfile, every step cached: {}  ratio of medians {:.2}, median of paired ratios {:.2} (target <= 1.10)",
        ms(c),
        c.as_secs_f64() / p.as_secs_f64(),
        paired[paired.len() / 2]
    );
    running.stop().await;
    drop(data_fs);
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
