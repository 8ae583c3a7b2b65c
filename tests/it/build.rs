//! Images built from a repository's Dockerfile: a real docker-registry serving a busybox base,
//! real git repositories, the cell's own builder in real sandboxes.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestCell;
use crate::image::{Pusher, Registry, sha256};
use crate::runtime::{bare_repo, create_started, exec};

/// Builds may pull and run for a while on a busy machine.
const BUILD_WITHIN: Duration = Duration::from_secs(180);

/// Pushes `devcell/busybox:1` (see [`push_busybox_as`]).
pub async fn push_busybox(pusher: &Pusher) {
    push_busybox_as(pusher, "devcell/busybox:1").await
}

/// Pushes `name`: Debian's static busybox with its applets as links, accounts for root and
/// `app` (1000), and a file to delete.
pub async fn push_busybox_as(pusher: &Pusher, name: &str) {
    use std::io::Write;
    let busybox = std::fs::read("/bin/busybox")
        .expect("busybox is needed for image builds: apt-get install -y busybox-static");
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for d in ["bin/", "etc/", "tmp/", "root/", "home/", "home/app/"] {
        dir(&mut b, d, if d == "tmp/" { 0o1777 } else { 0o755 });
    }
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    file(&mut b, "bin/busybox", &busybox, 0o755);
    file(
        &mut b,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        0o644,
    );
    file(&mut b, "etc/group", b"root:x:0:\napp:x:1000:\n", 0o644);
    file(&mut b, "etc/motd", b"delete me\n", 0o644);
    for applet in [
        "sh", "cat", "echo", "ls", "mkdir", "rm", "id", "test", "env", "true", "false", "sleep",
        "touch", "cp", "mv", "pwd", "sort", "tr", "wc", "head", "httpd", "wget", "chmod",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    crate::runtime::push_one_layer(
        pusher,
        name,
        &layer,
        &diff_id,
        json!({ "Env": ["PATH=/bin", "FROM_BASE=yes"], "Cmd": ["sh"] }),
    )
    .await;
}

/// A docker-registry serving `devcell/busybox:1`, and a cell allowed to reach it.
async fn busybox_and_cell() -> (Registry, TestCell) {
    let registry = Registry::start(false).await;
    push_busybox(&Pusher::new(&registry, false)).await;
    let c = TestCell::start_with(
        |cfg| cfg.workspace.allow_destinations = vec!["127.0.0.1".into()],
        None,
    )
    .await;
    (registry, c)
}

/// A plain tar holding `inside.txt`, as text (its bytes are ASCII).
fn bundle() -> String {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(9);
    b.append_data(&mut h, "inside.txt", &b"unpacked\n"[..])
        .unwrap();
    String::from_utf8(b.into_inner().unwrap()).unwrap()
}

fn dockerfile(registry: &str, last_run: &str) -> String {
    format!(
        r#"# A multi-stage build with the instructions repositories use.
ARG BASE={registry}/devcell/busybox:1
FROM ${{BASE}} AS builder
ARG GREETING=unset
ARG TARGETARCH
WORKDIR /src
COPY app/ ./
RUN echo "$GREETING from $TARGETARCH" > /src/greeting \
  && cat /src/greeting

FROM ${{BASE}} AS final
ENV APP_HOME=/opt/app
COPY --from=builder /src/greeting $APP_HOME/greeting
COPY --from=builder /src /from-builder
COPY --chown=app:app app/data.txt /opt/app/
RUN rm /etc/motd && mkdir -p /var/x && echo done > /var/x/y
ADD bundle.tar /opt/unpacked/
USER app
RUN id -u > /opt/uid-of-run
LABEL org.example.built=yes
EXPOSE 3000
{last_run}
CMD ["sh"]

FROM ${{BASE}} AS unused
RUN echo this stage is never built && exit 1
"#
    )
}

fn devcontainer() -> &'static str {
    r#"{
  // Context is the repository's root, one level up.
  "build": {
    "dockerfile": "Dockerfile",
    "context": "..",
    "args": { "GREETING": "hello" },
    "target": "final"
  },
  "customizations": { "vscode": { "extensions": ["a.b"] } }
}"#
}

/// Waits until the workspace is running or failed and returns it.
async fn settled(c: &TestCell, id: &str) -> Value {
    let until = Instant::now() + BUILD_WITHIN;
    loop {
        let (_, w) = c
            .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
            .await;
        if w["phase"] == "running" || w["phase"] == "failed" {
            return w;
        }
        assert!(Instant::now() < until, "the start never settled: {w:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a workspace on the repository `bare`, starts it and waits until it runs or failed.
async fn start_on(c: &TestCell, bare: &Path) -> (String, Value) {
    let id = create_started(
        c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    let w = settled(c, &id).await;
    (id, w)
}

/// The message of the workspace's last phase change.
fn last_message(w: &Value) -> String {
    w["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn build_log(c: &TestCell, id: &str) -> String {
    let (_, tasks) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}/tasks"), None)
        .await;
    tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "image build")
        .map(|t| t["log"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| format!("(no image build among the tasks: {tasks})"))
}

#[tokio::test]
async fn a_dockerfile_is_built_in_sandboxes_cached_by_step_and_its_failures_say_where() {
    let (registry, c) = busybox_and_cell().await;
    let repos = tempfile::tempdir().unwrap();
    let tar = bundle();
    let files = |last_run: &str| -> Vec<(String, String)> {
        vec![
            (
                ".devcontainer/devcontainer.json".into(),
                devcontainer().into(),
            ),
            (
                ".devcontainer/Dockerfile".into(),
                dockerfile(&registry.addr, last_run),
            ),
            (".dockerignore".into(), "app/secret.txt\n**/*.log\n".into()),
            ("app/data.txt".into(), "data\n".into()),
            ("app/secret.txt".into(), "must not be copied\n".into()),
            ("app/debug.log".into(), "ignored too\n".into()),
            ("bundle.tar".into(), tar.clone()),
        ]
    };
    let as_refs = |v: &[(String, String)]| -> Vec<(String, String)> { v.to_vec() };
    let one = as_refs(&files("RUN echo first > /opt/last"));
    let refs: Vec<(&str, &str)> = one.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let bare = bare_repo(repos.path(), "built", &refs);

    let t = Instant::now();
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    let w = settled(&c, &id).await;
    let first_build = t.elapsed();
    let log = build_log(&c, &id).await;
    assert_eq!(w["phase"], "running", "{w:#}\n{log}");
    // What devcell does not do is said once the workspace runs, not silently dropped.
    assert_eq!(
        last_message(&w),
        "ready; not honoured from .devcontainer/devcontainer.json: customizations",
        "{w:#}"
    );
    let out = exec(
        &c,
        &id,
        "cat /opt/app/greeting; echo $FROM_BASE $APP_HOME; ls /from-builder | sort | tr '\\n' ' '; echo; \
         cat /opt/app/data.txt /var/x/y /opt/unpacked/inside.txt /opt/uid-of-run /opt/last; \
         test -e /etc/motd && echo motd-still-there; test -e /src && echo builder-leaked; id -un; echo $HOME",
    )
    .await;
    // The image's USER is who the workspace runs as.
    assert_eq!(
        out["stdout"],
        "hello from amd64\nyes /opt/app\ndata.txt greeting \ndata\ndone\nunpacked\n1000\nfirst\napp\n/home/app\n",
        "{out:#}\n{log}"
    );
    // The built image is in the cache under the Dockerfile's name.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_devcell"))
        .args(["image", "list", "--json", "--data"])
        .arg(c.data_dir())
        .output()
        .await
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.as_array().unwrap().iter().any(|i| i["reference"]
            .as_str()
            .unwrap()
            .starts_with("build/.devcontainer/Dockerfile@sha256:")),
        "{list:#}"
    );
    // The output streamed into the workspace's log, step by step.
    assert!(log.contains("hello from amd64"), "{log}");
    assert!(log.contains("RUN rm /etc/motd"), "{log}");
    assert!(!log.contains("never built"), "the unused stage ran: {log}");
    assert!(log.contains(" ready"), "{log}");

    // The same repository again: every step from the cache.
    let id2 = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    let t = Instant::now();
    let w = settled(&c, &id2).await;
    let cached_build = t.elapsed();
    let log2 = build_log(&c, &id2).await;
    assert_eq!(w["phase"], "running", "{w:#}\n{log2}");
    assert!(!log2.contains("DONE"), "a step ran again: {log2}");
    assert!(log2.contains("CACHED"), "{log2}");
    eprintln!("first build {first_build:?}, cached {cached_build:?}");

    // A change to the last RUN reuses every step before it.
    let two = as_refs(&files("RUN echo second > /opt/last"));
    let refs: Vec<(&str, &str)> = two.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let changed = bare_repo(repos.path(), "changed", &refs);
    let id3 = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", changed.display()) }], "start": true }),
    )
    .await;
    let w = settled(&c, &id3).await;
    let log3 = build_log(&c, &id3).await;
    assert_eq!(w["phase"], "running", "{w:#}\n{log3}");
    let done: Vec<&str> = log3.lines().filter(|l| l.contains("DONE")).collect();
    assert_eq!(done.len(), 1, "only the changed step runs: {log3}");
    assert_eq!(exec(&c, &id3, "cat /opt/last").await["stdout"], "second\n");

    // A failing step fails the start with the file, line, instruction, code and output.
    let broken = bare_repo(
        repos.path(),
        "broken",
        &[
            (".gitpod.yml", "image:\n  file: docker/Dockerfile\n"),
            (
                "docker/Dockerfile",
                &format!(
                    "FROM {}/devcell/busybox:1\nRUN echo fine\nRUN echo something-broke >&2 && exit 3\n",
                    registry.addr
                ),
            ),
        ],
    );
    let id4 = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", broken.display()) }], "start": true }),
    )
    .await;
    let w = settled(&c, &id4).await;
    assert_eq!(w["phase"], "failed", "{w:#}");
    let message = w["history"]
        .as_array()
        .and_then(|h| h.last())
        .map(|h| h["message"].to_string())
        .unwrap_or_default();
    let message = if message.is_empty() || message == "null" {
        w.to_string()
    } else {
        message
    };
    for want in [
        "docker/Dockerfile:3",
        "exit code 3",
        "something-broke",
        "echo something-broke",
    ] {
        assert!(message.contains(want), "{want:?} missing from {message}");
    }
    assert!(
        !message.contains("[1/3]"),
        "only the failing step's output is quoted: {message}"
    );
    let log4 = build_log(&c, &id4).await;
    assert!(log4.contains("something-broke"), "{log4}");
    // The workspace's page shows the build's log where it says the start failed.
    let page = c.owner_page(&format!("/workspaces/{id4}")).await;
    assert!(
        page.contains("image build") && page.contains("#2 [2/3] RUN echo fine"),
        "{page}"
    );
    c.stop().await;
}

/// What a hostile repository could try through its Dockerfile: a context that is a link out of
/// the repository, a link in the context to a host file, a source that climbs out of the context,
/// a Dockerfile that is a link to a host file. None of it reaches the host's files.
#[tokio::test]
async fn a_hostile_build_reaches_nothing_of_the_host() {
    let (registry, c) = busybox_and_cell().await;
    let repos = tempfile::tempdir().unwrap();
    let from = format!("FROM {}/devcell/busybox:1\n", registry.addr);
    let start = |bare: std::path::PathBuf| {
        let c = &c;
        async move {
            let id = create_started(
                c,
                json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
            )
            .await;
            let w = settled(c, &id).await;
            (id, w)
        }
    };
    let message = |w: &Value| w["message"].as_str().unwrap_or_default().to_owned();

    // A link in the context is copied as a link: its target is read in the image, never on
    // the host.
    let linked = bare_repo(
        repos.path(),
        "linked",
        &[
            (".gitpod.yml", "image:\n  file: Dockerfile\n"),
            (
                "Dockerfile",
                &format!("{from}COPY leak /leak\nRUN cat /leak > /copied 2>&1; true\n"),
            ),
        ],
    );
    // git keeps the link as a link.
    let work = repos.path().join("linked-src");
    std::os::unix::fs::symlink("/etc/hostname", work.join("leak")).unwrap();
    crate::runtime::commit_all(&work, &repos.path().join("linked.git"));
    let (id, w) = start(linked).await;
    assert_eq!(w["phase"], "running", "{w:#}");
    let out = exec(&c, &id, "readlink /leak; cat /copied").await;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("/etc/hostname\n"), "{out:#}");
    assert!(
        host.trim().is_empty() || !stdout.contains(host.trim()),
        "the host's file was copied: {out:#}"
    );

    // A source that climbs out of the context.
    let climbing = bare_repo(
        repos.path(),
        "climbing",
        &[
            (".gitpod.yml", "image:\n  file: Dockerfile\n"),
            (
                "Dockerfile",
                &format!("{from}COPY ../../etc/passwd /stolen\n"),
            ),
        ],
    );
    let (_, w) = start(climbing).await;
    assert_eq!(w["phase"], "failed", "{w:#}");
    assert!(
        message(&w).contains("Dockerfile:2") && message(&w).contains("outside the build context"),
        "{w:#}"
    );

    // A context that is a link out of the repository.
    let ctx_link = bare_repo(
        repos.path(),
        "ctxlink",
        &[
            (
                ".devcontainer/devcontainer.json",
                r#"{"build": {"dockerfile": "Dockerfile", "context": "../ctx"}}"#,
            ),
            (".devcontainer/Dockerfile", &format!("{from}COPY . /ctx\n")),
        ],
    );
    let work = repos.path().join("ctxlink-src");
    std::os::unix::fs::symlink("/etc", work.join("ctx")).unwrap();
    crate::runtime::commit_all(&work, &repos.path().join("ctxlink.git"));
    let (_, w) = start(ctx_link).await;
    assert_eq!(w["phase"], "failed", "{w:#}");
    assert!(
        message(&w).contains("not a directory of the repository"),
        "{w:#}"
    );

    // A Dockerfile that is a link to a host file.
    let df_link = bare_repo(
        repos.path(),
        "dflink",
        &[(".gitpod.yml", "image:\n  file: Dockerfile\n")],
    );
    let work = repos.path().join("dflink-src");
    std::os::unix::fs::symlink("/etc/passwd", work.join("Dockerfile")).unwrap();
    crate::runtime::commit_all(&work, &repos.path().join("dflink.git"));
    let (_, w) = start(df_link).await;
    assert_eq!(w["phase"], "failed", "{w:#}");
    assert!(!message(&w).contains("root:x:0:0"), "{w:#}");

    // A local feature that is a link out of the repository: its install.sh would run the
    // host's files in the build.
    let feature_link = bare_repo(
        repos.path(),
        "featlink",
        &[(
            ".devcontainer/devcontainer.json",
            &format!(
                r#"{{"image": "{}/devcell/busybox:1", "features": {{"./feat": {{}}}}}}"#,
                registry.addr
            ),
        )],
    );
    let work = repos.path().join("featlink-src");
    let outside = repos.path().join("outside-feature");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("devcontainer-feature.json"), r#"{"id": "x"}"#).unwrap();
    std::fs::write(outside.join("install.sh"), "touch /escaped\n").unwrap();
    std::os::unix::fs::symlink(&outside, work.join(".devcontainer/feat")).unwrap();
    crate::runtime::commit_all(&work, &repos.path().join("featlink.git"));
    let (_, w) = start(feature_link).await;
    assert_eq!(w["phase"], "failed", "{w:#}");
    assert!(
        message(&w).contains("not a directory of the repository"),
        "{w:#}"
    );
    c.stop().await;
}

/// An air-gapped site: Docker Hub's names come from the operator's mirror, for a prefetch with
/// `devcell image pull` and for a Dockerfile's `FROM`; a mirror that cannot be reached says
/// which image, which mirror and what to configure.
#[tokio::test]
async fn docker_hub_images_come_from_the_configured_mirror_for_prefetch_and_builds() {
    let registry = Registry::start(false).await;
    push_busybox_as(&Pusher::new(&registry, false), "hub/library/busybox:1").await;
    let mirror = format!("{}/hub", registry.addr);
    let data = tempfile::tempdir().unwrap();
    let devcell = |mirror: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_devcell"));
        cmd.env("DEVCELL_IMAGE__MIRRORS", format!("docker.io={mirror}"))
            .env("DEVCELL_WORKSPACE__ALLOW_DESTINATIONS", "127.0.0.1")
            .env_remove("DEVCELL_CONFIG");
        cmd
    };
    let out = devcell(&mirror)
        .args(["image", "pull", "busybox:1", "--data"])
        .arg(data.path())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("registry-1.docker.io/library/busybox:1 sha256:"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("through mirror {mirror}")),
        "{stderr}"
    );
    let out = devcell(&mirror)
        .args(["image", "list", "--json", "--data"])
        .arg(data.path())
        .output()
        .await
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list[0]["reference"], "registry-1.docker.io/library/busybox:1",
        "{list}"
    );

    // A mirror nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("127.0.0.1:{}/hub", closed.local_addr().unwrap().port());
    drop(closed);
    let out = devcell(&dead)
        .args(["image", "pull", "alpine:3", "--data"])
        .arg(data.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in [
        "alpine:3",
        &dead,
        "registry-1.docker.io",
        "[[image.mirrors]]",
    ] {
        assert!(stderr.contains(want), "{want:?} missing: {stderr}");
    }

    // A workspace's Dockerfile names Docker Hub's image; the cell pulls it from the mirror.
    let c = TestCell::start_with(
        |cfg| {
            cfg.workspace.allow_destinations = vec!["127.0.0.1".into()];
            cfg.image.mirrors = vec![devcell::config::MirrorConfig {
                registry: "docker.io".into(),
                mirror: mirror.clone(),
            }];
        },
        None,
    )
    .await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(
        repos.path(),
        "mirrored",
        &[
            (".gitpod.yml", "image:\n  file: Dockerfile\n"),
            ("Dockerfile", "FROM busybox:1\nRUN echo via-mirror > /m\n"),
        ],
    );
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    let w = settled(&c, &id).await;
    assert_eq!(w["phase"], "running", "{w:#}\n{}", build_log(&c, &id).await);
    assert_eq!(exec(&c, &id, "cat /m").await["stdout"], "via-mirror\n");
    c.stop().await;
}

/// A tar (uncompressed) of `files` as (path, content, mode).
fn plain_tar(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, path, content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// devcontainer features: one published to a registry as an OCI artifact (reached through a
/// mirror of the name the repository uses), one in the repository; options as the
/// environment, `installsAfter` order, `containerEnv`, and each a layer of the image.
#[tokio::test]
async fn features_from_a_registry_and_the_repository_install_in_order() {
    let registry = Registry::start(false).await;
    let pusher = Pusher::new(&registry, false);
    push_busybox(&pusher).await;
    let layer = plain_tar(&[
        (
            "devcontainer-feature.json",
            r#"{"id": "hello", "version": "1.0.0",
                "options": {"greeting": {"type": "string", "default": "hello"}, "shout": {"type": "boolean", "default": false}},
                "containerEnv": {"HELLO_HOME": "/opt/hello"}}"#,
            0o644,
        ),
        (
            "install.sh",
            "#!/bin/sh\nset -e\nmkdir -p /opt/hello\necho \"$GREETING $SHOUT\" > /opt/hello/greeting\necho hello >> /opt/order\n",
            0o755,
        ),
    ]);
    let config = b"{}".to_vec();
    pusher.blob("hello", &layer).await;
    pusher.blob("hello", &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": crate::image::OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.devcontainers", "size": config.len(), "digest": sha256(&config) },
        "layers": [{ "mediaType": "application/vnd.devcontainers.layer.v1+tar", "size": layer.len(), "digest": sha256(&layer),
                     "annotations": { "org.opencontainers.image.title": "devcontainer-feature-hello.tgz" } }]
    }))
    .unwrap();
    pusher
        .manifest("hello", "1", crate::image::OCI_MANIFEST, &manifest)
        .await;

    let c = TestCell::start_with(
        |cfg| {
            cfg.workspace.allow_destinations = vec!["127.0.0.1".into()];
            cfg.image.mirrors = vec![devcell::config::MirrorConfig {
                registry: "features.example".into(),
                mirror: registry.addr.clone(),
            }];
        },
        None,
    )
    .await;
    let repos = tempfile::tempdir().unwrap();
    let devcontainer = format!(
        r#"{{
  "image": "{}/devcell/busybox:1",
  "features": {{
    "./local-feature": {{}},
    "features.example/hello:1": {{ "greeting": "hi there", "shout": true }}
  }}
}}"#,
        registry.addr
    );
    let bare = bare_repo(
        repos.path(),
        "featured",
        &[
            (".devcontainer/devcontainer.json", &devcontainer),
            (
                ".devcontainer/local-feature/devcontainer-feature.json",
                r#"{"id": "local", "installsAfter": ["features.example/hello"]}"#,
            ),
            (
                ".devcontainer/local-feature/install.sh",
                "#!/bin/sh\necho local >> /opt/order\n",
            ),
        ],
    );
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    let w = settled(&c, &id).await;
    let log = build_log(&c, &id).await;
    assert_eq!(w["phase"], "running", "{w:#}\n{log}");
    let out = exec(
        &c,
        &id,
        "cat /opt/hello/greeting /opt/order; echo $HELLO_HOME; ls /tmp",
    )
    .await;
    assert_eq!(
        out["stdout"], "hi there true\nhello\nlocal\n/opt/hello\n",
        "{out:#}\n{log}"
    );
    assert!(
        log.contains("FEATURE features.example/hello:1") && log.contains("FEATURE ./local-feature"),
        "{log}"
    );
    c.stop().await;
}

/// A compose-based devcontainer: the named service is the workspace; the database beside it
/// answers on the workspace's localhost, keeps its data in a named volume, and stops with the
/// workspace; what the cell does not run is said.
#[tokio::test]
async fn compose_services_run_beside_the_workspace_on_its_localhost() {
    let (registry, c) = busybox_and_cell().await;
    let repos = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let compose = format!(
        r#"services:
  app:
    image: {reg}/devcell/busybox:1
    environment:
      DB_URL: http://127.0.0.1:{port}
  db:
    image: {reg}/devcell/busybox:1
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo pong-$$MARK > /data/ping && exec httpd -f -p {port} -h /data"]
    environment:
      MARK: from-compose
    volumes:
      - dbdata:/data
      - ./init:/init
    healthcheck:
      test: ["CMD", "true"]
    depends_on: [cache]
  cache:
    image: {reg}/devcell/busybox:1
    command: ["sleep", "3600"]
  unused:
    image: nothing.invalid/never:1
volumes:
  dbdata: {{}}
networks:
  default: {{}}
"#,
        reg = registry.addr
    );
    let bare = bare_repo(
        repos.path(),
        "composed",
        &[
            (
                ".devcontainer/devcontainer.json",
                r#"{"dockerComposeFile": "docker-compose.yml", "service": "app", "runServices": ["db", "cache"]}"#,
            ),
            (".devcontainer/docker-compose.yml", &compose),
        ],
    );
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true }),
    )
    .await;
    let w = settled(&c, &id).await;
    assert_eq!(w["phase"], "running", "{w:#}");
    let ready = last_message(&w);
    for said in [
        "services.db.healthcheck",
        "./init:/init",
        "docker-compose.yml: networks",
    ] {
        assert!(ready.contains(said), "{said:?} not said: {ready}");
    }
    // The database answers on the workspace's own localhost, from its named volume.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = exec(&c, &id, "wget -qO- $DB_URL/ping 2>&1").await;
        if out["stdout"] == "pong-from-compose\n" {
            break;
        }
        let log = std::fs::read_to_string(
            c.data_dir()
                .join("workspaces")
                .join(&id)
                .join(".cell/service-db.log"),
        )
        .unwrap_or_else(|e| format!("no service log: {e}"));
        assert!(
            Instant::now() < until,
            "the service never answered: {out:#}\nits log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let running = |pattern: String| async move {
        let out = tokio::process::Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .await
            .unwrap();
        out.status.success()
    };
    assert!(running(format!("httpd -f -p {port}")).await);
    // It stops with the workspace.
    c.owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    c.wait_phase(&id, "stopped", BUILD_WITHIN).await;
    assert!(
        !running(format!("httpd -f -p {port}")).await,
        "the service outlived its workspace"
    );
    c.stop().await;
}

/// Gitpod's workspaceLocation, additionalRepositories and a public port: the terminal starts
/// in the named folder, the other repository is cloned beside the first, and the port is
/// shared with everyone when the workspace is first made.
#[tokio::test]
async fn gitpod_locations_more_repositories_and_public_ports_are_honoured() {
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let extra = bare_repo(
        repos.path(),
        "extra",
        &[("sub/marker", "from the extra repo\n")],
    );
    let gitpod = format!(
        "checkoutLocation: core\nworkspaceLocation: tools/sub\nadditionalRepositories:\n  - url: file://{}\n    checkoutLocation: tools\nports:\n  - port: 3000\n    visibility: public\n  - port: 3001\n",
        extra.display()
    );
    let main = bare_repo(repos.path(), "main", &[(".gitpod.yml", &gitpod)]);
    let id = create_started(
        &c,
        json!({ "repos": [{ "url": format!("file://{}", main.display()) }], "start": true }),
    )
    .await;
    let w = settled(&c, &id).await;
    assert_eq!(w["phase"], "running", "{w:#}");
    let out = exec(
        &c,
        &id,
        "cat /workspace/tools/sub/marker; ls /workspace | sort | tr '\\n' ' '",
    )
    .await;
    assert_eq!(out["stdout"], "from the extra repo\ncore tools ", "{out:#}");
    let (_, tasks_view) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}/ports"), None)
        .await;
    let visibility = |port: u16| {
        tasks_view
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == port)
            .map(|p| p["visibility"].clone())
    };
    assert_eq!(visibility(3000), Some(json!("public")), "{tasks_view:#}");
    assert_eq!(visibility(3001), Some(json!("private")), "{tasks_view:#}");
    // The terminal's working directory is the named folder.
    let spec: Value = serde_json::from_slice(
        &std::fs::read(
            c.data_dir()
                .join("workspaces")
                .join(&id)
                .join(".cell/spec.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(spec["workdir"], "/workspace/tools/sub", "{spec:#}");
    // The first repository stays where its configuration had it checked out: its git state
    // is read there at the stop, and the next start finds it instead of cloning it again.
    c.owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    let w = c.wait_phase(&id, "stopped", BUILD_WITHIN).await;
    assert_eq!(w["git"][0]["dir"], "core", "{w:#}");
    c.owner(
        Method::POST,
        &format!("/api/v1/workspaces/{id}/start"),
        None,
    )
    .await;
    let w = settled(&c, &id).await;
    assert_eq!(w["phase"], "running", "{w:#}");
    let out = exec(
        &c,
        &id,
        "ls /workspace | sort | tr '\\n' ' '; git -C /workspace/core log --oneline | wc -l",
    )
    .await;
    assert_eq!(out["stdout"], "core tools 1\n", "{out:#}");
    c.stop().await;
}

/// devcontainer `remoteUser`, `workspaceMount` and `workspaceFolder`: the workspace runs as
/// the image's user with its home where the image has it, and finds its repository where
/// the file expects it; what cannot be placed so is said.
#[tokio::test]
async fn the_workspace_runs_as_the_users_the_image_names_with_its_files_where_expected() {
    let (registry, c) = busybox_and_cell().await;
    let repos = tempfile::tempdir().unwrap();
    let image = format!("{}/devcell/busybox:1", registry.addr);
    let placed = bare_repo(
        repos.path(),
        "placed",
        &[
            (
                ".devcontainer/devcontainer.json",
                &format!(
                    r#"{{"image": "{image}", "remoteUser": "root",
                        "workspaceFolder": "/workspaces/${{localWorkspaceFolderBasename}}/web",
                        "postCreateCommand": "id -un > /workspaces/placed/created-by"}}"#
                ),
            ),
            ("web/index.txt", "the web folder\n"),
        ],
    );
    let (id, w) = start_on(&c, &placed).await;
    assert_eq!(w["phase"], "running", "{w:#}");
    assert_eq!(last_message(&w), "ready", "{w:#}");
    let out = exec(
        &c,
        &id,
        "id -un; id -u; echo $HOME; pwd; cat index.txt; touch ~/made-here; ls /workspace; \
         grep CapEff /proc/self/status; \
         until test -s /workspace/placed/created-by; do sleep 0.1; done; cat /workspace/placed/created-by",
    )
    .await;
    assert_eq!(
        out["stdout"],
        "root\n0\n/root\n/workspaces/placed/web\nthe web folder\nplaced\nCapEff:\t0000000000000000\nroot\n",
        "{out:#}"
    );
    // Root inside is the workspace's own uid outside: what it makes in its home is the
    // workspace's, on its disk.
    let dir = c.data_dir().join("workspaces").join(&id);
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(dir.join("home/made-here")).unwrap();
    assert_eq!(
        made.uid(),
        std::fs::metadata(dir.join("home")).unwrap().uid()
    );
    assert_ne!(made.uid(), 0, "root in the sandbox is not the host's root");

    // A mount into the image's own folders and a user the image does not have.
    let elsewhere = bare_repo(
        repos.path(),
        "elsewhere",
        &[(
            ".devcontainer.json",
            &format!(
                r#"{{"image": "{image}", "remoteUser": "app",
                    "workspaceMount": "source=${{localWorkspaceFolder}},target=/bin/app,type=bind"}}"#
            ),
        )],
    );
    let (id, w) = start_on(&c, &elsewhere).await;
    assert_eq!(w["phase"], "running", "{w:#}");
    let ready = last_message(&w);
    assert!(
        ready.contains("the repository is at /workspace/elsewhere, not /bin/app"),
        "{ready}"
    );
    let out = exec(&c, &id, "id -un; echo $HOME; pwd").await;
    assert_eq!(
        out["stdout"], "app\n/home/app\n/workspace/elsewhere\n",
        "{out:#}"
    );
    let nobody = bare_repo(
        repos.path(),
        "nobody",
        &[(
            ".devcontainer.json",
            &format!(r#"{{"image": "{image}", "remoteUser": "vscode"}}"#),
        )],
    );
    let (_, w) = start_on(&c, &nobody).await;
    assert_eq!(w["phase"], "failed", "{w:#}");
    let message = last_message(&w);
    assert!(
        message.contains(".devcontainer.json: remoteUser \"vscode\" is not a user of the image"),
        "{message}"
    );
    c.stop().await;
}
