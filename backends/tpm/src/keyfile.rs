//! `TSS2 PRIVATE KEY` PEM files: the TPM key format of tpm2-openssl, tpm2-tss-engine and
//! `tpm2_encodeobject` (James Bottomley's "ASN.1 Specification for TPM 2.0 Key Files"):
//!
//! ```text
//! TPMKey ::= SEQUENCE {
//!     type        OBJECT IDENTIFIER,            -- 2.23.133.10.1.3: a loadable key
//!     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//!     policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//!     secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//!     authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//!     parent      INTEGER,                       -- a hierarchy (0x4000000x) or a persistent handle
//!     pubkey      OCTET STRING,                  -- TPM2B_PUBLIC
//!     privkey     OCTET STRING }                 -- TPM2B_PRIVATE
//! ```
//!
//! keybound reads and writes loadable keys; keys bound to policies or imported (`secret`) are
//! refused with a message saying so.

use der::asn1::{Any, ObjectIdentifier, OctetString};
use der::{Decode as _, Encode as _, Sequence};

/// `id-loadablekey`.
pub const LOADABLE_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.3");
/// The PEM label.
pub const PEM_LABEL: &str = "TSS2 PRIVATE KEY";
/// The owner hierarchy, as a parent: the standard ECC P-256 storage primary.
pub const OWNER: u32 = 0x4000_0001;

#[derive(Sequence)]
struct TpmKey {
    key_type: ObjectIdentifier,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    empty_auth: Option<bool>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    policy: Option<Any>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    secret: Option<Any>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    auth_policy: Option<Any>,
    parent: u32,
    pubkey: OctetString,
    privkey: OctetString,
}

/// The parts of a key file keybound uses.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KeyFile {
    /// Whether the key has no authorization value.
    pub empty_auth: bool,
    /// The parent: [`OWNER`] or a persistent handle.
    pub parent: u32,
    /// `TPM2B_PUBLIC` (with its size prefix).
    pub public: Vec<u8>,
    /// `TPM2B_PRIVATE` (with its size prefix): the key wrapped by its parent, useless elsewhere.
    pub private: Vec<u8>,
}

impl KeyFile {
    /// Parses a PEM `TSS2 PRIVATE KEY`. Errors are short phrases; the caller names the file.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let (label, der) = der::pem::decode_vec(text.trim().as_bytes())
            .map_err(|e| format!("is not PEM ({e})"))?;
        if label != PEM_LABEL {
            return Err(format!("holds a {label:?} PEM block, not a {PEM_LABEL:?}"));
        }
        let key = TpmKey::from_der(&der).map_err(|e| format!("is not a TPM 2.0 key file ({e})"))?;
        if key.key_type != LOADABLE_KEY {
            return Err(format!(
                "is a TPM key of type {} (keybound loads 2.23.133.10.1.3, loadable keys)",
                key.key_type
            ));
        }
        if key.policy.is_some() || key.auth_policy.is_some() {
            return Err("is bound to a TPM policy, which keybound does not satisfy".to_owned());
        }
        if key.secret.is_some() {
            return Err(
                "is an imported key with a secret, which keybound does not load".to_owned(),
            );
        }
        Ok(Self {
            empty_auth: key.empty_auth.unwrap_or(false),
            parent: key.parent,
            public: key.pubkey.into_bytes(),
            private: key.privkey.into_bytes(),
        })
    }

    /// Encodes the file as PEM with a final newline.
    pub fn to_pem(&self) -> String {
        let key = TpmKey {
            key_type: LOADABLE_KEY,
            empty_auth: self.empty_auth.then_some(true),
            policy: None,
            secret: None,
            auth_policy: None,
            parent: self.parent,
            pubkey: OctetString::new(self.public.clone())
                .expect("a TPM2B is far below DER's limits"),
            privkey: OctetString::new(self.private.clone())
                .expect("a TPM2B is far below DER's limits"),
        };
        let der = key
            .to_der()
            .expect("encoding an in-memory key file cannot fail");
        der::pem::encode_string(PEM_LABEL, der::pem::LineEnding::LF, &der)
            .expect("PEM-encoding bytes cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_policy_keys() {
        let file = KeyFile {
            empty_auth: true,
            parent: OWNER,
            public: vec![0, 2, 1, 2],
            private: vec![0, 1, 9],
        };
        let pem = file.to_pem();
        assert!(pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----\n"));
        assert_eq!(KeyFile::from_pem(&pem).unwrap(), file);
        let persistent = KeyFile {
            parent: 0x8100_0001,
            empty_auth: false,
            ..file
        };
        assert_eq!(KeyFile::from_pem(&persistent.to_pem()).unwrap(), persistent);
        assert!(
            KeyFile::from_pem("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n")
                .unwrap_err()
                .contains("not a \"TSS2 PRIVATE KEY\"")
        );
    }
}
