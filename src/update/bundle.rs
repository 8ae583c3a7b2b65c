//! Offline bundles: one file (`.tar`, or `.tar.zst`) that carries a signed release across an
//! air gap: the key list (if any), the manifest and its signature first, then the artifacts
//! the manifest names, then optional release notes.
//!
//! A bundle is someone's file until its signature checks: it is read as a stream, in that
//! order, and every entry must be a regular file with one plain name that the bundle expects
//! next, no larger than what is expected of it (documents at most 1 MiB, an artifact exactly
//! the size the already-verified manifest declares); anything else, a link, a directory, a
//! name with a slash, an entry too many, a truncated or corrupt stream, is refused before a
//! byte of it is written. Nothing is decompressed beyond what the declared sizes allow.

use std::io::{Read, Write as _};
use std::path::Path;

use super::trust::{KEY_LIST, KEY_LIST_SIGNATURE};
use super::{MANIFEST, SIGNATURE, UpdateError, io_err};

/// Release notes a bundle may carry after its artifacts.
pub const NOTES: &str = "NOTES.md";
/// Documents in a bundle (manifest, signatures, key list, notes) are small.
const MAX_DOCUMENT: u64 = 1 << 20;
/// zstd's frame magic number.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Writes the release in `release` (as `devcell release sign` made it, with `keys.json` if
/// present and `notes` if given) into the bundle `out`, compressed with zstd when its name
/// ends in `.zst`.
pub fn build(release: &Path, notes: Option<&Path>, out: &Path) -> Result<u64, UpdateError> {
    let manifest = super::manifest::Manifest::parse(&super::read_small(&release.join(MANIFEST))?)?;
    let mut names: Vec<String> = Vec::new();
    if release.join(KEY_LIST).is_file() {
        names.extend([KEY_LIST.to_owned(), KEY_LIST_SIGNATURE.to_owned()]);
    }
    names.extend([MANIFEST.to_owned(), SIGNATURE.to_owned()]);
    names.extend(manifest.artifacts.iter().map(|a| a.name.clone()));
    let file = std::fs::File::create(out).map_err(io_err(format!("writing {}", out.display())))?;
    let zst = out.extension().is_some_and(|e| e == "zst");
    let sink: Box<dyn std::io::Write> = if zst {
        Box::new(
            zstd::Encoder::new(file, 3)
                .map_err(io_err("starting zstd"))?
                .auto_finish(),
        )
    } else {
        Box::new(file)
    };
    let mut tar = tar::Builder::new(sink);
    let mut add = |name: &str, path: &Path| -> Result<(), UpdateError> {
        let mut f =
            std::fs::File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
        let len = f
            .metadata()
            .map_err(io_err(format!("reading {}", path.display())))?
            .len();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(len);
        h.set_mtime(0);
        tar.append_data(&mut h, name, &mut f)
            .map_err(io_err(format!("writing {}", out.display())))
    };
    for name in &names {
        add(name, &release.join(name))?;
    }
    if let Some(n) = notes {
        add(NOTES, n)?;
    }
    let mut sink = tar
        .into_inner()
        .map_err(io_err(format!("writing {}", out.display())))?;
    sink.flush()
        .map_err(io_err(format!("writing {}", out.display())))?;
    drop(sink);
    std::fs::metadata(out)
        .map(|m| m.len())
        .map_err(io_err(format!("writing {}", out.display())))
}

/// What is expected next in a bundle.
enum Next {
    /// A document: the key list, its signature, the manifest or its signature.
    Document(&'static str),
    /// The manifest's artifacts, in its order, then notes (optional) and the end.
    Artifacts,
}

/// Unpacks the bundle `file` into the empty directory `into` (which only the caller can
/// reach) as the release directory [`super::verify_release`] checks, verifying the
/// manifest's signature with `trust` before any artifact is written.
pub fn unpack(file: &Path, trust: &super::Trust, into: &Path) -> Result<(), UpdateError> {
    let refuse = |m: String| UpdateError::BadBundle(m);
    let mut f = std::fs::File::open(file).map_err(io_err(format!("reading {}", file.display())))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(io_err(format!("reading {}", file.display())))?;
    let f = std::fs::File::open(file).map_err(io_err(format!("reading {}", file.display())))?;
    let stream: Box<dyn Read> = if n == 4 && magic == ZSTD_MAGIC {
        Box::new(zstd::Decoder::new(f).map_err(|e| refuse(format!("not a zstd stream: {e}")))?)
    } else {
        Box::new(f)
    };
    let mut archive = tar::Archive::new(stream);
    let entries = archive
        .entries()
        .map_err(|e| refuse(format!("not a tar archive: {e}")))?;
    let mut trust = trust.clone();
    let mut next = Next::Document(MANIFEST);
    let mut manifest: Option<super::Manifest> = None;
    let mut artifact = 0usize;
    let mut notes = false;
    for (i, entry) in entries.enumerate() {
        let mut entry =
            entry.map_err(|e| refuse(format!("the bundle is truncated or corrupt: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| refuse(format!("an entry's name cannot be read: {e}")))?
            .to_string_lossy()
            .into_owned();
        let plain =
            !name.is_empty() && !name.contains(['/', '\\', '\0']) && name != "." && name != "..";
        if !plain {
            return Err(refuse(format!(
                "entry {name:?} is not one plain file name; a bundle holds nothing else"
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(refuse(format!(
                "entry {name:?} is a {:?}, not a regular file",
                entry.header().entry_type()
            )));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| refuse(format!("entry {name:?} has no size: {e}")))?;
        // The key list may come first, then the manifest and its signature.
        if i == 0 && name == KEY_LIST {
            next = Next::Document(KEY_LIST);
        }
        let limit = match (&next, &manifest) {
            (Next::Document(want), _) => {
                if name != *want {
                    return Err(refuse(format!("entry {name:?} where {want} was expected")));
                }
                MAX_DOCUMENT
            }
            (Next::Artifacts, Some(m)) => match m.artifacts.get(artifact) {
                Some(a) if a.name == name && size > a.size => {
                    return Err(UpdateError::ArtifactTooLarge(format!(
                        "artifact {name} is {size} bytes in the bundle, more than the {} bytes its manifest declares",
                        a.size
                    )));
                }
                Some(a) if a.name == name && size < a.size => {
                    return Err(UpdateError::ArtifactMismatch(format!(
                        "artifact {name} is {size} bytes in the bundle; its manifest declares {}",
                        a.size
                    )));
                }
                Some(a) if a.name == name => a.size,
                None if name == NOTES && !notes => MAX_DOCUMENT,
                Some(a) => {
                    return Err(refuse(format!(
                        "entry {name:?} where artifact {} was expected",
                        a.name
                    )));
                }
                None => {
                    return Err(refuse(format!(
                        "entry {name:?} after the release's last file"
                    )));
                }
            },
            (Next::Artifacts, None) => unreachable!("artifacts follow the manifest"),
        };
        if size > limit {
            return Err(refuse(format!(
                "entry {name:?} is {size} bytes, more than the {limit} bytes it may have"
            )));
        }
        let dest = into.join(&name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(io_err(format!("writing {}", dest.display())))?;
        let copied = std::io::copy(&mut (&mut entry).take(limit + 1), &mut out).map_err(|e| {
            refuse(format!(
                "the bundle is truncated or corrupt in {name:?}: {e}"
            ))
        })?;
        if copied != size {
            return Err(refuse(format!("entry {name:?} is truncated")));
        }
        drop(out);
        // Each document is checked the moment it is complete.
        next = match next {
            Next::Document(KEY_LIST) => Next::Document(KEY_LIST_SIGNATURE),
            Next::Document(KEY_LIST_SIGNATURE) => {
                let text = super::read_small(&into.join(KEY_LIST))?;
                let sig = super::read_small(&into.join(KEY_LIST_SIGNATURE))?;
                trust = trust.with_key_list(
                    super::trust::ROOT_KEY,
                    &text,
                    &String::from_utf8_lossy(&sig),
                )?;
                Next::Document(MANIFEST)
            }
            Next::Document(MANIFEST) => Next::Document(SIGNATURE),
            Next::Document(_) => {
                let bytes = super::read_small(&into.join(MANIFEST))?;
                let sig = super::read_small(&into.join(SIGNATURE))?;
                trust.verify(&bytes, &String::from_utf8_lossy(&sig), MANIFEST)?;
                manifest = Some(super::Manifest::parse(&bytes)?);
                Next::Artifacts
            }
            Next::Artifacts => {
                if name == NOTES {
                    notes = true;
                } else {
                    artifact += 1;
                }
                Next::Artifacts
            }
        };
    }
    match (&manifest, next) {
        (Some(m), Next::Artifacts) if artifact == m.artifacts.len() => Ok(()),
        (Some(m), _) => Err(refuse(format!(
            "the bundle ends before artifact {} of {}",
            artifact + 1,
            m.artifacts.len()
        ))),
        (None, _) => Err(refuse("the bundle ends before its signed manifest".into())),
    }
}
