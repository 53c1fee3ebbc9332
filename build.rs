//! Records the commit this crate is built from as the compile-time variable `TPLA_BUILD_COMMIT`
//! (`git rev-parse --short HEAD`, with `-dirty` when tracked files differ from it), so every JSON
//! report names the code that produced it, wherever the binary later runs. Without git, or
//! outside a git work tree whose top is this crate (a crates.io tarball), it is `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    // Only this crate's own repository counts, not one it happens to be unpacked inside.
    let own_repo = git(&dir, &["rev-parse", "--show-toplevel"])
        .is_some_and(|top| canonical(Path::new(&top)) == canonical(&dir));
    let commit = own_repo
        .then(|| git(&dir, &["rev-parse", "--short", "HEAD"]))
        .flatten()
        .filter(|c| !c.is_empty());
    let value = match commit {
        Some(c) => {
            // `git diff --quiet` exits 1 when tracked files differ from HEAD (staged or not).
            let clean = Command::new("git")
                .args(["diff", "--quiet", "HEAD", "--"])
                .current_dir(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if clean {
                c
            } else {
                format!("{c}-dirty")
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=TPLA_BUILD_COMMIT={value}");

    // Run again when HEAD moves, a branch advances, the index changes or any source changes.
    if own_repo {
        for (flag, file) in [
            ("--git-dir", "HEAD"),
            ("--git-dir", "index"),
            ("--git-common-dir", "packed-refs"),
        ] {
            if let Some(d) = git(&dir, &["rev-parse", flag]) {
                rerun_if_changed(&dir.join(d).join(file));
            }
        }
        if let (Some(common), Some(head_ref)) = (
            git(&dir, &["rev-parse", "--git-common-dir"]),
            git(&dir, &["symbolic-ref", "-q", "HEAD"]),
        ) {
            rerun_if_changed(&dir.join(common).join(head_ref));
        }
    }
    for src in [
        "build.rs",
        "Cargo.toml",
        "src",
        "tests",
        "codegen",
        "dsl-macros",
        "kernels-gen",
        "runtime/src",
        "runtime/Cargo.toml",
    ] {
        rerun_if_changed(&dir.join(src));
    }
}

/// Watches `path` when it exists (a missing path would rerun this script on every build).
fn rerun_if_changed(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
