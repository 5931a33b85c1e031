//! Making the key where it is kept: a file, an environment value, a PKCS#11 token or a TPM. Each
//! returns the public key in OpenSSH form and where the agent finds the key.

use anyhow::Context as _;
#[cfg(feature = "pkcs11")]
use keybound_signer::config::Pkcs11Config;
use keybound_signer::config::SignerConfig;
#[cfg(feature = "tpm")]
use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use super::handoff::Handoff;
use crate::cli::KeypairCreate;
use crate::fsutil::{Replace, write_atomic};

/// Makes the key `signer_config` names, of type `algorithm`.
pub(super) async fn make_key<'a>(
    args: &KeypairCreate,
    signer_config: &'a SignerConfig,
    algorithm: Algorithm,
) -> anyhow::Result<(String, Handoff<'a>)> {
    match signer_config {
        SignerConfig::File(file) => make_file_key(&file.path, algorithm, args.overwrite),
        SignerConfig::Env(_) => make_env_key(algorithm),
        #[cfg(feature = "pkcs11")]
        SignerConfig::Pkcs11(config) => make_token_key(config, algorithm, args.overwrite).await,
        #[cfg(feature = "tpm")]
        SignerConfig::Tpm(config) => make_tpm_key(config, algorithm, args.overwrite).await,
        other => Err(crate::signer::not_built(other.backend()).into()),
    }
}

/// How a key file is written: over an existing one only with `--overwrite`.
fn replace(overwrite: bool) -> Replace {
    if overwrite {
        Replace::Allow
    } else {
        Replace::Never
    }
}

/// A software key, written to `path` (mode 0600, atomically).
fn make_file_key(
    path: &std::path::Path,
    algorithm: Algorithm,
    overwrite: bool,
) -> anyhow::Result<(String, Handoff<'_>)> {
    let signer = SoftSigner::generate(algorithm)?;
    write_atomic(
        path,
        signer.to_pkcs8_pem().as_bytes(),
        0o600,
        replace(overwrite),
    )
    .with_context(|| format!("writing key file {}", path.display()))?;
    tracing::info!(path = %path.display(), fingerprint = %signer.public_key().fingerprint(), "wrote static key");
    Ok((signer.public_key().to_openssh(), Handoff::File(path)))
}

/// A software key, handed over as the value of the environment variable.
fn make_env_key(algorithm: Algorithm) -> anyhow::Result<(String, Handoff<'static>)> {
    let signer = SoftSigner::generate(algorithm)?;
    Ok((
        signer.public_key().to_openssh(),
        Handoff::Env(signer.to_env_value()),
    ))
}

/// A key made inside a PKCS#11 token; it never leaves the token.
#[cfg(feature = "pkcs11")]
async fn make_token_key(
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

/// A key made inside the TPM, persisted at a handle or, for a key file, written there wrapped by
/// the TPM (`TSS2 PRIVATE KEY` PEM, mode 0600, atomically).
#[cfg(feature = "tpm")]
async fn make_tpm_key(
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
        write_atomic(path, pem.as_bytes(), 0o600, replace(overwrite))
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
