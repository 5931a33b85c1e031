//! A conformance suite every backend's tests run against a real signer of that backend.
//!
//! Each check panics with a message naming what broke, like an assertion. Verification uses
//! RustCrypto keys rebuilt from [`PublicKey::spki_der`], never the signer under test.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

use crate::{PublicKey, Signer, jws};

/// Runs every check below.
pub fn run_all(signer: &dyn Signer) {
    public_key_encodings_agree(signer);
    signature_is_jws_encoded(signer);
    sign_verifies(signer);
    compact_jws_verifies(signer);
}

/// SPKI, PEM, OpenSSH and SSH wire encodings all describe the same key, and the key ID is
/// SHA-256 over the SPKI.
pub fn public_key_encodings_agree(signer: &dyn Signer) {
    let key = signer.public_key();
    assert_eq!(
        key.algorithm(),
        signer.algorithm(),
        "algorithm disagrees with key"
    );
    assert_eq!(
        &PublicKey::from_spki_der(key.spki_der()).expect("SPKI parses"),
        key
    );
    assert_eq!(
        &PublicKey::from_openssh(&key.to_openssh()).expect("OpenSSH parses"),
        key
    );
    assert_eq!(
        &PublicKey::from_ssh_wire(&key.ssh_wire()).expect("wire parses"),
        key
    );
    let pem = key.to_pem();
    let der = pem_body(&pem);
    assert_eq!(der, key.spki_der(), "PEM body is the SPKI");
    assert_eq!(
        key.key_id(),
        URL_SAFE_NO_PAD.encode(Sha256::digest(key.spki_der())),
        "key ID"
    );
    let line = key.to_openssh();
    assert_eq!(line.trim(), line, "authorized_keys line is trimmed");
    assert_eq!(
        line.split(' ').count(),
        2,
        "authorized_keys line has no comment"
    );
    assert!(line.starts_with(key.algorithm().ssh_name()));
}

/// Signatures have the JWS length and differ for different messages.
pub fn signature_is_jws_encoded(signer: &dyn Signer) {
    let a = signer.sign(b"message a").expect("sign");
    assert_eq!(
        a.as_bytes().len(),
        signer.algorithm().signature_len(),
        "JWS signature length"
    );
    assert_eq!(a.algorithm(), signer.algorithm());
    let b = signer.sign(b"message b").expect("sign");
    assert_ne!(a, b, "different messages give different signatures");
}

/// A signature verifies over its message, and not over another one.
pub fn sign_verifies(signer: &dyn Signer) {
    let key = signer.public_key();
    for message in [&b""[..], b"x", &[0xa5; 4096]] {
        let signature = signer.sign(message).expect("sign");
        key.verify(message, signature.as_bytes())
            .expect("signature verifies with the public key");
        assert!(
            key.verify(b"another message", signature.as_bytes())
                .is_err(),
            "signature must not verify over another message"
        );
    }
}

/// A compact JWS over a challenge-like payload verifies and carries the payload unchanged.
pub fn compact_jws_verifies(signer: &dyn Signer) {
    let payload = br#"{"iss":"example.com","sub":"abc","aud":"example.com","nonce":"00"}"#;
    let compact = jws::compact(signer, payload).expect("compact JWS");
    let got = jws::verify_compact(signer.public_key(), compact.as_bytes()).expect("JWS verifies");
    assert_eq!(got, payload);
    let (head, _) = compact.split_once('.').expect("header");
    let header = URL_SAFE_NO_PAD.decode(head).expect("base64url header");
    assert_eq!(header, jws::header(signer.algorithm()).as_bytes());
    let mut tampered = compact.into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert!(
        jws::verify_compact(signer.public_key(), &tampered).is_err(),
        "a tampered JWS must not verify"
    );
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64")
}
