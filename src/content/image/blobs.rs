//! The content-addressed blob store and its temporary files: written only after the content
//! matched its digest, cleaned up when a pull fails.

use super::*;

/// Removes a temporary file or directory on drop unless disarmed, so that no error path
/// leaves half-written content behind.
pub(super) struct Cleanup {
    path: PathBuf,
    dir: bool,
    armed: bool,
}

impl Cleanup {
    pub(super) fn file(path: PathBuf) -> Cleanup {
        Cleanup {
            path,
            dir: false,
            armed: true,
        }
    }

    pub(super) fn dir(path: PathBuf) -> Cleanup {
        Cleanup {
            path,
            dir: true,
            armed: true,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            let _ = if self.dir {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
        }
    }
}

/// `.tmp-<pid>-<n>-<what>`: the pid lets a later process remove what a crashed one left.
pub(super) fn temp_name(what: &str) -> String {
    format!(
        ".tmp-{}-{}-{what}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes temporary files and directories left by processes that no longer run.
pub(super) fn clean_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id().to_string();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".tmp-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if pid != me && !Path::new("/proc").join(pid).exists() {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing a leftover from an interrupted image pull");
            let _ = remove_any(&path);
        }
    }
}

/// Copies an archive entry into `blobs/<hex>`, verifying its content against the name.
pub(super) fn store_blob(
    reader: &mut impl Read,
    blobs: &Path,
    hex: &str,
) -> Result<(), ImageError> {
    let dest = blobs.join(hex);
    if dest.exists() {
        return Ok(());
    }
    let tmp = Cleanup::file(blobs.join(temp_name(hex)));
    let write_err = || io_err(format!("writing {}", tmp.path().display()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp.path())
        .map_err(write_err())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(io_err("reading the archive"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(write_err())?;
    }
    file.sync_all().map_err(write_err())?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual != hex {
        return Err(ImageError::DigestMismatch {
            expected: format!("sha256:{hex}"),
            actual: format!("sha256:{actual}"),
        });
    }
    fs::rename(tmp.path(), &dest).map_err(io_err(format!("writing {}", dest.display())))?;
    tmp.disarm();
    Ok(())
}

pub(super) fn read_blob(blobs: &Path, hex: &str, max: u64) -> Result<Vec<u8>, ImageError> {
    let path = blobs.join(hex);
    let file = File::open(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::NotFound {
                what: format!("blob sha256:{hex}"),
            }
        } else {
            io_err(format!("reading {}", path.display()))(e)
        }
    })?;
    read_capped(file, max, &format!("blob sha256:{hex}"))
}

pub(super) fn read_capped(reader: impl Read, max: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    reader
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("reading {what}")))?;
    if bytes.len() as u64 > max {
        return Err(ImageError::TooLarge {
            what: what.to_owned(),
            limit: human_bytes(max),
        });
    }
    Ok(bytes)
}

pub(super) fn human_bytes(n: u64) -> String {
    const GIB: u64 = 1024 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;
    if n >= GIB && n.is_multiple_of(GIB) {
        format!("{} GiB", n / GIB)
    } else if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}
