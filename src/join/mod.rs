//! The bound-keypair join, as tbot does it with a static key (`lib/join/joinclient/`).
//!
//! 1. Open TLS to the Proxy with ALPN `teleport-proxy-grpc` ([`crate::transport`]) and start the
//!    bidirectional stream `/teleport.join.v1.JoinService/Join`.
//! 2. Send `ClientInit{join_method: "bound_keypair", token_name, system_role: "Bot"}`.
//! 3. Receive `ServerInit`, which names the cluster's signature algorithm suite (keybound sends
//!    step 4's message right behind `ClientInit`, for the key type it expects, and starts again
//!    with the right one when the suite calls for another: `v1::join_new`). If instead the
//!    call fails with UNIMPLEMENTED, or the first response fails for a connection-level reason
//!    (any code but PERMISSION_DENIED or INVALID_ARGUMENT), fall back to the legacy RPC
//!    `/proto.JoinService/RegisterUsingBoundKeypairMethod`, learning the suite from
//!    `/webapi/find` first, since that RPC has no `ServerInit`.
//! 4. Make a subject keypair for the suite ([`crate::subject_key`]: RSA-2048 for legacy, P-256 otherwise)
//!    and send `BoundKeypairInit` with its PKIX DER and SSH wire public keys and
//!    `expires = now + credential_ttl`; no registration secret, no join state (static keys keep
//!    none).
//! 5. Answer each server message in whatever order it comes:
//!    - a further `ServerInit` (some 18.x builds send two, the second without a suite): ignored;
//!    - a challenge: keybound checks that it names its own public key and that the document is a
//!      fresh Teleport challenge for that key ([`challenge`]; the decisions are in `join/exchange.rs`), then signs it as a compact JWS and
//!      sends the solution. Anything else gets `GivingUp(CHALLENGE_SOLUTION_FAILED)` and nothing
//!      is signed;
//!    - a rotation request: a static key cannot rotate, so `GivingUp(CHALLENGE_SOLUTION_FAILED)`
//!      and an error telling the admin what to do;
//!    - the result: the bot's certificates ([`Identity`](crate::identity::Identity)).
//!
//! The whole join, fallback included, is bounded by [`JOIN_TIMEOUT`], below the server's one
//! minute (`joinRequestTimeout` in `lib/join/joinv1/server.go`).

pub mod challenge;
mod error;
mod exchange;
mod legacy;
mod types;
mod v1;

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::info;

pub use error::JoinError;
use error::{status_error, unreachable_error};
pub use exchange::vet_challenge;
use legacy::join_legacy;
pub use types::{JOIN_TIMEOUT, JoinParams, Joined, MAX_MESSAGE, Rpc, expiry_after};
pub use v1::GIVE_UP_WAIT;
use v1::{Attempt, join_new};

use crate::tls::client_config;
use crate::{transport, webapi};
use keybound_teleport::suite::Suite;

/// The suite a first join makes its subject key for before the cluster names its own: P-256,
/// the key type of `balanced-v1` (Teleport's default), `fips-v1` and `hsm-v1`.
const FIRST_GUESS: Suite = Suite::BalancedV1;

/// Joins the cluster once.
pub async fn join(params: &JoinParams) -> Result<Joined, JoinError> {
    let result = match tokio::time::timeout(params.timeout, join_inner(params)).await {
        Ok(result) => result,
        Err(_) => Err(JoinError::TimedOut(params.timeout)),
    };
    result.map_err(|e| e.in_mode(params))
}

async fn join_inner(params: &JoinParams) -> Result<Joined, JoinError> {
    let channel = if params.direct {
        let tls = client_config(&params.trust, &[transport::ALPN_H2])
            .map_err(|e| JoinError::Config(format!("{e:#}")))?;
        transport::connect_with(&params.proxy, tls, transport::Dial::auth()).await
    } else {
        let grpc_tls = client_config(
            &params.trust,
            &[transport::ALPN_PROXY_GRPC, transport::ALPN_H2],
        )
        .map_err(|e| JoinError::Config(format!("{e:#}")))?;
        transport::connect(&params.proxy, grpc_tls).await
    }
    .map_err(|e| unreachable_error(&params.proxy, &e))?;
    let answered = AtomicBool::new(false);
    // `BoundKeypairInit` goes with `ClientInit`, for the key type of every suite but `legacy`
    // (P-256); a `legacy` cluster costs the round trip back (see `join_new`).
    match join_new(channel.clone(), params, Some(FIRST_GUESS), &answered).await {
        Ok(joined) => Ok(joined),
        Err(Attempt::Final(error)) => Err(error),
        Err(Attempt::Fallback(reason)) => {
            info!(%reason, "JoinService.Join is not available; falling back to the legacy RPC");
            if params.direct {
                return Err(JoinError::Refused(format!(
                    "Auth at {} does not serve JoinService.Join ({reason}), and the legacy RPC \
                     needs the cluster's suite from a Proxy: set proxy_server instead of auth_server",
                    params.proxy
                )));
            }
            // No ServerInit on the legacy RPC: ask the proxy for the suite first, as tbot does
            // (`webclient.Find`).
            let web_tls = client_config(&params.trust, &[b"http/1.1"])
                .map_err(|e| JoinError::Config(format!("{e:#}")))?;
            // Said with why the new RPC was left: a proxy that dropped the join stream before
            // `ServerInit` ends here too, and the web API's failure alone would not tell it.
            let found = webapi::find(&params.proxy, web_tls).await.map_err(|e| {
                JoinError::Unreachable(format!(
                    "JoinService.Join ended before ServerInit ({reason}), and the legacy RPC's \
                     /webapi/find failed: {e:#}"
                ))
            })?;
            // The proxy names its cluster too: a challenge must come from that one.
            let mut params = params.clone();
            if params.cluster.is_none() {
                params.cluster = found.cluster_name();
            }
            join_legacy(channel, &params, found.suite, &answered).await
        }
    }
}

/// A failed rejoin, and whether the cluster may nonetheless have completed it.
#[derive(Debug)]
pub struct RejoinError {
    /// What went wrong.
    pub error: JoinError,
    /// The challenge answer had been sent when it went wrong: the cluster may have issued new
    /// certificates (and moved the bot's generation on) that never arrived. The held identity
    /// is then one generation behind, and rejoining with it would get the token locked.
    pub in_doubt: bool,
}

/// Re-joins over the bot's authenticated connection to Auth, presenting its current
/// certificate: a soft rejoin, which keeps the bot instance and uses no recovery
/// (`lib/join/joinclient` `joinViaAuthClient`). The messages are the same as an unauthenticated
/// join's; Auth takes the instance and generation from the certificate. `JoinService.Join`
/// first, the legacy RPC when Auth does not serve it (the suite then comes from `Ping`).
/// `BoundKeypairInit` goes out with `ClientInit`, for a subject key of the current identity's
/// type, which is the suite's unless the cluster changed it since.
pub async fn rejoin(
    params: &JoinParams,
    auth: &crate::auth::AuthClient,
) -> Result<Joined, RejoinError> {
    let answered = AtomicBool::new(false);
    let inner = async {
        let mut joined = match join_new(
            auth.channel(),
            params,
            Some(auth.subject_suite()),
            &answered,
        )
        .await
        {
            Ok(joined) => joined,
            Err(Attempt::Final(error)) => return Err(error),
            Err(Attempt::Fallback(reason)) => {
                info!(%reason, "JoinService.Join is not available on Auth; falling back to the legacy RPC");
                let ping = auth.ping().await.map_err(|s| status_error(&s))?;
                let suite = Suite::from_number(ping.signature_algorithm_suite)
                    .unwrap_or(Suite::Unspecified);
                join_legacy(auth.channel(), params, suite, &answered).await?
            }
        };
        joined.authenticated = true;
        Ok(joined)
    };
    let result = match tokio::time::timeout(params.timeout, inner).await {
        Ok(result) => result,
        Err(_) => Err(JoinError::TimedOut(params.timeout)),
    };
    result.map_err(|error| RejoinError {
        error: error.in_mode(params),
        in_doubt: answered.load(Ordering::SeqCst),
    })
}
