//! The subject keys of a certificate request: the X.509 half's SubjectPublicKeyInfo and the SSH
//! half's wire blob, parsed (RSA, ECDSA P-256 or Ed25519 only) so that they can be checked to be
//! one key.

use anyhow::{anyhow, bail, ensure};
use rcgen::{PublicKeyData, SignatureAlgorithm};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use x509_cert::der::Decode as _;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

/// Subject public key algorithms accepted in a request.
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The subject key of the X.509 certificate, as the bot sent it.
pub(super) struct TlsSubject {
    pub(super) parsed: ParsedKey,
}

/// The subject key of the SSH certificate, as the bot sent it.
pub(super) struct SshSubject {
    pub(super) key: KeyData,
    pub(super) parsed: ParsedKey,
}

/// A parsed public key, to check that the TLS and SSH keys of a request are the same key.
#[derive(PartialEq, Eq)]
pub(super) enum ParsedKey {
    /// Modulus and public exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    EcdsaP256(p256::PublicKey),
    Ed25519([u8; 32]),
}

impl ParsedKey {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "RSA",
            Self::EcdsaP256(_) => "ECDSA P-256",
            Self::Ed25519(_) => "Ed25519",
        }
    }
}

/// A SubjectPublicKeyInfo as rcgen rebuilds one from an algorithm and key bits, to check that a
/// client's key is in canonical DER form (RSA parameters NULL, no other EC parameters...).
struct SubjectSpki {
    algorithm: &'static SignatureAlgorithm,
    bits: Vec<u8>,
}

impl PublicKeyData for SubjectSpki {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl TlsSubject {
    pub(super) fn from_spki(der: &[u8]) -> anyhow::Result<Self> {
        let info = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|err| anyhow!("not a DER SubjectPublicKeyInfo: {err}"))?;
        let bits = info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| anyhow!("the public key BIT STRING has unused bits"))?
            .to_vec();
        let alg = info.algorithm.oid;
        let (algorithm, parsed): (&'static SignatureAlgorithm, ParsedKey) =
            if alg == OID_RSA_ENCRYPTION {
                use rsa::pkcs1::DecodeRsaPublicKey;
                use rsa::traits::PublicKeyParts;
                let key = rsa::RsaPublicKey::from_pkcs1_der(&bits)
                    .map_err(|err| anyhow!("bad RSA public key: {err}"))?;
                let parsed = ParsedKey::Rsa {
                    n: key.n().to_bytes_be(),
                    e: key.e().to_bytes_be(),
                };
                (&rcgen::PKCS_RSA_SHA256, parsed)
            } else if alg == OID_EC_PUBLIC_KEY {
                let curve = info
                    .algorithm
                    .parameters
                    .map(|p| p.decode_as::<ObjectIdentifier>())
                    .transpose()
                    .map_err(|err| anyhow!("bad EC parameters: {err}"))?;
                ensure!(
                    curve == Some(OID_SECP256R1),
                    "unsupported elliptic curve (only P-256 is accepted)"
                );
                let key = p256::PublicKey::from_sec1_bytes(&bits)
                    .map_err(|_| anyhow!("bad P-256 public key point"))?;
                (&rcgen::PKCS_ECDSA_P256_SHA256, ParsedKey::EcdsaP256(key))
            } else if alg == OID_ED25519 {
                let key: [u8; 32] = bits.as_slice().try_into().map_err(|_| {
                    anyhow!("an Ed25519 public key is 32 bytes, not {}", bits.len())
                })?;
                (&rcgen::PKCS_ED25519, ParsedKey::Ed25519(key))
            } else {
                bail!("unsupported public key algorithm {alg} (RSA, ECDSA P-256 or Ed25519)");
            };
        let spki = SubjectSpki { algorithm, bits };
        // rcgen rebuilds the SPKI from the algorithm and the key bits: make sure it comes out
        // as the very bytes the client sent (RSA parameters NULL, no other EC parameters...).
        ensure!(
            spki.subject_public_key_info() == der,
            "the SubjectPublicKeyInfo is not in canonical DER form"
        );
        Ok(Self { parsed })
    }
}

impl SshSubject {
    pub(super) fn from_wire(wire: &[u8]) -> anyhow::Result<Self> {
        let public = ssh_key::PublicKey::from_bytes(wire)
            .map_err(|err| anyhow!("not an SSH public key blob: {err}"))?;
        let parsed = match public.key_data() {
            KeyData::Rsa(key) => ParsedKey::Rsa {
                n: positive(&key.n)?,
                e: positive(&key.e)?,
            },
            KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)) => ParsedKey::EcdsaP256(
                p256::PublicKey::from_sec1_bytes(point.as_bytes())
                    .map_err(|_| anyhow!("bad P-256 public key point"))?,
            ),
            KeyData::Ed25519(key) => ParsedKey::Ed25519(key.0),
            other => bail!(
                "unsupported SSH key type {} (ssh-rsa, ecdsa-sha2-nistp256 or ssh-ed25519)",
                other.algorithm()
            ),
        };
        Ok(Self {
            key: public.key_data().clone(),
            parsed,
        })
    }
}

/// The magnitude of a non-negative SSH mpint, big-endian without leading zeros.
fn positive(mpint: &ssh_key::Mpint) -> anyhow::Result<Vec<u8>> {
    let bytes = mpint
        .as_positive_bytes()
        .ok_or_else(|| anyhow!("negative RSA parameter"))?;
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    Ok(bytes[start..].to_vec())
}
