//! The contract between keybound and the places a bound keypair's private key can live.
//!
//! A [`Signer`] holds one private key (in a file, an environment variable, a PKCS#11 token or a
//! TPM) and signs the join challenge Teleport sends. Everything a backend needs to agree on lives
//! here: the [`Algorithm`]s, the [`PublicKey`] and its encodings, JWS-encoded [`Signature`]s, the
//! [`jws`] compact builder, one [`Error`] type, and the backend configuration structs in
//! [`config`]. This crate has no C dependencies and no async runtime.
//!
//! # Adding a signer backend
//!
//! A backend is a crate of its own under `backends/` that depends on this crate alone; the agent
//! (the root package, `src/`) names it in the places listed below. `backends/pkcs11` (a
//! module loaded at run time) and `backends/tpm` (a C library linked at build time) are the
//! models: each `lib.rs` is a map of one file per concern.
//!
//! 1. **The crate.** `backends/<name>/`, package `keybound-signer-<name>`, with
//!    `[lints] workspace = true` and its README as the crate docs
//!    (`#![doc = include_str!("../README.md")]`); listed in the root `Cargo.toml` under
//!    `[workspace] members` and `[workspace.dependencies]`.
//! 2. **Its configuration, here.** A `<Name>Config` struct in [`config`]: plain data,
//!    `#[non_exhaustive]`, a `new` taking what is required, a `require_hardware_key` flag if the
//!    device can tell, and any PIN or authorization value as a [`PinSource`] (where it comes
//!    from, never the value). Add its [`SignerConfig`](config::SignerConfig) variant and the arm
//!    of [`SignerConfig::backend`](config::SignerConfig::backend).
//! 3. **The signer.** A type with `open(&<Name>Config) -> Result<Self, Error>` that implements
//!    [`Signer`]: `backend` (the name), `public_key` (read once at open and cached), `sign` (the
//!    message, not a digest; a JWS [`Signature`]), and `protection` when the device can say
//!    whether the key can leave it (the default is [`Protection::Software`]). Keep the contract
//!    written on [`Signer`]: errors made with [`Error::new`], of the [`ErrorKind`] that tells the
//!    agent what to do ([`ErrorKind::Auth`] is never retried, [`ErrorKind::Unavailable`] is
//!    retried later); a PIN read afresh at each open with [`PinSource::read_for`], so a value the
//!    device refused is never presented again ([`refused`]); no secret in `Debug` or in an error.
//!    The agent calls `open` again on SIGHUP (and checks that it finds the same key). A backend
//!    that can make keys also gets `generate(&<Name>Config, Algorithm, overwrite)` for `keybound
//!    keypair create`.
//! 4. **Its tests.** A cargo feature `testing` with a harness for a real or emulated device
//!    (SoftHSM, swtpm; not a mock), and `backends/<name>/tests/<device>.rs` running
//!    `keybound_signer::testkit::run_all(&signer)` (a dev-dependency on this crate with the
//!    feature `testkit`) on the keys it opens and makes, then each failure with its error.
//! 5. **The agent.**
//!    - The root `Cargo.toml`: the crate as an optional dependency and a feature
//!      `<name> = ["dep:keybound-signer-<name>"]` (a feature only adds a backend), and a
//!      dev-dependency with `testing`.
//!    - `src/signer/<name>.rs`: the agent's side of the backend, one file: `open` (the
//!      `<Name>Signer` as an `Arc<dyn Signer>`) and `make_key` (calls `generate`, returns the
//!      public key and how the agent finds the key, a `Handoff`). Then one line each in
//!      `src/signer/mod.rs` (a `SignerKind` variant: the value of `--signer` and of
//!      `bound_keypair.signer`, its `name`, the names in `parse`'s error) and in
//!      `src/signer/registry.rs` (the `#[cfg(feature = "<name>")]` arms of `open_signer` and
//!      `make_key`, which built without the feature say to rebuild with it, and of
//!      `key_source` for the one-line summary).
//!    - `src/config/raw.rs`: the backend's `bound_keypair.*` keys in `RawBoundKeypair` and their
//!      copy into `Onboarding`. `src/config/onboarding.rs`: the `Onboarding` fields, the backend
//!      chosen when `signer` is not given (if its keys imply it), its row in the table of settings
//!      that belong to one backend, and the arm of `signer_config` that builds the
//!      `<Name>Config`.
//!    - `src/cli/mod.rs`: the flags in `SignerArgs` and in `SignerArgs::apply`.
//!    - `src/commands/doctor/signer.rs`, if opening the key does not prove it usable (a TPM
//!      checks its authorization value only when the key signs).
//! 6. **End to end.** `tests/integration/<name>.rs`, registered in `tests/integration/main.rs`
//!    (behind `#[cfg(feature = "<name>")]` unless the feature is a default one): `keypair
//!    create`, a join with `start --oneshot` against a dev cluster, and `doctor`. Here or in the
//!    backend's tests, the device's own tools (pkcs11-tool, tpm2-tools) make keys keybound uses
//!    and use keys keybound made. A row in `tests/benches/sign.rs`, against the device's raw
//!    signature.
//! 7. **Docs.** `docs/<name>.md`; the README's tables of backends and crates;
//!    `docs/config.md`, whose test lists every key of `RawBoundKeypair`; any error text quoted in
//!    `docs/troubleshooting.md`, whose test checks it still occurs; `FEATURES` in the Makefile if
//!    the feature is not a default one.

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
