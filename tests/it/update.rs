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
