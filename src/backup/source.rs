//! What a backup reads: one walk of the workspace directory, giving both its fingerprint and
//! the entries rustic archives (as a [`ReadSource`]), so that rustic does not walk it again.
//!
//! rustic_core's own source looks up the user and group name of every entry; workspace files
//! belong to uids the host has no names for, and glibc then reads `/etc/passwd` and
//! `/etc/group` again for each file (rustic's cache keeps names found, not names missing),
//! which made a backup of 100,000 workspace files three times slower than of the same files
//! owned by root. Entries here carry numeric owners only (restores use them, as before), and
//! everything else rustic's source records with its default options: Go-style mode, times
//! with access time = modification time, inode, links, device id for hard links, symlink
//! targets, device numbers and extended attributes.
//!
//! Files are opened beneath the workspace directory without following any link.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{ErrorKind, ReadSource, ReadSourceEntry, ReadSourceOpen, RusticError};
use sha2::Digest;

/// One entry below the workspace directory, as the walk found it.
pub struct Entry {
    /// Relative to the workspace directory.
    pub rel: PathBuf,
    pub meta: std::fs::Metadata,
}

/// The walk: a fingerprint of every entry's metadata, and the entries in rustic's order
/// (depth first, each directory before its contents, names in byte order).
pub struct Survey {
    /// The fingerprint: path, type, mode, owner, size, modification and change times and inode
    /// of every entry. Rustic's own comparison with a parent trusts the same metadata; the
    /// change time moves with every write and cannot be set back by a workspace.
    pub print: [u8; 32],
    pub entries: Vec<Entry>,
}

impl Survey {
    /// Regular files with `0 < size < below` bytes, with their change times (seconds).
    pub fn small(&self, below: u64) -> impl Iterator<Item = (&Path, i64)> {
        self.entries
            .iter()
            .filter(move |e| e.meta.is_file() && e.meta.size() > 0 && e.meta.size() < below)
            .map(|e| (e.rel.as_path(), e.meta.ctime()))
    }
}

/// Walks `dir` without following links, leaving out the names in `skip` at its top.
/// `None` when anything cannot be read (the backup then lets rustic walk).
pub fn survey(dir: &Path, skip: &[&str]) -> Option<Survey> {
    fn sorted(dir: &Path) -> Option<std::vec::IntoIter<std::fs::DirEntry>> {
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        entries.sort_by_key(|e| e.file_name());
        Some(entries.into_iter())
    }
    let mut h = sha2::Sha256::new();
    let mut entries = Vec::new();
    // Depth first without recursion: a workspace can nest directories as deep as it likes.
    let mut open = vec![(PathBuf::new(), sorted(dir)?)];
    while let Some((rel, next)) = open.last_mut() {
        let Some(e) = next.next() else {
            open.pop();
            continue;
        };
        let name = e.file_name();
        let rel = rel.join(&name);
        if open.len() == 1 && skip.iter().any(|s| name == *s) {
            continue;
        }
        // Relative to the directory's handle, without following a link.
        let m = e.metadata().ok()?;
        h.update(b"/");
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        for n in [
            m.mode() as u64,
            m.uid() as u64,
            m.gid() as u64,
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
            m.ino(),
        ] {
            h.update(n.to_le_bytes());
        }
        let is_dir = m.is_dir();
        entries.push(Entry {
            rel: rel.clone(),
            meta: m,
        });
        if is_dir {
            open.push((rel, sorted(&e.path())?));
        }
    }
    Some(Survey {
        print: h.finalize().into(),
        entries,
    })
}

/// The surveyed workspace as rustic's source.
pub struct WorkspaceSource {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    root: crate::beneath::Dir,
    entries: Vec<Entry>,
}

impl WorkspaceSource {
    pub fn new(dir: &Path, survey: Survey) -> std::io::Result<WorkspaceSource> {
        Ok(WorkspaceSource {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                root: crate::beneath::Dir::open(dir)?,
                entries: survey.entries,
            }),
        })
    }
}

impl ReadSource for WorkspaceSource {
    type Open = OpenBeneath;
    type Iter = Entries;

    fn size(&self) -> rustic_core::RusticResult<Option<u64>> {
        Ok(None)
    }

    fn entries(&self) -> Entries {
        Entries {
            inner: self.inner.clone(),
            next: 0,
        }
    }
}

pub struct Entries {
    inner: Arc<Inner>,
    next: usize,
}

impl Iterator for Entries {
    type Item = rustic_core::RusticResult<ReadSourceEntry<OpenBeneath>>;

    fn next(&mut self) -> Option<Self::Item> {
        let e = self.inner.entries.get(self.next)?;
        self.next += 1;
        let path = self.inner.dir.join(&e.rel);
        Some(node(&path, &e.meta).map(|node| ReadSourceEntry {
            open: node.is_file().then(|| OpenBeneath {
                inner: self.inner.clone(),
                rel: e.rel.clone(),
            }),
            path,
            node,
        }))
    }
}

/// A file to read, opened beneath the workspace directory when rustic needs its contents.
pub struct OpenBeneath {
    inner: Arc<Inner>,
    rel: PathBuf,
}

impl ReadSourceOpen for OpenBeneath {
    type Reader = std::fs::File;

    fn open(self) -> rustic_core::RusticResult<std::fs::File> {
        let fail = |e: std::io::Error| {
            RusticError::with_source(
                ErrorKind::InputOutput,
                "Failed to open `{path}` beneath the workspace.",
                e,
            )
            .attach_context("path", self.rel.display().to_string())
        };
        match self.inner.root.open_regular(&self.rel, false) {
            Ok(Some((file, _))) => Ok(file),
            Ok(None) => Err(fail(std::io::ErrorKind::NotFound.into())),
            Err(e) => Err(fail(e)),
        }
    }
}

/// rustic's node for an entry, as its own source makes it with default options (see the
/// module documentation), without owner names.
fn node(path: &Path, m: &std::fs::Metadata) -> rustic_core::RusticResult<Node> {
    let time = |s: i64, ns: i64| rustic_core::jiff::Timestamp::new(s, ns as i32).ok();
    let mtime = time(m.mtime(), m.mtime_nsec());
    let hardlink = !m.is_dir() && m.nlink() > 1;
    let meta = Metadata {
        mode: Some(go_mode(m.mode())),
        mtime,
        atime: mtime,
        ctime: time(m.ctime(), m.ctime_nsec()),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        user: None,
        group: None,
        inode: m.ino(),
        device_id: if hardlink { m.dev() } else { 0 },
        size: if m.is_dir() { 0 } else { m.len() },
        links: if m.is_dir() { 0 } else { m.nlink() },
        // rustic_core does not export its attribute type: made from its serialized form.
        extended_attributes: serde_json::from_value(xattrs(path)).unwrap_or_default(),
    };
    let name = path.file_name().unwrap_or_default();
    let ft = m.file_type();
    let node_type = if ft.is_dir() {
        NodeType::Dir
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| {
            RusticError::with_source(ErrorKind::InputOutput, "Failed to read link `{path}`.", e)
                .attach_context("path", path.display().to_string())
        })?;
        NodeType::from_link(&target)
    } else if ft.is_block_device() {
        NodeType::Dev { device: m.rdev() }
    } else if ft.is_char_device() {
        NodeType::Chardev { device: m.rdev() }
    } else if ft.is_fifo() {
        NodeType::Fifo
    } else if ft.is_socket() {
        NodeType::Socket
    } else {
        NodeType::File
    };
    Ok(Node::new_node(name, node_type, meta))
}

/// Extended attributes of the entry itself (not a link's target), serialized as restic's
/// format has them (name, base64 value); none when they cannot be read, as rustic's source
/// does.
fn xattrs(path: &Path) -> serde_json::Value {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < 1 << 20 => {
                names.resize(names.len() * 8, 0)
            }
            Err(_) => return serde_json::Value::Array(Vec::new()),
        }
    };
    names[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| {
            let name = std::ffi::CStr::from_bytes_with_nul(&[n, &[0]].concat())
                .ok()?
                .to_owned();
            let mut value = vec![0u8; 4096];
            let got = loop {
                match rustix::fs::lgetxattr(path, name.as_c_str(), &mut value) {
                    Ok(n) => break n,
                    Err(rustix::io::Errno::RANGE) if value.len() < 1 << 20 => {
                        value.resize(value.len() * 8, 0)
                    }
                    Err(_) => return None,
                }
            };
            value.truncate(got);
            use base64::Engine;
            Some(serde_json::json!({
                "name": String::from_utf8_lossy(n),
                "value": base64::engine::general_purpose::STANDARD.encode(value),
            }))
        })
        .collect()
}

/// `st_mode` as Go's `io/fs.FileMode`, the form restic's format stores: permission bits, the
/// type bits, setuid, setgid and sticky.
fn go_mode(mode: u32) -> u32 {
    const DIR: u32 = 1 << 31;
    const SYMLINK: u32 = 1 << 27;
    const DEVICE: u32 = 1 << 26;
    const NAMED_PIPE: u32 = 1 << 25;
    const SOCKET: u32 = 1 << 24;
    const SETUID: u32 = 1 << 23;
    const SETGID: u32 = 1 << 22;
    const CHAR_DEVICE: u32 = 1 << 21;
    const STICKY: u32 = 1 << 20;
    const IRREGULAR: u32 = 1 << 19;
    let mut go = mode & 0o777;
    go |= match mode & 0o170_000 {
        0o140_000 => SOCKET,
        0o120_000 => SYMLINK,
        0o060_000 => DEVICE,
        0o040_000 => DIR,
        0o020_000 => DEVICE | CHAR_DEVICE,
        0o010_000 => NAMED_PIPE,
        0o100_000 => 0,
        _ => IRREGULAR,
    };
    for (bit, go_bit) in [(0o4000, SETUID), (0o2000, SETGID), (0o1000, STICKY)] {
        if mode & bit != 0 {
            go |= go_bit;
        }
    }
    go
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace can nest directories deeper than any path may be long; the walk (on a
    /// blocking thread's 2 MiB stack) gives up there instead of overflowing.
    #[test]
    fn a_tree_nested_beyond_the_longest_path_is_refused_not_overflowed() {
        use rustix::fs::{Mode, OFlags};
        let tmp = tempfile::tempdir().unwrap();
        let mut fd = rustix::fs::open(tmp.path(), OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..2500 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        rustix::fs::mkdirat(&fd, "bottom", Mode::from_raw_mode(0o755)).unwrap();
        let dir = tmp.path().to_owned();
        let walked = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || survey(&dir, &[]).is_some())
            .unwrap()
            .join()
            .expect("the walk overflowed its stack");
        assert!(!walked, "a path longer than PATH_MAX cannot have been read");
    }

    #[test]
    fn modes_are_go_file_modes() {
        assert_eq!(go_mode(0o100_644), 0o644);
        assert_eq!(go_mode(0o040_755), (1 << 31) | 0o755);
        assert_eq!(go_mode(0o120_777), (1 << 27) | 0o777);
        assert_eq!(go_mode(0o104_755), (1 << 23) | 0o755);
        assert_eq!(go_mode(0o041_777), (1 << 31) | (1 << 20) | 0o777);
        assert_eq!(go_mode(0o020_620), (1 << 26) | (1 << 21) | 0o620);
        assert_eq!(go_mode(0o010_600), (1 << 25) | 0o600);
    }
}
