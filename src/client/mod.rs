//! The command-line API client: `devcell login` saves a cell URL and an API token (file mode
//! 0600 under the user's config directory); `devcell ws ...` uses them. `DEVCELL_URL` and
//! `DEVCELL_TOKEN` override the saved values.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

#[derive(Args, Debug, Clone)]
pub struct OutputArg {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum WsCmd {
    /// List your workspaces.
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Create a workspace from one or more repositories.
    Create {
        /// Repository URL, optionally with `#branch`; repeat for several repositories.
        #[arg(long = "repo", required = true)]
        repos: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        /// Class name or id.
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        image: Option<String>,
        /// Organization id (default: your first).
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one workspace.
    Get {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a workspace.
    Delete {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Start a workspace and wait until it runs (or fails).
    Start {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Stop a workspace and wait until it is stopped.
    Stop {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Restart a running workspace (stop, then start on the same files) and wait until it runs.
    Restart {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// The output of the workspace's tasks; with --follow, new output as it comes until the
    /// workspace stops.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// The workspace's ports: what listens, how they are shared, and their URLs.
    Ports {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print the workspace's page in the dashboard (and open it in a browser when there is one).
    Open { id: String },
    /// A shell in a running workspace, in this terminal (window size changes follow). The
    /// shell's exit ends it; a lost connection leaves the shell running for `--terminal`.
    Shell {
        id: String,
        /// Attach to this terminal again instead of opening a new one.
        #[arg(long)]
        terminal: Option<String>,
    },
    /// Run a command in a running workspace: `devcell ws exec ID -- CMD ARGS...`. Exits with the
    /// command's exit code.
    Exec {
        id: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        out: OutputArg,
    },
}

/// Prints rows as an aligned table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

mod shell;

#[derive(Serialize, Deserialize)]
struct Saved {
    url: Url,
    token: String,
}

fn credentials_path() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?)
            .join(".config"),
    };
    Ok(base.join("devcell").join("credentials.json"))
}

fn save(saved: &Saved) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = credentials_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(serde_json::to_string_pretty(saved)?.as_bytes())?;
    Ok(path)
}

fn load() -> Result<Saved> {
    let env_url = std::env::var("DEVCELL_URL").ok();
    let env_token = std::env::var("DEVCELL_TOKEN").ok();
    if let (Some(u), Some(t)) = (&env_url, &env_token) {
        return Ok(Saved {
            url: Url::parse(u).context("DEVCELL_URL")?,
            token: t.clone(),
        });
    }
    let path = credentials_path()?;
    let text = std::fs::read_to_string(&path)
        .map_err(|_| anyhow!("not logged in: run `devcell login URL` first"))?;
    let mut saved: Saved = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged; log in again", path.display()))?;
    if let Some(u) = env_url {
        saved.url = Url::parse(&u).context("DEVCELL_URL")?;
    }
    if let Some(t) = env_token {
        saved.token = t;
    }
    Ok(saved)
}

/// Turns an API error body into a readable error.
async fn check(res: reqwest::Response) -> Result<Value> {
    let status = res.status();
    let text = res.text().await?;
    if status.is_success() {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        return Ok(serde_json::from_str(&text)?);
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => bail!(
            "{} ({}): {}",
            v["code"].as_str().unwrap_or("error"),
            status.as_u16(),
            v["message"].as_str().unwrap_or(&text)
        ),
        Err(_) => bail!("{status}: {text}"),
    }
}

pub async fn login(
    url: Url,
    token: Option<String>,
    email: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let http = reqwest::Client::new();
    let token = match token {
        Some(t) => t,
        None => {
            let email = match email {
                Some(e) => e,
                None => prompt("Email: ")?,
            };
            let password = if password_stdin {
                read_line()?
            } else {
                prompt("Password: ")?
            };
            let res = http
                .post(url.join("api/v1/auth/login")?)
                .json(&json!({ "email": email, "password": password }))
                .send()
                .await?;
            let cookie = res
                .headers()
                .get(reqwest::header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(str::to_owned);
            let body = check(res).await?;
            let csrf = body["csrf_token"].as_str().unwrap_or_default().to_owned();
            let cookie = cookie.ok_or_else(|| anyhow!("the cell set no session cookie"))?;
            let host = hostname();
            let created = check(
                http.post(url.join("api/v1/tokens")?)
                    .header(reqwest::header::COOKIE, &cookie)
                    .header("x-csrf-token", csrf.as_str())
                    .json(&json!({ "name": format!("devcell CLI on {host}") }))
                    .send()
                    .await?,
            )
            .await?;
            created["token"]
                .as_str()
                .ok_or_else(|| anyhow!("no token in the answer"))?
                .to_owned()
        }
    };
    let me = check(
        http.get(url.join("api/v1/me")?)
            .bearer_auth(&token)
            .send()
            .await?,
    )
    .await?;
    let path = save(&Saved {
        url: url.clone(),
        token,
    })?;
    println!(
        "logged in to {url} as {}; credentials saved in {}",
        me["user"]["email"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this host".into())
}

fn read_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn prompt(p: &str) -> Result<String> {
    eprint!("{p}");
    std::io::stderr().flush()?;
    read_line()
}

fn ws_row(w: &Value) -> Vec<String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    vec![
        s(&w["id"]),
        s(&w["name"]),
        s(&w["phase"]),
        s(&w["repos"][0]["url"]),
        s(&w["created_at"]),
    ]
}

const WS_HEADERS: [&str; 5] = ["ID", "NAME", "PHASE", "REPOSITORY", "CREATED"];

/// Runs a workspace command; returns the exit code to leave with.
pub async fn ws(cmd: WsCmd) -> Result<i32> {
    let saved = load()?;
    let http = reqwest::Client::new();
    let api = |p: &str| saved.url.join(&format!("api/v1/{p}"));
    match cmd {
        WsCmd::List { out } => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut req = http
                    .get(api("workspaces")?)
                    .bearer_auth(&saved.token)
                    .query(&[("limit", "500")]);
                if let Some(c) = &cursor {
                    req = req.query(&[("cursor", c)]);
                }
                let page = check(req.send().await?).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            if out.json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print_table(&WS_HEADERS, &items.iter().map(ws_row).collect::<Vec<_>>());
            }
        }
        WsCmd::Create {
            repos,
            name,
            class,
            image,
            org,
            out,
        } => {
            let repos: Vec<Value> = repos
                .iter()
                .map(|r| match r.rsplit_once('#') {
                    Some((u, b)) => json!({ "url": u, "branch": b }),
                    None => json!({ "url": r }),
                })
                .collect();
            let body =
                json!({ "repos": repos, "name": name, "class": class, "image": image, "org": org });
            let w = check(
                http.post(api("workspaces")?)
                    .bearer_auth(&saved.token)
                    .json(&body)
                    .send()
                    .await?,
            )
            .await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&w)?);
            } else {
                print_table(&WS_HEADERS, &[ws_row(&w)]);
            }
        }
        WsCmd::Get { id, out } => {
            let w = get_json(&http, &saved, &format!("workspaces/{id}")).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&w)?);
            } else {
                let s = |v: &Value| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                };
                let mut rows = vec![
                    vec!["id".into(), s(&w["id"])],
                    vec!["name".into(), s(&w["name"])],
                    vec!["phase".into(), s(&w["phase"])],
                    vec!["desired".into(), s(&w["desired"])],
                    vec!["class".into(), s(&w["class_id"])],
                    vec!["timeout".into(), format!("{}s", w["timeout_s"])],
                    vec!["created".into(), s(&w["created_at"])],
                ];
                for r in w["repos"].as_array().cloned().unwrap_or_default() {
                    let b = r["branch"]
                        .as_str()
                        .map(|b| format!(" ({b})"))
                        .unwrap_or_default();
                    rows.push(vec!["repository".into(), format!("{}{b}", s(&r["url"]))]);
                }
                print_table(&["FIELD", "VALUE"], &rows);
            }
        }
        WsCmd::Delete { id, out } => {
            check(
                http.delete(api(&format!("workspaces/{id}"))?)
                    .bearer_auth(&saved.token)
                    .send()
                    .await?,
            )
            .await?;
            if out.json {
                println!("{}", json!({ "deleted": id }));
            } else {
                println!("deleted {id}");
            }
        }
        WsCmd::Start { id, out } => {
            return change(
                &http,
                &saved,
                &id,
                "start",
                &["running", "failed"],
                out.json,
            )
            .await;
        }
        WsCmd::Stop { id, out } => {
            change(&http, &saved, &id, "stop", &["stopped", "failed"], out.json).await?;
        }
        WsCmd::Restart { id, out } => {
            return change(
                &http,
                &saved,
                &id,
                "restart",
                &["running", "failed"],
                out.json,
            )
            .await;
        }
        WsCmd::Logs { id, follow } => {
            let mut seen: Vec<String> = Vec::new();
            loop {
                let tasks = get_json(&http, &saved, &format!("workspaces/{id}/tasks")).await?;
                let tasks = tasks.as_array().cloned().unwrap_or_default();
                let several = tasks.len() > 1;
                for (i, t) in tasks.iter().enumerate() {
                    let log = t["log"].as_str().unwrap_or("");
                    if seen.len() <= i {
                        seen.push(String::new());
                        if several || !follow {
                            println!(
                                "== {} ({}) ==",
                                t["name"].as_str().unwrap_or("task"),
                                t["state"].as_str().unwrap_or("?")
                            );
                        }
                    }
                    print!("{}", new_output(&seen[i], log));
                    seen[i] = log.to_owned();
                }
                std::io::stdout().flush()?;
                if !follow {
                    break;
                }
                let w = get_json(&http, &saved, &format!("workspaces/{id}")).await?;
                if w["phase"] != "running" && w["phase"] != "initializing" {
                    eprintln!("the workspace is {}", w["phase"].as_str().unwrap_or("?"));
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        WsCmd::Ports { id, out } => {
            let ports = get_json(&http, &saved, &format!("workspaces/{id}/ports")).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&ports)?);
            } else {
                let rows: Vec<Vec<String>> = ports
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        vec![
                            p["port"].to_string(),
                            p["configured"].as_str().unwrap_or("").to_owned(),
                            if p["listening"] == true { "yes" } else { "no" }.to_owned(),
                            p["visibility"].as_str().unwrap_or("").to_owned(),
                            p["url"].as_str().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    println!(
                        "nothing listens and no port is configured; start a server in the workspace"
                    );
                } else {
                    print_table(&["PORT", "NAME", "LISTENING", "SHARED WITH", "URL"], &rows);
                }
            }
        }
        WsCmd::Open { id } => {
            // The workspace must exist and be the caller's to see.
            get_json(&http, &saved, &format!("workspaces/{id}")).await?;
            let page = saved.url.join(&format!("workspaces/{id}"))?;
            println!("{page}");
            let graphical = std::env::var_os("DISPLAY").is_some()
                || std::env::var_os("WAYLAND_DISPLAY").is_some();
            if graphical {
                let opener = std::env::var("BROWSER").unwrap_or_else(|_| "xdg-open".into());
                let _ = std::process::Command::new(opener)
                    .arg(page.as_str())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
            }
        }
        WsCmd::Shell { id, terminal } => {
            return shell::shell(&http, &saved, &id, terminal.as_deref()).await;
        }
        WsCmd::Exec { id, command, out } => {
            let r = check(
                http.post(api(&format!("workspaces/{id}/exec"))?)
                    .bearer_auth(&saved.token)
                    .json(&json!({ "command": command }))
                    .send()
                    .await?,
            )
            .await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r["stdout"].as_str().unwrap_or(""));
                eprint!("{}", r["stderr"].as_str().unwrap_or(""));
            }
            return Ok(r["exit_code"].as_i64().map(|c| c as i32).unwrap_or(137));
        }
    }
    Ok(0)
}

/// `GET /api/v1/{path}` with the saved token, as JSON (an API error becomes the error).
async fn get_json(http: &reqwest::Client, saved: &Saved, path: &str) -> Result<Value> {
    let url = saved.url.join(&format!("api/v1/{path}"))?;
    check(http.get(url).bearer_auth(&saved.token).send().await?).await
}

/// What `now` adds to `before` (a task log's end, as the API shows it): the part after their
/// overlap, or all of `now` when the window moved past everything seen.
fn new_output<'a>(before: &str, now: &'a str) -> &'a str {
    if let Some(rest) = now.strip_prefix(before) {
        return rest;
    }
    // The window moved: find the longest end of `before` that starts `now`.
    let max = before.len().min(now.len());
    for len in (1..=max).rev() {
        let start = before.len() - len;
        if before.is_char_boundary(start)
            && now.is_char_boundary(len)
            && now.starts_with(&before[start..])
        {
            return &now[len..];
        }
    }
    now
}

/// Asks for a start, stop or restart, then waits for one of `until` and reports it; exit code 1
/// when the workspace failed.
async fn change(
    http: &reqwest::Client,
    saved: &Saved,
    id: &str,
    verb: &str,
    until: &[&str],
    json: bool,
) -> Result<i32> {
    let url = saved.url.join(&format!("api/v1/workspaces/{id}/{verb}"))?;
    check(http.post(url).bearer_auth(&saved.token).send().await?).await?;
    let w = wait_for_phase(
        http,
        &saved.url,
        &saved.token,
        id,
        until,
        std::time::Duration::from_secs(600),
    )
    .await?;
    report(&w, json)?;
    Ok(if w["phase"] == "failed" { 1 } else { 0 })
}

/// Follows the workspace's event stream (`GET /api/v1/workspaces/{id}/events`) until its
/// phase is one of `phases`, and returns the workspace as the API shows it: the answer comes
/// the moment the phase is reached, with no polling. Fails when the workspace is deleted, the
/// stream ends, or `within` passes.
pub async fn wait_for_phase(
    http: &reqwest::Client,
    base: &Url,
    token: &str,
    id: &str,
    phases: &[&str],
    within: std::time::Duration,
) -> Result<Value> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let url = base.join(&format!("api/v1/workspaces/{id}/events"))?;
    let mut phase = Value::Null;
    let follow = async {
        let res = http.get(url).bearer_auth(token).send().await?;
        if !res.status().is_success() {
            check(res).await?;
            bail!("the cell sent no event stream");
        }
        let mut events = res.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = event.context("reading the workspace's events")?;
            match event.event.as_str() {
                "workspace" => {
                    let w: Value = serde_json::from_str(&event.data)
                        .context("the cell sent a workspace that is not JSON")?;
                    if phases.iter().any(|p| w["phase"] == *p) {
                        return Ok(w);
                    }
                    phase = w["phase"].clone();
                }
                "deleted" => bail!("the workspace was deleted"),
                _ => {}
            }
        }
        bail!("the cell closed the workspace's event stream")
    };
    match tokio::time::timeout(within, follow).await {
        Ok(r) => r,
        Err(_) => bail!(
            "the workspace is still {phase} after {} s (waiting for {})",
            within.as_secs(),
            phases.join(" or ")
        ),
    }
}

fn report(w: &Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(w)?);
    } else {
        print_table(&WS_HEADERS, &[ws_row(w)]);
        if let Some(m) = w["message"].as_str() {
            println!("{m}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::new_output;

    #[test]
    fn followed_logs_print_each_line_once() {
        assert_eq!(new_output("", "a\nb\n"), "a\nb\n");
        assert_eq!(new_output("a\nb\n", "a\nb\nc\n"), "c\n");
        // The 64 KiB window moved on: only what follows the overlap is new.
        assert_eq!(new_output("a\nb\nc\n", "b\nc\nd\n"), "d\n");
        assert_eq!(new_output("a\nb\n", "a\nb\n"), "");
        assert_eq!(new_output("old\n", "new\n"), "new\n");
    }
}
