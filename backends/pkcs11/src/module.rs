//! Loading the PKCS#11 module (the vendor's shared library) and initialising it, once per
//! process; when SoftHSM fails to initialise, its configuration is looked at to say why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use keybound_signer::config::Pkcs11Config;
use keybound_signer::{Error, ErrorKind};

use crate::Pkcs11Uri;
use crate::error::err;

/// The module `config` names: `--pkcs11-module`, else the URI's `module-path`.
pub(crate) fn module_path(config: &Pkcs11Config, uri: &Pkcs11Uri) -> Result<PathBuf, Error> {
    config
        .module
        .clone()
        .or_else(|| uri.module_path.clone())
        .ok_or_else(|| {
            err(
                ErrorKind::Config,
                "no PKCS#11 module: pass --pkcs11-module PATH or add ?module-path=PATH to the URI",
            )
        })
}

/// Loaded modules, one per path: `C_Initialize` runs once per process (SoftHSM refuses a second
/// one, and reads `SOFTHSM2_CONF` only then).
fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

/// Loads and initialises the module at `path`, or returns the one already loaded.
pub fn load_module(path: &Path) -> Result<Pkcs11, Error> {
    let mut loaded = modules().lock().expect("module registry lock poisoned");
    if let Some(ctx) = loaded.get(path) {
        return Ok(ctx.clone());
    }
    if !path.exists() {
        return Err(err(
            ErrorKind::Config,
            format!(
                "PKCS#11 module {} does not exist; install it (SoftHSM: apt-get install softhsm2) or fix --pkcs11-module",
                path.display()
            ),
        ));
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        err(
            ErrorKind::Config,
            format!(
                "cannot load PKCS#11 module {}: is it a PKCS#11 library for this machine?",
                path.display()
            ),
        )
        .with_source(e)
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(initialisation_failed(path, e)),
    }
    loaded.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// The error for a module whose `C_Initialize` failed: for SoftHSM, what is wrong with its
/// configuration, when that can be found.
fn initialisation_failed(path: &Path, e: CkError) -> Error {
    if is_softhsm(path) {
        let conf = std::env::var_os(SOFTHSM2_CONF).map(PathBuf::from);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let module = path.display();
        // The diagnosis replaces SoftHSM's own words, which say nothing more.
        return match softhsm_config_problem(conf, home) {
            Ok(problem) => err(
                ErrorKind::Config,
                format!("SoftHSM ({module}) failed to initialise: {problem}"),
            ),
            Err(looked_at) => err(
                ErrorKind::Unavailable,
                format!(
                    "SoftHSM ({module}) failed to initialise: {looked_at}; SoftHSM logs \
                     its reason to syslog"
                ),
            )
            .with_source(e),
        };
    }
    err(
        ErrorKind::Unavailable,
        format!("PKCS#11 module {} failed to initialise", path.display()),
    )
    .with_source(e)
}

/// The variable SoftHSM reads its configuration file's path from.
const SOFTHSM2_CONF: &str = "SOFTHSM2_CONF";

/// Whether the module at `path` is SoftHSM (by its file name: `libsofthsm2.so`, or a link to it).
fn is_softhsm(path: &Path) -> bool {
    let named = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains("softhsm"))
    };
    named(path) || std::fs::canonicalize(path).is_ok_and(|p| named(&p))
}

/// What is wrong with SoftHSM's configuration, found the way SoftHSM 2.6 finds it: the file
/// `$SOFTHSM2_CONF` names, else `~/.config/softhsm2/softhsm2.conf` when readable, else
/// `/etc/softhsm/softhsm2.conf`; then its `directories.tokendir` (default
/// `/var/lib/softhsm/tokens`). SoftHSM itself only answers `CKR_GENERAL_ERROR` ("Some horrible,
/// unrecoverable error") and logs the reason to syslog. `Err` says what was looked at when
/// nothing wrong was found there.
fn softhsm_config_problem(conf: Option<PathBuf>, home: Option<PathBuf>) -> Result<String, String> {
    let fix = "point SOFTHSM2_CONF at a softhsm2.conf whose directories.tokendir is a directory this \
               user can write (softhsm-fixtures/init-token.sh makes both; docs/softhsm.md)";
    let (file, named_by) = softhsm_config_file(conf, home);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) => {
            return Ok(format!(
                "cannot read its configuration file {} ({named_by}): {e}; {fix}",
                file.display()
            ));
        }
    };
    // `name = value` lines; `#` starts a comment. The last tokendir line wins, as in SoftHSM.
    let configured = text
        .lines()
        .filter_map(|line| line.split('#').next()?.split_once('='))
        .filter(|(name, _)| name.trim() == "directories.tokendir")
        .map(|(_, value)| value.trim().to_owned())
        .next_back();
    let (dir, names) = match configured {
        Some(dir) => (
            PathBuf::from(&dir),
            format!("names the token directory {dir}"),
        ),
        None => (
            PathBuf::from("/var/lib/softhsm/tokens"),
            "sets no directories.tokendir, so the token directory is /var/lib/softhsm/tokens"
                .to_owned(),
        ),
    };
    let problem = match std::fs::read_dir(&dir) {
        Ok(_) => {
            return Err(format!(
                "its configuration file {} ({named_by}) {names}, which is readable",
                file.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "which does not exist".to_owned(),
        Err(e) => format!("which this user cannot read ({e})"),
    };
    Ok(format!(
        "its configuration file {} ({named_by}) {names}, {problem}; {fix}",
        file.display()
    ))
}

/// The configuration file SoftHSM 2.6 reads, and why that one (for messages).
fn softhsm_config_file(conf: Option<PathBuf>, home: Option<PathBuf>) -> (PathBuf, String) {
    match conf {
        Some(file) => (file, "named by $SOFTHSM2_CONF".to_owned()),
        None => {
            let user = home
                .filter(|h| !h.as_os_str().is_empty())
                .map(|h| h.join(".config/softhsm2/softhsm2.conf"))
                .filter(|p| std::fs::File::open(p).is_ok());
            match user {
                Some(file) => (file, "SOFTHSM2_CONF is not set".to_owned()),
                None => (
                    PathBuf::from("/etc/softhsm/softhsm2.conf"),
                    "SoftHSM's default: SOFTHSM2_CONF is not set".to_owned(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_softhsm_configuration_names_the_file_and_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("softhsm2.conf");
        let problem = softhsm_config_problem(Some(conf.clone()), None).unwrap();
        assert!(
            problem.starts_with(&format!(
                "cannot read its configuration file {} (named by $SOFTHSM2_CONF): ",
                conf.display()
            )) && problem.contains("No such file")
                && problem.contains("point SOFTHSM2_CONF at"),
            "{problem}"
        );

        let tokens = dir.path().join("tokens");
        std::fs::write(
            &conf,
            format!(
                "# a comment = x\ndirectories.tokendir = /elsewhere\ndirectories.tokendir = {} # last wins\n",
                tokens.display()
            ),
        )
        .unwrap();
        let problem = softhsm_config_problem(Some(conf.clone()), None).unwrap();
        assert!(
            problem.starts_with(&format!(
                "its configuration file {} (named by $SOFTHSM2_CONF) names the token directory {}, \
                 which does not exist",
                conf.display(),
                tokens.display()
            )),
            "{problem}"
        );
        std::fs::create_dir(&tokens).unwrap();
        let fine = softhsm_config_problem(Some(conf), None).unwrap_err();
        assert!(fine.ends_with("which is readable"), "{fine}");

        // Without the variable: the user's own file, when there is one.
        let home = dir.path().join("home");
        let user = home.join(".config/softhsm2/softhsm2.conf");
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        std::fs::write(&user, "directories.tokendir = /nonexistent/tokens\n").unwrap();
        let problem = softhsm_config_problem(None, Some(home)).unwrap();
        assert!(
            problem.contains(&format!(
                "file {} (SOFTHSM2_CONF is not set)",
                user.display()
            )),
            "{problem}"
        );
    }
}
