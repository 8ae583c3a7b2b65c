//! The JSON API as a client sees it: input errors, workspaces, sessions and CSRF, tokens,
//! invitations and roles, rate limiting, expiry, metrics.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::harness::{OWNER_EMAIL, OWNER_PASSWORD, TestCell, create_ws};

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn bad_input_gets_stable_error_codes() {
    let c = TestCell::start_with(|cfg| cfg.server.max_body_bytes = 4096, None).await;
    let t = c.owner_token.clone();
    let raw = |body: &'static str, ct: &'static str| {
        c.http
            .post(c.url("/api/v1/workspaces"))
            .bearer_auth(&t)
            .header(header::CONTENT_TYPE, ct)
            .body(body)
    };
    let decode = |r: reqwest::Response| async move {
        let s = r.status();
        (s, r.json::<Value>().await.unwrap())
    };

    let (s, b) = decode(
        raw("{\"repos\": [", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "malformed_json");

    let (s, b) = decode(raw("{}", "text/plain").send().await.unwrap()).await;
    assert_error(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let big = format!(
        "{{\"repos\":[{{\"url\":\"https://x.example/{}\"}}]}}",
        "a".repeat(10_000)
    );
    let r = c
        .http
        .post(c.url("/api/v1/workspaces"))
        .bearer_auth(&t)
        .header(header::CONTENT_TYPE, "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (s, b) = decode(r).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    let (s, b) = c.owner(Method::POST, "/api/v1/workspaces", Some(json!({ "repos": [{ "url": "https://git.example.com/a.git" }, { "url": "ftp://nope/x" }] }))).await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(b["field"], "repos[1].url");

    let (s, b) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "repos": [{ "url": "https://git.example.com/a.git" }], "class": "huge" })),
        )
        .await;
    // Well formed, but no class of the organization: a conflict with what the cell holds.
    assert_error(s, &b, StatusCode::CONFLICT, "unknown_class");
    assert_eq!(b["field"], "class");

    let (s, b) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "repos": [] })),
        )
        .await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(b["field"], "repos");

    let (s, b) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "repo": "x" })),
        )
        .await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");

    let (s, b) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(
                json!({ "repos": [{ "url": "https://git.example.com/a.git", "branch": "a..b" }] }),
            ),
        )
        .await;
    assert_eq!(b["field"], "repos[0].branch", "{s} {b}");

    let (s, b) = c.owner(Method::GET, "/api/v1/no-such-thing", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    let (s, b) = c.owner(Method::PUT, "/api/v1/workspaces", None).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    let (s, b) = c.call(Method::GET, "/api/v1/workspaces", None, None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");

    let (s, b) = c
        .call(Method::GET, "/api/v1/workspaces", Some("dct_forged"), None)
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");

    let (s, b) = c
        .owner(Method::GET, "/api/v1/workspaces/ws_notanid", None)
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    let (s, b) = c
        .owner(Method::GET, "/api/v1/workspaces?limit=abc", None)
        .await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");

    let (s, b) = c
        .owner(Method::GET, "/api/v1/workspaces?cursor=garbage", None)
        .await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(b["field"], "cursor");

    // Nothing above created anything.
    let (_, list) = c.owner(Method::GET, "/api/v1/workspaces", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    c.stop().await;
}

#[tokio::test]
async fn workspaces_are_created_listed_in_pages_updated_and_deleted() {
    let c = TestCell::start().await;
    let (s, ws) = c
        .owner(
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "name": "multi", "repos": [
                { "url": "https://git.example.com/team/api.git", "branch": "main" },
                { "url": "git@git.example.com:team/web.git" },
                { "url": "file:///tmp/git/tools" }
            ], "class": "medium", "timeout_s": 3600 })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    assert_eq!(ws["repos"].as_array().unwrap().len(), 3);
    assert_eq!(ws["repos"][0]["branch"], "main");
    assert_eq!(ws["timeout_s"], 3600);
    assert_eq!(
        ws["phase"], "stopped",
        "created without start: stopped at once"
    );
    assert_eq!(ws["desired"], "stopped");
    assert_eq!(ws["history"][0]["phase"], "pending");
    assert_eq!(ws["history"][1]["phase"], "stopped");
    let id = ws["id"].as_str().unwrap().to_owned();

    for _ in 0..6 {
        create_ws(&c, &c.owner_token).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/api/v1/workspaces?limit=3&cursor={cur}"),
            None => "/api/v1/workspaces?limit=3".into(),
        };
        let (s, page) = c.owner(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|w| w["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");
    assert_eq!(seen.last().unwrap(), &id);

    let (s, got) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["name"], "multi");

    let (s, upd) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/workspaces/{id}"),
            Some(json!({ "name": "renamed", "timeout_s": 7200 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{upd}");
    assert_eq!(upd["name"], "renamed");
    assert_eq!(upd["timeout_s"], 7200);

    // Beyond the policy's maximum (8 h by default).
    let (s, err) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/workspaces/{id}"),
            Some(json!({ "timeout_s": 86400 })),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "timeout_not_allowed");
    assert_eq!(err["field"], "timeout_s");

    let (s, _) = c
        .owner(Method::DELETE, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    c.stop().await;
}

#[tokio::test]
async fn members_cannot_touch_other_users_workspaces() {
    let c = TestCell::start().await;
    let owner_ws = create_ws(&c, &c.owner_token).await;
    let (_, member) = c.add_user("dev@example.com", "member").await;
    let mine = create_ws(&c, &member).await;

    for (m, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({ "name": "pwned" }))),
        (Method::DELETE, None),
    ] {
        let (s, b) = c
            .call(
                m.clone(),
                &format!("/api/v1/workspaces/{owner_ws}"),
                Some(&member),
                body,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {b}");
    }
    let (_, list) = c
        .call(Method::GET, "/api/v1/workspaces", Some(&member), None)
        .await;
    let ids: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);

    // Listing the whole organization is for owners.
    let org = c.org_id().await;
    let (s, _) = c
        .call(
            Method::GET,
            &format!("/api/v1/workspaces?org={org}"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, all) = c
        .owner(Method::GET, &format!("/api/v1/workspaces?org={org}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(all["items"].as_array().unwrap().len(), 2);

    // The owner's workspace is untouched.
    let (_, w) = c
        .owner(Method::GET, &format!("/api/v1/workspaces/{owner_ws}"), None)
        .await;
    assert_eq!(w["name"], "app");
    c.stop().await;
}

#[tokio::test]
async fn password_login_sets_a_safe_cookie_and_mutations_need_csrf() {
    let c = TestCell::start().await;
    let res = c
        .http
        .post(c.url("/api/v1/auth/login"))
        .json(&json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie_header = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie_header.contains("HttpOnly"), "{cookie_header}");
    assert!(cookie_header.contains("SameSite=Lax"), "{cookie_header}");
    assert!(
        !cookie_header.contains("Secure"),
        "plain-HTTP trial cookies cannot be Secure: {cookie_header}"
    );
    let cookie = cookie_header.split(';').next().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    let me: Value = c
        .http
        .get(c.url("/api/v1/me"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["email"], OWNER_EMAIL);
    assert_eq!(me["csrf_token"], csrf.as_str());

    let create = |csrf: Option<&str>| {
        let mut r = c
            .http
            .post(c.url("/api/v1/workspaces"))
            .header(header::COOKIE, &cookie)
            .json(&json!({ "repos": [{ "url": "https://git.example.com/a.git" }] }));
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        r
    };
    let r = create(None).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "csrf");
    let r = create(Some("wrong")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = create(Some(&csrf)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = c
        .http
        .post(c.url("/api/v1/auth/logout"))
        .header(header::COOKIE, &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .http
        .get(c.url("/api/v1/me"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let (s, b) = c
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "email": OWNER_EMAIL, "password": "wrong password" })),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_credentials"))
    );
    c.stop().await;
}

#[tokio::test]
async fn cookies_are_secure_behind_https() {
    let c = TestCell::start_with(
        |cfg| cfg.server.public_url = Some("https://cell.example.com/".parse().unwrap()),
        None,
    )
    .await;
    let res = c
        .http
        .post(c.url("/api/v1/auth/login"))
        .json(&json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD }))
        .send()
        .await
        .unwrap();
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    c.stop().await;
}

#[tokio::test]
async fn api_tokens_are_shown_once_and_can_be_revoked() {
    let c = TestCell::start().await;
    let (s, created) = c
        .owner(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "ci" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["info"]["id"].as_str().unwrap().to_owned();

    let (s, me) = c.call(Method::GET, "/api/v1/me", Some(&secret), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["user"]["email"], OWNER_EMAIL);

    let (_, list) = c.owner(Method::GET, "/api/v1/tokens", None).await;
    let text = list.to_string();
    assert!(text.contains("\"ci\""));
    assert!(!text.contains(&secret), "secrets are never listed");
    // Stored hashed: the secret appears nowhere in the database file.
    let db = std::fs::read(c.data_dir().join("devcell.redb")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));

    let (s, _) = c
        .owner(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c.call(Method::GET, "/api/v1/me", Some(&secret), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    c.stop().await;
}

#[tokio::test]
async fn invitations_roles_and_the_last_owner() {
    let c = TestCell::start().await;
    let org = c.org_id().await;
    let (member_id, member) = c.add_user("dev@example.com", "member").await;

    // The invitation link was single-use: the invitation list is empty again.
    let (_, invs) = c
        .owner(
            Method::GET,
            &format!("/api/v1/orgs/{org}/invitations"),
            None,
        )
        .await;
    assert_eq!(invs.as_array().unwrap().len(), 0);

    let (s, members) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/members"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(members.as_array().unwrap().len(), 2);

    // Members see the organization and its classes, not its settings.
    let (s, o) = c
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{org}"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!((s, o["role"].as_str()), (StatusCode::OK, Some("member")));
    let (s, _) = c
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{org}/policy"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, classes) = c
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{org}/classes"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(classes.as_array().unwrap().len(), 2);

    // Promote, then the original owner may step down; the last owner may not.
    let (s, m) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/members/{member_id}"),
            Some(json!({ "role": "owner" })),
        )
        .await;
    assert_eq!((s, m["role"].as_str()), (StatusCode::OK, Some("owner")));
    let owner_id = c
        .cell()
        .find_user(Some(OWNER_EMAIL))
        .unwrap()
        .id
        .to_string();
    let (s, _) = c
        .call(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/members/{owner_id}"),
            Some(&member),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = c
        .call(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/members/{member_id}"),
            Some(&member),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_owner"))
    );

    let (s, b) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/members/{member_id}"),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "the demoted owner is a member now: {b}"
    );
    c.stop().await;
}

#[tokio::test]
async fn one_time_links_work_once() {
    let c = TestCell::start().await;
    let owner = c.cell().find_user(None).unwrap();
    let link = c.cell().create_login_link(&owner.id).unwrap();
    let secret = link.rsplit('/').next().unwrap().to_owned();
    let (s, b) = c
        .call(
            Method::POST,
            "/api/v1/auth/link",
            None,
            Some(json!({ "token": secret })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = c
        .call(
            Method::POST,
            "/api/v1/auth/link",
            None,
            Some(json!({ "token": secret })),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::GONE, Some("link_invalid"))
    );

    // The dashboard route sets the cookie and lands on the workspaces page.
    let link = c.cell().create_login_link(&owner.id).unwrap();
    let res = c.http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = crate::harness::cookie_of(&res);
    let page = c
        .http
        .get(c.url("/"))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Workspaces") && page.contains(OWNER_EMAIL),
        "{page}"
    );
    c.stop().await;
}

#[tokio::test]
async fn expired_credentials_stop_working_and_the_loop_removes_them() {
    let c = TestCell::start_with(
        |cfg| cfg.workers.expiry_interval = Duration::from_millis(200),
        Some(std::sync::Arc::new(devcell::service::ManualClock::new(
            time::OffsetDateTime::now_utc(),
        ))),
    )
    .await;
    let clock = c.clock.clone().unwrap();
    let owner = c.cell().find_user(None).unwrap();
    let link = c.cell().create_login_link(&owner.id).unwrap();
    let (s, login) = c
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{login}");
    let count = || {
        c.cell()
            .store()
            .read(devcell::store::Reader::expirables)
            .unwrap()
            .len()
    };
    assert_eq!(count(), 2, "one session and one link");

    // A day later both have expired (link: 15 minutes, session: 12 hours).
    clock.advance(Duration::from_secs(86_400));
    let secret = link.rsplit('/').next().unwrap();
    let (s, _) = c
        .call(
            Method::POST,
            "/api/v1/auth/link",
            None,
            Some(json!({ "token": secret })),
        )
        .await;
    assert_eq!(s, StatusCode::GONE);
    let mut left = count();
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = count();
    }
    assert_eq!(left, 0, "the expiry loop purged the session");
    let (_, workers) = c.owner(Method::GET, "/api/v1/admin/workers", None).await;
    let expiry = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "expiry")
        .unwrap()
        .clone();
    assert!(expiry["runs"].as_u64().unwrap() >= 1, "{expiry}");
    assert_eq!(expiry["error_count"], 0);
    c.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_show_loops() {
    let c = TestCell::start().await;
    let ws = create_ws(&c, &c.owner_token).await;
    c.owner(Method::GET, &format!("/api/v1/workspaces/{ws}"), None)
        .await;
    c.call(Method::GET, "/api/v1/me", None, None).await;
    let text = c.metrics().await;
    assert!(text.contains(r#"devcell_http_requests_total{method="GET",route="/api/v1/workspaces/{id}",status="200"} 1"#), "{text}");
    assert!(
        text.contains(
            r#"devcell_http_requests_total{method="GET",route="/api/v1/me",status="401"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"devcell_worker_runs_total{worker="expiry"}"#),
        "{text}"
    );
    assert!(text.contains("devcell_workspaces 1"), "{text}");
    let (s, facts) = c.owner(Method::GET, "/api/v1/admin/cell", None).await;
    assert_eq!(s, StatusCode::OK);
    let runtime = facts["runtime"].as_str().unwrap();
    assert!(
        runtime.contains("bubblewrap") && runtime.contains("cgroup v"),
        "{facts}"
    );
    assert_eq!(facts["workspaces"], 1);
    let ready = c.http.get(c.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    c.stop().await;
}

#[tokio::test]
async fn owners_manage_classes_and_policies_with_validation() {
    let c = TestCell::start().await;
    let org = c.org_id().await;
    let (s, cls) = c
        .owner(Method::POST, &format!("/api/v1/orgs/{org}/classes"), Some(json!({ "name": "gpu-less", "cpu_millis": 1000, "memory_bytes": 2u64 << 30, "disk_bytes": 4u64 << 30, "max_processes": 2048 })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{cls}");
    let (s, b) = c
        .owner(Method::POST, &format!("/api/v1/orgs/{org}/classes"), Some(json!({ "name": "tiny", "cpu_millis": 1, "memory_bytes": 1, "disk_bytes": 1, "max_processes": 1 })))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["field"], "cpu_millis");

    let (s, b) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/policy"),
            Some(json!({ "default_timeout_s": 36000, "max_timeout_s": 3600 })),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["code"], "policy_conflict");
    let (_, p) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/policy"), None)
        .await;
    assert_eq!(
        p["default_timeout_s"], 1800,
        "a refused change changes nothing"
    );

    // Allow only the new class: members then see only it and cannot create with others.
    let cls_id = cls["id"].as_str().unwrap();
    let (s, p) = c
        .owner(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}/policy"),
            Some(json!({ "allowed_classes": [cls_id], "users_can_extend": false })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let (_, member) = c.add_user("dev@example.com", "member").await;
    let (_, classes) = c
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{org}/classes"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(classes.as_array().unwrap().len(), 1);
    let (s, b) = c
        .call(
            Method::POST,
            "/api/v1/workspaces",
            Some(&member),
            Some(
                json!({ "repos": [{ "url": "https://git.example.com/a.git" }], "class": "small" }),
            ),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::CONFLICT, Some("class")),
        "{b}"
    );
    let (s, b) = c.call(Method::POST, "/api/v1/workspaces", Some(&member), Some(json!({ "repos": [{ "url": "https://git.example.com/a.git" }], "class": "gpu-less", "timeout_s": 7200 }))).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::CONFLICT, Some("timeout_s")),
        "locked timeout: {b}"
    );

    // A class in use cannot be deleted.
    let (s, _) = c.call(Method::POST, "/api/v1/workspaces", Some(&member), Some(json!({ "repos": [{ "url": "https://git.example.com/a.git" }], "class": "gpu-less" }))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = c
        .owner(Method::DELETE, &format!("/api/v1/classes/{cls_id}"), None)
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("class_in_use"))
    );
    c.stop().await;
}

#[tokio::test]
async fn database_backup_while_serving_is_a_consistent_copy() {
    let c = TestCell::start().await;
    for _ in 0..5 {
        create_ws(&c, &c.owner_token).await;
    }
    let dest = c.dir.path().join("copy.redb");
    let resp = devcell::admin::call(
        &c.data_dir(),
        &devcell::admin::Request::DbBackup { path: dest.clone() },
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        matches!(resp, devcell::admin::Response::Ok { .. }),
        "{resp:?}"
    );
    // The copy opens as a database of its own with the same workspaces.
    let copy = devcell::store::Store::open(&dest).unwrap();
    assert_eq!(copy.workspace_count().unwrap(), 5);
    let owner = c.cell().find_user(None).unwrap();
    let users = copy
        .read(|tx| devcell::store::Reader::user(tx, &owner.id))
        .unwrap();
    assert_eq!(users.unwrap().email, OWNER_EMAIL);
    // Refuses to overwrite.
    let again = devcell::admin::call(
        &c.data_dir(),
        &devcell::admin::Request::DbBackup { path: dest },
    )
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(again, devcell::admin::Response::Error { .. }));
    c.stop().await;
}

#[tokio::test]
async fn invitation_links_open_a_signup_page_that_creates_the_account() {
    let c = TestCell::start().await;
    let org = c.org_id().await;
    let (_, inv) = c
        .owner(
            Method::POST,
            &format!("/api/v1/orgs/{org}/invitations"),
            Some(json!({ "role": "member" })),
        )
        .await;
    let url = inv["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&c.url), "{url}");
    let page = c.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Join Default") && html.contains("name=\"password\""),
        "{html}"
    );

    // A too-short password is refused on the page, and the invitation stays usable.
    let res = c
        .http
        .post(&url)
        .form(&[
            ("name", "Dev"),
            ("email", "dev@example.com"),
            ("password", "short"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("password"));

    let res = c
        .http
        .post(&url)
        .form(&[
            ("name", "Dev"),
            ("email", "dev@example.com"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = crate::harness::cookie_of(&res);
    let me: Value = c
        .http
        .get(c.url("/api/v1/me"))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["email"], "dev@example.com");
    assert_eq!(me["orgs"][0]["role"], "member");

    // Used up.
    assert_eq!(
        c.http.get(&url).send().await.unwrap().status(),
        StatusCode::GONE
    );
    c.stop().await;
}

#[tokio::test]
async fn the_organization_page_manages_members_invitations_classes_and_the_whole_policy() {
    let c = TestCell::start().await;
    let org = c.org_id().await;
    let owner = c.cell().find_user(None).unwrap();
    let (cookie, csrf) = c.session(&owner.id).await;
    let (member_id, member_token) = c.add_user("dev@example.com", "member").await;

    // Owning an organization does not make one a cell administrator.
    let (_, second_owner) = c.add_user("boss2@example.com", "owner").await;
    let (s, facts) = c
        .call(Method::GET, "/api/v1/admin/cell", Some(&second_owner), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{facts}");

    // A member's session cannot change the organization, whatever the form says.
    let member = devcell::domain::UserId::parse(&member_id).unwrap();
    let (member_cookie, member_csrf) = c.session(&member).await;
    let (s, _) = c
        .post_form(
            &member_cookie,
            "/org/policy",
            &[("_csrf", &member_csrf), ("default_timeout_min", "1")],
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "{s}"
    );
    let (s, _) = c
        .post_form(
            &member_cookie,
            &format!("/org/members/{}/remove", owner.id),
            &[("_csrf", &member_csrf)],
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "{s}"
    );

    // A new invitation's link shows once, on the organization page the browser goes back to.
    let (s, to) = c
        .post_form(
            &cookie,
            "/org/invite",
            &[("_csrf", &csrf), ("role", "member")],
        )
        .await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/org"));
    let page = c.page_with(&cookie, "/org").await;
    assert!(page.contains("id=\"invitation-link\""), "{page}");
    assert!(page.contains("/invite/"), "{page}");
    assert!(
        !c.page_with(&cookie, "/org")
            .await
            .contains("id=\"invitation-link\""),
        "the link shows once"
    );
    // Pending invitations are listed and can be revoked.
    let (_, invs) = c
        .owner(
            Method::GET,
            &format!("/api/v1/orgs/{org}/invitations"),
            None,
        )
        .await;
    let inv = invs[0]["id"].as_str().unwrap().to_owned();
    let page = c.page_with(&cookie, "/org").await;
    assert!(
        page.contains(&format!("data-invitation=\"{inv}\"")),
        "{page}"
    );
    let (s, to) = c
        .post_form(
            &cookie,
            &format!("/org/invitations/{inv}/revoke"),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/org"));
    let (_, invs) = c
        .owner(
            Method::GET,
            &format!("/api/v1/orgs/{org}/invitations"),
            None,
        )
        .await;
    assert_eq!(invs.as_array().unwrap().len(), 0, "{invs}");

    // A class is deleted from its row.
    let (s, cls) = c
        .owner(Method::POST, &format!("/api/v1/orgs/{org}/classes"), Some(json!({ "name": "scratch", "cpu_millis": 500, "memory_bytes": 1u64 << 30, "disk_bytes": 1u64 << 30, "max_processes": 64 })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{cls}");
    let scratch = cls["id"].as_str().unwrap().to_owned();
    assert!(
        c.page_with(&cookie, "/org")
            .await
            .contains(&format!("/org/classes/{scratch}/delete"))
    );
    let (s, _) = c
        .post_form(
            &cookie,
            &format!("/org/classes/{scratch}/delete"),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, classes) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/classes"), None)
        .await;
    assert!(!classes.to_string().contains(&scratch), "{classes}");
    let first = classes[0]["id"].as_str().unwrap().to_owned();

    // The whole policy from the page: allowed classes and backup retention included.
    let policy_form = |allowed: Option<&str>, keep: &str| {
        let mut f: Vec<(&str, String)> = vec![
            ("_csrf", csrf.clone()),
            ("default_timeout_min", "45".into()),
            ("max_timeout_min", "120".into()),
            ("users_can_extend", "on".into()),
            ("max_lifetime_h", "12".into()),
            ("max_running_per_user", "3".into()),
            ("backup_keep_last", keep.into()),
            ("backup_keep_within_days", "7".into()),
            ("deleted_backup_grace_days", "14".into()),
            ("dormancy_days", "30".into()),
            ("backup_home", "on".into()),
        ];
        if let Some(a) = allowed {
            f.push(("allowed", a.into()));
        }
        f
    };
    let post_policy = |f: Vec<(&'static str, String)>| {
        let c = &c;
        let cookie = cookie.clone();
        async move {
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.post_form(&cookie, "/org/policy", &pairs).await
        }
    };
    let (s, to) = post_policy(policy_form(Some(&first), "3")).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/org"));
    let (_, p) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/policy"), None)
        .await;
    assert_eq!(p["allowed_classes"], json!([first]), "{p}");
    assert_eq!(
        (
            &p["default_timeout_s"],
            &p["backup_keep_last"],
            &p["backup_keep_within_s"],
            &p["deleted_backup_grace_s"],
            &p["dormancy_s"],
            &p["backup_home"],
            &p["outbound_network"]
        ),
        (
            &json!(2700),
            &json!(3),
            &json!(7 * 86400),
            &json!(14 * 86400),
            &json!(30 * 86400),
            &json!(true),
            &json!(false)
        ),
        "{p}"
    );
    let page = c.page_with(&cookie, "/org").await;
    assert!(
        page.contains("value=\"30\"") && page.contains("Backups always kept"),
        "{page}"
    );
    // No class at all, or a number that is not one: said on the organization page the
    // browser goes back to (once), nothing saved.
    let (s, to) = post_policy(policy_form(None, "3")).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/org"));
    let page = c.page_with(&cookie, "/org").await;
    assert!(
        page.contains("Classes members may use: check at least one"),
        "{page}"
    );
    let page = c.page_with(&cookie, "/org").await;
    assert!(
        !page.contains("Classes members may use: check at least one"),
        "{page}"
    );
    let (s, to) = post_policy(policy_form(Some(&first), "lots")).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/org"));
    let page = c.page_with(&cookie, "/org").await;
    assert!(
        page.contains("Backups always kept per workspace: must be a whole number"),
        "{page}"
    );
    let (_, p) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/policy"), None)
        .await;
    assert_eq!(p["backup_keep_last"], 3, "{p}");

    // A member is removed from their row; their token no longer reaches the organization.
    let (s, to) = c
        .post_form(
            &cookie,
            &format!("/org/members/{member_id}/remove"),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/org"));
    let (_, members) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/members"), None)
        .await;
    assert!(
        !members.to_string().contains("dev@example.com"),
        "{members}"
    );
    let res = c
        .http
        .get(c.url(&format!("/api/v1/orgs/{org}/policy")))
        .bearer_auth(&member_token)
        .send()
        .await
        .unwrap();
    assert!(res.status() == StatusCode::NOT_FOUND || res.status() == StatusCode::FORBIDDEN);
    c.stop().await;
}

#[tokio::test]
async fn the_login_page_says_what_went_wrong_and_sign_out_everywhere_ends_every_session() {
    let c = TestCell::start_with(|cfg| cfg.auth.login_attempts_per_minute = 3, None).await;
    let login = |password: &'static str| {
        c.http
            .post(c.url("/login"))
            .form(&[("email", OWNER_EMAIL), ("password", password)])
            .send()
    };
    // The form signs in with a cookie and goes to the workspaces page.
    let res = login(OWNER_PASSWORD).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/");
    let first = crate::harness::cookie_of(&res);
    // A wrong password is said on the page, without saying which half was wrong.
    let res = login("guess guess guess").await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("wrong email or password") && page.contains("action=\"/login\""),
        "{page}"
    );
    // Past the limit the page says to wait, and for how long.
    for _ in 0..2 {
        login("guess guess guess").await.unwrap();
    }
    let res = login(OWNER_PASSWORD).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("too many attempts") && page.contains("seconds"),
        "{page}"
    );

    // Two sessions; signing out everywhere from one ends the other too.
    let owner = c.cell().find_user(None).unwrap();
    let (second, csrf) = c.session(&owner.id).await;
    for cookie in [&first, &second] {
        assert!(
            c.page_with(cookie, "/")
                .await
                .contains("action=\"/logout\"")
        );
    }
    let (s, to) = c
        .post_form(&second, "/logout-all", &[("_csrf", &csrf)])
        .await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/login"));
    for cookie in [&first, &second] {
        let res = c
            .http
            .get(c.url("/"))
            .header(header::COOKIE, cookie.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::SEE_OTHER,
            "a session outlived sign out everywhere"
        );
        assert_eq!(res.headers()[header::LOCATION], "/login");
    }
    c.stop().await;
}
