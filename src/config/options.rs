//! The one table describing every configuration option, and the reference page rendered from it.
//!
//! Loading uses this table to recognise keys and environment variables; the tests check that it
//! matches the `Config` structs and that `packaging/CONFIGURATION.md` is its current rendering.
//! It does not hold defaults that code reads: those live in the `Default` impls, and a test
//! checks that the defaults shown here load to the same values.

/// The documentation of one configuration option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionDoc {
    /// Dotted path, e.g. `server.listen`.
    pub key: &'static str,
    /// Environment variable, e.g. `DEVCELL_SERVER__LISTEN`.
    pub env: &'static str,
    /// The type as shown to operators.
    pub ty: &'static str,
    /// The default as shown to operators.
    pub default: DefaultDoc,
    /// Secrets may also be given through a file (`…_FILE` / `…_file`) and are masked when printed.
    pub secret: bool,
    /// One line saying what the option does.
    pub description: &'static str,
}

/// How the default of an option is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultDoc {
    /// A literal value, written exactly as it would be in the file or the environment.
    Value(&'static str),
    /// Unset, and nothing is derived.
    None,
    /// Unset; the text says what the effective value is.
    Derived(&'static str),
}

/// Every configuration option. Adding a field to `Config` without a row here fails a test.
pub const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        key: "data_dir",
        env: "DEVCELL_DATA_DIR",
        ty: "path",
        default: DefaultDoc::Value("/var/lib/devcell"),
        secret: false,
        description: "Directory holding the database and all other state.",
    },
    OptionDoc {
        key: "server.listen",
        env: "DEVCELL_SERVER__LISTEN",
        ty: "socket address",
        default: DefaultDoc::Value("0.0.0.0:8080"),
        secret: false,
        description: "Address for the HTTP API and dashboard. When the cell gets its certificate by ACME it defaults to `0.0.0.0:80` and only answers HTTP-01 challenges and redirects to HTTPS.",
    },
    OptionDoc {
        key: "server.https_listen",
        env: "DEVCELL_SERVER__HTTPS_LISTEN",
        ty: "socket address",
        default: DefaultDoc::Derived(
            "unset: with `[tls]` files, HTTPS on `server.listen`; with ACME, `0.0.0.0:443`",
        ),
        secret: false,
        description: "The address for HTTPS, e.g. `0.0.0.0:443`; `server.listen` (e.g. `0.0.0.0:80`) then answers every request with a permanent redirect to the same path over HTTPS.",
    },
    OptionDoc {
        key: "server.public_url",
        env: "DEVCELL_SERVER__PUBLIC_URL",
        ty: "http or https URL",
        default: DefaultDoc::Derived(
            "derived from `server.listen` (0.0.0.0 becomes 127.0.0.1, :: becomes ::1)",
        ),
        secret: false,
        description: "External base URL used in links, e.g. `https://dev.example.com/`.",
    },
    OptionDoc {
        key: "server.max_body_bytes",
        env: "DEVCELL_SERVER__MAX_BODY_BYTES",
        ty: "integer, 1024 to 1073741824",
        default: DefaultDoc::Value("1048576"),
        secret: false,
        description: "Requests with larger bodies are rejected with 413.",
    },
    OptionDoc {
        key: "server.secure_cookies",
        env: "DEVCELL_SERVER__SECURE_COOKIES",
        ty: "boolean",
        default: DefaultDoc::Derived("true when the public URL is https"),
        secret: false,
        description: "Whether session cookies carry the `Secure` attribute.",
    },
    OptionDoc {
        key: "server.workspace_domain",
        env: "DEVCELL_SERVER__WORKSPACE_DOMAIN",
        ty: "domain name",
        default: DefaultDoc::None,
        secret: false,
        description: "A domain whose wildcard DNS (and, with HTTPS, wildcard certificate) points at this cell: each workspace port gets its own origin `{port}-{workspace id}.{domain}` (the id with `-` for `_`). Without it ports are served under `localhost` (`{port}-{id}.localhost`), which only a browser on the cell's own host reaches. Keep it apart from the dashboard's host name.",
    },
    OptionDoc {
        key: "server.path_ports",
        env: "DEVCELL_SERVER__PATH_PORTS",
        ty: "boolean",
        default: DefaultDoc::Value("false"),
        secret: false,
        description: "Less safe: also serve ports at `/w/{id}/p/{port}/` on the dashboard's own origin, for sites without wildcard DNS. Every answer from a port is then sandboxed by `Content-Security-Policy: sandbox` (no same-origin), so its scripts cannot act as the visitor, but some applications break there. When off, a path URL redirects to the port's own origin.",
    },
    OptionDoc {
        key: "server.metrics_token",
        env: "DEVCELL_SERVER__METRICS_TOKEN",
        ty: "string",
        default: DefaultDoc::Derived(
            "unset: `/metrics` answers clients on this host's loopback only",
        ),
        secret: true,
        description: "A bearer token that `/metrics` asks for (`Authorization: Bearer TOKEN`), so a Prometheus elsewhere can scrape it. Without one, `/metrics` answers only clients connecting over loopback and 404 to everyone else.",
    },
    OptionDoc {
        key: "tls.cert_file",
        env: "DEVCELL_TLS__CERT_FILE",
        ty: "path",
        default: DefaultDoc::Derived("unset: plain HTTP"),
        secret: false,
        description: "PEM certificate chain (leaf first) served over HTTPS on `server.listen`, with `tls.key_file`. Read again when the file changes and on SIGHUP; new connections get the new certificate, open ones keep theirs. A file that does not load is logged and the previous certificate kept.",
    },
    OptionDoc {
        key: "tls.key_file",
        env: "DEVCELL_TLS__KEY_FILE",
        ty: "path",
        default: DefaultDoc::Derived("unset: plain HTTP"),
        secret: false,
        description: "PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate in `tls.cert_file`.",
    },
    OptionDoc {
        key: "tls.trust_bundle",
        env: "DEVCELL_TLS__TRUST_BUNDLE",
        ty: "path",
        default: DefaultDoc::Derived("unset: the host's CA certificates only"),
        secret: false,
        description: "PEM CA certificates trusted, besides the host's, for every connection the cell makes: git over https, registries, S3, the ACME server.",
    },
    OptionDoc {
        key: "tls.acme.enabled",
        env: "DEVCELL_TLS__ACME__ENABLED",
        ty: "boolean",
        default: DefaultDoc::Value("true"),
        secret: false,
        description: "With an https `server.public_url` and no `tls.cert_file`, the cell gets and renews its certificate by ACME. `false` leaves HTTPS to a proxy in front of the cell.",
    },
    OptionDoc {
        key: "tls.acme.directory",
        env: "DEVCELL_TLS__ACME__DIRECTORY",
        ty: "URL",
        default: DefaultDoc::Value("https://acme-v02.api.letsencrypt.org/directory"),
        secret: false,
        description: "The ACME server's directory (an internal CA such as step-ca: its `/acme/NAME/directory`).",
    },
    OptionDoc {
        key: "tls.acme.ca_bundle",
        env: "DEVCELL_TLS__ACME__CA_BUNDLE",
        ty: "path",
        default: DefaultDoc::Derived("unset: the host's CA certificates and `tls.trust_bundle`"),
        secret: false,
        description: "PEM CA certificates trusted for the ACME server's own HTTPS.",
    },
    OptionDoc {
        key: "tls.acme.contact",
        env: "DEVCELL_TLS__ACME__CONTACT",
        ty: "list of email addresses (comma-separated in the environment)",
        default: DefaultDoc::Value("[]"),
        secret: false,
        description: "Where the CA may write about the cell's certificates.",
    },
    OptionDoc {
        key: "tls.acme.challenge",
        env: "DEVCELL_TLS__ACME__CHALLENGE",
        ty: "`auto`, `http-01` or `tls-alpn-01`",
        default: DefaultDoc::Value("auto"),
        secret: false,
        description: "How the cell proves it answers for its names: HTTP-01 on `server.listen` (port 80), TLS-ALPN-01 on `server.https_listen` (port 443), or `auto`: HTTP-01, then TLS-ALPN-01 when that fails.",
    },
    OptionDoc {
        key: "tls.acme.names",
        env: "DEVCELL_TLS__ACME__NAMES",
        ty: "list of domain names (comma-separated in the environment)",
        default: DefaultDoc::Value("[]"),
        secret: false,
        description: "Names the certificate holds besides the host of `server.public_url`.",
    },
    OptionDoc {
        key: "tls.dns.provider",
        env: "DEVCELL_TLS__DNS__PROVIDER",
        ty: "`rfc2136` or `route53`",
        default: DefaultDoc::None,
        secret: false,
        description: "Where the DNS-01 records for the wildcard certificate `*.{server.workspace_domain}` are written: an authoritative server taking RFC 2136 updates signed with TSIG, or Route 53 (credentials from the AWS environment).",
    },
    OptionDoc {
        key: "tls.dns.server",
        env: "DEVCELL_TLS__DNS__SERVER",
        ty: "socket address",
        default: DefaultDoc::None,
        secret: false,
        description: "RFC 2136: the primary server's address, e.g. `192.0.2.53:53`.",
    },
    OptionDoc {
        key: "tls.dns.zone",
        env: "DEVCELL_TLS__DNS__ZONE",
        ty: "domain name",
        default: DefaultDoc::Derived("`server.workspace_domain`"),
        secret: false,
        description: "RFC 2136: the zone holding `_acme-challenge.{server.workspace_domain}`.",
    },
    OptionDoc {
        key: "tls.dns.tsig_key_name",
        env: "DEVCELL_TLS__DNS__TSIG_KEY_NAME",
        ty: "string",
        default: DefaultDoc::None,
        secret: false,
        description: "RFC 2136: the TSIG key's name, as the server knows it.",
    },
    OptionDoc {
        key: "tls.dns.tsig_algorithm",
        env: "DEVCELL_TLS__DNS__TSIG_ALGORITHM",
        ty: "`hmac-sha256`, `hmac-sha384` or `hmac-sha512`",
        default: DefaultDoc::Value("hmac-sha256"),
        secret: false,
        description: "RFC 2136: the TSIG key's algorithm.",
    },
    OptionDoc {
        key: "tls.dns.tsig_secret",
        env: "DEVCELL_TLS__DNS__TSIG_SECRET",
        ty: "base64 string",
        default: DefaultDoc::None,
        secret: true,
        description: "RFC 2136: the TSIG key, base64 as `tsig-keygen` prints it.",
    },
    OptionDoc {
        key: "tls.dns.route53_zone_id",
        env: "DEVCELL_TLS__DNS__ROUTE53_ZONE_ID",
        ty: "string",
        default: DefaultDoc::None,
        secret: false,
        description: "Route 53: the id of the hosted zone holding `server.workspace_domain`.",
    },
    OptionDoc {
        key: "tls.dns.route53_endpoint",
        env: "DEVCELL_TLS__DNS__ROUTE53_ENDPOINT",
        ty: "URL",
        default: DefaultDoc::Derived("unset: AWS"),
        secret: false,
        description: "Route 53: another endpoint than AWS's, for a compatible service.",
    },
    OptionDoc {
        key: "workspace.file_repos",
        env: "DEVCELL_WORKSPACE__FILE_REPOS",
        ty: "list of paths (comma-separated in the environment)",
        default: DefaultDoc::Value("[]"),
        secret: false,
        description: "Directories on this host under which owners may name repositories as `file://` URLs (members never may). Empty: no `file://` repositories.",
    },
    OptionDoc {
        key: "workspace.allow_destinations",
        env: "DEVCELL_WORKSPACE__ALLOW_DESTINATIONS",
        ty: "list of `ADDR`, `ADDR:PORT` or `NET/LEN` (comma-separated in the environment)",
        default: DefaultDoc::Value("[]"),
        secret: false,
        description: "Destinations that clones and image pulls may reach although they are loopback, link-local, cloud metadata or this host's own addresses (refused otherwise, e.g. a registry on 127.0.0.1:5000).",
    },
    OptionDoc {
        key: "image.mirrors",
        env: "DEVCELL_IMAGE__MIRRORS",
        ty: "list of `[[image.mirrors]]` tables with `registry` and `mirror` (`REGISTRY=MIRROR`, comma-separated, in the environment)",
        default: DefaultDoc::Value("[]"),
        secret: false,
        description: "Registry mirrors: pulls of images, base images and features on `registry` (e.g. `docker.io`) go to `mirror` (`host[:port][/path]`, e.g. `registry.internal:5000/hub`), with the mirror's host's credentials.",
    },
    OptionDoc {
        key: "image.build_cache_keep",
        env: "DEVCELL_IMAGE__BUILD_CACHE_KEEP",
        ty: "duration",
        default: DefaultDoc::Value("14days"),
        secret: false,
        description: "Cached Dockerfile steps, base trees for builds and fetched features that no build used for this long are removed (checked hourly); built images stay.",
    },
    OptionDoc {
        key: "update.trusted_keys",
        env: "DEVCELL_UPDATE__TRUSTED_KEYS",
        ty: "list of minisign public keys, base64 (comma-separated in the environment)",
        default: DefaultDoc::Value("[]"),
        secret: false,
        description: "Keys trusted to sign releases besides those devcell's root key vouches for: your own builds' (`devcell release keygen` prints one).",
    },
    OptionDoc {
        key: "update.channel_url",
        env: "DEVCELL_UPDATE__CHANNEL_URL",
        ty: "URL",
        default: DefaultDoc::None,
        secret: false,
        description: "Where releases are published: a directory holding `manifest.json`, `manifest.json.minisig` and the artifacts (`devcell release sign`'s output). Unset, the cell never looks for releases; air-gapped sites import bundles.",
    },
    OptionDoc {
        key: "update.check_interval",
        env: "DEVCELL_UPDATE__CHECK_INTERVAL",
        ty: "duration",
        default: DefaultDoc::Value("1day"),
        secret: false,
        description: "How often the channel is checked (`0s`: never).",
    },
    OptionDoc {
        key: "update.auto_apply",
        env: "DEVCELL_UPDATE__AUTO_APPLY",
        ty: "bool",
        default: DefaultDoc::Value("true"),
        secret: false,
        description: "Application releases of the same major version apply by themselves (within `update.window`); infrastructure and major releases always wait for an owner's approval.",
    },
    OptionDoc {
        key: "update.window",
        env: "DEVCELL_UPDATE__WINDOW",
        ty: "`HH:MM-HH:MM` (UTC)",
        default: DefaultDoc::None,
        secret: false,
        description: "The maintenance window in which releases apply by themselves; it may wrap midnight (`22:00-04:00`). Unset: any time.",
    },
    OptionDoc {
        key: "update.health_deadline",
        env: "DEVCELL_UPDATE__HEALTH_DEADLINE",
        ty: "duration",
        default: DefaultDoc::Value("1m"),
        secret: false,
        description: "How long a new binary has to start and report healthy; otherwise the previous binary is restored and serves again, and the failure is recorded.",
    },
    OptionDoc {
        key: "workspace.plain_http_credentials",
        env: "DEVCELL_WORKSPACE__PLAIN_HTTP_CREDENTIALS",
        ty: "list of `host` or `host:port` (comma-separated in the environment)",
        default: DefaultDoc::Value("[]"),
        secret: false,
        description: "Hosts to which a stored credential may be sent over plain `http://` (an internal server without TLS); to any other host credentials only go over https.",
    },
    OptionDoc {
        key: "workspace.class_max_cpu_millis",
        env: "DEVCELL_WORKSPACE__CLASS_MAX_CPU_MILLIS",
        ty: "integer (thousandths of a core)",
        default: DefaultDoc::Derived("the host's CPU count × 1000"),
        secret: false,
        description: "The most CPU a workspace class may give; owners cannot define a larger class.",
    },
    OptionDoc {
        key: "workspace.class_max_memory_bytes",
        env: "DEVCELL_WORKSPACE__CLASS_MAX_MEMORY_BYTES",
        ty: "integer (bytes)",
        default: DefaultDoc::Derived("the host's memory"),
        secret: false,
        description: "The most memory a workspace class may give; owners cannot define a larger class.",
    },
    OptionDoc {
        key: "workspace.class_max_disk_bytes",
        env: "DEVCELL_WORKSPACE__CLASS_MAX_DISK_BYTES",
        ty: "integer (bytes)",
        default: DefaultDoc::Derived("the size of the data directory's filesystem"),
        secret: false,
        description: "The largest disk a workspace class may give; owners cannot define a larger class.",
    },
    OptionDoc {
        key: "log.format",
        env: "DEVCELL_LOG__FORMAT",
        ty: "`text` or `json`",
        default: DefaultDoc::Value("text"),
        secret: false,
        description: "Format of log lines on standard error.",
    },
    OptionDoc {
        key: "log.level",
        env: "DEVCELL_LOG__LEVEL",
        ty: "string",
        default: DefaultDoc::Value("info"),
        secret: false,
        description: "A tracing `EnvFilter` directive, e.g. `info` or `devcell=debug,info`.",
    },
    OptionDoc {
        key: "auth.session_ttl",
        env: "DEVCELL_AUTH__SESSION_TTL",
        ty: "duration",
        default: DefaultDoc::Value("12h"),
        secret: false,
        description: "How long a login session lasts.",
    },
    OptionDoc {
        key: "auth.login_link_ttl",
        env: "DEVCELL_AUTH__LOGIN_LINK_TTL",
        ty: "duration",
        default: DefaultDoc::Value("15m"),
        secret: false,
        description: "How long a login link stays valid.",
    },
    OptionDoc {
        key: "auth.invitation_ttl",
        env: "DEVCELL_AUTH__INVITATION_TTL",
        ty: "duration",
        default: DefaultDoc::Value("7d"),
        secret: false,
        description: "How long an invitation stays valid.",
    },
    OptionDoc {
        key: "auth.login_attempts_per_minute",
        env: "DEVCELL_AUTH__LOGIN_ATTEMPTS_PER_MINUTE",
        ty: "integer, at least 1",
        default: DefaultDoc::Value("10"),
        secret: false,
        description: "Login attempts allowed per minute from one client address for one account. One address gets five times as many over all accounts, and one account twenty times as many from all addresses, so nobody can lock an owner out from one address; `devcell admin login-link` always works.",
    },
    OptionDoc {
        key: "auth.members_create_orgs",
        env: "DEVCELL_AUTH__MEMBERS_CREATE_ORGS",
        ty: "boolean",
        default: DefaultDoc::Value("false"),
        secret: false,
        description: "Whether any signed-in user may create an organization (and own it). Off: only cell administrators may.",
    },
    OptionDoc {
        key: "auth.owner_email",
        env: "DEVCELL_AUTH__OWNER_EMAIL",
        ty: "email address",
        default: DefaultDoc::None,
        secret: false,
        description: "Bootstrap owner account that `serve` creates on an empty database.",
    },
    OptionDoc {
        key: "auth.owner_password",
        env: "DEVCELL_AUTH__OWNER_PASSWORD",
        ty: "string",
        default: DefaultDoc::None,
        secret: true,
        description: "Password of the bootstrap owner account.",
    },
    OptionDoc {
        key: "workers.expiry_interval",
        env: "DEVCELL_WORKERS__EXPIRY_INTERVAL",
        ty: "duration",
        default: DefaultDoc::Value("60s"),
        secret: false,
        description: "How often expired sessions, login links and invitations are purged.",
    },
    OptionDoc {
        key: "workers.timeouts_interval",
        env: "DEVCELL_WORKERS__TIMEOUTS_INTERVAL",
        ty: "duration",
        default: DefaultDoc::Value("15s"),
        secret: false,
        description: "How often running workspaces are checked against their inactivity timeout and maximum lifetime (and warned 5 minutes before).",
    },
    OptionDoc {
        key: "workers.shutdown_grace",
        env: "DEVCELL_WORKERS__SHUTDOWN_GRACE",
        ty: "duration, at most 9s",
        default: DefaultDoc::Value("8s"),
        secret: false,
        description: "How long background loops get to finish on shutdown.",
    },
    OptionDoc {
        key: "backup.interval",
        env: "DEVCELL_BACKUP__INTERVAL",
        ty: "duration",
        default: DefaultDoc::Value("1h"),
        secret: false,
        description: "Running workspaces are snapshotted this often; stopping a workspace always snapshots it.",
    },
    OptionDoc {
        key: "backup.release_after",
        env: "DEVCELL_BACKUP__RELEASE_AFTER",
        ty: "duration",
        default: DefaultDoc::Value("24h"),
        secret: false,
        description: "Local files of a stopped workspace whose backup is verified are removed after this long; the next start restores them.",
    },
    OptionDoc {
        key: "backup.cleanup_interval",
        env: "DEVCELL_BACKUP__CLEANUP_INTERVAL",
        ty: "duration",
        default: DefaultDoc::Value("1h"),
        secret: false,
        description: "How often snapshot retention, purging, pruning, dormancy and file release run.",
    },
    OptionDoc {
        key: "backup.loop_interval",
        env: "DEVCELL_BACKUP__LOOP_INTERVAL",
        ty: "duration",
        default: DefaultDoc::Value("10s"),
        secret: false,
        description: "How often the backup loop retries owed snapshots (with exponential backoff per workspace) and takes interval snapshots.",
    },
    OptionDoc {
        key: "backup.s3.bucket",
        env: "DEVCELL_BACKUP__S3__BUCKET",
        ty: "string",
        default: DefaultDoc::None,
        secret: false,
        description: "Store backups in this S3 bucket (credentials from the standard AWS chain); unset keeps them under the data directory.",
    },
    OptionDoc {
        key: "backup.s3.prefix",
        env: "DEVCELL_BACKUP__S3__PREFIX",
        ty: "string",
        default: DefaultDoc::Value(""),
        secret: false,
        description: "Key prefix for the backup repository inside the bucket; empty puts it at the bucket's root.",
    },
    OptionDoc {
        key: "backup.s3.region",
        env: "DEVCELL_BACKUP__S3__REGION",
        ty: "string",
        default: DefaultDoc::None,
        secret: false,
        description: "AWS region of the bucket; unset uses the AWS chain's region, else us-east-1.",
    },
    OptionDoc {
        key: "backup.s3.endpoint",
        env: "DEVCELL_BACKUP__S3__ENDPOINT",
        ty: "URL",
        default: DefaultDoc::None,
        secret: false,
        description: "Endpoint of an S3-compatible store (MinIO, Ceph, moto); path-style addressing.",
    },
    OptionDoc {
        key: "backup.s3.tags",
        env: "DEVCELL_BACKUP__S3__TAGS",
        ty: "string, key=value,key=value",
        default: DefaultDoc::None,
        secret: false,
        description: "Cost-attribution tags set on every object the cell writes.",
    },
];

/// The option with this dotted key.
pub(super) fn option(key: &str) -> Option<&'static OptionDoc> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// The secret option whose file variant is this dotted key (`auth.owner_password_file`).
pub(super) fn secret_file_option(key: &str) -> Option<&'static OptionDoc> {
    let base = key.strip_suffix("_file")?;
    option(base).filter(|o| o.secret)
}

/// Whether this dotted key names a table that holds options (`server`, `auth`, ...).
pub(super) fn is_section(key: &str) -> bool {
    OPTIONS.iter().any(|o| {
        o.key
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The environment variable for a dotted key: `auth.owner_password` → `DEVCELL_AUTH__OWNER_PASSWORD`.
pub(super) fn env_name(key: &str) -> String {
    format!("DEVCELL_{}", key.replace('.', "__").to_uppercase())
}

/// The known key closest to an unknown one, if it is close enough to be a likely typo.
pub(super) fn suggestion(unknown: &str) -> Option<String> {
    let candidates = OPTIONS.iter().flat_map(|o| {
        let file = o.secret.then(|| format!("{}_file", o.key));
        std::iter::once(o.key.to_string()).chain(file)
    });
    // A key put in the wrong table (`listen` at the top level) is found by its last part.
    let leaf = unknown.rsplit('.').next().unwrap_or(unknown);
    let candidates: Vec<String> = candidates.collect();
    if let Some(moved) = candidates
        .iter()
        .find(|c| c.as_str() != unknown && c.rsplit('.').next() == Some(leaf))
    {
        return Some(moved.clone());
    }
    candidates
        .into_iter()
        .map(|c| (edit_distance(unknown, &c), c))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The configuration reference, `packaging/CONFIGURATION.md`, rendered from [`OPTIONS`].
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# devcell configuration reference\n\
         \n\
         <!-- Generated from OPTIONS in src/config/options.rs. \
         Do not edit; run `DEVCELL_TEST_BLESS=1 cargo test --lib config::` to regenerate. -->\n\
         \n\
         `devcell serve --config FILE` reads its settings in layers, each overriding the one \
         before: built-in defaults, then the TOML file, then `DEVCELL_*` environment variables, \
         then command-line flags (`--data-dir`, `--listen`, `--log-format`, `--public-url`). \
         The key `section.name` is written as `name` under `[section]` in the file and as \
         `DEVCELL_SECTION__NAME` in the environment (`__` separates the levels). \
         A secret can instead be read from a file: add `_FILE` to its variable \
         (`DEVCELL_AUTH__OWNER_PASSWORD_FILE=/run/secrets/pw`) or `_file` to its key in the TOML \
         file (`owner_password_file = \"/run/secrets/pw\"`, relative paths being relative to the \
         configuration file); the file's content without trailing line breaks becomes the value, \
         and setting both the secret and its file in the same layer is an error. \
         Unknown keys, unknown `DEVCELL_*` variables and invalid values are errors that name the \
         key and where it was set; `DEVCELL_CONFIG`, `DEVCELL_URL`, `DEVCELL_TOKEN` and \
         `DEVCELL_TEST_*` are not configuration keys and are ignored. \
         Durations are written like `30s`, `15m`, `12h` or `7d` and must be greater than zero. \
         `devcell config check` prints the resolved configuration as TOML with secrets masked.\n\
         \n\
         | Key | Environment variable | Type | Default | Description |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for o in OPTIONS {
        let env = if o.secret {
            format!("`{}` or `{}_FILE`", o.env, o.env)
        } else {
            format!("`{}`", o.env)
        };
        let ty = if o.secret {
            format!("{}, secret", o.ty)
        } else {
            o.ty.to_string()
        };
        let default = match o.default {
            DefaultDoc::Value(v) => format!("`{v}`"),
            DefaultDoc::None => "none".to_string(),
            DefaultDoc::Derived(how) => how.to_string(),
        };
        out.push_str(&format!(
            "| `{}` | {env} | {ty} | {default} | {} |\n",
            o.key, o.description
        ));
    }
    out
}
