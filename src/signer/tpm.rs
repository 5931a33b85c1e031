//! Keys in a TPM 2.0 (`keybound-signer-tpm`): at a persistent handle or in a TSS2 key file.

use std::sync::Arc;

use anyhow::Context as _;
use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::{Algorithm, Error, Signer};

use super::handoff::Handoff;
use crate::fsutil::{Replace, write_atomic};

/// The key at the configured handle or in the configured key file.
pub(super) fn open(config: &TpmConfig) -> Result<Arc<dyn Signer>, Error> {
    Ok(Arc::new(keybound_signer_tpm::TpmSigner::open(config)?))
}

/// A key made inside the TPM, persisted at a handle or, for a key file, written there wrapped by
/// the TPM (`TSS2 PRIVATE KEY` PEM, mode 0600, atomically).
pub(super) async fn make_key(
    config: &TpmConfig,
    algorithm: Algorithm,
    overwrite: bool,
) -> anyhow::Result<(String, Handoff<'_>)> {
    let config_for_task = config.clone();
    let generated = tokio::task::spawn_blocking(move || {
        keybound_signer_tpm::generate(&config_for_task, algorithm, overwrite)
    })
    .await??;
    if let (Some(pem), TpmKey::File(path)) = (&generated.pem, &config.key) {
        write_atomic(path, pem.as_bytes(), 0o600, Replace::when(overwrite))
            .with_context(|| format!("writing TPM key file {}", path.display()))?;
    }
    let signer = &generated.signer;
    tracing::info!(key = %signer.location(), protection = %signer.protection(), "made the key inside the TPM");
    Ok((
        signer.public_key().to_openssh(),
        Handoff::Tpm {
            location: signer.location(),
            config,
        },
    ))
}
