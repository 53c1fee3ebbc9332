//! Atomic file writes: the content goes to a temporary file in the target's directory, is synced,
//! and is then renamed over the target. A failed write (full disk, killed process, an error
//! while producing the content) leaves the previous file byte for byte as it was.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically (see the module docs). The directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes to `path` atomically what `fill` writes into the temporary file. An error from `fill`
/// is returned and the temporary file is removed; `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // The permissions a plain write would give: those of the file replaced, else 0o666 less the
    // umask (a temporary file alone would be private, 0o600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() {
            tmp.as_file().set_permissions(meta.permissions())?;
        }
    }
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn a_failed_write_keeps_the_previous_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.safetensors");
        std::fs::write(&p, b"previous output").unwrap();
        // The content fails half-way (as a full disk does): the old file stays.
        let err = write_atomic_with(&p, |f| {
            f.write_all(b"half of the new")?;
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read(&p).unwrap(), b"previous output");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }

    #[test]
    fn a_failed_rename_keeps_the_target_and_removes_the_temporary() {
        let d = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails after the data was written.
        let p = d.path().join("target");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("keep"), b"kept").unwrap();
        assert!(write_atomic(&p, b"new").is_err());
        assert_eq!(std::fs::read(p.join("keep")).unwrap(), b"kept");
        assert!(leftovers(d.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_those_of_a_plain_write() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (plain, atomic) = (d.path().join("plain"), d.path().join("atomic"));
        std::fs::write(&plain, b"x").unwrap();
        write_atomic(&atomic, b"x").unwrap();
        assert_eq!(
            mode(&atomic),
            mode(&plain),
            "a new file: 0o666 less the umask"
        );
        std::fs::set_permissions(&atomic, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&atomic, b"y").unwrap();
        assert_eq!(
            mode(&atomic),
            0o640,
            "a replaced file keeps its permissions"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(write_atomic(&d.path().join("no/such/dir/f"), b"x").is_err());
    }
}
