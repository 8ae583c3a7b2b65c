//! The cell's settings: layered loading (defaults < TOML file < `DEVCELL_*` environment <
//! command-line flags), validation, and the generated reference in `packaging/CONFIGURATION.md`.
//!
//! This module reads files and the environment it is handed, nothing else: it does not read the
//! process environment itself, create the data directory or check that the port is free.
//! Every error names the key, where it was set and why it is wrong.

mod layers;
mod options;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

pub use layers::{IGNORED_ENV, IGNORED_ENV_PREFIXES};
pub use options::{DefaultDoc, OPTIONS, OptionDoc, reference_markdown};

/// Where `serve` looks for its configuration file when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/devcell/devcell.toml";
/// The environment variable naming the configuration file (not itself a configuration key).
pub const CONFIG_FILE_ENV: &str = "DEVCELL_CONFIG";

/// Command-line flag names, as they appear in error messages.
pub const FLAG_DATA_DIR: &str = "--data";
pub const FLAG_LISTEN: &str = "--listen";
pub const FLAG_LOG_FORMAT: &str = "--log-format";
pub const FLAG_PUBLIC_URL: &str = "--public-url";

/// The whole configuration of a cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub workers: WorkersConfig,
    pub backup: BackupConfig,
    pub workspace: WorkspaceConfig,
    pub image: ImageConfig,
    pub tls: TlsConfig,
    pub update: UpdateConfig,
}

/// `[update]`: which keys this cell trusts to sign its releases, where it looks for them and
/// when it applies them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// minisign public keys (base64) trusted besides the keys devcell's root key vouches for.
    pub trusted_keys: Vec<String>,
    /// The release channel: a directory URL holding `manifest.json`, its signature and the
    /// artifacts. Unset: the cell never looks for releases (air-gapped sites use bundles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_url: Option<Url>,
    /// How often the channel is checked; `0s` turns the loop off.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Application releases within the same major version apply by themselves.
    pub auto_apply: bool,
    /// When releases apply by themselves: `HH:MM-HH:MM` in UTC (may wrap midnight). Unset:
    /// at any time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// How long a new binary has to report healthy before the previous one is restored.
    #[serde(with = "humantime_serde")]
    pub health_deadline: Duration,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            trusted_keys: Vec::new(),
            channel_url: None,
            check_interval: Duration::from_secs(24 * 3600),
            auto_apply: true,
            window: None,
            health_deadline: Duration::from_secs(60),
        }
    }
}

/// A maintenance window `HH:MM-HH:MM` (UTC) as minutes of the day, start and end.
pub fn parse_window(text: &str) -> Result<(u16, u16), String> {
    let minutes = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && !t.trim().is_empty()).then_some(h * 60 + m)
    };
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not HH:MM-HH:MM"))?;
    match (minutes(a), minutes(b)) {
        (Some(a), Some(b)) if a != b => Ok((a, b)),
        (Some(_), Some(_)) => Err(format!("{text:?} starts where it ends")),
        _ => Err(format!("{text:?} is not HH:MM-HH:MM (UTC, 24-hour)")),
    }
}

/// `[tls]`: HTTPS, from certificate files the operator keeps or by ACME, and the trust the cell
/// gives to servers it connects to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; read again when it changes and on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for every outbound connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<PathBuf>,
    pub acme: AcmeConfig,
    pub dns: DnsConfig,
}

impl TlsConfig {
    /// Both files, when HTTPS is configured.
    pub fn files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

/// The directory of Let's Encrypt's production ACME server.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[tls.acme]`: certificates from an ACME server, used when `server.public_url` is https and
/// no certificate files are given.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// False leaves HTTPS to a proxy in front of the cell, which then speaks plain HTTP.
    pub enabled: bool,
    #[serde(with = "url_str")]
    pub directory: Url,
    /// PEM CA certificates trusted for the ACME server itself (an internal CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// Email addresses the CA may write to about the certificates.
    pub contact: Vec<String>,
    pub challenge: AcmeChallenge,
    /// Names the certificate holds besides the public URL's host.
    pub names: Vec<String>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: true,
            directory: Url::parse(LETS_ENCRYPT).unwrap_or_else(|_| unreachable!("a valid URL")),
            ca_bundle: None,
            contact: Vec::new(),
            challenge: AcmeChallenge::Auto,
            names: Vec::new(),
        }
    }
}

/// How the cell proves to the ACME server that it answers for a name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeChallenge {
    /// HTTP-01 first, then TLS-ALPN-01 when that fails.
    #[default]
    Auto,
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// `[tls.dns]`: where the cell writes the DNS-01 records that prove it holds
/// `*.{server.workspace_domain}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<DnsProvider>,
    /// RFC 2136: the authoritative server taking dynamic updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<SocketAddr>,
    /// The zone holding the records; defaults to `server.workspace_domain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsig_key_name: Option<String>,
    pub tsig_algorithm: TsigAlgorithm,
    /// The TSIG key, base64 as `tsig-keygen` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsig_secret: Option<Secret>,
    /// Route 53: the hosted zone's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route53_zone_id: Option<String>,
    /// Route 53: another endpoint than AWS's (a compatible service).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_url")]
    pub route53_endpoint: Option<Url>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProvider {
    Rfc2136,
    Route53,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TsigAlgorithm {
    #[default]
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/devcell"),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            workers: WorkersConfig::default(),
            backup: BackupConfig::default(),
            workspace: WorkspaceConfig::default(),
            image: ImageConfig::default(),
            tls: TlsConfig::default(),
            update: UpdateConfig::default(),
        }
    }
}

/// `[server]`: the HTTP listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for the HTTP API and dashboard (with `https_listen`: plain HTTP redirecting to it).
    pub listen: SocketAddr,
    /// With `[tls]` files: HTTPS here, and `listen` only redirects to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_listen: Option<SocketAddr>,
    /// External base URL; normalised by [`load`] to end with `/`. Use [`Config::public_url`].
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_url")]
    pub public_url: Option<Url>,
    /// Requests with larger bodies get 413.
    pub max_body_bytes: usize,
    /// Use [`Config::secure_cookies`], which applies the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_cookies: Option<bool>,
    /// A domain with wildcard DNS to this cell: each port has its own origin
    /// `{port}-{id}.{domain}` (else under `localhost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_domain: Option<String>,
    /// Less safe: ports also at `/w/{id}/p/{port}/` on the dashboard's origin, sandboxed by CSP.
    pub path_ports: bool,
    /// Bearer token `/metrics` asks for; without one it answers loopback clients only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<Secret>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            https_listen: None,
            public_url: None,
            max_body_bytes: 1024 * 1024,
            secure_cookies: None,
            workspace_domain: None,
            path_ports: false,
            metrics_token: None,
        }
    }
}

/// `[log]`: what the tracing subscriber prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}; use text or json")),
        }
    }
}

/// `[auth]`: sessions, links, invitations and the bootstrap owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub login_link_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub invitation_ttl: Duration,
    /// Per client address and account; an address gets five times as many for all accounts,
    /// an account twenty times as many from all addresses. At least 1.
    pub login_attempts_per_minute: u32,
    /// Whether members may create organizations (and own them); else cell administrators only.
    pub members_create_orgs: bool,
    /// Bootstrap owner created by `serve` on an empty database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_password: Option<Secret>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_ttl: Duration::from_secs(12 * 3600),
            login_link_ttl: Duration::from_secs(15 * 60),
            invitation_ttl: Duration::from_secs(7 * 24 * 3600),
            login_attempts_per_minute: 10,
            members_create_orgs: false,
            owner_email: None,
            owner_password: None,
        }
    }
}

/// `[workers]`: the background loops.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// How often expired sessions, links and invitations are purged.
    #[serde(with = "humantime_serde")]
    pub expiry_interval: Duration,
    /// How often running workspaces are checked against their timeouts.
    #[serde(with = "humantime_serde")]
    pub timeouts_interval: Duration,
    /// How long loops get to finish on shutdown; at most 9 s, below the 10 s stop deadline.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            expiry_interval: Duration::from_secs(60),
            timeouts_interval: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(8),
        }
    }
}

/// `[backup]`: snapshots of workspace files, where they are stored and when local copies go.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Running workspaces are snapshotted this often (stopping always snapshots).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Local files of a stopped workspace whose backup is verified are removed after this long.
    #[serde(with = "humantime_serde")]
    pub release_after: Duration,
    /// How often retention, purging, pruning, dormancy and file release run.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// How often the backup loop looks for owed snapshots (retries) and interval snapshots.
    #[serde(with = "humantime_serde")]
    pub loop_interval: Duration,
    /// `[backup.s3]`: store backups in S3 (or an S3-compatible store) instead of the data directory.
    pub s3: S3Config,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            interval: Duration::from_secs(3600),
            release_after: Duration::from_secs(24 * 3600),
            cleanup_interval: Duration::from_secs(3600),
            loop_interval: Duration::from_secs(10),
            s3: S3Config::default(),
        }
    }
}

/// `[workspace]`: what the cell itself reaches for workspaces (their repositories and images).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkspaceConfig {
    /// Directories on this host whose repositories owners may name as `file://` URLs.
    pub file_repos: Vec<PathBuf>,
    /// Destinations clones and image pulls may reach although they are loopback, link-local,
    /// metadata or this host's own addresses (`ADDR`, `ADDR:PORT`, `NET/LEN`).
    pub allow_destinations: Vec<String>,
    /// Hosts (`host` or `host:port`) a stored credential may be sent to over plain http.
    pub plain_http_credentials: Vec<String>,
    /// The largest class an organization may define; unset parts are the host's capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_max_cpu_millis: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_max_memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_max_disk_bytes: Option<u64>,
}

/// `[image]`: where images come from, and how long what builds keep stays.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// `[[image.mirrors]]`: pulls of one registry's images go to another.
    pub mirrors: Vec<MirrorConfig>,
    /// Cached build steps, base trees and features no build used for this long are removed.
    #[serde(with = "humantime_serde")]
    pub build_cache_keep: Duration,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            mirrors: Vec::new(),
            build_cache_keep: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// One `[[image.mirrors]]` entry: `registry = "docker.io"`, `mirror = "host:5000/hub"`. In the
/// environment, `docker.io=host:5000/hub` (comma-separated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MirrorConfig {
    pub registry: String,
    pub mirror: String,
}

impl<'de> Deserialize<'de> for MirrorConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Table { registry: String, mirror: String },
            Short(String),
        }
        match Written::deserialize(d)? {
            Written::Table { registry, mirror } => Ok(MirrorConfig { registry, mirror }),
            Written::Short(s) => match s.split_once('=') {
                Some((registry, mirror)) => Ok(MirrorConfig {
                    registry: registry.trim().to_owned(),
                    mirror: mirror.trim().to_owned(),
                }),
                None => Err(serde::de::Error::custom(format!(
                    "{s:?}: write REGISTRY=MIRROR, e.g. docker.io=registry.internal:5000/hub"
                ))),
            },
        }
    }
}

impl ImageConfig {
    /// The mirrors, checked (`validate` refuses a configuration with one that is not).
    pub fn mirrors(&self) -> Vec<crate::content::image::Mirror> {
        self.mirrors
            .iter()
            .filter_map(|m| crate::content::image::Mirror::parse(&m.registry, &m.mirror).ok())
            .collect()
    }
}

/// `[backup.s3]`: credentials come from the standard AWS chain (environment, profile, instance role).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Set to use S3; unset keeps backups under the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix inside the bucket.
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A custom endpoint (MinIO, moto, other S3-compatible stores); path-style addressing.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_url")]
    pub endpoint: Option<Url>,
    /// Cost-attribution tags for every object, as `key=value,key=value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
}

/// A secret value. Debug output and serialisation print `********`, so logging or printing the
/// configuration cannot leak it; only [`Secret::expose`] gives the value.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

const MASK: &str = "********";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MASK)
    }
}

/// Command-line flags; the top layer. `None` leaves the lower layers' value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub public_url: Option<Url>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key that is not an option, in the file or as a `DEVCELL_*` variable.
    #[error("{key} ({source_name}): {reason}")]
    UnknownKey {
        key: String,
        source_name: String,
        reason: String,
    },
    /// A value of the wrong type or outside its allowed range.
    #[error("{key} ({source_name}): {reason}")]
    Invalid {
        key: String,
        source_name: String,
        reason: String,
    },
    /// The configuration file cannot be read or is not TOML.
    #[error("configuration file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// More than one of the above, all reported at once so they can be fixed in one go.
    #[error("{} configuration problems:{}", .0.len(), list(.0))]
    Several(Vec<ConfigError>),
}

fn list(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("\n  - {e}")).collect()
}

impl ConfigError {
    fn from_problems(mut problems: Vec<ConfigError>) -> Option<ConfigError> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(ConfigError::Several(problems)),
        }
    }

    /// The individual problems (one, unless this is [`ConfigError::Several`]).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(all) => all.iter().collect(),
            one => vec![one],
        }
    }
}

/// The configuration file to use: the `--config` flag, else `DEVCELL_CONFIG`, else
/// [`DEFAULT_CONFIG_FILE`] if it exists, else none.
pub fn config_file(flag: Option<&Path>, env: &[(String, String)]) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    let from_env = env
        .iter()
        .find(|(name, value)| name == CONFIG_FILE_ENV && !value.is_empty());
    if let Some((_, path)) = from_env {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_CONFIG_FILE);
    default.is_file().then(|| default.to_path_buf())
}

/// Loads the configuration: defaults, then `file` (which must exist if given), then the
/// `DEVCELL_*` variables in `env`, then `flags`. All problems found are reported together.
pub fn load(
    file: Option<&Path>,
    env: &[(String, String)],
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut figment = Figment::new();
    if let Some(path) = file
        && let Some(layer) = layers::file_layer(path, &mut problems)
    {
        figment = figment.merge(layer);
    }
    for layer in layers::env_layers(env, &mut problems) {
        figment = figment.merge(layer);
    }
    for layer in layers::flag_layers(flags, &mut problems) {
        figment = figment.merge(layer);
    }
    if let Some(err) = ConfigError::from_problems(problems) {
        return Err(err);
    }
    // Lossy extraction lets environment strings such as "10" and "true" fill numbers and
    // booleans, while strings (passwords included) are taken as they are.
    let mut config: Config = figment.extract_lossy().map_err(from_figment)?;
    let problems = validate(&mut config, &figment);
    match ConfigError::from_problems(problems) {
        Some(err) => Err(err),
        None => Ok(config),
    }
}

fn source_of(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| "default".to_string())
}

fn from_figment(err: figment::Error) -> ConfigError {
    let problems = err
        .into_iter()
        .map(|e| {
            let source_name = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_else(|| "default".to_string());
            let path = e.path.join(".");
            match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => ConfigError::UnknownKey {
                    key: if path.is_empty() {
                        field.clone()
                    } else {
                        format!("{path}.{field}")
                    },
                    source_name,
                    reason: format!("unknown key; expected one of {}", expected.join(", ")),
                },
                kind => {
                    let hint = match options::option(&path).map(|o| o.ty) {
                        Some(ty) if ty.starts_with("duration") => {
                            " (write durations like 30s, 15m, 12h or 7d)"
                        }
                        _ => "",
                    };
                    ConfigError::Invalid {
                        key: path,
                        source_name,
                        reason: format!("{kind}{hint}"),
                    }
                }
            }
        })
        .collect();
    ConfigError::from_problems(problems).unwrap_or_else(|| ConfigError::Invalid {
        key: String::new(),
        source_name: "configuration".to_string(),
        reason: "cannot be read".to_string(),
    })
}

/// Checks what types cannot express, and normalises `server.public_url` to end with `/`.
fn validate(config: &mut Config, figment: &Figment) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, key: &str, reason: String| {
        if !ok {
            problems.push(ConfigError::Invalid {
                key: key.to_string(),
                source_name: source_of(figment, key),
                reason,
            });
        }
    };

    if let Some(w) = &config.update.window
        && let Err(reason) = parse_window(w)
    {
        check(false, "update.window", reason);
    }
    if let Some(u) = &config.update.channel_url {
        check(
            matches!(u.scheme(), "https" | "http"),
            "update.channel_url",
            "must be an https (or http) URL; sites without network import bundles".to_string(),
        );
    }
    check(
        config.update.health_deadline >= Duration::from_secs(1),
        "update.health_deadline",
        "must be at least 1s".to_string(),
    );
    for m in &config.image.mirrors {
        if let Err(reason) = crate::content::image::Mirror::parse(&m.registry, &m.mirror) {
            check(false, "image.mirrors", reason);
        }
    }
    check(
        !config.data_dir.as_os_str().is_empty(),
        "data_dir",
        "must not be empty".to_string(),
    );
    check(
        config.tls.cert_file.is_some() == config.tls.key_file.is_some(),
        if config.tls.cert_file.is_some() {
            "tls.key_file"
        } else {
            "tls.cert_file"
        },
        "set `tls.cert_file` and `tls.key_file` together (or neither, for plain HTTP)".to_string(),
    );
    let acme = config.acme();
    check(
        config.server.https_listen.is_none() || config.tls.files().is_some() || acme,
        "server.https_listen",
        "HTTPS needs `tls.cert_file` and `tls.key_file`, or an https `server.public_url` (for a certificate by ACME)".to_string(),
    );
    if acme {
        // A cell getting its own certificates answers on the standard ports unless told otherwise.
        if figment.find_value("server.listen").is_err() {
            config.server.listen = SocketAddr::from(([0, 0, 0, 0], 80));
        }
        if config.server.https_listen.is_none() {
            config.server.https_listen = Some(SocketAddr::from(([0, 0, 0, 0], 443)));
        }
        for name in config.acme_names() {
            check(
                dns_name_ok(name.trim_start_matches("*.")),
                if config.tls.acme.names.contains(&name) {
                    "tls.acme.names"
                } else {
                    "server.public_url"
                },
                format!("{name:?} is not a domain name a certificate can be issued for"),
            );
        }
        check(
            config.tls.acme.directory.scheme() == "https",
            "tls.acme.directory",
            "must be an https URL".to_string(),
        );
        for contact in &config.tls.acme.contact {
            check(
                contact.contains('@'),
                "tls.acme.contact",
                format!("{contact:?} is not an email address"),
            );
        }
        if config.server.workspace_domain.is_some() {
            check(
                config.tls.dns.provider.is_some(),
                "tls.dns.provider",
                "the wildcard certificate for `server.workspace_domain` is proven through DNS: set `tls.dns.provider` (rfc2136 or route53) and its keys".to_string(),
            );
        }
    }
    match config.tls.dns.provider {
        Some(DnsProvider::Rfc2136) => {
            for (key, set) in [
                ("tls.dns.server", config.tls.dns.server.is_some()),
                (
                    "tls.dns.tsig_key_name",
                    config.tls.dns.tsig_key_name.is_some(),
                ),
                ("tls.dns.tsig_secret", config.tls.dns.tsig_secret.is_some()),
            ] {
                check(set, key, "RFC 2136 updates need it".to_string());
            }
            if let Some(secret) = &config.tls.dns.tsig_secret {
                use base64::Engine;
                check(
                    base64::engine::general_purpose::STANDARD
                        .decode(secret.expose())
                        .is_ok_and(|k| !k.is_empty()),
                    "tls.dns.tsig_secret",
                    "must be base64, as `tsig-keygen` prints it".to_string(),
                );
            }
        }
        Some(DnsProvider::Route53) => check(
            config.tls.dns.route53_zone_id.is_some(),
            "tls.dns.route53_zone_id",
            "Route 53 updates need the hosted zone's id".to_string(),
        ),
        None => {}
    }
    if let Some(zone) = &config.tls.dns.zone {
        check(
            dns_name_ok(zone),
            "tls.dns.zone",
            format!("{zone:?} is not a domain name"),
        );
    }
    let durations = [
        ("auth.session_ttl", config.auth.session_ttl),
        ("auth.login_link_ttl", config.auth.login_link_ttl),
        ("auth.invitation_ttl", config.auth.invitation_ttl),
        ("workers.expiry_interval", config.workers.expiry_interval),
        (
            "workers.timeouts_interval",
            config.workers.timeouts_interval,
        ),
        ("workers.shutdown_grace", config.workers.shutdown_grace),
        ("backup.interval", config.backup.interval),
        ("backup.release_after", config.backup.release_after),
        ("backup.cleanup_interval", config.backup.cleanup_interval),
        ("backup.loop_interval", config.backup.loop_interval),
    ];
    for (key, duration) in durations {
        check(
            !duration.is_zero(),
            key,
            "must be greater than zero".to_string(),
        );
    }
    check(
        config.workers.shutdown_grace <= Duration::from_secs(9),
        "workers.shutdown_grace",
        format!(
            "{} is too long: at most 9s, so that loops stop within the 10 s shutdown deadline",
            humantime::format_duration(config.workers.shutdown_grace)
        ),
    );
    let body = config.server.max_body_bytes;
    check(
        (1024..=1024 * 1024 * 1024).contains(&body),
        "server.max_body_bytes",
        format!("{body} is out of range: must be between 1024 (1 KiB) and 1073741824 (1 GiB)"),
    );
    check(
        config.auth.login_attempts_per_minute >= 1,
        "auth.login_attempts_per_minute",
        "must be at least 1".to_string(),
    );
    check(
        !config.log.level.trim().is_empty(),
        "log.level",
        "must not be empty; use e.g. info".to_string(),
    );
    if let Some(domain) = &config.server.workspace_domain {
        check(
            dns_name_ok(domain),
            "server.workspace_domain",
            format!("{domain:?} is not a domain name like ws.example.com"),
        );
    }
    if let Err(reason) = crate::content::egress::Egress::new(&config.workspace.allow_destinations) {
        check(false, "workspace.allow_destinations", reason);
    }
    for dir in &config.workspace.file_repos {
        check(
            dir.is_absolute(),
            "workspace.file_repos",
            format!("{} is not an absolute path", dir.display()),
        );
    }
    if let Some(email) = &config.auth.owner_email {
        check(
            email.contains('@'),
            "auth.owner_email",
            format!("{email:?} is not an email address"),
        );
    }
    if let Some(url) = &mut config.server.public_url {
        let scheme_ok = matches!(url.scheme(), "http" | "https");
        check(
            scheme_ok,
            "server.public_url",
            format!(
                "scheme {:?} is not supported: use http or https",
                url.scheme()
            ),
        );
        check(
            url.query().is_none() && url.fragment().is_none(),
            "server.public_url",
            "must not have a query or fragment".to_string(),
        );
        check(
            url.username().is_empty() && url.password().is_none(),
            "server.public_url",
            "must not contain a user name or password".to_string(),
        );
        if scheme_ok && !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
    }
    problems
}

/// Whether `name` is a DNS name of letters, digits and hyphens (`ws.example.com`).
fn dns_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Config {
    /// Whether the cell gets its certificates by ACME: an https `server.public_url`, no
    /// certificate files, and `tls.acme.enabled`.
    pub fn acme(&self) -> bool {
        self.tls.acme.enabled
            && self.tls.files().is_none()
            && self
                .server
                .public_url
                .as_ref()
                .is_some_and(|u| u.scheme() == "https")
    }

    /// The names of the cell's own certificate: the public URL's host, then `tls.acme.names`.
    pub fn acme_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .server
            .public_url
            .as_ref()
            .and_then(|u| u.host_str())
            .map(|h| h.to_ascii_lowercase())
            .into_iter()
            .collect();
        for name in &self.tls.acme.names {
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Whether the cell speaks HTTPS itself (certificate files or ACME).
    pub fn serves_tls(&self) -> bool {
        self.tls.files().is_some() || self.acme()
    }

    /// The external base URL, always ending with `/` so that `join("path")` appends to it.
    /// Without `server.public_url` it is `http://` (`https://` with `[tls]` files) plus the listen
    /// address, with an unspecified address replaced by loopback.
    pub fn public_url(&self) -> Url {
        if let Some(url) = &self.server.public_url {
            let mut url = url.clone();
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            return url;
        }
        let listen = match self.server.https_listen {
            Some(https) if self.serves_tls() => https,
            _ => self.server.listen,
        };
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        // `SocketAddr::new` drops any IPv6 scope id, so this always renders as a valid host.
        let scheme = if self.tls.files().is_some() {
            "https"
        } else {
            "http"
        };
        let text = format!("{scheme}://{}/", SocketAddr::new(ip, listen.port()));
        match Url::parse(&text) {
            Ok(url) => url,
            Err(_) => unreachable!("a socket address always forms a valid URL authority"),
        }
    }

    /// Whether cookies carry `Secure`: `server.secure_cookies`, else whether the public URL is https.
    pub fn secure_cookies(&self) -> bool {
        self.server
            .secure_cookies
            .unwrap_or_else(|| self.public_url().scheme() == "https")
    }

    /// The configuration as TOML, secrets replaced by `********`; what `config check` prints.
    pub fn to_masked_toml(&self) -> String {
        match toml::to_string(self) {
            Ok(text) => text,
            Err(e) => format!("# the configuration cannot be shown as TOML: {e}\n"),
        }
    }
}

/// Serde for `Url` as a string, independent of the `url` crate's optional serde feature.
mod url_str {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use url::Url;

    pub fn serialize<S: Serializer>(url: &Url, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(url.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
        let text = String::deserialize(deserializer)?;
        Url::parse(&text).map_err(|e| D::Error::custom(format!("invalid URL: {e}")))
    }
}

/// Serde for `Option<Url>` as a string, independent of the `url` crate's optional serde feature.
mod opt_url {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use url::Url;

    pub fn serialize<S: Serializer>(url: &Option<Url>, serializer: S) -> Result<S::Ok, S::Error> {
        match url {
            Some(url) => serializer.serialize_str(url.as_str()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Url>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| Url::parse(&t).map_err(|e| D::Error::custom(format!("invalid URL: {e}"))))
            .transpose()
    }
}
