//! Where the admin socket lives: a directory only its user may enter, and a socket only its
//! user may open; finding the socket of the one dev cluster running, when none is named.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The directory's name under `$XDG_RUNTIME_DIR` (or, with the user's ID, under the temporary
/// directory).
const DIR_NAME: &str = "keybound-dev-cluster";

/// This process's effective user ID.
pub(super) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Where dev clusters put their admin sockets unless told otherwise:
/// `$XDG_RUNTIME_DIR/keybound-dev-cluster` (the user's own runtime directory), else
/// `$TMPDIR/keybound-dev-cluster-<uid>`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join(DIR_NAME),
        None => std::env::temp_dir().join(format!("{DIR_NAME}-{}", euid())),
    }
}

/// The default socket of a dev cluster whose Proxy listens on `port`, its directory made
/// (mode 0700) or checked.
pub(super) fn default_socket(port: u16) -> anyhow::Result<PathBuf> {
    let dir = default_dir();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot make the admin socket directory {}", dir.display())
            });
        }
    }
    check_private_dir(&dir)?;
    Ok(dir.join(format!("{port}.sock")))
}

/// Refuses a directory that is not this user's own: a symbolic link, another user's, or one
/// that others may enter (a shared temporary directory is where someone could plant one).
fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot read the admin socket directory {}", dir.display()))?;
    let fix = "remove it, or name a socket in a directory of your own with --admin-socket";
    if !meta.is_dir() {
        bail!("{} is not a directory; {fix}", dir.display());
    }
    if meta.uid() != euid() {
        bail!(
            "the admin socket directory {} belongs to uid {}, not to you (uid {}); {fix}",
            dir.display(),
            meta.uid(),
            euid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the admin socket directory {} is open to other users (mode {:o}); {fix}",
            dir.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// Whether a dev cluster answers on the socket at `path`.
fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Clears the way for a socket at `path`: a socket nobody answers on (a cluster that was
/// killed) is removed; a live one, or anything else, is refused.
pub(super) fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; remove it, or choose another --admin-socket",
            path.display()
        );
    }
    if answers(path) {
        bail!(
            "another dev cluster already serves its admin side at {}; stop it, or choose another --admin-socket",
            path.display()
        );
    }
    std::fs::remove_file(path)
        .with_context(|| format!("cannot remove the stale admin socket {}", path.display()))
}

/// The socket of the one dev cluster this user runs, from the sockets in [`default_dir`].
pub(super) fn find() -> anyhow::Result<PathBuf> {
    let dir = default_dir();
    let start = "start one with `keybound dev-cluster`, or pass --admin-socket PATH (a dev cluster prints its `admin socket:`)";
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!(
                "no dev cluster of yours is running (no {}); {start}",
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    check_private_dir(&dir)?;
    let mut live: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock") && answers(p))
        .collect();
    live.sort();
    match live.len() {
        0 => bail!(
            "no dev cluster of yours is running (no live socket in {}); {start}",
            dir.display()
        ),
        1 => Ok(live.remove(0)),
        n => bail!(
            "{n} dev clusters are running ({}); choose one with --admin-socket PATH",
            live.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
