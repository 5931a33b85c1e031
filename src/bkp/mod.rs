//! Standard bound-keypair joining (not static): the bot's keys and join state kept as tbot keeps
//! them, in bot storage ([`state`]), and what a join does with them ([`Standard`]).
//!
//! A standard client sends the last join state on every join, and its registration secret only
//! while it holds none; it signs a challenge with whichever of its keys the cluster names (the
//! active key, then the history); on a rotation request it makes a new key, stores it, and
//! answers with its public half; the key the result names becomes active, and the result's join
//! state replaces the old one, on disk, before the identity is stored
//! (`lib/join/joinclient/join_boundkeypair.go`, `lib/auth/join/boundkeypair/boundkeypair.go`).

#[cfg(any(feature = "pkcs11", feature = "tpm"))]
pub mod device;
pub mod fault;
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
pub mod record;
pub mod secret;
pub mod state;
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
pub mod store;

use std::sync::{Arc, Mutex, MutexGuard};

use keybound_signer::{Algorithm, PublicKey};
use keybound_teleport::suite::Suite;
use zeroize::Zeroizing;

pub use fault::{FAULT_ENV, fault_point};
pub use secret::RegistrationSecret;
pub use state::ClientState;

/// The environment variable with a registration secret (tbot's).
pub const REGISTRATION_SECRET_ENV: &str = "TBOT_REGISTRATION_SECRET";

/// A standard client's side of one join, shared by its messages.
#[derive(Clone, Debug)]
pub struct Standard {
    inner: Arc<Mutex<Inner>>,
    secret: Option<RegistrationSecret>,
}

/// Where a standard client's keys are: files in storage (tbot's), or a PKCS#11 token with
/// references in storage (`device`).
#[derive(Debug)]
pub enum Keys {
    /// tbot's files.
    Files(ClientState),
    /// Keys made inside a PKCS#11 token or the TPM.
    #[cfg(any(feature = "pkcs11", feature = "tpm"))]
    Device(Box<device::DeviceState>),
}

impl From<ClientState> for Keys {
    fn from(state: ClientState) -> Self {
        Self::Files(state)
    }
}

impl Keys {
    fn join_state(&self) -> &[u8] {
        match self {
            Self::Files(s) => s.join_state(),
            #[cfg(any(feature = "pkcs11", feature = "tpm"))]
            Self::Device(s) => s.join_state(),
        }
    }

    fn signer_for(&self, wanted: &PublicKey) -> Option<Arc<dyn keybound_signer::Signer>> {
        match self {
            Self::Files(s) => s
                .signer_for(wanted)
                .map(|k| k as Arc<dyn keybound_signer::Signer>),
            #[cfg(any(feature = "pkcs11", feature = "tpm"))]
            Self::Device(s) => s.signer_for(wanted),
        }
    }

    fn add_key(&mut self, algorithm: Algorithm) -> anyhow::Result<PublicKey> {
        match self {
            Self::Files(s) => s.add_key(algorithm),
            #[cfg(any(feature = "pkcs11", feature = "tpm"))]
            Self::Device(s) => s.add_key(algorithm),
        }
    }

    /// The cluster challenged `key`, not one this join made: the key it binds now.
    fn note_bound(&mut self, key: &PublicKey) {
        let _ = key;
        match self {
            Self::Files(_) => {}
            #[cfg(any(feature = "pkcs11", feature = "tpm"))]
            Self::Device(s) => s.note_bound(key),
        }
    }

    fn apply_result(&mut self, bound: &PublicKey, join_state: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Files(s) => s.apply_result(bound, join_state),
            #[cfg(any(feature = "pkcs11", feature = "tpm"))]
            Self::Device(s) => s.apply_result(bound, join_state),
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: Keys,
    /// The key made for a rotation in this join, whose challenge is still to come.
    pending: Option<PublicKey>,
}

impl Standard {
    /// A join's view of `state`, with the registration secret configured (if any).
    pub fn new(state: impl Into<Keys>, secret: Option<RegistrationSecret>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                state: state.into(),
                pending: None,
            })),
            secret,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `BoundKeypairInit` carries: the registration secret (blank once a join state is
    /// held, as tbot's `ToJoinParams`), and the last join state.
    pub fn init_params(&self) -> (Zeroizing<String>, Vec<u8>) {
        let inner = self.lock();
        let join_state = inner.state.join_state().to_vec();
        let secret = match &self.secret {
            Some(secret) if join_state.is_empty() => Zeroizing::new(secret.expose().to_owned()),
            _ => Zeroizing::new(String::new()),
        };
        (secret, join_state)
    }

    /// The key to sign a challenge for `wanted` with, if this client holds it.
    pub fn signer_for(&self, wanted: &PublicKey) -> Option<Arc<dyn keybound_signer::Signer>> {
        self.lock().state.signer_for(wanted)
    }

    /// Whether `key` is the one made for a rotation in this join and not yet challenged; a
    /// yes clears it (one challenge per new key).
    pub fn take_pending(&self, key: &PublicKey) -> bool {
        let mut inner = self.lock();
        if inner.pending.as_ref() == Some(key) {
            inner.pending = None;
            true
        } else {
            inner.state.note_bound(key);
            false
        }
    }

    /// A rotation request: a new key for `suite`, stored, and its public half.
    pub fn rotate(&self, suite: Suite) -> anyhow::Result<PublicKey> {
        let mut inner = self.lock();
        let public = inner.state.add_key(algorithm_for(suite))?;
        inner.pending = Some(public.clone());
        drop(inner);
        fault_point("after-new-key");
        Ok(public)
    }

    /// The result: the key it names becomes active, its join state replaces the old one, and
    /// both are stored.
    pub fn apply_result(&self, bound: &str, join_state: &[u8]) -> anyhow::Result<()> {
        fault_point("after-result");
        let bound = PublicKey::from_openssh(bound).map_err(|e| {
            anyhow::anyhow!("the cluster's result names a bound key that does not parse: {e}")
        })?;
        self.lock().state.apply_result(&bound, join_state)
    }
}

/// The key type tbot makes for a rotation (`cryptosuites.BoundKeypairJoining`): ECDSA P-256
/// under `fips-v1`, Ed25519 otherwise.
pub fn algorithm_for(suite: Suite) -> Algorithm {
    match suite {
        Suite::FipsV1 => Algorithm::EcdsaP256Sha256,
        _ => Algorithm::Ed25519,
    }
}
