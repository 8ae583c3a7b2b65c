//! Cloning and status against real git: bare repositories in temporary directories, served
//! over file://, over HTTP by `git http-backend` behind Basic authentication and over SSH by a
//! real OpenSSH server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use base64::Engine as _;
use devcell::content::git::{self, Clone, GitAuth, GitError};
use devcell::domain::RepoSpec;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

pub const USER: &str = "dev";
pub const TOKEN: &str = "s3cret-token";

/// Runs git for test setup, isolated from the host's configuration, and returns stdout.
fn run_git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("git is not installed; install it with `apt-get install git`");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit_file(work: &Path, file: &str, content: &str, message: &str) -> String {
    let path = work.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    run_git(work, &["add", "--", file]);
    run_git(work, &["commit", "--quiet", "-m", message]);
    run_git(work, &["rev-parse", "HEAD"])
}

/// A bare repository `project.git` with two commits on `main` and one more on `feature`.
struct Fixture {
    tmp: tempfile::TempDir,
    bare: PathBuf,
    first: String,
    feature_head: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("project.git");
        let work = tmp.path().join("work");
        run_git(
            tmp.path(),
            &[
                "init",
                "--quiet",
                "--bare",
                "-b",
                "main",
                bare.to_str().unwrap(),
            ],
        );
        run_git(
            tmp.path(),
            &[
                "clone",
                "--quiet",
                bare.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        let first = commit_file(&work, "README.md", "# project\n", "first");
        commit_file(&work, "src/main.txt", "main\n", "second");
        run_git(&work, &["push", "--quiet", "origin", "main"]);
        run_git(&work, &["checkout", "--quiet", "-b", "feature"]);
        let feature_head = commit_file(&work, "feature.txt", "feature\n", "feature work");
        run_git(&work, &["push", "--quiet", "origin", "feature"]);
        Fixture {
            tmp,
            bare,
            first,
            feature_head,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.tmp.path().join("clones").join(name)
    }
}

async fn clone(repo: &RepoSpec, dest: &Path, auth: &GitAuth) -> Result<(), GitError> {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    git::clone(Clone {
        repo,
        dest,
        auth,
        run_as: None,
        egress: &crate::image::loopback(),
    })
    .await
}

#[tokio::test]
async fn clone_over_file_default_branch() {
    let f = Fixture::new();
    let repo = RepoSpec::new(&f.url(), None).unwrap();
    let dest = f.dest(&git::dir_name(&repo.url));
    assert!(dest.ends_with("project"));
    clone(&repo, &dest, &GitAuth::None).await.unwrap();
    assert!(dest.join("README.md").is_file());
    assert!(dest.join("src/main.txt").is_file());
    assert!(!dest.join("feature.txt").exists());

    let status = git::status(&dest, None).await.unwrap();
    assert_eq!(status.dir, "project");
    assert_eq!(status.branch.as_deref(), Some("main"));
    assert_eq!(status.head.as_ref().map(String::len), Some(40));
    assert!(status.is_clean(), "{status:?}");
}

#[tokio::test]
async fn clone_over_file_named_branch() {
    let f = Fixture::new();
    let repo = RepoSpec::new(&f.url(), Some("feature")).unwrap();
    let dest = f.dest("feature");
    clone(&repo, &dest, &GitAuth::None).await.unwrap();
    assert!(dest.join("feature.txt").is_file());
    let status = git::status(&dest, None).await.unwrap();
    assert_eq!(status.branch.as_deref(), Some("feature"));
    assert_eq!(status.head.as_deref(), Some(f.feature_head.as_str()));
    assert!(status.is_clean(), "{status:?}");
}

#[tokio::test]
async fn clone_over_file_commit_id() {
    let f = Fixture::new();
    let repo = RepoSpec::new(&f.url(), Some(&f.first)).unwrap();
    let dest = f.dest("commit");
    clone(&repo, &dest, &GitAuth::None).await.unwrap();
    assert!(dest.join("README.md").is_file());
    assert!(
        !dest.join("src/main.txt").exists(),
        "checked out a later commit"
    );
    let status = git::status(&dest, None).await.unwrap();
    assert_eq!(status.branch, None, "HEAD should be detached");
    assert_eq!(status.head.as_deref(), Some(f.first.as_str()));
    assert!(status.is_clean(), "{status:?}");
}

#[tokio::test]
async fn missing_branch_and_commit_are_reported() {
    let f = Fixture::new();
    let repo = RepoSpec::new(&f.url(), Some("no-such-branch")).unwrap();
    let dest = f.dest("nobranch");
    let e = clone(&repo, &dest, &GitAuth::None).await.unwrap_err();
    assert_eq!(
        e,
        GitError::BranchNotFound {
            branch: "no-such-branch".into()
        }
    );
    assert_eq!(e.code(), "branch_not_found");
    assert!(!dest.exists(), "a failed clone left {}", dest.display());

    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo = RepoSpec::new(&f.url(), Some(sha)).unwrap();
    let dest = f.dest("nocommit");
    let e = clone(&repo, &dest, &GitAuth::None).await.unwrap_err();
    assert_eq!(e.code(), "branch_not_found", "{e}");
    assert!(!dest.exists(), "a failed checkout left {}", dest.display());
}

#[tokio::test]
async fn missing_repository_is_not_found() {
    let f = Fixture::new();
    let url = format!("file://{}/missing.git", f.tmp.path().display());
    let repo = RepoSpec::new(&url, None).unwrap();
    let dest = f.dest("missing");
    let e = clone(&repo, &dest, &GitAuth::None).await.unwrap_err();
    assert_eq!(e, GitError::NotFound { url: url.clone() }, "{e}");
    assert_eq!(e.to_string(), format!("repository not found: {url}"));
    assert!(!dest.exists());
}

#[tokio::test]
async fn status_reports_what_would_be_lost() {
    let f = Fixture::new();
    let repo = RepoSpec::new(&f.url(), None).unwrap();
    let dest = f.dest("status");
    clone(&repo, &dest, &GitAuth::None).await.unwrap();

    commit_file(&dest, "local.txt", "local\n", "local only");
    std::fs::write(dest.join("README.md"), "# changed\n").unwrap();
    std::fs::create_dir_all(dest.join("notes")).unwrap();
    std::fs::write(dest.join("notes/todo.txt"), "todo\n").unwrap();

    let status = git::status(&dest, None).await.unwrap();
    assert!(!status.is_clean());
    assert_eq!(status.uncommitted, ["README.md"]);
    assert_eq!(status.untracked, ["notes/todo.txt"]);
    assert_eq!(status.unpushed.len(), 1, "{status:?}");
    assert!(status.unpushed[0].ends_with(" local only"), "{status:?}");

    let e = git::status(&f.tmp.path().join("nowhere"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repo_not_found");
}

/// Clones as another user: the files must belong to that user. As root that is `nobody`;
/// otherwise our own uid, which still exercises the switch.
#[tokio::test]
async fn clone_runs_as_the_given_user() {
    let f = Fixture::new();
    let me = std::fs::metadata(f.tmp.path()).unwrap();
    let (uid, gid) = if me.uid() == 0 {
        (65534, 65534)
    } else {
        (me.uid(), me.gid())
    };
    // The other user must be able to read the repository and write the parent of dest.
    let parent = f.tmp.path().join("clones");
    std::fs::create_dir_all(&parent).unwrap();
    std::os::unix::fs::chown(&parent, Some(uid), Some(gid)).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(f.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let repo = RepoSpec::new(&f.url(), Some("feature")).unwrap();
    let dest = parent.join("as-user");
    git::clone(Clone {
        repo: &repo,
        dest: &dest,
        auth: &GitAuth::None,
        run_as: Some(git::RunAs {
            uid,
            gid,
            via: None,
        }),
        egress: &crate::image::loopback(),
    })
    .await
    .unwrap();
    let meta = std::fs::metadata(dest.join("feature.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    let status = git::status(&dest, Some((uid, gid))).await.unwrap();
    assert!(status.is_clean(), "{status:?}");
    // The cell (another uid) reads it too: safe.directory is relaxed for status.
    assert!(git::status(&dest, None).await.unwrap().is_clean());
}

// ---- HTTP ----

/// Serves the repositories under `root` with `git http-backend` as CGI, behind HTTP Basic
/// authentication for `dev:s3cret-token`.
/// A cell configured to clone from the git server at `addr` on this host's loopback, over
/// plain HTTP with credentials: the operator allows both.
pub async fn cell_trusting_git_at(addr: SocketAddr) -> crate::harness::TestCell {
    crate::harness::TestCell::start_with(
        |cfg| {
            cfg.workspace.allow_destinations = vec![addr.to_string()];
            cfg.workspace.plain_http_credentials = vec![addr.to_string()];
        },
        None,
    )
    .await
}

pub async fn serve_git_http(root: PathBuf) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let root = Arc::new(root);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let root = root.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| cgi(root.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn cgi(
    root: Arc<PathBuf>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"))
    );
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"git\"")
            .body(Full::new(Bytes::from_static(b"authentication required\n")))
            .unwrap());
    }

    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root.as_path())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
        cmd.env("CONTENT_TYPE", ct.to_str().unwrap());
    }
    // Other headers (Git-Protocol, Content-Encoding) reach CGI programs as HTTP_* variables.
    for (name, value) in &parts.headers {
        let var = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        if let Ok(v) = value.to_str() {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    writer.await.unwrap();

    let stdout = out.stdout;
    let split = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .expect("CGI output without a header block");
    let head = String::from_utf8_lossy(&stdout[..split.0]).into_owned();
    let mut response = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            let code: u16 = value.split_whitespace().next().unwrap().parse().unwrap();
            response = response.status(code);
        } else {
            response = response.header(name.trim(), value);
        }
    }
    Ok(response
        .body(Full::new(Bytes::copy_from_slice(&stdout[split.1..])))
        .unwrap())
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn clone_over_http_with_a_token() {
    let f = Fixture::new();
    let (addr, server) = serve_git_http(f.tmp.path().to_path_buf()).await;
    let url = format!("http://{addr}/project.git");
    let repo = RepoSpec::new(&url, Some("feature")).unwrap();
    let dest = f.dest("http");
    let auth = GitAuth::Token {
        username: USER.into(),
        token: TOKEN.into(),
    };
    clone(&repo, &dest, &auth).await.unwrap();
    assert!(dest.join("feature.txt").is_file());
    assert!(dest.join("README.md").is_file());

    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"));
    for needle in [TOKEN, encoded.as_str()] {
        let leaks = files_containing(&dest, needle.as_bytes());
        assert!(leaks.is_empty(), "{needle:?} found in {leaks:?}");
    }
    let status = git::status(&dest, None).await.unwrap();
    assert!(status.is_clean(), "{status:?}");

    // A commit id over HTTP: a clone, then a checkout of that commit.
    let repo = RepoSpec::new(&url, Some(&f.first)).unwrap();
    let dest = f.dest("http-commit");
    clone(&repo, &dest, &auth).await.unwrap();
    assert!(dest.join("README.md").is_file());
    assert!(files_containing(&dest, TOKEN.as_bytes()).is_empty());
    server.abort();
}

/// The git server over HTTPS, with a certificate for 127.0.0.1 from a CA of the test's own;
/// the CA's PEM file is returned.
pub async fn serve_git_https(
    root: PathBuf,
    dir: &Path,
) -> (SocketAddr, PathBuf, tokio::task::JoinHandle<()>) {
    let ca_file = dir.join("internal-ca.pem");
    let config = crate::acme::tls_server(&["127.0.0.1"], &ca_file);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let root = Arc::new(root);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (root, acceptor) = (root.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| cgi(root.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, ca_file, task)
}

#[tokio::test]
async fn clone_over_https_from_an_internal_ca_works_once_the_operator_trusts_it() {
    crate::harness::install_crypto();
    let f = Fixture::new();
    let (addr, ca_file, server) = serve_git_https(f.tmp.path().to_path_buf(), f.tmp.path()).await;
    let repo = RepoSpec::new(&format!("https://{addr}/project.git"), None).unwrap();
    let auth = GitAuth::Token {
        username: USER.into(),
        token: TOKEN.into(),
    };
    // The host does not know the CA: git refuses the server.
    let e = clone(&repo, &f.dest("untrusted"), &auth).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // With `tls.trust_bundle` naming it, the clone goes through.
    let trust = Arc::new(devcell::trust::Outbound::load(&ca_file).unwrap());
    let dest = f.dest("trusted");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    git::clone(Clone {
        repo: &repo,
        dest: &dest,
        auth: &auth,
        run_as: None,
        egress: &crate::image::loopback().with_trust(Some(trust.clone())),
    })
    .await
    .unwrap();
    assert!(dest.join("README.md").is_file());
    // The CA file git reads holds the host's CA certificates too, and goes with the cell.
    let file = trust.git_ca_file().to_owned();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.matches("BEGIN CERTIFICATE").count() > 10,
        "the host's CAs are missing"
    );
    drop(trust);
    assert!(!file.exists(), "the CA file outlived the cell");
    server.abort();
}

#[tokio::test]
async fn wrong_or_missing_token_is_an_auth_failure() {
    let f = Fixture::new();
    let (addr, server) = serve_git_http(f.tmp.path().to_path_buf()).await;
    let url = format!("http://{addr}/project.git");
    let repo = RepoSpec::new(&url, None).unwrap();

    let wrong = "wrong-t0ken-value";
    let auth = GitAuth::Token {
        username: USER.into(),
        token: wrong.into(),
    };
    let dest = f.dest("wrong");
    let e = clone(&repo, &dest, &auth).await.unwrap_err();
    assert_eq!(e, GitError::AuthFailed { url: url.clone() }, "{e}");
    assert_eq!(e.code(), "repo_auth_failed");
    assert!(!e.to_string().contains(wrong), "{e}");
    assert!(!format!("{e:?}").contains(wrong), "{e:?}");
    assert!(!dest.exists());

    let e = clone(&repo, &f.dest("none"), &GitAuth::None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repo_auth_failed", "{e}");

    // The right token but a repository that does not exist.
    let auth = GitAuth::Token {
        username: USER.into(),
        token: TOKEN.into(),
    };
    let missing = RepoSpec::new(&format!("http://{addr}/missing.git"), None).unwrap();
    let e = clone(&missing, &f.dest("missing"), &auth)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repo_not_found", "{e}");
    server.abort();
}

#[tokio::test]
async fn unreachable_host_is_reported() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = Fixture::new();
    let repo = RepoSpec::new(&format!("http://127.0.0.1:{port}/x.git"), None).unwrap();
    let e = clone(&repo, &f.dest("unreachable"), &GitAuth::None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repo_unreachable", "{e}");
}

/// A real OpenSSH server on a free loopback port that lets in the current user with one key.
struct SshServer {
    port: u16,
    user: String,
    /// The private key it accepts, as `ssh-keygen` wrote it.
    key: String,
    _child: tokio::process::Child,
}

fn keygen(path: &Path) -> String {
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen is not installed; install it with `apt-get install openssh-client`")
        .success();
    assert!(ok, "ssh-keygen failed");
    std::fs::read_to_string(path).unwrap()
}

impl SshServer {
    async fn start(dir: &Path) -> SshServer {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "sshd is not installed; install it with `apt-get install openssh-server`"
        );
        keygen(&dir.join("host_key"));
        let key = keygen(&dir.join("user_key"));
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
        // Privilege separation needs its empty directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let user = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_owned();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nAllowUsers {user}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < until,
                "sshd did not listen: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        SshServer {
            port,
            user,
            key,
            _child: child,
        }
    }

    fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }
}

#[tokio::test]
async fn clone_over_ssh_with_a_key() {
    let f = Fixture::new();
    let keys = tempfile::tempdir().unwrap();
    let server = SshServer::start(keys.path()).await;
    let url = server.url(&f.bare);
    let auth = GitAuth::SshKey {
        private_key: server.key.clone(),
    };
    let repo = RepoSpec::new(&url, Some("feature")).unwrap();
    let dest = f.dest("ssh");
    clone(&repo, &dest, &auth).await.unwrap();
    assert!(dest.join("feature.txt").is_file());
    assert_eq!(
        run_git(&dest, &["rev-parse", "HEAD"]),
        f.feature_head,
        "the branch's head is checked out"
    );
    // The key is used for the clone and kept nowhere in the workspace's files or git config.
    let body = server
        .key
        .lines()
        .nth(1)
        .expect("a key has a body line")
        .to_owned();
    let leaks = files_containing(&dest, body.as_bytes());
    assert!(leaks.is_empty(), "the key is in {leaks:?}");
    let config = std::fs::read_to_string(dest.join(".git/config")).unwrap();
    assert!(!config.contains("sshCommand"), "{config}");
    assert!(
        config.contains(&url),
        "the remote stays the ssh URL: {config}"
    );

    // As a workspace's own uid, one with no account on the host (as the cell runs clones).
    if std::fs::metadata(f.tmp.path()).unwrap().uid() == 0 {
        use std::os::unix::fs::PermissionsExt as _;
        let uid = 200_077;
        let parent = f.tmp.path().join("as-uid");
        std::fs::create_dir_all(&parent).unwrap();
        std::os::unix::fs::chown(&parent, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(f.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dest = parent.join("ssh");
        git::clone(Clone {
            repo: &repo,
            dest: &dest,
            auth: &auth,
            run_as: Some(git::RunAs {
                uid,
                gid: uid,
                via: None,
            }),
            egress: &crate::image::loopback(),
        })
        .await
        .unwrap();
        assert_eq!(
            std::fs::metadata(dest.join("feature.txt")).unwrap().uid(),
            uid
        );
    }

    // A key the server does not know is an authentication failure that names no key.
    let stranger = keygen(&keys.path().join("stranger"));
    let e = clone(
        &RepoSpec::new(&url, None).unwrap(),
        &f.dest("ssh-stranger"),
        &GitAuth::SshKey {
            private_key: stranger.clone(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "repo_auth_failed", "{e}");
    assert!(!e.to_string().contains(stranger.lines().nth(1).unwrap()));
    // And no key at all is refused the same way (no prompt, no hang).
    let e = clone(
        &RepoSpec::new(&url, None).unwrap(),
        &f.dest("ssh-none"),
        &GitAuth::None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "repo_auth_failed", "{e}");

    // The clone is whole: with the server gone, other branches and old files are all there.
    drop(server);
    run_git(&dest, &["checkout", "--quiet", "main"]);
    assert_eq!(
        std::fs::read_to_string(dest.join("src/main.txt")).unwrap(),
        "main\n"
    );
    run_git(&dest, &["show", &format!("{}:README.md", f.first)]);
}
