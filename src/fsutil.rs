//! Atomic, private file writes.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Whether an existing file may be replaced.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Replace {
    /// Fail if the file exists (checked atomically: the rename itself refuses).
    Never,
    /// Replace it atomically.
    Allow,
}

/// A file written and fsynced under a temporary name next to its destination, waiting to be
/// renamed into place. Dropping it removes the temporary file.
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to a temporary file (created 0600) in `path`'s directory, gives it `mode` and
/// fsyncs it.
pub fn stage(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<Staged> {
    let dir = parent(path);
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
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

impl Staged {
    /// Renames the file into place. With [`Replace::Never`] the rename itself refuses to
    /// replace an existing file.
    pub fn commit(self, replace: Replace) -> anyhow::Result<PathBuf> {
        let path = self.path;
        match replace {
            Replace::Allow => self.tmp.persist(&path).map(drop),
            Replace::Never => self.tmp.persist_noclobber(&path).map(drop),
        }
        .map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!("{} already exists", path.display())
            } else {
                anyhow::Error::new(e.error).context(format!("cannot write {}", path.display()))
            }
        })?;
        Ok(path)
    }
}

/// Fsyncs a directory, making renames in it durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// Writes `bytes` to `path` atomically: staged (0600 while written, then `mode`, fsynced),
/// renamed over `path`, and the directory fsynced. A reader sees the old file or the new one,
/// never a mix, and a crash leaves the old file in place.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> anyhow::Result<()> {
    stage(path, bytes, mode)?.commit(replace)?;
    sync_dir(parent(path))
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
