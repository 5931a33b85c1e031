//! What a join takes and gives: [`JoinParams`], [`Joined`], and the limits every join keeps.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keybound_signer::Signer;

use crate::bkp::Standard;
use crate::identity::Identity;
use crate::tls::Trust;
use crate::values::HostPort;
use keybound_teleport::suite::Suite;

/// The most one join may take, fallback included.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(45);

/// The largest join message keybound reads (tonic's default is 4 MiB). Teleport's are a few
/// kilobytes: the largest, the result, carries the bot's certificates and the cluster's CAs.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// What a join needs.
#[derive(Clone)]
pub struct JoinParams {
    /// The Teleport Proxy (web port, TLS routing), or Auth itself when `direct`.
    pub proxy: HostPort,
    /// `proxy` is Auth's own address (`auth_server`), joined over TLS with ALPN `h2`.
    pub direct: bool,
    /// How to verify the Proxy.
    pub trust: Trust,
    /// The bound_keypair token's name.
    pub token: String,
    /// The cluster's name, when keybound holds an identity from it: a challenge issued by
    /// another cluster is then refused ([`super::challenge::check`]). `None` for a first join, which
    /// takes the name the cluster gives.
    pub cluster: Option<String>,
    /// Requested certificate lifetime.
    pub credential_ttl: Duration,
    /// The static key; `None` in standard mode, where `standard` holds the keys.
    pub signer: Option<Arc<dyn Signer>>,
    /// Standard mode: the client state's keys and join state, and the registration secret
    /// ([`crate::bkp`]); `None` with a static key.
    pub standard: Option<Standard>,
    /// Upper bound for the whole join.
    pub timeout: Duration,
}

/// Which RPC a join used.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Rpc {
    /// `/teleport.join.v1.JoinService/Join`.
    Join,
    /// `/proto.JoinService/RegisterUsingBoundKeypairMethod`.
    Legacy,
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Join => "teleport.join.v1.JoinService/Join",
            Self::Legacy => "proto.JoinService/RegisterUsingBoundKeypairMethod (legacy)",
        })
    }
}

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    /// The bot identity.
    pub identity: Identity,
    /// The RPC that worked.
    pub rpc: Rpc,
    /// The cluster's suite, as the join learned it.
    pub suite: Suite,
    /// The public key now bound to the token, when the cluster says.
    pub bound_public_key: Option<String>,
    /// Whether the join ran over the bot's authenticated connection (a soft rejoin).
    pub authenticated: bool,
    /// The join state the result carried (stored in standard mode; static keys keep none).
    pub join_state: Vec<u8>,
}

pub(super) fn expires(ttl: Duration) -> prost_types::Timestamp {
    prost_types::Timestamp::from(expiry_after(ttl))
}

/// Now plus `ttl`, saturating at a day past Teleport's 24 h cap for absurd lifetimes.
pub fn expiry_after(ttl: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(ttl)
        .unwrap_or(now + Duration::from_secs(48 * 60 * 60))
}
