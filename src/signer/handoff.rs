//! What a new key needs from whoever registers it: the public key, and how to hand the key to
//! keybound.

use std::path::Path;

use keybound_signer::config::{Pkcs11Config, TpmConfig};
use zeroize::Zeroizing;

/// Where a new key is handed to the agent.
pub enum Handoff<'a> {
    /// A key file, at this path.
    File(&'a Path),
    /// A key for `TBOT_BOUND_KEYPAIR_STATIC_KEY`: this value (a secret; zeroized).
    Env(Zeroizing<String>),
    /// A key inside a PKCS#11 token, at this URI.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    Pkcs11 {
        /// The key's URI.
        uri: String,
        /// The token's settings (module, PIN source) as configured.
        config: &'a Pkcs11Config,
    },
    /// A key inside a TPM.
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    Tpm {
        /// Its persistent handle or key file.
        location: String,
        /// The TPM's settings (TCTI, parent, authorization) as configured.
        config: &'a TpmConfig,
    },
}
