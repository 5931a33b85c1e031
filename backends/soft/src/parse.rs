//! PEM private key parsing for the formats `keys.ParsePrivateKey` (Teleport's `api/utils/keys`)
//! accepts, restricted to the key types a bound keypair can have.

use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use keybound_signer::{describe_algorithm, describe_curve};
use p256::pkcs8::ObjectIdentifier;
use ssh_key::private::{EcdsaKeypair, KeypairData};
use zeroize::Zeroizing;

use crate::SoftKey;

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

const SUPPORTED: &str = "bound keypairs must be Ed25519 or ECDSA P-256";

/// What a key source holding a public key is told.
const PUBLIC: &str = "holds a public key; give keybound the private key";

/// Parses the first private-key PEM block of `pem`. Errors are short phrases without key bytes;
/// the caller prefixes them with the key's source.
pub(crate) fn private_key(pem: &[u8]) -> Result<SoftKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "is not PEM text".to_owned())?;
    if let Some(what) = public_key(text) {
        return Err(what);
    }
    let block = first_key_block(text)?;
    let label = pem_rfc7468::decode_label(block.as_bytes())
        .map_err(|e| format!("is not valid PEM ({e}); is the file truncated?"))?;
    match label {
        "OPENSSH PRIVATE KEY" => return openssh(block),
        "PRIVATE KEY" | "EC PRIVATE KEY" => {}
        "RSA PRIVATE KEY" => return Err(format!("unsupported key type RSA: {SUPPORTED}")),
        "ENCRYPTED PRIVATE KEY" => {
            return Err(
                "is an encrypted PKCS#8 key; keybound needs it unencrypted: \
                        `openssl pkcs8 -in KEY -out KEY.plain` (then chmod 600)"
                    .to_owned(),
            );
        }
        "PUBLIC KEY" => return Err(PUBLIC.to_owned()),
        other => {
            return Err(format!(
                "has a PEM block of type {other:?}, not a private key"
            ));
        }
    }
    let (label, der) = pem_rfc7468::decode_vec(block.as_bytes())
        .map_err(|e| format!("is not valid PEM ({e}); is the file truncated?"))?;
    let der = Zeroizing::new(der);
    if label == "PRIVATE KEY" {
        pkcs8(&der)
    } else {
        sec1(&der)
    }
}

/// What to say when `text` is a public key rather than a private one: an OpenSSH public key
/// line (what `ssh-keygen` writes to `KEY.pub`), an RFC 4716 SSH2 public key or a PEM `PUBLIC
/// KEY`; `None` otherwise. Nothing secret is in a public key, so this may look before the file's
/// permissions are judged.
pub(crate) fn public_key(text: &str) -> Option<String> {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    if first.starts_with("-----BEGIN PUBLIC KEY-----") {
        return Some(PUBLIC.to_owned());
    }
    if first.starts_with("---- BEGIN SSH2 PUBLIC KEY ----") {
        return Some(format!("{PUBLIC} (an SSH2 public key)"));
    }
    let mut words = first.split_whitespace();
    let openssh = match (words.next(), words.next()) {
        (Some(kind), Some(blob)) => {
            ["ssh-", "ecdsa-sha2-", "sk-"]
                .iter()
                .any(|prefix| kind.starts_with(prefix))
                && blob.starts_with("AAAA")
        }
        _ => false,
    };
    openssh.then(|| {
        format!("{PUBLIC} (an OpenSSH public key: ssh-keygen wrote the private one beside it, without .pub)")
    })
}

/// The first PEM block that is not `EC PARAMETERS` (which `openssl ecparam -genkey` writes first).
fn first_key_block(text: &str) -> Result<&str, String> {
    let mut rest = text;
    loop {
        let Some(start) = rest.find("-----BEGIN ") else {
            return Err(if text.trim().is_empty() {
                "is empty".to_owned()
            } else {
                "holds no PEM block (-----BEGIN ...-----)".to_owned()
            });
        };
        let block = &rest[start..];
        let label_end = block[11..]
            .find("-----")
            .ok_or("has a malformed PEM header; is the file truncated?")?;
        let label = &block[11..11 + label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| format!("has no -----END {label}----- line; is the file truncated?"))?
            + end_marker.len();
        if label != "EC PARAMETERS" {
            return Ok(&block[..end]);
        }
        rest = &block[end..];
    }
}

fn pkcs8(der: &[u8]) -> Result<SoftKey, String> {
    let info = pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(|e| format!("is not a valid PKCS#8 private key ({e})"))?;
    let oid = info.algorithm.oid;
    if oid == OID_ED25519 {
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|e| format!("is not a valid Ed25519 PKCS#8 key ({e})"))?;
        Ok(SoftKey::Ed25519(key))
    } else if oid == OID_EC_PUBLIC_KEY {
        let curve = info
            .algorithm
            .parameters_oid()
            .map_err(|_| "is an EC key without a named curve".to_owned())?;
        if curve != OID_P256 {
            return Err(format!(
                "unsupported key type {}: {SUPPORTED}",
                describe_curve(curve)
            ));
        }
        let key = p256::SecretKey::try_from(info)
            .map_err(|e| format!("is not a valid P-256 PKCS#8 key ({e})"))?;
        Ok(SoftKey::P256(key.into()))
    } else {
        Err(format!(
            "unsupported key type {}: {SUPPORTED}",
            describe_algorithm(oid)
        ))
    }
}

fn sec1(der: &[u8]) -> Result<SoftKey, String> {
    let key = sec1::EcPrivateKey::try_from(der)
        .map_err(|e| format!("is not a valid SEC1 EC private key ({e})"))?;
    let curve = key
        .parameters
        .and_then(|p| p.named_curve())
        .ok_or("is an EC PRIVATE KEY without a named curve; convert it with `openssl pkcs8 -topk8 -nocrypt`")?;
    if curve != OID_P256 {
        return Err(format!(
            "unsupported key type {}: {SUPPORTED}",
            describe_curve(curve)
        ));
    }
    let secret =
        p256::SecretKey::try_from(key).map_err(|e| format!("is not a valid P-256 key ({e})"))?;
    Ok(SoftKey::P256(secret.into()))
}

fn openssh(block: &str) -> Result<SoftKey, String> {
    let key = ssh_key::PrivateKey::from_openssh(block)
        .map_err(|e| format!("is not a valid OpenSSH private key ({e}); is the file truncated?"))?;
    if key.is_encrypted() {
        return Err("is passphrase-protected; keybound needs it unencrypted: \
                    `ssh-keygen -p -N '' -f KEY`"
            .to_owned());
    }
    let parsed = match key.key_data() {
        KeypairData::Ed25519(pair) => {
            let secret = Zeroizing::new(pair.private.to_bytes());
            let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
            if signing.verifying_key().to_bytes() != pair.public.0 {
                return Err("has public and private halves that do not match".to_owned());
            }
            SoftKey::Ed25519(signing)
        }
        KeypairData::Ecdsa(EcdsaKeypair::NistP256 { public, private }) => {
            let secret = p256::SecretKey::from_slice(private.as_slice())
                .map_err(|_| "has an invalid P-256 private scalar".to_owned())?;
            if secret.public_key().to_sec1_bytes().as_ref() != public.as_bytes() {
                return Err("has public and private halves that do not match".to_owned());
            }
            SoftKey::P256(secret.into())
        }
        other => {
            let name = other
                .algorithm()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned());
            return Err(format!("unsupported key type {name}: {SUPPORTED}"));
        }
    };
    Ok(parsed)
}
