//! The signer, opened as `start` opens it (one login, never a signature for the cluster), and for
//! a TPM key one test signature that shows whether the TPM accepts its authorization value.

use std::sync::Arc;

use keybound_signer::{Algorithm, ErrorKind, Signer};

use super::report::{Check, Report, Status};
use crate::Failure;
use crate::config::Config;

/// Opens the signer and reports on it; returns its key type for the suite check, or `None` when
/// it did not open.
pub(super) fn checks(
    config: &Config,
    report: &mut Report<'_>,
) -> Result<Option<Algorithm>, Failure> {
    let signer = match open_signer(config) {
        Ok(signer) => signer,
        Err(check) => {
            report.add(check)?;
            return Ok(None);
        }
    };
    report.add(signer_check(config, &*signer))?;
    if signer.backend() == "tpm" {
        report.add(tpm_auth_check(&*signer))?;
    }
    if let Ok(signer_config) = config.onboarding.signer_config() {
        report.add(attestation_check(&signer_config))?;
    }
    Ok(Some(signer.algorithm()))
}

/// The signer `start` would open; a failure is the FAIL line, with what to do for the usual
/// causes.
fn open_signer(config: &Config) -> Result<Arc<dyn Signer>, Check> {
    let signer_config = config.onboarding.signer_config().map_err(|e| {
        Check::new(
            Status::Fail,
            "signer",
            format!("onboarding.bound_keypair: {e}"),
        )
    })?;
    crate::signer::open_signer(&signer_config).map_err(|e| {
        let check = Check::new(Status::Fail, "signer", e.to_string());
        match (e.kind(), e.backend()) {
            (ErrorKind::KeyNotFound, "pkcs11") => check.fix(
                "`keybound signer list --pkcs11-module MODULE --pin-source SOURCE` prints the URI \
                 of every key on the module's tokens",
            ),
            (ErrorKind::Auth, _) => check.fix(
                "correct the PIN that pin_source names; doctor tried it once, as start would, \
                 and does not retry",
            ),
            (ErrorKind::Unavailable, _) => {
                check.fix("check that the device is present and this user may open it")
            }
            _ => check,
        }
    })
}

/// Where the key is, its type and fingerprint, and how it is protected.
fn signer_check(config: &Config, signer: &dyn Signer) -> Check {
    let source = config
        .onboarding
        .signer_config()
        .map(|c| crate::signer::key_source(&c, signer.backend()))
        .unwrap_or_else(|_| signer.backend().to_owned());
    Check::new(
        Status::Ok,
        "signer",
        format!(
            "{source}: {} key {}, {}",
            signer.algorithm(),
            signer.public_key().fingerprint(),
            signer.protection()
        ),
    )
}

/// Whether `keybound keypair attest` can make evidence for the key: information, never a
/// failure (a key that cannot be attested still joins).
fn attestation_check(signer_config: &keybound_signer::config::SignerConfig) -> Check {
    let text = match crate::commands::keypair::attestable(signer_config) {
        Ok(yes) => format!("attestable: {yes}"),
        Err(no) => format!("not attestable: {no}"),
    };
    Check::new(Status::Ok, "signer", text)
}

/// What doctor signs with a TPM key. Not a JWS signing input (no `.`), so its signature answers
/// no challenge.
const TPM_AUTH_CHECK: &[u8] =
    b"keybound doctor: does the TPM accept this key's authorization value";

/// Whether the TPM accepts the key's authorization value. Opening a TPM key only hands the value
/// to the TPM library; the TPM checks it when the key is used, so a wrong value would otherwise
/// pass doctor and fail the first join. One signature of a fixed local message, checked against
/// the key's public part: one try, and the signer never repeats a refused one (each refusal
/// counts towards the TPM's dictionary-attack lockout).
fn tpm_auth_check(signer: &dyn Signer) -> Check {
    let signature = match signer.sign(TPM_AUTH_CHECK) {
        Ok(signature) => signature,
        Err(e) => {
            let check = Check::new(Status::Fail, "signer", e.to_string());
            return match e.kind() {
                // The lockout message itself says what to do (wait, or clear it).
                ErrorKind::Auth if e.message().contains("dictionary-attack lockout (") => check,
                ErrorKind::Auth => check.fix(
                    "correct the authorization value that pin_source names (or remove pin_source \
                     if the key has none); doctor tried it once, with one test signature",
                ),
                _ => check.fix("check that the TPM is present and this user may open it"),
            };
        }
    };
    match signer
        .public_key()
        .verify(TPM_AUTH_CHECK, signature.as_bytes())
    {
        Ok(()) => Check::new(
            Status::Ok,
            "signer",
            "the TPM accepts the key's authorization value (one test signature of a fixed local \
             message, verified with the key's public part)",
        ),
        Err(e) => Check::new(
            Status::Fail,
            "signer",
            format!("the TPM's test signature does not verify with the key's public part: {e}"),
        )
        .fix("the key at this handle or file is not the key keybound read; make the key again"),
    }
}
