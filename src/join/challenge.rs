//! The check keybound makes before it signs anything for a server.
//!
//! tbot signs whatever challenge string the server sends (`lib/join/joinclient/join_boundkeypair.go`).
//! keybound first checks that the string is a well-formed Teleport challenge document for its own
//! key, so a hostile or compromised server cannot use the bound key as a signing oracle: a
//! signature keybound produces is only ever a fresh challenge answer for this key.
//!
//! Teleport issues (`lib/boundkeypair/bound_keypair.go`, `IssueChallenge`):
//! `{"iss":<cluster>,"sub":<key ID>,"aud":<cluster>,"exp":iat+60,"nbf":iat-10,"iat":<now>,"nonce":<32 hex>}`,
//! where `<cluster>` is the cluster's name (`GetClusterName()`, in
//! `lib/join/boundkeypair/boundkeypair.go` and the legacy `lib/auth/join_bound_keypair.go`)
//! and no other claim is ever set. keybound accepts exactly
//! these claims, with the issuer as the one audience, and, when it holds an identity from an
//! earlier join, the issuer must be that identity's cluster: a cluster cannot pass another
//! cluster's challenge to the same key and collect the answer.

use std::time::{Duration, SystemTime};

use keybound_signer::PublicKey;
use serde::Deserialize;

use crate::servertime;

/// The most a challenge document may weigh; Teleport's are about 200 bytes.
pub const MAX_CHALLENGE_LEN: usize = 4096;
/// How far the server's clock may be from ours. Teleport verifies with one minute of leeway;
/// five minutes tolerates a badly synchronised node without making old challenges useful.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The longest validity window keybound accepts (Teleport's is 70 s: nbf = iat − 10 s,
/// exp = iat + 60 s).
pub const MAX_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The claims of a challenge document: exactly those Teleport's `ChallengeDocument` carries
/// (go-jose `jwt.Claims` with `omitempty` on each claim, and `IssueChallenge` leaves `jti`
/// empty), each once. Anything else is not a Teleport challenge, and a claim keybound does not
/// know could mean something to whoever reads the signed document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    nbf: i64,
    iat: i64,
    nonce: String,
}

/// go-jose writes a one-element audience as a bare string; accept a one-element array too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Checks that `document` is a fresh Teleport challenge for `key`, issued by `cluster` when
/// keybound knows which cluster it joins (from the identity it holds). The error is a short
/// phrase saying what is wrong, for the "refused to sign" message.
pub fn check(
    document: &str,
    key: &PublicKey,
    cluster: Option<&str>,
    now: SystemTime,
) -> Result<(), String> {
    if document.len() > MAX_CHALLENGE_LEN {
        return Err(format!(
            "the challenge is {} bytes, more than {MAX_CHALLENGE_LEN}",
            document.len()
        ));
    }
    let doc: Document = serde_json::from_str(document).map_err(|e| {
        if e.to_string().starts_with("unknown field") {
            format!(
                "the challenge is not a Teleport challenge document: it carries a claim \
                 Teleport's challenges never carry ({e})"
            )
        } else {
            format!("the challenge is not a Teleport challenge document ({e})")
        }
    })?;
    if doc.iss.is_empty() {
        return Err("the challenge has an empty issuer".to_owned());
    }
    // Teleport's cluster is both the issuer and the only audience (`IssueChallenge`).
    let audience = match &doc.aud {
        Audience::One(a) => Some(a),
        Audience::Many(list) if list.len() == 1 => list.first(),
        Audience::Many(_) => None,
    };
    if audience != Some(&doc.iss) {
        return Err(format!(
            "the challenge's audience is not its issuer {:?}, as in every Teleport challenge",
            doc.iss
        ));
    }
    if let Some(cluster) = cluster
        && doc.iss != cluster
    {
        return Err(format!(
            "the challenge was issued by cluster {:?}, but keybound joins cluster {cluster:?}: \
             another cluster's challenge, passed on to collect a signature",
            doc.iss
        ));
    }
    let key_id = key.key_id();
    if doc.sub != key_id {
        return Err(format!(
            "the challenge is for key ID {:?}, not this key's {key_id:?}",
            doc.sub
        ));
    }
    let nonce_ok =
        (16..=128).contains(&doc.nonce.len()) && doc.nonce.bytes().all(|b| b.is_ascii_graphic());
    if !nonce_ok {
        return Err(
            "the challenge has no usable nonce (16 to 128 printable characters)".to_owned(),
        );
    }
    check_times(doc.nbf, doc.iat, doc.exp, now)
}

/// The time claims: in order, a window no longer than [`MAX_WINDOW`], issued within
/// [`CLOCK_SKEW`] of `now` and not expired. Every step is checked arithmetic
/// ([`servertime`]): the server picks these numbers.
fn check_times(nbf: i64, iat: i64, exp: i64, now: SystemTime) -> Result<(), String> {
    let out_of_range = || {
        format!(
            "the challenge's times are out of range (nbf {nbf}, iat {iat}, exp {exp}); \
             Teleport's are the current time"
        )
    };
    let now = servertime::unix_seconds(now)
        .ok_or_else(|| "this machine's clock is out of range".to_owned())?;
    let skew = servertime::whole_seconds(CLOCK_SKEW);
    let issued = servertime::seconds_between(now, iat).ok_or_else(out_of_range)?;
    if issued.unsigned_abs() > skew.unsigned_abs() {
        let when = if issued > 0 {
            format!("{issued} s in the future")
        } else {
            format!("{} s ago", issued.unsigned_abs())
        };
        return Err(format!(
            "the challenge was issued {when} by this machine's clock; check the clocks \
             (keybound allows {skew} s of skew)"
        ));
    }
    if !(nbf <= iat && iat < exp) {
        return Err("the challenge's nbf, iat and exp are out of order".to_owned());
    }
    let window = servertime::seconds_between(nbf, exp).ok_or_else(out_of_range)?;
    let max_window = servertime::whole_seconds(MAX_WINDOW);
    if window > max_window {
        return Err(format!(
            "the challenge is valid for {window} s, longer than the {max_window} s keybound accepts"
        ));
    }
    let last_use = servertime::add_seconds(exp, skew).ok_or_else(out_of_range)?;
    if last_use < now {
        return Err("the challenge has expired".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn key() -> PublicKey {
        PublicKey::from_ed25519_bytes(&[
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ])
        .unwrap()
    }

    const NOW: i64 = 1_760_000_000;
    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    /// A document with Teleport's claims in Teleport's order, and these times.
    fn timed(sub: &str, nbf: i64, iat: i64, exp: i64) -> String {
        format!(
            r#"{{"iss":"example.com","sub":"{sub}","aud":"example.com","exp":{exp},"nbf":{nbf},"iat":{iat},"nonce":"{NONCE}"}}"#
        )
    }

    /// Teleport's document for `iat`, with `extra` claims appended.
    fn doc(sub: &str, iat: i64, extra: &str) -> String {
        let mut d = timed(sub, iat - 10, iat, iat + 60);
        d.insert_str(d.len() - 1, extra);
        d
    }

    fn refused(document: &str, cluster: Option<&str>) -> String {
        check(document, &key(), cluster, at(NOW)).expect_err(document)
    }

    #[test]
    fn teleports_challenge_passes() {
        let k = key();
        let id = k.key_id();
        assert_eq!(check(&doc(&id, NOW, ""), &k, None, at(NOW)), Ok(()));
        // The identity's cluster, a one-element array audience, a little clock skew.
        assert_eq!(
            check(&doc(&id, NOW, ""), &k, Some("example.com"), at(NOW)),
            Ok(())
        );
        let arr = doc(&id, NOW, "").replace(r#""aud":"example.com""#, r#""aud":["example.com"]"#);
        assert_eq!(check(&arr, &k, None, at(NOW + 100)), Ok(()));
    }

    #[test]
    fn what_teleport_never_sends_is_refused() {
        let id = key().key_id();
        let n = NOW;
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
            (doc(&id, n, "").replace(NONCE, ""), "no usable nonce"),
            (
                doc(&id, n, "").replace(&format!(r#","nonce":"{NONCE}""#), ""),
                "missing field `nonce`",
            ),
            (
                doc(&id, n, "").replace(r#""iss":"example.com""#, r#""iss":"""#),
                "empty issuer",
            ),
            (
                format!(r#"{{"x":"{}"}}"#, "a".repeat(5000)),
                "more than 4096",
            ),
            // Claims: none beyond Teleport's, none twice.
            (
                doc(&id, n, r#","jti":"x""#),
                "a claim Teleport's challenges never carry (unknown field `jti`",
            ),
            (doc(&id, n, r#","scope":"admin""#), "unknown field `scope`"),
            (
                doc(&id, n, r#","iss":"example.com""#),
                "duplicate field `iss`",
            ),
            // Teleport's cluster is the issuer and the one audience.
            (
                doc(&id, n, "").replace(r#""aud":"example.com""#, r#""aud":"payments-api""#),
                "audience is not its issuer",
            ),
            (
                doc(&id, n, "").replace(
                    r#""aud":"example.com""#,
                    r#""aud":["example.com","payments-api"]"#,
                ),
                "audience is not its issuer",
            ),
            (
                doc(&id, n, "").replace(r#""aud":"example.com""#, r#""aud":[]"#),
                "audience is not its issuer",
            ),
            // Times are whole seconds, as go-jose writes them.
            (
                doc(&id, n, "").replace(&format!(r#""iat":{n}"#), r#""iat":1.76e9"#),
                "not a Teleport challenge document",
            ),
        ];
        for (document, expected) in cases {
            let err = refused(&document, None);
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }

    #[test]
    fn another_clusters_challenge_is_refused_once_keybound_knows_its_cluster() {
        let id = key().key_id();
        let err = refused(&doc(&id, NOW, ""), Some("prod.example.com"));
        assert!(
            err.contains(
                r#"issued by cluster "example.com", but keybound joins cluster "prod.example.com""#
            ),
            "{err}"
        );
    }

    /// Each bound of the time checks, just inside and just outside.
    #[test]
    fn time_boundaries() {
        let id = key().key_id();
        let skew = CLOCK_SKEW.as_secs() as i64;
        let window = MAX_WINDOW.as_secs() as i64;
        let ok = |nbf, iat, exp| check(&timed(&id, nbf, iat, exp), &key(), None, at(NOW));
        // Issued within the skew, either way.
        assert_eq!(ok(NOW + skew - 10, NOW + skew, NOW + skew + 60), Ok(()));
        assert_eq!(ok(NOW - skew - 10, NOW - skew, NOW - skew + 60), Ok(()));
        let err = ok(NOW + skew - 9, NOW + skew + 1, NOW + skew + 61).unwrap_err();
        assert!(err.contains("issued 301 s in the future"), "{err}");
        let err = ok(NOW - skew - 11, NOW - skew - 1, NOW - skew + 59).unwrap_err();
        assert!(
            err.contains("issued 301 s ago by this machine's clock"),
            "{err}"
        );
        assert!(!err.contains('-'), "no signed number: {err}");
        // The window, up to MAX_WINDOW.
        assert_eq!(ok(NOW - 10, NOW, NOW - 10 + window), Ok(()));
        let err = ok(NOW - 10, NOW, NOW - 9 + window).unwrap_err();
        assert!(
            err.contains("valid for 601 s, longer than the 600 s"),
            "{err}"
        );
        // Order: nbf <= iat < exp.
        assert_eq!(ok(NOW, NOW, NOW + 1), Ok(()));
        for (nbf, iat, exp) in [(NOW + 1, NOW, NOW + 60), (NOW - 10, NOW, NOW)] {
            let err = ok(nbf, iat, exp).unwrap_err();
            assert!(err.contains("out of order"), "{err}");
        }
    }

    /// Values at the ends of `i64`: refused with an error, never wrapped into an endless
    /// window (release builds) and never a panic (debug builds).
    #[test]
    fn extreme_times_are_refused_not_wrapped() {
        let id = key().key_id();
        let cases = [
            // exp - nbf wraps to -302 unchecked: a challenge that never expires.
            (i64::MIN, NOW, i64::MAX - 301, "out of range"),
            (i64::MIN, NOW, i64::MAX, "out of range"),
            (i64::MIN, i64::MIN, NOW, "out of range"),
            (NOW - 10, i64::MIN, NOW + 60, "out of range"),
            (NOW - 10, i64::MAX, i64::MAX, "issued"),
            (NOW - 10, NOW, i64::MAX, "valid for"),
            (i64::MIN + 1, NOW, NOW + 60, "out of range"),
            (NOW - 10, NOW, i64::MIN, "out of order"),
        ];
        for (nbf, iat, exp, expected) in cases {
            let document = timed(&id, nbf, iat, exp);
            let err = refused(&document, None);
            assert!(
                err.contains(expected),
                "{document}: {expected:?} not in {err:?}"
            );
        }
    }
}
