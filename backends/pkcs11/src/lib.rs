#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The crate, one file per concern, in the order a key is used:
// - `module`: loading and initialising the PKCS#11 module (SoftHSM's configuration diagnosed);
// - `token`: finding the one token a URI names (by label or serial, never by slot);
// - `login`: the PIN source, the token's PIN flags, the refused-PIN memory;
// - `key`: finding the one private key and reading its public key and attributes;
// - `signer`: `Pkcs11Signer`, opened once, its session rebuilt when lost;
// - `sign`: mechanisms and the signature itself, with bounded reopening;
// - `keygen`: making a key in the token; `list`: what a module holds;
// - `uri`: RFC 7512 URIs; `error`: what a PKCS#11 return value means;
// - `testing` (feature `testing`): a SoftHSM harness.

mod destroy;
mod error;
mod find;
mod key;
mod keygen;
mod list;
mod login;
mod module;
mod sign;
mod signer;
#[cfg(feature = "testing")]
pub mod testing;
mod token;
mod uri;

pub use destroy::{destroy, destroy_unrecorded};
pub use keygen::{generate, keygen_support};
pub use list::{KeyListing, TokenListing, list};
pub use login::pin_policy;
pub use module::load_module;
pub use signer::Pkcs11Signer;
pub use uri::Pkcs11Uri;
