//! For each configuration, the backend that opens its key ([`open_signer`]), makes a new one
//! ([`make_key`]) and says where it lives ([`key_source`]).

use std::sync::Arc;

use keybound_signer::config::SignerConfig;
use keybound_signer::{Algorithm, Error, ErrorKind, Signer};

use super::handoff::Handoff;
#[cfg(feature = "pkcs11")]
use super::pkcs11;
use super::soft;
#[cfg(feature = "tpm")]
use super::tpm;

/// Opens the signer `config` names, reading and checking its key once.
pub fn open_signer(config: &SignerConfig) -> Result<Arc<dyn Signer>, Error> {
    let signer: Arc<dyn Signer> = match config {
        SignerConfig::File(file) => soft::open_file(file)?,
        SignerConfig::Env(env) => soft::open_env(env)?,
        #[cfg(feature = "pkcs11")]
        SignerConfig::Pkcs11(pkcs11) => pkcs11::open(pkcs11)?,
        #[cfg(feature = "tpm")]
        SignerConfig::Tpm(tpm) => tpm::open(tpm)?,
        other => return Err(not_built(other.backend())),
    };
    tracing::debug!(
        backend = signer.backend(),
        algorithm = %signer.algorithm(),
        fingerprint = %signer.public_key().fingerprint(),
        protection = %signer.protection(),
        "opened signer"
    );
    Ok(signer)
}

/// Makes a new key, of type `algorithm`, where `config` says (`keybound keypair create`); with
/// `overwrite`, over an existing one. Returns the public key in OpenSSH form and how the agent
/// finds the key.
pub async fn make_key(
    config: &SignerConfig,
    algorithm: Algorithm,
    overwrite: bool,
) -> anyhow::Result<(String, Handoff<'_>)> {
    match config {
        SignerConfig::File(file) => soft::make_file_key(&file.path, algorithm, overwrite),
        SignerConfig::Env(_) => soft::make_env_key(algorithm),
        #[cfg(feature = "pkcs11")]
        SignerConfig::Pkcs11(config) => pkcs11::make_key(config, algorithm, overwrite).await,
        #[cfg(feature = "tpm")]
        SignerConfig::Tpm(config) => tpm::make_key(config, algorithm, overwrite).await,
        other => Err(not_built(other.backend()).into()),
    }
}

/// The error for a backend this binary was built without.
pub fn not_built(backend: &'static str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        backend,
        format!(
            "this keybound was built without the \"{backend}\" feature; rebuild with --features {backend}"
        ),
    )
}

/// Where the key lives, for people: `file /etc/keybound/bound-key.pem`, `pkcs11 pkcs11:...`.
pub fn key_source(signer_config: &SignerConfig, backend: &str) -> String {
    match signer_config {
        SignerConfig::File(file) => soft::describe_file(file),
        SignerConfig::Env(env) => soft::describe_env(env),
        SignerConfig::Pkcs11(p) => describe_pkcs11(p),
        SignerConfig::Tpm(t) => describe_tpm(t),
        _ => backend.to_owned(),
    }
}

/// A PKCS#11 key, named by its URI (`pin-value` hidden); described even without the backend.
fn describe_pkcs11(config: &keybound_signer::config::Pkcs11Config) -> String {
    format!("pkcs11 {}", config.uri.redacted())
}

/// A TPM key, by handle or key file; described even without the backend.
fn describe_tpm(config: &keybound_signer::config::TpmConfig) -> String {
    match &config.key {
        keybound_signer::config::TpmKey::Handle(h) => format!("tpm persistent handle 0x{h:08x}"),
        keybound_signer::config::TpmKey::File(path) => format!("tpm key file {}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_left_out_of_the_build_says_how_to_get_it() {
        let error = not_built("tpm");
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert_eq!(
            error.to_string(),
            "tpm: this keybound was built without the \"tpm\" feature; rebuild with --features tpm"
        );
        #[cfg(not(feature = "tpm"))]
        {
            let config = SignerConfig::Tpm(keybound_signer::config::TpmConfig::new(
                keybound_signer::config::TpmKey::Handle(0x8100_0001),
            ));
            assert_eq!(
                open_signer(&config).unwrap_err().to_string(),
                error.to_string()
            );
        }
    }
}
