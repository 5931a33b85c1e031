//! What a loaded key is: its public area checked (ECC P-256, an unrestricted signing key) and
//! what its attributes promise about where it was made.

use keybound_signer::{Error, ErrorKind, Protection, PublicKey};
use tss_esapi::Context;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::Public;

use crate::error::{err, tpm_error};
use crate::load::Source;

/// Reads the key's public area: ECC P-256, a signing key; and what its attributes promise.
pub(crate) fn read_key(
    ctx: &mut Context,
    key: KeyHandle,
    source: &Source,
) -> Result<(PublicKey, Protection), Error> {
    let (public, _, _) = ctx
        .execute_without_session(|c| c.read_public(key))
        .map_err(|e| tpm_error(&e, format!("reading the public part of {source}")))?;
    parse_key(public, source)
}

/// A public area read or made: ECC P-256, a signing key; and what its attributes promise.
pub(crate) fn parse_key(
    public: Public,
    source: &dyn std::fmt::Display,
) -> Result<(PublicKey, Protection), Error> {
    let Public::Ecc {
        object_attributes: a,
        parameters,
        unique,
        ..
    } = public
    else {
        return Err(err(
            ErrorKind::InvalidKey,
            format!("{source} is not an elliptic-curve key; bound keypairs on a TPM are ECC P-256"),
        ));
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(err(
            ErrorKind::InvalidKey,
            format!(
                "{source} is on curve {:?}; bound keypairs must be P-256",
                parameters.ecc_curve()
            ),
        ));
    }
    if !a.sign_encrypt() || a.restricted() {
        return Err(err(
            ErrorKind::InvalidKey,
            format!("{source} is not an unrestricted signing key"),
        ));
    }
    let pad = |v: &[u8]| -> Vec<u8> {
        let mut out = vec![0; 32usize.saturating_sub(v.len())];
        out.extend_from_slice(v);
        out
    };
    let mut point = vec![0x04];
    point.extend(pad(unique.x().value()));
    point.extend(pad(unique.y().value()));
    let public = PublicKey::from_p256_sec1(&point)?;
    let protection = key_protection(a.fixed_tpm(), a.fixed_parent(), a.sensitive_data_origin());
    Ok((public, protection))
}

/// What a key's attributes promise. Only `TPM2_Create` (and its kin) can set `fixedTPM`:
/// `TPM2_Import` and `TPM2_LoadExternal` refuse it (`TPM_RC_ATTRIBUTES`), and `TPM2_Create`
/// refuses an ECC key without `sensitiveDataOrigin` (all three checked on swtpm/libtpms). So
/// `fixedTPM` with `fixedParent` and `sensitiveDataOrigin` means generated in this TPM and never
/// out of it. `sensitiveDataOrigin` alone proves nothing: an importer may set it.
fn key_protection(fixed_tpm: bool, fixed_parent: bool, sensitive_data_origin: bool) -> Protection {
    match (fixed_tpm && fixed_parent, sensitive_data_origin) {
        (true, true) => Protection::NonExportable(
            "fixedTPM, fixedParent, sensitiveDataOrigin: generated in this TPM".to_owned(),
        ),
        (true, false) => Protection::Imported(
            "fixedTPM, fixedParent, but not sensitiveDataOrigin: its private part came from \
             outside the TPM"
                .to_owned(),
        ),
        (false, _) if !fixed_tpm => Protection::Exportable(
            "not fixedTPM: imported from outside (an import cannot set fixedTPM), or a key the \
             TPM may duplicate"
                .to_owned(),
        ),
        (false, _) => {
            Protection::Exportable("not fixedParent: the TPM may duplicate it".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_key_generated_in_the_tpm_counts_as_a_hardware_key() {
        assert!(key_protection(true, true, true).is_hardware());
        for (fixed_tpm, fixed_parent, origin) in [
            (true, true, false),
            (false, false, true),
            (false, false, false),
            (true, false, true),
            (false, true, true),
        ] {
            let protection = key_protection(fixed_tpm, fixed_parent, origin);
            assert!(!protection.is_hardware(), "{protection}");
        }
        assert!(matches!(
            key_protection(true, true, false),
            Protection::Imported(_)
        ));
    }
}
