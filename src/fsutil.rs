//! Atomic, private file writes.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};

/// Whether an existing file may be replaced.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Replace {
    /// Fail if the file exists (checked atomically: the rename itself refuses).
    Never,
    /// Replace it atomically.
    Allow,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (created 0600),
/// written, given `mode`, fsynced, renamed over `path`, and the directory fsynced. A reader sees
/// the old file or the new one, never a mix, and a crash leaves the old file in place.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "directory {} does not exist; create it first",
            dir.display()
        );
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".keybound-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(mode))
        })
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    match replace {
        Replace::Allow => tmp.persist(path).map(drop),
        Replace::Never => tmp.persist_noclobber(path).map(drop),
    }
    .map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} already exists", path.display())
        } else {
            anyhow::Error::new(e.error).context(format!("cannot write {}", path.display()))
        }
    })?;
    // Make the rename itself durable.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_privately_and_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_atomic(&path, b"one", 0o600, Replace::Never).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = write_atomic(&path, b"two", 0o600, Replace::Never).unwrap_err();
        assert!(err.to_string().ends_with("key already exists"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"two", 0o600, Replace::Allow).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_atomic(&dir.path().join("no/such/key"), b"x", 0o600, Replace::Allow);
        assert!(err.unwrap_err().to_string().contains("does not exist"));
    }
}
