//! File access beneath a directory that workspace content controls, without following its
//! links out. The cell runs as root beside directories a workspace writes into; any path the
//! cell resolves there by name could have been replaced by a link to `/etc/shadow`, the cell's
//! data or another workspace's files. Everything here starts from a directory handle opened
//! without following a link and resolves the rest with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, so that nothing it opens lies outside that
//! directory, whatever is swapped in meanwhile (or, on kernels without openat2, one component
//! at a time with `O_NOFOLLOW`, refusing every link).
//!
//! Not for trusted paths (the cell's own data directory): those are opened as usual.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// A directory opened without following a link at its last component (the path up to it is
/// the cell's own and trusted). Paths below it are resolved beneath it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens `path`, refusing a link at its last component.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir { fd })
    }

    /// Opens `rel` beneath this directory with `flags` (plus `O_CLOEXEC | O_NOCTTY`). With
    /// `links` false no symbolic link is followed at all, else only links that stay beneath.
    pub fn open_at(&self, rel: &Path, flags: OFlags, links: bool) -> io::Result<OwnedFd> {
        // openat2 refuses flags that mean nothing with O_PATH.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let mut resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        if !links {
            resolve |= ResolveFlags::NO_SYMLINKS;
        }
        match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS) => self.open_walking(rel, flags),
            other => Ok(other?),
        }
    }

    /// For kernels without openat2: one component at a time, refusing every link and `..`.
    fn open_walking(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let parts: Vec<&std::ffi::OsStr> = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "only plain names are resolved beneath a workspace directory",
                )),
            })
            .collect::<io::Result<_>>()?;
        let Some((last, dirs)) = parts.split_last() else {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, Mode::empty())?);
        };
        let mut at = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for part in dirs {
            at = rustix::fs::openat(
                &at,
                *part,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
        Ok(rustix::fs::openat(
            &at,
            *last,
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
        )?)
    }

    /// A regular file beneath this directory opened for reading with its size, or `None`
    /// when it (or a directory on its way) does not exist. Anything but a regular file is
    /// refused (a fifo would block the cell).
    pub(crate) fn open_regular(
        &self,
        rel: &Path,
        links: bool,
    ) -> io::Result<Option<(std::fs::File, u64)>> {
        let fd = match self.open_at(rel, OFlags::RDONLY | OFlags::NONBLOCK, links) {
            Ok(fd) => fd,
            // NotADirectory: a file where a directory of the path would be.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Some((std::fs::File::from(fd), st.st_size as u64)))
    }

    /// The whole of a regular file beneath this directory, or `None` when it does not exist;
    /// refused when larger than `max` bytes.
    pub fn read_file(&self, rel: &Path, max: u64, links: bool) -> io::Result<Option<Vec<u8>>> {
        let too_large = || {
            io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("larger than {max} bytes"),
            )
        };
        let Some((file, size)) = self.open_regular(rel, links)? else {
            return Ok(None);
        };
        if size > max {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(too_large());
        }
        Ok(Some(bytes))
    }

    /// The last `tail` bytes of a regular file beneath this directory (links not followed),
    /// or `None` when it does not exist.
    pub fn read_tail(&self, rel: &Path, tail: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Seek;
        let Some((mut file, size)) = self.open_regular(rel, false)? else {
            return Ok(None);
        };
        file.seek(io::SeekFrom::Start(size.saturating_sub(tail)))?;
        let mut bytes = Vec::new();
        file.take(tail).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Whether `rel` exists beneath this directory as a directory (links not followed).
    pub fn has_dir(&self, rel: &Path) -> bool {
        self.open_at(rel, OFlags::PATH | OFlags::DIRECTORY, false)
            .is_ok()
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs `f` on a thread of its own whose real, effective and saved uid and gid are `ids` (no
/// supplementary groups), so that the kernel checks what the workspace's user may do, not
/// root: a file hard-linked into a workspace from elsewhere on the host stays closed. The
/// thread ends with `f`, so nothing else ever runs with those ids and nothing needs restoring.
/// Without `ids` (a cell that is not root) `f` runs here.
pub fn as_user<T: Send>(
    ids: Option<(u32, u32)>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    use rustix::process::{Gid, Uid};
    let Some((uid, gid)) = ids else {
        return f();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            // Linux keeps credentials per thread; these calls change this thread's only.
            rustix::thread::set_thread_groups(&[])?;
            let gid = Gid::from_raw(gid);
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            let uid = Uid::from_raw(uid);
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the file access failed unexpectedly")))
    })
}

/// A Unix socket beneath `dir`, opened without following links, for `connect(2)`: the socket
/// itself is held open (`O_PATH`) and reached through `/proc/self/fd`, so a link planted in its
/// place, or swapped in after the check, cannot point the connection at another socket (the
/// cell's admin socket, another workspace's agent).
#[derive(Debug)]
pub struct SocketRef {
    fd: OwnedFd,
}

impl SocketRef {
    pub fn open(dir: &Path, name: &str) -> io::Result<SocketRef> {
        let dir = Dir::open(dir)?;
        let fd = dir.open_at(Path::new(name), OFlags::PATH, false)?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is not a socket"),
            ));
        }
        Ok(SocketRef { fd })
    }

    /// The path that reaches this very socket while `self` lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_out_of_the_directory_are_refused_and_links_inside_followed_only_when_asked() {
        let root = tempfile::tempdir().unwrap();
        let secret = root.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        let ws = root.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/real.yml"), "mine").unwrap();
        std::os::unix::fs::symlink(&secret, ws.join("abs")).unwrap();
        std::os::unix::fs::symlink("../secret", ws.join("rel")).unwrap();
        std::os::unix::fs::symlink("sub/real.yml", ws.join("inside")).unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", ws.join("magic")).unwrap();
        let dir = Dir::open(&ws).unwrap();
        for name in ["abs", "rel", "magic"] {
            assert!(
                dir.read_file(Path::new(name), 1 << 20, true).is_err(),
                "{name} was followed out of the directory"
            );
        }
        assert_eq!(
            dir.read_file(Path::new("inside"), 1 << 20, true)
                .unwrap()
                .unwrap(),
            b"mine"
        );
        assert!(dir.read_file(Path::new("inside"), 1 << 20, false).is_err());
        assert!(
            dir.read_file(Path::new("missing"), 1 << 20, true)
                .unwrap()
                .is_none()
        );
        assert!(
            dir.read_file(Path::new("sub/real.yml"), 2, true).is_err(),
            "size cap"
        );
        // The directory itself may not be a link.
        std::os::unix::fs::symlink(root.path(), root.path().join("link")).unwrap();
        assert!(Dir::open(&root.path().join("link")).is_err());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let root = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let dir = Dir::open(root.path()).unwrap();
        assert!(dir.read_file(Path::new("pipe"), 100, true).is_err());
    }

    #[test]
    fn a_socket_is_reached_through_its_handle_and_a_link_in_its_place_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let other = root.path().join("admin.sock");
        let _admin = std::os::unix::net::UnixListener::bind(&other).unwrap();
        let run = root.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(run.join("agent.sock")).unwrap();
        let s = SocketRef::open(&run, "agent.sock").unwrap();
        let _c = std::os::unix::net::UnixStream::connect(s.path()).unwrap();
        listener.accept().unwrap();

        std::fs::remove_file(run.join("agent.sock")).unwrap();
        std::os::unix::fs::symlink(&other, run.join("agent.sock")).unwrap();
        assert!(SocketRef::open(&run, "agent.sock").is_err());
        std::fs::remove_file(run.join("agent.sock")).unwrap();
        std::fs::write(run.join("agent.sock"), "").unwrap();
        assert!(SocketRef::open(&run, "agent.sock").is_err());
    }
}
