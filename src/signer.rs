//! Opens the configured backend: the registry of signers.

use std::sync::Arc;

use keybound_signer::Signer;
use keybound_signer::config::SignerConfig;
use keybound_signer_soft::SoftSigner;

/// Opens the signer `config` names, reading and checking its key once.
pub fn open_signer(config: &SignerConfig) -> Result<Arc<dyn Signer>, keybound_signer::Error> {
    let signer: Arc<dyn Signer> = match config {
        SignerConfig::File(file) => Arc::new(SoftSigner::open_file(file)?),
        SignerConfig::Env(env) => Arc::new(SoftSigner::open_env(env)?),
        other => {
            return Err(keybound_signer::Error::new(
                keybound_signer::ErrorKind::Unsupported,
                other.backend(),
                "this signer is not available in this build",
            ));
        }
    };
    tracing::debug!(
        backend = signer.backend(),
        algorithm = %signer.algorithm(),
        fingerprint = %signer.public_key().fingerprint(),
        "opened signer"
    );
    Ok(signer)
}
