//! Key objects: finding the one private key a URI names, and reading what it is (its public key,
//! found on the object or its public twin, whatever encoding the token chose) and what its
//! attributes promise about where it has been.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keybound_signer::{Algorithm, Error, ErrorKind, Protection, PublicKey};

use crate::error::{err, kind_of};

/// `id-ecPublicKey` curve P-256 (`prime256v1`), DER.
pub(crate) const PARAMS_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `id-Ed25519`, DER (PKCS#11 3.0).
pub(crate) const PARAMS_ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// PrintableString "edwards25519" (PKCS#11 3.0's other form; what OpenSC writes).
pub(crate) const PARAMS_ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

/// What keybound reads from a private key object.
pub(crate) struct KeyInfo {
    pub(crate) label: Option<String>,
    pub(crate) id: Vec<u8>,
    pub(crate) public: PublicKey,
    flags: Flags,
}

/// The attributes that say whether a key can leave, or has left, its token.
#[derive(Clone, Copy)]
struct Flags {
    sensitive: bool,
    extractable: bool,
    always_sensitive: bool,
    never_extractable: bool,
    local: bool,
}

impl Flags {
    /// What a key promises when the token does not say: nothing.
    const UNSAID: Self = Self {
        sensitive: false,
        extractable: true,
        always_sensitive: false,
        never_extractable: false,
        local: false,
    };
}

impl KeyInfo {
    /// What the key's attributes promise. Generated in the token and never out of it means
    /// `CKA_LOCAL` (made by `C_GenerateKeyPair`, PKCS#11 3.0 §4.7) and both `CKA_ALWAYS_SENSITIVE`
    /// and `CKA_NEVER_EXTRACTABLE`: a key that was once readable or extractable may have been
    /// copied then.
    pub(crate) fn protection(&self) -> Protection {
        let flags = self.flags;
        if flags.extractable {
            return Protection::Exportable("CKA_EXTRACTABLE: the token may export it".to_owned());
        }
        if !flags.sensitive {
            return Protection::Exportable("not CKA_SENSITIVE: the token may reveal it".to_owned());
        }
        let mut missing = Vec::new();
        if !flags.local {
            missing.push("not CKA_LOCAL: made outside the token and imported");
        }
        if !flags.never_extractable {
            missing.push("not CKA_NEVER_EXTRACTABLE: it was extractable once");
        }
        if !flags.always_sensitive {
            missing.push("not CKA_ALWAYS_SENSITIVE: it was readable once");
        }
        if missing.is_empty() {
            Protection::NonExportable(
                "CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, \
                 CKA_LOCAL: generated in the token"
                    .to_owned(),
            )
        } else {
            Protection::Imported(missing.join(", "))
        }
    }
}

/// The algorithm an `CKA_EC_PARAMS` value names.
fn algorithm_of(key_type: Option<KeyType>, params: &[u8]) -> Result<Algorithm, String> {
    match params {
        PARAMS_P256 => Ok(Algorithm::EcdsaP256Sha256),
        PARAMS_ED25519_OID | PARAMS_ED25519_NAME => Ok(Algorithm::Ed25519),
        [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22] => Err("ECDSA P-384".to_owned()),
        [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23] => Err("ECDSA P-521".to_owned()),
        [0x06, 0x03, 0x2b, 0x65, 0x71]
        | [
            0x13,
            0x0a,
            b'e',
            b'd',
            b'w',
            b'a',
            b'r',
            b'd',
            b's',
            b'4',
            b'4',
            b'8',
        ] => Err("Ed448".to_owned()),
        _ => Err(match key_type {
            Some(t) if t == KeyType::RSA => "RSA".to_owned(),
            Some(t) => format!("{t} with other parameters"),
            None => "unknown".to_owned(),
        }),
    }
}

/// The key bytes inside `CKA_EC_POINT`, whichever encoding the token chose: a DER OCTET STRING
/// (PKCS#11 2.x, SoftHSM), a DER BIT STRING (some 3.0 tokens), or the raw point (3.1).
fn point_bytes(algorithm: Algorithm, point: &[u8]) -> &[u8] {
    let raw_len = match algorithm {
        Algorithm::Ed25519 => 32,
        _ => 65,
    };
    match point {
        [0x04, len, rest @ ..] if *len as usize == rest.len() && rest.len() == raw_len => rest,
        [0x03, len, 0x00, rest @ ..]
            if *len as usize == rest.len() + 1 && rest.len() == raw_len =>
        {
            rest
        }
        _ => point,
    }
}

fn public_key(algorithm: Algorithm, point: &[u8]) -> Result<PublicKey, Error> {
    let bytes = point_bytes(algorithm, point);
    match algorithm {
        Algorithm::Ed25519 => PublicKey::from_ed25519_bytes(bytes),
        _ => PublicKey::from_p256_sec1(bytes),
    }
}

pub(crate) fn text(bytes: &[u8]) -> Option<String> {
    Some(String::from_utf8_lossy(bytes).into_owned()).filter(|s| !s.is_empty())
}

/// The attributes read from a private key object. Its curve and point may be missing: most
/// tokens keep them on the public key object only.
struct Attributes {
    label: Option<String>,
    id: Vec<u8>,
    key_type: Option<KeyType>,
    params: Option<Vec<u8>>,
    point: Option<Vec<u8>>,
    flags: Flags,
}

/// Reads `CKA_LABEL`, `CKA_ID` and (from the object or its public twin) the public key.
pub(crate) fn read(session: &Session, handle: ObjectHandle, token: &str) -> Result<KeyInfo, Error> {
    let Attributes {
        label,
        id,
        key_type,
        params,
        point,
        flags,
    } = attributes(session, handle, token)?;
    let (params, point) = match (params, point) {
        (Some(params), Some(point)) => (params, point),
        (params, _) => twin_curve_and_point(session, (&id, label.as_deref()), params, token)?,
    };
    let algorithm = algorithm_of(key_type, &params).map_err(|name| {
        err(ErrorKind::InvalidKey, format!("the key {label:?} on token {token:?} is {name}; bound keypairs must be Ed25519 or ECDSA P-256"))
    })?;
    Ok(KeyInfo {
        public: public_key(algorithm, &point)?,
        label,
        id,
        flags,
    })
}

/// The private key object's own attributes.
fn attributes(session: &Session, handle: ObjectHandle, token: &str) -> Result<Attributes, Error> {
    use AttributeType as T;
    let attributes = session
        .get_attributes(
            handle,
            &[
                T::Label,
                T::Id,
                T::KeyType,
                T::EcParams,
                T::EcPoint,
                T::Sensitive,
                T::Extractable,
                T::AlwaysSensitive,
                T::NeverExtractable,
                T::Local,
            ],
        )
        .map_err(|e| {
            err(kind_of(&e), format!("reading a key on token {token:?}")).with_source(e)
        })?;
    let mut read = Attributes {
        label: None,
        id: Vec::new(),
        key_type: None,
        params: None,
        point: None,
        flags: Flags::UNSAID,
    };
    // cryptoki silently leaves out attributes the object lacks: match by variant.
    for attribute in attributes {
        match attribute {
            Attribute::Label(v) => read.label = text(&v),
            Attribute::Id(v) => read.id = v,
            Attribute::KeyType(t) => read.key_type = Some(t),
            Attribute::EcParams(v) if !v.is_empty() => read.params = Some(v),
            Attribute::EcPoint(v) if !v.is_empty() => read.point = Some(v),
            Attribute::Sensitive(v) => read.flags.sensitive = v,
            Attribute::Extractable(v) => read.flags.extractable = v,
            Attribute::AlwaysSensitive(v) => read.flags.always_sensitive = v,
            Attribute::NeverExtractable(v) => read.flags.never_extractable = v,
            Attribute::Local(v) => read.flags.local = v,
            _ => {}
        }
    }
    Ok(read)
}

/// The curve (unless the private key gave it: `params`) and the point, read from the public key
/// object that shares the private key's id (and label).
fn twin_curve_and_point(
    session: &Session,
    (id, label): (&[u8], Option<&str>),
    params: Option<Vec<u8>>,
    token: &str,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let twin = public_twin(session, id, label)?
        .ok_or_else(|| err(ErrorKind::KeyNotFound, format!("the key {label:?} on token {token:?} has no public key object to read its public key from")))?;
    let attrs = session
        .get_attributes(twin, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| err(kind_of(&e), "reading the public key").with_source(e))?;
    let (mut p, mut q) = (params, None);
    for a in attrs {
        match a {
            Attribute::EcParams(v) if p.is_none() && !v.is_empty() => p = Some(v),
            Attribute::EcPoint(v) if !v.is_empty() => q = Some(v),
            _ => {}
        }
    }
    match (p, q) {
        (Some(p), Some(q)) => Ok((p, q)),
        _ => Err(err(
            ErrorKind::InvalidKey,
            format!("the key {label:?} on token {token:?} is not an elliptic-curve key"),
        )),
    }
}

fn public_twin(
    session: &Session,
    id: &[u8],
    label: Option<&str>,
) -> Result<Option<ObjectHandle>, Error> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Id(id.to_vec()),
    ];
    if let Some(label) = label {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| err(kind_of(&e), "searching for the public key").with_source(e))?;
    if let [one] = found.as_slice() {
        return Ok(Some(*one));
    }
    // Some tools label the two halves differently: fall back to the id alone.
    let by_id = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(|e| err(kind_of(&e), "searching for the public key").with_source(e))?;
    Ok(if let [one] = by_id.as_slice() {
        Some(*one)
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_encoding_gives_the_same_key() {
        let raw = generator_point();
        let mut octet = vec![0x04, 65];
        octet.extend(&raw);
        let mut bit = vec![0x03, 66, 0x00];
        bit.extend(&raw);
        let a = public_key(Algorithm::EcdsaP256Sha256, &raw).unwrap();
        assert_eq!(public_key(Algorithm::EcdsaP256Sha256, &octet).unwrap(), a);
        assert_eq!(public_key(Algorithm::EcdsaP256Sha256, &bit).unwrap(), a);

        let ed = [
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ];
        let mut ed_octet = vec![0x04, 32];
        ed_octet.extend(ed);
        let mut ed_bit = vec![0x03, 33, 0x00];
        ed_bit.extend(ed);
        let e = public_key(Algorithm::Ed25519, &ed).unwrap();
        assert_eq!(public_key(Algorithm::Ed25519, &ed_octet).unwrap(), e);
        assert_eq!(public_key(Algorithm::Ed25519, &ed_bit).unwrap(), e);
    }

    /// The uncompressed point of a fixed P-256 key (the generator G).
    fn generator_point() -> Vec<u8> {
        let x = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
        let y = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
        let hex = |s: &str| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<_>>()
        };
        let mut point = vec![0x04];
        point.extend(hex(x));
        point.extend(hex(y));
        point
    }

    #[test]
    fn both_ed25519_parameter_forms_and_refusals() {
        assert_eq!(
            algorithm_of(None, PARAMS_ED25519_OID),
            Ok(Algorithm::Ed25519)
        );
        assert_eq!(
            algorithm_of(None, PARAMS_ED25519_NAME),
            Ok(Algorithm::Ed25519)
        );
        assert_eq!(
            algorithm_of(None, PARAMS_P256),
            Ok(Algorithm::EcdsaP256Sha256)
        );
        assert_eq!(
            algorithm_of(None, &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
            Err("ECDSA P-384".to_owned())
        );
        assert_eq!(algorithm_of(Some(KeyType::RSA), &[]), Err("RSA".to_owned()));
    }
}
