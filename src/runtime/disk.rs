//! Disk-size limits for the local runtime: each workspace's files (`workspace/`, `home/`,
//! `run/`) live on a filesystem of their own, an ext4 image in a sparse file mounted through a
//! loop device at the workspace's directory. A write past the class's disk size fails inside
//! the workspace with "No space left on device"; the host and other workspaces are untouched.
//!
//! Why images rather than quotas: project quotas need the host's filesystem to be ext4 or XFS
//! with quota support built into the kernel, which many hosts (this one included) lack. A loop
//! image works on any host filesystem, costs a few milliseconds to mount, and its size is the
//! limit. The image is sparse and mounted with `discard`, so it takes on the host only what the
//! workspace stores. It needs root (loop devices); an unprivileged cell runs without disk limits
//! and says so.
//!
//! The rule the rest of the cell relies on: a workspace's image is mounted while the workspace
//! runs and while an operation uses its files (`Cell::use_files`), and not otherwise, so a
//! stopped workspace holds no mount. It is made at the first start and deleted with the
//! workspace. Files of a workspace that predates the image are never hidden
//! under a mount: such a workspace keeps running without a limit.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One workspace's files and the disk they may take.
#[derive(Clone, Debug)]
pub struct Files {
    /// The directory the workspace's files live in (the mount point).
    pub dir: PathBuf,
    /// The image file, outside `dir`.
    pub image: PathBuf,
    /// The class's disk size; 0 keeps the image as it is.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {what}: {detail}")]
pub struct DiskError {
    what: String,
    detail: String,
}

fn fail(what: impl Into<String>) -> impl FnOnce(String) -> DiskError {
    let what = what.into();
    move |detail| DiskError { what, detail }
}

pub struct Disks {
    /// `None` when this host can enforce disk sizes; otherwise why not.
    unavailable: Option<String>,
    /// Mounting twice would put two filesystems on one image: one attach or detach at a time.
    lock: Mutex<()>,
    /// Sizes whose spare image is being made now.
    refilling: std::sync::Arc<Mutex<std::collections::HashSet<u64>>>,
}

/// Mount options: no device files or set-uid programs from a workspace's files; freed blocks go
/// back to the host; inode tables are not zeroed in the background (that would fill the sparse
/// image with zeros on the host).
const MOUNT_OPTIONS: &str = "loop,nosuid,nodev,discard,noinit_itable";
/// The filesystem's part of them, for mount(2).
const FS_OPTIONS: &std::ffi::CStr = c"discard,noinit_itable";

impl Disks {
    /// Disk limits are on when the cell runs as root on a host with loop devices, mkfs.ext4
    /// and mount.
    pub fn detect() -> Disks {
        let unavailable = if !super::cgroup::is_root() {
            Some("loop devices need the cell to run as root".to_owned())
        } else if !Path::new("/dev/loop-control").exists() {
            Some("this host has no loop devices (/dev/loop-control)".to_owned())
        } else if super::local::which("mkfs.ext4").is_none()
            && !Path::new("/sbin/mkfs.ext4").exists()
        {
            Some("mkfs.ext4 is not installed: apt-get install -y e2fsprogs".to_owned())
        } else {
            None
        };
        Disks {
            unavailable,
            lock: Mutex::new(()),
            refilling: Default::default(),
        }
    }

    /// Never limits (tests of the parts around it, and hosts where an operator said so).
    pub fn off(reason: &str) -> Disks {
        Disks {
            unavailable: Some(reason.to_owned()),
            lock: Mutex::new(()),
            refilling: Default::default(),
        }
    }

    pub fn enforced(&self) -> bool {
        self.unavailable.is_none()
    }

    /// For the admin page: "disk size by an ext4 image per workspace".
    pub fn describe(&self) -> String {
        match &self.unavailable {
            None => "disk size by an ext4 image per workspace".to_owned(),
            Some(reason) => format!("disk size not limited: {reason}"),
        }
    }

    /// Makes `files.dir` the mount of the workspace's image, mounting an existing image (after
    /// a host restart) or, when `create` is set and the directory holds no files, making one of
    /// `files.bytes`. An image smaller than `files.bytes` grows (a larger class).
    pub fn attach(&self, files: &Files, create: bool) -> Result<(), DiskError> {
        if self.unavailable.is_some() {
            return Ok(());
        }
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let dir = &files.dir;
        let grow = create && needs_growing(files);
        if is_mount_point(dir) {
            if !grow {
                return Ok(());
            }
            // Growing is done unmounted: online resizing needs CAP_SYS_RESOURCE, which
            // containers often drop. A disk still in use keeps its size until the next start.
            if let Err(e) = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::empty()) {
                tracing::warn!(dir = %dir.display(), error = %e, "the disk is in use; not grown");
                return Ok(());
            }
        }
        if !files.image.exists() {
            if !create {
                return Ok(());
            }
            if has_entries(dir) {
                tracing::warn!(dir = %dir.display(), "files from before disk limits: this workspace runs without one");
                return Ok(());
            }
            // A spare formatted beforehand saves the start the time of mkfs.
            if !take_spare(&files.image, files.bytes) {
                make_image(&files.image, files.bytes, false)?;
            }
            self.refill(&files.image, files.bytes);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("create {}", dir.display()))(e.to_string()))?;
        if has_entries(dir) {
            // Mounting would hide these files; they stay where they are, unlimited.
            tracing::error!(dir = %dir.display(), image = %files.image.display(), "files beside the workspace's disk image; not mounting it");
            return Err(fail("mount the workspace's disk")(format!(
                "{} is not empty; move its files away or delete {}",
                dir.display(),
                files.image.display()
            )));
        }
        if grow {
            grow_image(files)?;
        }
        mount(&files.image, dir).map_err(fail("mount the workspace's disk"))?;
        // A fresh filesystem's lost+found is not the workspace's (fsck makes it again if needed).
        let _ = std::fs::remove_dir(dir.join("lost+found"));
        Ok(())
    }

    /// Formats a spare image of `bytes` beside `image` in the background, unless one is there
    /// or on its way: the next workspace of that size starts without waiting for mkfs.
    fn refill(&self, image: &Path, bytes: u64) {
        let spare = spare_path(image, bytes);
        if spare.exists()
            || !self
                .refilling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(bytes)
        {
            return;
        }
        let refilling = self.refilling.clone();
        std::thread::spawn(move || {
            // Made once the start that took the last one has mostly cloned, and at the lowest
            // priority: starts come first.
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Err(e) = make_image(&spare, bytes, true) {
                tracing::warn!(error = %e, "no spare workspace disk");
            }
            refilling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&bytes);
        });
    }

    /// Unmounts the workspace's image; with `delete`, the image (and every file on it) goes.
    pub fn detach(&self, files: &Files, delete: bool) -> Result<(), DiskError> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if is_mount_point(&files.dir) {
            unmount(&files.dir).map_err(fail("unmount the workspace's disk"))?;
        }
        if delete {
            match std::fs::remove_file(&files.image) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail("delete the workspace's disk")(e.to_string())),
            }
        }
        Ok(())
    }
}

/// Where the spare image of `bytes` waits: beside the workspaces' images.
fn spare_path(image: &Path, bytes: u64) -> PathBuf {
    image.with_file_name(format!("spare-{bytes}.ext4"))
}

/// Makes the spare of `bytes` the workspace's image; false when there is none.
fn take_spare(image: &Path, bytes: u64) -> bool {
    std::fs::rename(spare_path(image, bytes), image).is_ok()
}

/// A sparse file of `bytes` made into ext4 under a temporary name, then renamed: a crash never
/// leaves a half-made image to be mounted.
fn make_image(image: &Path, bytes: u64, background: bool) -> Result<(), DiskError> {
    let what = "make the workspace's disk";
    if let Some(parent) = image.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(what)(e.to_string()))?;
    }
    let tmp = image.with_extension("new");
    std::fs::File::create(&tmp)
        .and_then(|f| f.set_len(bytes))
        .map_err(|e| fail(what)(format!("{}: {e}", tmp.display())))?;
    let mut mkfs = if background {
        let mut c = Command::new("nice");
        c.args(["-n", "19", "mkfs.ext4"]);
        c
    } else {
        Command::new("mkfs.ext4")
    };
    let made = run(mkfs
        .args(["-q", "-F", "-m", "0", "-L", "devcell"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(&tmp));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(what)(e));
    }
    std::fs::rename(&tmp, image).map_err(|e| fail(what)(e.to_string()))
}

/// The class's disk size is larger than the image (sizes never shrink: that could lose files).
fn needs_growing(files: &Files) -> bool {
    std::fs::metadata(&files.image).is_ok_and(|m| files.bytes > m.len())
}

/// Grows an unmounted image to `files.bytes`: checked first, as resize2fs asks.
fn grow_image(files: &Files) -> Result<(), DiskError> {
    let what = "grow the workspace's disk";
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files.image)
        .and_then(|f| f.set_len(files.bytes))
        .map_err(|e| fail(what)(e.to_string()))?;
    // Exit status 1 is "errors corrected": lost+found, removed on purpose, made again.
    let checked = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(&files.image)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(what)(format!("e2fsck: {e}")))?;
    if !matches!(checked.status.code(), Some(0 | 1)) {
        return Err(fail(what)(format!(
            "e2fsck found errors it could not correct ({}): {}",
            checked.status,
            String::from_utf8_lossy(&checked.stdout).trim()
        )));
    }
    run(Command::new("resize2fs").arg(&files.image)).map_err(fail(what))?;
    tracing::info!(image = %files.image.display(), bytes = files.bytes, "grew a workspace's disk");
    Ok(())
}

/// Runs a command to completion; its stderr is the error.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(format!(
            "{:?} failed ({}): {err}",
            cmd.get_program(),
            out.status
        ))
    }
}

/// Mounts the image at `dir`: in-process (see `loopdev`), or through mount(8) on a host where
/// that does not work out.
fn mount(image: &Path, dir: &Path) -> Result<(), String> {
    use rustix::mount::MountFlags;
    let flags = MountFlags::NOSUID | MountFlags::NODEV;
    match super::loopdev::mount_image(image, dir, flags, FS_OPTIONS) {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "mounting through mount(8)");
            run(Command::new("mount")
                .args(["-t", "ext4", "-o", MOUNT_OPTIONS])
                .arg(image)
                .arg(dir))
        }
    }
}

/// Unmounts `dir`, lazily when something still holds it open (the loop device goes once the
/// last user does: it was set to clear itself).
fn unmount(dir: &Path) -> Result<(), String> {
    use rustix::mount::{UnmountFlags, unmount};
    unmount(dir, UnmountFlags::empty())
        .or_else(|_| unmount(dir, UnmountFlags::DETACH))
        .map_err(|e| format!("cannot unmount {}: {e}", dir.display()))
}

/// `dir` is a mount point: it sits on another device than its parent.
pub fn is_mount_point(dir: &Path) -> bool {
    let (Ok(d), Some(Ok(p))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    d.dev() != p.dev()
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// The mount points listed in /proc/self/mountinfo, with their sources.
fn mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = unescape(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            let source = fields.get(dash + 2)?.to_string();
            Some((PathBuf::from(point), source))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Lazily unmounts everything mounted under `root`, deepest first: for tests and tools that
/// remove a data directory whose workspaces' disks may still be mounted.
pub fn unmount_all_under(root: &Path) {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let mut under: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(&root) && *p != root)
        .collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in under {
        let _ = run(Command::new("umount").arg("-l").arg(&p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_read_back() {
        assert_eq!(unescape(r"/data/my\040dir"), "/data/my dir");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\x"), r"/odd\x");
    }

    fn enforced() -> Disks {
        let disks = Disks::detect();
        assert!(
            disks.enforced(),
            "disk limits need root, loop devices and e2fsprogs (apt-get install -y e2fsprogs): {}",
            disks.describe()
        );
        disks
    }

    fn files(root: &Path, bytes: u64) -> Files {
        Files {
            dir: root.join("workspaces/ws"),
            image: root.join("disks/ws.ext4"),
            bytes,
        }
    }

    #[test]
    fn files_from_before_disk_limits_are_never_hidden_under_a_mount() {
        let disks = enforced();
        let tmp = tempfile::tempdir().unwrap();
        let f = files(tmp.path(), 256 << 20);
        std::fs::create_dir_all(f.dir.join("workspace")).unwrap();
        std::fs::write(f.dir.join("workspace/old.txt"), "kept").unwrap();
        // No image and files present: the workspace runs unlimited, its files in view.
        disks.attach(&f, true).unwrap();
        assert!(!is_mount_point(&f.dir) && !f.image.exists());
        assert_eq!(
            std::fs::read_to_string(f.dir.join("workspace/old.txt")).unwrap(),
            "kept"
        );

        // An image beside files: refused, with the way out in the message.
        make_image(&f.image, f.bytes, false).unwrap();
        let err = disks.attach(&f, true).unwrap_err().to_string();
        assert!(
            err.contains("is not empty") && err.contains("ws.ext4"),
            "{err}"
        );
        assert!(!is_mount_point(&f.dir));
        assert_eq!(
            std::fs::read_to_string(f.dir.join("workspace/old.txt")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn an_image_is_made_once_mounted_again_and_deleted_with_its_files() {
        let disks = enforced();
        let tmp = tempfile::tempdir().unwrap();
        let f = files(tmp.path(), 256 << 20);
        // Nothing to mount and nothing made without `create`.
        disks.attach(&f, false).unwrap();
        assert!(!f.image.exists());
        disks.attach(&f, true).unwrap();
        assert!(is_mount_point(&f.dir));
        assert!(!f.dir.join("lost+found").exists());
        std::fs::write(f.dir.join("a.txt"), "on the disk").unwrap();
        // Attaching again is a no-op; the image is not formatted twice.
        disks.attach(&f, true).unwrap();
        disks.detach(&f, false).unwrap();
        assert!(!is_mount_point(&f.dir) && !f.dir.join("a.txt").exists());
        disks.attach(&f, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(f.dir.join("a.txt")).unwrap(),
            "on the disk"
        );
        disks.detach(&f, true).unwrap();
        assert!(!is_mount_point(&f.dir) && !f.image.exists());

        // A spare of that size was formatted meanwhile; the next workspace takes it.
        let spare = spare_path(&f.image, f.bytes);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !spare.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(spare.exists(), "no spare image was made");
        let second = Files {
            dir: tmp.path().join("workspaces/second"),
            image: tmp.path().join("disks/second.ext4"),
            bytes: f.bytes,
        };
        let spare_inode = std::fs::metadata(&spare).unwrap().ino();
        disks.attach(&second, true).unwrap();
        assert!(is_mount_point(&second.dir));
        // Made from the spare (the same file), which is then made again.
        assert_eq!(std::fs::metadata(&second.image).unwrap().ino(), spare_inode);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !spare.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(spare.exists(), "the spare was not made again");
        disks.detach(&second, true).unwrap();
        unmount_all_under(tmp.path());
    }

    #[test]
    fn disk_limits_can_be_off_and_say_why() {
        let disks = Disks::off("turned off by the operator");
        assert!(!disks.enforced());
        assert_eq!(
            disks.describe(),
            "disk size not limited: turned off by the operator"
        );
        let tmp = tempfile::tempdir().unwrap();
        let f = files(tmp.path(), 256 << 20);
        disks.attach(&f, true).unwrap();
        assert!(!f.image.exists());
    }

    #[test]
    fn the_root_directory_is_a_mount_point_and_its_subdirectories_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        assert!(!is_mount_point(&tmp.path().join("a")));
        assert!(!is_mount_point(&tmp.path().join("missing")));
        assert!(is_mount_point(Path::new("/proc")));
    }
}
