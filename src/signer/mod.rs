//! The registry of signer backends: which `--signer` names exist ([`SignerKind`]), and for each
//! configuration the backend that opens its key ([`open_signer`]) and makes a new one
//! ([`make_key`]). Each backend's side is a file here (`soft.rs` for file and env keys,
//! `pkcs11.rs`, `tpm.rs`), over its crate under `backends/`.

mod handoff;
#[cfg(feature = "pkcs11")]
mod pkcs11;
mod registry;
mod reopen;
mod soft;
#[cfg(feature = "tpm")]
mod tpm;

use clap::ValueEnum;

pub use handoff::Handoff;
pub use registry::{key_source, make_key, not_built, open_signer};
pub use reopen::Reopenable;

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
