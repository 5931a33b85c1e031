//! Atomic, private file writes, into directories opened under tbot's symlink policy.
//!
//! A destination directory is opened once ([`Dir::open`]) and every file is then written
//! relative to that open directory (`openat`, `renameat`), so the path is resolved once, by the
//! rules of the policy, and nothing swapped into the path afterwards redirects a write. Under
//! `secure` and `try-secure` the directory is opened with `openat2(RESOLVE_NO_SYMLINKS)`, which
//! refuses a symbolic link in *any* component of the path, as tbot does (`openSecure` in
//! `lib/tbot/botfs/fs_linux.go`). A kernel without `openat2` (before Linux 5.6, or a sandbox
//! that hides it: `ENOSYS`) fails `secure` and, under `try-secure`, falls back to a plain open
//! with a warning (tbot's `openSymlinksMode`); `insecure` follows symbolic links.

use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use zeroize::Zeroizing;

/// tbot's `symlinks:` policy for directory destinations (`lib/tbot/botfs`).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Symlinks {
    /// Refuse symlinks anywhere in the path.
    Secure,
    /// Refuse symlinks where the platform can tell (the default).
    #[default]
    TrySecure,
    /// Follow symlinks.
    Insecure,
}

/// Whether an existing file may be replaced.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Replace {
    /// Fail if the file exists (checked atomically: the rename itself refuses).
    Never,
    /// Replace it atomically.
    Allow,
}

impl Replace {
    /// `Allow` when `overwrite` (a `--overwrite` flag), else `Never`.
    pub fn when(overwrite: bool) -> Self {
        if overwrite { Self::Allow } else { Self::Never }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An open directory that files are written into.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Flags of a directory opened for `openat`, `renameat` and `fsync`.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Opens the directory `path` as `symlinks` says.
fn open_dir(path: &Path, symlinks: Symlinks) -> Result<OwnedFd, Errno> {
    if symlinks == Symlinks::Insecure {
        return rustix::fs::open(path, dir_flags(), Mode::empty());
    }
    match rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        dir_flags(),
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    ) {
        Err(Errno::NOSYS) if symlinks == Symlinks::TrySecure => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    path = %path.display(),
                    "this kernel has no openat2, so symbolic links in destination paths cannot be \
                     refused; falling back to a plain open (set symlinks: insecure to silence this)"
                );
            });
            rustix::fs::open(path, dir_flags(), Mode::empty())
        }
        other => other,
    }
}

/// Opens `path`, creating it and its missing parents (mode 0700) as `create` says. Each
/// directory keybound creates is made inside its parent's open descriptor and opened from it
/// without following a link, so a creation never follows a symbolic link the policy refuses.
fn open_or_create(path: &Path, symlinks: Symlinks, create: bool) -> Result<OwnedFd, Errno> {
    match open_dir(path, symlinks) {
        Err(Errno::NOENT) if create => {}
        other => return other,
    }
    let Some(name) = path.file_name() else {
        // `/` exists; a path ending in `..` exists once its parent does.
        if let Some(up) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            open_or_create(up, symlinks, true)?;
        }
        return open_dir(path, symlinks);
    };
    let up = open_or_create(parent(path), symlinks, true)?;
    match rustix::fs::mkdirat(&up, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    let flags = if symlinks == Symlinks::Insecure {
        dir_flags()
    } else {
        dir_flags() | OFlags::NOFOLLOW
    };
    rustix::fs::openat(&up, name, flags, Mode::empty())
}

/// The first component of `path` that is a symbolic link, if any.
fn first_symlink(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut at = PathBuf::new();
    for component in absolute.components() {
        at.push(component);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(at);
        }
    }
    None
}

impl Dir {
    /// Opens the destination directory `path` under the `symlinks` policy, creating it (and
    /// its missing parents, mode 0700) when `create` is set.
    pub fn open(path: &Path, symlinks: Symlinks, create: bool) -> anyhow::Result<Self> {
        let fd = open_or_create(path, symlinks, create).map_err(|e| {
            let shown = path.display();
            match e {
                Errno::LOOP if symlinks != Symlinks::Insecure => {
                    let link = first_symlink(path).unwrap_or_else(|| path.to_owned());
                    anyhow!(
                        "destination {shown}: {} is a symbolic link, which the symlinks policy \
                         refuses; point the path at the real directory or set symlinks: insecure",
                        link.display()
                    )
                }
                Errno::NOSYS => anyhow!(
                    "destination {shown}: this kernel has no openat2 (Linux 5.6 or later), which \
                     symlinks: secure needs to refuse symbolic links; set symlinks: try-secure or \
                     insecure"
                ),
                Errno::NOTDIR => anyhow!("{shown} is not a directory"),
                Errno::NOENT => anyhow!("directory {shown} does not exist; create it first"),
                e => anyhow!(
                    "cannot {} directory {shown}: {}",
                    if create { "create or open" } else { "open" },
                    std::io::Error::from(e)
                ),
            }
        })?;
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    /// The directory's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to a new private file (0600 while written, then `mode`) in this
    /// directory, fsynced, under a temporary name, waiting to be renamed to `name`.
    pub fn stage(&self, name: &OsStr, bytes: &[u8], mode: u32) -> anyhow::Result<Staged<'_>> {
        let shown = self.path.join(name);
        let (tmp, fd) = self
            .create_temporary()
            .with_context(|| format!("cannot create a file in {}", self.path.display()))?;
        let staged = Staged {
            dir: self,
            tmp,
            name: name.to_owned(),
            committed: false,
        };
        let mut file = fs::File::from(fd);
        file.write_all(bytes)
            .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", shown.display()))?;
        Ok(staged)
    }

    /// Creates `.keybound-XXXXXXXXXX`, exclusively.
    fn create_temporary(&self) -> std::io::Result<(String, OwnedFd)> {
        use rand_core::RngCore as _;
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut last = Errno::EXIST;
        for _ in 0..16 {
            let mut random = [0u8; 10];
            rand_core::OsRng.fill_bytes(&mut random);
            let suffix: String = random
                .iter()
                .map(|b| char::from(LETTERS[usize::from(*b) % LETTERS.len()]))
                .collect();
            let tmp = format!(".keybound-{suffix}");
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(&self.fd, tmp.as_str(), flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((tmp, fd)),
                Err(Errno::EXIST) => last = Errno::EXIST,
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.into())
    }

    /// Fsyncs the directory, making renames in it durable.
    pub fn sync(&self) -> anyhow::Result<()> {
        rustix::fs::fsync(&self.fd)
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot sync directory {}", self.path.display()))
    }
}

/// A file written and fsynced under a temporary name in its directory, waiting to be renamed
/// into place. Dropping it removes the temporary file.
pub struct Staged<'a> {
    dir: &'a Dir,
    tmp: String,
    name: std::ffi::OsString,
    committed: bool,
}

impl Staged<'_> {
    /// Renames the file into place. With [`Replace::Never`] the rename itself refuses to
    /// replace an existing file.
    pub fn commit(mut self, replace: Replace) -> anyhow::Result<PathBuf> {
        let path = self.dir.path.join(&self.name);
        let fd = &self.dir.fd;
        let renamed = match replace {
            Replace::Allow => rustix::fs::renameat(fd, self.tmp.as_str(), fd, &self.name),
            Replace::Never => {
                match rustix::fs::renameat_with(
                    fd,
                    self.tmp.as_str(),
                    fd,
                    &self.name,
                    RenameFlags::NOREPLACE,
                ) {
                    // A filesystem without RENAME_NOREPLACE: a hard link fails on an existing
                    // name just as well; the temporary name then goes when `self` drops.
                    Err(Errno::NOSYS | Errno::INVAL) => {
                        rustix::fs::linkat(fd, self.tmp.as_str(), fd, &self.name, AtFlags::empty())
                    }
                    other => {
                        self.committed = other.is_ok();
                        other
                    }
                }
            }
        };
        match renamed {
            Ok(()) => {
                if replace == Replace::Allow {
                    self.committed = true;
                }
                Ok(path)
            }
            Err(Errno::EXIST) => Err(anyhow!("{} already exists", path.display())),
            Err(e) => Err(anyhow::Error::new(std::io::Error::from(e))
                .context(format!("cannot write {}", path.display()))),
        }
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.dir.fd, self.tmp.as_str(), AtFlags::empty());
        }
    }
}

/// Writes `bytes` to `path` atomically: staged (0600 while written, then `mode`, fsynced),
/// renamed over `path`, and the directory fsynced. A reader sees the old file or the new one,
/// never a mix, and a crash leaves the old file in place. The directory must exist; symbolic
/// links in `path` are followed (for keybound's own files, not destinations).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let dir = Dir::open(parent(path), Symlinks::Insecure, false)?;
    dir.stage(name, bytes, mode)?.commit(replace)?;
    dir.sync()
}

/// Where the directory `path` leads: an absolute path with `.`, `..` and symbolic links
/// resolved as far as it exists (`canonicalize`, one component at a time), and the part that
/// does not exist yet taken as written, `..` removing the component before it (those
/// directories will be created as real ones).
pub fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut resolved = PathBuf::from("/");
    let mut on_disk = true;
    for component in absolute.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => resolved = PathBuf::from("/"),
            Component::CurDir => {}
            // While on disk `resolved` is canonical (no links), so its parent is what `..` is.
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                let next = resolved.join(name);
                match on_disk.then(|| next.canonicalize()) {
                    Some(Ok(real)) => resolved = real,
                    _ => {
                        on_disk = false;
                        resolved = next;
                    }
                }
            }
        }
    }
    resolved
}

/// Files to write into a directory: (name, contents). The contents may hold a private key, so
/// they are zeroed when dropped.
pub type Files = Vec<(&'static str, Zeroizing<String>)>;

/// Writes `files` into `dir`: every one staged (written and fsynced under a temporary name)
/// before any is renamed into place.
///
/// The files are staged on threads of their own, all at once: each fsync waits for a journal
/// commit, and filesystems that group commits (ext4, xfs) then make one commit serve them all,
/// where one after another cost a commit each (a dozen for an identity output; see
/// docs/PERFORMANCE.md).
pub fn write_all(dir: &Dir, files: &Files) -> anyhow::Result<Vec<PathBuf>> {
    let staged = std::thread::scope(|scope| {
        let staging: Vec<_> = files
            .iter()
            .map(|(name, content)| {
                scope.spawn(move || dir.stage(name.as_ref(), content.as_bytes(), 0o600))
            })
            .collect();
        staging
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "writing a file in {} failed",
                        dir.path().display()
                    ))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let written = staged
        .into_iter()
        .map(|file| file.commit(Replace::Allow))
        .collect::<anyhow::Result<Vec<_>>>()?;
    dir.sync()?;
    Ok(written)
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

    #[test]
    fn a_staged_file_that_is_not_committed_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let open = Dir::open(dir.path(), Symlinks::Secure, false).unwrap();
        drop(open.stage(OsStr::new("key"), b"secret", 0o600).unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// `secure` and `try-secure` refuse a symbolic link anywhere in the path (the kernel here
    /// has openat2); `insecure` follows it. Missing directories are created.
    #[test]
    fn symlinks_in_any_component_follow_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let through = dir.path().join("link/out");
        for policy in [Symlinks::Secure, Symlinks::TrySecure] {
            let err = Dir::open(&through, policy, true).unwrap_err().to_string();
            assert!(
                err.contains("link is a symbolic link, which the symlinks policy refuses"),
                "{policy:?}: {err}"
            );
            assert!(
                !real.join("out").exists(),
                "{policy:?} created through the link"
            );
            let last = Dir::open(&dir.path().join("link"), policy, false).unwrap_err();
            assert!(last.to_string().contains("symbolic link"), "{last}");
        }
        let open = Dir::open(&through, Symlinks::Insecure, true).unwrap();
        open.stage(OsStr::new("f"), b"x", 0o600)
            .unwrap()
            .commit(Replace::Allow)
            .unwrap();
        assert_eq!(fs::read(real.join("out/f")).unwrap(), b"x");

        let deep = dir.path().join("a/b/../c");
        Dir::open(&deep, Symlinks::Secure, true).unwrap();
        assert!(dir.path().join("a/c").is_dir());
        let mode = fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        fs::write(dir.path().join("file"), b"").unwrap();
        let err = Dir::open(&dir.path().join("file"), Symlinks::Secure, true).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }
}
