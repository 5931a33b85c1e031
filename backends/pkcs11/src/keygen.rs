//! Making a key inside a token (`keybound keypair create --signer pkcs11`): the token must have
//! the mechanisms, the label and id must be free (or `--overwrite` given), and the new key is a
//! token object that is private, sensitive, never extractable and sign only.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use keybound_signer::config::Pkcs11Config;
use keybound_signer::{Algorithm, Error, ErrorKind, PinSource};

use crate::error::{err, kind_of};
use crate::key::{PARAMS_ED25519_NAME, PARAMS_ED25519_OID, PARAMS_P256};
use crate::login::{log_in, pin_source};
use crate::module::{load_module, module_path};
use crate::token::find_token;
use crate::{Pkcs11Signer, Pkcs11Uri};

/// Makes a new keypair inside the token: a token object, private, sensitive, not extractable,
/// sign only. The URI must name the key with `object=LABEL` (and may give `id`). An existing key
/// with that label or id is replaced only with `overwrite`.
pub fn generate(
    config: &Pkcs11Config,
    algorithm: Algorithm,
    overwrite: bool,
) -> Result<Pkcs11Signer, Error> {
    let uri = Pkcs11Uri::parse(&config.uri).map_err(|e| err(ErrorKind::Config, e))?;
    let label = uri.object.clone().ok_or_else(|| {
        err(
            ErrorKind::Config,
            "name the new key: add object=LABEL to --pkcs11-uri",
        )
    })?;
    let module = module_path(config, &uri)?;
    let pin = pin_source(config, &uri)?;
    let ctx = load_module(&module)?;
    let (slot, token, serial) = find_token(&ctx, &uri, &module)?;
    let mechanisms = ctx
        .get_mechanism_list(slot)
        .map_err(|e| err(kind_of(&e), "listing the token's mechanisms").with_source(e))?;
    keygen_support(&mechanisms, algorithm, &token)?;
    let session = rw_session(&ctx, slot, pin.as_ref(), (&module, &token, &serial))?;

    let id = match &uri.id {
        Some(id) => id.clone(),
        None => free_id(&session)?,
    };
    make_room(&session, (&label, &id), overwrite, (&token, &serial))?;
    generate_pair(&session, algorithm, &label, &id, &token)?;
    drop(session);
    Pkcs11Signer::open(&config_of_new_key(config, uri, (label, id), module))
}

/// A read-write session on the token in `slot`, logged in with `pin`.
pub(crate) fn rw_session(
    ctx: &cryptoki::context::Pkcs11,
    slot: cryptoki::slot::Slot,
    pin: Option<&PinSource>,
    (module, token, serial): (&std::path::Path, &str, &str),
) -> Result<Session, Error> {
    let session = ctx.open_rw_session(slot).map_err(|e| {
        err(
            kind_of(&e),
            format!("opening a read-write session on token {token:?}"),
        )
        .with_source(e)
    })?;
    log_in(ctx, slot, &session, pin, (module, token, serial))?;
    Ok(session)
}

/// Removes the objects that already use `label` or `id`, when `overwrite` allows it; otherwise
/// their presence is an error.
fn make_room(
    session: &Session,
    (label, id): (&str, &[u8]),
    overwrite: bool,
    (token, serial): (&str, &str),
) -> Result<(), Error> {
    let mut existing = Vec::new();
    for attribute in [
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ] {
        existing.extend(
            session
                .find_objects(&[attribute])
                .map_err(|e| err(kind_of(&e), "searching the token").with_source(e))?,
        );
    }
    existing.sort_by_key(|h| h.handle());
    existing.dedup();
    if existing.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(err(
            ErrorKind::Config,
            format!(
                "token {token:?} already holds an object labelled {label:?} or with that id ({}); keybound never replaces a key without --overwrite",
                existing_uris(session, &existing, (token, serial))?.join(", ")
            ),
        ));
    }
    for handle in existing {
        session
            .destroy_object(handle)
            .map_err(|e| err(kind_of(&e), "removing the old key").with_source(e))?;
    }
    Ok(())
}

/// The URIs of the objects in the way, as they are on the token (their own label and id, each
/// once: a key pair is two objects with one URI).
fn existing_uris(
    session: &Session,
    handles: &[ObjectHandle],
    (token, serial): (&str, &str),
) -> Result<Vec<String>, Error> {
    let mut uris = Vec::new();
    for handle in handles {
        let attributes = session
            .get_attributes(*handle, &[AttributeType::Label, AttributeType::Id])
            .map_err(|e| err(kind_of(&e), "reading an object in the way").with_source(e))?;
        let (mut label, mut id) = (None, Vec::new());
        for attribute in attributes {
            match attribute {
                Attribute::Label(v) => label = crate::key::text(&v),
                Attribute::Id(v) => id = v,
                _ => {}
            }
        }
        let uri = Pkcs11Uri::for_key(token, serial, label.as_deref(), &id).to_string();
        if !uris.contains(&uri) {
            uris.push(uri);
        }
    }
    Ok(uris)
}

/// The configuration that opens the new key: the URI names it by label and id and carries no
/// PIN, the module is explicit, and the PIN source is the one `config` gave.
fn config_of_new_key(
    config: &Pkcs11Config,
    mut uri: Pkcs11Uri,
    (label, id): (String, Vec<u8>),
    module: std::path::PathBuf,
) -> Pkcs11Config {
    uri.object = Some(label);
    uri.id = Some(id);
    uri.pin_source = None;
    uri.pin_value = None;
    let mut opened = config.clone();
    opened.uri = uri.to_string().into();
    opened.module = Some(module);
    // Re-read the PIN source rather than keep a second copy of the PIN.
    opened.pin = config.pin.clone().or_else(|| {
        Pkcs11Uri::parse(&config.uri)
            .ok()
            .and_then(|u| u.pin_source)
            .and_then(|s| PinSource::parse(&s).ok())
    });
    opened
}

/// Whether a token with `mechanisms` can make and use `algorithm` keys; if not, the error says
/// what to choose instead.
pub fn keygen_support(
    mechanisms: &[MechanismType],
    algorithm: Algorithm,
    token: &str,
) -> Result<(), Error> {
    let (keygen, sign, other) = match algorithm {
        Algorithm::Ed25519 => (
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
            "ecdsa-p256",
        ),
        _ => (
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            "ed25519",
        ),
    };
    for needed in [keygen, sign] {
        if !mechanisms.contains(&needed) {
            return Err(err(
                ErrorKind::Unsupported,
                format!(
                    "token {token:?} cannot make {algorithm} keys (no {needed}); choose --algorithm {other} instead \
                     (static keys keep their algorithm, and Teleport accepts both)"
                ),
            ));
        }
    }
    Ok(())
}

/// A two-byte `CKA_ID` no object uses (YubiHSM 2 accepts only two-byte ids).
fn free_id(session: &Session) -> Result<Vec<u8>, Error> {
    for _ in 0..64 {
        let mut id = [0u8; 2];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let used = session
            .find_objects(&[Attribute::Id(id.to_vec())])
            .map_err(|e| err(kind_of(&e), "searching the token").with_source(e))?;
        if used.is_empty() {
            return Ok(id.to_vec());
        }
    }
    Err(err(
        ErrorKind::Config,
        "the token has no free two-byte key id; give one with id=%xx%xx in the URI",
    ))
}

/// Generates the keypair: private half sensitive, not extractable, sign only; both token objects.
fn generate_pair(
    session: &Session,
    algorithm: Algorithm,
    label: &str,
    id: &[u8],
    token: &str,
) -> Result<(), Error> {
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let public_with = |params: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let result = match algorithm {
        Algorithm::Ed25519 => {
            // The OID first; tokens that predate PKCS#11 3.0's OID form know the curve by name.
            match session.generate_key_pair(
                &Mechanism::EccEdwardsKeyPairGen,
                &public_with(PARAMS_ED25519_OID),
                &private,
            ) {
                Err(CkError::Pkcs11(
                    RvError::AttributeValueInvalid
                    | RvError::DomainParamsInvalid
                    | RvError::CurveNotSupported,
                    _,
                )) => session.generate_key_pair(
                    &Mechanism::EccEdwardsKeyPairGen,
                    &public_with(PARAMS_ED25519_NAME),
                    &private,
                ),
                other => other,
            }
        }
        _ => session.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &public_with(PARAMS_P256),
            &private,
        ),
    };
    result.map(drop).map_err(|e| {
        err(
            kind_of(&e),
            format!("token {token:?} failed to generate an {algorithm} key"),
        )
        .with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_without_ed25519_names_the_alternative() {
        let p256_only = [MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA];
        let error = keygen_support(&p256_only, Algorithm::Ed25519, "yubihsm").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert!(
            error.to_string().contains("choose --algorithm ecdsa-p256"),
            "{error}"
        );
        assert!(keygen_support(&p256_only, Algorithm::EcdsaP256Sha256, "yubihsm").is_ok());
        let error = keygen_support(
            &[MechanismType::ECC_EDWARDS_KEY_PAIR_GEN],
            Algorithm::Ed25519,
            "t",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("no CKM_EDDSA") || error.to_string().contains("EDDSA"),
            "{error}"
        );
    }
}
