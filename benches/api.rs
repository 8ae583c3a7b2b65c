//! API and footprint benchmarks. Prints figures and ratios against baselines measured in the
//! same run; never a timed test. Run: `cargo bench --bench api`.
//!
//! - list a page of 100 among 10,000 workspaces, and get one: p50/p99 latency;
//! - requests/s of "get one workspace" as a ratio to a bare hyper server answering a fixed body,
//!   both driven by the same client with the same concurrency;
//! - the real executable: time from process start to its ready line, and idle resident memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devcell::config::{self, Overrides};
use devcell::domain::entities::Workspace;
use devcell::domain::{Desired, Lifecycle, RepoSpec, RepoUrl, WorkspaceId};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

const WORKSPACES: usize = 10_000;
const LATENCY_SAMPLES: usize = 2_000;
const LOAD_SECONDS: u64 = 3;
const CONCURRENCY: usize = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latencies(client: &reqwest::Client, url: &str, token: &str) -> (Duration, Duration) {
    let mut v = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let t = Instant::now();
        let r = client.get(url).bearer_auth(token).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.bytes().await.unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// Requests per second with `CONCURRENCY` keep-alive clients for `LOAD_SECONDS`.
async fn throughput(url: String, token: Option<String>) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut req = client.get(&url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let r = req.send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn bare_hyper() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"ok\":true}",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn api_bench() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        data_dir: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Overrides::default()
    };
    let config = config::load(None, &[], &overrides).unwrap();
    let (running, owner, token) = common::start_cell(config, None).await;
    let cell = running.cell.clone();

    // Seed through the API once for the org and class, then in bulk through the store.
    let actor = devcell::service::Actor {
        user: owner.clone(),
        via: devcell::service::AuthVia::Token,
    };
    let template = cell
        .create_workspace(
            &actor,
            devcell::service::WorkspaceInput {
                org: None,
                name: None,
                repos: vec![(
                    "https://git.example.com/team/app.git".into(),
                    Some("main".into()),
                )],
                class: None,
                image: None,
                timeout: None,
                start: false,
            },
        )
        .unwrap();
    let t = Instant::now();
    let now = cell.now();
    let mut ids = Vec::new();
    for chunk in 0..(WORKSPACES / 1000) {
        cell.store()
            .write(|tx| {
                for i in 0..1000 {
                    let id = WorkspaceId::from_ulid(ulid::Ulid::from_parts(
                        now.unix_timestamp() as u64 * 1000 + (chunk * 1000 + i) as u64,
                        rand_part(chunk * 1000 + i),
                    ));
                    let ws = Workspace {
                        id: id.clone(),
                        name: format!("ws-{chunk}-{i}"),
                        repos: vec![RepoSpec {
                            url: RepoUrl::parse("https://git.example.com/team/app.git").unwrap(),
                            branch: Some("main".into()),
                        }],
                        lifecycle: Lifecycle::restore(
                            Desired::Stopped,
                            devcell::domain::Phase::Stopped,
                            vec![],
                        ),
                        ..template.clone()
                    };
                    tx.put_workspace(&ws)?;
                    ids.push(id);
                }
                Ok::<_, devcell::store::StoreError>(())
            })
            .unwrap();
    }
    println!(
        "seeded {} workspaces in {:.2} s",
        cell.store().workspace_count().unwrap(),
        t.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::new();
    let base = running.url();
    let one = format!("{base}/api/v1/workspaces/{}", ids[WORKSPACES / 2]);
    let page = format!("{base}/api/v1/workspaces?limit=100");
    // Warm up.
    latencies(&client, &one, &token).await;

    let (p50, p99) = latencies(&client, &page, &token).await;
    println!(
        "list a page of 100 of {WORKSPACES}: p50 {}  p99 {}  (target p99 <= 10 ms)",
        ms(p50),
        ms(p99)
    );
    let (p50, p99) = latencies(&client, &one, &token).await;
    println!(
        "get one workspace:           p50 {}  p99 {}  (target p99 <= 2 ms)",
        ms(p50),
        ms(p99)
    );

    // The real workspaces page through its handler (store reads, class names, stop plans,
    // rendering) against the JSON API listing the same 500 rows, both over HTTP.
    let (html_p50, html_p99) = latencies(&client, &format!("{base}/"), &token).await;
    let (json_p50, _) = latencies(
        &client,
        &format!("{base}/api/v1/workspaces?limit=500"),
        &token,
    )
    .await;
    println!(
        "workspaces page, 500 rows of {WORKSPACES} through the handler: p50 {}  p99 {}; JSON API same rows p50 {}; ratio {:.2}",
        ms(html_p50),
        ms(html_p99),
        ms(json_p50),
        html_p50.as_secs_f64() / json_p50.as_secs_f64()
    );

    let t = Instant::now();
    let mut cursor: Option<String> = None;
    let mut n = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/api/v1/workspaces?limit=500&cursor={c}"),
            None => format!("{base}/api/v1/workspaces?limit=500"),
        };
        let v: serde_json::Value = client
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n += v["items"].as_array().unwrap().len();
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    println!(
        "walk all {n} workspaces in pages of 500: {}",
        ms(t.elapsed())
    );

    // The client shares the machine with the servers, so rounds alternate and the best of each counts.
    let bare = bare_hyper().await;
    let (mut bare_rps, mut health_rps, mut cell_rps) = (0f64, 0f64, 0f64);
    for _ in 0..3 {
        bare_rps = bare_rps.max(throughput(format!("http://{bare}/"), None).await);
        health_rps = health_rps.max(throughput(format!("{base}/healthz"), None).await);
        cell_rps = cell_rps.max(throughput(one.clone(), Some(token.clone())).await);
    }
    println!("requests/s with {CONCURRENCY} connections, best of 3 rounds of {LOAD_SECONDS} s:");
    println!("  bare hyper, fixed body:            {bare_rps:.0}");
    println!(
        "  devcell /healthz (routing only):   {health_rps:.0}  ratio {:.2}",
        health_rps / bare_rps
    );
    println!(
        "  devcell get one workspace:         {cell_rps:.0}  ratio {:.2} (target >= 0.50)",
        cell_rps / bare_rps
    );
    running.stop().await;
}

fn rand_part(i: usize) -> u128 {
    (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15) & ((1u128 << 80) - 1)
}

fn startup_bench() {
    let bin = env!("CARGO_BIN_EXE_devcell");
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let mut child = Command::new(bin)
            .args(["up", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let l = lines.next().unwrap().unwrap();
            if l.starts_with("devcell is ready") {
                break;
            }
        }
        ready.push(t.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        rss.push(kb);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap();
    }
    ready.sort();
    rss.sort();
    println!(
        "process start to ready line (5 fresh starts): median {}  max {}  (target <= 300 ms)",
        ms(ready[2]),
        ms(ready[4])
    );
    println!(
        "idle resident memory: median {:.1} MB  max {:.1} MB  (target <= 50 MB)",
        rss[2] as f64 / 1024.0,
        rss[4] as f64 / 1024.0
    );
}

/// Server-side rendering of the workspaces page with 1,000 workspaces, against serializing
/// the same rows as JSON (what the API answers) in the same run.
fn ssr_bench() {
    let rows: Vec<ui::WorkspaceRow> = (0..1000)
        .map(|i| ui::WorkspaceRow {
            id: format!("ws_01jd{i:022}"),
            name: format!("workspace-{i}"),
            repo: "https://git.example.com/team/app.git".into(),
            phase: if i % 3 == 0 { "running" } else { "stopped" }.into(),
            class: "small".into(),
            last_activity: ui::When {
                iso: "2026-11-29T10:00:00Z".into(),
                text: "2026-11-29 10:00 UTC (5 min ago)".into(),
            },
            stops_at: Some(ui::When {
                iso: "2026-11-29T10:30:00Z".into(),
                text: "2026-11-29 10:30 UTC (in 25 min)".into(),
            }),
            wanted_running: i % 3 == 0,
        })
        .collect();
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({ "id": r.id, "name": r.name, "repo": r.repo, "phase": r.phase, "class": r.class, "last_activity": r.last_activity.iso, "stops_at": r.stops_at.as_ref().map(|w| &w.iso) }))
        .collect();
    let mut html_times = Vec::new();
    let mut json_times = Vec::new();
    let mut size = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let viewer = ui::Viewer {
            email: "owner@example.com".into(),
            csrf: "token".into(),
            admin: true,
            owner: true,
            warnings: Vec::new(),
        };
        let html = ui::workspaces_page(viewer, rows.clone(), None);
        html_times.push(t.elapsed());
        size = html.len();
        let t = Instant::now();
        let json = serde_json::to_string(&json_rows).unwrap();
        json_times.push(t.elapsed());
        assert!(!json.is_empty());
    }
    html_times.sort();
    json_times.sort();
    let (h, j) = (html_times[15], json_times[15]);
    println!(
        "workspaces page with 1,000 rows, server-side rendered: median {} ({} KB of HTML); JSON of the same rows {}; ratio {:.1}",
        ms(h),
        size / 1024,
        ms(j),
        h.as_secs_f64() / j.as_secs_f64()
    );
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    ssr_bench();
    rt.block_on(api_bench());
    startup_bench();
}
