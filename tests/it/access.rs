//! Access ends when it should: a removed member, a revoked token, a sign-out everywhere each
//! close what the caller still had open (terminals, event streams) within seconds; creating
//! organizations and the cell's administration are a cell role of their own; class sizes stay
//! within the cell's limits; wrong passwords from one address lock out nobody else.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{OWNER_EMAIL, OWNER_PASSWORD, TestCell};
use crate::runtime::{START_WITHIN, Ws, attach, bare_repo, read_until};

/// Waits for the terminal to be closed by the cell and returns the close code it gave.
async fn closed_within(ws: &mut Ws, within: Duration) -> Option<u16> {
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("the terminal was still open after {within:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A terminal opened in one step, with `auth` as the `authorization` or `cookie` header.
async fn open_terminal(c: &TestCell, id: &str, header: (&'static str, &str)) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!(
        "{}/api/v1/workspaces/{id}/terminals/new?cols=80&rows=24",
        c.url.replace("http://", "ws://")
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert(header.0, header.1.parse().unwrap());
    let mut ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
    ws.send(Message::Binary("echo term-''works\n".into()))
        .await
        .unwrap();
    read_until(&mut ws, "term-works").await;
    ws
}

#[tokio::test]
async fn removing_a_member_stops_their_workspaces_and_closes_what_they_had_open() {
    use eventsource_stream::Eventsource;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "team", &[("README.md", "team\n")]);
    let (addr, server) = crate::content::serve_git_http(repos.path().to_owned()).await;
    let c = crate::content::cell_trusting_git_at(addr).await;
    let org = c.org_id().await;
    let (member, token) = c.add_user("leaver@example.com", "member").await;
    let as_member = |m: Method, path: String, body: Option<Value>| {
        let c = &c;
        let token = token.clone();
        async move { c.call(m, &path, Some(&token), body).await }
    };
    let (s, cred) = as_member(
        Method::POST,
        "/api/v1/git-credentials".into(),
        Some(json!({ "host": addr.to_string(), "username": crate::content::USER, "token": crate::content::TOKEN })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{cred}");
    let url = format!(
        "http://{addr}/{}",
        bare.file_name().unwrap().to_string_lossy()
    );
    let (s, ws) = as_member(
        Method::POST,
        "/api/v1/workspaces".into(),
        Some(json!({ "repos": [{ "url": url }], "start": true })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    let id = ws["id"].as_str().unwrap().to_owned();
    c.wait_phase(&id, "running", START_WITHIN).await;

    // What the member has open: a terminal and the workspace's event stream.
    let mut term = open_terminal(&c, &id, ("authorization", &format!("Bearer {token}"))).await;
    let mut events = c
        .http
        .get(c.url(&format!("/api/v1/workspaces/{id}/events")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes_stream()
        .eventsource();
    let first = tokio::time::timeout(START_WITHIN, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.event, "workspace");

    let removed_at = Instant::now();
    let (s, b) = c
        .owner(
            Method::DELETE,
            &format!("/api/v1/orgs/{org}/members/{member}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");

    // The terminal closes within seconds, saying why.
    assert_eq!(
        closed_within(&mut term, Duration::from_secs(5)).await,
        Some(devcell::api::ACCESS_ENDED)
    );
    // The event stream ends (events about the stop may come first, none after the end).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(e)) = events.next().await {
            assert_ne!(e.event, "deleted", "{e:?}");
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream was still open 5 s after the removal"
    );
    assert!(removed_at.elapsed() < Duration::from_secs(10));

    // Nothing of the workspace answers the removed member any more.
    for (m, path, body) in [
        (Method::GET, format!("/api/v1/workspaces/{id}"), None),
        (Method::POST, format!("/api/v1/workspaces/{id}/start"), None),
        (
            Method::POST,
            format!("/api/v1/workspaces/{id}/exec"),
            Some(json!({ "command": ["true"] })),
        ),
        (
            Method::POST,
            format!("/api/v1/workspaces/{id}/backups"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/workspaces/{id}/terminals"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/api/v1/workspaces/{id}"), None),
    ] {
        let (s, b) = as_member(m.clone(), path.clone(), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path}: {b}");
    }
    let (_, list) = as_member(Method::GET, "/api/v1/workspaces".into(), None).await;
    assert_eq!(list["items"], json!([]), "{list}");

    // The workspace stops as any stop does: snapshotted first, its files kept.
    let ws = c.wait_phase(&id, "stopped", START_WITHIN).await;
    assert_eq!(ws["desired"], "stopped", "{ws:#}");
    let ws = c
        .wait_for(&id, "a snapshot", |w| {
            w["backups"].as_array().is_some_and(|s| !s.is_empty())
        })
        .await;
    assert_eq!(ws["git"][0]["uncommitted"], json!([]), "{ws:#}");

    // The organization's owners decide: here the workspace goes to the owner, who starts it
    // on the files the member left.
    let (_, me) = c.owner(Method::GET, "/api/v1/me", None).await;
    let (s, b) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/transfer"),
            Some(json!({ "owner": member })),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_a_member")),
        "a former member cannot be given the workspace: {b}"
    );
    let (s, moved) = c
        .owner(
            Method::POST,
            &format!("/api/v1/workspaces/{id}/transfer"),
            Some(json!({ "owner": me["user"]["id"] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{moved}");
    assert_eq!(moved["owner_id"], me["user"]["id"]);
    let (_, mine) = c.owner(Method::GET, "/api/v1/workspaces", None).await;
    assert!(mine.to_string().contains(&id), "{mine}");
    c.owner(
        Method::POST,
        &format!("/api/v1/workspaces/{id}/start"),
        None,
    )
    .await;
    c.wait_phase(&id, "running", START_WITHIN).await;
    let out = crate::runtime::exec(&c, &id, "cat README.md").await;
    assert_eq!(out["stdout"], "team\n", "{out}");
    c.stop().await;
    server.abort();
}

#[tokio::test]
async fn open_terminals_close_when_their_token_is_revoked_or_their_session_ends() {
    let c = TestCell::start_with_runtime().await;
    let repos = tempfile::tempdir().unwrap();
    let id = crate::runtime::running_workspace(&c, repos.path(), "creds").await;
    let (s, t) = c
        .owner(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "laptop" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let token = t["token"].as_str().unwrap().to_owned();
    let mut by_token = open_terminal(&c, &id, ("authorization", &format!("Bearer {token}"))).await;
    // A terminal on the owner's standing token stays open through all of this.
    let mut standing = attach(
        &c,
        &format!("/api/v1/workspaces/{id}/terminals/new"),
        &c.owner_token,
    )
    .await;

    let (s, b) = c
        .owner(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", t["info"]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(
        closed_within(&mut by_token, Duration::from_secs(5)).await,
        Some(devcell::api::ACCESS_ENDED)
    );

    // A browser's terminal closes when its user signs out everywhere.
    let owner = c.cell().find_user(Some(OWNER_EMAIL)).unwrap();
    let (cookie, csrf) = c.session(&owner.id).await;
    let mut by_session = open_terminal(&c, &id, ("cookie", &cookie)).await;
    let res = c
        .http
        .post(c.url("/api/v1/auth/logout-all"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        closed_within(&mut by_session, Duration::from_secs(5)).await,
        Some(devcell::api::ACCESS_ENDED)
    );

    standing
        .send(Message::Binary("echo still-''here\n".into()))
        .await
        .unwrap();
    read_until(&mut standing, "still-here").await;
    c.stop().await;
}

#[tokio::test]
async fn organizations_and_the_cells_administration_are_for_cell_administrators() {
    let c = TestCell::start().await;
    let (member, token) = c.add_user("climber@example.com", "member").await;
    let big = json!({ "name": "huge", "cpu_millis": 1000, "memory_bytes": 1u64 << 40,
        "disk_bytes": 16u64 << 40, "max_processes": 4096 });

    // A member cannot make themselves an owner of a new organization, nor see the admin pages.
    let (s, b) = c
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(&token),
            Some(json!({ "name": "Mine" })),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{b}"
    );
    for path in [
        "/api/v1/admin/cell",
        "/api/v1/admin/workers",
        "/api/v1/admin/users",
    ] {
        let (s, b) = c.call(Method::GET, path, Some(&token), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {b}");
    }
    let (s, _) = c
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/users/{member}"),
            Some(&token),
            Some(json!({ "is_admin": true })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Even the owner of an organization cannot define a class beyond the cell's limits.
    let org = c.org_id().await;
    let (s, b) = c
        .owner(
            Method::POST,
            &format!("/api/v1/orgs/{org}/classes"),
            Some(big.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("memory_bytes")
            && b["message"]
                .as_str()
                .unwrap()
                .contains("most a class may have"),
        "{b}"
    );

    // An administrator makes the member one; they then see the administration. The last
    // administrator cannot be removed.
    let (s, u) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/admin/users/{member}"),
            Some(json!({ "is_admin": true })),
        )
        .await;
    assert_eq!(
        (s, u["is_admin"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{u}"
    );
    let (s, _) = c
        .call(Method::GET, "/api/v1/admin/cell", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = c
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(&token),
            Some(json!({ "name": "Theirs" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (_, users) = c.owner(Method::GET, "/api/v1/admin/users", None).await;
    let owner_id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == OWNER_EMAIL)
        .unwrap()["id"]
        .clone();
    let (s, _) = c
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/users/{member}"),
            Some(&token),
            Some(json!({ "is_admin": false })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/admin/users/{}", owner_id.as_str().unwrap()),
            Some(json!({ "is_admin": false })),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_admin")),
        "{b}"
    );
    // No longer an administrator, owning an organization gives no way back in.
    let (s, _) = c
        .call(Method::GET, "/api/v1/admin/cell", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    c.stop().await;

    // The operator may let members create organizations; they own those, and no more.
    let c = TestCell::start_with(|cfg| cfg.auth.members_create_orgs = true, None).await;
    let (_, token) = c.add_user("founder@example.com", "member").await;
    let (s, org) = c
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(&token),
            Some(json!({ "name": "Side" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{org}");
    let side = org["id"].as_str().unwrap();
    let (s, b) = c
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{side}/classes"),
            Some(&token),
            Some(big),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, _) = c
        .call(Method::GET, "/api/v1/admin/cell", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    c.stop().await;
}

/// A login attempt from `from` (a loopback address other than 127.0.0.1 is another client).
async fn login_from(c: &TestCell, from: [u8; 4], password: &str) -> StatusCode {
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap();
    http.post(c.url("/api/v1/auth/login"))
        .json(&json!({ "email": OWNER_EMAIL, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn wrong_passwords_slow_their_sender_without_locking_the_owner_out() {
    let c = TestCell::start_with(|cfg| cfg.auth.login_attempts_per_minute = 3, None).await;
    let attacker = [127, 0, 0, 2];
    for _ in 0..3 {
        assert_eq!(
            login_from(&c, attacker, "guess guess guess").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // The guesser is slowed down, even with the right password...
    let res = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(attacker))
        .build()
        .unwrap()
        .post(c.url("/api/v1/auth/login"))
        .json(&json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "rate_limited");
    // ...while the owner, from their own address, signs in.
    assert_eq!(
        login_from(&c, [127, 0, 0, 1], OWNER_PASSWORD).await,
        StatusCode::OK
    );

    // Only many addresses together reach the account's ceiling (20 × 3 a minute)...
    let mut limited = 0;
    for i in 0..70u8 {
        if login_from(&c, [127, 0, 1, i], "guess guess guess").await
            == StatusCode::TOO_MANY_REQUESTS
        {
            limited += 1;
        }
    }
    assert!(
        limited >= 5,
        "the account's ceiling never held ({limited} refused)"
    );
    // ...and then the owner still gets in with `devcell admin login-link`.
    let owner = c.cell().find_user(Some(OWNER_EMAIL)).unwrap();
    let cookie = c.login_cookie(&owner.id).await;
    assert!(cookie.contains("devcell_session="), "{cookie}");
    c.stop().await;
}

#[tokio::test]
async fn metrics_need_their_token_when_one_is_set() {
    let c = TestCell::start().await;
    let res = c.http.get(c.url("/metrics")).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "loopback clients get /metrics"
    );
    c.stop().await;

    let c = TestCell::start_with(
        |cfg| cfg.server.metrics_token = Some(devcell::config::Secret::new("scrape-me")),
        None,
    )
    .await;
    let res = c.http.get(c.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = c
        .http
        .get(c.url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = c
        .http
        .get(c.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("devcell_"));
    c.stop().await;
}
