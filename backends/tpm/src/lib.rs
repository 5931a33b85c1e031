#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The crate, one file per concern, in the order a key is used:
// - `tcti`: which TPM (the TCTI string, checked); `connect`: opening a context on it;
// - `load`: the key from a persistent handle or a `keyfile` (TSS2 PEM) under its parent;
// - `attributes`: the key's public area checked, and what its attributes promise;
// - `auth`: the authorization value, the refused-value memory, lockout;
// - `signer`: `TpmSigner`, opened once, reconnected when the TPM restarted;
// - `sign`: the signature itself, with bounded retries;
// - `attest`: evidence that the key is in the TPM (EK certificates, an AK, TPM2_Certify) and
//   the answer to the admin's credential challenge;
// - `generate`: making a key in the TPM; `persist`: keys at persistent handles keybound
//   manages (standard mode), never replacing one it does not own; `error`: what a TPM response code means;
// - `nv`: a small record in an NV index (two slots, sequence numbers, hashes), for wiped disks;
// - `testing` (feature `testing`): an swtpm harness.

pub mod attest;
mod attributes;
mod auth;
mod connect;
mod error;
mod generate;
pub mod keyfile;
mod load;
pub mod nv;
pub mod persist;
mod sign;
mod signer;
pub mod tcti;
#[cfg(feature = "testing")]
pub mod testing;

pub use generate::{Generated, generate};
pub use signer::TpmSigner;
