//! The lifecycle loops with real workspaces: inactivity timeouts and the maximum lifetime,
//! with warnings in the API and in the terminals. Time moves by a manual clock, never by
//! sleeping.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::harness::TestCell;
use crate::runtime::{START_WITHIN, attach, exec, read_until, running_workspace};

const MINUTE: Duration = Duration::from_secs(60);

fn fast_loops(c: &mut devcell::config::Config) {
    c.workers.timeouts_interval = Duration::from_millis(100);
}

fn stop_message(w: &Value) -> String {
    w["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|c| c["phase"] == "stopping")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn idle_workspaces_are_warned_then_stopped_and_activity_keeps_them_running() {
    let (c, clock) = TestCell::with_clock(fast_loops).await;
    let repos = tempfile::tempdir().unwrap();
    let id = running_workspace(&c, repos.path(), "idle").await;
    let w = c.workspace(&id).await;
    assert_eq!(w["stop_reason"], "inactivity", "{w:#}");
    let stops_at = OffsetDateTime::parse(
        w["stops_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expected = devcell::service::Clock::now(clock.as_ref()) + time::Duration::minutes(30);
    assert!(
        (stops_at - expected).abs() <= time::Duration::seconds(2),
        "{stops_at} vs {expected}"
    );
    assert!(w.get("stop_warning").is_none(), "{w:#}");

    // A terminal is open when the warning comes.
    let (s, t) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/terminals"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let mut term = attach(&c, t["attach"].as_str().unwrap(), &c.owner_token.clone()).await;

    // Half a minute past 26: the agent saw its start a moment after the clock read it.
    clock.advance(26 * MINUTE + Duration::from_secs(30));
    let w = c
        .wait_for(&id, "warned", |w| w.get("stop_warning").is_some())
        .await;
    let warning = w["stop_warning"].as_str().unwrap();
    assert!(
        warning.contains("stops in 4 minutes") && warning.contains("idle"),
        "{warning}"
    );
    read_until(&mut term, "[devcell] This workspace stops in 4 minutes").await;
    // The dashboard page says it too.
    let page = c.owner_page(&format!("/workspaces/{id}")).await;
    assert!(page.contains("This workspace stops in 4 minutes"), "{page}");
    // A page that cannot be shown says why in the dashboard's frame, with a way back.
    let (status, missing) = c
        .owner_page_status("/workspaces/ws_01m8k0qsnrqgw9zvxtksky62tw")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        missing.contains("workspace not found") && missing.contains("Back to your workspaces"),
        "{missing}"
    );
    // The new-workspace form offers only the classes the policy allows, to owners too.
    let org = c.org_id().await;
    let (_, classes) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/classes"), None)
        .await;
    let first = classes[0]["id"].as_str().unwrap().to_owned();
    let first_name = classes[0]["name"].as_str().unwrap().to_owned();
    let other_name = classes[1]["name"].as_str().unwrap().to_owned();
    let (s, p) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/policy"),
            Some(json!({ "allowed_classes": [first] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let new = c.owner_page("/new").await;
    assert!(
        new.contains(&format!("<option value=\"{first_name}\">"))
            && !new.contains(&format!("<option value=\"{other_name}\">")),
        "{new}"
    );
    // ... with the organization's timeout limits beside the timeout form.
    assert!(
        page.contains("Organization default 30 minutes; at most 480 minutes."),
        "{page}"
    );

    // Activity (an exec) moves the deadline: no stop at the old one, and no warning.
    exec(&c, &id, "true").await;
    clock.advance(5 * MINUTE);
    let w = c
        .wait_for(&id, "unwarned", |w| w.get("stop_warning").is_none())
        .await;
    assert_eq!(w["phase"], "running", "{w:#}");

    // Idle past the new deadline: stopped, and the history says why.
    clock.advance(31 * MINUTE);
    let w = c.wait_phase(&id, "stopped", START_WITHIN).await;
    assert_eq!(w["desired"], "stopped");
    assert_eq!(
        stop_message(&w),
        "stopped by the inactivity timeout: no activity for 30 min",
        "{w:#}"
    );
    assert!(w.get("stops_at").is_none(), "{w:#}");

    // The loop is on the admin loops table.
    let (s, loops) = c.owner(Method::GET, "/api/v1/admin/workers", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        loops.to_string().contains("timeouts"),
        "no timeouts loop in {loops}"
    );
}

#[tokio::test]
async fn the_maximum_lifetime_stops_even_a_busy_workspace() {
    let (c, clock) = TestCell::with_clock(fast_loops).await;
    let (_, orgs) = c.owner(Method::GET, "/api/v1/orgs", None).await;
    let org = orgs[0]["id"].as_str().unwrap().to_owned();
    let (s, p) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/policy"),
            Some(json!({ "max_lifetime_s": 3600, "max_timeout_s": 3600 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let repos = tempfile::tempdir().unwrap();
    let id = running_workspace(&c, repos.path(), "busy").await;
    // Busy every 20 minutes: the inactivity timeout never comes, the lifetime does.
    for _ in 0..2 {
        clock.advance(20 * MINUTE);
        exec(&c, &id, "true").await;
    }
    clock.advance(16 * MINUTE);
    let w = c
        .wait_for(&id, "warned about the lifetime", |w| {
            w.get("stop_warning").is_some()
        })
        .await;
    assert_eq!(w["stop_reason"], "max_lifetime", "{w:#}");
    assert!(
        w["stop_warning"]
            .as_str()
            .unwrap()
            .contains("maximum lifetime"),
        "{w:#}"
    );
    exec(&c, &id, "true").await;
    clock.advance(5 * MINUTE);
    let w = c.wait_phase(&id, "stopped", START_WITHIN).await;
    assert_eq!(
        stop_message(&w),
        "stopped at the maximum lifetime of 1 h",
        "{w:#}"
    );
}

#[tokio::test]
async fn a_cell_that_was_down_past_a_deadline_stops_the_workspace_when_it_starts() {
    let (c, clock) = TestCell::with_clock(fast_loops).await;
    let repos = tempfile::tempdir().unwrap();
    let id = running_workspace(&c, repos.path(), "down").await;
    let dir = c.stop_keep_data().await;
    // Two hours pass while the cell is down; the workspace kept running meanwhile.
    clock.advance(120 * MINUTE);
    let c = TestCell::restart_with(dir, fast_loops, Some(clock.clone())).await;
    let w = c.wait_phase(&id, "stopped", START_WITHIN).await;
    assert_eq!(
        stop_message(&w),
        "stopped by the inactivity timeout: no activity for 30 min",
        "{w:#}"
    );
}

#[tokio::test]
async fn failed_workspaces_do_not_count_toward_the_running_limit() {
    let c = TestCell::start_with_runtime().await;
    c.set_policy(json!({ "max_running_per_user": 1 })).await;
    let repos = tempfile::tempdir().unwrap();
    let missing = format!("file://{}/missing.git", repos.path().display());
    let failed =
        crate::runtime::create_started(&c, json!({ "repos": [{ "url": missing }], "start": true }))
            .await;
    c.wait_phase(&failed, "failed", START_WITHIN).await;
    // The one allowed running workspace is still free.
    let id = running_workspace(&c, repos.path(), "next").await;
    // A second start is over the limit, and says so.
    let bare = crate::runtime::bare_repo(repos.path(), "third", &[("a", "b")]);
    let (s, e) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "repos": [{ "url": format!("file://{}", bare.display()) }], "start": true })),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["code"], "too_many_running", "{e}");
    // Retrying the failed one is a start like any other: over the limit now.
    let (s, e) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{failed}/start"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    c.owner(Method::POST, &format!("/api/v1/workspaces/{id}/stop"), None)
        .await;
    c.stop().await;
}
