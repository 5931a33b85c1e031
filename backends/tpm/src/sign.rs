//! Signing: ES256 with the SHA-256 taken on the host and `TPM2_Sign` in the TPM, `r` and `s`
//! left-padded to 32 bytes. Commands the TPM asks to repeat are repeated (bounded); a failure
//! that may mean the TPM restarted connects again, once; an authorization failure never is
//! retried, and a TPM in lockout gets an error showing the lockout state.

use keybound_signer::{Algorithm, Error, ErrorKind, Protection, PublicKey, Signature, Signer};
use sha2::{Digest as _, Sha256};
use tracing::warn;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{Digest, HashScheme, HashcheckTicket, SignatureScheme};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, Error as TssError};

use crate::TpmSigner;
use crate::auth::{in_lockout, refused_before, refused_now};
use crate::error::{BACKEND, err, is_auth_failure, rc_kind, retrying, tpm_error};
use crate::signer::Session;

impl Signer for TpmSigner {
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
        let mut guard = self.state.lock().expect("TPM context lock poisoned");
        if let (Some(auth), Some(fingerprint)) = (&self.config.auth, guard.auth)
            && fingerprint.was_refused()
        {
            return Err(refused_before(auth, &self.source));
        }
        let digest =
            Digest::try_from(Sha256::digest(message).to_vec()).expect("32 bytes fit a TPM digest");
        let mut signed = sign_digest(&mut guard, &digest);
        if let Err(e) = &signed
            && !is_auth_failure(e)
            && rc_kind(e) != Some(Tss2ResponseCodeKind::Lockout)
        {
            // Perhaps the TPM went away and came back: connect again, once, and sign again.
            // (Never after an authorization failure: each one counts towards lockout.)
            warn!(error = %e, key = %self.source, "the TPM failed to sign; connecting again");
            *guard = self.reconnect(e)?;
            signed = sign_digest(&mut guard, &digest);
        }
        if let Err(e) = &signed
            && is_auth_failure(e)
            && let Some(fingerprint) = guard.auth
        {
            fingerprint.remember_refused();
        }
        match signed {
            Ok(signature) => jws_signature(signature),
            Err(e) => Err(self.sign_error(&e, &mut guard.ctx)),
        }
    }
}

/// `TPM2_Sign` over a SHA-256 `digest` with ECDSA, repeated while the TPM asks to.
fn sign_digest(
    session: &mut Session,
    digest: &Digest,
) -> Result<tss_esapi::structures::Signature, TssError> {
    let Session { ctx, key, .. } = session;
    // An unrestricted key signs with a null hashcheck ticket (TPM 2.0 Part 3, TPM2_Sign).
    let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .expect("a null hashcheck ticket is valid");
    let scheme = SignatureScheme::EcDsa {
        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
    };
    retrying(|| ctx.sign(*key, digest.clone(), scheme, validation.clone()))
}

/// The TPM's ECDSA signature as JWS wants it: `r‖s`, each left-padded to 32 bytes.
fn jws_signature(signed: tss_esapi::structures::Signature) -> Result<Signature, Error> {
    let tss_esapi::structures::Signature::EcDsa(signature) = signed else {
        return Err(err(
            ErrorKind::Sign,
            "the TPM returned a signature of another scheme",
        ));
    };
    let mut bytes = Vec::with_capacity(64);
    for half in [
        signature.signature_r().value(),
        signature.signature_s().value(),
    ] {
        if half.len() > 32 {
            return Err(err(
                ErrorKind::Sign,
                "the TPM returned an oversized ECDSA component",
            ));
        }
        bytes.extend(std::iter::repeat_n(0, 32 - half.len()));
        bytes.extend_from_slice(half);
    }
    Signature::new(Algorithm::EcdsaP256Sha256, bytes)
}

impl TpmSigner {
    /// The error for a signature the TPM refused or failed to make.
    fn sign_error(&self, e: &TssError, ctx: &mut Context) -> Error {
        if is_auth_failure(e) {
            return refused_now(e, &self.source, self.config.auth.as_ref());
        }
        if rc_kind(e) == Some(Tss2ResponseCodeKind::Lockout) {
            return in_lockout(ctx);
        }
        warn!(error = %e, key = %self.source, "the TPM failed to sign");
        tpm_error(
            e,
            format!(
                "the TPM at {} failed to sign with {}",
                self.tcti, self.source
            ),
        )
    }
}
