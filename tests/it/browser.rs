//! The dashboard in a real browser: headless Chromium driven through chromedriver. A user logs
//! in with a one-time link, creates a workspace from a local repository, watches it reach
//! running without reloading, types in its terminal, opens a forwarded port and stops it.
//! On failure the screenshot and page HTML are saved under target/browser-artifacts/.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::TestCell;
use crate::runtime::bare_repo;

pub struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_chromedriver() -> Driver {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: apt-get install -y chromium chromium-driver (bash tests/run.sh installs them)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

pub async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    browser_with(driver, profile, &["--window-size=1280,900"]).await
}

/// A headless Chromium with `extra` flags (window size, colour scheme).
async fn browser_with(driver: &Driver, profile: &std::path::Path, extra: &[&str]) -> Client {
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap()
}

/// Saves what the browser shows, for a failing test's artifacts.
pub async fn save_artifacts(b: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(png) = b.screenshot().await {
        let _ = std::fs::write(dir.join(format!("{name}.png")), png);
    }
    if let Ok(html) = b.source().await {
        let _ = std::fs::write(dir.join(format!("{name}.html")), html);
    }
    eprintln!("browser artifacts saved in {}", dir.display());
}

/// Runs a browser scenario within `limit`. On any failure (a panic or the time running out) the
/// page's screenshot and HTML are saved as `<name>-failure.*` first; the failure is returned to
/// be raised once the browser and the cell are cleaned up.
pub async fn scenario(
    b: &Client,
    name: &str,
    limit: Duration,
    run: impl std::future::Future<Output = ()>,
) -> Option<Box<dyn std::any::Any + Send>> {
    use futures::FutureExt;
    let failure =
        match tokio::time::timeout(limit, std::panic::AssertUnwindSafe(run).catch_unwind()).await {
            Ok(Ok(())) => return None,
            Ok(Err(panic)) => panic,
            Err(_) => Box::new(format!(
                "the browser scenario {name} took longer than {limit:?}"
            )),
        };
    save_artifacts(b, &format!("{name}-failure")).await;
    Some(failure)
}

/// Polls `check` (a JavaScript expression returning a string) until `want` holds.
pub async fn wait_for(b: &Client, what: &str, js: &str, want: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let v = b.execute(js, vec![]).await.unwrap();
        let text = v.as_str().unwrap_or("").to_owned();
        if want(&text) {
            return text;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}; last value: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_user_creates_works_in_and_stops_a_workspace_in_the_browser() {
    let driver = start_chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let gitpod = "tasks:\n  - command: echo serving on 3000 && python3 server.py 3000\n";
    let bare = bare_repo(
        repos.path(),
        "web",
        &[
            (".gitpod.yml", gitpod),
            ("server.py", include_str!("../fixtures/port_server.py")),
        ],
    );
    let owner = c.cell().find_user(None).unwrap();
    let link = c.cell().create_login_link(&owner.id).unwrap();

    let b = browser(&driver, profile.path()).await;
    let result = async {
        b.goto(&link).await.unwrap();
        wait_for(&b, "the workspaces page", "return document.title", |t| {
            t.starts_with("Workspaces")
        })
        .await;
        // The list is live: a workspace created elsewhere (here through the API) shows up
        // without a reload, and goes when it is deleted.
        b.execute("window.__listDocument = 'yes'; return 'set'", vec![])
            .await
            .unwrap();
        let (s, other) = c
            .owner(
                reqwest::Method::POST,
                "/api/v1/workspaces",
                Some(json!({ "name": "from-the-cli", "repos": [{ "url": format!("file://{}", bare.display()) }] })),
            )
            .await;
        assert_eq!(s, reqwest::StatusCode::CREATED, "{other}");
        let rows = "return Array.from(document.querySelectorAll('tr[data-id]')).map(r => r.textContent).join('|')";
        wait_for(&b, "the new row", rows, |t| t.contains("from-the-cli")).await;
        let other_id = other["id"].as_str().unwrap();
        let (s, _) = c
            .owner(
                reqwest::Method::DELETE,
                &format!("/api/v1/workspaces/{other_id}"),
                None,
            )
            .await;
        assert!(s.is_success());
        wait_for(&b, "the row to go", rows, |t| !t.contains("from-the-cli")).await;
        let same = b
            .execute("return window.__listDocument || 'reloaded'", vec![])
            .await
            .unwrap();
        assert_eq!(same, "yes", "the list was reloaded");
        b.find(Locator::LinkText("New workspace"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.find(Locator::Id("repo"))
            .await
            .unwrap()
            .send_keys(&format!("file://{}", bare.display()))
            .await
            .unwrap();
        b.find(Locator::Css("form.card button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();

        // The phase changes on the page without a reload.
        wait_for(&b, "the workspace page", "return location.pathname", |p| {
            p.starts_with("/workspaces/ws_")
        })
        .await;
        let marker = b
            .execute("window.__sameDocument = 'yes'; return 'set'", vec![])
            .await
            .unwrap();
        assert_eq!(marker, "set");
        wait_for(
            &b,
            "phase running",
            "return document.getElementById('phase').textContent",
            |p| p == "running",
        )
        .await;
        // Still without a reload: the task, its log, the port it serves and the Restart
        // control appear as the workspace comes up.
        wait_for(
            &b,
            "the task's log",
            "var l = document.querySelector('[data-task-log]'); return l ? l.textContent : ''",
            |t| t.contains("serving on 3000"),
        )
        .await;
        wait_for(
            &b,
            "port 3000 listening",
            "var r = document.querySelector('tr[data-port=\"3000\"] a[target=_blank]'); return r ? r.textContent : ''",
            |t| t.contains("Open"),
        )
        .await;
        wait_for(
            &b,
            "the Restart button",
            "return document.querySelector('form[action$=\"/restart\"] button') ? 'yes' : ''",
            |t| t == "yes",
        )
        .await;
        let same = b
            .execute("return window.__sameDocument || 'reloaded'", vec![])
            .await
            .unwrap();
        assert_eq!(same, "yes", "the page was reloaded");

        // The terminal: type a command, read its output.
        wait_for(
            &b,
            "the terminal",
            "return document.getElementById('terminal').dataset.state || ''",
            |s| s == "attached",
        )
        .await;
        wait_for(&b, "a prompt", "return document.querySelector('.xterm-rows') ? document.querySelector('.xterm-rows').textContent : ''", |t| t.contains('$')).await;
        let input = b
            .find(Locator::Css(".xterm-helper-textarea"))
            .await
            .unwrap();
        input.send_keys("echo hel''lo-browser\n").await.unwrap();
        wait_for(
            &b,
            "the command's output",
            "return document.querySelector('.xterm-rows').textContent",
            |t| t.contains("hello-browser"),
        )
        .await;
        // What a person would see, kept with the test run.
        save_artifacts(&b, "workspace-terminal").await;

        // A second terminal in its own tab; a reload attaches to both instead of opening more.
        b.find(Locator::Id("new-terminal"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let tabs =
            "return String(document.querySelectorAll('#terminal-tabs button[data-tid]').length)";
        wait_for(&b, "two terminal tabs", tabs, |n| n == "2").await;
        // The keyboard moves between tabs: ArrowRight from the first selects the second.
        b.execute(
            "document.querySelector('#terminal-tabs button[data-tid]').focus(); return 'ok'",
            vec![],
        )
        .await
        .unwrap();
        b.active_element()
            .await
            .unwrap()
            .send_keys("\u{E014}")
            .await
            .unwrap();
        wait_for(
            &b,
            "the second tab selected by the arrow key",
            "var t = document.querySelectorAll('#terminal-tabs button[data-tid]'); return t[1].getAttribute('aria-selected') + '/' + (document.activeElement === t[1])",
            |s| s == "true/true",
        )
        .await;
        b.refresh().await.unwrap();
        wait_for(&b, "two terminal tabs after a reload", tabs, |n| n == "2").await;
        wait_for(
            &b,
            "the first terminal's scrollback",
            "return document.querySelector('.xterm-rows').textContent",
            |t| t.contains("hello-browser"),
        )
        .await;

        // A port served inside the workspace, opened through the cell with the session cookie.
        let id = b
            .execute("return location.pathname.split('/')[2]", vec![])
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        let port_page = c.url(&format!("/w/{id}/p/3000/from-browser"));
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            b.goto(&port_page).await.unwrap();
            let body = b
                .execute(
                    "return document.body ? document.body.textContent : ''",
                    vec![],
                )
                .await
                .unwrap();
            if body.as_str().unwrap_or("").contains("path=/from-browser") {
                break;
            }
            assert!(
                Instant::now() < until,
                "the forwarded port never answered: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Stop it from its page.
        b.goto(&c.url(&format!("/workspaces/{id}"))).await.unwrap();
        b.find(Locator::Css("form[action$='/stop'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for(
            &b,
            "phase stopped",
            "return document.getElementById('phase').textContent",
            |p| p == "stopped",
        )
        .await;

        // Owners see the admin page with the loops, and the organization page.
        b.goto(&c.url("/admin")).await.unwrap();
        let loops = b.execute("return Array.from(document.querySelectorAll('tr[data-loop]')).map(r => r.dataset.loop).join(',')", vec![]).await.unwrap();
        assert_eq!(loops, "backups,cleanup,expiry,reconcile,timeouts");
        b.goto(&c.url("/org")).await.unwrap();
        b.find(Locator::Css("form[action='/org/invite'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let invitation = wait_for(
            &b,
            "an invitation link",
            "var e = document.getElementById('invitation-link'); return e ? e.textContent : ''",
            |t| t.contains("/invite/"),
        )
        .await;

        // Add a class in the table's last row, then change it in its own row.
        let new_name = b
            .find(Locator::Css("tr[data-class='new'] input[name='name']"))
            .await
            .unwrap();
        new_name.send_keys("gpu-ish").await.unwrap();
        let memory = b
            .find(Locator::Css(
                "tr[data-class='new'] input[name='memory_gib']",
            ))
            .await
            .unwrap();
        memory.clear().await.unwrap();
        memory.send_keys("8").await.unwrap();
        b.find(Locator::Css("tr[data-class='new'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let row = "Array.from(document.querySelectorAll('tr[data-class]')).find(r => r.querySelector('input[name=name]').value === 'gpu-ish' && r.dataset.class !== 'new')";
        wait_for(
            &b,
            "the new class",
            &format!(
                "var r = {row}; return r ? r.querySelector('input[name=memory_gib]').value : ''"
            ),
            |v| v == "8",
        )
        .await;
        b.execute(
            &format!("var r = {row}; r.querySelector('input[name=memory_gib]').value = '12'; r.querySelector('button').click(); return true"),
            vec![],
        )
        .await
        .unwrap();
        wait_for(
            &b,
            "the changed class",
            &format!(
                "var r = {row}; return r ? r.querySelector('input[name=memory_gib]').value : ''"
            ),
            |v| v == "12",
        )
        .await;
        let (_, classes) = c
            .owner(
                reqwest::Method::GET,
                &format!("/api/v1/orgs/{}/classes", c.org_id().await),
                None,
            )
            .await;
        assert!(
            classes.to_string().contains("\"memory_bytes\":12884901888"),
            "{classes}"
        );

        // Sign out from the user menu, join through the invitation as a member: the
        // organization page is refused.
        b.goto(&c.url("/")).await.unwrap();
        b.find(Locator::Css("details.menu summary"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.find(Locator::Css("form[action='/logout'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for(&b, "the login page", "return location.pathname", |p| {
            p == "/login"
        })
        .await;
        b.goto(&invitation).await.unwrap();
        b.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys("Dev")
            .await
            .unwrap();
        b.find(Locator::Id("email"))
            .await
            .unwrap()
            .send_keys("dev@example.com")
            .await
            .unwrap();
        b.find(Locator::Id("password"))
            .await
            .unwrap()
            .send_keys("a long enough password")
            .await
            .unwrap();
        b.find(Locator::Css("form.card button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for(
            &b,
            "the member's workspaces",
            "return document.title",
            |t| t.starts_with("Workspaces"),
        )
        .await;
        b.goto(&c.url("/org")).await.unwrap();
        wait_for(&b, "a refusal", "return document.body.textContent", |t| {
            t.contains("only organization owners")
        })
        .await;
        b.goto(&c.url("/admin")).await.unwrap();
        wait_for(&b, "a refusal", "return document.body.textContent", |t| {
            t.contains("only cell administrators may do this")
        })
        .await;
    };
    let failed = scenario(&b, "workspace", Duration::from_secs(180), result).await;
    let _ = b.close().await;
    drop(driver);
    c.stop().await;
    if let Some(failure) = failed {
        std::panic::resume_unwind(failure);
    }
}

/// The review a phone user in dark mode would do: every page fits a 390-pixel-wide screen
/// without sideways scrolling, follows the dark colour scheme, and keyboard focus is visible.
/// Screenshots of each page are kept under target/browser-artifacts/ for people to look at.
#[tokio::test]
async fn pages_fit_a_phone_follow_the_dark_scheme_and_show_keyboard_focus() {
    let driver = start_chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let id = crate::runtime::running_workspace(&c, repos.path(), "phone").await;
    let owner = c.cell().find_user(None).unwrap();
    let link = c.cell().create_login_link(&owner.id).unwrap();
    let b = browser_with(
        &driver,
        profile.path(),
        &[
            "--window-size=390,844",
            "--blink-settings=preferredColorScheme=0",
        ],
    )
    .await;
    let result = async {
        b.goto(&link).await.unwrap();
        wait_for(&b, "the workspaces page", "return document.title", |t| {
            t.starts_with("Workspaces")
        })
        .await;
        let dark = b
            .execute(
                "return matchMedia('(prefers-color-scheme: dark)').matches",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(dark, json!(true), "the browser is not in dark mode");
        for (name, path) in [
            ("workspaces", "/".to_owned()),
            ("workspace", format!("/workspaces/{id}")),
            ("new", "/new".to_owned()),
            ("org", "/org".to_owned()),
            ("admin", "/admin".to_owned()),
        ] {
            b.goto(&c.url(&path)).await.unwrap();
            wait_for(&b, "the page", "return document.readyState", |s| {
                s == "complete"
            })
            .await;
            let facts = b
                .execute(
                    "return [document.documentElement.scrollWidth, window.innerWidth, getComputedStyle(document.body).backgroundColor]",
                    vec![],
                )
                .await
                .unwrap();
            save_artifacts(&b, &format!("phone-dark-{name}")).await;
            let (scroll, width) = (facts[0].as_u64().unwrap(), facts[1].as_u64().unwrap());
            assert!(
                scroll <= width,
                "{path} scrolls sideways on a phone: {scroll} px of content in {width} px"
            );
            assert_eq!(facts[2], "rgb(18, 20, 23)", "{path} is not dark");
        }
        // On the list, the running workspace's Stop button is on screen, not scrolled away
        // inside a table; links are readable on the dark background.
        b.goto(&c.url("/")).await.unwrap();
        let stop = b
            .execute(
                &format!("var b = document.querySelector('form[action=\"/workspaces/{id}/stop\"] button'); var r = b.getBoundingClientRect(); var a = getComputedStyle(document.querySelector('td a')).color; return [r.left, r.right, window.innerWidth, a]"),
                vec![],
            )
            .await
            .unwrap();
        let (left, right, width) = (
            stop[0].as_f64().unwrap(),
            stop[1].as_f64().unwrap(),
            stop[2].as_f64().unwrap(),
        );
        assert!(
            left >= 0.0 && right <= width,
            "Stop is off screen on a phone: {stop}"
        );
        assert_ne!(
            stop[3], "rgb(0, 0, 238)",
            "links keep the browser's default blue on dark"
        );
        // Keyboard: the first Tab on the new-workspace page lands on a control with a visible
        // focus ring.
        b.goto(&c.url("/new")).await.unwrap();
        b.find(Locator::Css("body"))
            .await
            .unwrap()
            .send_keys("\u{E004}")
            .await
            .unwrap();
        let focus = b
            .execute(
                "var e = document.activeElement; return [e.tagName, getComputedStyle(e).outlineStyle]",
                vec![],
            )
            .await
            .unwrap();
        assert_ne!(focus[0], "BODY", "Tab focused nothing");
        assert_ne!(
            focus[1], "none",
            "the focused {} shows no focus ring",
            focus[0]
        );
    };
    let failed = scenario(&b, "phone", Duration::from_secs(120), result).await;
    let _ = b.close().await;
    drop(driver);
    c.stop().await;
    if let Some(failure) = failed {
        std::panic::resume_unwind(failure);
    }
}
