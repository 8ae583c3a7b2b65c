//! The dashboard's Leptos components, rendered to HTML on the server (no WebAssembly). This
//! crate never touches the store: pages receive plain view data from the `web` module.

use leptos::prelude::*;

/// xterm.js and its fit addon from npm, bundled at build time (see build.rs).
pub const XTERM_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.js"));
pub const XTERM_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.css"));
pub const XTERM_FIT_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/addon-fit.js"));

/// Who is looking at a page: the header's navigation and user menu come from it.
#[derive(Clone, Debug, Default)]
pub struct Viewer {
    pub email: String,
    pub csrf: String,
    /// A cell administrator: the header links to /admin.
    pub admin: bool,
    /// Owns an organization: the header links to its settings.
    pub owner: bool,
    /// What every page says at its top until it is dealt with (a certificate about to
    /// expire, a self-signed certificate).
    pub warnings: Vec<String>,
}

/// A moment as every page shows it: `text` is the server's rendering ("2026-12-05 12:54 UTC
/// (3 min ago)"), which the page's script replaces with the same format in the viewer's time
/// zone, keeping the relative part current.
#[derive(Clone, Debug, Default)]
pub struct When {
    /// RFC 3339.
    pub iso: String,
    pub text: String,
}

fn when(w: When) -> impl IntoView {
    view! { <time datetime=w.iso>{w.text}</time> }
}

fn when_or_dash(w: Option<When>) -> impl IntoView {
    match w {
        Some(w) => when(w).into_any(),
        None => view! { <span class="muted">"—"</span> }.into_any(),
    }
}

/// One workspace as the list shows it.
#[derive(Clone, Debug)]
pub struct WorkspaceRow {
    pub id: String,
    pub name: String,
    pub repo: String,
    pub phase: String,
    pub class: String,
    pub last_activity: When,
    /// When the timeout or lifetime will stop it (running workspaces).
    pub stops_at: Option<When>,
    /// Its owner asked for it to run.
    pub wanted_running: bool,
}

#[component]
fn Shell(
    title: String,
    #[prop(optional)] viewer: Option<Viewer>,
    #[prop(optional)] section: &'static str,
    /// Warnings for a page without a viewer (the sign-in page).
    #[prop(optional)]
    warnings: Vec<String>,
    children: Children,
) -> impl IntoView {
    let current = move |s: &str| (s == section).then_some("page");
    let mut warnings = warnings;
    if let Some(v) = &viewer {
        warnings.extend(v.warnings.iter().cloned());
    }
    view! {
        <header class="top">
            <a class="brand" href="/"><span class="logo" aria-hidden="true">"◧"</span>" devcell"</a>
            {viewer.map(|v| view! {
                <nav class="main" aria-label="Main">
                    <a href="/" aria-current=current("workspaces")>"Workspaces"</a>
                    {v.owner.then(|| view! { <a href="/org" aria-current=current("org")>"Organization"</a> })}
                    {v.admin.then(|| view! { <a href="/admin" aria-current=current("admin")>"Admin"</a> })}
                </nav>
                <details class="menu">
                    <summary aria-label="Account">{v.email.clone()}</summary>
                    <div class="menu-items">
                        <form method="post" action="/logout"><input type="hidden" name="_csrf" value=v.csrf.clone()/><button type="submit" class="plain">"Sign out"</button></form>
                        <form method="post" action="/logout-all"><input type="hidden" name="_csrf" value=v.csrf/><button type="submit" class="plain">"Sign out everywhere"</button></form>
                    </div>
                </details>
            })}
        </header>
        <main>
            {(!warnings.is_empty()).then(|| view! {
                <div class="cell-warnings" role="alert">
                    {warnings.into_iter().map(|w| view! { <p class="warning">{w}</p> }).collect_view()}
                </div>
            })}
            <h1>{title}</h1>
            {children()}
        </main>
    }
}

#[component]
fn Login(error: Option<String>, next: Option<String>, warnings: Vec<String>) -> impl IntoView {
    view! {
        <Shell title="Sign in".to_string() warnings=warnings>
            {error.map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <form method="post" action="/login" class="card">
                {next.map(|n| view! { <input type="hidden" name="next" value=n/> })}
                <label for="email">"Email"</label>
                <input id="email" name="email" type="email" autocomplete="username" required/>
                <label for="password">"Password"</label>
                <input id="password" name="password" type="password" autocomplete="current-password" required/>
                <button type="submit">"Sign in"</button>
            </form>
        </Shell>
    }
}

#[component]
fn Workspaces(viewer: Viewer, rows: Vec<WorkspaceRow>, more: Option<String>) -> impl IntoView {
    let empty = rows.is_empty();
    let csrf_rows = viewer.csrf.clone();
    view! {
        <Shell title="Workspaces".to_string() viewer=viewer section="workspaces">
            <div class="actions"><a href="/new" class="button primary">"New workspace"</a></div>
            {empty.then(|| view! {
                <div class="empty">
                    <p><strong>"No workspaces yet."</strong></p>
                    <p class="muted">"A workspace is a git repository ready to code in: a terminal, its tasks running and its ports shared. Create one from a repository URL with New workspace."</p>
                </div>
            })}
            <table class="workspaces" hidden=empty>
                <thead><tr><th>"Name"</th><th>"Repository"</th><th>"Class"</th><th>"State"</th><th>"Last activity"</th><th>"Stops"</th><th><span class="visually-hidden">"Actions"</span></th></tr></thead>
                <tbody data-live="list">
                    {rows.into_iter().map(|r| {
                        let (verb, label) = match (r.phase.as_str(), r.wanted_running) {
                            ("failed", _) => ("start", "Retry"),
                            (_, true) => ("stop", "Stop"),
                            _ => ("start", "Start"),
                        };
                        let action = format!("/workspaces/{}/{verb}", r.id);
                        let delete = format!("/workspaces/{}/delete", r.id);
                        let open = format!("/workspaces/{}", r.id);
                        let token = csrf_rows.clone();
                        let name_label = r.name.clone();
                        let phase = r.phase.clone();
                        view! {
                            <tr data-id=r.id.clone()>
                                <td><a href=open.clone()>{r.name}</a></td><td><code>{r.repo}</code></td><td data-label="Class">{r.class}</td>
                                <td class="phase" data-label="State"><span class=format!("badge {phase}")>{r.phase}</span></td><td data-label="Last activity">{when(r.last_activity)}</td><td data-label="Stops">{when_or_dash(r.stops_at)}</td>
                                <td class="actions">
                                    <a href=open class="button" aria-label=format!("Open {name_label}")>"Open"</a>
                                    <form method="post" action=action class="inline"><input type="hidden" name="_csrf" value=token/><button type="submit" aria-label=format!("{label} {name_label}")>{label}</button></form>
                                    <a href=delete class="button danger" aria-label=format!("Delete {name_label}")>"Delete"</a>
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
            {more.map(|href| view! { <p><a href=href rel="next">"Older workspaces →"</a></p> })}
        </Shell>
    }
}

/// What the invitation page needs to show.
#[derive(Clone, Debug)]
pub struct InviteView {
    pub org: String,
    pub role: String,
    /// Set when someone is already signed in: they join with one click.
    pub signed_in_as: Option<String>,
    pub csrf: String,
    pub error: Option<String>,
}

#[component]
fn Invite(v: InviteView) -> impl IntoView {
    let title = format!("Join {}", v.org);
    let intro = format!("You are invited to join {} as {}.", v.org, v.role);
    view! {
        <Shell title=title>
            <p>{intro}</p>
            {v.error.map(|e| view! { <p class="error" role="alert">{e}</p> })}
            {match v.signed_in_as {
                Some(who) => view! {
                    <form method="post" class="card">
                        <input type="hidden" name="_csrf" value=v.csrf/>
                        <p class="muted">"Signed in as " {who}</p>
                        <button type="submit">"Join"</button>
                    </form>
                }.into_any(),
                None => view! {
                    <form method="post" class="card">
                        <label for="name">"Your name"</label>
                        <input id="name" name="name" autocomplete="name" required/>
                        <label for="email">"Email"</label>
                        <input id="email" name="email" type="email" autocomplete="username" required/>
                        <label for="password">"Password (at least 10 characters)"</label>
                        <input id="password" name="password" type="password" autocomplete="new-password" minlength="10" required/>
                        <button type="submit">"Create account and join"</button>
                    </form>
                }.into_any(),
            }}
        </Shell>
    }
}

/// The page behind an invitation link.
pub fn invite_page(v: InviteView) -> String {
    let body = Owner::new().with(|| view! { <Invite v=v/> }.to_html());
    page("Invitation", body)
}

fn page(title: &str, body: String) -> String {
    page_with(
        title,
        body,
        "<script defer src=\"/assets/dashboard.js\"></script>",
    )
}

/// A page whose scripts talk to the API: the session's CSRF token goes in a meta tag.
fn live_page(title: &str, body: String, csrf: &str, terminal: bool) -> String {
    let csrf = csrf
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    let mut head = format!("<meta name=\"csrf-token\" content=\"{csrf}\">");
    if terminal {
        head.push_str("<link rel=\"stylesheet\" href=\"/assets/xterm.css\"><script src=\"/assets/xterm.js\"></script><script src=\"/assets/addon-fit.js\"></script>");
    }
    head.push_str("<script defer src=\"/assets/dashboard.js\"></script>");
    page_with(title, body, &head)
}

fn page_with(title: &str, body: String, head: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title} · devcell</title><link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\"><link rel=\"stylesheet\" href=\"/assets/style.css\">{head}</head><body>{body}</body></html>"
    )
}

/// One workspace, as its page shows it.
#[derive(Clone, Debug)]
pub struct WorkspaceView {
    pub viewer: Viewer,
    pub id: String,
    pub name: String,
    pub phase: String,
    pub desired: String,
    pub message: Option<String>,
    pub repos: Vec<String>,
    /// (phase, time, message) newest first.
    pub history: Vec<(String, When, String)>,
    /// (index, name, state, log tail)
    pub tasks: Vec<(usize, String, String, String)>,
    /// (port, name, listening, visibility, url)
    pub ports: Vec<(u16, String, bool, String, String)>,
    pub git: Vec<GitView>,
    pub timeout_min: u64,
    /// The organization's bounds: (default, maximum) in minutes, and whether users may change it.
    pub timeout_limits: (u64, u64, bool),
    /// When the workspace stops by itself, and why ("if idle", "maximum lifetime").
    pub stops_at: Option<(When, String)>,
    /// The warning shown shortly before a timeout stops the workspace.
    pub stop_warning: Option<String>,
    /// Snapshots, newest first.
    pub backups: Vec<BackupView>,
    /// What is true of its backup now, in a sentence.
    pub backup_state: String,
    /// Restoring needs a stopped workspace.
    pub can_restore: bool,
}

#[derive(Clone, Debug)]
pub struct BackupView {
    pub id: String,
    pub taken_at: When,
    pub trigger: String,
    pub files: u64,
    pub size: String,
}

/// What a workspace page leads with: the page reloads when this changes.
pub fn workspace_mode(phase: &str) -> &'static str {
    match phase {
        "running" => "running",
        "stopped" => "stopped",
        "failed" => "failed",
        _ => "busy",
    }
}

fn post_button(
    action: String,
    csrf: String,
    label: &'static str,
    class: &'static str,
) -> impl IntoView {
    view! { <form method="post" action=action class="inline"><input type="hidden" name="_csrf" value=csrf/><button type="submit" class=class>{label}</button></form> }
}

#[component]
fn WorkspaceDetail(v: WorkspaceView) -> impl IntoView {
    let id = v.id.clone();
    let csrf = v.viewer.csrf.clone();
    let start = format!("/workspaces/{id}/start");
    let stop = format!("/workspaces/{id}/stop");
    let restart = format!("/workspaces/{id}/restart");
    let delete = format!("/workspaces/{id}/delete");
    let mode = workspace_mode(&v.phase);
    let running = mode == "running";
    // An image build is shown while it runs (the workspace is still being created) and
    // after it failed the start, so its output can be read where the failure is.
    let building = v.tasks.iter().any(|(_, name, _, _)| name == "image build")
        && matches!(v.phase.as_str(), "creating" | "failed");
    let tasks_live = running || v.phase == "initializing" || building;
    let no_ports = v.ports.is_empty();
    let no_backups = v.backups.is_empty();
    let task_sig = v
        .tasks
        .iter()
        .map(|(i, name, _, _)| format!("{i}:{name}"))
        .fold(format!("{tasks_live}"), |sig, t| sig + "|" + &t);
    let (stops, stop_reason) = match v.stops_at {
        Some((w, why)) => (Some(w), why),
        None => (None, String::new()),
    };
    let lead = match mode {
        "running" => view! {
            <p class="muted">"Stops "<span id="stops-at">{when_or_dash(stops)}</span>" ("<span id="stop-reason">{stop_reason}</span>")"</p>
            <div class="actions">
                {post_button(stop, csrf.clone(), "Stop", "")}
                <form method="post" action=restart class="inline"><input type="hidden" name="_csrf" value=csrf.clone()/><button type="submit" title="Stop (saving git state and a backup) and start again with fresh tasks and terminals">"Restart"</button></form>
            </div>
            <div id="terminal-tabs" class="tabs" role="tablist"><button type="button" id="new-terminal">"+ New terminal"</button></div>
            <div id="terminal" class="terminal" aria-label="Terminal"></div>
        }.into_any(),
        "stopped" => view! {
            <div class="panel" id="state-panel">
                <p><strong>"This workspace is stopped."</strong>" Its files are kept. Start it to get a terminal, run its tasks and open its ports."</p>
                <div class="actions">{post_button(start, csrf.clone(), "Start", "primary")}<a class="button danger" href=delete.clone()>"Delete…"</a></div>
            </div>
        }.into_any(),
        "failed" => view! {
            <div class="panel bad" id="state-panel" role="alert">
                <p><strong>"It did not start: "</strong><span id="message">{v.message.clone().unwrap_or_else(|| "no reason was recorded".into())}</span></p>
                <p class="muted">"Its files are kept. Fix what the message names (the repository's address, its access, the class) and retry, or delete it."</p>
                <div class="actions">{post_button(start, csrf.clone(), "Retry", "primary")}<a class="button danger" href=delete.clone()>"Delete…"</a></div>
            </div>
        }.into_any(),
        _ => {
            let doing = if v.phase == "stopping" {
                "Stopping: saving its git state and a backup."
            } else {
                "Starting: the terminal opens as soon as it runs."
            };
            view! {
                <div class="panel" id="state-panel" role="status">
                    <p><span class="spinner" aria-hidden="true"></span><strong>{doing}</strong></p>
                    {(v.desired == "running").then(|| view! { <div class="actions">{post_button(stop.clone(), csrf.clone(), "Stop", "")}</div> })}
                </div>
            }.into_any()
        }
    };
    view! {
        <Shell title=v.name.clone() viewer=v.viewer.clone() section="workspaces">
            <section data-workspace=id.clone() data-mode=mode>
                <p class="status-line">
                    <span id="phase" class=format!("badge {}", v.phase)>{v.phase.clone()}</span>
                    {v.repos.into_iter().map(|r| view! { <code class="repo">{r}</code> }).collect_view()}
                </p>
                <p class="warning" id="stop-warning" role="status" hidden=v.stop_warning.is_none()>{v.stop_warning.clone()}</p>
                // Swapped in live when the state changes (the signature), never while a
                // terminal is open in it.
                <div data-live="lead" data-sig=mode>{lead}</div>
                <div data-live="ports">
                {running.then(|| view! {
                    <h2>"Ports"</h2>
                    {no_ports.then(|| view! { <p class="muted">"No port is configured and nothing listens yet. Start a server in the terminal (on 0.0.0.0 or localhost) and it shows here."</p> })}
                    <table class="ports" hidden=no_ports><tbody>
                    {v.ports.into_iter().map(|(port, name, listening, visibility, url)| {
                        let action = format!("/workspaces/{id}/ports/{port}");
                        let token = csrf.clone();
                        view! { <tr data-port=port.to_string()><td><strong>{port.to_string()}</strong>" "<span class="muted">{name}</span></td>
                            <td>{if listening { view! { <a class="button" href=url target="_blank" rel="noopener noreferrer">"Open ↗"</a> }.into_any() } else { view! { <span class="muted">"waiting for a server"</span> }.into_any() }}</td>
                            <td><form method="post" action=action class="inline"><input type="hidden" name="_csrf" value=token/>
                                <label>"Visible to " <select name="visibility">
                                    <option value="private" selected=visibility == "private">"only me"</option>
                                    <option value="org" selected=visibility == "org">"my organization"</option>
                                    <option value="public" selected=visibility == "public">"anyone with the link"</option>
                                </select></label><button type="submit">"Share"</button></form></td></tr> }
                    }).collect_view()}
                    </tbody></table>
                })}
                </div>
                // Replaced live only when the task list itself changes (logs stream on their own).
                <div data-live="tasks" data-sig=task_sig>
                {tasks_live.then(|| view! {
                    <h2>"Tasks"</h2>
                    {v.tasks.is_empty().then(|| view! { <p class="muted">"The repository's configuration (.gitpod.yml or devcontainer.json) names no tasks."</p> })}
                    {v.tasks.into_iter().map(|(i, name, state, log)| view! {
                        <details open=true><summary>{name}" — " <span data-task-state=i.to_string()>{state}</span></summary><pre class="log" data-task-log=i.to_string()>{log}</pre></details>
                    }).collect_view()}
                })}
                </div>
                <h2>"Backups"</h2>
                <div data-live="backups">
                <p id="backup-state">{v.backup_state}</p>
                <table class="backups" hidden=no_backups><thead><tr><th>"Taken"</th><th>"Why"</th><th>"Contents"</th><th><span class="visually-hidden">"Actions"</span></th></tr></thead><tbody>
                {v.backups.into_iter().map(|b| {
                    let download = format!("/api/v1/workspaces/{id}/backups/{}/archive", b.id);
                    let restore = format!("/workspaces/{id}/backups/{}/restore", b.id);
                    let token = csrf.clone();
                    let short = b.id.chars().take(8).collect::<String>();
                    view! { <tr data-snapshot=b.id.clone()><td>{when(b.taken_at)}" "<code class="muted">{short}</code></td><td>{b.trigger}</td><td>{b.files.to_string()}" files, "{b.size}</td>
                        <td class="actions"><a class="button" href=download download="">"Download"</a>
                        {v.can_restore.then(|| view! { <form method="post" action=restore class="inline"><input type="hidden" name="_csrf" value=token/><button type="submit">"Restore"</button></form> })}</td></tr> }
                }).collect_view()}
                </tbody></table>
                </div>
                <h2>"Git"</h2>
                <div data-live="git">
                {v.git.is_empty().then(|| view! { <p class="muted">"Uncommitted and unpushed work is recorded each time the workspace stops."</p> })}
                {git_list(v.git)}
                </div>
                <h2>"Timeout"</h2>
                <form method="post" action=format!("/workspaces/{id}/timeout") class="inline">
                    <input type="hidden" name="_csrf" value=csrf.clone()/>
                    <label for="timeout_min">"Stop after inactivity of (minutes) "</label>
                    <input id="timeout_min" name="timeout_min" type="number" min="1" max=v.timeout_limits.1.to_string() value=v.timeout_min.to_string() disabled=!v.timeout_limits.2 aria-describedby="timeout-limits"/>
                    <button type="submit" disabled=!v.timeout_limits.2>"Set"</button>
                </form>
                <p id="timeout-limits" class="muted">{if v.timeout_limits.2 {
                    format!("Organization default {} minutes; at most {} minutes.", v.timeout_limits.0, v.timeout_limits.1)
                } else {
                    format!("An owner fixed the timeout at {} minutes.", v.timeout_limits.0)
                }}</p>
                <h2>"Timeline"</h2>
                <ol class="timeline" data-live="timeline" reversed=true>{v.history.into_iter().map(|(p, at, m)| view! { <li><span class=format!("badge {p}")>{p.clone()}</span>" " {when(at)}" " <span class="muted">{m}</span></li> }).collect_view()}</ol>
                {(mode != "stopped" && mode != "failed").then(|| view! { <p class="danger-zone"><a class="button danger" href=delete>"Delete…"</a></p> })}
            </section>
        </Shell>
    }
}

/// A workspace: what state it is in and what helps now (its terminal once it runs).
pub fn workspace_page(v: WorkspaceView) -> String {
    let (title, csrf) = (v.name.clone(), v.viewer.csrf.clone());
    let body = Owner::new().with(|| view! { <WorkspaceDetail v=v/> }.to_html());
    live_page(&title, body, &csrf, true)
}

/// What the new-workspace form shows: the values entered so far and, after a refused
/// submission, the error beside the field it is about (`field` one of repo, branch, more,
/// class, image; anything else goes above the form).
#[derive(Clone, Debug, Default)]
pub struct NewWorkspaceView {
    pub viewer: Viewer,
    /// (name, name with its sizes), the default first.
    pub classes: Vec<(String, String)>,
    pub repo: String,
    pub branch: String,
    pub more: String,
    pub class: String,
    pub image: String,
    pub error: Option<(String, String)>,
}

#[component]
fn NewWorkspace(v: NewWorkspaceView) -> impl IntoView {
    let message = |field: &str| {
        v.error
            .as_ref()
            .filter(|(f, _)| f == field)
            .map(|(_, m)| (field.to_owned(), m.clone()))
    };
    let [repo_e, branch_e, more_e, class_e, image_e] =
        ["repo", "branch", "more", "class", "image"].map(message);
    let at = |e: Option<(String, String)>| {
        e.map(|(f, m)| view! { <p class="error" role="alert" id=format!("{f}-error")>{m}</p> })
    };
    let fields = ["repo", "branch", "more", "class", "image"];
    let general = v
        .error
        .as_ref()
        .filter(|(f, _)| !fields.contains(&f.as_str()))
        .map(|(_, m)| view! { <p class="error" role="alert">{m.clone()}</p> });
    let chosen = v.class.clone();
    view! {
        <Shell title="New workspace".to_string() viewer=v.viewer.clone() section="workspaces">
            {general}
            <form method="post" action="/new" class="card">
                <input type="hidden" name="_csrf" value=v.viewer.csrf.clone()/>
                <label for="repo">"Repository URL"</label>
                <input id="repo" name="repo" required placeholder="https://github.com/team/app.git" value=v.repo.clone()/>
                {at(repo_e)}
                <label for="branch">"Branch (optional)"</label>
                <input id="branch" name="branch" value=v.branch.clone()/>
                {at(branch_e)}
                <label for="more">"More repositories (optional)"</label>
                <small id="more-hint">"One URL per line; add #branch after a URL for a branch other than its default."</small>
                <textarea id="more" name="more" rows="2" aria-describedby="more-hint">{v.more.clone()}</textarea>
                {at(more_e)}
                <label for="class">"Class"</label>
                <select id="class" name="class">{v.classes.iter().map(|(c, label)| view! { <option value=c.clone() selected=*c == chosen>{label.clone()}</option> }).collect_view()}</select>
                {at(class_e)}
                <label for="image">"Image (optional; default: the repository's, else the host's tools)"</label>
                <input id="image" name="image" placeholder="registry.example.com/team/dev:latest" value=v.image.clone()/>
                {at(image_e)}
                <div class="actions"><button type="submit" class="primary">"Create and start"</button><a class="button" href="/">"Cancel"</a></div>
            </form>
        </Shell>
    }
}

/// The form that creates (and starts) a workspace.
pub fn new_workspace_page(v: NewWorkspaceView) -> String {
    let body = Owner::new().with(|| view! { <NewWorkspace v=v/> }.to_html());
    page("New workspace", body)
}

/// The sign-in page, with an error message after a failed attempt.
/// A page that says what went wrong, in the same frame as every other page, with a way back.
/// A page saying why something was refused, with the way back to where the user was.
pub fn error_page(
    title: &str,
    message: String,
    back: &str,
    back_label: &str,
    warnings: Vec<String>,
) -> String {
    let title = title.to_owned();
    let (back, back_label) = (back.to_owned(), back_label.to_owned());
    let body = Owner::new().with(|| {
        view! {
            <Shell title=title.clone() warnings=warnings>
                <p class="error" role="alert">{message}</p>
                <p><a href=back>{back_label}</a></p>
            </Shell>
        }
        .to_html()
    });
    page(&title, body)
}

pub fn login_page(error: Option<String>) -> String {
    login_page_to(error, None, Vec::new())
}

/// The sign-in page that goes on to `next` (a path on the dashboard) once signed in, with the
/// cell's warnings for everyone (a self-signed certificate) at its top.
pub fn login_page_to(error: Option<String>, next: Option<String>, warnings: Vec<String>) -> String {
    let body =
        Owner::new().with(|| view! { <Login error=error next=next warnings=warnings/> }.to_html());
    page("Sign in", body)
}

/// The signed-in user's workspaces.
/// `more`: the link to the next page of workspaces, when there is one.
pub fn workspaces_page(viewer: Viewer, rows: Vec<WorkspaceRow>, more: Option<String>) -> String {
    let token = viewer.csrf.clone();
    let body =
        Owner::new().with(|| view! { <Workspaces viewer=viewer rows=rows more=more/> }.to_html());
    live_page("Workspaces", body, &token, false)
}

/// An organization's settings as its owners see them.
/// A workspace class as the organization page edits it.
#[derive(Clone, Debug, Default)]
pub struct ClassView {
    pub id: String,
    pub name: String,
    pub cpu_cores: String,
    pub memory_gib: String,
    pub disk_gib: String,
    pub max_processes: u32,
    pub is_default: bool,
}

/// The cells of one class row; the inputs belong to the form `form` (a row cannot hold a form).
fn class_fields(c: ClassView, form: String) -> impl IntoView {
    view! {
        <td><input form=form.clone() name="name" value=c.name aria-label="Name" required size="10"/></td>
        <td><input form=form.clone() name="cpu_cores" value=c.cpu_cores aria-label="CPU cores" inputmode="decimal" size="4"/></td>
        <td><input form=form.clone() name="memory_gib" value=c.memory_gib aria-label="Memory (GiB)" inputmode="decimal" size="4"/></td>
        <td><input form=form.clone() name="disk_gib" value=c.disk_gib aria-label="Disk (GiB)" inputmode="decimal" size="5"/></td>
        <td><input form=form.clone() name="max_processes" value=c.max_processes.to_string() aria-label="Processes" inputmode="numeric" size="5"/></td>
        <td><label><input form=form type="checkbox" name="is_default" checked=c.is_default/>" default"</label></td>
    }
}

#[derive(Clone, Debug, Default)]
pub struct OrgView {
    pub viewer: Viewer,
    pub name: String,
    /// (user id, email, role, is the viewer)
    pub members: Vec<(String, String, String, bool)>,
    pub classes: Vec<ClassView>,
    pub default_timeout_min: u64,
    pub max_timeout_min: u64,
    pub users_can_extend: bool,
    pub max_lifetime_h: u64,
    pub max_running_per_user: u32,
    pub outbound_network: bool,
    /// Ids of the classes members may use; empty: all.
    pub allowed_classes: Vec<String>,
    pub backup_keep_last: u32,
    pub backup_keep_within_days: u64,
    pub deleted_backup_grace_days: u64,
    /// Empty: stopped workspaces are kept forever.
    pub dormancy_days: String,
    pub backup_home: bool,
    /// Pending invitations: (id, role, expires).
    pub invitations: Vec<(String, String, When)>,
    /// A fresh invitation link to show once.
    pub new_invitation: Option<String>,
    /// Deleted workspaces, newest first: (name, when, why, what its repositories held).
    pub deleted: Vec<(String, When, String, String)>,
    /// A refusal to show above everything.
    pub message: Option<String>,
}

#[component]
fn OrgSettings(v: OrgView) -> impl IntoView {
    let csrf = v.viewer.csrf.clone();
    let owners = v.members.iter().filter(|m| m.2 == "owner").count();
    let class_choices: Vec<(String, String, bool)> = v
        .classes
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                c.name.clone(),
                v.allowed_classes.is_empty() || v.allowed_classes.contains(&c.id),
            )
        })
        .collect();
    view! {
        <Shell title=v.name.clone() viewer=v.viewer.clone() section="org">
            {v.message.map(|m| view! { <p class="error" role="alert">{m}</p> })}
            <h2>"Members"</h2>
            <table class="members"><thead><tr><th>"Email"</th><th>"Role"</th><th><span class="visually-hidden">"Actions"</span></th></tr></thead><tbody>
                {v.members.into_iter().map(|(id, email, role, me)| {
                    let action = format!("/org/members/{id}/role");
                    let remove = format!("/org/members/{id}/remove");
                    let other = if role == "owner" { "member" } else { "owner" };
                    let label = format!("Make {other}");
                    let row = email.clone();
                    let csrf2 = csrf.clone();
                    let csrf = csrf.clone();
                    // The last owner cannot step down, and nobody removes themselves here.
                    let may_change = !(me && role == "owner" && owners <= 1);
                    let who = email.clone();
                    view! { <tr data-member=row><td>{email}{me.then(|| view! { " " <span class="muted">"(you)"</span> })}</td><td>{role}</td><td class="actions">
                        {may_change.then(|| view! { <form method="post" action=action class="inline"><input type="hidden" name="_csrf" value=csrf/><input type="hidden" name="role" value=other/><button type="submit">{label}</button></form> })}
                        {(!me).then(|| view! {
                            <details class="confirm"><summary class="button danger">"Remove…"</summary>
                                <div class="confirm-body">
                                    <p>"Their workspaces in this organization stop (files kept) and their open terminals close. You can then delete those workspaces or give them to another member."</p>
                                    <form method="post" action=remove class="inline"><input type="hidden" name="_csrf" value=csrf2/><button type="submit" class="danger">{format!("Remove {who}")}</button></form>
                                </div>
                            </details>
                        })}
                    </td></tr> }
                }).collect_view()}
            </tbody></table>
            <form method="post" action="/org/invite" class="inline">
                <input type="hidden" name="_csrf" value=csrf.clone()/>
                <label for="invite-role">"Invite as "</label>
                <select id="invite-role" name="role"><option value="member">"member"</option><option value="owner">"owner"</option></select>
                <button type="submit" class="primary">"Create invitation link"</button>
            </form>
            {v.new_invitation.map(|l| view! { <p class="invite">"Send this one-time link: " <code id="invitation-link">{l}</code></p> })}
            {(!v.invitations.is_empty()).then(|| view! { <h3>"Pending invitations"</h3> })}
            <table class="invitations"><tbody>
                {v.invitations.into_iter().map(|(id, role, expires)| {
                    let action = format!("/org/invitations/{id}/revoke");
                    let csrf = csrf.clone();
                    view! { <tr data-invitation=id.clone()><td>{format!("as {role}")}</td><td>"expires "{when(expires)}</td>
                        <td><form method="post" action=action class="inline"><input type="hidden" name="_csrf" value=csrf/><button type="submit">"Revoke"</button></form></td></tr> }
                }).collect_view()}
            </tbody></table>
            <h2>"Workspace classes"</h2>
            <table class="classes"><thead><tr><th>"Class"</th><th>"CPU cores"</th><th>"Memory (GiB)"</th><th>"Disk (GiB)"</th><th>"Processes"</th><th></th><th></th></tr></thead><tbody>
                {v.classes.into_iter().map(|c| {
                    let form = format!("class-{}", c.id);
                    let action = format!("/org/classes/{}", c.id);
                    let token = v.viewer.csrf.clone();
                    let row = c.id.clone();
                    let delete = format!("/org/classes/{}/delete", c.id);
                    let delete_label = format!("Delete the class {}", c.name);
                    let token2 = v.viewer.csrf.clone();
                    view! { <tr data-class=row>
                        <td hidden><form id=form.clone() method="post" action=action><input type="hidden" name="_csrf" value=token/></form></td>
                        {class_fields(c, form.clone())}
                        <td><button type="submit" form=form>"Save"</button></td>
                        <td><form method="post" action=delete class="inline"><input type="hidden" name="_csrf" value=token2/><button type="submit" class="danger" aria-label=delete_label>"Delete"</button></form></td></tr> }
                }).collect_view()}
                <tr data-class="new">
                    <td hidden><form id="class-new" method="post" action="/org/classes"><input type="hidden" name="_csrf" value=v.viewer.csrf.clone()/></form></td>
                    {class_fields(ClassView { cpu_cores: "2".into(), memory_gib: "4".into(), disk_gib: "20".into(), max_processes: 1024, ..Default::default() }, "class-new".into())}
                    <td><button type="submit" form="class-new" class="primary">"Add class"</button></td></tr>
            </tbody></table>
            <h2>"Policy"</h2>
            <form method="post" action="/org/policy" class="card policy">
                <input type="hidden" name="_csrf" value=csrf.clone()/>
                <label for="default_timeout_min">"Inactivity timeout (minutes)"</label>
                <input aria-describedby="default_timeout_min-hint" id="default_timeout_min" name="default_timeout_min" type="number" min="1" value=v.default_timeout_min.to_string()/>
                <small id="default_timeout_min-hint">"A workspace with no terminal input, port traffic or commands for this long is stopped."</small>
                <label for="max_timeout_min">"Longest timeout members may choose (minutes)"</label>
                <input aria-describedby="max_timeout_min-hint" id="max_timeout_min" name="max_timeout_min" type="number" min="1" value=v.max_timeout_min.to_string()/>
                <small id="max_timeout_min-hint">"Members can extend their own timeout up to this."</small>
                <label><input aria-describedby="users_can_extend-hint" name="users_can_extend" type="checkbox" checked=v.users_can_extend/>" Members may change their timeout"</label>
                <small id="users_can_extend-hint">"Unchecked locks every workspace to the default timeout."</small>
                <label for="max_lifetime_h">"Maximum lifetime (hours)"</label>
                <input aria-describedby="max_lifetime_h-hint" id="max_lifetime_h" name="max_lifetime_h" type="number" min="1" value=v.max_lifetime_h.to_string()/>
                <small id="max_lifetime_h-hint">"A workspace is stopped after running this long, active or not."</small>
                <label for="max_running_per_user">"Running workspaces per member"</label>
                <input aria-describedby="max_running_per_user-hint" id="max_running_per_user" name="max_running_per_user" type="number" min="1" value=v.max_running_per_user.to_string()/>
                <small id="max_running_per_user-hint">"Starting one more is refused with a clear message."</small>
                <label><input aria-describedby="outbound_network-hint" name="outbound_network" type="checkbox" checked=v.outbound_network/>" Outbound network access"</label>
                <small id="outbound_network-hint">"Off: workspaces reach nothing outside themselves."</small>
                <fieldset class="allowed"><legend>"Classes members may use"</legend>
                    {class_choices.into_iter().map(|(id, name, on)| view! {
                        <label><input type="checkbox" name="allowed" value=id checked=on/>" " {name}</label>
                    }).collect_view()}
                </fieldset>
                <small>"New workspaces offer only these; leaving all checked lets new classes in too."</small>
                <label for="backup_keep_last">"Backups always kept per workspace"</label>
                <input aria-describedby="backup_keep_last-hint" id="backup_keep_last" name="backup_keep_last" type="number" min="1" value=v.backup_keep_last.to_string()/>
                <small id="backup_keep_last-hint">"The newest this many snapshots stay, however old."</small>
                <label for="backup_keep_within_days">"Also keep backups younger than (days)"</label>
                <input aria-describedby="backup_keep_within_days-hint" id="backup_keep_within_days" name="backup_keep_within_days" type="number" min="0" value=v.backup_keep_within_days.to_string()/>
                <small id="backup_keep_within_days-hint">"Older snapshots beyond the kept number are forgotten and their space pruned."</small>
                <label for="deleted_backup_grace_days">"Backups of deleted workspaces stay for (days)"</label>
                <input aria-describedby="deleted_backup_grace_days-hint" id="deleted_backup_grace_days" name="deleted_backup_grace_days" type="number" min="0" value=v.deleted_backup_grace_days.to_string()/>
                <small id="deleted_backup_grace_days-hint">"A mistaken delete can be undone from the backup until then."</small>
                <label for="dormancy_days">"Delete workspaces stopped for longer than (days)"</label>
                <input aria-describedby="dormancy_days-hint" id="dormancy_days" name="dormancy_days" type="number" min="1" placeholder="never" value=v.dormancy_days.clone()/>
                <small id="dormancy_days-hint">"Empty keeps stopped workspaces forever; their git state is kept in the record of deletions."</small>
                <label><input aria-describedby="backup_home-hint" name="backup_home" type="checkbox" checked=v.backup_home/>" Back up home directories"</label>
                <small id="backup_home-hint">"Off: only /workspace (the repositories) is backed up."</small>
                <button type="submit" class="primary">"Save policy"</button>
            </form>
            {(!v.deleted.is_empty()).then(|| view! {
                <h2 id="deleted">"Deleted workspaces"</h2>
                <p class="hint">"What each held when it went, recorded before anything was deleted."</p>
                <table class="deleted"><thead><tr><th>"Workspace"</th><th>"Deleted"</th><th>"Why"</th><th>"Its repositories then"</th></tr></thead><tbody>
                    {v.deleted.into_iter().map(|(name, at, why, git)| view! {
                        <tr><td>{name}</td><td>{when(at)}</td><td>{why}</td><td>{git}</td></tr>
                    }).collect_view()}
                </tbody></table>
            })}
        </Shell>
    }
}

/// The organization page (owners only; the server checks).
pub fn org_page(v: OrgView) -> String {
    let title = v.name.clone();
    let body = Owner::new().with(|| view! { <OrgSettings v=v/> }.to_html());
    page(&title, body)
}

/// One background loop on the admin page.
#[derive(Clone, Debug)]
pub struct LoopRow {
    pub name: String,
    pub state: String,
    pub last_run: Option<When>,
    pub next_run: Option<When>,
    pub last_error: String,
}

/// One section of the admin page: an anchor, a title and its facts. Each capability of the
/// cell (backups now; TLS, updates and the rest as they arrive) brings its own.
#[derive(Clone, Debug)]
pub struct AdminSection {
    pub id: String,
    pub title: String,
    pub facts: Vec<(String, String)>,
}

/// The admin page's updates section.
#[derive(Clone, Debug, Default)]
pub struct UpdatesView {
    /// The running version.
    pub running: String,
    /// The channel URL, or what the cell does without one.
    pub channel: String,
    /// The channel is set: "Check now" can look.
    pub has_channel: bool,
    /// The newest release seen, described.
    pub newest: Option<String>,
    /// A release waiting for an owner's approval: its version.
    pub waiting: Option<String>,
    /// What the last action did (shown once): whether it went well, and what to say.
    pub message: Option<(bool, String)>,
    pub history: Vec<UpdateRow>,
}

/// One update in the history.
#[derive(Clone, Debug)]
pub struct UpdateRow {
    pub started: When,
    pub versions: String,
    /// `applying`, `applied`, `rolled_back` or `failed`.
    pub outcome: String,
    pub message: String,
}

#[component]
fn Updates(u: UpdatesView, csrf: String) -> impl IntoView {
    let (csrf2, csrf3) = (csrf.clone(), csrf.clone());
    view! {
        <section id="updates" data-section="updates">
            <h2>"Updates"</h2>
            {u.message.map(|(ok, m)| if ok {
                view! { <p class="panel" role="status">{m}</p> }.into_any()
            } else {
                view! { <p class="error" role="alert">{m}</p> }.into_any()
            })}
            // Follows an update as it goes: the running version, the waiting release, the history.
            <div data-live="updates">
                <dl class="facts">
                    <dt>"Running"</dt><dd>{format!("devcell {}", u.running)}</dd>
                    <dt>"Channel"</dt><dd>{u.channel}</dd>
                    <dt>"Newest release seen"</dt><dd>{u.newest.unwrap_or_else(|| "none yet".into())}</dd>
                </dl>
                {u.waiting.map(|v| { let label = format!("Approve and apply {v}"); view! {
                    <form method="post" action="/admin/updates/approve" class="card">
                        <p>{format!("devcell {v} waits for your approval: it is an infrastructure release or a new major version. Check what it changes, then apply it; the previous binary comes back if it does not start.")}</p>
                        <input type="hidden" name="_csrf" value=csrf.clone()/>
                        <input type="hidden" name="version" value=v/>
                        <button type="submit" class="primary">{label}</button>
                    </form>
                } })}
                {if u.history.is_empty() {
                    view! { <p class="empty">"No update applied yet. Releases come from the channel, or upload a bundle below."</p> }.into_any()
                } else {
                    view! {
                        <table class="updates"><thead><tr><th>"Started"</th><th>"Versions"</th><th>"Outcome"</th><th>"What happened"</th></tr></thead><tbody>
                            {u.history.into_iter().map(|r| { let o = r.outcome.clone(); view! {
                                <tr data-outcome=o><td>{when(r.started)}</td><td>{r.versions}</td><td>{r.outcome.replace('_', " ")}</td><td>{r.message}</td></tr>
                            } }).collect_view()}
                        </tbody></table>
                    }.into_any()
                }}
            </div>
            {u.has_channel.then(|| view! {
                <form method="post" action="/admin/updates/check" class="actions">
                    <input type="hidden" name="_csrf" value=csrf2/>
                    <button type="submit">"Check for a release now"</button>
                </form>
            })}
            <form method="post" action="/admin/updates/bundle" enctype="multipart/form-data" class="card">
                <input type="hidden" name="_csrf" value=csrf3/>
                <label for="bundle">"Offline bundle (.tar or .tar.zst, from " <code>"devcell bundle build"</code> ")"</label>
                <input id="bundle" name="bundle" type="file" accept=".tar,.zst,.tar.zst" required/>
                <small>"Everything in it is checked before anything changes; then it applies as a release from the channel would."</small>
                <button type="submit" class="primary">"Upload and apply"</button>
            </form>
        </section>
    }
}

#[component]
fn Admin(
    viewer: Viewer,
    sections: Vec<AdminSection>,
    updates: UpdatesView,
    loops: Vec<LoopRow>,
) -> impl IntoView {
    let csrf = viewer.csrf.clone();
    let index: Vec<(String, String)> = sections
        .iter()
        .map(|s| (format!("#{}", s.id), s.title.clone()))
        .collect();
    view! {
        <Shell title="Admin".to_string() viewer=viewer section="admin">
            <nav class="sections" aria-label="Admin sections">
                {index.into_iter().map(|(href, title)| view! { <a href=href>{title}</a>" " }).collect_view()}
                <a href="#updates">"Updates"</a>" "
                <a href="#loops">"Loops"</a>
            </nav>
            {sections.into_iter().map(|s| view! {
                <section id=s.id.clone() data-section=s.id>
                    <h2>{s.title}</h2>
                    <dl class="facts">{s.facts.into_iter().map(|(k, v)| view! { <dt>{k}</dt><dd>{v}</dd> }).collect_view()}</dl>
                </section>
            }).collect_view()}
            <Updates u=updates csrf=csrf/>
            <section id="loops" data-section="loops">
                <h2>"Loops"</h2>
                <table class="loops"><thead><tr><th>"Loop"</th><th>"State"</th><th>"Last run"</th><th>"Next run"</th><th>"Last error"</th></tr></thead><tbody>
                    {loops.into_iter().map(|l| { let key = l.name.clone(); view! { <tr data-loop=key><td>{l.name}</td><td>{l.state}</td><td>{when_or_dash(l.last_run)}</td><td>{when_or_dash(l.next_run)}</td><td>{l.last_error}</td></tr> } }).collect_view()}
                </tbody></table>
            </section>
        </Shell>
    }
}

/// The admin page (owners only; the server checks).
pub fn admin_page(
    viewer: Viewer,
    sections: Vec<AdminSection>,
    updates: UpdatesView,
    loops: Vec<LoopRow>,
) -> String {
    let body = Owner::new().with(|| {
        view! { <Admin viewer=viewer sections=sections updates=updates loops=loops/> }.to_html()
    });
    page("Admin", body)
}

/// Git state of one repository, as recorded at the last stop.
#[derive(Clone, Debug, Default)]
pub struct GitView {
    pub dir: String,
    pub branch: String,
    pub uncommitted: Vec<String>,
    pub untracked: Vec<String>,
    pub unpushed: Vec<String>,
}

fn git_list(git: Vec<GitView>) -> impl IntoView {
    git.into_iter()
        .map(|g| {
            let clean = g.uncommitted.is_empty() && g.untracked.is_empty() && g.unpushed.is_empty();
            let key = g.dir.clone();
            view! {
                <div class="git" data-dir=key>
                    <h3><code>{g.dir}</code>" " {g.branch}</h3>
                    {clean.then(|| view! { <p>"Everything is committed and pushed."</p> })}
                    {(!g.uncommitted.is_empty()).then(|| view! { <p class="warn">"Uncommitted changes: " {g.uncommitted.join(", ")}</p> })}
                    {(!g.untracked.is_empty()).then(|| view! { <p class="warn">"Untracked files: " {g.untracked.join(", ")}</p> })}
                    {(!g.unpushed.is_empty()).then(|| view! { <p class="warn">"Unpushed commits: " {g.unpushed.join("; ")}</p> })}
                </div>
            }
        })
        .collect_view()
}

#[component]
fn ConfirmDelete(
    viewer: Viewer,
    id: String,
    name: String,
    running: bool,
    git: Vec<GitView>,
) -> impl IntoView {
    let action = format!("/workspaces/{id}/delete");
    let keep = format!("/workspaces/{id}");
    let known = !git.is_empty();
    view! {
        <Shell title=format!("Delete {name}?") viewer=viewer.clone() section="workspaces">
            {running.then(|| view! { <p class="warn">"It is running: deleting stops it, backs its files up, then removes it."</p> })}
            {(!known).then(|| view! { <p>"Its repositories' git state is unknown (its files are only in the backup, or were never cloned)."</p> })}
            {git_list(git)}
            <form method="post" action=action class="actions">
                <input type="hidden" name="_csrf" value=viewer.csrf.clone()/>
                <button type="submit" class="danger">"Delete it and its files"</button>
                <a class="button" href=keep>"Keep it"</a>
            </form>
        </Shell>
    }
}

/// The confirmation before a delete, naming unpushed and uncommitted work.
pub fn confirm_delete_page(
    viewer: Viewer,
    id: String,
    name: String,
    running: bool,
    git: Vec<GitView>,
) -> String {
    let body = Owner::new().with(|| {
        view! { <ConfirmDelete viewer=viewer id=id name=name running=running git=git/> }.to_html()
    });
    page("Delete workspace", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspaces_page_lists_rows_and_escapes_text() {
        let html = workspaces_page(
            Viewer {
                email: "ann@example.com".into(),
                csrf: "tok".into(),
                ..Default::default()
            },
            vec![WorkspaceRow {
                id: "ws_1".into(),
                name: "<app>".into(),
                repo: "https://x/y".into(),
                phase: "stopped".into(),
                class: "small".into(),
                last_activity: When {
                    iso: "2026-11-29T10:00:00Z".into(),
                    text: "2026-11-29 10:00 UTC (6 days ago)".into(),
                },
                stops_at: None,
                wanted_running: false,
            }],
            None,
        );
        assert!(html.contains("&lt;app&gt;"), "{html}");
        assert!(html.contains("stopped"));
        assert!(html.contains("name=\"_csrf\""));
        assert!(!html.contains("<app>"));
        assert!(
            html.contains("<time datetime=\"2026-11-29T10:00:00Z\">"),
            "times carry their instant for the viewer's time zone: {html}"
        );
        // The header names who is signed in and offers the way out; no admin link for a member.
        assert!(html.contains("ann@example.com") && html.contains("action=\"/logout\""));
        assert!(!html.contains("href=\"/admin\""), "{html}");
        assert!(
            !html.contains("rel=\"next\""),
            "a last page links to no next one"
        );
        // Every action says which workspace it acts on, for screen readers.
        assert!(html.contains("aria-label=\"Delete &lt;app&gt;\""), "{html}");
    }

    #[test]
    fn a_full_workspaces_page_links_to_the_next() {
        let html = workspaces_page(Viewer::default(), vec![], Some("/?after=ws_9".into()));
        assert!(
            html.contains("href=\"/?after=ws_9\" rel=\"next\""),
            "{html}"
        );
    }

    fn workspace(phase: &str, message: Option<&str>) -> WorkspaceView {
        WorkspaceView {
            viewer: Viewer {
                email: "ann@example.com".into(),
                csrf: "tok".into(),
                admin: true,
                owner: true,
                warnings: Vec::new(),
            },
            id: "ws_1".into(),
            name: "app".into(),
            phase: phase.into(),
            desired: if phase == "running" {
                "running"
            } else {
                "stopped"
            }
            .into(),
            message: message.map(str::to_owned),
            repos: vec!["https://x/y".into()],
            history: vec![],
            tasks: vec![],
            ports: vec![],
            git: vec![],
            timeout_min: 30,
            timeout_limits: (30, 480, true),
            stops_at: None,
            stop_warning: None,
            backups: vec![],
            backup_state: "No backup yet".into(),
            can_restore: phase != "running",
        }
    }

    #[test]
    fn a_workspace_page_leads_with_what_helps_in_its_state() {
        let running = workspace_page(workspace("running", None));
        assert!(running.contains("id=\"terminal\"") && running.contains("/workspaces/ws_1/stop"));
        assert!(
            running.contains("href=\"/admin\""),
            "administrators see Admin"
        );

        let stopped = workspace_page(workspace("stopped", None));
        assert!(
            !stopped.contains("id=\"terminal\""),
            "no empty terminal: {stopped}"
        );
        assert!(!stopped.contains("new-terminal"), "{stopped}");
        assert!(stopped.contains("This workspace is stopped."));
        assert!(stopped.contains("action=\"/workspaces/ws_1/start\""));
        assert!(stopped.contains("href=\"/workspaces/ws_1/delete\""));

        let failed = workspace_page(workspace("failed", Some("repository not found: x")));
        assert!(failed.contains("repository not found: x"), "{failed}");
        assert!(failed.contains(">Retry<") && failed.contains("/workspaces/ws_1/start"));
        assert!(failed.contains("href=\"/workspaces/ws_1/delete\""));
        assert!(
            !failed.contains("/workspaces/ws_1/stop"),
            "a failed workspace is not stopped again"
        );
        assert!(!failed.contains("id=\"terminal\""));
    }

    #[test]
    fn login_page_shows_the_error() {
        let html = login_page(Some("wrong email or password".into()));
        assert!(html.contains("wrong email or password"));
        assert!(html.contains("action=\"/login\""));
    }
}
