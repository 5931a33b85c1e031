//! Storage and each directory output: present (or creatable by `start`) and writable, and the
//! bot identity already in storage.

use std::path::Path;
use std::time::SystemTime;

use super::report::{Check, Status};
use crate::config::{Config, Destination};

/// Storage and each directory output: present (or creatable by `start`) and writable. An
/// identity already in storage is described, since it decides whether the next join uses a
/// recovery.
pub(super) fn checks(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Destination::Directory { path, .. } = &config.storage {
        let mut check = directory_check("storage", path);
        if check.status == Status::Ok && path.is_dir() {
            check = stored_identity(path, check);
        }
        checks.push(check);
    }
    for output in &config.outputs {
        if let Destination::Directory { path, .. } = output.destination() {
            checks.push(directory_check("output", path));
        }
    }
    checks
}

fn directory_check(area: &'static str, path: &Path) -> Check {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::new(
            Status::Ok,
            area,
            format!(
                "{} does not exist yet; start creates it (mode 0700)",
                path.display()
            ),
        ),
        Err(e) => Check::new(Status::Fail, area, format!("{}: {e}", path.display()))
            .fix("make the directory readable by the user keybound runs as"),
        Ok(meta) if !meta.is_dir() => Check::new(
            Status::Fail,
            area,
            format!("{} is not a directory", path.display()),
        )
        .fix("point it at a directory"),
        // An unnamed temporary file (O_TMPFILE) proves the directory writable and leaves nothing.
        Ok(_) => match tempfile::tempfile_in(path) {
            Ok(_) => Check::new(Status::Ok, area, format!("{} is writable", path.display())),
            Err(e) => Check::new(
                Status::Fail,
                area,
                format!("{} is not writable: {e}", path.display()),
            )
            .fix(
                "give the user keybound runs as write access (under systemd: ReadWritePaths= \
                 or StateDirectory=)",
            ),
        },
    }
}

fn stored_identity(path: &Path, writable: Check) -> Check {
    let what = writable.what;
    match crate::identity::Identity::load(path) {
        Ok(None) => Check::new(
            Status::Ok,
            "storage",
            format!("{what}; no bot identity yet (the first start joins with the static key)"),
        ),
        Ok(Some(identity)) => {
            let expires = keybound_teleport::time::format_time(identity.info.not_after);
            if identity.info.not_after > SystemTime::now() {
                Check::new(
                    Status::Ok,
                    "storage",
                    format!(
                        "{what}; bot identity valid until {expires} (the next start is an \
                         authenticated rejoin)"
                    ),
                )
            } else {
                Check::new(
                    Status::Warn,
                    "storage",
                    format!(
                        "{what}; the bot identity expired at {expires}: the next start joins \
                         with the static key and uses one of the token's recoveries"
                    ),
                )
                .fix("run the agent long-lived (keybound start without --oneshot) so it renews in time")
            }
        }
        Err(e) => Check::new(
            Status::Warn,
            "storage",
            format!("{what}; its identity is unusable ({e:#}), so start joins afresh"),
        ),
    }
}
