//! The bound-keypair challenge (`lib/boundkeypair/bound_keypair.go`): a document the client's
//! key signs, and the checks of its answer (`ChallengeValidator`), with Teleport's codes.

use std::time::Duration;

use keybound_signer::{PublicKey, jws};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tonic::Status;

use super::peer::Peer;
use crate::cluster::{Cluster, unix};

/// Go-jose's leeway in Teleport's challenge validation.
const LEEWAY: Duration = Duration::from_secs(60);

/// The challenge document (`ChallengeDocument`: go-jose `jwt.Claims` plus `nonce`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq)]
struct Document {
    iss: String,
    sub: String,
    #[serde(deserialize_with = "audience")]
    aud: Vec<String>,
    exp: i64,
    nbf: i64,
    iat: i64,
    nonce: String,
}

fn audience<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum A {
        One(String),
        Many(Vec<String>),
    }
    Ok(match A::deserialize(d)? {
        A::One(a) => vec![a],
        A::Many(v) => v,
    })
}

/// Why a challenge answer was refused, mapped to Teleport's codes: go-jose's own errors are
/// plain errors (UNKNOWN); the time-field and nonce checks are AccessDenied.
enum ChallengeError {
    Plain(String),
    Denied(&'static str),
}

impl Cluster {
    /// `IssueChallenge`: a challenge document for `key`, and its JSON as Go writes it.
    fn issue_challenge(&self, key: &PublicKey) -> (Document, String) {
        let now = unix(self.now());
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let doc = Document {
            iss: self.ca().cluster_name().to_owned(),
            sub: key.key_id(),
            aud: vec![self.ca().cluster_name().to_owned()],
            exp: now + 60,
            nbf: now - 10,
            iat: now,
            nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
        };
        // Go's encoding/json order for the embedded claims plus nonce; a one-element audience is
        // a bare string (go-jose `Audience.MarshalJSON`).
        let json = serde_json::json!({
            "iss": doc.iss, "sub": doc.sub, "aud": doc.aud[0], "exp": doc.exp, "nbf": doc.nbf,
            "iat": doc.iat, "nonce": doc.nonce,
        });
        let text = format!(
            r#"{{"iss":{},"sub":{},"aud":{},"exp":{},"nbf":{},"iat":{},"nonce":{}}}"#,
            json["iss"],
            json["sub"],
            json["aud"],
            json["exp"],
            json["nbf"],
            json["iat"],
            json["nonce"]
        );
        (doc, text)
    }

    /// `ChallengeValidator.ValidateChallengeResponse`.
    fn validate(
        &self,
        key: &PublicKey,
        issued: &Document,
        solution: &[u8],
    ) -> Result<(), ChallengeError> {
        let payload = jws::verify_compact(key, solution).map_err(|e| {
            ChallengeError::Plain(format!("parsing signed response: {}", e.message()))
        })?;
        let doc: Document = serde_json::from_slice(&payload).map_err(|e| {
            ChallengeError::Plain(format!(
                "go-jose/go-jose: error in cryptographic primitive: {e}"
            ))
        })?;
        let now = unix(self.now());
        let leeway = LEEWAY.as_secs() as i64;
        let claims = |what: &str| {
            ChallengeError::Plain(format!(
                "validating challenge claims: go-jose/go-jose/jwt: validation failed, {what}"
            ))
        };
        if doc.iss != issued.iss {
            return Err(claims("invalid issuer claim (iss)"));
        }
        if doc.sub != issued.sub {
            return Err(claims("invalid subject claim (sub)"));
        }
        if !doc.aud.iter().any(|a| a == self.ca().cluster_name()) {
            return Err(claims("invalid audience claim (aud)"));
        }
        if now + leeway < doc.nbf {
            return Err(claims("token not valid yet (nbf)"));
        }
        if now - leeway > doc.exp {
            return Err(claims("token is expired (exp)"));
        }
        if now + leeway < doc.iat {
            return Err(claims("token issued in the future (iat)"));
        }
        if (doc.iat, doc.nbf, doc.exp) != (issued.iat, issued.nbf, issued.exp) {
            return Err(ChallengeError::Denied("invalid challenge document"));
        }
        if !bool::from(doc.nonce.as_bytes().ct_eq(issued.nonce.as_bytes())) {
            return Err(ChallengeError::Denied("invalid nonce"));
        }
        Ok(())
    }

    /// Challenges `key` through `peer`. `onboarding` maps every failure to AccessDenied("failed
    /// to complete challenge"); otherwise the cause's own code comes through, wrapped.
    pub(super) async fn challenge<P: Peer>(
        &self,
        peer: &mut P,
        key: &PublicKey,
        onboarding: bool,
    ) -> Result<(), Status> {
        let (issued, document) = self.issue_challenge(key);
        let solution = peer.challenge(&key.to_openssh(), &document).await?;
        self.record_solution();
        match self.validate(key, &issued, &solution) {
            Ok(()) => Ok(()),
            Err(_) if onboarding => Err(Status::permission_denied("failed to complete challenge")),
            Err(ChallengeError::Plain(m)) => Err(Status::unknown(format!(
                "validating challenge response: {m}"
            ))),
            Err(ChallengeError::Denied(m)) => Err(Status::permission_denied(m)),
        }
    }
}
