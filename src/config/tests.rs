//! Unit tests of configuration loading and of the generated reference page.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn no_flags() -> Overrides {
    Overrides::default()
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load(None, &env(pairs), &no_flags())
}

fn error_text(result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn json(config: &Config) -> serde_json::Value {
    serde_json::to_value(config).unwrap()
}

#[test]
fn defaults_when_nothing_is_set() {
    let config = load(None, &[], &no_flags()).unwrap();
    assert_eq!(json(&config), json(&Config::default()));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/devcell"));
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.server.max_body_bytes, 1_048_576);
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.auth.session_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(config.auth.login_link_ttl, Duration::from_secs(15 * 60));
    assert_eq!(config.auth.invitation_ttl, Duration::from_secs(7 * 86400));
    assert_eq!(config.auth.login_attempts_per_minute, 10);
    assert_eq!(config.workers.expiry_interval, Duration::from_secs(60));
    assert_eq!(config.workers.shutdown_grace, Duration::from_secs(8));
    assert!(config.auth.owner_email.is_none() && config.auth.owner_password.is_none());
}

#[test]
fn each_layer_overrides_the_one_below() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "devcell.toml",
        "data_dir = \"/from/file\"\n[server]\nlisten = \"127.0.0.1:1001\"\n[log]\nformat = \"json\"\nlevel = \"debug\"\n",
    );
    let env_vars = env(&[
        ("DEVCELL_SERVER__LISTEN", "127.0.0.1:1002"),
        ("DEVCELL_DATA_DIR", "/from/env"),
    ]);
    let flags = Overrides {
        listen: Some("127.0.0.1:1003".parse().unwrap()),
        log_format: Some(LogFormat::Text),
        ..Overrides::default()
    };

    let all = load(Some(&file), &env_vars, &flags).unwrap();
    assert_eq!(all.server.listen.port(), 1003, "flag beats env");
    assert_eq!(all.data_dir, PathBuf::from("/from/env"), "env beats file");
    assert_eq!(all.log.format, LogFormat::Text, "flag beats file");
    assert_eq!(all.log.level, "debug", "file beats default");

    let no_flag = load(Some(&file), &env_vars, &no_flags()).unwrap();
    assert_eq!(no_flag.server.listen.port(), 1002, "env beats file");
    assert_eq!(no_flag.log.format, LogFormat::Json);

    let file_only = load(Some(&file), &[], &no_flags()).unwrap();
    assert_eq!(file_only.server.listen.port(), 1001, "file beats default");
    assert_eq!(file_only.data_dir, PathBuf::from("/from/file"));

    let flag_only = load(None, &[], &flags).unwrap();
    assert_eq!(flag_only.server.listen.port(), 1003, "flag beats default");

    let data_dir_flag = Overrides {
        data_dir: Some(PathBuf::from("/from/flag")),
        public_url: Some(Url::parse("https://flag.example/").unwrap()),
        ..Overrides::default()
    };
    let config = load(Some(&file), &env_vars, &data_dir_flag).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
    assert_eq!(config.public_url().as_str(), "https://flag.example/");
}

#[test]
fn nested_environment_variables_and_value_parsing() {
    let config = load_env(&[
        ("DEVCELL_AUTH__SESSION_TTL", "30m"),
        ("DEVCELL_AUTH__INVITATION_TTL", "2d"),
        ("DEVCELL_WORKERS__SHUTDOWN_GRACE", "1500ms"),
        ("DEVCELL_SERVER__MAX_BODY_BYTES", "2048"),
        ("DEVCELL_AUTH__LOGIN_ATTEMPTS_PER_MINUTE", "3"),
        ("DEVCELL_SERVER__SECURE_COOKIES", "false"),
        ("DEVCELL_LOG__FORMAT", "json"),
        ("DEVCELL_AUTH__OWNER_EMAIL", "owner@example.com"),
        ("DEVCELL_AUTH__OWNER_PASSWORD", "12345"),
    ])
    .unwrap();
    assert_eq!(config.auth.session_ttl, Duration::from_secs(30 * 60));
    assert_eq!(config.auth.invitation_ttl, Duration::from_secs(2 * 86400));
    assert_eq!(config.workers.shutdown_grace, Duration::from_millis(1500));
    assert_eq!(config.server.max_body_bytes, 2048);
    assert_eq!(config.auth.login_attempts_per_minute, 3);
    assert_eq!(config.server.secure_cookies, Some(false));
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(
        config.auth.owner_email.as_deref(),
        Some("owner@example.com")
    );
    // A numeric password stays the string it was written as.
    assert_eq!(config.auth.owner_password.unwrap().expose(), "12345");

    let on = load_env(&[("DEVCELL_SERVER__SECURE_COOKIES", "true")]).unwrap();
    assert_eq!(on.server.secure_cookies, Some(true));
}

#[test]
fn invalid_environment_value_names_key_variable_and_reason() {
    let text = error_text(load_env(&[("DEVCELL_SERVER__LISTEN", "nonsense")]));
    assert_eq!(
        text,
        "server.listen (environment variable DEVCELL_SERVER__LISTEN): invalid socket address syntax"
    );

    let text = error_text(load_env(&[(
        "DEVCELL_AUTH__LOGIN_ATTEMPTS_PER_MINUTE",
        "many",
    )]));
    assert!(
        text.starts_with(
            "auth.login_attempts_per_minute (environment variable DEVCELL_AUTH__LOGIN_ATTEMPTS_PER_MINUTE): "
        ),
        "{text}"
    );

    let text = error_text(load_env(&[("DEVCELL_AUTH__SESSION_TTL", "soon")]));
    assert!(
        text.starts_with("auth.session_ttl (environment variable DEVCELL_AUTH__SESSION_TTL): "),
        "{text}"
    );
    assert!(text.contains("30s, 15m, 12h or 7d"), "{text}");

    let text = error_text(load_env(&[("DEVCELL_LOG__FORMAT", "xml")]));
    assert!(text.starts_with("log.format (environment variable DEVCELL_LOG__FORMAT): "));
    assert!(text.contains("xml"), "{text}");

    let text = error_text(load_env(&[("DEVCELL_SERVER__PUBLIC_URL", "not a url")]));
    assert!(text.contains("server.public_url"), "{text}");
    assert!(text.contains("invalid URL"), "{text}");
}

#[test]
fn invalid_file_value_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "devcell.toml", "[server]\nlisten = 5\n");
    let text = error_text(load(Some(&file), &[], &no_flags()));
    assert!(
        text.starts_with(&format!("server.listen (file {}): ", file.display())),
        "{text}"
    );
}

#[test]
fn validation_errors_name_key_source_and_reason() {
    let text = error_text(load_env(&[("DEVCELL_SERVER__MAX_BODY_BYTES", "100")]));
    assert!(
        text.starts_with("server.max_body_bytes (environment variable DEVCELL_SERVER__MAX_BODY_BYTES): 100 is out of range"),
        "{text}"
    );

    let text = error_text(load_env(&[("DEVCELL_WORKERS__SHUTDOWN_GRACE", "10s")]));
    assert!(text.starts_with("workers.shutdown_grace ("), "{text}");
    assert!(text.contains("at most 9s"), "{text}");

    let text = error_text(load_env(&[("DEVCELL_AUTH__LOGIN_LINK_TTL", "0s")]));
    assert!(text.contains("auth.login_link_ttl"), "{text}");
    assert!(text.contains("greater than zero"), "{text}");

    let text = error_text(load_env(&[(
        "DEVCELL_AUTH__LOGIN_ATTEMPTS_PER_MINUTE",
        "0",
    )]));
    assert!(text.contains("at least 1"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "devcell.toml",
        "[server]\npublic_url = \"ftp://example.com/\"\n",
    );
    let text = error_text(load(Some(&file), &[], &no_flags()));
    assert!(
        text.starts_with(&format!("server.public_url (file {}): ", file.display())),
        "{text}"
    );
    assert!(text.contains("http or https"), "{text}");

    // Several problems are reported together.
    let err = load_env(&[
        ("DEVCELL_SERVER__MAX_BODY_BYTES", "1"),
        ("DEVCELL_LOG__LEVEL", " "),
    ])
    .unwrap_err();
    assert_eq!(err.problems().len(), 2, "{err}");
}

#[test]
fn unknown_file_keys_name_the_full_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "devcell.toml",
        "[server]\nlisen = \"127.0.0.1:1\"\n[nope]\nx = 1\n",
    );
    let err = load(Some(&file), &[], &no_flags()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "server.lisen (file {}): unknown key; did you mean server.listen?",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("nope (file {})", file.display())),
        "{text}"
    );
    assert!(
        err.problems()
            .iter()
            .all(|p| matches!(p, ConfigError::UnknownKey { .. }))
    );
}

#[test]
fn unknown_environment_variable_is_named() {
    let text = error_text(load_env(&[("DEVCELL_SERVER__LISEN", "127.0.0.1:1")]));
    assert!(
        text.starts_with(
            "server.lisen (environment variable DEVCELL_SERVER__LISEN): unknown key; did you mean server.listen?"
        ),
        "{text}"
    );
    let text = error_text(load_env(&[("DEVCELL_LISTEN", "127.0.0.1:1")]));
    assert!(
        text.starts_with(
            "listen (environment variable DEVCELL_LISTEN): unknown key; did you mean server.listen?"
        ),
        "{text}"
    );
    let text = error_text(load_env(&[("DEVCELL_FROBNICATE", "1")]));
    assert!(
        text.contains("environment variable DEVCELL_FROBNICATE"),
        "{text}"
    );
}

#[test]
fn non_configuration_variables_are_ignored() {
    let config = load_env(&[
        ("DEVCELL_CONFIG", "/etc/devcell/other.toml"),
        ("DEVCELL_URL", "http://127.0.0.1:8080"),
        ("DEVCELL_TOKEN", "abc"),
        ("DEVCELL_TEST_BLESS", "1"),
        ("DEVCELL_TEST_ANYTHING__ELSE", "x"),
        ("PATH", "/usr/bin"),
        ("devcell_server__listen", "nonsense"),
    ])
    .unwrap();
    assert_eq!(json(&config), json(&Config::default()));
}

#[test]
fn missing_or_malformed_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let err = load(Some(&missing), &[], &no_flags()).unwrap_err();
    assert!(matches!(err, ConfigError::File { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("configuration file {}: ", missing.display())),
        "{err}"
    );

    let bad = write(dir.path(), "bad.toml", "[server\nlisten = 1\n");
    let text = error_text(load(Some(&bad), &[], &no_flags()));
    assert!(
        text.starts_with(&format!("configuration file {}: ", bad.display())),
        "{text}"
    );
    assert!(text.contains("line 1"), "{text}");
}

#[test]
fn secret_from_file_named_in_environment() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "hunter2\n");
    let config = load_env(&[("DEVCELL_AUTH__OWNER_PASSWORD_FILE", pw.to_str().unwrap())]).unwrap();
    assert_eq!(config.auth.owner_password.unwrap().expose(), "hunter2");
}

#[test]
fn secret_from_file_named_in_toml_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pw", "s3cret\r\n");
    let file = write(
        dir.path(),
        "devcell.toml",
        "[auth]\nowner_email = \"o@example.com\"\nowner_password_file = \"pw\"\n",
    );
    let config = load(Some(&file), &[], &no_flags()).unwrap();
    assert_eq!(config.auth.owner_password.unwrap().expose(), "s3cret");

    // The environment still overrides the file.
    let config = load(
        Some(&file),
        &env(&[("DEVCELL_AUTH__OWNER_PASSWORD", "from-env")]),
        &no_flags(),
    )
    .unwrap();
    assert_eq!(config.auth.owner_password.unwrap().expose(), "from-env");
}

#[test]
fn secret_and_its_file_together_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "x\n");
    let text = error_text(load_env(&[
        ("DEVCELL_AUTH__OWNER_PASSWORD", "y"),
        ("DEVCELL_AUTH__OWNER_PASSWORD_FILE", pw.to_str().unwrap()),
    ]));
    assert!(
        text.starts_with("auth.owner_password (environment variables DEVCELL_AUTH__OWNER_PASSWORD and DEVCELL_AUTH__OWNER_PASSWORD_FILE): "),
        "{text}"
    );

    let file = write(
        dir.path(),
        "devcell.toml",
        "[auth]\nowner_password = \"y\"\nowner_password_file = \"pw\"\n",
    );
    let text = error_text(load(Some(&file), &[], &no_flags()));
    assert!(
        text.starts_with(&format!(
            "auth.owner_password (file {}): both",
            file.display()
        )),
        "{text}"
    );
}

#[test]
fn missing_secret_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("no-such-secret");
    let text = error_text(load_env(&[(
        "DEVCELL_AUTH__OWNER_PASSWORD_FILE",
        absent.to_str().unwrap(),
    )]));
    assert!(
        text.starts_with("auth.owner_password_file (environment variable DEVCELL_AUTH__OWNER_PASSWORD_FILE): cannot read secret file"),
        "{text}"
    );
    assert!(text.contains(&absent.display().to_string()), "{text}");

    let file = write(
        dir.path(),
        "devcell.toml",
        "[auth]\nowner_password_file = \"missing\"\n",
    );
    let text = error_text(load(Some(&file), &[], &no_flags()));
    assert!(
        text.contains(&dir.path().join("missing").display().to_string()),
        "{text}"
    );
}

#[test]
fn secrets_are_masked_when_printed() {
    let config = load_env(&[
        ("DEVCELL_AUTH__OWNER_PASSWORD", "hunter2"),
        ("DEVCELL_AUTH__OWNER_EMAIL", "o@example.com"),
    ])
    .unwrap();
    let toml_text = config.to_masked_toml();
    assert!(!toml_text.contains("hunter2"), "{toml_text}");
    assert!(
        toml_text.contains("owner_password = \"********\""),
        "{toml_text}"
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("********"), "{debug}");
    assert_eq!(config.auth.owner_password.unwrap().expose(), "hunter2");

    // The printed configuration is itself a valid configuration file.
    let reparsed: Config = toml::from_str(&Config::default().to_masked_toml()).unwrap();
    assert_eq!(json(&reparsed), json(&Config::default()));
}

#[test]
fn public_url_is_derived_from_listen_or_normalised() {
    let config = Config::default();
    assert_eq!(config.public_url().as_str(), "http://127.0.0.1:8080/");
    assert!(!config.secure_cookies());

    let v6 = load_env(&[("DEVCELL_SERVER__LISTEN", "[::]:9000")]).unwrap();
    assert_eq!(v6.public_url().as_str(), "http://[::1]:9000/");

    let specific = load_env(&[("DEVCELL_SERVER__LISTEN", "192.0.2.7:80")]).unwrap();
    assert_eq!(specific.public_url().as_str(), "http://192.0.2.7/");

    let https =
        load_env(&[("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com/cell")]).unwrap();
    assert_eq!(https.public_url().as_str(), "https://dev.example.com/cell/");
    assert_eq!(
        https.public_url().join("login").unwrap().as_str(),
        "https://dev.example.com/cell/login"
    );
    assert!(https.secure_cookies());

    let off = load_env(&[
        ("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com/"),
        ("DEVCELL_SERVER__SECURE_COOKIES", "false"),
    ])
    .unwrap();
    assert!(!off.secure_cookies());
}

#[test]
fn config_file_choice() {
    let flag = Path::new("/x/flag.toml");
    let from_env = env(&[("DEVCELL_CONFIG", "/x/env.toml")]);
    assert_eq!(config_file(Some(flag), &from_env), Some(flag.to_path_buf()));
    assert_eq!(
        config_file(None, &from_env),
        Some(PathBuf::from("/x/env.toml"))
    );
}

// The reference page and the option table.

fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/CONFIGURATION.md")
}

#[test]
fn reference_page_is_up_to_date() {
    let expected = reference_markdown();
    let path = reference_path();
    if std::env::var("DEVCELL_TEST_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is out of date with OPTIONS in src/config/options.rs; \
         run `DEVCELL_TEST_BLESS=1 cargo test --lib config::` to regenerate it",
        path.display()
    );
}

fn leaf_keys(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(v, &key, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

fn fully_populated() -> Config {
    let mut config = Config::default();
    config.server.public_url = Some(Url::parse("https://example.com/").unwrap());
    config.server.secure_cookies = Some(true);
    config.server.workspace_domain = Some("ws.example.com".to_string());
    config.auth.owner_email = Some("o@example.com".to_string());
    config.auth.owner_password = Some(Secret::new("pw"));
    config.backup.s3.bucket = Some("backups".to_string());
    config.backup.s3.prefix = "cell-1".to_string();
    config.backup.s3.region = Some("eu-west-1".to_string());
    config.backup.s3.endpoint = Some(Url::parse("http://127.0.0.1:9000/").unwrap());
    config.backup.s3.tags = Some("team=platform,cost-center=42".to_string());
    config.server.path_ports = true;
    config.update.channel_url = Some(Url::parse("https://releases.example.com/stable/").unwrap());
    config.update.window = Some("22:00-04:00".to_string());
    config.server.https_listen = Some("0.0.0.0:443".parse().unwrap());
    config.tls.cert_file = Some(PathBuf::from("/etc/devcell/cell.pem"));
    config.tls.key_file = Some(PathBuf::from("/etc/devcell/cell.key"));
    config.tls.trust_bundle = Some(PathBuf::from("/etc/devcell/ca.pem"));
    config.tls.acme.ca_bundle = Some(PathBuf::from("/etc/devcell/acme-ca.pem"));
    config.tls.dns.provider = Some(DnsProvider::Rfc2136);
    config.tls.dns.server = Some("192.0.2.53:53".parse().unwrap());
    config.tls.dns.zone = Some("example.com".into());
    config.tls.dns.tsig_key_name = Some("devcell".into());
    config.tls.dns.tsig_secret = Some(Secret::new("c2VjcmV0"));
    config.tls.dns.route53_zone_id = Some("Z123".into());
    config.tls.dns.route53_endpoint = Some(Url::parse("http://127.0.0.1:5000/").unwrap());
    config.workspace.file_repos = vec!["/srv/git".into(), "/home/shared/repos".into()];
    config.workspace.allow_destinations = vec!["127.0.0.1:5000".into(), "10.0.0.0/8".into()];
    config.workspace.plain_http_credentials = vec!["git.internal:8080".into()];
    config.workspace.class_max_cpu_millis = Some(8000);
    config.workspace.class_max_memory_bytes = Some(16 << 30);
    config.workspace.class_max_disk_bytes = Some(100 << 30);
    config.server.metrics_token = Some(Secret::new("pw"));
    config.auth.members_create_orgs = true;
    config
}

#[test]
fn every_option_is_documented_and_every_documented_option_exists() {
    let mut leaves = BTreeSet::new();
    leaf_keys(&json(&fully_populated()), "", &mut leaves);
    let documented: BTreeSet<String> = OPTIONS.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(documented, leaves);
    assert_eq!(documented.len(), OPTIONS.len(), "duplicate keys in OPTIONS");
    for o in OPTIONS {
        assert_eq!(o.env, options::env_name(o.key), "env name of {}", o.key);
        assert!(!o.description.is_empty() && !o.description.contains('|'));
    }
}

#[test]
fn documented_defaults_are_the_real_defaults() {
    let defaults = json(&Config::default());
    let mut present = BTreeSet::new();
    leaf_keys(&defaults, "", &mut present);
    for o in OPTIONS {
        match o.default {
            DefaultDoc::Value(shown) => {
                assert!(present.contains(o.key), "{} has no default value", o.key);
                let loaded = load_env(&[(o.env, shown)])
                    .unwrap_or_else(|e| panic!("default of {} does not load: {e}", o.key));
                assert_eq!(json(&loaded), defaults, "documented default of {}", o.key);
            }
            DefaultDoc::None | DefaultDoc::Derived(_) => {
                assert!(!present.contains(o.key), "{} has a default value", o.key)
            }
        }
    }
}

#[test]
fn every_option_loads_from_its_environment_variable_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "pw\n");
    let pw_text = pw.display().to_string();
    // A TSIG key must be base64.
    let tsig = write(dir.path(), "tsig", "c2VjcmV0\n")
        .display()
        .to_string();
    let values = json(&fully_populated());
    let mut vars = Vec::new();
    let mut sections: std::collections::BTreeMap<&str, String> = Default::default();
    for o in OPTIONS {
        let value = o.key.split('.').fold(&values, |v, k| &v[k]);
        let (section, name) = o.key.split_once('.').unwrap_or(("", o.key));
        let lines = sections.entry(section).or_default();
        if o.secret {
            let file = if o.key == "tls.dns.tsig_secret" {
                &tsig
            } else {
                &pw_text
            };
            vars.push((format!("{}_FILE", o.env), file.clone()));
            lines.push_str(&format!("{name}_file = {file:?}\n"));
            continue;
        }
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        vars.push((o.env.to_string(), text));
        let toml_value = toml::Value::try_from(value).unwrap();
        lines.push_str(&format!("{name} = {toml_value}\n"));
    }
    // The top-level keys (section "") sort first, before any table header.
    let toml_text: String = sections
        .iter()
        .map(|(section, lines)| match *section {
            "" => lines.clone(),
            _ => format!("[{section}]\n{lines}"),
        })
        .collect();

    let from_env = load(None, &vars, &no_flags()).unwrap();
    assert_eq!(json(&from_env), values);
    assert_eq!(from_env.auth.owner_password.unwrap().expose(), "pw");

    let file = write(dir.path(), "devcell.toml", &toml_text);
    let from_file = load(Some(&file), &[], &no_flags()).unwrap();
    assert_eq!(json(&from_file), values, "{toml_text}");
    assert_eq!(from_file.auth.owner_password.unwrap().expose(), "pw");
}

#[test]
fn a_certificate_file_without_its_key_is_refused_naming_the_missing_one() {
    let err = load_env(&[("DEVCELL_TLS__CERT_FILE", "/etc/devcell/cell.pem")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls.key_file") && err.contains("together"),
        "{err}"
    );
    let https = load_env(&[
        ("DEVCELL_TLS__CERT_FILE", "/etc/devcell/cell.pem"),
        ("DEVCELL_TLS__KEY_FILE", "/etc/devcell/cell.key"),
    ])
    .unwrap();
    assert_eq!(https.public_url().scheme(), "https");
    let err = load_env(&[("DEVCELL_SERVER__HTTPS_LISTEN", "0.0.0.0:443")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.https_listen") && err.contains("tls.cert_file"),
        "{err}"
    );
}

#[test]
fn an_https_public_url_without_files_means_acme_on_the_standard_ports() {
    let acme = load_env(&[("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com")]).unwrap();
    assert!(acme.acme() && acme.serves_tls());
    assert_eq!(acme.server.listen, "0.0.0.0:80".parse().unwrap());
    assert_eq!(
        acme.server.https_listen,
        Some("0.0.0.0:443".parse().unwrap())
    );
    assert_eq!(acme.acme_names(), vec!["dev.example.com".to_string()]);

    // Addresses the operator set stay; extra names join the public URL's host once.
    let set = load_env(&[
        (
            "DEVCELL_SERVER__PUBLIC_URL",
            "https://dev.example.com:8443/",
        ),
        ("DEVCELL_SERVER__LISTEN", "0.0.0.0:8080"),
        ("DEVCELL_SERVER__HTTPS_LISTEN", "0.0.0.0:8443"),
        (
            "DEVCELL_TLS__ACME__NAMES",
            "dev.example.com,cell.example.com",
        ),
    ])
    .unwrap();
    assert_eq!(set.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        set.server.https_listen,
        Some("0.0.0.0:8443".parse().unwrap())
    );
    assert_eq!(
        set.acme_names(),
        vec!["dev.example.com", "cell.example.com"]
    );

    // Behind a proxy that terminates TLS: plain HTTP on the usual address.
    let proxied = load_env(&[
        ("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com"),
        ("DEVCELL_TLS__ACME__ENABLED", "false"),
    ])
    .unwrap();
    assert!(!proxied.acme() && !proxied.serves_tls());
    assert_eq!(proxied.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert!(proxied.secure_cookies());
}

#[test]
fn acme_settings_that_cannot_work_are_refused_naming_the_key() {
    let err = |vars: &[(&str, &str)]| load_env(vars).unwrap_err().to_string();
    let e = err(&[
        ("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com"),
        ("DEVCELL_SERVER__WORKSPACE_DOMAIN", "ws.example.com"),
    ]);
    assert!(
        e.contains("tls.dns.provider") && e.contains("wildcard"),
        "{e}"
    );
    let e = err(&[
        ("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com"),
        ("DEVCELL_TLS__ACME__CHALLENGE", "dns-99"),
    ]);
    assert!(e.contains("tls.acme.challenge"), "{e}");
    let e = err(&[
        ("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com"),
        (
            "DEVCELL_TLS__ACME__DIRECTORY",
            "http://ca.internal/directory",
        ),
    ]);
    assert!(
        e.contains("tls.acme.directory") && e.contains("https"),
        "{e}"
    );
    let e = err(&[
        ("DEVCELL_SERVER__PUBLIC_URL", "https://dev.example.com"),
        ("DEVCELL_TLS__ACME__NAMES", "bad_name!"),
    ]);
    assert!(
        e.contains("tls.acme.names") && e.contains("bad_name!"),
        "{e}"
    );
    let e = err(&[
        ("DEVCELL_TLS__DNS__PROVIDER", "rfc2136"),
        ("DEVCELL_TLS__DNS__SERVER", "127.0.0.1:53"),
        ("DEVCELL_TLS__DNS__TSIG_KEY_NAME", "devcell"),
        ("DEVCELL_TLS__DNS__TSIG_SECRET", "not base64!"),
    ]);
    assert!(
        e.contains("tls.dns.tsig_secret") && e.contains("base64"),
        "{e}"
    );
    let e = err(&[("DEVCELL_TLS__DNS__PROVIDER", "route53")]);
    assert!(e.contains("tls.dns.route53_zone_id"), "{e}");
}

#[test]
fn mirrors_load_from_tables_in_the_file_and_pairs_in_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "devcell.toml",
        "[[image.mirrors]]\nregistry = \"docker.io\"\nmirror = \"registry.internal:5000/hub\"\n\n[[image.mirrors]]\nregistry = \"ghcr.io\"\nmirror = \"registry.internal:5000/ghcr\"\n",
    );
    let c = load(Some(&file), &[], &no_flags()).unwrap();
    let mirrors = c.image.mirrors();
    assert_eq!(mirrors.len(), 2);
    assert_eq!(mirrors[0].registry, crate::content::image::DOCKER_HUB);
    assert_eq!(mirrors[1].prefix, "ghcr");
    let c = load_env(&[(
        "DEVCELL_IMAGE__MIRRORS",
        "docker.io=mirror.internal/hub, quay.io=mirror.internal/quay",
    )])
    .unwrap();
    assert_eq!(c.image.mirrors().len(), 2);
    let e = error_text(load_env(&[(
        "DEVCELL_IMAGE__MIRRORS",
        "docker.io=https://mirror.internal/hub",
    )]));
    assert!(e.contains("image.mirrors") && e.contains("scheme"), "{e}");
    let e = error_text(load_env(&[("DEVCELL_IMAGE__MIRRORS", "docker.io")]));
    assert!(e.contains("REGISTRY=MIRROR"), "{e}");
}
