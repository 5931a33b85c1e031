//! `TPM2_MakeCredential` without a TPM (TPM 2.0 Part 1, §24 "Credential Protection"; Part 3,
//! MakeCredential): a credential only the TPM holding the EK can recover, and only through an
//! object of the given name (the AK). For an RSA EK of the TCG default template (nameAlg
//! SHA-256, AES-128-CFB):
//!
//! - seed: 32 random bytes, encrypted to the EK with RSA-OAEP (SHA-256, label `IDENTITY\0`);
//! - symKey = KDFa(SHA-256, seed, "STORAGE", name, "", 128);
//!   encIdentity = AES-128-CFB(symKey, IV 0, TPM2B(credential));
//! - HMACkey = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256);
//!   outerHMAC = HMAC-SHA-256(HMACkey, encIdentity ‖ name);
//! - the credential blob (`TPM2B_ID_OBJECT`'s contents) is TPM2B(outerHMAC) ‖ encIdentity.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use rand_core::{OsRng, RngCore as _};
use rsa::{Oaep, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// A credential made for one EK and AK name.
pub struct Made {
    /// `TPM2B_ID_OBJECT`'s contents.
    pub credential_blob: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`'s contents: the seed, encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// Encrypts `credential` (at most 64 bytes; keybound uses 32 random bytes) to the RSA EK
/// `ek`, bound to the object name `name`.
pub fn make(ek: &RsaPublicKey, name: &[u8], credential: &[u8]) -> Result<Made, String> {
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(seed.as_mut());
    let encrypted_secret = ek
        .encrypt(
            &mut OsRng,
            Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
            seed.as_ref(),
        )
        .map_err(|e| format!("encrypting the seed to the EK: {e}"))?;
    Ok(Made {
        credential_blob: protect(seed.as_ref(), name, credential),
        encrypted_secret,
    })
}

/// The credential blob for `seed` (split out so a known seed can be checked).
fn protect(seed: &[u8], name: &[u8], credential: &[u8]) -> Vec<u8> {
    let sym_key = Zeroizing::new(kdfa(seed, b"STORAGE", name, &[], 128));
    let mut enc_identity = (credential.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(credential);
    cfb_mode::Encryptor::<aes::Aes128>::new(sym_key.as_slice().into(), &[0u8; 16].into())
        .encrypt(&mut enc_identity);
    let hmac_key = Zeroizing::new(kdfa(seed, b"INTEGRITY", &[], &[], 256));
    let mut mac = HmacSha256::new_from_slice(&hmac_key).expect("HMAC takes any key length");
    mac.update(&enc_identity);
    mac.update(name);
    let integrity = mac.finalize().into_bytes();
    let mut blob = (integrity.len() as u16).to_be_bytes().to_vec();
    blob.extend_from_slice(&integrity);
    blob.extend_from_slice(&enc_identity);
    blob
}

/// KDFa with SHA-256 (TPM 2.0 Part 1, §11.4.10.2): HMAC(key, i ‖ label ‖ 0 ‖ contextU ‖
/// contextV ‖ bits) for i = 1, 2, ..., truncated to `bits`.
fn kdfa(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = (bits / 8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&counter.to_be_bytes());
        mac.update(label);
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_gives_the_length_asked_for_and_depends_on_every_input() {
        let a = kdfa(b"seed", b"STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(kdfa(b"seed", b"INTEGRITY", &[], &[], 256).len(), 32);
        assert_eq!(kdfa(b"seed", b"X", &[], &[], 512).len(), 64);
        assert_ne!(a, kdfa(b"seee", b"STORAGE", b"name", &[], 128));
        assert_ne!(a, kdfa(b"seed", b"STORAGF", b"name", &[], 128));
        assert_ne!(a, kdfa(b"seed", b"STORAGE", b"namf", &[], 128));
        // The first block of a 256-bit KDFa is not the 128-bit one's prefix (bits is hashed).
        assert_ne!(&kdfa(b"seed", b"STORAGE", b"name", &[], 256)[..16], &a[..]);
    }

    #[test]
    fn the_blob_is_the_hmac_then_the_encrypted_credential() {
        let blob = protect(&[1; 32], b"\x00\x0bname", &[9; 32]);
        assert_eq!(&blob[..2], &[0, 32]);
        assert_eq!(blob.len(), 2 + 32 + 2 + 32);
    }
}
