//! Tidiness the compiler does not check: the layering ARCHITECTURE.md states, a `//!` line at
//! the top of every file, and no test that skips itself quietly.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the repository.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut open = vec![root().join(dir)];
    while let Some(d) = open.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                open.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(root()).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// The lines of a file that are code, not comments, with their numbers.
fn code(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(root().join(path))
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect()
}

/// The modules of the crate a line names (`crate::service::...` gives `service`).
fn crate_modules(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        // `crate::` itself, not the end of a longer name.
        .filter(|(i, _)| !line[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(i, m)| {
            let rest = &line[i + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Each `file:line: text` where a module names one it must not.
fn violations(dirs: &[&str], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for dir in dirs {
        for f in rust_files(dir) {
            for (n, line) in code(&f) {
                for m in crate_modules(&line) {
                    if !allowed(m) {
                        found.push(format!("{}:{n}: {}", f.display(), line.trim()));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_layers_import_only_downwards() {
    // Only the store names the database.
    let mut redb = Vec::new();
    for f in rust_files("src") {
        if f.starts_with("src/store") {
            continue;
        }
        for (n, line) in code(&f) {
            if line.contains("redb::") || line.contains("use redb") {
                redb.push(format!("{}:{n}: {}", f.display(), line.trim()));
            }
        }
    }
    assert!(
        redb.is_empty(),
        "only `store` names redb:\n{}",
        redb.join("\n")
    );

    // The domain imports nothing else of the crate.
    let domain = violations(&["src/domain"], |m| m == "domain");
    assert!(
        domain.is_empty(),
        "`domain` imports nothing else of the crate:\n{}",
        domain.join("\n")
    );

    // Lower layers import no use case, loop, HTTP front end or command line.
    const UPPER: [&str; 9] = [
        "service", "workers", "api", "web", "proxy", "server", "admin", "cli", "client",
    ];
    let lower = violations(
        &[
            "src/domain",
            "src/store",
            "src/config",
            "src/content",
            "src/agent",
            "src/runtime",
            "src/backup",
            "src/update",
        ],
        |m| !UPPER.contains(&m),
    );
    assert!(
        lower.is_empty(),
        "lower layers import no service, workers, HTTP or CLI code:\n{}",
        lower.join("\n")
    );

    // The service layer is not the HTTP edge's, and the API client is not the CLI's.
    let service = violations(&["src/service"], |m| {
        !["api", "web", "proxy", "server", "admin", "cli", "client"].contains(&m)
    });
    assert!(
        service.is_empty(),
        "`service` imports no front end or start-up code:\n{}",
        service.join("\n")
    );
    let client = violations(&["src/client"], |m| m != "cli");
    assert!(
        client.is_empty(),
        "the API client imports no CLI types:\n{}",
        client.join("\n")
    );
}

#[test]
fn every_file_starts_by_saying_what_it_is_for() {
    let mut missing = Vec::new();
    for dir in ["src", "ui/src", "tests", "benches"] {
        for f in rust_files(dir) {
            let text = std::fs::read_to_string(root().join(&f)).unwrap();
            if !text.starts_with("//!") {
                missing.push(f.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` line:\n{}",
        missing.join("\n")
    );
}

/// A test that cannot run fails and names what to install; it never passes by doing nothing.
#[test]
fn no_test_skips_itself_quietly() {
    let mut quiet = Vec::new();
    for dir in ["src", "tests"] {
        for f in rust_files(dir) {
            if f.ends_with("tests/it/tidy.rs") {
                continue;
            }
            for (n, line) in code(&f) {
                let lower = line.to_lowercase();
                let printed_skip = (lower.contains("println!") || lower.contains("eprint"))
                    && lower.contains("skip");
                // Spelled in two parts so that this file does not hold what it looks for.
                let ignored = line.contains(concat!("#[", "ignore"));
                if ignored || printed_skip {
                    quiet.push(format!("{}:{n}: {}", f.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        quiet.is_empty(),
        "tests that skip themselves:\n{}",
        quiet.join("\n")
    );
}
