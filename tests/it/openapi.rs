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
