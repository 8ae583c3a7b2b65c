//! Handing the cell over to its next binary without refusing a connection. The running process
//! (the old one) swaps the binary in place (keeping `devcell.prev` beside it) and starts it
//! with its listening sockets and one end of a control socket inherited; the two speak lines:
//!
//! ```text
//! new → old   started VERSION      (the binary runs and is the version the manifest says)
//! old → new   go                   (the old one stopped accepting, drained and closed the database)
//! new → old   ready PID            (the new one serves)
//! old → new   ok                   (the old one saw /readyz answer with the new version)
//! new → old   main                 (the service manager was told the new one is the cell; the old one exits)
//! ```
//!
//! Connections that arrive between `go` and the new process accepting wait in the listening
//! sockets' backlog, which both processes share. If the new process exits, says another
//! version, or does not answer healthy within `update.health_deadline`, the old one kills it,
//! restores the previous binary (and the database copy taken before `go` when the new one
//! changed its schema) and serves again on the same sockets.

#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::{Options, Running};
use crate::domain::entities::UpdateOutcome;
use crate::service::updates::{ApplyRequest, DATABASE_BEFORE};

/// The variable naming the inherited descriptors: `control=N,listen=N[,https=N]`.
pub const ENV: &str = "DEVCELL_HANDOVER";
/// The listening sockets a cell serves on; kept (as duplicates) for a handover.
pub struct Listeners {
    pub listen: std::net::TcpListener,
    pub https: Option<std::net::TcpListener>,
}

impl Listeners {
    pub fn try_clone(&self) -> std::io::Result<Listeners> {
        Ok(Listeners {
            listen: self.listen.try_clone()?,
            https: self.https.as_ref().map(|l| l.try_clone()).transpose()?,
        })
    }
}

/// What a process started by a handover got from its predecessor.
pub struct Inherited {
    pub listeners: Listeners,
    control: BufReader<UnixStream>,
}

/// Takes a descriptor named in [`ENV`], checking that it is a socket, and closes it on exec so
/// nothing this process starts (a workspace's sandbox least of all) inherits it.
fn take_socket(fd: i32) -> Result<OwnedFd, String> {
    let fd = u32::try_from(fd)
        .ok()
        .filter(|fd| *fd > 2)
        .ok_or_else(|| format!("{ENV} names descriptor {fd}"))? as i32;
    // SAFETY: the descriptor was put there by our predecessor for us (the variable names it),
    // nothing else in this process knows its number, and `from_env` runs once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stat = rustix::fs::fstat(&owned).map_err(|e| format!("descriptor {fd}: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        std::mem::forget(owned);
        return Err(format!("descriptor {fd} is not a socket"));
    }
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("descriptor {fd}: {e}"))?;
    Ok(owned)
}

impl Inherited {
    /// The descriptors named in [`ENV`], when this process was started by a handover. Only
    /// the first call looks.
    pub fn from_env() -> Option<Result<Inherited, String>> {
        static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let spec = std::env::var(ENV).ok()?;
        if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        Some(Self::parse(&spec))
    }

    fn parse(spec: &str) -> Result<Inherited, String> {
        let mut control = None;
        let mut listen = None;
        let mut https = None;
        for part in spec.split(',') {
            let (name, fd) = part
                .split_once('=')
                .ok_or_else(|| format!("{ENV}: {part:?} is not NAME=FD"))?;
            let fd: i32 = fd
                .parse()
                .map_err(|_| format!("{ENV}: {fd:?} is not a descriptor"))?;
            let slot = match name {
                "control" => &mut control,
                "listen" => &mut listen,
                "https" => &mut https,
                _ => return Err(format!("{ENV}: unknown descriptor {name:?}")),
            };
            *slot = Some(take_socket(fd)?);
        }
        let (Some(control), Some(listen)) = (control, listen) else {
            return Err(format!("{ENV} lacks the control or the listening socket"));
        };
        Ok(Inherited {
            listeners: Listeners {
                listen: std::net::TcpListener::from(listen),
                https: https.map(std::net::TcpListener::from),
            },
            control: BufReader::new(UnixStream::from(control)),
        })
    }

    fn say(&mut self, line: &str) -> Result<(), String> {
        self.control
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("telling the previous process {line:?}: {e}"))
    }

    fn hear(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.control.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    /// Says which version runs and waits until the previous process has let go of the
    /// database. Returns at once when the previous process is gone.
    pub fn wait_for_go(&mut self) -> Result<(), String> {
        self.say(&format!("started {}", crate::version::text()))?;
        match self.hear().as_deref() {
            Some("go") | None => Ok(()),
            Some(other) => Err(format!("the previous process said {other:?}")),
        }
    }

    /// Says this process serves, then waits (on a thread of its own) for the previous one to
    /// confirm it healthy: `true` once it has (or has gone without a word), `false` when it
    /// said otherwise.
    pub fn ready(mut self) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let said = self.say(&format!("ready {}", std::process::id()));
        std::thread::spawn(move || {
            let ok = said.is_ok() && matches!(self.hear().as_deref(), Some("ok") | None);
            if ok {
                // The service manager follows this process before the previous one exits.
                notify_service_manager();
                let _ = self.say("main");
            }
            let _ = tx.send(ok);
        });
        rx
    }
}

/// How a handover ended for the process that started it.
pub enum Outcome {
    /// The new process serves; this one should exit now.
    HandedOver { pid: u32 },
    /// This process serves (again): the update failed, its reason recorded.
    Kept(Box<Running>, String),
}

/// Puts `new` in place of `exe` atomically, keeping the current binary as `devcell.prev`
/// beside it. Nothing changes when any step fails.
fn swap_in(new: &Path, exe: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    let incoming = dir.join(format!(".{name}.incoming"));
    let prev = dir.join(crate::version::PREVIOUS);
    let _ = std::fs::remove_file(&incoming);
    let copy = || -> std::io::Result<()> {
        std::fs::copy(new, &incoming)?;
        std::fs::set_permissions(&incoming, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&incoming)?.sync_all()?;
        // The previous binary stays reachable: a second name for the same file.
        match std::fs::remove_file(&prev) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::hard_link(exe, &prev).or_else(|_| std::fs::copy(exe, &prev).map(|_| ()))?;
        std::fs::rename(&incoming, exe)?;
        std::fs::File::open(dir)?.sync_all()
    };
    copy().map_err(|e| {
        let _ = std::fs::remove_file(&incoming);
        format!(
            "cannot put the new binary in place of {}: {e} (the cell runs on as it was)",
            exe.display()
        )
    })?;
    Ok(prev)
}

/// Puts the previous binary back in place.
fn swap_back(prev: &Path, exe: &Path) -> String {
    match std::fs::rename(prev, exe) {
        Ok(()) => format!("{} is the previous binary again", exe.display()),
        Err(e) => {
            tracing::error!(error = %e, "the previous binary could not be put back");
            format!(
                "the previous binary could not be put back ({e}): move {} to {} by hand",
                prev.display(),
                exe.display()
            )
        }
    }
}

/// A line from the new process, the new process's end, or the deadline.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
    child: &mut tokio::process::Child,
    deadline: Instant,
    what: &str,
) -> Result<String, String> {
    tokio::select! {
        line = lines.next_line() => match line {
            Ok(Some(l)) => Ok(l),
            _ => {
                let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                Err(match status {
                    Ok(Ok(s)) => format!("the new binary ended ({s}) before it {what}"),
                    _ => format!("the new binary closed its control socket before it {what}"),
                })
            }
        },
        status = child.wait() => Err(match status {
            Ok(s) => format!("the new binary ended ({s}) before it {what}"),
            Err(e) => format!("the new binary could not be waited for: {e}"),
        }),
        _ = tokio::time::sleep_until(deadline) => Err(format!(
            "the new binary had not {what} within update.health_deadline"
        )),
    }
}

/// Asks the new process's `/readyz`, through the shared listening socket (only the new
/// process accepts by now): healthy when it answers 200 with `version`.
async fn healthy(addr: SocketAddr, tls: bool, version: &semver::Version) -> Result<(), String> {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{}/readyz", SocketAddr::new(ip, addr.port()));
    // Only this host's loopback, only to ask for readiness: the certificate (made for the
    // public name) is not what is checked here.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let res = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let said = res
        .headers()
        .get(crate::version::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !res.status().is_success() {
        return Err(format!("{url} answered {}", res.status()));
    }
    if said != version.to_string() {
        return Err(format!(
            "{url} answered from version {said:?}, not {version}"
        ));
    }
    Ok(())
}

/// Applies the staged release: swap, start the new binary, hand over, check its health;
/// restore and serve again on failure.
pub async fn apply(running: Running, req: ApplyRequest) -> Outcome {
    let cell = running.cell.clone();
    let version = req.version.clone();
    let deadline = Instant::now() + cell.config().update.health_deadline;
    let fail = |running: Running, outcome: UpdateOutcome, why: String| {
        tracing::error!(%version, reason = %why, "update not applied");
        if let Err(e) = running.cell.finish_update(&req.attempt, outcome, &why) {
            tracing::error!(error = %e, "the update's outcome could not be recorded");
        }
        Outcome::Kept(Box::new(running), why)
    };
    let exe = match crate::version::executable() {
        Ok(e) => e,
        Err(why) => return fail(running, UpdateOutcome::Failed, why),
    };
    let before = req.dir.join(DATABASE_BEFORE);
    let _ = std::fs::remove_file(&before);
    if let Err(e) = cell.store().backup_to(&before) {
        return fail(
            running,
            UpdateOutcome::Failed,
            format!("cannot copy the database before the update: {e}"),
        );
    }
    let prev = match swap_in(&req.binary, &exe) {
        Ok(p) => p,
        Err(why) => return fail(running, UpdateOutcome::Failed, why),
    };
    tracing::info!(%version, exe = %exe.display(), "new binary in place; starting it");
    let (mut child, ours) = match spawn(&exe, &running) {
        Ok(x) => x,
        Err(e) => {
            let back = swap_back(&prev, &exe);
            return fail(
                running,
                UpdateOutcome::RolledBack,
                format!("cannot start the new binary: {e}; {back}"),
            );
        }
    };
    let (ours, mut to_new) = ours.into_split();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(ours));
    // Until it says `started`, this process serves on as if nothing happened.
    let started = next_line(&mut lines, &mut child, deadline, "started").await;
    let said_version = started
        .as_deref()
        .ok()
        .and_then(|l| l.strip_prefix("started "))
        .map(str::to_owned);
    if said_version.as_deref() != Some(version.to_string().as_str()) {
        let why = match (started, said_version) {
            (Err(e), _) => e,
            (Ok(_), Some(v)) => {
                format!("the new binary is version {v}, its manifest says {version}")
            }
            (Ok(l), None) => format!("the new binary said {l:?}"),
        };
        let _ = child.kill().await;
        let back = swap_back(&prev, &exe);
        return fail(running, UpdateOutcome::RolledBack, format!("{why}; {back}"));
    }

    // From here the new process takes the database: this one lets go of it.
    let tls = running.tls;
    let addr = running.addr;
    let runtime = cell.runtime();
    let config = cell.config().clone();
    let clock = cell.clock();
    let Some(listeners) = running.halt().await else {
        let _ = child.kill().await;
        let back = swap_back(&prev, &exe);
        tracing::error!("the listening sockets could not be kept; {back}");
        std::process::exit(1);
    };
    drop(cell);
    let handed = async {
        tokio::io::AsyncWriteExt::write_all(&mut to_new, b"go\n")
            .await
            .map_err(|e| format!("telling the new binary to go on: {e}"))?;
        let line = next_line(&mut lines, &mut child, deadline, "served").await?;
        let pid: u32 = line
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("the new binary said {line:?}"))?;
        tokio::select! {
            h = healthy(addr, tls, &version) => h?,
            _ = tokio::time::sleep_until(deadline) => {
                return Err("the new binary was not healthy within update.health_deadline".to_string())
            }
        }
        Ok::<u32, String>(pid)
    }
    .await;
    match handed {
        Ok(pid) => {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut to_new, b"ok\n").await;
            let _ = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
            tracing::info!(%version, pid, "handed over to the new binary");
            Outcome::HandedOver { pid }
        }
        Err(why) => {
            let _ = child.kill().await;
            let _ = child.wait().await;
            let back = swap_back(&prev, &exe);
            tracing::error!(reason = %why, "the new binary failed; serving again on the previous one");
            let opts = Options {
                clock,
                bootstrap_owner: None,
                runtime,
                listeners: Some(listeners),
                inherited: None,
            };
            let running = match restart(config, opts, &before).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the previous binary cannot serve again");
                    std::process::exit(1);
                }
            };
            fail(running, UpdateOutcome::RolledBack, format!("{why}; {back}"))
        }
    }
}

/// Serves again on the kept sockets; when the new binary left the database in a schema this
/// one does not read, the copy from before the update comes back first.
async fn restart(
    config: crate::config::Config,
    opts: Options,
    before: &Path,
) -> Result<Running, super::StartError> {
    let db = config.data_dir.join(crate::store::DB_FILE);
    if let Err(crate::store::StoreError::TooNew { .. }) = crate::store::Store::open(&db).map(drop) {
        tracing::warn!(
            "the new binary changed the database's schema; restoring the copy from before the update"
        );
        if let Err(e) = std::fs::rename(before, &db) {
            tracing::error!(error = %e, "the database copy could not be restored");
        }
    }
    super::start(config, opts).await
}

/// Starts the binary at `exe` with this process's arguments, the listening sockets and one end
/// of a control socket.
fn spawn(
    exe: &Path,
    running: &Running,
) -> std::io::Result<(tokio::process::Child, tokio::net::UnixStream)> {
    use command_fds::{CommandFdExt, FdMapping};
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let listeners = running
        .listeners
        .as_ref()
        .ok_or_else(|| std::io::Error::other("this cell does not keep its listening sockets"))?;
    let mut mappings = vec![
        FdMapping {
            parent_fd: OwnedFd::from(theirs),
            child_fd: 3,
        },
        FdMapping {
            parent_fd: listeners.listen.as_fd().try_clone_to_owned()?,
            child_fd: 4,
        },
    ];
    let mut spec = "control=3,listen=4".to_string();
    if let Some(https) = &listeners.https {
        mappings.push(FdMapping {
            parent_fd: https.as_fd().try_clone_to_owned()?,
            child_fd: 5,
        });
        spec.push_str(",https=5");
    }
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV, spec)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    cmd.fd_mappings(mappings)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let child = cmd.spawn()?;
    Ok((child, tokio::net::UnixStream::from_std(ours)?))
}

/// Tells the service manager (systemd's `NOTIFY_SOCKET`, when set) which process is the cell
/// and that it serves: at the first start, and by the new process after a handover, so a
/// `Type=notify` unit with `NotifyAccess=all` follows the cell to its new process instead of
/// stopping when the old one exits.
pub fn notify_service_manager() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!(
        "MAINPID={}\nREADY=1\nSTATUS=devcell {} serves",
        std::process::id(),
        crate::version::text()
    );
    let sent = (|| -> std::io::Result<()> {
        use std::os::linux::net::SocketAddrExt;
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
            None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(message.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "the service manager was not told the cell serves");
    }
}
