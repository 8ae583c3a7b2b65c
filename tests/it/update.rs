//! Signed releases made by `devcell release`, checked by the stock `minisign` and by
//! `devcell update verify`, and each way a release is refused: always with its code, never
//! changing anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn devcell(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_devcell"));
    cmd.args(args).env_remove("DEVCELL_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn minisign() -> &'static str {
    assert!(
        Path::new("/usr/bin/minisign").exists(),
        "the stock minisign checks our signatures: apt-get install -y minisign"
    );
    "/usr/bin/minisign"
}

/// A key pair in `dir/keys` and a release of a 1 MiB "binary" signed with it into
/// `dir/NAME`, with `extra` flags for `release sign`.
fn release(dir: &Path, name: &str, version: &str, extra: &[&str]) -> PathBuf {
    let keys = dir.join("keys");
    if !keys.join("devcell.key").exists() {
        let o = devcell(&["release", "keygen", "--out", keys.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let binary = dir.join("devcell-new");
    if !binary.exists() {
        let bytes: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&binary, bytes).unwrap();
    }
    let out = dir.join(name);
    let mut args = vec![
        "release",
        "sign",
        "--key",
        keys.join("devcell.key").to_str().unwrap(),
        "--binary",
        binary.to_str().unwrap(),
        "--version",
        version,
        "--out",
        out.to_str().unwrap(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = devcell(&args, &[]);
    assert!(o.status.success(), "{}", text(&o));
    out
}

fn verify(dir: &Path, keys: &[&Path]) -> Output {
    let mut args = vec![
        "update".to_owned(),
        "verify".to_owned(),
        dir.display().to_string(),
    ];
    for k in keys {
        args.push("--trusted-key".into());
        args.push(k.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    devcell(&args, &[])
}

/// Every file of a directory with its bytes: what a refusal must leave as it was.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            let bytes = if p.is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .display()
                    .to_string()
                    .into_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn a_signed_release_verifies_with_stock_minisign_and_with_devcell() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = release(tmp.path(), "rel", "99.1.0", &["--channel", "beta"]);
    let public = tmp.path().join("keys/devcell.pub");
    // The secret key is its owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("keys/devcell.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The stock tool verifies the manifest and shows the signed comment.
    let o = Command::new(minisign())
        .args(["-V", "-m"])
        .arg(rel.join("manifest.json"))
        .arg("-p")
        .arg(&public)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("devcell 99.1.0 beta"), "{}", text(&o));
    let o = verify(&rel, &[&public]);
    assert!(o.status.success(), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("release 99.1.0 (beta") && said.contains("verified"),
        "{said}"
    );
    // The same key trusted through the configuration's environment.
    let line = std::fs::read_to_string(&public).unwrap();
    let base64 = line.lines().nth(1).unwrap().trim().to_owned();
    let o = devcell(
        &["update", "verify", rel.to_str().unwrap()],
        &[("DEVCELL_UPDATE__TRUSTED_KEYS", &base64)],
    );
    assert!(o.status.success(), "{}", text(&o));
    // A key is never replaced.
    let before = std::fs::read(tmp.path().join("keys/devcell.key")).unwrap();
    let o = devcell(
        &[
            "release",
            "keygen",
            "--out",
            tmp.path().join("keys").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("exists already"), "{}", text(&o));
    assert_eq!(
        before,
        std::fs::read(tmp.path().join("keys/devcell.key")).unwrap()
    );
}

#[test]
fn every_refusal_says_its_code_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = release(tmp.path(), "good", "99.0.0", &[]);
    let public = tmp.path().join("keys/devcell.pub");
    let other = tmp.path().join("other");
    let o = devcell(
        &["release", "keygen", "--out", other.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let artifact = "devcell-x86_64-linux";

    // A copy of the good release, changed by `change`, must be refused with `code`.
    let refused = |name: &str, change: &dyn Fn(&Path), keys: &[&Path], code: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&good).unwrap().flatten() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        change(&dir);
        let before = contents(&dir);
        let o = verify(&dir, keys);
        assert!(!o.status.success(), "{name}: accepted\n{}", text(&o));
        assert!(
            text(&o).contains(&format!("[{code}]")),
            "{name}: want {code}, got {}",
            text(&o)
        );
        assert_eq!(before, contents(&dir), "{name}: the refusal changed files");
        text(&o)
    };
    let said = refused("untrusted", &|_| {}, &[], "unknown_key");
    assert!(said.contains("update.trusted_keys"), "{said}");
    refused(
        "other key",
        &|_| {},
        &[&other.join("devcell.pub")],
        "unknown_key",
    );
    refused(
        "tampered manifest",
        &|d| {
            let m = std::fs::read_to_string(d.join("manifest.json")).unwrap();
            std::fs::write(d.join("manifest.json"), m.replace("stable", "stab1e")).unwrap();
        },
        &[&public],
        "bad_signature",
    );
    refused(
        "no signature",
        &|d| std::fs::remove_file(d.join("manifest.json.minisig")).unwrap(),
        &[&public],
        "bad_signature",
    );
    refused(
        "changed artifact",
        &|d| {
            let mut b = std::fs::read(d.join(artifact)).unwrap();
            b[1000] ^= 1;
            std::fs::write(d.join(artifact), b).unwrap();
        },
        &[&public],
        "artifact_mismatch",
    );
    refused(
        "longer artifact",
        &|d| {
            let mut b = std::fs::read(d.join(artifact)).unwrap();
            b.extend_from_slice(b"more");
            std::fs::write(d.join(artifact), b).unwrap();
        },
        &[&public],
        "artifact_too_large",
    );
    refused(
        "shorter artifact",
        &|d| {
            let b = std::fs::read(d.join(artifact)).unwrap();
            std::fs::write(d.join(artifact), &b[..b.len() - 1]).unwrap();
        },
        &[&public],
        "artifact_mismatch",
    );
    refused(
        "linked artifact",
        &|d| {
            let target = good.join(artifact);
            std::fs::remove_file(d.join(artifact)).unwrap();
            std::os::unix::fs::symlink(target, d.join(artifact)).unwrap();
        },
        &[&public],
        "artifact_mismatch",
    );
    // Versions: not newer than this binary's, or not able to update from it.
    let old = release(tmp.path(), "old", "0.0.1", &[]);
    let o = verify(&old, &[&public]);
    assert!(text(&o).contains("[not_newer]"), "{}", text(&o));
    let far = release(tmp.path(), "far", "99.0.0", &["--min-version", "50.0.0"]);
    let o = verify(&far, &[&public]);
    assert!(text(&o).contains("[cannot_update_from]"), "{}", text(&o));
    // An expired manifest, signed by the stock tool with the same key (so devcell also
    // reads signatures minisign makes).
    let expired = tmp.path().join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    std::fs::copy(good.join(artifact), expired.join(artifact)).unwrap();
    let m = std::fs::read_to_string(good.join("manifest.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["created"] = "2020-01-01T00:00:00Z".into();
    v["expires"] = "2021-01-01T00:00:00Z".into();
    std::fs::write(expired.join("manifest.json"), v.to_string()).unwrap();
    let o = Command::new(minisign())
        .args(["-S", "-s"])
        .arg(tmp.path().join("keys/devcell.key"))
        .arg("-m")
        .arg(expired.join("manifest.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = verify(&expired, &[&public]);
    assert!(text(&o).contains("[expired]"), "{}", text(&o));
}

/// A tar of `entries`: (name, regular file bytes) or (name, link target) for a symlink.
fn tar_of(entries: &[(&str, Result<Vec<u8>, &str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, what) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match what {
            Ok(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                // Names the builder would refuse (`../x`) go into the header as they are.
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, &bytes[..]).unwrap();
            }
            Err(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn bundle_dirs() -> usize {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("devcell-bundle-")
        })
        .count()
}

#[test]
fn a_bundle_carries_a_release_and_hostile_bundles_are_refused_before_they_write_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = release(tmp.path(), "rel", "99.2.0", &[]);
    let public = tmp.path().join("keys/devcell.pub");
    std::fs::write(tmp.path().join("notes.md"), "# 99.2.0\n").unwrap();
    let dirs_before = bundle_dirs();
    for name in ["b.tar", "b.tar.zst"] {
        let file = tmp.path().join(name);
        let o = devcell(
            &[
                "bundle",
                "build",
                "--release",
                rel.to_str().unwrap(),
                "--notes",
                tmp.path().join("notes.md").to_str().unwrap(),
                "--out",
                file.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
        let o = verify(&file, &[&public]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert!(text(&o).contains("release 99.2.0"), "{}", text(&o));
    }
    // The compressed one is smaller: the test binary is repetitive.
    assert!(
        std::fs::metadata(tmp.path().join("b.tar.zst"))
            .unwrap()
            .len()
            < std::fs::metadata(tmp.path().join("b.tar")).unwrap().len()
    );

    let artifact = "devcell-x86_64-linux";
    let doc = |n: &str| Ok(std::fs::read(rel.join(n)).unwrap());
    let binary = std::fs::read(rel.join(artifact)).unwrap();
    let refused = |name: &str, bytes: Vec<u8>, code: &str| {
        let file = tmp.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let o = verify(&file, &[&public]);
        assert!(!o.status.success(), "{name}: accepted\n{}", text(&o));
        assert!(
            text(&o).contains(&format!("[{code}]")),
            "{name}: want {code}, got {}",
            text(&o)
        );
        text(&o)
    };
    let said = refused(
        "traversal.tar",
        tar_of(&[
            ("manifest.json", doc("manifest.json")),
            ("manifest.json.minisig", doc("manifest.json.minisig")),
            ("../escaped", Ok(b"x".to_vec())),
        ]),
        "bad_bundle",
    );
    assert!(said.contains("plain file name"), "{said}");
    assert!(!tmp.path().join("escaped").exists());
    assert!(!std::env::temp_dir().join("escaped").exists());
    refused(
        "link.tar",
        tar_of(&[
            ("manifest.json", doc("manifest.json")),
            ("manifest.json.minisig", doc("manifest.json.minisig")),
            (artifact, Err("/etc/passwd")),
        ]),
        "bad_bundle",
    );
    let said = refused(
        "unsigned.tar",
        tar_of(&[
            ("manifest.json", doc("manifest.json")),
            (artifact, Ok(binary.clone())),
        ]),
        "bad_bundle",
    );
    assert!(
        said.contains("manifest.json.minisig was expected"),
        "{said}"
    );
    refused(
        "artifact first.tar",
        tar_of(&[(artifact, Ok(binary.clone()))]),
        "bad_bundle",
    );
    let mut flipped = binary.clone();
    flipped[4096] ^= 1;
    refused(
        "tampered.tar",
        tar_of(&[
            ("manifest.json", doc("manifest.json")),
            ("manifest.json.minisig", doc("manifest.json.minisig")),
            (artifact, Ok(flipped)),
        ]),
        "artifact_mismatch",
    );
    let mut longer = binary.clone();
    longer.extend_from_slice(&[0; 4096]);
    refused(
        "oversized.tar",
        tar_of(&[
            ("manifest.json", doc("manifest.json")),
            ("manifest.json.minisig", doc("manifest.json.minisig")),
            (artifact, Ok(longer)),
        ]),
        "artifact_too_large",
    );
    refused(
        "extra.tar",
        tar_of(&[
            ("manifest.json", doc("manifest.json")),
            ("manifest.json.minisig", doc("manifest.json.minisig")),
            (artifact, Ok(binary.clone())),
            ("evil.sh", Ok(b"#!/bin/sh\n".to_vec())),
        ]),
        "bad_bundle",
    );
    let whole = std::fs::read(tmp.path().join("b.tar")).unwrap();
    let said = refused(
        "truncated.tar",
        whole[..whole.len() / 2].to_vec(),
        "bad_bundle",
    );
    assert!(said.contains("truncated"), "{said}");
    // A decompression bomb: an entry that claims 64 GiB, zstd-compressed to almost nothing;
    // refused by its header before a byte of it is unpacked.
    let mut bomb = tar_of(&[
        ("manifest.json", doc("manifest.json")),
        ("manifest.json.minisig", doc("manifest.json.minisig")),
    ]);
    bomb.truncate(bomb.len() - 1024); // the end-of-archive blocks
    let mut h = tar::Header::new_gnu();
    h.set_path(artifact).unwrap();
    h.set_size(64 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    bomb.extend_from_slice(h.as_bytes());
    bomb.extend(std::iter::repeat_n(0u8, 1 << 20));
    let said = refused(
        "bomb.tar.zst",
        zstd::encode_all(&bomb[..], 3).unwrap(),
        "artifact_too_large",
    );
    assert!(said.contains("68719476736 bytes"), "{said}");
    // Every check ran in a directory of its own, gone afterwards.
    assert_eq!(bundle_dirs(), dirs_before);
}

/// A multipart form as a browser sends the updates page's upload: the CSRF token, then the file.
fn upload_body(csrf: Option<&str>, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "devcell-test-boundary-7f3a";
    let mut body = Vec::new();
    if let Some(csrf) = csrf {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"_csrf\"\r\n\r\n{csrf}\r\n"
            )
            .bytes(),
        );
    }
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"b.tar\"\r\nContent-Type: application/x-tar\r\n\r\n").bytes());
    body.extend_from_slice(file);
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn the_admin_page_shows_updates_and_a_hostile_uploaded_bundle_changes_nothing() {
    let c = crate::harness::TestCell::start().await;
    let owner = c.cell().find_user(None).unwrap();
    let (cookie, csrf) = c.session(&owner.id).await;
    let page = c.page_with(&cookie, "/admin").await;
    assert!(page.contains(r#"id="updates""#), "{page}");
    assert!(page.contains("No update applied yet"), "{page}");
    assert!(page.contains("this cell updates from bundles"), "{page}");
    assert!(page.contains(r#"action="/admin/updates/bundle""#), "{page}");
    assert!(
        !page.contains("Check for a release now"),
        "no channel, no check: {page}"
    );

    let post = |content_type: String, body: Vec<u8>| {
        c.http
            .post(c.url("/admin/updates/bundle"))
            .header(reqwest::header::COOKIE, &cookie)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
    };
    let updates = c.data_dir().join("updates");
    let left = || names_in(&updates);
    // A bundle that tries to write outside: refused, its code on the page, nothing left.
    let evil = tar_of(&[("../escaped", Ok(b"x".to_vec()))]);
    let (ct, body) = upload_body(Some(&csrf), &evil);
    let res = post(ct, body).await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/admin#updates");
    let page = c.page_with(&cookie, "/admin").await;
    assert!(page.contains("(bad_bundle)"), "{page}");
    assert!(page.contains("not one plain file name"), "{page}");
    assert!(left().is_empty(), "left behind: {:?}", left());
    assert!(!c.data_dir().join("escaped").exists());
    // Garbage instead of a tar: the same.
    let (ct, body) = upload_body(Some(&csrf), b"not a tar at all, just bytes");
    post(ct, body).await.unwrap();
    let page = c.page_with(&cookie, "/admin").await;
    assert!(page.contains("(bad_bundle)"), "{page}");
    assert!(left().is_empty(), "left behind: {:?}", left());
    // Without the form's token: refused before the file is read.
    let (ct, body) = upload_body(None, &evil);
    let res = post(ct, body).await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(left().is_empty(), "left behind: {:?}", left());
    // Approving what was never seen: a clear refusal.
    let (s, to) = c
        .post_form(
            &cookie,
            "/admin/updates/approve",
            &[("_csrf", &csrf), ("version", "9.9.9")],
        )
        .await;
    assert_eq!((s.as_u16(), to.as_str()), (303, "/admin#updates"));
    let page = c.page_with(&cookie, "/admin").await;
    assert!(page.contains("release not found"), "{page}");

    // A member who is not a cell administrator may do none of it.
    let (member, _) = c.add_user("dev@example.com", "member").await;
    let member = devcell::domain::UserId::parse(&member).unwrap();
    let (mcookie, mcsrf) = c.session(&member).await;
    let (s, _) = c
        .post_form(
            &mcookie,
            "/admin/updates/approve",
            &[("_csrf", &mcsrf), ("version", "9.9.9")],
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::FORBIDDEN);
    c.stop().await;
}

/// The names in a directory (none when it is missing).
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The code of a refusal by the cell.
fn code(e: devcell::service::Error) -> &'static str {
    match e {
        devcell::service::Error::Conflict { code, .. } => code,
        other => panic!("not a refusal with a code: {other}"),
    }
}

#[tokio::test]
async fn a_channel_is_read_no_further_than_its_signed_manifest_and_the_newest_release_seen_is_kept()
{
    let tmp = tempfile::tempdir().unwrap();
    let channel = tmp.path().join("releases/stable");
    std::fs::create_dir_all(channel.parent().unwrap()).unwrap();
    let rel = release(tmp.path(), "rel-99.3.0", "99.3.0", &[]);
    let copy = |from: &Path| {
        let _ = std::fs::remove_dir_all(&channel);
        std::fs::create_dir_all(&channel).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            std::fs::copy(e.path(), channel.join(e.file_name())).unwrap();
        }
    };
    let public = std::fs::read_to_string(tmp.path().join("keys/devcell.pub")).unwrap();
    let public = public.lines().last().unwrap().to_owned();
    let (server, task) = crate::selfupdate::release_server(tmp.path().join("releases")).await;
    let url = url::Url::parse(&format!("{server}/stable/")).unwrap();
    let tweak = |c: &mut devcell::config::Config| {
        c.update.trusted_keys = vec![public.clone()];
        c.update.channel_url = Some(url.clone());
        // The loop stays out of the way: the test asks the channel itself.
        c.update.check_interval = std::time::Duration::ZERO;
    };
    let c = crate::harness::TestCell::start_with(tweak, None).await;
    let updates = c.data_dir().join("updates");
    let left = || names_in(&updates);
    let artifact = format!(
        "devcell-{}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS
    );

    // The server sends more than the manifest declares: reading stops there.
    copy(&rel);
    let mut bytes = std::fs::read(channel.join(&artifact)).unwrap();
    bytes.extend_from_slice(b"and some more");
    std::fs::write(channel.join(&artifact), &bytes).unwrap();
    let e = c.cell().fetch_release(&url).await.unwrap_err();
    assert_eq!(code(e), "artifact_too_large");
    // Less, or other bytes: the hash says so.
    std::fs::write(channel.join(&artifact), &bytes[..1000]).unwrap();
    assert_eq!(
        code(c.cell().fetch_release(&url).await.unwrap_err()),
        "artifact_mismatch"
    );
    // No signature beside the manifest.
    copy(&rel);
    std::fs::remove_file(channel.join("manifest.json.minisig")).unwrap();
    assert_eq!(
        code(c.cell().fetch_release(&url).await.unwrap_err()),
        "bad_signature"
    );
    // Nothing at the URL.
    let nowhere = url::Url::parse(&format!("{server}/nothing-here/")).unwrap();
    let e = c.cell().fetch_release(&nowhere).await.unwrap_err();
    assert_eq!(code(e), "unreachable");
    assert!(left().is_empty(), "a refused release left {:?}", left());
    assert_eq!(
        c.cell().update_status().unwrap().newest,
        None,
        "a refused release is not seen"
    );

    // The release as signed: staged, and the newest seen.
    copy(&rel);
    let staged = c.cell().fetch_release(&url).await.unwrap();
    assert_eq!(staged.manifest.version.to_string(), "99.3.0");
    assert!(staged.binary.starts_with(updates.join("99.3.0")));
    assert_eq!(left(), vec!["99.3.0".to_string()]);

    // After a restart, an older signed release is still refused, before its artifacts are
    // downloaded; and the same version signed again is not taken either.
    let dir = c.stop_keep_data().await;
    let c = crate::harness::TestCell::restart_with(dir, tweak, None).await;
    let older = release(tmp.path(), "rel-99.2.9", "99.2.9", &[]);
    copy(&older);
    let e = c.cell().fetch_release(&url).await.unwrap_err();
    let message = e.to_string();
    assert_eq!(code(e), "not_newer", "{message}");
    assert!(message.contains("99.3.0"), "{message}");
    let again = release(
        tmp.path(),
        "rel-99.3.0-again",
        "99.3.0",
        &["--channel", "beta"],
    );
    copy(&again);
    let e = c.cell().fetch_release(&url).await.unwrap_err();
    let message = e.to_string();
    assert_eq!(code(e), "not_newer", "{message}");
    assert!(message.contains("another manifest"), "{message}");
    c.stop().await;
    task.abort();
}

#[tokio::test]
async fn releases_apply_by_themselves_only_within_the_maintenance_window_which_may_wrap_midnight() {
    use devcell::config::parse_window;
    assert_eq!(parse_window("02:00-04:30"), Ok((120, 270)));
    assert_eq!(parse_window("22:00-04:00"), Ok((1320, 240)));
    for bad in [
        "",
        "2-4",
        "25:00-01:00",
        "01:00-01:00",
        "01:00",
        "aa:bb-cc:dd",
    ] {
        assert!(parse_window(bad).is_err(), "{bad:?} is no window");
    }
    let tmp = tempfile::tempdir().unwrap();
    let cell = |window: Option<&str>| {
        let dir = tmp.path().join(window.unwrap_or("none").replace(':', ""));
        std::fs::create_dir_all(&dir).unwrap();
        let store = devcell::store::Store::open(&dir.join("db")).unwrap();
        let mut config = crate::harness::test_config(dir);
        config.update.window = window.map(str::to_owned);
        devcell::service::Cell::new(
            store,
            config,
            std::sync::Arc::new(devcell::service::SystemClock),
        )
    };
    let at = |h: u8, m: u8| {
        time::macros::datetime!(2026-12-06 00:00 UTC)
            .replace_hour(h)
            .unwrap()
            .replace_minute(m)
            .unwrap()
    };
    let night = cell(Some("22:00-04:00"));
    for (h, m, inside) in [
        (23, 30, true),
        (0, 0, true),
        (3, 59, true),
        (4, 0, false),
        (12, 0, false),
        (21, 59, false),
    ] {
        assert_eq!(
            night.in_update_window(at(h, m)),
            inside,
            "{h:02}:{m:02} in 22:00-04:00"
        );
    }
    let early = cell(Some("02:00-04:30"));
    assert!(early.in_update_window(at(2, 0)));
    assert!(!early.in_update_window(at(4, 30)));
    assert!(!early.in_update_window(at(23, 0)));
    // A time zone other than UTC is the same moment.
    let offset = at(3, 0).to_offset(time::UtcOffset::from_hms(5, 0, 0).unwrap());
    assert!(early.in_update_window(offset));
    assert!(
        cell(None).in_update_window(at(12, 0)),
        "no window: any time"
    );
}
