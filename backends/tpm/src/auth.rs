//! Authorization: the key's authorization value, read from its pin source at every open and
//! never sent again once the TPM refused it (each refusal counts towards the TPM's
//! dictionary-attack lockout), and the errors for a refused value and for lockout.

use keybound_signer::config::TpmConfig;
use keybound_signer::refused::Fingerprint;
use keybound_signer::{Error, ErrorKind, PinSource, PublicKey};
use tss_esapi::constants::{CapabilityType, PropertyTag};
use tss_esapi::handles::KeyHandle;
use tss_esapi::structures::{Auth, CapabilityData};
use tss_esapi::{Context, Error as TssError};

use crate::error::{BACKEND, err, tpm_error};
use crate::load::Source;
use crate::tcti::Tcti;

/// `TPMA_PERMANENT.inLockout`.
const IN_LOCKOUT: u32 = 1 << 9;

/// Sets the key's authorization value from `source`, read afresh: a fixed source takes effect
/// at the next open (SIGHUP) or reconnection; a value the TPM refused before is not sent again.
/// Returns the fingerprint of the value set, to remember a refusal by.
pub(crate) fn set_key_auth(
    ctx: &mut Context,
    key: KeyHandle,
    source: Option<&PinSource>,
    (tcti, public): (&Tcti, &PublicKey),
    location: &Source,
) -> Result<Option<Fingerprint>, Error> {
    let Some(auth_source) = source else {
        return Ok(None);
    };
    let Some(presented) = auth_source.read_for(BACKEND, &device_key(tcti, public))? else {
        return Err(refused_before(auth_source, location));
    };
    let auth = Auth::try_from(presented.value.as_bytes().to_vec()).map_err(|e| {
        err(
            ErrorKind::Config,
            format!("the key's authorization value is too long: {e}"),
        )
    })?;
    ctx.tr_set_auth(key.into(), auth)
        .map_err(|e| tpm_error(&e, "setting the key's authorization value".to_owned()))?;
    Ok(Some(presented.fingerprint))
}

/// The authorization value for a key about to be made, read from the configured source.
pub(crate) fn new_key_auth(config: &TpmConfig) -> Result<Option<Auth>, Error> {
    config
        .auth
        .as_ref()
        .map(|pin| {
            let value = pin.read(BACKEND)?;
            Auth::try_from(value.as_bytes().to_vec()).map_err(|e| {
                err(
                    ErrorKind::Config,
                    format!("the authorization value is too long: {e}"),
                )
            })
        })
        .transpose()
}

/// The name under which the refused-value memory keeps a key's authorization values: the TPM
/// and the key.
fn device_key(tcti: &Tcti, public: &PublicKey) -> String {
    format!("tpm {tcti} key {}", public.fingerprint())
}

/// The error for an authorization value the TPM refused before: it is not sent again.
pub(crate) fn refused_before(auth: &PinSource, key: &Source) -> Error {
    err(
        ErrorKind::Auth,
        auth.refused_before(
            "the authorization value",
            &format!("the TPM (for the key at {key})"),
            "each failure counts towards the TPM's dictionary-attack lockout",
        ),
    )
}

/// The error for an authorization value the TPM refused just now (`e`). The caller remembers
/// the refusal, so the value is not sent again.
pub(crate) fn refused_now(e: &TssError, key: &Source, auth: Option<&PinSource>) -> Error {
    err(
        ErrorKind::Auth,
        format!(
            "the TPM refused the authorization value of {key} ({e}); keybound does not retry (each failure counts \
             towards the TPM's dictionary-attack lockout): fix the pin source: {}",
            auth.map_or_else(
                || "give one with --pin-source".to_owned(),
                PinSource::how_to_replace
            )
        ),
    )
}

/// The error for a TPM in dictionary-attack lockout, with the lockout state read from it.
pub(crate) fn in_lockout(ctx: &mut Context) -> Error {
    let state = lockout_state(ctx);
    err(
        ErrorKind::Auth,
        format!(
            "the TPM is in dictionary-attack lockout ({state}); wait for it to forgive failures, or \
             clear it with the lockout authorization (tpm2_dictionarylockout -c)"
        ),
    )
}

/// `TPMA_PERMANENT.inLockout`, the failure counter and its limit, read for an error message.
fn lockout_state(ctx: &mut Context) -> String {
    let read = |ctx: &mut Context, tag: PropertyTag| -> Option<u32> {
        // TPM2_GetCapability takes no authorization session.
        let (data, _) = ctx
            .execute_without_session(|c| {
                c.get_capability(CapabilityType::TpmProperties, tag.into(), 1)
            })
            .ok()?;
        match data {
            CapabilityData::TpmProperties(list) => list.find(tag).map(|p| p.value()),
            _ => None,
        }
    };
    let in_lockout = read(ctx, PropertyTag::Permanent).map(|p| p & IN_LOCKOUT != 0);
    let counter = read(ctx, PropertyTag::LockoutCounter);
    let max = read(ctx, PropertyTag::MaxAuthFail);
    let interval = read(ctx, PropertyTag::LockoutInterval);
    format!(
        "inLockout={}, failed authorizations {} of {}, one forgiven every {} s",
        in_lockout.map_or("?".to_owned(), |v| v.to_string()),
        counter.map_or("?".to_owned(), |v| v.to_string()),
        max.map_or("?".to_owned(), |v| v.to_string()),
        interval.map_or("?".to_owned(), |v| v.to_string()),
    )
}
