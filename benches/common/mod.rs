//! What the benchmarks share: git repositories made for them, and the figures' arithmetic.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.com")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.com")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A bare repository `root/NAME.git` of one commit holding `files` (path, text), readable by
/// the workspaces' uids.
pub fn bare_repo(root: &Path, name: &str, files: &[(String, String)]) -> PathBuf {
    let src = root.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    for (path, text) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "init"]);
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(root)
        .status()
        .unwrap();
    bare
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A cell started in this process on `config` (and `runtime`, if any), its first owner
/// `bench@example.com`, and an API token of that owner's.
pub async fn start_cell(
    config: devcell::config::Config,
    runtime: Option<std::sync::Arc<dyn devcell::runtime::Runtime>>,
) -> (
    devcell::server::Running,
    devcell::domain::entities::User,
    String,
) {
    let running = devcell::server::start(
        config,
        devcell::server::Options {
            bootstrap_owner: Some(("bench@example.com".into(), None)),
            runtime,
            ..devcell::server::Options::default()
        },
    )
    .await
    .unwrap();
    let (owner, token) = running.cell.admin_token(None, "bench").unwrap();
    (running, owner, token.secret)
}
