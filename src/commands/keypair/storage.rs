//! `keybound keypair create --storage DIR` (without `--static`): a bound keypair for standard
//! joining, kept in bot storage as tbot keeps it (`tool/tbot/keypair.go`,
//! `onKeypairCreateCommand`): the key is the active one and the whole history. Without
//! `--overwrite` an existing key is kept and its public key printed; with it, the key and
//! history are replaced, and a join state already there stays (as in tbot).

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use keybound_signer::Algorithm;

use super::text::token_example_in_mode;
use crate::bkp::ClientState;
use crate::cli::{KeypairCreate, OutputFormat};
use crate::fsutil::Symlinks;

/// The storage directory `--storage` names (`file:///DIR` or a path).
pub(super) fn storage_dir(uri: &str) -> anyhow::Result<PathBuf> {
    if uri.starts_with("memory://") {
        bail!(
            "--storage memory:// would lose the key at exit: give the bot's storage directory \
             (file:///DIR or a path), the one keybound start uses"
        );
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() || path.contains("://") {
        bail!("--storage {uri:?}: use file:///DIR or a directory path");
    }
    Ok(PathBuf::from(path))
}

/// Makes (or, without `--overwrite`, keeps) the key in storage and reports it.
pub(super) async fn create(
    args: &KeypairCreate,
    algorithm: Option<Algorithm>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let Some(uri) = &args.storage else {
        bail!("a storage path must be provided with --storage");
    };
    let dir = storage_dir(uri)?;
    // tbot does not create the directory either; the error says to.
    crate::fsutil::Dir::open(&dir, Symlinks::default(), false)?;
    let existing = ClientState::load(&dir, Symlinks::default())?;
    let kept = existing
        .as_ref()
        .and_then(|s| s.active_public_key().cloned())
        .filter(|_| !args.overwrite);
    let (public, made) = match kept {
        Some(public) => {
            tracing::info!(
                storage = %dir.display(),
                "a bound keypair exists in storage and --overwrite is not set: keeping it"
            );
            (public, false)
        }
        None => {
            let Some(algorithm) = algorithm else {
                bail!("choose the key type: pass --proxy-server HOST:PORT or --algorithm");
            };
            let mut state =
                existing.unwrap_or_else(|| ClientState::empty(&dir, Symlinks::default()));
            (state.reset_to_new_key(algorithm)?, true)
        }
    };
    let line = public.to_openssh();
    match args.format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, &serde_json::json!({ "public_key": line }))?;
            writeln!(out)?;
        }
        OutputFormat::Text => write!(
            out,
            "
{what} in bot storage: {dir}

To register the keypair with Teleport, include this public key in the token's
'spec.bound_keypair.onboarding.initial_public_key' field:

\t{line}

Refer to this token example as a reference:

{token}
keybound start with storage {dir} (and no static key) joins with this key, keeps
the token's join state beside it, and rotates it when the cluster asks.
",
            what = if made {
                "A new bound keypair was made"
            } else {
                "The existing bound keypair is kept (--overwrite replaces it)"
            },
            dir = dir.display(),
            token = token_example_in_mode(&line, "standard")?,
        )?,
    }
    out.flush()?;
    Ok(())
}
