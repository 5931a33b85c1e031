//! Audit-style log lines for what Teleport records as bound-keypair audit events
//! (`lib/events/codes.go`, emitted by `lib/join/boundkeypair/boundkeypair.go`): a recovery
//! (`TBK001I`), a rotation (`TBK002I`) and a failed join-state verification (`TBK003W`), each
//! with the fields Teleport's event carries, success or not. The dev cluster logs them, one
//! line each (target `keybound_devcluster::audit`), where Teleport writes its audit log.

use keybound_signer::PublicKey;
use tracing::{info, warn};

use super::bound_keypair::Attempt;
use crate::cluster::Cluster;

/// `join_token.bound_keypair.recovery`.
const RECOVERY: (&str, &str) = ("join_token.bound_keypair.recovery", "TBK001I");
/// `join_token.bound_keypair.rotation`.
const ROTATION: (&str, &str) = ("join_token.bound_keypair.rotation", "TBK002I");
/// `join_token.bound_keypair.join_state_verification_failed`.
const JOIN_STATE_FAILED: (&str, &str) = (
    "join_token.bound_keypair.join_state_verification_failed",
    "TBK003W",
);

impl Cluster {
    /// A recovery (a first join counts as one): `Ok` with the recovery count after it, or the
    /// error that refused it.
    pub(super) fn audit_recovery(
        &self,
        attempt: &Attempt<'_>,
        key: Option<&PublicKey>,
        result: Result<u32, &str>,
    ) {
        let (event, code) = RECOVERY;
        let token = &attempt.token.name;
        let bot = &attempt.token.bot_name;
        let public_key = key.map(PublicKey::to_openssh).unwrap_or_default();
        let mode = attempt.token.bound_keypair.mode().as_str();
        let remote = attempt.input.remote_addr.as_deref().unwrap_or("");
        match result {
            Ok(count) => info!(
                target: "keybound_devcluster::audit", event, code, success = true, token, bot, public_key,
                recovery_count = count, recovery_mode = mode, remote_addr = remote,
                "bound keypair recovery"
            ),
            Err(error) => warn!(
                target: "keybound_devcluster::audit", event, code, success = false, token, bot, public_key,
                recovery_count = attempt.status.recovery_count, recovery_mode = mode,
                remote_addr = remote, error, "bound keypair recovery failed"
            ),
        }
    }

    /// A rotation from `previous`: `Ok` with the new key, or the error that stopped it.
    pub(super) fn audit_rotation(
        &self,
        attempt: &Attempt<'_>,
        previous: &PublicKey,
        result: Result<&PublicKey, &str>,
    ) {
        let (event, code) = ROTATION;
        let token = &attempt.token.name;
        let bot = &attempt.token.bot_name;
        let previous_public_key = previous.to_openssh();
        match result {
            Ok(new) => info!(
                target: "keybound_devcluster::audit", event, code, success = true, token, bot, previous_public_key,
                new_public_key = new.to_openssh(), "bound keypair rotation"
            ),
            Err(error) => warn!(
                target: "keybound_devcluster::audit", event, code, success = false, token, bot, previous_public_key,
                error, "bound keypair rotation failed"
            ),
        }
    }

    /// A join state that failed verification (the token is locked for it).
    pub(super) fn audit_join_state_failed(&self, token: &str, bot: &str, error: &str) {
        let (event, code) = JOIN_STATE_FAILED;
        warn!(
            target: "keybound_devcluster::audit", event, code, success = false, token, bot, error,
            "bound keypair join state verification failed"
        );
    }
}
