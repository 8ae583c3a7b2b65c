//! Starts a cell in-process on 127.0.0.1:0 with a temporary data directory, and gives tests an
//! HTTP client with the owner's credentials.

use std::path::PathBuf;
use std::sync::Arc;

use devcell::config::{self, Config, Overrides};
use devcell::server::{self, Options, Running};
use devcell::service::{Clock, ManualClock, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const OWNER_EMAIL: &str = "owner@example.com";
pub const OWNER_PASSWORD: &str = "correct horse battery";

pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Credentials for moto (which takes any) where the standard AWS chain looks: the process
/// environment. Set once, before the first test that talks to moto, always to the same values.
#[allow(unsafe_code)]
pub fn moto_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: only the moto tests call this, through this `Once`; the values never change.
    ONCE.call_once(|| unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    });
}

pub struct TestCell {
    pub running: Option<Running>,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub owner_token: String,
    pub http: reqwest::Client,
    pub clock: Option<Arc<ManualClock>>,
}

pub fn test_config(data: PathBuf) -> Config {
    let overrides = Overrides {
        data_dir: Some(data),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Overrides::default()
    };
    let mut config = config::load(None, &[], &overrides).unwrap();
    // Tests keep their repositories in temporary directories and create workspaces as owners.
    config.workspace.file_repos = vec![std::env::temp_dir()];
    config
}

/// The local runtime with the real `devcell` binary as launcher and agent.
/// The `name=value` of the cookie a response sets (its attributes left off).
pub fn cookie_of(res: &reqwest::Response) -> String {
    res.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

pub fn local_runtime() -> Arc<dyn devcell::runtime::Runtime> {
    assert!(
        std::path::Path::new("/usr/bin/bwrap").exists(),
        "bubblewrap is missing: apt-get install -y bubblewrap (bash tests/run.sh installs it)"
    );
    Arc::new(
        devcell::runtime::LocalRuntime::new()
            .unwrap()
            .with_exe(env!("CARGO_BIN_EXE_devcell").into()),
    )
}

impl TestCell {
    pub async fn start() -> TestCell {
        Self::start_with(|_| {}, None).await
    }

    pub async fn start_with(
        tweak: impl FnOnce(&mut Config),
        clock: Option<Arc<ManualClock>>,
    ) -> TestCell {
        // Always the real runtime with the real binary: never the test harness as agent.
        Self::start_full(tweak, clock, Some(local_runtime())).await
    }

    /// A cell that runs workspaces in real sandboxes, with the real `devcell` binary as agent.
    pub async fn start_with_runtime() -> TestCell {
        Self::start_full(|_| {}, None, Some(local_runtime())).await
    }

    /// A cell with the real runtime on a manual clock (set to now), and the clock.
    pub async fn with_clock(tweak: impl FnOnce(&mut Config)) -> (TestCell, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let c = Self::start_full(tweak, Some(clock.clone()), Some(local_runtime())).await;
        (c, clock)
    }

    /// Starts a cell again on a data directory kept by [`TestCell::stop_keep_data`].
    pub async fn restart(dir: tempfile::TempDir) -> TestCell {
        Self::start_in(dir, |_| {}, None, Some(local_runtime())).await
    }

    /// Like [`TestCell::restart`], with a configuration change and a clock of the test's own.
    pub async fn restart_with(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
        clock: Option<Arc<ManualClock>>,
    ) -> TestCell {
        Self::start_in(dir, tweak, clock, Some(local_runtime())).await
    }

    pub async fn start_full(
        tweak: impl FnOnce(&mut Config),
        clock: Option<Arc<ManualClock>>,
        runtime: Option<Arc<dyn devcell::runtime::Runtime>>,
    ) -> TestCell {
        let dir = tempfile::tempdir().unwrap();
        // Sandboxes run as other uids and must be able to traverse to their directories.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        Self::start_in(dir, tweak, clock, runtime).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
        clock: Option<Arc<ManualClock>>,
        runtime: Option<Arc<dyn devcell::runtime::Runtime>>,
    ) -> TestCell {
        install_crypto();
        let mut config = test_config(dir.path().join("data"));
        tweak(&mut config);
        let c: Arc<dyn Clock> = match &clock {
            Some(m) => m.clone(),
            None => Arc::new(SystemClock),
        };
        let running = server::start(
            config,
            Options {
                clock: c,
                bootstrap_owner: Some((OWNER_EMAIL.into(), Some(OWNER_PASSWORD.into()))),
                runtime,
                ..Options::default()
            },
        )
        .await
        .unwrap();
        let (_, t) = running.cell.admin_token(None, "test").unwrap();
        let tls = running.tls;
        TestCell {
            url: running.url(),
            running: Some(running),
            dir,
            owner_token: t.secret,
            // Over HTTPS the harness's own client does not judge the certificate (it is made
            // for names that do not resolve here); the TLS tests check it with their own.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .danger_accept_invalid_certs(tls)
                .build()
                .unwrap(),
            clock,
        }
    }

    pub fn cell(&self) -> &devcell::service::Cell {
        &self.running.as_ref().unwrap().cell
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON (or Null).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        // An event stream does not end by itself: its status is the answer.
        if res
            .headers()
            .get("content-type")
            .is_some_and(|t| t == "text/event-stream")
        {
            return (status, Value::Null);
        }
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, json)
    }

    pub async fn owner(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.owner_token.clone()), body)
            .await
    }

    /// The owner's first organization.
    /// A dashboard page as the owner sees it (signed in through a one-time link).
    pub async fn owner_page(&self, path: &str) -> String {
        let (status, page) = self.owner_page_status(path).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{path}: {page}");
        page
    }

    /// Like [`TestCell::owner_page`], with the status, for pages that answer with an error.
    pub async fn owner_page_status(&self, path: &str) -> (reqwest::StatusCode, String) {
        let owner = self.cell().find_user(None).unwrap();
        let cookie = self.login_cookie(&owner.id).await;
        let res = self
            .http
            .get(self.url(path))
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        (res.status(), res.text().await.unwrap())
    }

    pub async fn org_id(&self) -> String {
        let (s, orgs) = self.owner(Method::GET, "/api/v1/orgs", None).await;
        assert_eq!(s, StatusCode::OK, "{orgs}");
        orgs[0]["id"].as_str().unwrap().to_owned()
    }

    /// Changes the owner's first organization's policy (`PATCH .../policy`).
    pub async fn set_policy(&self, patch: Value) {
        let org = self.org_id().await;
        let (s, p) = self
            .owner(
                Method::PATCH,
                &format!("/api/v1/orgs/{org}/policy"),
                Some(patch),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{p}");
    }

    /// Invites a new member (role `member` unless given) and returns (user id, API token).
    pub async fn add_user(&self, email: &str, role: &str) -> (String, String) {
        let org = self.org_id().await;
        let (s, inv) = self
            .owner(
                Method::POST,
                &format!("/api/v1/orgs/{org}/invitations"),
                Some(serde_json::json!({ "role": role })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{inv}");
        let link = inv["url"].as_str().unwrap();
        let secret = link.rsplit('/').next().unwrap();
        let (s, acc) = self
            .call(
                Method::POST,
                "/api/v1/invitations/accept",
                None,
                Some(serde_json::json!({ "token": secret, "email": email, "name": "Test User", "password": "a long enough password" })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{acc}");
        let (user, token) = self.cell().admin_token(Some(email), "test").unwrap();
        (user.id.to_string(), token.secret)
    }

    /// The session cookie a followed login link sets for `user`.
    pub async fn login_cookie(&self, user: &devcell::domain::UserId) -> String {
        let link = self.cell().create_login_link(user).unwrap();
        // The link is under the public URL, whose name may not resolve here: follow its path
        // on the address the cell listens on.
        let path = url::Url::parse(&link).unwrap().path().to_owned();
        let res = self.http.get(self.url(&path)).send().await.unwrap();
        cookie_of(&res)
    }

    /// A browser session for `user` (a login link followed): its cookie and CSRF token.
    pub async fn session(&self, user: &devcell::domain::UserId) -> (String, String) {
        let cookie = self.login_cookie(user).await;
        let home = self
            .http
            .get(self.url("/"))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = home
            .split("name=\"csrf-token\" content=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token on the home page: {home}"))
            .to_owned();
        (cookie, csrf)
    }

    /// Posts a page form with a session; answers the status and the page (or redirect target).
    pub async fn post_form(
        &self,
        cookie: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let res = self
            .http
            .post(self.url(path))
            .header(reqwest::header::COOKIE, cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let location = res
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let body = res.text().await.unwrap();
        (status, location.unwrap_or(body))
    }

    /// A page as the holder of a session cookie sees it.
    pub async fn page_with(&self, cookie: &str, path: &str) -> String {
        self.http
            .get(self.url(path))
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .replace("<!>", "")
    }

    /// Stops the cell and, unlike a real cell stop, every sandbox it started: tests leave nothing running.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        let rt = local_runtime();
        if let Ok(entries) = std::fs::read_dir(self.data_dir().join("workspaces")) {
            for e in entries.flatten() {
                if let Ok(id) =
                    devcell::domain::WorkspaceId::parse(&e.file_name().to_string_lossy())
                {
                    let _ = rt.stop(&id).await;
                }
            }
        }
    }

    /// Stops the cell but keeps its data directory for a restart.
    pub async fn stop_keep_data(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// The workspace as the owner sees it through the API.
    pub async fn workspace(&self, id: &str) -> Value {
        let (s, w) = self
            .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{w}");
        w
    }

    /// Polls until the workspace is deleted (its record answers 404), or fails after 30 s.
    pub async fn wait_gone(&self, id: &str) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (s, w) = self
                .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
                .await;
            if s == StatusCode::NOT_FOUND {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "{id} was never deleted: {w:#}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Polls the workspace until `check` holds (or fails with its record after 30 s).
    pub async fn wait_for(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let w = self.workspace(id).await;
            if check(&w) {
                return w;
            }
            assert!(std::time::Instant::now() < until, "never {what}: {w:#}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Polls the workspace until its phase is `want` (or fails the test with its history).
    pub async fn wait_phase(&self, id: &str, want: &str, within: std::time::Duration) -> Value {
        let until = std::time::Instant::now() + within;
        loop {
            let (s, w) = self
                .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{w}");
            if w["phase"] == want {
                return w;
            }
            assert!(
                std::time::Instant::now() < until,
                "workspace never reached {want}: {w:#}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

/// Creates a workspace for the bearer of `token` and returns its id.
pub async fn create_ws(cell: &TestCell, token: &str) -> String {
    let (s, ws) = cell
        .call(Method::POST, "/api/v1/workspaces", Some(token), Some(serde_json::json!({ "repos": [{ "url": "https://git.example.com/team/app.git", "branch": "main" }] })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    ws["id"].as_str().unwrap().to_owned()
}

/// A test that fails midway never reaches `stop`: its sandboxes are killed here instead, so a
/// failure does not leave workspaces running on the machine.
impl Drop for TestCell {
    fn drop(&mut self) {
        if self.running.is_some() {
            let h = devcell::runtime::cgroup::Hierarchy::detect();
            if let Ok(entries) = std::fs::read_dir(self.data_dir().join("workspaces")) {
                for e in entries.flatten() {
                    if let Some(cg) = h.open(&e.file_name().to_string_lossy()) {
                        let _ = cg.destroy();
                    }
                }
            }
        }
        // Workspaces' disks are mounted under the data directory; they go before it does.
        devcell::runtime::disk::unmount_all_under(self.dir.path());
    }
}

/// Unmounts every workspace disk under a directory when dropped: declared after the
/// directory's `TempDir`, it runs before the directory is removed.
pub struct Unmounts(pub std::path::PathBuf);

impl Drop for Unmounts {
    fn drop(&mut self) {
        devcell::runtime::disk::unmount_all_under(&self.0);
    }
}
