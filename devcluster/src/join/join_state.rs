//! Join state (`lib/boundkeypair/join_state.go`): a JWT, signed by the bound-keypair CA's key,
//! that records a token's recovery count and bot instance; a recovering client must present the
//! latest one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keybound_signer::{Signer as _, jws};
use serde::Deserialize;
use tonic::Status;

use crate::cluster::{Cluster, unix};
use crate::tokens::{RecoveryMode, Status as TokenStatus, Token};

impl Cluster {
    /// `IssueJoinState`: the signed JWT the client presents on its next recovery.
    pub(super) fn sign_join_state(
        &self,
        token: &Token,
        status: &TokenStatus,
        mode: RecoveryMode,
    ) -> Result<Vec<u8>, Status> {
        let key = self.join_state_key().public_key();
        let header = serde_json::json!({"alg": key.algorithm().jws_alg(), "kid": key.key_id(), "typ": "JWT"});
        let now = unix(self.now());
        let claims = serde_json::json!({
            "iss": self.ca().cluster_name(), "sub": token.bot_name, "aud": [self.ca().cluster_name()],
            "nbf": now - 10, "iat": now,
            "bot_instance_id": status.bound_bot_instance_id, "recovery_sequence": status.recovery_count,
            "recovery_limit": token.bound_keypair.recovery_limit, "recovery_mode": mode.as_str(),
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .join_state_key()
            .sign(jwt.as_bytes())
            .map_err(|e| Status::internal(format!("signing join state: {e}")))?;
        jwt.push('.');
        jwt.push_str(&signature.to_base64url());
        Ok(jwt.into_bytes())
    }

    /// `VerifyJoinState` (`verifyBoundKeypairJoinState`): the join state the client presents
    /// must be the latest one issued. A missing one is refused without a lock; a forged or stale
    /// one locks the token, and the failure is audited.
    pub(super) fn verify_join_state(
        &self,
        token: &Token,
        status: &TokenStatus,
        state: &[u8],
    ) -> Result<(), Status> {
        let failed = || Status::permission_denied("join state verification failed");
        if state.is_empty() {
            // "previous join state is required but was not provided", re-returned as:
            return Err(failed());
        }
        if let Err(why) = self.check_join_state(token, status, state) {
            self.audit_join_state_failed(&token.name, &token.bot_name, &why);
            self.lock(
                &token.name,
                format!(
                    "The join token {:?} has been locked by bot {:?} after a client failed to verify its join state, possibly indicating a stolen keypair.",
                    token.name, token.bot_name
                ),
            );
            return Err(failed());
        }
        Ok(())
    }

    /// The checks of `lib/boundkeypair/join_state.go`, in its order, with its texts: the key ID,
    /// the bound-keypair CA's key of that ID, the signature, issuer, audience and subject (one
    /// minute of leeway on `nbf`/`iat`, no `exp`), then the recovery sequence and instance.
    fn check_join_state(
        &self,
        token: &Token,
        status: &TokenStatus,
        state: &[u8],
    ) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Header {
            kid: Option<String>,
        }
        #[derive(Deserialize)]
        struct Claims {
            iss: String,
            sub: String,
            #[serde(default)]
            aud: Vec<String>,
            nbf: Option<i64>,
            bot_instance_id: Option<String>,
            recovery_sequence: u32,
        }
        let text = std::str::from_utf8(state).map_err(|_| "join state is not a JWT".to_owned())?;
        let header = text
            .split('.')
            .next()
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|h| serde_json::from_slice::<Header>(&h).ok())
            .ok_or("parsing join state: malformed JWT header")?;
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or("required key ID is missing from JWT header")?;
        let key = self.join_state_key().public_key();
        if kid != key.key_id() {
            return Err("join state could not be verified".to_owned());
        }
        let payload = jws::verify_compact(key, state).map_err(|e| e.message().to_owned())?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| format!("parsing join state claims: {e}"))?;
        let cluster = self.ca().cluster_name();
        if claims.iss != cluster {
            return Err("validating join state: invalid issuer claim (iss)".to_owned());
        }
        if !claims.aud.iter().any(|a| a == cluster) {
            return Err("validating join state: invalid audience claim (aud)".to_owned());
        }
        if claims.sub != token.bot_name {
            return Err("validating join state: invalid subject claim (sub)".to_owned());
        }
        if claims.nbf.is_some_and(|nbf| unix(self.now()) + 60 < nbf) {
            return Err("validating join state: token not valid yet (nbf)".to_owned());
        }
        if claims.recovery_sequence != status.recovery_count {
            return Err("recovery counter mismatch".to_owned());
        }
        if claims.bot_instance_id != status.bound_bot_instance_id {
            return Err("bot instance mismatch".to_owned());
        }
        Ok(())
    }
}
