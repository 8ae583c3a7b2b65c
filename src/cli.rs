//! The command line: the cell itself (`up`, `serve`), operator commands that work with or
//! without a running cell (`admin`, `db`, `config`), and an API client (`login`, `ws`).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::client::{OutputArg, WsCmd, print_table};
use crate::config::{self, Config, LogFormat, Overrides};
use crate::server::{self, Options};

#[derive(Parser, Debug)]
#[command(
    name = "devcell",
    version = crate::version::text(),
    about = "A self-hosted cloud development environment cell in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a trial cell with zero configuration: data in ./devcell-data, HTTP on 127.0.0.1:8080,
    /// and a one-time login link printed on the console.
    Up {
        /// Data directory.
        #[arg(long, default_value = "./devcell-data")]
        data: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long)]
        log_format: Option<LogFormat>,
    },
    /// Run the cell with layered configuration: defaults < file < DEVCELL_* env < flags.
    Serve(ServeArgs),
    /// Stop every workspace as a stop does (git state, snapshot), end their sandboxes and
    /// unmount their disks; with --purge then remove the data directory. Workspaces keep
    /// running when `up` or `serve` stops; this is how they end.
    Down {
        #[command(flatten)]
        data: DataArg,
        /// Remove the data directory afterwards (the database, every file and backup in it).
        #[arg(long)]
        purge: bool,
    },
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Local administration through the data directory; works whether or not the cell runs.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Database operations.
    #[command(subcommand)]
    Db(DbCmd),
    /// The cell's TLS certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Check that a cell answers on /readyz (exit code 0 when ready).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: Url,
    },
    /// Save credentials for a cell, for the `ws` commands.
    Login {
        /// The cell's URL.
        url: Url,
        /// Use an existing API token instead of email and password.
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Work with workspaces through the API of the cell you logged in to.
    #[command(subcommand)]
    Ws(WsCmd),
    /// Workspace backups.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// OCI images for workspaces: import archives for offline sites, list the cache.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Make signing keys and signed releases (for whoever builds devcell's releases).
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Updates of this cell: check, apply and approve releases; their history.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// Offline bundles: one file that carries a signed release to a site without network.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Internal: the per-workspace agent, run by the cell inside a workspace's sandbox.
    #[command(hide = true)]
    Agent {
        /// The run directory (socket, spec, logs).
        #[arg(long)]
        run: PathBuf,
    },
    /// Internal: prints the git state of repositories as JSON; the cell runs it inside a
    /// sandbox of the workspace, never on the host (git runs the repository's configuration).
    #[command(hide = true)]
    GitState { dirs: Vec<PathBuf> },
    /// Internal: what COPY, ADD and WORKDIR do to an image build's root; the cell runs it
    /// inside the build step's sandbox.
    #[command(hide = true)]
    BuildCopy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Internal: joins a workspace's cgroups, drops to its uid and executes the sandbox.
    #[command(hide = true)]
    SandboxExec {
        #[arg(long = "cgroup-procs")]
        cgroup_procs: Vec<PathBuf>,
        #[arg(long)]
        uid: Option<u32>,
        #[arg(long)]
        gid: Option<u32>,
        /// Paths to bind where the uid can walk, in a mount namespace of the launcher's (JSON).
        #[arg(long)]
        rebase: Option<String>,
        /// Wait for the request (JSON) on standard input: a launcher started ahead of need.
        #[arg(long, conflicts_with_all = ["cgroup_procs", "uid", "gid", "rebase", "argv"])]
        request_on_stdin: bool,
        #[arg(last = true, required_unless_present = "request_on_stdin")]
        argv: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (default: $DEVCELL_CONFIG, else /etc/devcell/devcell.toml when present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (config key `data_dir`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Address to listen on (config key `server.listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// External base URL used in links (config key `server.public_url`).
    #[arg(long)]
    pub public_url: Option<Url>,
    /// `text` or `json` (config key `log.format`).
    #[arg(long)]
    pub log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Resolve the configuration from every layer, validate it, and print it with secrets masked.
    Check(ServeArgs),
    /// Print the reference of every option (packaging/CONFIGURATION.md).
    Reference,
}

#[derive(Args, Debug, Clone)]
pub struct DataArg {
    /// Data directory (default: ./devcell-data when it exists, else the configured data_dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Each certificate served: names, source, issuer, expiry, next renewal, last error.
    Status {
        #[command(flatten)]
        data: DataArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Print a new API token for the owner (or the named user).
    Token {
        #[command(flatten)]
        data: DataArg,
        /// The user's email; default: the first cell administrator.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// DANGEROUS: replace a user's password and end all of their sessions. Prints the new
    /// password unless one is given on standard input.
    ResetPassword {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        user: Option<String>,
        /// Read the new password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Print a one-time login link for the owner (or the named user).
    LoginLink {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        user: Option<String>,
    },
    /// Make a user a cell administrator (the admin page and API, creating organizations).
    Grant {
        #[command(flatten)]
        data: DataArg,
        /// The user's email.
        #[arg(long)]
        user: String,
    },
    /// Make a user no longer a cell administrator (the cell keeps at least one).
    Revoke {
        #[command(flatten)]
        data: DataArg,
        /// The user's email.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Print the password of the cell's backup repository, for the stock `restic` CLI
    /// (`RESTIC_PASSWORD=... restic -r DATA/backups snapshots`). Whoever can read the data
    /// directory can run it; keep the printed key as safe as the backups.
    Key {
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import an OCI image archive (an OCI layout as a tar, e.g. from `skopeo copy ... oci-archive:`
    /// or `docker save`), so workspaces can use its images without a registry.
    Import {
        file: PathBuf,
        #[command(flatten)]
        data: DataArg,
    },
    /// Pull an image into the cache ahead of the workspaces that need it, through the
    /// configured mirrors, with a progress bar.
    Pull {
        /// The image, e.g. `docker.io/library/node:22` or `registry.internal:5000/app:1`.
        reference: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// List the images in the cache.
    List {
        #[command(flatten)]
        data: DataArg,
        #[command(flatten)]
        out: OutputArg,
    },
}

// Parsed once per run: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ReleaseCmd {
    /// Write a new signing key pair: DIR/devcell.pub and DIR/devcell.key (no password: keep
    /// it offline). An existing key is never replaced.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a release: copies the binary into DIR and writes DIR/manifest.json (version,
    /// channel, kind, times, the artifact's size and SHA-256) and DIR/manifest.json.minisig.
    Sign {
        /// The secret key (`devcell release keygen`'s devcell.key).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        binary: PathBuf,
        /// The release's version, e.g. 0.2.0.
        #[arg(long)]
        version: semver::Version,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// `application` (applies by itself) or `infrastructure` (waits for an owner).
        #[arg(long, default_value = "application", value_parser = ["application", "infrastructure"])]
        kind: String,
        /// The oldest running version the release may replace.
        #[arg(long, default_value = "0.0.0")]
        min_version: semver::Version,
        /// Days until the manifest expires (a cell refuses it afterwards).
        #[arg(long, default_value_t = 90)]
        valid_days: u32,
        /// An OCI image archive for workspace images (`docker save`, `skopeo copy ...
        /// oci-archive:`) to carry in the release, covered by its signature; a site imports
        /// it with the bundle. Repeatable.
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Write a signed release directory (`devcell release sign`'s) into one file: a tar, or a
    /// zstd-compressed tar when FILE ends in .zst.
    Build {
        #[arg(long)]
        release: PathBuf,
        /// Release notes to carry (Markdown).
        #[arg(long)]
        notes: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Apply an offline bundle to the cell running on this host: everything in it is checked
    /// before anything changes, then the update applies as one from the channel would.
    Import {
        file: PathBuf,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum UpdateCmd {
    /// Check a release directory or bundle as this cell would before applying it (signature
    /// by a trusted key, expiry, versions, every artifact's size and SHA-256; a bundle's
    /// entries); changes nothing and exits non-zero on any refusal.
    Verify {
        /// The release directory (manifest.json, its signature and the artifacts), or a
        /// bundle file (`devcell bundle build`'s).
        path: PathBuf,
        /// A public key to trust besides `update.trusted_keys`: minisign's base64 line or a
        /// .pub file. Repeatable.
        #[arg(long = "trusted-key")]
        trusted_keys: Vec<String>,
        /// Configuration file for `update.trusted_keys` (default: $DEVCELL_CONFIG, else
        /// /etc/devcell/devcell.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The running version, the newest release seen, whether one waits for approval, and the
    /// latest updates with how they ended.
    Status {
        #[command(flatten)]
        data: DataArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the channel's release (`update.channel_url`) and check and stage it; applies
    /// nothing.
    Check {
        #[command(flatten)]
        data: DataArg,
    },
    /// Apply a release to the cell running on this host: a release directory or bundle, else
    /// the channel's. Waits until the new binary serves, or was rolled back.
    Apply {
        /// A release directory or bundle file; default: the channel's release.
        from: Option<PathBuf>,
        #[command(flatten)]
        data: DataArg,
    },
    /// Go back to the previous binary (`devcell.prev`, kept beside the running one by the last
    /// update), handed over as an update is. The channel's newer release then applies only
    /// when asked.
    Rollback {
        #[command(flatten)]
        data: DataArg,
    },
    /// Approve the newest release (infrastructure and major releases wait for an owner) and
    /// apply it.
    Approve {
        version: String,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Write a consistent copy of the database to PATH (a new file), even while the cell serves.
    Backup {
        path: PathBuf,
        #[command(flatten)]
        data: DataArg,
    },
}

/// A refusal of the update code as the command line says it: its stable code, then why.
fn update_error(e: crate::update::UpdateError) -> anyhow::Error {
    anyhow!("[{}] {e}", e.code())
}

fn release(cmd: ReleaseCmd) -> Result<()> {
    use crate::update::vendor;
    match cmd {
        ReleaseCmd::Keygen { out } => {
            let public = vendor::keygen(&out).map_err(update_error)?;
            println!(
                "wrote {} and {} (keep the secret key offline)\npublic key: {public}",
                out.join(vendor::PUBLIC_KEY_FILE).display(),
                out.join(vendor::SECRET_KEY_FILE).display()
            );
            Ok(())
        }
        ReleaseCmd::Sign {
            key,
            binary,
            version,
            channel,
            kind,
            min_version,
            valid_days,
            images,
            out,
        } => {
            let kind = crate::update::Kind::parse(&kind)
                .ok_or_else(|| anyhow!("--kind is application or infrastructure"))?;
            let m = vendor::sign(&vendor::Release {
                key: &key,
                binary: &binary,
                version,
                channel,
                kind,
                min_version,
                valid_for: time::Duration::days(i64::from(valid_days)),
                images: &images,
                out: &out,
            })
            .map_err(update_error)?;
            println!(
                "signed devcell {} ({}) into {}: {} and {}, valid until {}",
                m.version,
                m.channel,
                out.display(),
                crate::update::MANIFEST,
                crate::update::SIGNATURE,
                crate::human::short_time(m.expires)
            );
            Ok(())
        }
    }
}

fn verify_update(path: &Path, extra: &[String], config: Option<&Path>) -> Result<()> {
    use crate::update::Trust;
    let env = env_vars();
    let file = config::config_file(config, &env);
    let cfg = config::load(file.as_deref(), &env, &Overrides::default())
        .map_err(|e| anyhow!("invalid configuration:\n{e}"))?;
    // A --trusted-key is a .pub file or the key itself.
    let mut keys = Vec::new();
    for k in extra {
        let p = Path::new(k);
        keys.push(if p.is_file() {
            std::fs::read_to_string(p).map_err(|e| anyhow!("reading {k}: {e}"))?
        } else {
            k.clone()
        });
    }
    let trust = Trust::default()
        .with_keys(&cfg.update.trusted_keys, "update.trusted_keys")
        .and_then(|t| t.with_keys(&keys, "--trusted-key"))
        .map_err(update_error)?;
    // A bundle is unpacked (checked entry by entry, its signature before its artifacts) into a
    // directory of its own, removed afterwards.
    let unpacked = if path.is_file() {
        let dir = tempfile::Builder::new()
            .prefix("devcell-bundle-")
            .tempdir()
            .map_err(|e| anyhow!("making a directory to check the bundle in: {e}"))?;
        crate::update::bundle::unpack(path, &trust, dir.path()).map_err(update_error)?;
        Some(dir)
    } else {
        None
    };
    let path = unpacked.as_ref().map(|d| d.path()).unwrap_or(path);
    let trust = crate::update::trust_for(path, trust).map_err(update_error)?;
    let running = crate::version::current();
    let v = crate::update::verify_release(path, &trust, running, time::OffsetDateTime::now_utc())
        .map_err(update_error)?;
    let now = time::OffsetDateTime::now_utc();
    println!(
        "release {} ({}, {}) is signed by trusted key {}; expires {}; updates from {} or later",
        v.manifest.version,
        v.manifest.channel,
        v.manifest.kind.as_str(),
        v.key_id,
        crate::human::moment(v.manifest.expires, now),
        v.manifest.min_version
    );
    for (a, _) in &v.files {
        println!(
            "  {} ({}): {} bytes, SHA-256 {} — verified",
            a.name, a.target, a.size, a.sha256
        );
    }
    Ok(())
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn serve_overrides(a: &ServeArgs) -> Overrides {
    Overrides {
        data_dir: a.data.clone(),
        listen: a.listen,
        log_format: a.log_format,
        public_url: a.public_url.clone(),
    }
}

fn load_config(a: &ServeArgs) -> Result<Config> {
    let env = env_vars();
    let file = config::config_file(a.config.as_deref(), &env);
    config::load(file.as_deref(), &env, &serve_overrides(a))
        .map_err(|e| anyhow!("invalid configuration:\n{e}"))
}

/// The configured level, with the backup library's step-by-step progress (about fifteen
/// lines per snapshot, some empty) kept to warnings: the cell logs one line per backup
/// itself. Naming `rustic_core` in the level turns it back on.
fn quiet_libraries(level: &str) -> String {
    if level.contains("rustic") {
        level.to_owned()
    } else {
        format!("{level},rustic_core=warn")
    }
}

pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(quiet_libraries(level)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            data,
            listen,
            log_format,
        } => {
            let overrides = Overrides {
                data_dir: Some(data),
                listen: Some(listen),
                log_format,
                public_url: None,
            };
            // The trial ignores /etc/devcell: zero configuration, but DEVCELL_* still applies.
            let config = config::load(None, &env_vars(), &overrides)
                .map_err(|e| anyhow!("invalid configuration:\n{e}"))?;
            run_cell(config, Some(("owner@devcell.local".into(), None))).await
        }
        Command::Serve(a) => {
            let config = load_config(&a)?;
            let owner = config
                .auth
                .owner_email
                .clone()
                .unwrap_or_else(|| "owner@devcell.local".into());
            let password = config
                .auth
                .owner_password
                .as_ref()
                .map(|p| p.expose().to_owned());
            run_cell(config, Some((owner, password))).await
        }
        Command::Config(ConfigCmd::Check(a)) => {
            let config = load_config(&a)?;
            print!("{}", config.to_masked_toml());
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Config(ConfigCmd::Reference) => {
            print!("{}", config::reference_markdown());
            Ok(())
        }
        Command::Admin(cmd) => admin(cmd).await,
        Command::Cert(CertCmd::Status { data, json }) => cert_status(&data, json).await,
        Command::Down { data, purge } => down(&data, purge).await,
        Command::Db(DbCmd::Backup { path, data }) => {
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            };
            let out = local_admin(&data, crate::admin::Request::DbBackup { path }).await?;
            println!("{}", out.1);
            Ok(())
        }
        Command::Healthcheck { url } => {
            let res = reqwest::get(url.join("readyz")?)
                .await
                .context("the cell does not answer")?;
            if !res.status().is_success() {
                bail!("not ready: {}", res.status());
            }
            println!("ready");
            Ok(())
        }
        Command::Login {
            url,
            token,
            email,
            password_stdin,
        } => crate::client::login(url, token, email, password_stdin).await,
        Command::Ws(cmd) => {
            let code = crate::client::ws(cmd).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Backup(BackupCmd::Key { data }) => {
            let data = data_dir(&data)?;
            if !data.join(crate::service::secrets::KEY_FILE).exists() {
                bail!(
                    "no cell key in {}; pass the cell's data directory with --data",
                    data.display()
                );
            }
            let sealer = crate::service::secrets::Sealer::load_or_create(&data)
                .map_err(|e| anyhow!("{e}"))?;
            println!("{}", sealer.backup_password());
            Ok(())
        }
        Command::Release(cmd) => release(cmd),
        Command::Bundle(BundleCmd::Build {
            release,
            notes,
            out,
        }) => {
            let bytes = crate::update::bundle::build(&release, notes.as_deref(), &out)
                .map_err(update_error)?;
            println!("wrote {} ({})", out.display(), crate::human::bytes(bytes));
            Ok(())
        }
        Command::Update(UpdateCmd::Verify {
            path,
            trusted_keys,
            config,
        }) => verify_update(&path, &trusted_keys, config.as_deref()),
        Command::Update(UpdateCmd::Status { data, json }) => update_status(&data, json).await,
        Command::Update(UpdateCmd::Check { data }) => {
            let (_, said) = local_admin(&data, crate::admin::Request::UpdateCheck).await?;
            println!("{said}");
            Ok(())
        }
        Command::Update(UpdateCmd::Apply { from, data }) => {
            let from = from.map(absolute).transpose()?;
            follow_update(&data, crate::admin::Request::UpdateApply { from }).await
        }
        Command::Update(UpdateCmd::Rollback { data }) => {
            follow_update(&data, crate::admin::Request::UpdateRollback).await
        }
        Command::Update(UpdateCmd::Approve { version, data }) => {
            follow_update(&data, crate::admin::Request::UpdateApprove { version }).await
        }
        Command::Bundle(BundleCmd::Import { file, data }) => {
            eprintln!(
                "checking {}: its signature, then every entry, before anything changes…",
                file.display()
            );
            let from = Some(absolute(file)?);
            follow_update(&data, crate::admin::Request::UpdateApply { from }).await
        }
        Command::Image(ImageCmd::Pull { reference, data }) => pull_image(&reference, &data).await,
        Command::Image(cmd) => {
            // The cache is plain files with atomic renames: safe while a cell runs.
            let (data, list) = match &cmd {
                ImageCmd::Import { data, .. } => (data_dir(data)?, None),
                ImageCmd::List { data, out } => (data_dir(data)?, Some(out.json)),
                ImageCmd::Pull { .. } => unreachable!("handled above"),
            };
            let store = crate::content::image::ImageStore::new(data.join("images"));
            let images = match cmd {
                ImageCmd::Import { file, .. } => {
                    store.import_archive(&file).map_err(|e| anyhow!("{e}"))?
                }
                ImageCmd::List { .. } => store.list().map_err(|e| anyhow!("{e}"))?,
                ImageCmd::Pull { .. } => unreachable!("handled above"),
            };
            if list == Some(true) {
                let rows: Vec<_> = images
                    .iter()
                    .map(|i| serde_json::json!({ "reference": i.reference, "digest": i.digest, "size_bytes": i.size_bytes }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.reference.clone(),
                            i.digest.clone(),
                            i.size_bytes.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["REFERENCE", "DIGEST", "BYTES"], &rows);
            }
            Ok(())
        }
        Command::Agent { run } => {
            init_logging(LogFormat::Text, "info");
            crate::agent::run(&run).await
        }
        Command::GitState { dirs } => {
            let mut states = Vec::new();
            for dir in dirs {
                match crate::content::git::status(&dir, None).await {
                    Ok(s) => states.push(s),
                    Err(e) => eprintln!("{}: {e}", dir.display()),
                }
            }
            println!("{}", serde_json::to_string(&states)?);
            Ok(())
        }
        Command::BuildCopy { args } => {
            let args =
                crate::content::image::copy::CopyArgs::parse(&args).map_err(anyhow::Error::msg)?;
            crate::content::image::copy::run(&args).map_err(anyhow::Error::msg)
        }
        Command::SandboxExec {
            request_on_stdin: true,
            ..
        } => {
            crate::runtime::local::sandbox_exec_requested().context("cannot start the sandbox")?;
            Ok(())
        }
        Command::SandboxExec {
            cgroup_procs,
            uid,
            gid,
            rebase,
            argv,
            ..
        } => {
            let rebase: Option<crate::runtime::rebase::Rebase> = rebase
                .map(|r| serde_json::from_str(&r))
                .transpose()
                .context("--rebase is not a rebase")?;
            let err = crate::runtime::local::sandbox_exec(
                &cgroup_procs,
                uid,
                gid,
                rebase.as_ref(),
                &argv,
            );
            bail!("cannot start the sandbox: {err}")
        }
    }
}

async fn run_cell(config: Config, owner: Option<(String, Option<String>)>) -> Result<()> {
    init_logging(config.log.format, &config.log.level);
    crate::version::remember_executable();
    let inherited = crate::server::handover::Inherited::from_env()
        .transpose()
        .map_err(|e| anyhow!("cannot take over from the previous process: {e}"))?;
    let took_over = inherited.is_some();
    let mut running = server::start(
        config,
        Options {
            bootstrap_owner: owner,
            inherited,
            ..Options::default()
        },
    )
    .await?;
    if took_over {
        println!(
            "devcell {} took over and serves: {} (pid {})",
            crate::version::text(),
            running.cell.link("").trim_end_matches('/'),
            std::process::id()
        );
    } else {
        greet(&running)?;
        crate::server::handover::notify_service_manager();
    }
    let mut requests = running.cell.take_update_requests();
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        let request = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut signal => break,
            req = request => {
                let Some(req) = req else {
                    requests = None;
                    continue;
                };
                let version = req.version.clone();
                match crate::server::handover::apply(running, req).await {
                    crate::server::handover::Outcome::HandedOver { pid } => {
                        println!("handed over to devcell {version} (pid {pid})");
                        let _ = std::io::stdout().flush();
                        // Nothing of this process is needed any more; its workspaces, sockets
                        // and database are the new process's.
                        std::process::exit(0);
                    }
                    crate::server::handover::Outcome::Kept(r, why) => {
                        eprintln!("the update to devcell {version} did not apply: {why}");
                        running = *r;
                        // A cell started again has a new cell, with its own requests.
                        if let Some(fresh) = running.cell.take_update_requests() {
                            requests = Some(fresh);
                        }
                    }
                }
            }
        }
    }
    tracing::info!("shutting down");
    let data = running.cell.config().data_dir.clone();
    let running_now = running
        .cell
        .active_workspaces()
        .map_or(0, |w| w.iter().filter(|w| w.lifecycle.is_active()).count());
    running.stop().await;
    if running_now > 0 {
        eprintln!(
            "{running_now} workspace(s) keep running; `devcell down --data {}` stops them (snapshot first)",
            data.display()
        );
    }
    Ok(())
}

/// What `up` and `serve` print once the cell serves: its address and a one-time login link.
fn greet(running: &server::Running) -> Result<()> {
    let admin = running.cell.find_user(None)?;
    let link = running.cell.create_login_link(&admin.id)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "devcell is ready: {}",
        running.cell.link("").trim_end_matches('/')
    )?;
    if running.created_owner {
        writeln!(
            out,
            "created the owner account {} and the organization \"Default\"",
            admin.email
        )?;
    }
    writeln!(
        out,
        "one-time login link for {} (valid {}): {link}",
        admin.email,
        humantime::format_duration(running.cell.config().auth.login_link_ttl)
    )?;
    out.flush()?;
    Ok(())
}

/// `std::path::absolute` of a path given on the command line (the cell resolves it, from
/// another working directory).
fn absolute(p: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&p).with_context(|| format!("{}", p.display()))
}

async fn update_status(d: &DataArg, json: bool) -> Result<()> {
    let (_, said) = local_admin(d, crate::admin::Request::UpdateStatus).await?;
    let v: serde_json::Value = serde_json::from_str(&said)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!("running: devcell {}", s(&v["running"]));
    println!(
        "channel: {}",
        v["channel"].as_str().unwrap_or("none (bundles only)")
    );
    let n = &v["newest"];
    if n.is_object() {
        let approval = if v["waiting_approval"] == true {
            format!(
                " — waits for approval: `devcell update approve {}`",
                s(&n["version"])
            )
        } else {
            String::new()
        };
        println!(
            "newest release seen: {} ({}, {}) from {}{approval}",
            s(&n["version"]),
            s(&n["channel"]),
            s(&n["kind"]),
            s(&n["source"]),
        );
    }
    // The one time format: the moment, and how long ago.
    let now = time::OffsetDateTime::now_utc();
    let moment = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| crate::human::moment(t, now))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = v["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                moment(&a["started_at"]),
                format!("{} → {}", s(&a["from"]), s(&a["to"])),
                s(&a["outcome"]),
                s(&a["message"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no update applied yet");
    } else {
        print_table(&["STARTED", "VERSIONS", "OUTCOME", "MESSAGE"], &rows);
    }
    Ok(())
}

/// Asks the running cell for an update, then follows it until the new binary serves (exit
/// 0) or the previous one serves again (exit 1), through whichever process has the admin
/// socket.
async fn follow_update(d: &DataArg, req: crate::admin::Request) -> Result<()> {
    let data = data_dir(d)?;
    let said = match crate::admin::call(&data, &req).await? {
        Some(crate::admin::Response::Ok { value, .. }) => value,
        Some(crate::admin::Response::Error { message }) => bail!(message),
        None => bail!(
            "no cell runs on {}: start it (`devcell up` or `serve`), then apply the update",
            data.display()
        ),
    };
    let asked: serde_json::Value = serde_json::from_str(&said)?;
    let version = asked["version"].as_str().unwrap_or("").to_owned();
    let started = asked["started_at"].as_str().unwrap_or("").to_owned();
    eprintln!("handing over to devcell {version}…");
    let until = std::time::Instant::now() + Duration::from_secs(900);
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Between the two processes the socket may be missing for a moment.
        let Ok(Some(crate::admin::Response::Ok { value, .. })) =
            crate::admin::call(&data, &crate::admin::Request::UpdateStatus).await
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&value)?;
        let Some(a) = v["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["started_at"] == started.as_str())
        else {
            continue;
        };
        let message = a["message"].as_str().unwrap_or("");
        match a["outcome"].as_str() {
            Some("applied") => {
                println!("updated to devcell {version}: {message}");
                return Ok(());
            }
            Some("applying") | None => continue,
            Some(outcome) => bail!("[{outcome}] the update to {version} did not apply: {message}"),
        }
    }
    bail!("the update to {version} has not finished after 15 minutes; see `devcell update status`")
}

/// How long `down` waits for the workspaces to stop (each stop snapshots its files).
const DOWN_WITHIN: Duration = Duration::from_secs(600);

async fn down(d: &DataArg, purge: bool) -> Result<()> {
    let data = data_dir(d)?;
    if !data.join(crate::store::DB_FILE).exists() {
        bail!(
            "no devcell database in {} (pass --data DIR)",
            data.display()
        );
    }
    let (stopped, still) = match crate::admin::call(&data, &crate::admin::Request::Down).await? {
        Some(crate::admin::Response::Ok { value, .. }) => {
            if purge {
                bail!(
                    "{value}; a cell still runs on {}: stop it (Ctrl-C or SIGTERM), then run `devcell down --purge` again",
                    data.display()
                );
            }
            println!("{value}");
            return Ok(());
        }
        Some(crate::admin::Response::Error { message }) => bail!("{message}"),
        None => {
            // No cell runs: one is started here, without serving anyone, for the stops.
            let env = env_vars();
            let overrides = Overrides {
                data_dir: Some(data.clone()),
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                log_format: None,
                public_url: None,
            };
            let file = config::config_file(None, &env);
            let mut config = config::load(file.as_deref(), &env, &overrides)
                .map_err(|e| anyhow!("invalid configuration:\n{e}"))?;
            config.log.level = "warn".into();
            init_logging(config.log.format, &config.log.level);
            let running = server::start(config, Options::default()).await?;
            let result = running.cell.down(DOWN_WITHIN).await;
            running.stop().await;
            result?
        }
    };
    println!("stopped {stopped} workspace(s); their disks are unmounted");
    if still > 0 {
        bail!(
            "{still} workspace(s) did not stop within {}",
            secs(DOWN_WITHIN)
        );
    }
    if purge {
        let data = std::path::absolute(&data)?;
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        if let Some(m) = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .find(|m| Path::new(m).starts_with(&data))
        {
            bail!("{m} is still mounted; nothing was removed");
        }
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot remove {}", data.display()))?;
        println!("removed {}", data.display());
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `devcell image pull`: the cell's configuration decides the mirrors, the destinations the
/// pull may reach and the CA certificates it trusts; the image is the operator's, so every
/// user of the cell may use it.
async fn pull_image(reference: &str, d: &DataArg) -> Result<()> {
    let env = env_vars();
    let file = config::config_file(None, &env);
    let config = config::load(file.as_deref(), &env, &Overrides::default())
        .map_err(|e| anyhow!("invalid configuration:\n{e}"))?;
    let data = data_dir(d)?;
    let trust = match &config.tls.trust_bundle {
        Some(b) => Some(std::sync::Arc::new(
            crate::trust::Outbound::load(b).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let egress = crate::content::egress::Egress::new(&config.workspace.allow_destinations)
        .map_err(anyhow::Error::msg)?
        .with_trust(trust);
    let parsed = crate::content::image::ImageRef::parse(reference).map_err(|e| anyhow!("{e}"))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(parsed.to_string());
    let shown = bar.clone();
    let store = crate::content::image::ImageStore::new(data.join("images"))
        .with_egress(egress)
        .with_mirrors(config.image.mirrors())
        .with_progress(move |done, total| {
            shown.set_length(total);
            shown.set_position(done);
        });
    let (source, mirror) = store.source_of(&parsed);
    if let Some(m) = mirror {
        eprintln!("through mirror {} ({source})", m.written);
    }
    let pulled = store
        .pull(
            &parsed,
            &crate::content::image::RegistryAuth::Anonymous,
            crate::content::image::Puller::Operator,
        )
        .await;
    bar.finish_and_clear();
    let pulled = pulled.map_err(|e| anyhow!("{e}"))?;
    println!(
        "{} {} ({} bytes unpacked)",
        pulled.reference, pulled.digest, pulled.size_bytes
    );
    Ok(())
}

fn data_dir(d: &DataArg) -> Result<PathBuf> {
    if let Some(p) = &d.data {
        return Ok(p.clone());
    }
    let trial = PathBuf::from("./devcell-data");
    if trial.join(crate::store::DB_FILE).exists() {
        return Ok(trial);
    }
    let env = env_vars();
    let file = config::config_file(None, &env);
    let config = config::load(file.as_deref(), &env, &Overrides::default())
        .map_err(|e| anyhow!("invalid configuration:\n{e}"))?;
    Ok(config.data_dir)
}

/// Runs an admin request through the running cell's socket, or directly on the database.
async fn local_admin(d: &DataArg, req: crate::admin::Request) -> Result<(Option<String>, String)> {
    let data = data_dir(d)?;
    // A cell handing over to its next binary has no admin socket for a moment, while one of
    // the two processes holds the database: ask again until one of them answers.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let resp = loop {
        match crate::admin::call(&data, &req)
            .await
            .with_context(|| format!("admin socket in {}", data.display()))?
        {
            Some(r) => break r,
            None => {
                let db = data.join(crate::store::DB_FILE);
                if !db.exists() {
                    bail!(
                        "no devcell database in {} (pass --data DIR)",
                        data.display()
                    );
                }
                let store = match crate::store::Store::open(&db) {
                    Err(crate::store::StoreError::Locked { .. })
                        if std::time::Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    other => other?,
                };
                let env = env_vars();
                let mut config = config::load(
                    None,
                    &env,
                    &Overrides {
                        data_dir: Some(data.clone()),
                        ..Overrides::default()
                    },
                )
                .map_err(|e| anyhow!("invalid configuration:\n{e}"))?;
                config.data_dir = data;
                let cell = crate::service::Cell::new(
                    store,
                    config,
                    std::sync::Arc::new(crate::service::SystemClock),
                );
                break crate::admin::execute(&cell, req).await;
            }
        }
    };
    match resp {
        crate::admin::Response::Ok { user, value } => Ok((user, value)),
        crate::admin::Response::Error { message } => bail!(message),
    }
}

fn read_stdin_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn admin(cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::Token { data, user, name } => {
            let (_, token) =
                local_admin(&data, crate::admin::Request::Token { user, name }).await?;
            println!("{token}");
        }
        AdminCmd::ResetPassword {
            data,
            user,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(read_stdin_line()?)
            } else {
                None
            };
            let given = password.is_some();
            let (user, password) = local_admin(
                &data,
                crate::admin::Request::ResetPassword { user, password },
            )
            .await?;
            let user = user.unwrap_or_default();
            if given {
                println!("password of {user} changed; their sessions have ended");
            } else {
                println!("new password for {user}: {password}");
            }
        }
        AdminCmd::LoginLink { data, user } => {
            let (_, link) = local_admin(&data, crate::admin::Request::LoginLink { user }).await?;
            println!("{link}");
        }
        AdminCmd::Grant { data, user } => set_admin(&data, user, true).await?,
        AdminCmd::Revoke { data, user } => set_admin(&data, user, false).await?,
    }
    Ok(())
}

async fn cert_status(data: &DataArg, json: bool) -> Result<()> {
    let (_, text) = local_admin(data, crate::admin::Request::CertStatus).await?;
    if json {
        println!("{text}");
        return Ok(());
    }
    let status: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    if status.is_empty() {
        println!(
            "no certificate: the cell speaks plain HTTP (set an https server.public_url for one by ACME, or tls.cert_file and tls.key_file)"
        );
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc();
    let moment = |v: &serde_json::Value| -> String {
        v.as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| crate::human::moment(t, now))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = status
        .iter()
        .map(|s| {
            let source = s["source"].as_str().unwrap_or("-");
            vec![
                s["names"]
                    .as_array()
                    .map(|n| {
                        n.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                if source == "self-signed" {
                    "SELF-SIGNED (browsers warn)".into()
                } else {
                    source.to_owned()
                },
                s["issuer"].as_str().unwrap_or("-").to_owned(),
                if source == "self-signed" {
                    "-".into()
                } else {
                    moment(&s["not_after"])
                },
                moment(&s["next_renewal"]),
                match s["last_error"].as_str() {
                    Some(e) => format!("{} failed: {e}", s["failures"]),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    crate::client::print_table(
        &[
            "NAMES",
            "SOURCE",
            "ISSUER",
            "EXPIRES",
            "NEXT RENEWAL",
            "LAST ERROR",
        ],
        &rows,
    );
    Ok(())
}

async fn set_admin(data: &DataArg, user: String, admin: bool) -> Result<()> {
    let (_, said) = local_admin(data, crate::admin::Request::SetAdmin { user, admin }).await?;
    println!("{said}");
    Ok(())
}

pub fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn path_display(p: &Path) -> String {
    p.display().to_string()
}
