//! Walks every route of the OpenAPI document with no credentials, as a member and as an owner,
//! and checks who gets in. A route added without a row here fails the test.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestCell, create_ws};

/// Who may use a route.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Access {
    /// No credentials needed.
    Public,
    /// Any signed-in user (acting on their own things).
    User,
    /// Owners of the organization (or of the workspace) only.
    Owner,
    /// Cell administrators only.
    Admin,
    /// Owners only, and only while the workspace runs (the owner gets `not_running` here).
    OwnerRunning,
    /// Owners only, about backups: the fixture's workspace never ran, so the owner gets
    /// `no_files` (nothing to snapshot) or `not_found` (no such snapshot).
    OwnerBackups,
}

struct Fixture {
    org: String,
    owner_user: String,
    owner_ws: String,
    member_user: String,
    class: String,
    owner_token_id: String,
    invitation: String,
    owner_credential: String,
}

fn rule(method: &str, path: &str) -> Option<(Access, Option<Value>)> {
    use Access::*;
    let r = match (method, path) {
        ("post", "/api/v1/auth/login") => (
            Public,
            Some(json!({ "email": "x@example.com", "password": "wrong password" })),
        ),
        ("post", "/api/v1/auth/link") => (Public, Some(json!({ "token": "dcl_nope" }))),
        ("post", "/api/v1/invitations/accept") => (
            Public,
            Some(
                json!({ "token": "dci_nope", "email": "n@example.com", "password": "long enough password" }),
            ),
        ),
        ("post", "/api/v1/auth/logout") | ("post", "/api/v1/auth/logout-all") => (User, None),
        ("get", "/api/v1/me") => (User, None),
        ("patch", "/api/v1/me") => (User, Some(json!({ "name": "New Name" }))),
        ("post", "/api/v1/me/password") => (
            User,
            Some(json!({ "current": "CALLER_PASSWORD", "new": "CALLER_PASSWORD" })),
        ),
        ("get", "/api/v1/tokens") => (User, None),
        ("post", "/api/v1/tokens") => (User, Some(json!({ "name": "t" }))),
        ("delete", "/api/v1/tokens/{id}") => (Owner, None),
        ("get", "/api/v1/orgs") => (User, None),
        ("get", "/api/v1/git-credentials") => (User, None),
        ("post", "/api/v1/git-credentials") => (
            User,
            Some(json!({ "host": "other.example.com", "username": "me", "token": "t0ken" })),
        ),
        ("delete", "/api/v1/git-credentials/{id}") => (Owner, None),
        ("post", "/api/v1/orgs") => (Admin, Some(json!({ "name": "Side project" }))),
        ("get", "/api/v1/orgs/{org}") => (User, None),
        ("patch", "/api/v1/orgs/{org}") => (Owner, Some(json!({ "name": "Renamed" }))),
        ("get", "/api/v1/orgs/{org}/members") => (Owner, None),
        ("patch", "/api/v1/orgs/{org}/members/{user}") => {
            (Owner, Some(json!({ "role": "member" })))
        }
        ("delete", "/api/v1/orgs/{org}/members/{user}") => (Owner, None),
        ("get", "/api/v1/orgs/{org}/invitations") => (Owner, None),
        ("post", "/api/v1/orgs/{org}/invitations") => (Owner, Some(json!({ "role": "member" }))),
        ("delete", "/api/v1/orgs/{org}/invitations/{id}") => (Owner, None),
        ("get", "/api/v1/orgs/{org}/deleted-workspaces") => (Owner, None),
        ("get", "/api/v1/orgs/{org}/classes") => (User, None),
        ("post", "/api/v1/orgs/{org}/classes") => (
            Owner,
            Some(
                json!({ "name": "big", "cpu_millis": 1000, "memory_bytes": 1073741824u64, "disk_bytes": 2147483648u64, "max_processes": 4096 }),
            ),
        ),
        ("put", "/api/v1/classes/{id}") => (
            Owner,
            Some(
                json!({ "name": "medium-plus", "cpu_millis": 1000, "memory_bytes": 2147483648u64, "disk_bytes": 4294967296u64, "max_processes": 512 }),
            ),
        ),
        ("delete", "/api/v1/classes/{id}") => (Owner, None),
        ("get", "/api/v1/orgs/{org}/policy") => (Owner, None),
        ("patch", "/api/v1/orgs/{org}/policy") => {
            (Owner, Some(json!({ "default_timeout_s": 1200 })))
        }
        ("get", "/api/v1/workspaces") => (User, None),
        ("post", "/api/v1/workspaces") => (
            User,
            Some(json!({ "repos": [{ "url": "https://git.example.com/x.git" }] })),
        ),
        ("get", "/api/v1/workspaces/{id}") | ("get", "/api/v1/workspaces/{id}/events") => {
            (Owner, None)
        }
        ("patch", "/api/v1/workspaces/{id}") => (Owner, Some(json!({ "name": "changed" }))),
        // The fixture's workspace never ran: it is stopped, and goes to the owner themself.
        ("post", "/api/v1/workspaces/{id}/transfer") => {
            (Owner, Some(json!({ "owner": "OWNER_ID" })))
        }
        ("delete", "/api/v1/workspaces/{id}") => (Owner, None),
        ("post", "/api/v1/workspaces/{id}/start") | ("post", "/api/v1/workspaces/{id}/stop") => {
            (Owner, None)
        }
        ("post", "/api/v1/workspaces/{id}/restart") => (OwnerRunning, None),
        ("get", "/api/v1/workspaces/{id}/tasks") | ("get", "/api/v1/workspaces/{id}/ports") => {
            (Owner, None)
        }
        ("put", "/api/v1/workspaces/{id}/ports/{port}") => {
            (Owner, Some(json!({ "visibility": "org" })))
        }
        ("get", "/api/v1/workspaces/{id}/terminals")
        | ("get", "/api/v1/workspaces/{id}/terminals/{tid}") => (OwnerRunning, None),
        ("post", "/api/v1/workspaces/{id}/terminals") => {
            (OwnerRunning, Some(json!({ "cols": 80, "rows": 24 })))
        }
        ("post", "/api/v1/workspaces/{id}/exec") => {
            (OwnerRunning, Some(json!({ "command": ["true"] })))
        }
        ("post", "/api/v1/workspaces/{id}/backups")
        | ("post", "/api/v1/workspaces/{id}/backups/{snapshot}/restore")
        | ("get", "/api/v1/workspaces/{id}/backups/{snapshot}/archive") => (OwnerBackups, None),
        ("get", "/api/v1/admin/workers")
        | ("get", "/api/v1/admin/cell")
        | ("get", "/api/v1/admin/users") => (Admin, None),
        // The owner makes the member an administrator last (it is not destructive, but it
        // changes who the member is: the member's walk is over by then).
        ("patch", "/api/v1/admin/users/{id}") => (Admin, Some(json!({ "is_admin": false }))),
        _ => return None,
    };
    Some(r)
}

/// The password-change body names the caller's own password; a transfer names the owner.
fn body_for(body: &Option<Value>, password: &str, f: &Fixture) -> Option<Value> {
    body.as_ref().map(|b| {
        let b = b
            .to_string()
            .replace("CALLER_PASSWORD", password)
            .replace("OWNER_ID", &f.owner_user);
        serde_json::from_str(&b).unwrap()
    })
}

fn fill(path: &str, f: &Fixture) -> String {
    let id = if path.starts_with("/api/v1/admin/users/") {
        &f.member_user
    } else if path.starts_with("/api/v1/workspaces/") {
        &f.owner_ws
    } else if path.starts_with("/api/v1/classes/") {
        &f.class
    } else if path.starts_with("/api/v1/tokens/") {
        &f.owner_token_id
    } else if path.starts_with("/api/v1/git-credentials/") {
        &f.owner_credential
    } else {
        &f.invitation
    };
    path.replace("{tid}", "t1")
        .replace("{port}", "3000")
        .replace("{org}", &f.org)
        .replace("{user}", &f.member_user)
        .replace("{id}", id)
}

#[tokio::test]
async fn every_route_checks_the_callers_role() {
    let c = TestCell::start().await;
    let (_, doc) = c
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    let (member_user, member) = c.add_user("member@example.com", "member").await;
    let org = c.org_id().await;
    let (_, classes) = c
        .owner(Method::GET, &format!("/api/v1/orgs/{org}/classes"), None)
        .await;
    let (_, inv) = c
        .owner(
            Method::POST,
            &format!("/api/v1/orgs/{org}/invitations"),
            Some(json!({ "role": "member" })),
        )
        .await;
    let (_, doomed) = c
        .owner(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "doomed" })),
        )
        .await;
    let (_, cred) = c
        .owner(
            Method::POST,
            "/api/v1/git-credentials",
            Some(json!({ "host": "git.example.com", "username": "me", "token": "t0ken" })),
        )
        .await;
    let (_, me) = c.owner(Method::GET, "/api/v1/me", None).await;
    let fx = Fixture {
        owner_user: me["user"]["id"].as_str().unwrap().to_owned(),
        owner_credential: cred["id"].as_str().unwrap().to_owned(),
        owner_ws: create_ws(&c, &c.owner_token).await,
        member_user,
        // The second class is not the default one, so deleting it leaves workspaces a class.
        class: classes
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["is_default"] == false)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        owner_token_id: doomed["info"]["id"].as_str().unwrap().to_owned(),
        invitation: inv["invitation"]["id"].as_str().unwrap().to_owned(),
        org,
    };

    let mut routes = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let (access, body) = rule(method, path).unwrap_or_else(|| {
                panic!("no access rule for {method} {path}: add one to tests/it/roles.rs")
            });
            routes.push((
                method.to_uppercase().parse::<Method>().unwrap(),
                path.clone(),
                access,
                body,
            ));
        }
    }
    assert!(routes.len() >= 30, "only {} routes found", routes.len());

    // No credentials: only public routes answer with anything but 401.
    for (m, path, access, body) in &routes {
        let (s, b) = c
            .call(m.clone(), &fill(path, &fx), None, body_for(body, "x", &fx))
            .await;
        if *access == Access::Public {
            assert_ne!(
                b["code"], "unauthenticated",
                "{m} {path} must be public: {s} {b}"
            );
            assert!(s.as_u16() < 500, "{m} {path}: {s} {b}");
        } else {
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{m} {path} without credentials: {b}"
            );
            assert_eq!(b["code"], "unauthenticated");
        }
    }

    // A member: owner and admin routes refuse (403, or 404 for things they must not know of).
    // Twice over, so the order of the walk does not matter: whatever a member's call in the
    // first walk could have gained them (an organization of their own, a role, a class) is
    // refused in the second all the same.
    for (m, path, access, body) in routes.iter().chain(routes.iter()) {
        let (s, b) = c
            .call(
                m.clone(),
                &fill(path, &fx),
                Some(&member),
                body_for(body, "a long enough password", &fx),
            )
            .await;
        assert!(s.as_u16() < 500, "{m} {path} as member: {s} {b}");
        match access {
            Access::Owner | Access::Admin | Access::OwnerRunning | Access::OwnerBackups => {
                assert!(
                    s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
                    "{m} {path} as member got {s}: {b}"
                );
            }
            Access::User => assert!(s.is_success(), "{m} {path} as member got {s}: {b}"),
            Access::Public => {}
        }
    }

    // The owner gets in everywhere; destructive calls last so the fixture lives until then.
    let mut ordered = routes.clone();
    ordered.sort_by_key(|(m, ..)| *m == Method::DELETE);
    for (m, path, access, body) in &ordered {
        if *access == Access::Public {
            continue;
        }
        let (s, b) = c
            .owner(
                m.clone(),
                &fill(path, &fx),
                body_for(body, crate::harness::OWNER_PASSWORD, &fx),
            )
            .await;
        if *access == Access::OwnerRunning {
            assert_eq!(
                (s, b["code"].as_str()),
                (StatusCode::CONFLICT, Some("not_running")),
                "{m} {path} as owner"
            );
            continue;
        }
        if *access == Access::OwnerBackups {
            assert!(
                matches!(
                    (s, b["code"].as_str()),
                    (StatusCode::CONFLICT, Some("no_files"))
                        | (StatusCode::NOT_FOUND, Some("not_found"))
                ),
                "{m} {path} as owner got {s}: {b}"
            );
            continue;
        }
        assert!(s.is_success(), "{m} {path} as owner got {s}: {b}");
    }
    c.stop().await;
}
