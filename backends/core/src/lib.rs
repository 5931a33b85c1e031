//! The contract between keybound and the places a bound keypair's private key can live.
//!
//! A [`Signer`] holds one private key (in a file, an environment variable, a PKCS#11 token or a
//! TPM) and signs the join challenge Teleport sends. Everything a backend needs to agree on lives
//! here: the [`Algorithm`]s, the [`PublicKey`] and its encodings, JWS-encoded [`Signature`]s, the
//! [`jws`] compact builder, one [`Error`] type, and the backend configuration structs in
//! [`config`]. This crate has no C dependencies and no async runtime.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod algorithm;
pub mod config;
mod error;
pub mod jws;
mod pin;
mod public_key;
pub mod refused;
mod signature;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::fmt;

pub use algorithm::{Algorithm, UnknownAlgorithm};
pub use error::{Error, ErrorKind};
pub use pin::PinSource;
pub use public_key::{PublicKey, describe_algorithm, describe_curve};
pub use signature::Signature;

/// A private key that signs the bound-keypair join challenge.
///
/// The contract every backend keeps:
/// - **One algorithm per key**, checked when the signer is opened; the public key is read once at
///   that time and cached, so [`public_key`](Self::public_key) never touches the device.
/// - **`sign` takes the message, not a digest**: the JWS signing input. Ed25519 signs it as is;
///   ECDSA hashes it with SHA-256 (on the host or in the device).
/// - **The result is JWS-encoded** (see [`Signature`]): 64 bytes, never DER.
/// - **`sign` may block** on device I/O; async callers run it on a blocking thread.
/// - **Thread-safe**: signers are shared as `Arc<dyn Signer>`; backends serialise access to
///   their device internally.
/// - **Secrets stay inside**: neither `Debug` nor any error shows key material, PINs or
///   authorization values. Errors that retrying cannot fix (a wrong PIN) say so through
///   [`ErrorKind::Auth`], and the backend never retries them itself.
pub trait Signer: fmt::Debug + Send + Sync {
    /// The backend's short name (`"file"`, `"env"`, `"pkcs11"`, `"tpm"`), for logs and summaries.
    fn backend(&self) -> &'static str;

    /// The one algorithm this key signs with.
    fn algorithm(&self) -> Algorithm {
        self.public_key().algorithm()
    }

    /// The public half of the key, cached at open time.
    fn public_key(&self) -> &PublicKey;

    /// Signs `message` and returns the JWS-encoded signature.
    fn sign(&self, message: &[u8]) -> Result<Signature, Error>;

    /// Whether the private key can leave where it lives, as far as the backend can tell.
    fn protection(&self) -> Protection {
        Protection::Software
    }
}

/// How well a private key is kept.
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Protection {
    /// Held in process memory (file and env keys): anyone who can read the source can copy it.
    Software,
    /// Held in a device that says it will export it; the text says why.
    Exportable(String),
    /// Generated in a device that has never let it out; the text gives the evidence.
    NonExportable(String),
    /// Held in a device that will not let it out now, but not generated there and kept inside
    /// from the start: it was imported (or was once exportable or readable), so copies may
    /// exist outside; the text says why.
    Imported(String),
}

impl Protection {
    /// Whether the key was generated in its device and has never been able to leave it: what
    /// `require_hardware_key` asks for.
    pub fn is_hardware(&self) -> bool {
        matches!(self, Self::NonExportable(_))
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Software => f.write_str("software key (exportable)"),
            Self::Exportable(why) => write!(f, "exportable ({why})"),
            Self::NonExportable(why) => write!(f, "non-exportable ({why})"),
            Self::Imported(why) => {
                write!(f, "non-exportable but not generated in the device ({why})")
            }
        }
    }
}
