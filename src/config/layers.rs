//! Turning the TOML file, the `DEVCELL_*` environment and the command-line flags into figment
//! providers, one per source so that every value remembers exactly where it came from.
//!
//! Unknown keys and `_FILE` secrets are handled here, per source, rather than left to serde:
//! serde's `deny_unknown_fields` cannot tell which layer of a merged table held the bad key.

use std::collections::BTreeSet;
use std::path::Path;

use figment::value::{Dict, Map, Tag, Value};
use figment::{Metadata, Profile, Provider};

use super::options::{OptionDoc, env_name, is_section, option, secret_file_option, suggestion};
use super::{ConfigError, Overrides};

/// Environment variables starting with `DEVCELL_` that are not configuration keys.
pub const IGNORED_ENV: &[&str] = &[
    "DEVCELL_CONFIG",
    "DEVCELL_URL",
    "DEVCELL_TOKEN",
    // The descriptors a handover passes to the next binary (`server::handover::ENV`).
    "DEVCELL_HANDOVER",
];
/// Prefixes of environment variables starting with `DEVCELL_` that are not configuration keys.
pub const IGNORED_ENV_PREFIXES: &[&str] = &["DEVCELL_TEST_"];

const ENV_PREFIX: &str = "DEVCELL_";

/// The values one source sets, as a figment provider named after that source.
pub(super) struct Layer {
    pub source_name: String,
    pub entries: Vec<(&'static str, Value)>,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source_name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, value) in &self.entries {
            insert_nested(&mut root, key, value.clone());
        }
        Ok(Map::from([(Profile::Default, root)]))
    }
}

fn insert_nested(root: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            root.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let slot = root
                .entry(head.to_string())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if !matches!(slot, Value::Dict(..)) {
                *slot = Value::Dict(Tag::Default, Dict::new());
            }
            if let Value::Dict(_, dict) = slot {
                insert_nested(dict, rest, value);
            }
        }
    }
}

/// Which keys of one source were set directly and which through a secret file.
#[derive(Default)]
struct SecretUse {
    direct: BTreeSet<&'static str>,
    from_file: BTreeSet<&'static str>,
}

impl SecretUse {
    /// Secrets set both ways: each is an error.
    fn conflicts(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.direct.intersection(&self.from_file).copied()
    }
}

/// Reads a secret from `path`, dropping trailing line breaks.
fn read_secret(
    option: &OptionDoc,
    key: String,
    source_name: &str,
    path: &Path,
) -> Result<Value, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: key.clone(),
        source_name: source_name.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read secret file {}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(invalid(format!(
            "secret file {} is empty; put the value of {} in it",
            path.display(),
            option.key
        )));
    }
    Ok(Value::from(secret.to_string()))
}

fn unknown_key(key: String, source_name: String) -> ConfigError {
    let reason = match suggestion(&key) {
        Some(s) => format!("unknown key; did you mean {s}?"),
        None => "unknown key; see packaging/CONFIGURATION.md for the valid keys".to_string(),
    };
    ConfigError::UnknownKey {
        key,
        source_name,
        reason,
    }
}

/// The layer for the TOML file at `path`, or every problem found in it.
pub(super) fn file_layer(path: &Path, problems: &mut Vec<ConfigError>) -> Option<Layer> {
    let source_name = format!("file {}", path.display());
    let read_error = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problems.push(read_error(e.to_string()));
            return None;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(table) => table,
        Err(e) => {
            problems.push(read_error(e.to_string().trim_end().to_string()));
            return None;
        }
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut layer = Layer {
        source_name,
        entries: Vec::new(),
    };
    let mut secrets = SecretUse::default();
    walk_table(&table, "", base_dir, &mut layer, &mut secrets, problems);
    for key in secrets.conflicts() {
        problems.push(ConfigError::Invalid {
            key: key.to_string(),
            source_name: layer.source_name.clone(),
            reason: format!("both {key} and {key}_file are set; keep only one"),
        });
    }
    Some(layer)
}

fn walk_table(
    table: &toml::Table,
    prefix: &str,
    base_dir: &Path,
    layer: &mut Layer,
    secrets: &mut SecretUse,
    problems: &mut Vec<ConfigError>,
) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let invalid = |reason: String| ConfigError::Invalid {
            key: key.clone(),
            source_name: layer.source_name.clone(),
            reason,
        };
        if let Some(o) = option(&key) {
            match Value::serialize(value) {
                Ok(v) => {
                    layer.entries.push((o.key, v));
                    if o.secret {
                        secrets.direct.insert(o.key);
                    }
                }
                Err(e) => problems.push(invalid(e.kind.to_string())),
            }
        } else if is_section(&key) {
            match value {
                toml::Value::Table(inner) => {
                    walk_table(inner, &key, base_dir, layer, secrets, problems)
                }
                other => problems.push(invalid(format!(
                    "expected a table ([{key}]), found {}",
                    other.type_str()
                ))),
            }
        } else if let Some(o) = secret_file_option(&key) {
            let Some(file) = value.as_str() else {
                problems.push(invalid(format!(
                    "expected the path of a file holding {}, found {}",
                    o.key,
                    value.type_str()
                )));
                continue;
            };
            let file = base_dir.join(file);
            match read_secret(o, key.clone(), &layer.source_name, &file) {
                Ok(v) => {
                    layer.entries.push((o.key, v));
                    secrets.from_file.insert(o.key);
                }
                Err(e) => problems.push(e),
            }
        } else {
            problems.push(unknown_key(key, layer.source_name.clone()));
        }
    }
}

fn is_ignored_env(name: &str) -> bool {
    IGNORED_ENV.contains(&name) || IGNORED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// One layer per `DEVCELL_*` variable, in name order so that the result does not depend on the
/// order of the environment.
pub(super) fn env_layers(env: &[(String, String)], problems: &mut Vec<ConfigError>) -> Vec<Layer> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !is_ignored_env(name))
        .collect();
    vars.sort();
    let mut layers = Vec::new();
    let mut secrets = SecretUse::default();
    for (name, value) in vars {
        let source_name = format!("environment variable {name}");
        let key = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        if let Some(o) = option(&key) {
            if o.secret {
                secrets.direct.insert(o.key);
            }
            // Lists are comma-separated in the environment (brackets and quotes allowed).
            let v = if o.ty.starts_with("list") {
                let inner = value.trim();
                let inner = inner
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or(inner);
                Value::from(
                    inner
                        .split(',')
                        .map(|s| s.trim().trim_matches('"'))
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<String>>(),
                )
            } else {
                Value::from(value.clone())
            };
            layers.push(Layer {
                source_name,
                entries: vec![(o.key, v)],
            });
        } else if let Some(o) = secret_file_option(&key) {
            match read_secret(o, key, &source_name, Path::new(value)) {
                Ok(v) => {
                    secrets.from_file.insert(o.key);
                    layers.push(Layer {
                        source_name,
                        entries: vec![(o.key, v)],
                    });
                }
                Err(e) => problems.push(e),
            }
        } else {
            problems.push(unknown_key(key, source_name));
        }
    }
    for key in secrets.conflicts() {
        let env = env_name(key);
        problems.push(ConfigError::Invalid {
            key: key.to_string(),
            source_name: format!("environment variables {env} and {env}_FILE"),
            reason: "both are set; keep only one".to_string(),
        });
    }
    layers
}

/// One layer per command-line flag that was given.
pub(super) fn flag_layers(flags: &Overrides, problems: &mut Vec<ConfigError>) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut push = |flag: &str, key: &'static str, value: String| {
        layers.push(Layer {
            source_name: format!("flag {flag}"),
            entries: vec![(key, Value::from(value))],
        });
    };
    if let Some(dir) = &flags.data_dir {
        match dir.to_str() {
            Some(dir) => push(super::FLAG_DATA_DIR, "data_dir", dir.to_string()),
            None => problems.push(ConfigError::Invalid {
                key: "data_dir".to_string(),
                source_name: format!("flag {}", super::FLAG_DATA_DIR),
                reason: format!("{} is not valid UTF-8", dir.display()),
            }),
        }
    }
    if let Some(listen) = flags.listen {
        push(super::FLAG_LISTEN, "server.listen", listen.to_string());
    }
    if let Some(format) = flags.log_format {
        push(
            super::FLAG_LOG_FORMAT,
            "log.format",
            format.as_str().to_string(),
        );
    }
    if let Some(url) = &flags.public_url {
        push(super::FLAG_PUBLIC_URL, "server.public_url", url.to_string());
    }
    layers
}
