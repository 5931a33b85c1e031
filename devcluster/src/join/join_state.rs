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

    /// `VerifyJoinState`: the join state the client presents must be the latest one issued;
    /// a forged or stale one locks the token.
    pub(super) fn verify_join_state(
        &self,
        token: &Token,
        status: &TokenStatus,
        state: &[u8],
    ) -> Result<(), Status> {
        #[derive(Deserialize)]
        struct Claims {
            iss: String,
            bot_instance_id: Option<String>,
            recovery_sequence: u32,
        }
        let failed = || Status::permission_denied("join state verification failed");
        if state.is_empty() {
            // "previous join state is required but was not provided", re-returned as:
            return Err(failed());
        }
        let verified = jws::verify_compact(self.join_state_key().public_key(), state)
            .ok()
            .and_then(|payload| serde_json::from_slice::<Claims>(&payload).ok())
            .filter(|c| {
                c.iss == self.ca().cluster_name()
                    && c.recovery_sequence == status.recovery_count
                    && c.bot_instance_id == status.bound_bot_instance_id
            });
        if verified.is_none() {
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
}
