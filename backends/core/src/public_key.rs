//! The public half of a bound keypair, in every encoding Teleport and OpenSSH use.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use p256::pkcs8::LineEnding;
use sha2::{Digest as _, Sha256};
use spki::ObjectIdentifier;
use ssh_key::HashAlg;
use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey, KeyData};

use crate::{Algorithm, Error, ErrorKind};

const BACKEND: &str = "public key";

/// `id-Ed25519`, RFC 8410.
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// `id-ecPublicKey`, RFC 5480.
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `secp256r1` / P-256, RFC 5480.
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A bound keypair's public key: an algorithm plus its SubjectPublicKeyInfo.
///
/// Built only through constructors that parse and check the key, so every value is a valid
/// Ed25519 or P-256 point. Two keys are equal when they are the same key, whatever encoding
/// they were read from.
#[derive(Clone, Eq, Hash, PartialEq)]
pub struct PublicKey {
    algorithm: Algorithm,
    /// PKIX SubjectPublicKeyInfo DER, the canonical form (P-256 points uncompressed).
    spki_der: Vec<u8>,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo holding an Ed25519 or P-256 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        let info = spki::SubjectPublicKeyInfoRef::try_from(der).map_err(|e| {
            Error::new(
                ErrorKind::InvalidKey,
                BACKEND,
                "not a DER SubjectPublicKeyInfo",
            )
            .with_source(e)
        })?;
        let oid = info.algorithm.oid;
        if oid == OID_ED25519 {
            let key = ed25519_dalek::VerifyingKey::from_public_key_der(der).map_err(|e| {
                Error::new(ErrorKind::InvalidKey, BACKEND, "invalid Ed25519 public key")
                    .with_source(e)
            })?;
            Ok(Self::from_ed25519(&key))
        } else if oid == OID_EC_PUBLIC_KEY {
            let curve = info.algorithm.parameters_oid().map_err(|e| {
                Error::new(
                    ErrorKind::InvalidKey,
                    BACKEND,
                    "EC public key without a named curve",
                )
                .with_source(e)
            })?;
            if curve != OID_P256 {
                return Err(unsupported_key(&describe_curve(curve)));
            }
            let key = p256::PublicKey::from_public_key_der(der).map_err(|e| {
                Error::new(ErrorKind::InvalidKey, BACKEND, "invalid P-256 public key")
                    .with_source(e)
            })?;
            Ok(Self::from_p256(&key))
        } else {
            Err(unsupported_key(&describe_algorithm(oid)))
        }
    }

    /// The public key of an Ed25519 key.
    pub fn from_ed25519(key: &ed25519_dalek::VerifyingKey) -> Self {
        Self {
            algorithm: Algorithm::Ed25519,
            spki_der: key
                .to_public_key_der()
                .expect("encoding a 32-byte key into a fixed DER template cannot fail")
                .into_vec(),
        }
    }

    /// Parses a raw 32-byte Ed25519 public key (RFC 8032 encoding).
    pub fn from_ed25519_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: &[u8; 32] = bytes.try_into().map_err(|_| {
            Error::new(
                ErrorKind::InvalidKey,
                BACKEND,
                format!("an Ed25519 public key is 32 bytes, not {}", bytes.len()),
            )
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|e| {
            Error::new(ErrorKind::InvalidKey, BACKEND, "invalid Ed25519 public key").with_source(e)
        })?;
        Ok(Self::from_ed25519(&key))
    }

    /// The public key of a P-256 key.
    pub fn from_p256(key: &p256::PublicKey) -> Self {
        Self {
            algorithm: Algorithm::EcdsaP256Sha256,
            spki_der: key
                .to_public_key_der()
                .expect("encoding a P-256 point into SPKI cannot fail")
                .into_vec(),
        }
    }

    /// Parses a SEC1-encoded P-256 point (compressed or uncompressed).
    pub fn from_p256_sec1(bytes: &[u8]) -> Result<Self, Error> {
        let key = p256::PublicKey::from_sec1_bytes(bytes).map_err(|e| {
            Error::new(ErrorKind::InvalidKey, BACKEND, "invalid P-256 point").with_source(e)
        })?;
        Ok(Self::from_p256(&key))
    }

    /// Parses an OpenSSH `authorized_keys` line (`<type> <base64> [comment]`), the form Teleport
    /// stores in tokens and sends in challenges.
    pub fn from_openssh(line: &str) -> Result<Self, Error> {
        let key = ssh_key::PublicKey::from_openssh(line.trim()).map_err(|e| {
            Error::new(
                ErrorKind::InvalidKey,
                BACKEND,
                "not an OpenSSH authorized_keys public key",
            )
            .with_source(e)
        })?;
        Self::from_key_data(key.key_data())
    }

    /// Parses an SSH wire-format public key blob (RFC 4253 §6.6).
    pub fn from_ssh_wire(blob: &[u8]) -> Result<Self, Error> {
        let key = ssh_key::PublicKey::from_bytes(blob).map_err(|e| {
            Error::new(ErrorKind::InvalidKey, BACKEND, "not an SSH public key blob").with_source(e)
        })?;
        Self::from_key_data(key.key_data())
    }

    fn from_key_data(data: &KeyData) -> Result<Self, Error> {
        match data {
            KeyData::Ed25519(key) => Self::from_ed25519_bytes(&key.0),
            KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)) => {
                Self::from_p256_sec1(point.as_bytes())
            }
            other => Err(unsupported_key(other.algorithm().as_str())),
        }
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// PKIX SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// PKIX SubjectPublicKeyInfo, PEM (`-----BEGIN PUBLIC KEY-----`), with a final newline.
    pub fn to_pem(&self) -> String {
        spki::Document::try_from(self.spki_der.as_slice())
            .and_then(|doc| doc.to_pem("PUBLIC KEY", LineEnding::LF))
            .expect("a parsed SPKI re-encodes as PEM")
    }

    fn key_data(&self) -> KeyData {
        match self.algorithm {
            Algorithm::Ed25519 => {
                let key = ed25519_dalek::VerifyingKey::from_public_key_der(&self.spki_der)
                    .expect("checked at construction");
                KeyData::Ed25519(Ed25519PublicKey(key.to_bytes()))
            }
            Algorithm::EcdsaP256Sha256 => {
                let key = p256::PublicKey::from_public_key_der(&self.spki_der)
                    .expect("checked at construction");
                KeyData::Ecdsa(EcdsaPublicKey::from(p256::ecdsa::VerifyingKey::from(key)))
            }
        }
    }

    /// The raw key: 32 bytes for Ed25519, the 65-byte uncompressed SEC1 point for P-256.
    pub fn raw(&self) -> Vec<u8> {
        match self.key_data() {
            KeyData::Ed25519(key) => key.0.to_vec(),
            KeyData::Ecdsa(key) => key.as_sec1_bytes().to_vec(),
            _ => unreachable!("only Ed25519 and P-256 keys are constructed"),
        }
    }

    /// The SSH wire-format public key blob (RFC 4253 §6.6), as sent in
    /// `PublicKeys.public_ssh_key`.
    pub fn ssh_wire(&self) -> Vec<u8> {
        ssh_key::PublicKey::from(self.key_data())
            .to_bytes()
            .expect("encoding an in-memory SSH key cannot fail")
    }

    /// The OpenSSH `authorized_keys` line exactly as Teleport compares it: `<type> <base64>`,
    /// trimmed, no comment, no newline (`TrimSpace(ssh.MarshalAuthorizedKey(key))`).
    pub fn to_openssh(&self) -> String {
        ssh_key::PublicKey::from(self.key_data())
            .to_openssh()
            .expect("encoding an in-memory SSH key cannot fail")
            .trim()
            .to_owned()
    }

    /// The OpenSSH SHA-256 fingerprint (`SHA256:<base64>`), as `ssh-keygen -l` prints it. Safe to
    /// log: it identifies the key without revealing anything.
    pub fn fingerprint(&self) -> String {
        ssh_key::PublicKey::from(self.key_data())
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// Teleport's key ID (`lib/jwt.KeyID`): unpadded base64url of SHA-256 over the PKIX DER. The
    /// challenge document's `sub` claim carries it.
    pub fn key_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(&self.spki_der))
    }

    /// Verifies a JWS-encoded signature (64-byte Ed25519, or raw `r‖s` ES256 over SHA-256) of
    /// `message`. DER-encoded ECDSA signatures are rejected, as go-jose rejects them.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        let bad = |what: &str| Error::new(ErrorKind::Sign, BACKEND, what.to_owned());
        match self.algorithm {
            Algorithm::Ed25519 => {
                let key = ed25519_dalek::VerifyingKey::from_public_key_der(&self.spki_der)
                    .expect("checked at construction");
                let signature = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| bad("an Ed25519 signature is 64 bytes"))?;
                // Plain RFC 8032 verification, as Go's crypto/ed25519 does.
                ed25519_dalek::Verifier::verify(&key, message, &signature)
                    .map_err(|_| bad("signature does not verify"))
            }
            Algorithm::EcdsaP256Sha256 => {
                if signature.len() != 64 {
                    return Err(bad("an ES256 signature is 64 raw bytes (r‖s), not DER"));
                }
                let key = p256::ecdsa::VerifyingKey::from(
                    p256::PublicKey::from_public_key_der(&self.spki_der)
                        .expect("checked at construction"),
                );
                let signature = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| bad("malformed ES256 signature"))?;
                p256::ecdsa::signature::Verifier::verify(&key, message, &signature)
                    .map_err(|_| bad("signature does not verify"))
            }
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl fmt::Display for PublicKey {
    /// The `authorized_keys` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_openssh())
    }
}

/// The error for a key type keybound does not sign with, naming it.
pub(crate) fn unsupported_key(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidKey,
        BACKEND,
        format!("unsupported key type {what}: bound keypairs must be Ed25519 or ECDSA P-256"),
    )
}

/// A readable name for a public key algorithm OID.
pub fn describe_algorithm(oid: ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => "RSA".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        "1.3.101.110" | "1.3.101.111" => "X25519/X448 (key agreement only)".to_owned(),
        "1.2.840.10040.4.1" => "DSA".to_owned(),
        other => format!("with algorithm OID {other}"),
    }
}

/// A readable name for an elliptic curve OID.
pub fn describe_curve(oid: ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.3.132.0.34" => "ECDSA P-384".to_owned(),
        "1.3.132.0.35" => "ECDSA P-521".to_owned(),
        "1.3.132.0.10" => "ECDSA secp256k1".to_owned(),
        other => format!("ECDSA on curve OID {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8032 §7.1 test 1 public key, and its SPKI (RFC 8410 §10.1 layout).
    const ED25519_PUB: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ed25519_encodings() {
        let key = PublicKey::from_ed25519_bytes(&hex(ED25519_PUB)).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
        let mut spki = hex("302a300506032b6570032100");
        spki.extend(hex(ED25519_PUB));
        assert_eq!(key.spki_der(), spki);
        assert_eq!(PublicKey::from_spki_der(&spki).unwrap(), key);
        // The SSH wire blob: string "ssh-ed25519", string key.
        let mut wire = vec![0, 0, 0, 11];
        wire.extend(b"ssh-ed25519");
        wire.extend([0, 0, 0, 32]);
        wire.extend(hex(ED25519_PUB));
        assert_eq!(key.ssh_wire(), wire);
        let line = key.to_openssh();
        assert!(
            line.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
            "{line}"
        );
        assert!(!line.contains(char::is_whitespace) || line.matches(' ').count() == 1);
        assert_eq!(
            PublicKey::from_openssh(&format!("{line} a comment\n")).unwrap(),
            key
        );
        assert_eq!(PublicKey::from_ssh_wire(&wire).unwrap(), key);
        assert!(key.fingerprint().starts_with("SHA256:"));
        assert_eq!(key.key_id().len(), 43);
        assert!(key.to_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn p256_compressed_and_uncompressed_are_one_key() {
        let secret = p256::SecretKey::from_slice(&[7; 32]).unwrap();
        let public = secret.public_key();
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let compressed = public.to_encoded_point(true);
        let uncompressed = public.to_encoded_point(false);
        let a = PublicKey::from_p256_sec1(compressed.as_bytes()).unwrap();
        let b = PublicKey::from_p256_sec1(uncompressed.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.raw(), uncompressed.as_bytes());
        assert!(
            a.to_openssh()
                .starts_with("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY")
        );
        assert_eq!(PublicKey::from_spki_der(a.spki_der()).unwrap(), a);
    }

    #[test]
    fn rejects_other_keys_by_name() {
        // An RSA SPKI header is enough to be named.
        let rsa_authorized = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDCy7Bn0/aVwXu+VPKm8kqY+L2EZGhiZbrh7UAB0hLRq/wlxxLtNGxnBOoy2BLk3kH/Dyk8lEXnwDprOS1o9yWVaTTLyvUyErg1SKqPm5ZfdQNp1+WHBSrjsvdQiTWeSTkLozhLBBcZ1TLTl27ZvwMN3J9Z1IzTVtPG9d8VXNGr4w==";
        let err = PublicKey::from_openssh(rsa_authorized).unwrap_err();
        assert!(
            err.to_string().contains("unsupported key type ssh-rsa"),
            "{err}"
        );
        assert!(PublicKey::from_openssh("not a key").is_err());
        assert!(PublicKey::from_ed25519_bytes(&[1; 31]).is_err());
    }
}
