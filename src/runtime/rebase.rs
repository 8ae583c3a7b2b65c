//! Workspace files where the workspace's uid cannot walk to them. A data directory under a
//! private directory (root's `/root` is mode 0700) holds files the workspace's uid owns but
//! cannot reach by path, and bubblewrap and git resolve every path they are given as that uid.
//! The launcher then, still root, gives itself a mount namespace of its own in which each such
//! path is bound under [`REBASE_MOUNT`] (a tmpfs anyone may walk), detaches the other
//! workspaces' disks from that namespace, and only then drops to the uid; the paths it is given
//! are the bound ones. Nothing changes on the host: no directory's mode, no mount.
//!
//! The one `unsafe` here is `unshare(CLONE_NEWNS)` (rustix marks every unshare unsafe for the
//! sake of `CLONE_FILES`, which this never asks for).
#![allow(unsafe_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

/// Where the bound paths are seen in a launcher's namespace. Made (empty) on the host when a
/// runtime runs as root; only ever a mount point inside launchers' own namespaces.
pub const REBASE_MOUNT: &str = "/run/devcell/rebase";

/// The paths a launcher binds under [`REBASE_MOUNT`] before dropping to the workspace's uid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebase {
    /// Each host path (a directory or a file) and the name it gets under [`REBASE_MOUNT`].
    pub binds: Vec<(PathBuf, String)>,
    /// Mounts under this directory (the workspaces' disks) are detached in the namespace, so
    /// that it holds no other workspace's disk while its sandbox runs.
    pub detach_under: PathBuf,
    /// Overlays mounted under [`REBASE_MOUNT`] (an image build's root), after the binds.
    #[serde(default)]
    pub overlays: Vec<Overlay>,
    /// The network namespace of this process to join (a compose service beside its
    /// workspace: `localhost` is the workspace's).
    #[serde(default)]
    pub join_net: Option<u32>,
}

/// An overlay filesystem made in the launcher's namespace: read-only lower directories (top
/// first) and, for a writable one, the upper and work directories.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// Its name under [`REBASE_MOUNT`].
    pub name: String,
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

impl Overlay {
    /// Mounts it at `target` with the mount API's `lowerdir+` (no length limit on the list).
    /// Renames of lower directories and metadata-only copies are off: the upper directory
    /// must hold whole files and plain whiteouts, because it becomes an image layer.
    fn mount(&self, target: &Path) -> std::io::Result<()> {
        use rustix::mount::{
            FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
            fsconfig_set_string, fsmount, fsopen, move_mount,
        };
        let err = |what: &str, e: rustix::io::Errno| {
            std::io::Error::other(format!(
                "cannot mount the overlay {}: {what}: {e}",
                self.name
            ))
        };
        let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| err("fsopen", e))?;
        for lower in &self.lowers {
            fsconfig_set_string(&fs, "lowerdir+", lower)
                .map_err(|e| err(&format!("lower {}", lower.display()), e))?;
        }
        if let (Some(upper), Some(work)) = (&self.upper, &self.work) {
            fsconfig_set_string(&fs, "upperdir", upper).map_err(|e| err("upperdir", e))?;
            fsconfig_set_string(&fs, "workdir", work).map_err(|e| err("workdir", e))?;
        }
        for (key, value) in [
            ("redirect_dir", "off"),
            ("metacopy", "off"),
            ("index", "off"),
        ] {
            fsconfig_set_string(&fs, key, value).map_err(|e| err(key, e))?;
        }
        fsconfig_create(&fs).map_err(|e| err("create", e))?;
        let mnt = fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NODEV,
        )
        .map_err(|e| err("fsmount", e))?;
        move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| err("move_mount", e))
    }
}

impl Rebase {
    /// Where `path` is seen in the namespace: under the name of the bound path holding it, or
    /// unchanged.
    pub fn map(&self, path: &Path) -> PathBuf {
        let path = absolute(path);
        for (src, name) in &self.binds {
            if let Ok(rest) = path.strip_prefix(src) {
                let inside = Path::new(REBASE_MOUNT).join(name);
                return if rest.as_os_str().is_empty() {
                    inside
                } else {
                    inside.join(rest)
                };
            }
        }
        path
    }

    /// Gives the calling process (the launcher: root, one thread, about to exec) a mount
    /// namespace with the binds in place and the workspaces' disks detached.
    pub fn enter(&self) -> std::io::Result<()> {
        let err =
            |what: &str, e: rustix::io::Errno| std::io::Error::other(format!("cannot {what}: {e}"));
        // SAFETY: only CLONE_NEWNS, on a process with one thread that execs next; no file
        // descriptor table is unshared.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
            .map_err(|e| err("make a mount namespace", e))?;
        // Nothing done here reaches the host, and nothing the host mounts later reaches here.
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
        .map_err(|e| err("make the mounts private", e))?;
        rustix::mount::mount(
            "devcell",
            REBASE_MOUNT,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=0755,size=64k",
        )
        .map_err(|e| err(&format!("mount a tmpfs at {REBASE_MOUNT}"), e))?;
        for (src, name) in &self.binds {
            let target = Path::new(REBASE_MOUNT).join(name);
            if std::fs::metadata(src)?.is_dir() {
                std::fs::create_dir(&target)?;
            } else {
                std::fs::File::create(&target)?;
            }
            rustix::mount::mount_bind_recursive(src, &target)
                .map_err(|e| err(&format!("bind {}", src.display()), e))?;
        }
        for overlay in &self.overlays {
            let target = Path::new(REBASE_MOUNT).join(&overlay.name);
            std::fs::create_dir(&target)?;
            overlay.mount(&target)?;
        }
        for point in mounts_under(&self.detach_under)? {
            // Lazily: whatever uses it goes on; this namespace just no longer holds it.
            let _ = rustix::mount::unmount(&point, UnmountFlags::DETACH);
        }
        if let Some(pid) = self.join_net {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| err("join the workspace's network", e))?;
        }
        Ok(())
    }
}

/// Whether a uid that neither owns nor shares a group with them can walk down to `path`:
/// every directory above it searchable by others.
pub fn walkable(path: &Path) -> bool {
    closed_ancestor(path).is_none()
}

/// The first directory above `path` that such a uid cannot search (or that cannot be read).
pub fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    absolute(path)
        .ancestors()
        .skip(1)
        .find(|dir| {
            !dir.as_os_str().is_empty()
                && !std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        })
        .map(Path::to_path_buf)
}

/// `path` from the root (a relative data directory is relative to the cell's working
/// directory, which is the launcher's too).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Makes the empty directory [`REBASE_MOUNT`] on the host (root's, walkable by anyone).
pub fn make_mount_point() -> std::io::Result<()> {
    let dir = Path::new(REBASE_MOUNT);
    std::fs::create_dir_all(dir)?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let meta = std::fs::metadata(d)?;
        if meta.uid() == 0 && meta.permissions().mode() & 0o777 != 0o755 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// The mount points strictly under `dir` in this process's namespace, deepest first.
fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p != dir && p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    Ok(points)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_under_the_name_of_their_bind() {
        let r = Rebase {
            binds: vec![
                ("/root/x/data/workspaces/ws_1".into(), "ws".into()),
                ("/root/x/devcell".into(), "agent".into()),
            ],
            detach_under: "/root/x/data/workspaces".into(),
            overlays: Vec::new(),
            join_net: None,
        };
        assert_eq!(
            r.map(Path::new("/root/x/data/workspaces/ws_1/workspace/app")),
            Path::new("/run/devcell/rebase/ws/workspace/app")
        );
        assert_eq!(
            r.map(Path::new("/root/x/devcell")),
            Path::new("/run/devcell/rebase/agent")
        );
        assert_eq!(r.map(Path::new("/usr/bin")), Path::new("/usr/bin"));
        // A sibling whose name merely starts the same is not under the bind.
        assert_eq!(
            r.map(Path::new("/root/x/data/workspaces/ws_10")),
            Path::new("/root/x/data/workspaces/ws_10")
        );
    }

    #[test]
    fn mountinfo_escapes_are_read_back() {
        assert_eq!(unescape(r"/srv/my\040data"), "/srv/my data");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape(r"/plain\04"), r"/plain\04");
    }

    #[test]
    fn a_private_parent_makes_a_path_unwalkable() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("private/data");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(walkable(&inner.join("x")));
        std::fs::set_permissions(
            dir.path().join("private"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        assert!(!walkable(&inner.join("x")));
    }
}
