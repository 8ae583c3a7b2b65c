//! What the request types' derives cannot say: the shapes the handlers and the domain checks
//! accept, as JSON Schema keywords, so that a request the document calls valid is one the cell
//! accepts. Each pattern mirrors a check in [`crate::domain::validate`], the id types or a
//! handler; where the check is too involved for a regex (repository URLs, branches) the
//! pattern admits a conservative subset of what the cell accepts.
//!
//! Patterns are written for both ECMA-262 and Python regular expressions (no lookbehind,
//! `\uXXXX` escapes only), since clients and test tools use either.

use serde_json::{Value, json};

use crate::domain::ClassLimits;

/// What `str::trim` removes: the Unicode White_Space characters.
const WS: &str = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// A character that is neither white space nor a control character (`char::is_control`).
const SOLID: &str = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
/// A character that is not a control character.
const PRINTABLE: &str = r"[^\x00-\x1f\x7f-\x9f]";
/// The ULID part of an id: 26 Crockford base32 digits, at most 128 bits.
const ULID: &str = "[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}";
/// Lowercase letters, digits and '-', not at either end (`check_slug`).
const SLUG: &str = "[a-z0-9]([a-z0-9-]*[a-z0-9])?";

/// Text that is not blank once trimmed and holds no control character once trimmed
/// (`validate_display_name`, tokens).
fn text() -> String {
    format!("^[{WS}]*{SOLID}({PRINTABLE}*{SOLID})?[{WS}]*$")
}

fn id(prefix: &str) -> String {
    format!("^{prefix}{ULID}$")
}

/// Git repository URLs `RepoUrl::parse` accepts: a conservative subset of the https, http,
/// ssh and scp-like forms. Host names are ASCII (no IDNA label to get wrong) of the
/// characters a URL host may hold, with a last label that starts with a letter (so never
/// an IP address); path segments are anything but white space, controls, `?`, `#` and `\`,
/// and do not start with a dot (`.` and `..` would vanish). file:// URLs depend on the
/// operator's settings and are left out.
fn repo_url() -> String {
    let hc = r"[A-Za-z0-9!$&'()*+,;=_`{}~-]";
    let host = format!(r"([A-Za-z0-9!$&'()*+,;=_`{{}}~.-]*\.)?[A-Za-z]{hc}*");
    let port = "(:[0-9]{0,4})?";
    let free = r"[^\s\x00-\x1f\x7f-\x9f/?#\\]";
    let seg = format!(r"[^\s\x00-\x1f\x7f-\x9f/?#\\.]{free}*");
    let user = r"[^\s\x00-\x1f\x7f-\x9f/?#\\@:]+";
    format!(
        "^(https?://{host}{port}(/{seg})+/?|ssh://({user}@)?{host}{port}(/{seg})+/?|{user}@{host}:{seg}(/{seg})*/?)$"
    )
}

/// Branch names `validate_branch` accepts, conservatively: slash-separated parts of letters,
/// digits, '_', '+' and '-', where a dot must be followed by a digit (`release-1.2`), so no
/// part starts with a dot or ends with `.lock`. Empty means the default branch.
fn branch() -> String {
    let part = r"[A-Za-z0-9_][A-Za-z0-9_+-]*(\.[0-9][A-Za-z0-9_+-]*)*";
    format!("^({part}(/{part})*)?$")
}

/// Image references `validate_image` accepts; blank means none.
fn image() -> String {
    format!("^[{WS}]*([A-Za-z0-9_@+][A-Za-z0-9./:_@+-]*)?[{WS}]*$")
}

const MIB: u64 = 1024 * 1024;
const TIB: u64 = 1024 * 1024 * MIB;
/// A workspace timeout can never exceed the longest lifetime a policy may set (30 days).
const MAX_TIMEOUT_S: u64 = 30 * 24 * 60 * 60;

/// Merges `patch` into the property `field` of the component schema `schema`.
fn field(doc: &mut Value, schema: &str, field: &str, patch: Value) {
    let target = &mut doc["components"]["schemas"][schema]["properties"][field];
    merge(target, patch);
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => t.extend(p),
        (t, p) => *t = p,
    }
}

/// Merges `patch` into the schema of the parameter `name` of every operation on `path`.
fn param(doc: &mut Value, path: &str, name: &str, patch: &Value) {
    let Some(item) = doc["paths"][path].as_object_mut() else {
        return;
    };
    for op in item.values_mut() {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
            continue;
        };
        for p in params.iter_mut().filter(|p| p["name"] == name) {
            merge(&mut p["schema"], patch.clone());
        }
    }
}

/// The constraints, as a [`utoipa::Modify`] on the whole document.
pub struct Constraints;

impl utoipa::Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Ok(mut doc) = serde_json::to_value(&*openapi) else {
            return;
        };
        constrain(&mut doc);
        if let Ok(done) = serde_json::from_value(doc) {
            *openapi = done;
        }
    }
}

/// Unsigned integers: the derive calls u32 `int32` and u64 `int64` (with `minimum: 0`),
/// formats whose signed ranges stop at half of what the fields take.
fn unsigned(doc: &mut Value) {
    let Some(schemas) = doc["components"]["schemas"].as_object_mut() else {
        return;
    };
    for schema in schemas.values_mut() {
        let Some(props) = schema["properties"].as_object_mut() else {
            continue;
        };
        for p in props.values_mut() {
            if p["minimum"] != json!(0) {
                continue;
            }
            let max = match p["format"].as_str() {
                Some("int32") => json!(u32::MAX),
                Some("int64") => json!(u64::MAX),
                _ => continue,
            };
            if let Some(p) = p.as_object_mut() {
                p.remove("format");
                p.insert("maximum".into(), max);
            }
        }
    }
}

fn constrain(doc: &mut Value) {
    unsigned(doc);
    let name = json!({ "pattern": text(), "minLength": 1, "maxLength": 100 });
    for schema in ["OrgInput", "ProfilePatch", "CreateToken"] {
        field(doc, schema, "name", name.clone());
    }
    // One minute to three years (`Cell::create_token`).
    field(
        doc,
        "CreateToken",
        "expires_in_s",
        json!({ "minimum": 60, "maximum": 3 * 365 * 86400 }),
    );
    field(
        doc,
        "RoleInput",
        "role",
        json!({ "enum": ["owner", "member"] }),
    );
    field(
        doc,
        "PortShareDto",
        "visibility",
        json!({ "enum": ["private", "org", "public"] }),
    );
    field(
        doc,
        "TransferWorkspace",
        "owner",
        json!({ "pattern": id("usr_") }),
    );

    // `ClassSpec::validate`; the cell's own maxima come in with [`class_limits`].
    field(
        doc,
        "ClassInputDto",
        "name",
        json!({ "pattern": format!("^{SLUG}$"), "maxLength": 40 }),
    );
    for (f, min, max) in [
        ("cpu_millis", 100, 256_000),
        ("memory_bytes", 64 * MIB, TIB),
        ("disk_bytes", 256 * MIB, 16 * TIB),
        ("max_processes", 16, 1_000_000),
    ] {
        field(
            doc,
            "ClassInputDto",
            f,
            json!({ "minimum": min, "maximum": max }),
        );
    }

    // `Policy::validate`: each field alone. Settings at odds with each other (a default
    // timeout above the maximum) are a 409 `policy_conflict`.
    for f in ["default_timeout_s", "max_timeout_s", "max_lifetime_s"] {
        field(
            doc,
            "PolicyPatchDto",
            f,
            json!({ "minimum": 60, "maximum": MAX_TIMEOUT_S }),
        );
    }
    for f in ["max_running_per_user", "backup_keep_last"] {
        field(doc, "PolicyPatchDto", f, json!({ "minimum": 1 }));
    }
    // Replaced whole: the alternatives alone, with no looser bounds beside them.
    doc["components"]["schemas"]["PolicyPatchDto"]["properties"]["dormancy_s"] = json!({
        "description": "Seconds a stopped workspace is kept; 0 keeps them forever, else at least a day.",
        "anyOf": [
            { "type": "null" },
            { "type": "integer", "enum": [0] },
            { "type": "integer", "minimum": 86400, "maximum": u64::MAX },
        ],
    });
    field(
        doc,
        "PolicyPatchDto",
        "allowed_classes",
        json!({ "items": { "type": "string", "pattern": id("cls_") } }),
    );

    // `Cell::create_workspace`: a blank name means one made from the first repository.
    let ws_name = format!("^[{WS}]*({SLUG})?[{WS}]*$");
    let timeout = json!({ "minimum": 60, "maximum": MAX_TIMEOUT_S });
    let image = json!({ "pattern": image(), "maxLength": 512 });
    field(
        doc,
        "CreateWorkspace",
        "org",
        json!({ "pattern": id("org_") }),
    );
    field(
        doc,
        "CreateWorkspace",
        "name",
        json!({ "pattern": ws_name, "maxLength": 63 }),
    );
    field(doc, "CreateWorkspace", "image", image.clone());
    field(doc, "CreateWorkspace", "timeout_s", timeout.clone());
    // The repositories of a request, not the stored ones `RepoDto` also describes in
    // responses (which may be file:// URLs).
    let mut repo = doc["components"]["schemas"]["RepoDto"].clone();
    merge(
        &mut repo["properties"]["url"],
        json!({ "pattern": repo_url(), "maxLength": 2048 }),
    );
    merge(
        &mut repo["properties"]["branch"],
        json!({ "pattern": branch(), "maxLength": 255 }),
    );
    field(
        doc,
        "CreateWorkspace",
        "repos",
        json!({ "minItems": 1, "maxItems": 10, "items": repo }),
    );
    field(
        doc,
        "UpdateWorkspace",
        "name",
        json!({ "pattern": format!("^[{WS}]*{SLUG}[{WS}]*$"), "maxLength": 63 }),
    );
    field(doc, "UpdateWorkspace", "image", image);
    field(doc, "UpdateWorkspace", "timeout_s", timeout);

    // `Cell::exec`.
    field(
        doc,
        "ExecDto",
        "command",
        json!({ "minItems": 1, "items": { "type": "string", "pattern": "^[^\\x00]*$" } }),
    );
    field(
        doc,
        "ExecDto",
        "timeout_s",
        json!({ "minimum": 1, "maximum": 3600 }),
    );

    git_credential(doc);

    // `list_workspaces`: the cursors it hands out are workspace ids.
    let list = "/api/v1/workspaces";
    param(doc, list, "org", &json!({ "pattern": id("org_") }));
    param(doc, list, "cursor", &json!({ "pattern": id("ws_") }));
    param(doc, list, "limit", &json!({ "minimum": 1, "maximum": 500 }));
    let size = json!({ "maximum": 65535 });
    param(
        doc,
        "/api/v1/workspaces/{id}/terminals/{tid}",
        "cols",
        &size,
    );
    param(
        doc,
        "/api/v1/workspaces/{id}/terminals/{tid}",
        "rows",
        &size,
    );
    field(doc, "NewTerminalDto", "cols", size.clone());
    field(doc, "NewTerminalDto", "rows", size);
    // Each server-sent event, as clients (and test tools) read it.
    doc["paths"]["/api/v1/workspaces/{id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
        ["schema"] = json!({
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": { "type": "string", "enum": ["workspace", "deleted"] },
            "data": {
                "type": "string",
                "description": "`workspace`: a WorkspaceDto as JSON; `deleted`: the workspace's id",
            },
        },
    });
    param(
        doc,
        "/api/v1/workspaces/{id}/ports/{port}",
        "port",
        &json!({ "minimum": 1, "maximum": 65535 }),
    );
}

/// `create_git_credential` takes one of three shapes: a git token (the user name defaults to
/// `git`), a registry login (user name required), or an SSH key (`Cell::add_git_credential`).
fn git_credential(doc: &mut Value) {
    let user_char = format!("[^:{WS}]");
    let host = json!({
        "type": "string",
        "pattern": format!(r"^[{WS}]*[A-Za-z0-9.:\[\]-]{{1,253}}[{WS}]*$"),
    });
    let username = json!({
        "type": "string",
        "pattern": format!("^[{WS}]*{user_char}([^:]*{user_char})?[{WS}]*$"),
        "maxLength": 200,
    });
    let token = json!({ "type": "string", "pattern": text(), "maxLength": 4096 });
    let key = json!({
        "type": "string",
        "pattern": "^[\\s\\S]*PRIVATE KEY-----[\\s\\S]*$",
        "maxLength": 16 * 1024,
    });
    let absent = json!({ "type": "null" });
    let git = json!({ "type": "boolean", "enum": [false] });
    let mut optional_user = username.clone();
    optional_user["type"] = json!(["string", "null"]);
    let any_user = json!({ "type": ["string", "null"] });
    let shape = |title: &str, required: Value, properties: Value| {
        json!({
            "title": title,
            "type": "object",
            "required": required,
            "properties": properties,
            "additionalProperties": false,
        })
    };
    let schema = &mut doc["components"]["schemas"]["CreateGitCredential"];
    let description = schema["description"].clone();
    // Each shape whole, with no looser properties beside them.
    *schema = json!({
        "description": description,
        "oneOf": [
            shape("git token", json!(["host", "token"]), json!({
                "host": host, "token": token, "username": optional_user,
                "ssh_private_key": absent, "registry": git,
            })),
            shape("registry login", json!(["host", "token", "username", "registry"]), json!({
                "host": host, "token": token, "username": username,
                "ssh_private_key": absent, "registry": { "type": "boolean", "enum": [true] },
            })),
            shape("SSH key", json!(["host", "ssh_private_key"]), json!({
                "host": host, "ssh_private_key": key, "token": absent,
                "username": any_user, "registry": git,
            })),
        ],
    });
}

/// Puts the cell's own maxima for class sizes (`Cell::class_limits`) into the document.
pub fn class_limits(doc: &mut Value, limits: &ClassLimits) {
    for (f, limit) in [
        ("cpu_millis", u64::from(limits.cpu_millis)),
        ("memory_bytes", limits.memory_bytes),
        ("disk_bytes", limits.disk_bytes),
    ] {
        let max = &mut doc["components"]["schemas"]["ClassInputDto"]["properties"][f]["maximum"];
        if let Some(m) = max.as_u64() {
            *max = json!(m.min(limit));
        }
    }
}
