//! What a new key needs from whoever registers it: the public key, and how to hand the key to
//! keybound.

use std::path::Path;

use keybound_signer::config::{Pkcs11Config, TpmConfig};
use zeroize::Zeroizing;

/// Where a new key is handed to the agent.
pub(super) enum Handoff<'a> {
    File(&'a Path),
    Env(Zeroizing<String>),
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    Pkcs11 {
        uri: String,
        config: &'a Pkcs11Config,
    },
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    Tpm {
        location: String,
        config: &'a TpmConfig,
    },
}
