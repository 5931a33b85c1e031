//! The check keybound makes before it signs anything for a server.
//!
//! tbot signs whatever challenge string the server sends (`lib/join/joinclient/join_boundkeypair.go`).
//! keybound first checks that the string is a well-formed Teleport challenge document for its own
//! key, so a hostile or compromised server cannot use the bound key as a signing oracle: a
//! signature keybound produces is only ever a fresh challenge answer for this key.
//!
//! Teleport issues (`lib/boundkeypair/bound_keypair.go`, `IssueChallenge`):
//! `{"iss":<cluster>,"sub":<key ID>,"aud":<cluster>,"exp":iat+60,"nbf":iat-10,"iat":<now>,"nonce":<32 hex>}`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybound_signer::PublicKey;
use serde::Deserialize;

/// The most a challenge document may weigh; Teleport's are about 200 bytes.
pub const MAX_CHALLENGE_LEN: usize = 4096;
/// How far the server's clock may be from ours. Teleport verifies with one minute of leeway;
/// five minutes tolerates a badly synchronised node without making old challenges useful.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The longest validity window keybound accepts (Teleport's is 70 s: nbf = iat − 10 s,
/// exp = iat + 60 s).
pub const MAX_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The claims of a challenge document. Unknown claims are allowed: the checks below already pin
/// the document to this key and this moment.
#[derive(Deserialize)]
struct Document {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    nbf: i64,
    iat: i64,
    nonce: String,
}

/// go-jose writes a one-element audience as a bare string; accept an array too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Checks that `document` is a fresh Teleport challenge for `key`. The error is a short phrase
/// saying what is wrong, for the "refused to sign" message.
pub fn check(document: &str, key: &PublicKey, now: SystemTime) -> Result<(), String> {
    if document.len() > MAX_CHALLENGE_LEN {
        return Err(format!(
            "the challenge is {} bytes, more than {MAX_CHALLENGE_LEN}",
            document.len()
        ));
    }
    let doc: Document = serde_json::from_str(document)
        .map_err(|e| format!("the challenge is not a Teleport challenge document ({e})"))?;
    if doc.iss.is_empty() {
        return Err("the challenge has an empty issuer".to_owned());
    }
    let key_id = key.key_id();
    if doc.sub != key_id {
        return Err(format!(
            "the challenge is for key ID {:?}, not this key's {key_id:?}",
            doc.sub
        ));
    }
    let audience_ok = match &doc.aud {
        Audience::One(a) => !a.is_empty(),
        Audience::Many(list) => list.iter().any(|a| !a.is_empty()),
    };
    if !audience_ok {
        return Err("the challenge has no audience".to_owned());
    }
    let nonce_ok =
        (16..=128).contains(&doc.nonce.len()) && doc.nonce.bytes().all(|b| b.is_ascii_graphic());
    if !nonce_ok {
        return Err(
            "the challenge has no usable nonce (16 to 128 printable characters)".to_owned(),
        );
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let skew = CLOCK_SKEW.as_secs() as i64;
    if !(doc.nbf <= doc.iat && doc.iat < doc.exp) {
        return Err("the challenge's nbf, iat and exp are out of order".to_owned());
    }
    if doc.exp - doc.nbf > MAX_WINDOW.as_secs() as i64 {
        return Err(format!(
            "the challenge is valid for {} s, longer than the {} s keybound accepts",
            doc.exp - doc.nbf,
            MAX_WINDOW.as_secs()
        ));
    }
    if (doc.iat - now).abs() > skew {
        return Err(format!(
            "the challenge was issued {} s from now; check the clocks (keybound allows {} s of skew)",
            doc.iat - now,
            skew
        ));
    }
    if doc.exp + skew < now {
        return Err("the challenge has expired".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PublicKey {
        PublicKey::from_ed25519_bytes(&[
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ])
        .unwrap()
    }

    const NOW: u64 = 1_760_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn doc(sub: &str, iat: i64, extra: &str) -> String {
        format!(
            r#"{{"iss":"example.com","sub":"{sub}","aud":"example.com","exp":{},"nbf":{},"iat":{iat},"nonce":"0123456789abcdef0123456789abcdef"{extra}}}"#,
            iat + 60,
            iat - 10
        )
    }

    #[test]
    fn teleports_challenge_passes() {
        let k = key();
        assert_eq!(
            check(&doc(&k.key_id(), NOW as i64, ""), &k, at(NOW)),
            Ok(())
        );
        // An array audience and extra claims are fine; a little clock skew is fine.
        let arr = doc(&k.key_id(), NOW as i64, "")
            .replace(r#""aud":"example.com""#, r#""aud":["example.com"]"#);
        assert_eq!(check(&arr, &k, at(NOW + 100)), Ok(()));
        assert_eq!(
            check(&doc(&k.key_id(), NOW as i64, r#","jti":"x""#), &k, at(NOW)),
            Ok(())
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let k = key();
        let id = k.key_id();
        let n = NOW as i64;
        let cases = [
            (doc("someone-elses-key-id", n, ""), "not this key's"),
            (
                "just some bytes".to_owned(),
                "not a Teleport challenge document",
            ),
            (
                r#"{"sub":"x"}"#.to_owned(),
                "not a Teleport challenge document",
            ),
            (
                doc(&id, n, "").replace("0123456789abcdef0123456789abcdef", ""),
                "no usable nonce",
            ),
            (
                doc(&id, n, "").replace(r#","nonce":"0123456789abcdef0123456789abcdef""#, ""),
                "missing field `nonce`",
            ),
            (doc(&id, n - 3600, ""), "issued -3600 s from now"),
            (doc(&id, n + 3600, ""), "issued 3600 s from now"),
            (
                doc(&id, n, "").replace(
                    &format!(r#""exp":{}"#, n + 60),
                    &format!(r#""exp":{}"#, n + 86400 * 365),
                ),
                "valid for",
            ),
            (
                doc(&id, n, "").replace(r#""iss":"example.com""#, r#""iss":"""#),
                "empty issuer",
            ),
            (
                format!(r#"{{"x":"{}"}}"#, "a".repeat(5000)),
                "more than 4096",
            ),
        ];
        for (document, expected) in cases {
            let err = check(&document, &k, at(NOW)).unwrap_err();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }
}
