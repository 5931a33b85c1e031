//! Opens the configured backend: the registry of signers.

use std::fmt;
use std::sync::{Arc, Mutex};

use clap::ValueEnum;
use keybound_signer::config::SignerConfig;
use keybound_signer::{Error, ErrorKind, Protection, PublicKey, Signature, Signer};
use keybound_signer_soft::SoftSigner;

/// The backends, as `--signer` and `onboarding.bound_keypair.signer` name them.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum SignerKind {
    /// Base64 PEM in TBOT_BOUND_KEYPAIR_STATIC_KEY.
    Env,
    /// A PEM file.
    File,
    /// A PKCS#11 token (HSM, smart card, SoftHSM).
    Pkcs11,
    /// A TPM 2.0.
    Tpm,
}

impl SignerKind {
    /// Parses the config value.
    pub fn parse(text: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(text, false)
            .map_err(|_| format!("unknown signer {text:?}; use file, env, pkcs11 or tpm"))
    }

    /// The name, as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::File => "file",
            Self::Pkcs11 => "pkcs11",
            Self::Tpm => "tpm",
        }
    }
}

/// Opens the signer `config` names, reading and checking its key once.
pub fn open_signer(config: &SignerConfig) -> Result<Arc<dyn Signer>, Error> {
    let signer: Arc<dyn Signer> = match config {
        SignerConfig::File(file) => Arc::new(SoftSigner::open_file(file)?),
        SignerConfig::Env(env) => Arc::new(SoftSigner::open_env(env)?),
        #[cfg(feature = "pkcs11")]
        SignerConfig::Pkcs11(pkcs11) => {
            Arc::new(keybound_signer_pkcs11::Pkcs11Signer::open(pkcs11)?)
        }
        #[cfg(feature = "tpm")]
        SignerConfig::Tpm(tpm) => Arc::new(keybound_signer_tpm::TpmSigner::open(tpm)?),
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

/// A signer the long-running agent can open again from its configuration, which it does on
/// SIGHUP: the PIN or authorization value is read from its source again and the device is
/// opened afresh, so an operator's fix takes effect (the backends never present a value their
/// device refused before, see `keybound_signer::refused`). The key must stay the same one.
pub struct Reopenable {
    config: SignerConfig,
    backend: &'static str,
    public: PublicKey,
    /// The key's protection, read at the first open (the same key keeps it).
    protection: Protection,
    /// The open signer, or why the last reopening failed.
    current: Mutex<Result<Arc<dyn Signer>, Closed>>,
}

/// Why there is no open signer: the error of the last reopening, for every signature until the
/// next one.
struct Closed {
    kind: ErrorKind,
    message: String,
}

impl Reopenable {
    /// Wraps `opened`, the signer `config` opened.
    pub fn new(config: SignerConfig, opened: Arc<dyn Signer>) -> Self {
        Self {
            backend: opened.backend(),
            public: opened.public_key().clone(),
            protection: opened.protection(),
            current: Mutex::new(Ok(opened)),
            config,
        }
    }

    /// Closes the open signer, then opens the configuration again. Closing first matters: a
    /// PKCS#11 token checks the PIN again only once the process's last session on it has
    /// closed. May block on the device.
    pub fn reopen(&self) -> Result<(), Error> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Err(Closed {
            kind: ErrorKind::Unavailable,
            message: "the signer is being opened again".to_owned(),
        });
        let opened = open_signer(&self.config).and_then(|signer| {
            if signer.public_key() == &self.public {
                Ok(signer)
            } else {
                Err(Error::new(
                    ErrorKind::KeyNotFound,
                    self.backend,
                    format!(
                        "opened again, the configured key is another one ({}, not {}); restart \
                         keybound to use a new key",
                        signer.public_key().fingerprint(),
                        self.public.fingerprint()
                    ),
                ))
            }
        });
        match opened {
            Ok(signer) => {
                *current = Ok(signer);
                Ok(())
            }
            Err(e) => {
                *current = Err(Closed {
                    kind: e.kind(),
                    message: e.message().to_owned(),
                });
                Err(e)
            }
        }
    }
}

impl Signer for Reopenable {
    fn backend(&self) -> &'static str {
        self.backend
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        let signer = match &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            Ok(signer) => signer.clone(),
            Err(closed) => {
                return Err(Error::new(
                    closed.kind,
                    self.backend,
                    closed.message.clone(),
                ));
            }
        };
        signer.sign(message)
    }

    fn protection(&self) -> Protection {
        self.protection.clone()
    }
}

impl fmt::Debug for Reopenable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reopenable")
            .field("backend", &self.backend)
            .field("fingerprint", &self.public.fingerprint())
            .finish_non_exhaustive()
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
        SignerConfig::File(keybound_signer::config::FileConfig { path, .. }) => {
            format!("file {}", path.display())
        }
        SignerConfig::Env(env) => format!("env ${}", env.variable),
        SignerConfig::Pkcs11(p) => format!("pkcs11 {}", p.uri.redacted()),
        SignerConfig::Tpm(t) => match &t.key {
            keybound_signer::config::TpmKey::Handle(h) => {
                format!("tpm persistent handle 0x{h:08x}")
            }
            keybound_signer::config::TpmKey::File(path) => {
                format!("tpm key file {}", path.display())
            }
        },
        _ => backend.to_owned(),
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
