//! Unpacking layers into a tree: whiteouts, hard links, sizes capped against bombs, no entry
//! leaving the tree and no link followed while writing.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
}

/// Tells the compression from the content: media types lie (Docker has pushed uncompressed
/// layers as `tar.gzip`), magic numbers do not.
pub(super) fn sniff(path: &Path, media_type: &str) -> Result<Compression, ImageError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut filled = 0;
    while filled < magic.len() {
        let n = file
            .read(&mut magic[filled..])
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    match &magic[..filled] {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(zstd_unsupported()),
        _ if media_type.contains("zstd") => Err(zstd_unsupported()),
        [b'B', b'Z', b'h', ..] => Err(unsupported("bzip2-compressed layers are not supported")),
        _ => Ok(Compression::None),
    }
}

pub(super) fn open_layer(
    path: &Path,
    compression: Compression,
) -> Result<Box<dyn Read>, ImageError> {
    let file = File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let reader = BufReader::with_capacity(256 * 1024, file);
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
    })
}

/// Walks the raw headers once before unpacking: the tar reader holds GNU long names and PAX
/// headers in memory whole, so a bomb hidden in one must be refused before it gets there.
/// Also refuses archives with too many entries or files declaring too many bytes.
pub(super) fn prescan(
    reader: impl Read,
    limits: Limits,
    entries_before: u64,
    what: &str,
) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(io_err(format!("reading {what}")))?
        .raw(true);
    let mut count = entries_before;
    let mut bytes = 0u64;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("reading {what}: not a valid tar archive")))?;
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        let extension = matches!(
            kind,
            T::GNULongName | T::GNULongLink | T::XHeader | T::XGlobalHeader
        );
        // Extension headers belong to the entry after them; they are not counted as one.
        count += u64::from(!extension);
        if count > limits.max_entries {
            return Err(ImageError::TooLarge {
                what: format!("the number of entries in {what}"),
                limit: format!("{} entries", limits.max_entries),
            });
        }
        let size = entry.header().entry_size().unwrap_or(0);
        if extension && size > MAX_HEADER_EXTENSION {
            return Err(ImageError::HostileArchive {
                entry: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                reason: format!("a {size}-byte name or extended header"),
            });
        }
        if kind.is_file() || kind == T::Continuous {
            bytes = bytes.saturating_add(size);
            if bytes > limits.max_bytes {
                return Err(ImageError::TooLarge {
                    what: format!("the unpacked size of {what}"),
                    limit: human_bytes(limits.max_bytes),
                });
            }
        }
    }
    Ok(())
}

/// A relative path with only normal components, or why the entry is refused.
pub(super) fn clean_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("path has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(out)
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(io_err(format!("setting the mode of {}", path.display())))
}

/// Removes a file, symlink or directory tree without following symlinks.
pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes of the regular files under `root`, hard links counted once, symlinks not followed.
pub(super) fn tree_size(root: &Path) -> Result<u64, ImageError> {
    let mut total = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
            let meta = entry
                .metadata()
                .map_err(io_err(format!("reading {}", entry.path().display())))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())))
            {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Applies layers, in order, to one root directory.
pub(super) struct Unpacker<'a> {
    root: &'a Path,
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl<'a> Unpacker<'a> {
    pub(super) fn new(root: &'a Path, limits: Limits) -> Unpacker<'a> {
        Unpacker {
            root,
            limits,
            bytes: 0,
            entries: 0,
        }
    }

    pub(super) fn apply_layer(&mut self, blob: &Path, media_type: &str) -> Result<(), ImageError> {
        let compression = sniff(blob, media_type)?;
        let what = format!(
            "layer {}",
            blob.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let remaining = Limits {
            max_bytes: self.limits.max_bytes.saturating_sub(self.bytes),
            max_entries: self.limits.max_entries,
        };
        prescan(
            open_layer(blob, compression)?,
            remaining,
            self.entries,
            &what,
        )?;
        let mut archive = tar::Archive::new(open_layer(blob, compression)?);
        let entries = archive
            .entries()
            .map_err(io_err(format!("reading {what}")))?;
        // Paths this layer wrote: whiteouts only hide what lower layers put there.
        let mut written = HashSet::new();
        for entry in entries {
            let entry =
                entry.map_err(io_err(format!("reading {what}: not a valid tar archive")))?;
            self.apply_entry(entry, &mut written)?;
        }
        Ok(())
    }

    pub(super) fn apply_entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        written: &mut HashSet<PathBuf>,
    ) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let hostile = |reason: String| ImageError::HostileArchive {
            entry: name.clone(),
            reason,
        };
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ImageError::TooLarge {
                what: "the number of entries in the image".to_owned(),
                limit: format!("{} entries", self.limits.max_entries),
            });
        }
        let rel = clean_path(&raw).map_err(|r| hostile(r.to_owned()))?;
        let Some(file_name) = rel.file_name().map(|n| n.to_owned()) else {
            // The root directory itself: it stays 0755 and ours.
            return Ok(());
        };
        let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();

        if let Some(target) = file_name
            .as_bytes()
            .strip_prefix(WHITEOUT_PREFIX.as_bytes())
        {
            let Some(parent) = self.walk_parents(&parent_rel, None, &name)? else {
                return Ok(());
            };
            if file_name == OPAQUE_MARKER {
                clear_lower(&parent, &parent_rel, written)
                    .map_err(io_err(format!("applying the opaque directory {name}")))?;
            } else {
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(hostile("whiteout of nothing".to_owned()));
                }
                let target = OsStr::from_bytes(target);
                if !written.contains(&parent_rel.join(target)) {
                    remove_any(&parent.join(target))
                        .map_err(io_err(format!("applying the whiteout {name}")))?;
                }
            }
            return Ok(());
        }

        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        match kind {
            T::Directory => {
                let path = self.prepare(&rel, written, true, &name)?;
                if fs::symlink_metadata(&path).is_err() {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(io_err(format!("creating {name}")))?;
                }
                // Always 0755: later layers must be able to write here, and the sandbox's
                // user must be able to read what the image's root owned.
                set_mode(&path, 0o755)?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let path = self.prepare(&rel, written, false, &name)?;
                // setuid, setgid and sticky bits are dropped: nothing in a workspace may gain
                // privileges from an image.
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
                let mtime = entry.header().mtime().ok();
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err(format!("creating {name}")))?;
                let remaining = self.limits.max_bytes.saturating_sub(self.bytes);
                let copied = io::copy(
                    &mut (&mut entry).take(remaining.saturating_add(1)),
                    &mut file,
                )
                .map_err(io_err(format!("unpacking {name}")))?;
                if copied > remaining {
                    return Err(ImageError::TooLarge {
                        what: "the unpacked image".to_owned(),
                        limit: human_bytes(self.limits.max_bytes),
                    });
                }
                self.bytes += copied;
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(io_err(format!("setting the mode of {name}")))?;
                // Kept because tools compare them (Python checks .pyc files against sources).
                if let Some(time) =
                    mtime.and_then(|m| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(m)))
                {
                    let _ = file.set_modified(time);
                }
            }
            T::Symlink => {
                // The target is stored as is: it is resolved only inside the sandbox, where
                // this tree is the root, and never followed while unpacking.
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| hostile("symbolic link without a target".to_owned()))?;
                let path = self.prepare(&rel, written, false, &name)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_err(format!("creating the symbolic link {name}")))?;
            }
            T::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| hostile("hard link without a target".to_owned()))?;
                let target_rel = clean_path(&target_raw)
                    .map_err(|r| hostile(format!("hard link target: {r}")))?;
                if target_rel == rel || target_rel.as_os_str().is_empty() {
                    return Ok(());
                }
                let target_parent = target_rel
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let target = self
                    .walk_parents(&target_parent, None, &name)?
                    .map(|p| p.join(target_rel.file_name().unwrap_or_default()))
                    .ok_or_else(|| hostile("hard link to a missing file".to_owned()))?;
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {
                        return Err(hostile("hard link to a directory".to_owned()));
                    }
                    Ok(_) => {}
                    Err(_) => return Err(hostile("hard link to a missing file".to_owned())),
                }
                let path = self.prepare(&rel, written, false, &name)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                fs::hard_link(&target, &path)
                    .map_err(io_err(format!("creating the hard link {name}")))?;
            }
            T::Char | T::Block | T::Fifo => {
                tracing::debug!(entry = %name, "skipping a device node or fifo: the sandbox is unprivileged");
            }
            _ => {
                tracing::debug!(entry = %name, kind = ?kind, "skipping an archive entry of an unknown kind");
            }
        }
        Ok(())
    }

    /// Makes `rel`'s parent directories (refusing any that is a symlink or not a directory)
    /// and removes whatever is at `rel`, unless both it and the new entry are directories.
    pub(super) fn prepare(
        &self,
        rel: &Path,
        written: &mut HashSet<PathBuf>,
        is_dir: bool,
        name: &str,
    ) -> Result<PathBuf, ImageError> {
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = self
            .walk_parents(parent_rel, Some(&mut *written), name)?
            .ok_or_else(|| {
                io_err(format!("creating the parents of {name}"))(io::ErrorKind::NotFound.into())
            })?;
        let path = parent.join(rel.file_name().unwrap_or_default());
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && is_dir => {}
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&path).map_err(io_err(format!("replacing {name}")))?;
            }
            // A symlink is removed, never written through.
            Ok(_) => fs::remove_file(&path).map_err(io_err(format!("replacing {name}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("unpacking {name}"))(e)),
        }
        written.insert(rel.to_path_buf());
        Ok(path)
    }

    /// Follows `rel` from the root one component at a time without following symlinks. With
    /// `create`, missing directories are made (and recorded as written by this layer);
    /// without, a missing one gives `None`.
    pub(super) fn walk_parents(
        &self,
        rel: &Path,
        mut create: Option<&mut HashSet<PathBuf>>,
        name: &str,
    ) -> Result<Option<PathBuf>, ImageError> {
        let mut path = self.root.to_path_buf();
        let mut walked = PathBuf::new();
        for part in rel.iter() {
            path.push(part);
            walked.push(part);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ImageError::HostileArchive {
                        entry: name.to_owned(),
                        reason: format!("its parent {} is a symbolic link", walked.display()),
                    });
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ImageError::HostileArchive {
                        entry: name.to_owned(),
                        reason: format!("its parent {} is not a directory", walked.display()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match create.as_deref_mut() {
                    Some(written) => {
                        fs::DirBuilder::new()
                            .mode(0o755)
                            .create(&path)
                            .map_err(io_err(format!("creating the parents of {name}")))?;
                        set_mode(&path, 0o755)?;
                        written.insert(walked.clone());
                    }
                    None => return Ok(None),
                },
                Err(e) => return Err(io_err(format!("unpacking {name}"))(e)),
            }
        }
        Ok(Some(path))
    }
}

/// Empties `dir` of what lower layers put there, keeping what this layer wrote.
pub(super) fn clear_lower(
    dir: &Path,
    dir_rel: &Path,
    written: &HashSet<PathBuf>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let rel = dir_rel.join(entry.file_name());
        if written.contains(&rel) {
            // file_type() does not follow symlinks.
            if entry.file_type()?.is_dir() {
                clear_lower(&entry.path(), &rel, written)?;
            }
        } else {
            remove_any(&entry.path())?;
        }
    }
    Ok(())
}
