//! The OpenAPI document is generated from the code and checked by a real validator.

use std::process::Command;

use reqwest::Method;

use crate::harness::TestCell;

fn validator() -> std::path::PathBuf {
    let venv =
        std::env::var("DEVCELL_TEST_VENV").unwrap_or_else(|_| "/var/cache/devcell/venv".into());
    let bin = std::path::Path::new(&venv)
        .join("bin")
        .join("openapi-spec-validator");
    assert!(
        bin.exists(),
        "openapi-spec-validator is missing at {}: run `bash tests/run.sh`, or `python3 -m venv {venv} && {venv}/bin/pip install openapi-spec-validator`",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn openapi_document_is_valid_and_lists_every_route() {
    let bin = validator();
    let c = TestCell::start().await;
    let (s, doc) = c
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, 200);
    let file = c.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(&bin).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "validator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A broken document must fail the same validator, so the check above can fail.
    let mut broken = doc.clone();
    broken["paths"]["/api/v1/me"]["get"]["responses"] = serde_json::json!("nope");
    std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
    let out = Command::new(&bin).arg(&file).output().unwrap();
    assert!(
        !out.status.success(),
        "the validator accepted a broken document"
    );

    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/workspaces",
        "/api/v1/workspaces/{id}",
        "/api/v1/tokens",
        "/api/v1/orgs/{org}/policy",
        "/api/v1/admin/workers",
        "/api/v1/auth/login",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }
    c.stop().await;
}

/// Schemathesis, with every one of its default checks, finds nothing: every status an
/// operation answers is documented, every request the document calls valid is accepted, and
/// every request it calls invalid is refused.
#[tokio::test]
async fn schemathesis_with_its_default_checks_finds_nothing() {
    let venv =
        std::env::var("DEVCELL_TEST_VENV").unwrap_or_else(|_| "/var/cache/devcell/venv".into());
    let st = std::path::Path::new(&venv).join("bin").join("st");
    assert!(
        st.exists(),
        "Schemathesis is missing at {}: run `bash tests/run.sh`, or `{venv}/bin/pip install schemathesis==4.32.5`",
        st.display()
    );
    let c = TestCell::start().await;
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let url = c.url.trim_end_matches('/').to_owned();
    let out = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{url}/api/v1/openapi.json"))
        .arg("--url")
        .arg(&url)
        .args(["-H", &format!("Authorization: Bearer {}", c.owner_token)])
        .args([
            "--max-examples",
            "40",
            "--seed",
            "215369143183076634688323089699836069902",
        ])
        // Signing out, changing the password and revoking a token end the very token the run
        // uses, after which every request would be 401.
        .args([
            "--exclude-path-regex",
            r"/auth/logout|/me/password|/tokens/\{id\}",
        ])
        .arg("--no-color")
        .current_dir(c.dir.path())
        .output()
        .await
        .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "Schemathesis found failures:\n{report}"
    );
    c.stop().await;
}
