//! Where each backend finds its key. These are plain data: the agent builds them from tbot's YAML
//! and the command line, and each backend's `open` takes its own.

use std::path::PathBuf;

use crate::PinSource;

/// The environment variable tbot reads a static key from
/// (`onboarding.BoundKeypairStaticKeyEnv`, `lib/tbot/bot/onboarding/config.go`).
pub const STATIC_KEY_ENV: &str = "TBOT_BOUND_KEYPAIR_STATIC_KEY";

/// A static key in a PEM file (`onboarding.bound_keypair.static_private_key_path`).
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct FileConfig {
    /// The PEM file. It must not be readable by group or others.
    pub path: PathBuf,
}

impl FileConfig {
    /// A file key at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

/// A static key in an environment variable: standard, padded base64 of the whole PEM file.
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct EnvConfig {
    /// The variable's name; tbot's is [`STATIC_KEY_ENV`].
    pub variable: String,
}

impl EnvConfig {
    /// A key in the variable `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            variable: name.into(),
        }
    }
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self::new(STATIC_KEY_ENV)
    }
}

/// A key in a PKCS#11 token (an HSM, a smart card, SoftHSM).
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Pkcs11Config {
    /// An RFC 7512 URI naming the token and the key (`pkcs11:token=...;object=...`).
    pub uri: String,
    /// The module to load; wins over the URI's `module-path`.
    pub module: Option<PathBuf>,
    /// Where the user PIN comes from; wins over the URI's `pin-source` and `pin-value`.
    pub pin: Option<PinSource>,
    /// Refuse a key the token could export.
    pub require_hardware_key: bool,
}

impl Pkcs11Config {
    /// A key named by `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            module: None,
            pin: None,
            require_hardware_key: false,
        }
    }
}

/// Where a TPM key is kept.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum TpmKey {
    /// A persistent handle (`0x81xxxxxx`).
    Handle(u32),
    /// A `TSS2 PRIVATE KEY` PEM file (the format tpm2-openssl and tpm2-tss-engine use).
    File(PathBuf),
}

/// A key in a TPM 2.0.
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TpmConfig {
    /// The TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ...); `None` reads
    /// `TPM2TOOLS_TCTI`, then `TCTI`, then uses `device:/dev/tpmrm0`.
    pub tcti: Option<String>,
    /// The key.
    pub key: TpmKey,
    /// A persistent parent for a key file, instead of the standard ECC P-256 storage primary.
    pub parent: Option<u32>,
    /// Where the key's authorization value comes from, if it has one.
    pub auth: Option<PinSource>,
    /// Refuse a key the TPM could let out (not fixedTPM and fixedParent).
    pub require_hardware_key: bool,
}

impl TpmConfig {
    /// A key kept as `key`.
    pub fn new(key: TpmKey) -> Self {
        Self {
            tcti: None,
            key,
            parent: None,
            auth: None,
            require_hardware_key: false,
        }
    }
}

/// Which backend holds the key, with its settings.
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum SignerConfig {
    /// A base64 PEM in an environment variable.
    Env(EnvConfig),
    /// A PEM file.
    File(FileConfig),
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
    /// A TPM 2.0.
    Tpm(TpmConfig),
}

impl SignerConfig {
    /// The backend's short name, as [`Signer::backend`](crate::Signer::backend) reports it.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Env(_) => "env",
            Self::File(_) => "file",
            Self::Pkcs11(_) => "pkcs11",
            Self::Tpm(_) => "tpm",
        }
    }
}
