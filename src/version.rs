//! This binary: its version, and where it is. It is stamped in an ELF section of its own, `.devcell_version`, so a
//! built binary can carry another version without being compiled again: a release pipeline
//! (and the update tests, which make "the next release" from the binary under test) sets it
//! with `objcopy --update-section .devcell_version=FILE`. The section holds the version's text
//! padded with NUL bytes to [`STAMP_LEN`].

#![allow(unsafe_code)]

use std::sync::OnceLock;

/// The response header of `/readyz` saying which version answers (a handover checks that the
/// new binary does).
pub const HEADER: &str = "x-devcell-version";

/// The stamp's size in bytes; a longer version does not fit.
pub const STAMP_LEN: usize = 64;

/// The section's name, as `objcopy` takes it.
pub const SECTION: &str = ".devcell_version";

const fn pad(v: &str) -> [u8; STAMP_LEN] {
    let bytes = v.as_bytes();
    assert!(
        bytes.len() < STAMP_LEN,
        "the version does not fit its stamp"
    );
    let mut out = [0u8; STAMP_LEN];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

#[used]
#[unsafe(link_section = ".devcell_version")]
static STAMP: [u8; STAMP_LEN] = pad(env!("CARGO_PKG_VERSION"));

/// The stamp's text padded for the section (what a pipeline writes with `objcopy`).
pub fn stamp(version: &semver::Version) -> Option<Vec<u8>> {
    let text = version.to_string();
    (text.len() < STAMP_LEN).then(|| {
        let mut out = text.into_bytes();
        out.resize(STAMP_LEN, 0);
        out
    })
}

/// The running binary's version, as stamped.
pub fn current() -> &'static semver::Version {
    static V: OnceLock<semver::Version> = OnceLock::new();
    V.get_or_init(|| {
        // SAFETY: STAMP is a plain byte array that lives for the whole program. The read is
        // volatile because the section may have been rewritten after compilation: the
        // compiler must not use the value it put there.
        let bytes: [u8; STAMP_LEN] = unsafe { std::ptr::read_volatile(&raw const STAMP) };
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(STAMP_LEN);
        std::str::from_utf8(&bytes[..end])
            .ok()
            .and_then(|s| s.parse().ok())
            // Unreadable only if someone wrote nonsense into the section: say 0.0.0, which
            // every release may replace.
            .unwrap_or_else(|| semver::Version::new(0, 0, 0))
    })
}

/// [`current`] as text, for `--version`, headers and user agents.
pub fn text() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| current().to_string())
}

/// The previous binary, kept beside the running one by an update.
pub const PREVIOUS: &str = "devcell.prev";

/// The executable this process was started from, remembered before an update renames it.
static EXE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();

/// Remembers where this process's binary is; call it first thing in a long-lived process.
pub fn remember_executable() {
    EXE.get_or_init(|| std::env::current_exe().ok());
}

/// Where this process's binary is (as it was when the process started).
pub fn executable() -> Result<std::path::PathBuf, String> {
    EXE.get_or_init(|| std::env::current_exe().ok())
        .clone()
        .ok_or_else(|| "this process does not know where its binary is".to_string())
}

/// `devcell.prev` beside this process's binary.
pub fn previous() -> Result<std::path::PathBuf, String> {
    Ok(executable()?.with_file_name(PREVIOUS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_binary_says_its_crates_version() {
        assert_eq!(text(), env!("CARGO_PKG_VERSION"));
        let s = stamp(current()).unwrap();
        assert_eq!(s.len(), STAMP_LEN);
        assert!(s.starts_with(env!("CARGO_PKG_VERSION").as_bytes()));
        let s = stamp(&semver::Version::new(1, 2, 3)).unwrap();
        assert_eq!(&s[..6], b"1.2.3\0");
        let long: semver::Version = format!("1.0.0-{}", "x".repeat(70)).parse().unwrap();
        assert_eq!(
            stamp(&long),
            None,
            "a version longer than the stamp does not fit"
        );
    }
}
