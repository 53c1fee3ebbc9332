//! Atomic outputs of `convert` and `accuracy`, and the checks of their paths before the work.
//!
//! - [`OutputFile`]: one file (JSON, PNG, safetensors, text). [`OutputFile::prepare`] checks the
//!   path and creates the temporary file beside it, so an unwritable target fails before any
//!   work; [`OutputFile::commit_with`] writes, syncs and renames it over the target. A failed
//!   write leaves the previous file intact and no temporary file behind.
//! - [`OutputDir`]: a directory written whole (`convert --out DIR`): the files go into a
//!   temporary directory beside DIR, which replaces DIR in one rename at the end, so no file of an
//!   earlier run (e.g. `rank7.safetensors` of a larger k) survives and a failed run changes
//!   nothing. A non-empty DIR is refused unless `force`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{ModelError, Result};

fn out_err(path: &Path, detail: impl Into<String>) -> ModelError {
    ModelError::OutputPath {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Check the parent of `path` is an existing directory.
fn check_parent(path: &Path) -> Result<PathBuf> {
    let parent = parent_of(path);
    if !parent.is_dir() {
        let what = if parent.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(out_err(
            path,
            format!("its directory `{}` {what}", parent.display()),
        ));
    }
    Ok(parent)
}

/// Create a named temporary file in `dir` with the permissions of a plain `File::create`.
fn temp_file_in(dir: &Path, target: &Path) -> Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    b.prefix(".tpla-").suffix(".tmp");
    #[cfg(unix)]
    let perms = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o666)
    };
    #[cfg(unix)]
    b.permissions(perms);
    b.tempfile_in(dir).map_err(|e| {
        out_err(
            target,
            format!("cannot create a file in its directory: {e}"),
        )
    })
}

/// An output file reserved before the work and written atomically after it.
#[derive(Debug)]
pub struct OutputFile {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl OutputFile {
    /// Check `path` (not a directory, its directory exists and is writable) by creating the
    /// temporary file that will replace it. Dropping the result removes the temporary file.
    pub fn prepare(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(out_err(path, "is a directory"));
        }
        if path.as_os_str().is_empty() {
            return Err(out_err(path, "empty path"));
        }
        let parent = check_parent(path)?;
        let tmp = temp_file_in(&parent, path)?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            tmp,
        })
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the contents with `f`, sync, and rename over the target. On any error the target is
    /// untouched and the temporary file removed.
    pub fn commit_with(self, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        let OutputFile { path, mut tmp } = self;
        {
            let mut w = std::io::BufWriter::new(&mut tmp);
            f(&mut w)?;
            w.flush().map_err(|e| ModelError::io(&path, e))?;
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| ModelError::io(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| ModelError::io(&path, e.error))?;
        Ok(())
    }

    /// [`OutputFile::commit_with`] of a byte string.
    pub fn commit(self, bytes: &[u8]) -> Result<()> {
        let path = self.path.clone();
        self.commit_with(|w| w.write_all(bytes).map_err(|e| ModelError::io(&path, e)))
    }
}

/// Write `bytes` to `path` atomically (temporary file beside it, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    OutputFile::prepare(path)?.commit(bytes)
}

/// An output directory written into a temporary directory beside it and swapped in at the end.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    staging: tempfile::TempDir,
}

impl OutputDir {
    /// Check `path` before the work: not a file; empty or absent unless `force` (then it is
    /// replaced whole, and may not be the working directory or one above it). Creates missing
    /// parent directories and the staging directory (which proves the parent writable).
    pub fn prepare(path: &Path, force: bool) -> Result<Self> {
        if path.as_os_str().is_empty() {
            return Err(out_err(path, "empty path"));
        }
        if path.exists() && !path.is_dir() {
            return Err(out_err(path, "exists and is not a directory"));
        }
        if path.is_dir() {
            let mut entries = std::fs::read_dir(path).map_err(|e| ModelError::io(path, e))?;
            if entries.next().is_some() {
                if !force {
                    return Err(out_err(
                        path,
                        "directory is not empty; pass --force to replace it whole \
                         (every file in it is removed)",
                    ));
                }
                let cwd = std::env::current_dir().map_err(|e| ModelError::io(path, e))?;
                let abs = path.canonicalize().map_err(|e| ModelError::io(path, e))?;
                if cwd.starts_with(&abs) {
                    return Err(out_err(
                        path,
                        "is the working directory or one above it; --force will not replace it",
                    ));
                }
            }
        }
        let parent = parent_of(path);
        std::fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".tpla-out-")
            .tempdir_in(&parent)
            .map_err(|e| out_err(path, format!("cannot create a directory beside it: {e}")))?;
        Ok(OutputDir {
            path: path.to_path_buf(),
            staging,
        })
    }

    /// The final directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where to write the files now (inside the staging directory).
    pub fn staged(&self, name: &str) -> PathBuf {
        self.staging.path().join(name)
    }

    /// Swap the staging directory in place of the target (the old one, if any, is removed).
    pub fn commit(self) -> Result<()> {
        let OutputDir { path, staging } = self;
        let parent = parent_of(&path);
        // The old directory moves into a temporary directory that is removed on drop.
        let trash = tempfile::Builder::new()
            .prefix(".tpla-old-")
            .tempdir_in(&parent)
            .map_err(|e| ModelError::io(&parent, e))?;
        let old = trash.path().join("old");
        let had_old = path.exists();
        if had_old {
            std::fs::rename(&path, &old).map_err(|e| ModelError::io(&path, e))?;
        }
        let staged = staging.keep();
        if let Err(e) = std::fs::rename(&staged, &path) {
            // Put the previous output back; the staged files are removed.
            if had_old {
                let _ = std::fs::rename(&old, &path);
            }
            let _ = std::fs::remove_dir_all(&staged);
            return Err(ModelError::io(&path, e));
        }
        trash.close().map_err(|e| ModelError::io(&old, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(name).tempdir().unwrap()
    }

    #[test]
    fn failed_write_keeps_the_previous_file_and_leaves_no_temp() {
        let d = dir("fsio-file");
        let p = d.path().join("report.json");
        write_atomic(&p, b"old").unwrap();
        let out = OutputFile::prepare(&p).unwrap();
        let r = out.commit_with(|w| {
            w.write_all(b"half").unwrap();
            Err(ModelError::Plot("fails mid-way".into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn bad_file_targets_fail_before_the_work() {
        let d = dir("fsio-bad");
        let e = OutputFile::prepare(d.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = OutputFile::prepare(&d.path().join("no/such/x.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(d.path().join("f"), b"").unwrap();
        let e = OutputFile::prepare(&d.path().join("f/x.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a directory"), "{e}");
    }

    #[test]
    fn output_dir_replaces_whole_only_with_force() {
        let d = dir("fsio-dir");
        let out = d.path().join("shards");
        let o = OutputDir::prepare(&out, false).unwrap();
        std::fs::write(o.staged("rank0"), b"a").unwrap();
        std::fs::write(o.staged("rank1"), b"b").unwrap();
        o.commit().unwrap();
        let e = OutputDir::prepare(&out, false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        let o = OutputDir::prepare(&out, true).unwrap();
        std::fs::write(o.staged("rank0"), b"c").unwrap();
        o.commit().unwrap();
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["rank0"]);
        assert_eq!(std::fs::read(out.join("rank0")).unwrap(), b"c");
        // Nothing but the output is left beside it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // A dropped (failed) run leaves the previous output and no staging directory.
        let o = OutputDir::prepare(&out, true).unwrap();
        std::fs::write(o.staged("rank0"), b"d").unwrap();
        drop(o);
        assert_eq!(std::fs::read(out.join("rank0")).unwrap(), b"c");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let f = d.path().join("file");
        std::fs::write(&f, b"").unwrap();
        assert!(OutputDir::prepare(&f, true).is_err());
    }
}
