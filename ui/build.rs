//! Bundles the dashboard's npm packages (xterm.js) into the binary: `npm ci` from the
//! committed lockfile into OUT_DIR (once; the target directory caches it), then the files
//! the pages serve are copied next to it for `include_bytes!`.

use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: &[(&str, &str)] = &[
    ("node_modules/@xterm/xterm/lib/xterm.js", "xterm.js"),
    ("node_modules/@xterm/xterm/css/xterm.css", "xterm.css"),
    (
        "node_modules/@xterm/addon-fit/lib/addon-fit.js",
        "addon-fit.js",
    ),
];

fn main() {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("js");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=js/package.json");
    println!("cargo:rerun-if-changed=js/package-lock.json");
    let work = out.join("js");
    std::fs::create_dir_all(&work)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", work.display()));
    let lock = std::fs::read(src.join("package-lock.json")).unwrap_or_default();
    let installed = std::fs::read(work.join("package-lock.json")).unwrap_or_default();
    if lock != installed || !FILES.iter().all(|(from, _)| work.join(from).exists()) {
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(src.join(f), work.join(f))
                .unwrap_or_else(|e| panic!("cannot copy {f}: {e}"));
        }
        install(&work);
    }
    for (from, to) in FILES {
        std::fs::copy(work.join(from), out.join(to))
            .unwrap_or_else(|e| panic!("cannot copy {from}: {e}"));
    }
}

fn install(dir: &Path) {
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| {
            panic!("npm is needed to build the dashboard (apt-get install -y npm): {e}")
        });
    assert!(status.success(), "npm ci failed in {}", dir.display());
}
