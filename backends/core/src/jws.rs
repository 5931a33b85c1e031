//! Compact JWS (RFC 7515 §7.1) as Teleport's bound-keypair challenge expects it.
//!
//! tbot signs with go-jose v3, `WithType("JWT")` and nothing else, so the protected header is
//! exactly `{"alg":"<alg>","typ":"JWT"}` (go-jose writes keys sorted), and the payload is the
//! challenge string's bytes exactly as received (`lib/join/joinclient/join_boundkeypair.go`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Algorithm, Error, ErrorKind, PublicKey, Signer};

const BACKEND: &str = "jws";

/// The protected header for `algorithm`, as JSON text.
pub fn header(algorithm: Algorithm) -> String {
    format!(r#"{{"alg":"{}","typ":"JWT"}}"#, algorithm.jws_alg())
}

/// `BASE64URL(header) "." BASE64URL(payload)`: the bytes that get signed.
pub fn signing_input(algorithm: Algorithm, payload: &[u8]) -> String {
    let mut input = URL_SAFE_NO_PAD.encode(header(algorithm));
    input.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut input);
    input
}

/// Signs `payload` with `signer` and returns the compact serialisation
/// `header.payload.signature`.
pub fn compact(signer: &dyn Signer, payload: &[u8]) -> Result<String, Error> {
    let mut jws = signing_input(signer.algorithm(), payload);
    let signature = signer.sign(jws.as_bytes())?;
    if signature.algorithm() != signer.algorithm() {
        return Err(Error::new(
            ErrorKind::Sign,
            BACKEND,
            "signer returned a signature for another algorithm",
        ));
    }
    jws.push('.');
    jws.push_str(&signature.to_base64url());
    Ok(jws)
}

/// Checks a compact JWS against `key` the way go-jose's `ParseSigned` + `Claims(key)` do, and
/// returns the payload. The header must be valid JSON whose `alg` fits the key type; `crit` and
/// unknown critical parameters are refused; the signature must be JWS-encoded.
pub fn verify_compact(key: &PublicKey, compact: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |what: &str| Error::new(ErrorKind::Sign, BACKEND, what.to_owned());
    let text = std::str::from_utf8(compact).map_err(|_| bad("JWS is not ASCII"))?;
    let mut parts = text.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("compact JWS must have three dot-separated parts"));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| bad(&format!("JWS {what} is not unpadded base64url")))
    };
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&decode(h, "header")?)
            .map_err(|_| bad("JWS header is not a JSON object"))?;
    let alg = header
        .get("alg")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if alg != key.algorithm().jws_alg() {
        return Err(bad(&format!(
            "JWS alg {alg:?} does not fit the {} key",
            key.algorithm()
        )));
    }
    if header.contains_key("crit") {
        return Err(bad("JWS header has unsupported critical parameters"));
    }
    let payload = decode(p, "payload")?;
    let signature = decode(s, "signature")?;
    let signed = &text.as_bytes()[..h.len() + 1 + p.len()];
    key.verify(signed, &signature)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_exactly_what_go_jose_writes() {
        assert_eq!(header(Algorithm::Ed25519), r#"{"alg":"EdDSA","typ":"JWT"}"#);
        assert_eq!(
            signing_input(Algorithm::EcdsaP256Sha256, b"{}"),
            "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.e30"
        );
    }
}
