//! Signing: EdDSA over the message, ECDSA over its SHA-256 (hashed by the token where it has
//! `CKM_ECDSA_SHA256`); a session the token lost is reopened, with bounded back-off.

use std::time::Duration;

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use keybound_signer::{Algorithm, Error, ErrorKind, Protection, PublicKey, Signature, Signer};
use sha2::{Digest as _, Sha256};
use tracing::warn;

use crate::Pkcs11Signer;
use crate::error::{BACKEND, err, kind_of};

/// Attempts for a signature when the session or the token goes away underneath it.
const SIGN_ATTEMPTS: u32 = 3;
/// The first back-off; it doubles for each further attempt.
const BACKOFF: Duration = Duration::from_millis(50);

/// Refuses a key the token lists no mechanism to sign with. A token that lists no mechanisms at
/// all is given the benefit of the doubt.
pub(crate) fn check_mechanisms(
    mechanisms: &[MechanismType],
    algorithm: Algorithm,
    token: &str,
) -> Result<(), Error> {
    let needed = match algorithm {
        Algorithm::Ed25519 => MechanismType::EDDSA,
        _ => MechanismType::ECDSA,
    };
    let usable = mechanisms.is_empty()
        || mechanisms.contains(&needed)
        || (needed == MechanismType::ECDSA && has_ecdsa_sha256(mechanisms));
    if !usable {
        return Err(err(
            ErrorKind::Unsupported,
            format!("token {token:?} lists no {needed} mechanism to sign with this key"),
        ));
    }
    Ok(())
}

/// Whether the token hashes and signs in one step (`CKM_ECDSA_SHA256`).
pub(crate) fn has_ecdsa_sha256(mechanisms: &[MechanismType]) -> bool {
    mechanisms.contains(&MechanismType::ECDSA_SHA256)
}

impl Signer for Pkcs11Signer {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn protection(&self) -> Protection {
        self.protection.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        // One session, used by one signature at a time: PKCS#11 sessions are not thread-safe, and
        // SoftHSM and most tokens serialise anyway.
        let mut state = self.state.lock().expect("session lock poisoned");
        let mut last = None;
        for attempt in 0..SIGN_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(BACKOFF * 2u32.pow(attempt - 1));
            }
            if state.session.is_none() {
                match self.reopen(&mut state) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::Unavailable => {
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let (session, key) = state.session.as_ref().expect("opened above");
            match self.sign_once(session, *key, message) {
                Ok(bytes) => return Signature::new(self.public.algorithm(), bytes),
                Err(e) if kind_of(&e) == ErrorKind::Unavailable => {
                    warn!(token = %self.token, error = %e, attempt, "the token lost the session; reopening");
                    state.session = None;
                    last = Some(
                        err(
                            ErrorKind::Unavailable,
                            format!("token {:?} failed to sign", self.token),
                        )
                        .with_source(e),
                    );
                }
                Err(e) => {
                    let kind = kind_of(&e);
                    return Err(err(
                        kind,
                        format!("token {:?} failed to sign with {}", self.token, self.uri()),
                    )
                    .with_source(e));
                }
            }
        }
        Err(last.unwrap_or_else(|| err(ErrorKind::Unavailable, "the token is unavailable")))
    }
}

impl Pkcs11Signer {
    fn sign_once(
        &self,
        session: &Session,
        key: ObjectHandle,
        message: &[u8],
    ) -> Result<Vec<u8>, CkError> {
        match self.public.algorithm() {
            Algorithm::Ed25519 => session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                key,
                message,
            ),
            _ if self.mechanism_ecdsa_sha256 => session.sign(&Mechanism::EcdsaSha256, key, message),
            _ => session.sign(&Mechanism::Ecdsa, key, &Sha256::digest(message)),
        }
    }
}
