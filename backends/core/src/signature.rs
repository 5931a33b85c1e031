//! JWS-encoded signatures.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Algorithm, Error, ErrorKind};

/// A signature in JWS encoding (RFC 7518 §3.4, RFC 8037 §3.1): 64 bytes for Ed25519, and the raw
/// big-endian `r‖s` (each left-padded to 32 bytes) for ES256, never DER.
#[derive(Clone, Eq, PartialEq)]
pub struct Signature {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl Signature {
    /// Wraps `bytes` after checking their length for `algorithm`. Backends call this so a DER
    /// ECDSA signature can never leave a signer.
    pub fn new(algorithm: Algorithm, bytes: Vec<u8>) -> Result<Self, Error> {
        if bytes.len() != algorithm.signature_len() {
            return Err(Error::new(
                ErrorKind::Sign,
                "signature",
                format!(
                    "a JWS {} signature is {} bytes, the signer returned {}",
                    algorithm.jws_alg(),
                    algorithm.signature_len(),
                    bytes.len()
                ),
            ));
        }
        Ok(Self { algorithm, bytes })
    }

    /// The algorithm that made this signature.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The raw JWS-encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Unpadded base64url, the third part of a compact JWS.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.bytes)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({}, {})",
            self.algorithm.jws_alg(),
            self.to_base64url()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_der_length() {
        let der_like = vec![0x30; 71];
        let err = Signature::new(Algorithm::EcdsaP256Sha256, der_like).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signature: a JWS ES256 signature is 64 bytes, the signer returned 71"
        );
        assert!(Signature::new(Algorithm::Ed25519, vec![0; 64]).is_ok());
    }
}
