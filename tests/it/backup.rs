//! Backups: the store in restic's format read by Debian's stock `restic`, snapshots at stop,
//! files released and restored on start, restore and download through the API, and a failing
//! store that loses nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devcell::backup::{BackupStore, Source};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::TestCell;
use crate::runtime::{START_WITHIN, exec, running_workspace};

/// Runs the stock restic CLI on a repository; fails the test with the install command when it
/// is missing.
pub fn restic(repo: &Path, password: &str, args: &[&str]) -> String {
    let out = Command::new("restic")
        .arg("-r")
        .arg(repo)
        .args(args)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", password)
        .output()
        .expect(
            "restic is not installed: apt-get install -y restic (bash tests/run.sh installs it)",
        );
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[test]
fn the_store_is_a_restic_repository_that_stock_restic_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws_01backuptest");
    write(&ws.join("workspace/app/README.md"), b"# first\n");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(&ws.join("workspace/app/data/big.bin"), &big);
    write(&ws.join("home/.bashrc"), b"alias ll='ls -l'\n");
    write(&ws.join("run/spec.json"), b"{}");
    let repo = tmp.path().join("repo");
    let store = BackupStore::local(&repo, "pw-1", &tmp.path().join("cache")).unwrap();
    let source = |include_home| Source {
        dir: &ws,
        workspace: "ws_01backuptest",
        org: "org_01test",
        include_home,
        trigger: "stop",
        verified_parent: None,
    };
    let first = store.snapshot(&source(false)).unwrap();
    assert_eq!(first.files, 2, "{first:?}");
    assert_eq!(first.bytes, big.len() as u64 + 8);

    // Stock restic lists it with our tags and restores it; the run directory and (by policy)
    // the home directory are not in it.
    let listed: Value =
        serde_json::from_str(&restic(&repo, "pw-1", &["snapshots", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["paths"], json!(["ws_01backuptest"]));
    let tags = listed[0]["tags"].to_string();
    assert!(
        tags.contains("ws_01backuptest") && tags.contains("org_01test"),
        "{tags}"
    );
    let out = tmp.path().join("restic-out");
    restic(
        &repo,
        "pw-1",
        &["restore", "latest", "--target", out.to_str().unwrap()],
    );
    let root = out.join("ws_01backuptest");
    assert_eq!(
        std::fs::read(root.join("workspace/app/data/big.bin")).unwrap(),
        big
    );
    assert!(!root.join("run").exists() && !root.join("home").exists());
    restic(&repo, "pw-1", &["check", "--read-data"]);

    // A change is an incremental snapshot: the big file is not stored again.
    write(&ws.join("workspace/app/README.md"), b"# second\n");
    let second = store.snapshot(&source(true)).unwrap();
    assert_eq!(second.files, 3);
    assert!(second.added_bytes < 100_000, "{second:?}");
    // Unchanged since a verified snapshot: nothing added, same count, no second tree walk.
    // Another trigger still follows it (restic records the parent): unchanged files are not
    // read again.
    let third = store
        .snapshot(&Source {
            verified_parent: Some(&second.id),
            trigger: "interval",
            ..source(true)
        })
        .unwrap();
    assert_eq!((third.files, third.added_bytes), (3, 0), "{third:?}");
    assert_ne!(third.id, second.id);
    let listed: Value = serde_json::from_str(&restic(
        &repo,
        "pw-1",
        &["snapshots", "--json", third.id.as_str()],
    ))
    .unwrap();
    assert_eq!(listed[0]["parent"], json!(second.id), "{listed}");
    let tree = |id: &str| -> Value {
        let l: Value =
            serde_json::from_str(&restic(&repo, "pw-1", &["snapshots", "--json", id])).unwrap();
        l[0]["tree"].clone()
    };
    assert_eq!(tree(&third.id), tree(&second.id));

    // The sneakiest change: same size, modification time set back. It is still seen (the
    // change time moved) and the snapshot holds the new bytes.
    let readme = ws.join("workspace/app/README.md");
    // New bytes of the same size, the modification time set back to what it was.
    let sneak = |text: &[u8]| {
        let old_mtime = std::fs::metadata(&readme).unwrap().modified().unwrap();
        write(&readme, text);
        std::fs::File::options()
            .write(true)
            .open(&readme)
            .unwrap()
            .set_modified(old_mtime)
            .unwrap();
    };
    // The README as `store` restores it from snapshot `id`.
    let restored = |store: &BackupStore, id: &str, name: &str| {
        let dir = tmp.path().join(name);
        store.restore(id, "ws_01backuptest", &dir).unwrap();
        std::fs::read_to_string(dir.join("workspace/app/README.md")).unwrap()
    };
    sneak(b"# sneaky\n");
    let fourth = store
        .snapshot(&Source {
            verified_parent: Some(&third.id),
            ..source(true)
        })
        .unwrap();
    assert_ne!(tree(&fourth.id), tree(&third.id));
    assert_eq!(restored(&store, &fourth.id, "sneaky"), "# sneaky\n");

    // A restarted cell (a new store on the same repository and cache) remembers the
    // fingerprint of the last snapshot: unchanged files need no walk, and a change made while
    // it was down, however sneaky, is still seen.
    let saved = std::fs::read_to_string(tmp.path().join("cache/devcell-fingerprints.json"))
        .expect("the fingerprints are kept in the cache directory");
    assert!(saved.contains(&fourth.id), "{saved}");
    let restarted = BackupStore::local(&repo, "pw-1", &tmp.path().join("cache")).unwrap();
    let fifth = restarted
        .snapshot(&Source {
            verified_parent: Some(&fourth.id),
            ..source(true)
        })
        .unwrap();
    assert_eq!((fifth.files, fifth.added_bytes), (3, 0), "{fifth:?}");
    assert_eq!(tree(&fifth.id), tree(&fourth.id));
    sneak(b"# hidden\n");
    let again = BackupStore::local(&repo, "pw-1", &tmp.path().join("cache")).unwrap();
    let sixth = again
        .snapshot(&Source {
            verified_parent: Some(&fifth.id),
            ..source(true)
        })
        .unwrap();
    assert_ne!(tree(&sixth.id), tree(&fifth.id));
    assert_eq!(restored(&again, &sixth.id, "hidden"), "# hidden\n");

    // Our restore of the first snapshot brings back its content exactly.
    let back = tmp.path().join("restored");
    store.restore(&first.id, "ws_01backuptest", &back).unwrap();
    assert_eq!(
        std::fs::read_to_string(back.join("workspace/app/README.md")).unwrap(),
        "# first\n"
    );
    assert!(matches!(
        store.restore("0123456789abcdef", "ws_01backuptest", &back),
        Err(devcell::backup::BackupError::NoSnapshot(_))
    ));
    // Another workspace's id does not reach this one's snapshots.
    assert!(store.restore(&first.id, "ws_other", &back).is_err());

    // Forget + prune: restic sees the other five and a consistent repository.
    assert_eq!(store.forget(std::slice::from_ref(&first.id)).unwrap(), 1);
    store.prune().unwrap();
    let listed: Value =
        serde_json::from_str(&restic(&repo, "pw-1", &["snapshots", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 5);
    assert!(listed.to_string().contains(&second.id), "{listed}");
    restic(&repo, "pw-1", &["check"]);
    // The wrong password opens nothing.
    let wrong = BackupStore::local(&repo, "wrong", &tmp.path().join("cache2")).unwrap();
    assert!(wrong.list().is_err());
}

/// Every kind of entry a workspace holds, written by the cell's own walk and pack writer, as
/// stock restic records the same tree: the nodes `restic ls` shows match field for field, and
/// `restic restore` brings back the same bytes, modes, owners, link targets and attributes.
#[test]
fn small_files_links_and_special_entries_read_back_from_stock_restic_as_restic_stores_them() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws_01kinds");
    let files = ws.join("workspace");
    // Many small files (one blob each, packed by the cell), some identical.
    for i in 0..400u32 {
        write(
            &files.join(format!("src/m{}/f{i}.txt", i % 7)),
            format!("file {i}: {}\n", "text ".repeat((i % 50) as usize)).as_bytes(),
        );
    }
    for i in 0..20 {
        write(&files.join(format!("dup/d{i}.txt")), b"the same bytes\n");
    }
    let noise: Vec<u8> = (0..700_000u64)
        .map(|i| (i.wrapping_mul(6364136223846793005) >> 33) as u8)
        .collect();
    // Around the one-blob limit (512 KiB) and beyond the 1 MiB chunk.
    write(&files.join("edge/below.bin"), &noise[..512 * 1024 - 1]);
    write(&files.join("edge/at.bin"), &noise[..512 * 1024]);
    write(&files.join("edge/above.bin"), &noise[..512 * 1024 + 1]);
    let large: Vec<u8> = noise.iter().chain(noise.iter()).copied().collect();
    write(&files.join("edge/large.bin"), &large);
    write(&files.join("edge/empty"), b"");
    // A link out of the workspace is kept as a link, never followed.
    std::os::unix::fs::symlink("/etc/shadow", files.join("shadow-link")).unwrap();
    std::fs::hard_link(files.join("dup/d0.txt"), files.join("hard.txt")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(files.join("pipe"))
            .status()
            .unwrap()
            .success()
    );
    write(&files.join("bin/tool"), b"#!/bin/sh\n");
    std::fs::set_permissions(
        files.join("bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::create_dir_all(files.join("tmp")).unwrap();
    std::fs::set_permissions(files.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Workspace files belong to uids the host has no name for.
    for f in ["src/m0/f0.txt", "bin/tool", "shadow-link"] {
        lchown(files.join(f), Some(4242), Some(4343)).unwrap();
    }
    rustix::fs::setxattr(
        files.join("src/m1/f1.txt"),
        "user.devcell",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();

    let repo = tmp.path().join("repo");
    let store = BackupStore::local(&repo, "pw-1", &tmp.path().join("cache")).unwrap();
    let source = |dir, workspace, verified_parent| Source {
        dir,
        workspace,
        org: "org_01test",
        include_home: false,
        trigger: "manual",
        verified_parent,
    };
    let taken = store.snapshot(&source(&ws, "ws_01kinds", None)).unwrap();
    restic(&repo, "pw-1", &["check", "--read-data"]);
    let blobs = restic(&repo, "pw-1", &["list", "blobs"]);
    let mut ids: Vec<&str> = blobs.lines().collect();
    let listed = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), listed, "a blob is stored twice");

    // Stock restic's own backup of the same directory records the same nodes.
    let theirs = tmp.path().join("restic-repo");
    restic(&theirs, "pw-1", &["init"]);
    restic(&theirs, "pw-1", &["backup", files.to_str().unwrap()]);
    let nodes = |repo: &Path, snapshot: &str, prefix: &str| -> Vec<Value> {
        let out = restic(repo, "pw-1", &["ls", "--json", snapshot]);
        let mut nodes: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|n| n["struct_type"] == "node")
            .filter_map(|n| {
                let path = n["path"].as_str()?.strip_prefix(prefix)?.to_owned();
                let mut keep = json!({ "path": path });
                for k in [
                    "type",
                    "mode",
                    "uid",
                    "gid",
                    "size",
                    "mtime",
                    "inode",
                    "permissions",
                ] {
                    keep[k] = n[k].clone();
                }
                Some(keep)
            })
            .collect();
        nodes.sort_by_key(|n| n["path"].as_str().unwrap_or_default().to_owned());
        nodes
    };
    let ours = nodes(&repo, &taken.id, "/ws_01kinds/workspace");
    let stock = nodes(&theirs, "latest", files.to_str().unwrap());
    assert!(ours.len() > 430, "{}", ours.len());
    assert_eq!(ours, stock);

    // restic's restore brings back the bytes, modes, owners, links and attributes.
    let out = tmp.path().join("out");
    restic(
        &repo,
        "pw-1",
        &["restore", &taken.id, "--target", out.to_str().unwrap()],
    );
    let back = out.join("ws_01kinds/workspace");
    for entry in [
        "src/m3/f10.txt",
        "src/m0/f399.txt",
        "dup/d7.txt",
        "hard.txt",
    ] {
        assert_eq!(
            std::fs::read(back.join(entry)).unwrap(),
            std::fs::read(files.join(entry)).unwrap(),
            "{entry}"
        );
    }
    for name in ["below.bin", "at.bin", "above.bin", "large.bin", "empty"] {
        assert_eq!(
            std::fs::read(back.join("edge").join(name)).unwrap(),
            std::fs::read(files.join("edge").join(name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_link(back.join("shadow-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    for f in ["src/m0/f0.txt", "bin/tool", "tmp", "pipe", "shadow-link"] {
        let (a, b) = (meta(&files.join(f)), meta(&back.join(f)));
        assert_eq!(
            (a.mode(), a.uid(), a.gid()),
            (b.mode(), b.uid(), b.gid()),
            "{f}"
        );
    }
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(back.join("src/m1/f1.txt"), "user.devcell", &mut value).unwrap();
    assert_eq!(&value[..n], b"kept");

    // Another workspace with the same files stores none of their contents again.
    let before = blobs.lines().filter(|l| l.starts_with("data ")).count();
    assert!(before > 300, "{blobs}");
    let other = tmp.path().join("ws_01other");
    assert!(
        Command::new("cp")
            .args(["-a", ws.to_str().unwrap(), other.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
    let copy = store.snapshot(&source(&other, "ws_01other", None)).unwrap();
    assert_eq!(copy.files, taken.files);
    let data_blobs = || {
        restic(&repo, "pw-1", &["list", "blobs"])
            .lines()
            .filter(|l| l.starts_with("data "))
            .count()
    };
    assert_eq!(data_blobs(), before, "{copy:?}");

    // Small files changed after a snapshot are in the next one.
    write(
        &files.join("src/m2/f2.txt"),
        b"changed after the first snapshot\n",
    );
    write(
        &files.join("src/new.txt"),
        b"new after the first snapshot\n",
    );
    let next = store
        .snapshot(&source(&ws, "ws_01kinds", Some(&taken.id)))
        .unwrap();
    let again = tmp.path().join("again");
    store.restore(&next.id, "ws_01kinds", &again).unwrap();
    assert_eq!(
        std::fs::read(again.join("workspace/src/m2/f2.txt")).unwrap(),
        b"changed after the first snapshot\n"
    );
    assert_eq!(
        std::fs::read(again.join("workspace/src/new.txt")).unwrap(),
        b"new after the first snapshot\n"
    );
    restic(&repo, "pw-1", &["check", "--read-data"]);
}

fn fast_backups(c: &mut devcell::config::Config) {
    c.backup.loop_interval = Duration::from_millis(100);
    c.backup.cleanup_interval = Duration::from_millis(100);
    c.backup.release_after = Duration::from_secs(60);
    c.workers.timeouts_interval = Duration::from_secs(3600);
}

async fn stop(c: &TestCell, id: &str) -> Value {
    c.owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    c.wait_phase(id, "stopped", START_WITHIN).await
}

async fn start(c: &TestCell, id: &str) {
    let (s, w) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/start"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{w}");
    c.wait_phase(id, "running", START_WITHIN).await;
}

#[tokio::test]
async fn stopping_backs_up_released_files_come_back_on_start_and_snapshots_restore_and_download() {
    let (c, clock) = TestCell::with_clock(fast_backups).await;
    let repos = tempfile::tempdir().unwrap();
    let id = running_workspace(&c, repos.path(), "keep").await;
    exec(&c, &id, "echo v1 > notes.txt").await;

    // Stop: the snapshot is taken before the phase says stopped.
    let w = stop(&c, &id).await;
    assert_eq!(w["backup"]["state"], "ok", "{w:#}");
    let backups = w["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{w:#}");
    assert_eq!(backups[0]["trigger"], "stop");
    assert_eq!(backups[0]["status"], "verified");
    let first = backups[0]["id"].as_str().unwrap().to_owned();
    let last = w["history"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("files backed up"),
        "{last}"
    );

    // The workspace page lists it, with a download link and a restore button (stopped).
    let page = c.owner_page(&format!("/workspaces/{id}")).await;
    assert!(
        page.contains(&format!("/api/v1/workspaces/{id}/backups/{first}/archive"))
            && page.contains(&format!("/workspaces/{id}/backups/{first}/restore")),
        "{page}"
    );
    assert!(page.contains("Backed up"), "{page}");

    // The operator's view: `devcell backup key` and stock restic.
    let out = Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["backup", "key", "--data"])
        .arg(c.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let repo = c.data_dir().join("backups");
    let listed = restic(&repo, &key, &["snapshots", "--json", "--tag", &id]);
    assert!(listed.contains(&first), "{listed}");
    let target = repos.path().join("restic-restore");
    restic(
        &repo,
        &key,
        &["restore", &first, "--target", target.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(target.join(&id).join("workspace/keep/notes.txt")).unwrap(),
        "v1\n"
    );

    // After the release delay the local files go; the record says so.
    let files = c.data_dir().join("workspaces").join(&id).join("workspace");
    {
        let _held = c.cell().hold_files(&id.parse().unwrap()).unwrap();
        assert!(files.join("keep/notes.txt").exists());
    }
    clock.advance(Duration::from_secs(61));
    c.wait_for(&id, "released", |w| w["backup"]["files_released"] == true)
        .await;
    assert!(!files.exists(), "local files are still there");

    // Starting again restores them before anything runs.
    start(&c, &id).await;
    let out = exec(&c, &id, "cat notes.txt; git status --porcelain").await;
    assert_eq!(out["stdout"], "v1\n?? notes.txt\n", "{out:#}");
    exec(&c, &id, "echo v2 > notes.txt").await;
    let w = stop(&c, &id).await;
    assert_eq!(w["backups"].as_array().unwrap().len(), 2, "{w:#}");

    // Download the first snapshot as a tar archive.
    let res = c
        .http
        .get(c.url(&format!("/api/v1/workspaces/{id}/backups/{first}/archive")))
        .bearer_auth(&c.owner_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-tar");
    let bytes = res.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut found = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("workspace/keep/notes.txt") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
            found = Some(s);
        }
    }
    assert_eq!(found.as_deref(), Some("v1\n"));

    // Restore the first snapshot into the stopped workspace: the current files are saved first.
    let (s, w) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/backups/{}/restore", &first[..8]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{w}");
    let triggers: Vec<&str> = w["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(triggers, ["before-restore", "stop", "stop"], "{w:#}");
    {
        let _held = c.cell().hold_files(&id.parse().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(files.join("keep/notes.txt")).unwrap(),
            "v1\n"
        );
    }
    // Unknown snapshots and running workspaces are refused with stable codes.
    let (s, e) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/backups/deadbeefdeadbeef/restore"),
            None,
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    start(&c, &id).await;
    let (s, e) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/backups/{first}/restore"),
            None,
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("workspace_not_stopped"))
    );
    // A manual snapshot of the running workspace.
    let (s, snap) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/backups"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    assert_eq!(snap["trigger"], "manual");

    // /metrics counts them.
    let metrics = c.metrics().await;
    assert!(metrics.contains("devcell_backups_total 4"), "{metrics}");
    assert!(
        metrics.contains("devcell_backup_failures_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_store_keeps_the_files_and_the_backup_pending_until_it_works() {
    let (c, clock) = TestCell::with_clock(fast_backups).await;
    // The store's directory is a plain file: every write fails.
    let store_dir = c.data_dir().join("backups");
    std::fs::write(&store_dir, "not a directory").unwrap();
    let repos = tempfile::tempdir().unwrap();
    let id = running_workspace(&c, repos.path(), "fragile").await;
    exec(&c, &id, "echo precious > work.txt").await;
    let w = stop(&c, &id).await;
    assert_eq!(w["backup"]["state"], "pending", "{w:#}");
    assert!(w["backup"]["last_error"].as_str().is_some(), "{w:#}");
    let last = w["history"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("stopped — backup pending: "),
        "{last}"
    );
    let held = c.cell().hold_files(&id.parse().unwrap()).unwrap();
    let files = c.data_dir().join("workspaces").join(&id).join("workspace");
    assert_eq!(
        std::fs::read_to_string(files.join("fragile/work.txt")).unwrap(),
        "precious\n"
    );

    // Nothing releases or deletes the files while the backup is owed.
    let (s, _) = c
        .owner(Method::DELETE, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    clock.advance(Duration::from_secs(3 * 3600));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(files.join("fragile/work.txt").exists());
    let w = c.workspace(&id).await;
    assert_eq!(w["backup"]["state"], "pending", "{w:#}");
    assert!(w["backup"]["next_attempt"].is_string(), "{w:#}");
    drop(held);

    // The store comes back: the next retry snapshots the files, then the deletion proceeds.
    std::fs::remove_file(&store_dir).unwrap();
    clock.advance(Duration::from_secs(3600));
    c.wait_gone(&id).await;
    let key = c.cell().backup_store().unwrap();
    let listed = key.list().unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s.workspace.as_deref() == Some(id.as_str())),
        "the deleted workspace's files are in the store"
    );
}

/// moto's S3 server on a free loopback port (from the test virtualenv that tests/run.sh makes).
pub struct Moto {
    pub port: u16,
    child: std::process::Child,
}

impl Moto {
    pub fn start(port: u16) -> Moto {
        Self::start_with(port, &[])
    }

    /// With more arguments for moto_server (`-c CERT -k KEY` for HTTPS).
    pub fn start_with(port: u16, args: &[&str]) -> Moto {
        let venv =
            std::env::var("DEVCELL_TEST_VENV").unwrap_or_else(|_| "/var/cache/devcell/venv".into());
        let exe = Path::new(&venv).join("bin/moto_server");
        assert!(
            exe.exists(),
            "moto is missing: {venv}/bin/pip install 'moto[server]' (bash tests/run.sh installs it)"
        );
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut moto = Moto { port, child };
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "moto_server did not listen");
            assert!(
                moto.child.try_wait().unwrap().is_none(),
                "moto_server exited (port {port} taken?)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// Creates the bucket with a signed request, as the cell's SDK will see it (boto3 from the
    /// same virtualenv), and waits until it answers: a moto just started has been seen to
    /// refuse the first connection although its port already accepted one (CI, `e331ba3`+).
    async fn create_bucket(&self, name: &str) {
        let venv =
            std::env::var("DEVCELL_TEST_VENV").unwrap_or_else(|_| "/var/cache/devcell/venv".into());
        let script = format!(
            "import boto3, botocore.exceptions, time\n\
             s = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             for attempt in range(100):\n\
             \x20   try:\n\
             \x20       s.create_bucket(Bucket='{name}')\n\
             \x20       break\n\
             \x20   except botocore.exceptions.EndpointConnectionError:\n\
             \x20       time.sleep(0.1)\n\
             s.head_bucket(Bucket='{name}')\n\
             print('ok')\n",
            self.port
        );
        let out = Command::new(Path::new(&venv).join("bin/python"))
            .args(["-c", &script])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// How many objects the bucket holds under `prefix`.
    fn count(&self, bucket: &str, prefix: &str) -> usize {
        let venv =
            std::env::var("DEVCELL_TEST_VENV").unwrap_or_else(|_| "/var/cache/devcell/venv".into());
        let script = format!(
            "import boto3\n\
             s = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             n = 0\n\
             for page in s.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    n += page.get('KeyCount', 0)\n\
             print(n)\n",
            self.port
        );
        let out = Command::new(Path::new(&venv).join("bin/python"))
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
    }

    /// Kills the server and keeps its port: connections are accepted and dropped at once, as
    /// an unreachable store would, and no other test can take the port meanwhile.
    fn stop(mut self) -> Outage {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Outage {
            port: self.port,
            stop,
            thread,
        }
    }
}

/// The port of a stopped moto, held until the store comes back.
struct Outage {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Outage {
    /// A fresh (empty) moto on the same port.
    fn end(self) -> Moto {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        Moto::start(self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn s3_backups_survive_the_store_going_away_and_stock_restic_reads_them() {
    crate::harness::moto_credentials();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moto = Moto::start(port);
    moto.create_bucket("cell-backups").await;
    let (c, clock) = TestCell::with_clock(|c| {
        fast_backups(c);
        c.backup.s3.bucket = Some("cell-backups".into());
        c.backup.s3.prefix = "cell-1".into();
        c.backup.s3.region = Some("us-east-1".into());
        c.backup.s3.endpoint = Some(format!("http://127.0.0.1:{port}").parse().unwrap());
        c.backup.s3.tags = Some("team=platform,cost-center=42".into());
    })
    .await;
    let repos = tempfile::tempdir().unwrap();
    let id = running_workspace(&c, repos.path(), "cloud").await;
    exec(&c, &id, "echo in-s3 > s3.txt").await;
    let w = stop(&c, &id).await;
    assert_eq!(w["backup"]["state"], "ok", "{w:#}");
    let first = w["backups"][0]["id"].as_str().unwrap().to_owned();

    // Stock restic reads the S3 repository the cell wrote.
    let out = Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["backup", "key", "--data"])
        .arg(c.data_dir())
        .output()
        .unwrap();
    let password = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let repo = format!("s3:http://127.0.0.1:{port}/cell-backups/cell-1");
    let listed = restic(Path::new(&repo), &password, &["snapshots", "--json"]);
    assert!(listed.contains(&first), "{listed}");
    // Every object carries the cost-attribution tags (read with boto3, from moto's own venv).
    let venv =
        std::env::var("DEVCELL_TEST_VENV").unwrap_or_else(|_| "/var/cache/devcell/venv".into());
    let script = format!(
        "import boto3\n\
         s = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1')\n\
         keys = [o['Key'] for o in s.list_objects_v2(Bucket='cell-backups', Prefix='cell-1/')['Contents']]\n\
         print(len(keys), all(sorted(t['Key'] + '=' + t['Value'] for t in s.get_object_tagging(Bucket='cell-backups', Key=k)['TagSet']) == ['cost-center=42', 'team=platform'] for k in keys))\n"
    );
    let out = Command::new(Path::new(&venv).join("bin/python"))
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        text.ends_with("True") && !text.starts_with("0 "),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The store goes away in the middle of the next stop's backup: the stop keeps the files
    // and owes the backup.
    start(&c, &id).await;
    exec(
        &c,
        &id,
        "echo while-s3-was-down > s3.txt && head -c 200000000 /dev/urandom > big.bin",
    )
    .await;
    let packs_before = moto.count("cell-backups", "cell-1/data/");
    c.owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    let until = Instant::now() + Duration::from_secs(120);
    while moto.count("cell-backups", "cell-1/data/") == packs_before {
        assert!(
            Instant::now() < until,
            "the backup never wrote to the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Some of its data is in the store and the backup is still going.
    let w = c.workspace(&id).await;
    assert_eq!(w["phase"], "stopping", "{w:#}");
    let outage = moto.stop();
    let w = c.wait_phase(&id, "stopped", START_WITHIN).await;
    assert_eq!(w["backup"]["state"], "pending", "{w:#}");
    assert!(
        w["backup"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{w:#}"
    );
    let files = c.data_dir().join("workspaces").join(&id).join("workspace");
    let held = c.cell().hold_files(&id.parse().unwrap()).unwrap();
    assert_eq!(
        std::fs::read_to_string(files.join("cloud/s3.txt")).unwrap(),
        "while-s3-was-down\n"
    );
    drop(held);
    // Past the release delay nothing is released while the backup is owed (the disk itself
    // is unmounted while stopped: held again to look).
    clock.advance(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = c.cell().hold_files(&id.parse().unwrap()).unwrap();
    assert!(files.join("cloud/s3.txt").exists());
    drop(held);

    // The store comes back (a fresh, empty moto: the worst case); the retry completes.
    let moto = outage.end();
    moto.create_bucket("cell-backups").await;
    // Time goes on past each retry: an attempt still under way while the store came back may
    // fail and set its next try after the clock's "now".
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let w = loop {
        clock.advance(Duration::from_secs(3600));
        let w = c.workspace(&id).await;
        if w["backup"]["state"] == "ok" {
            break w;
        }
        assert!(
            std::time::Instant::now() < until,
            "never backed up after the store came back: {w:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let newest = w["backups"][0]["id"].as_str().unwrap().to_owned();
    let target = repos.path().join("from-s3");
    restic(
        Path::new(&repo),
        &password,
        &["restore", &newest, "--target", target.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(target.join(&id).join("workspace/cloud/s3.txt")).unwrap(),
        "while-s3-was-down\n"
    );
    let big = target.join(&id).join("workspace/cloud/big.bin");
    assert_eq!(std::fs::metadata(big).unwrap().len(), 200_000_000);
    drop(moto);
}

#[tokio::test]
async fn deleted_workspaces_keep_their_snapshots_for_the_grace_period_and_dormant_ones_go() {
    let (c, clock) = TestCell::with_clock(fast_backups).await;
    let org = c.org_id().await;
    let (s, p) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/policy"),
            Some(json!({ "dormancy_s": 86400 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let repos = tempfile::tempdir().unwrap();
    let store = c.cell().backup_store().unwrap();
    let snapshots_of = |id: &str| {
        store
            .list()
            .unwrap()
            .into_iter()
            .filter(|s| s.workspace.as_deref() == Some(id))
            .count()
    };

    // Deleted by its owner: the snapshot stays for the grace period (7 days by default).
    let deleted = running_workspace(&c, repos.path(), "gone").await;
    stop(&c, &deleted).await;
    let (s, _) = c
        .owner(
            Method::DELETE,
            &format!("/api/v1/workspaces/{deleted}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(snapshots_of(&deleted), 1);

    // Stopped and left alone: deleted as dormant after a day, its git state kept.
    let dormant = running_workspace(&c, repos.path(), "idle").await;
    exec(&c, &dormant, "echo wip > wip.txt").await;
    stop(&c, &dormant).await;
    clock.advance(Duration::from_secs(25 * 3600));
    c.wait_gone(&dormant).await;
    // Owners read what it held, in the API and on the organization page.
    let (s, gone) = c
        .owner(
            Method::GET,
            &format!("/api/v1/orgs/{org}/deleted-workspaces"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{gone}");
    assert_eq!(gone[0]["id"], dormant.as_str(), "newest first: {gone:#}");
    assert_eq!(gone[0]["reason"], "dormant: stopped for more than 1 day");
    assert_eq!(
        gone[0]["git"][0]["untracked"],
        json!(["wip.txt"]),
        "{gone:#}"
    );
    assert_eq!(gone[0]["git"][0]["clean"], false);
    assert_eq!(gone[1]["id"], deleted.as_str());
    assert_eq!(gone[1]["reason"], "deleted by its owner");
    let owner = c.cell().find_user(None).unwrap();
    let (cookie, _) = c.session(&owner.id).await;
    let page = c.page_with(&cookie, "/org").await;
    assert!(
        page.contains("Deleted workspaces") && page.contains("idle: 1 untracked"),
        "{page}"
    );
    assert!(!c.data_dir().join("workspaces").join(&dormant).exists());
    assert_eq!(snapshots_of(&dormant), 1, "kept for the grace period");

    // Past the grace period the deleted workspace's snapshots go; the dormant one's later.
    clock.advance(Duration::from_secs(6 * 24 * 3600));
    let until = Instant::now() + Duration::from_secs(30);
    while snapshots_of(&deleted) > 0 {
        assert!(Instant::now() < until, "the snapshots were never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(snapshots_of(&dormant), 1);
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    let until = Instant::now() + Duration::from_secs(30);
    while snapshots_of(&dormant) > 0 {
        assert!(
            Instant::now() < until,
            "the dormant workspace's snapshots stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
