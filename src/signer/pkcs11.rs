//! Keys in a PKCS#11 token (`keybound-signer-pkcs11`): an HSM, a smart card, SoftHSM.

use std::sync::Arc;

use keybound_signer::config::Pkcs11Config;
use keybound_signer::{Algorithm, Error, Signer};

use super::handoff::Handoff;

/// The key the configuration's URI names, logged in with its PIN source.
pub(super) fn open(config: &Pkcs11Config) -> Result<Arc<dyn Signer>, Error> {
    Ok(Arc::new(keybound_signer_pkcs11::Pkcs11Signer::open(
        config,
    )?))
}

/// A key made inside a PKCS#11 token; it never leaves the token.
pub(super) async fn make_key(
    config: &Pkcs11Config,
    algorithm: Algorithm,
    overwrite: bool,
) -> anyhow::Result<(String, Handoff<'_>)> {
    let config_for_task = config.clone();
    let signer = tokio::task::spawn_blocking(move || {
        keybound_signer_pkcs11::generate(&config_for_task, algorithm, overwrite)
    })
    .await??;
    tracing::info!(key = %signer.uri(), protection = %signer.protection(), "made the key inside the token");
    Ok((
        signer.public_key().to_openssh(),
        Handoff::Pkcs11 {
            uri: signer.uri().to_string(),
            config,
        },
    ))
}
