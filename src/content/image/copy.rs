//! `devcell build-copy`: what `COPY`, `ADD` and `WORKDIR` do to a build's root, run inside the
//! build step's sandbox (so that links in the image, such as `/bin -> usr/bin`, are resolved
//! in the image and a link in the context leads nowhere on the host).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::build::resolve_sources;
use super::dockerfile::Ignore;

/// What the tool was asked to do.
#[derive(Debug, Default)]
pub struct CopyArgs {
    /// Only make this directory (WORKDIR).
    pub mkdir: Option<String>,
    pub src_root: PathBuf,
    pub excludes: Vec<String>,
    /// ADD: local tar archives are unpacked into the destination.
    pub unpack: bool,
    pub chmod: Option<String>,
    pub dest: String,
    pub srcs: Vec<String>,
}

impl CopyArgs {
    /// Reads `--mkdir DIR` or `--src-root R [--exclude=P].. [--unpack] [--chmod=M] --dest=D --
    /// SRC..`.
    pub fn parse(args: &[String]) -> Result<CopyArgs, String> {
        let mut out = CopyArgs::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let value = |it: &mut std::slice::Iter<'_, String>, name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--mkdir" => out.mkdir = Some(value(&mut it, a)?),
                "--src-root" => out.src_root = PathBuf::from(value(&mut it, a)?),
                "--unpack" => out.unpack = true,
                "--" => {
                    out.srcs = it.cloned().collect();
                    break;
                }
                _ => {
                    if let Some(p) = a.strip_prefix("--exclude=") {
                        out.excludes.push(p.to_owned());
                    } else if let Some(m) = a.strip_prefix("--chmod=") {
                        out.chmod = Some(m.to_owned());
                    } else if let Some(d) = a.strip_prefix("--dest=") {
                        out.dest = d.to_owned();
                    } else {
                        return Err(format!("unknown argument {a:?}"));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Does the copy; errors are for the build's log.
pub fn run(args: &CopyArgs) -> Result<(), String> {
    if let Some(dir) = &args.mkdir {
        return fs::create_dir_all(dir).map_err(|e| format!("WORKDIR {dir}: {e}"));
    }
    let ignore = Ignore::from_patterns(args.excludes.clone())?;
    let mode = match &args.chmod {
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| format!("--chmod={m}: give an octal mode such as 755"))?,
        ),
        None => None,
    };
    let into_dir = args.dest.ends_with('/');
    let dest = PathBuf::from(&args.dest);
    for src in &args.srcs {
        let found = resolve_sources(&args.src_root, src, &ignore)?;
        if found.is_empty() {
            return Err(format!("{src}: no such file in the source"));
        }
        for rel in found {
            let path = if rel.is_empty() {
                args.src_root.clone()
            } else {
                args.src_root.join(&rel)
            };
            let m = fs::symlink_metadata(&path).map_err(|e| format!("{rel}: {e}"))?;
            if m.is_dir() {
                fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                copy_tree(&path, &dest, &rel, &ignore, mode)?;
                continue;
            }
            let name = Path::new(&rel)
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_default();
            if args.unpack && m.is_file() && is_archive(&path) {
                fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                unpack(&path, &dest).map_err(|e| format!("ADD {rel}: {e}"))?;
                continue;
            }
            let target = if into_dir || dest.is_dir() {
                fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                dest.join(name)
            } else {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                dest.clone()
            };
            copy_one(&path, &target, &m, mode)?;
        }
    }
    Ok(())
}

/// Copies the contents of `src` into `dest`, leaving out what `ignore` excludes (`rel` is
/// `src` relative to the source root).
fn copy_tree(
    src: &Path,
    dest: &Path,
    rel: &str,
    ignore: &Ignore,
    mode: Option<u32>,
) -> Result<(), String> {
    let mut stack = vec![(src.to_owned(), dest.to_owned(), rel.to_owned())];
    while let Some((from, to, rel)) = stack.pop() {
        let entries = fs::read_dir(&from).map_err(|e| format!("{rel}: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{rel}: {e}"))?;
            let name = entry.file_name();
            let child_rel = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            if ignore.excludes(&child_rel) {
                continue;
            }
            let path = entry.path();
            let m = fs::symlink_metadata(&path).map_err(|e| format!("{child_rel}: {e}"))?;
            let target = to.join(&name);
            if m.is_dir() {
                match fs::create_dir(&target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && target.is_dir() => {}
                    Err(e) => return Err(format!("{}: {e}", target.display())),
                }
                let perm = mode.unwrap_or(m.permissions().mode() & 0o7777);
                let _ = fs::set_permissions(&target, fs::Permissions::from_mode(perm));
                stack.push((path, target, child_rel));
            } else {
                copy_one(&path, &target, &m, mode)?;
            }
        }
    }
    Ok(())
}

fn copy_one(src: &Path, target: &Path, m: &fs::Metadata, mode: Option<u32>) -> Result<(), String> {
    let err = |e: io::Error| format!("{}: {e}", target.display());
    if let Ok(existing) = fs::symlink_metadata(target)
        && !existing.is_dir()
    {
        fs::remove_file(target).map_err(err)?;
    }
    if m.file_type().is_symlink() {
        let link = fs::read_link(src).map_err(err)?;
        std::os::unix::fs::symlink(link, target).map_err(err)?;
    } else if m.is_file() {
        fs::copy(src, target).map_err(err)?;
        let perm = mode.unwrap_or(m.permissions().mode() & 0o7777);
        fs::set_permissions(target, fs::Permissions::from_mode(perm)).map_err(err)?;
    }
    Ok(())
}

/// Whether `path` is a tar archive, plain or gzip-compressed (ADD unpacks those).
fn is_archive(path: &Path) -> bool {
    let Ok(mut reader) = open_maybe_gzip(path) else {
        return false;
    };
    let mut block = [0u8; 512];
    reader.read_exact(&mut block).is_ok() && &block[257..262] == b"ustar"
}

fn open_maybe_gzip(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut magic = [0u8; 2];
    let n = fs::File::open(path)?.read(&mut magic)?;
    let file = io::BufReader::new(fs::File::open(path)?);
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

fn unpack(path: &Path, dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(open_maybe_gzip(path)?);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    // `unpack` keeps every entry inside `dest` (no `..`, no writing through a link).
    archive.unpack(dest)
}
