//! File and environment keys (`keybound-signer-soft`): software keys, which can be copied.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use keybound_signer::config::{EnvConfig, FileConfig};
use keybound_signer::{Algorithm, Error, Signer};
use keybound_signer_soft::SoftSigner;

use super::handoff::Handoff;
use crate::fsutil::{Replace, write_atomic};

/// A key file.
pub(super) fn open_file(config: &FileConfig) -> Result<Arc<dyn Signer>, Error> {
    Ok(Arc::new(SoftSigner::open_file(config)?))
}

/// A key in the environment (taken out of it at start-up, `src/main.rs`).
pub(super) fn open_env(config: &EnvConfig) -> Result<Arc<dyn Signer>, Error> {
    Ok(Arc::new(SoftSigner::open_env(config)?))
}

pub(super) fn describe_file(config: &FileConfig) -> String {
    format!("file {}", config.path.display())
}

pub(super) fn describe_env(config: &EnvConfig) -> String {
    format!("env ${}", config.variable)
}

/// A software key, written to `path` (mode 0600, atomically).
pub(super) fn make_file_key(
    path: &Path,
    algorithm: Algorithm,
    overwrite: bool,
) -> anyhow::Result<(String, Handoff<'_>)> {
    let signer = SoftSigner::generate(algorithm)?;
    write_atomic(
        path,
        signer.to_pkcs8_pem().as_bytes(),
        0o600,
        Replace::when(overwrite),
    )
    .with_context(|| format!("writing key file {}", path.display()))?;
    tracing::info!(path = %path.display(), fingerprint = %signer.public_key().fingerprint(), "wrote static key");
    Ok((signer.public_key().to_openssh(), Handoff::File(path)))
}

/// A software key, handed over as the value of the environment variable.
pub(super) fn make_env_key(algorithm: Algorithm) -> anyhow::Result<(String, Handoff<'static>)> {
    let signer = SoftSigner::generate(algorithm)?;
    Ok((
        signer.public_key().to_openssh(),
        Handoff::Env(signer.to_env_value()),
    ))
}
