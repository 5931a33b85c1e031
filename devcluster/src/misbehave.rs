//! The dev cluster's misbehaviours: a hostile or broken server on purpose, for testing clients
//! (`--misbehave NAME`), and what the challenge ones do to a challenge.

use keybound_signer::{Algorithm, PublicKey, Signer as _};
use keybound_signer_soft::SoftSigner;

// For the documentation's links only: the configuration names what the `hostile-*`
// misbehaviours present (the misbehaviours' documentation is also their `--help` text, so
// its links must stay as they are written).
#[cfg(doc)]
use crate::config::DevClusterConfig;

/// Ways the dev cluster can misbehave on purpose, for testing clients (`--misbehave NAME`): a
/// hostile or broken server. [`Misbehaviour::ALL`] lists them, each with its name and what it does.
macro_rules! misbehaviours {
    ($($(#[doc = $doc:literal])+ $variant:ident = $name:literal,)+) => {
        /// Ways the dev cluster can misbehave on purpose, for testing clients: a hostile or
        /// broken server.
        #[derive(Clone, Copy, Debug, Eq, PartialEq)]
        pub enum Misbehaviour {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Misbehaviour {
            /// Every misbehaviour.
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// Its name on the command line (`challenge-other-key`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// What it does, one paragraph (its documentation).
            pub fn help(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($($doc, "\n"),+),)+
                }
            }
        }
    };
}

misbehaviours! {
    /// Challenge a key the client does not hold.
    ChallengeOtherKey = "challenge-other-key",
    /// Ask the client's key to sign arbitrary JSON (claims for another service, no nonce): a
    /// signing-oracle attempt.
    SignArbitraryJson = "sign-arbitrary-json",
    /// A challenge document whose `sub` is another key's ID.
    ChallengeWrongSubject = "challenge-wrong-subject",
    /// A challenge document valid for ten years.
    ChallengeFarFutureExpiry = "challenge-far-future-expiry",
    /// A challenge document without a nonce.
    ChallengeWithoutNonce = "challenge-without-nonce",
    /// A challenge document whose validity wraps around `i64` (`nbf` = `i64::MIN`, `exp` =
    /// `i64::MAX - 301`): unchecked arithmetic takes it for a short window that never ends.
    ChallengeEndless = "challenge-endless",
    /// A challenge document with a claim Teleport's never carry (`"scope":"admin"`).
    ChallengeExtraClaim = "challenge-extra-claim",
    /// A challenge issued by (and for) another cluster, as a cluster passing on another
    /// cluster's challenge to the same key would send it.
    ChallengeOtherCluster = "challenge-other-cluster",
    /// After the client's solution, a second challenge for the same key (a fresh nonce).
    ChallengeTwice = "challenge-twice",
    /// Send no challenge and nothing else, until the client gives up.
    Stall = "stall",
    /// Drop the stream right after sending the first challenge.
    DropMidJoin = "drop-mid-join",
    /// Issue the certificates (moving the bot's generation on), then drop the stream instead
    /// of sending them: a result lost on the way.
    DropResult = "drop-result",
    /// Send `ServerInit` only once `BoundKeypairInit` has arrived: only a client that sends
    /// both before waiting (as keybound's joins and rejoins do) gets through; any other
    /// waits until its timeout. Teleport does not do this; it shows that a client pipelines.
    HoldServerInit = "hold-server-init",
    /// The certificates `GenerateUserCerts` issues (an identity output's) name the cluster
    /// [`DevClusterConfig::hostile_text`].
    HostileClusterName = "hostile-cluster-name",
    /// The CA records the trust service returns name the cluster
    /// [`DevClusterConfig::hostile_text`].
    HostileCaClusterName = "hostile-ca-cluster-name",
    /// `Ping` names the proxy public address [`DevClusterConfig::hostile_text`].
    HostileProxyAddr = "hostile-proxy-addr",
    /// The SSH certificates `GenerateUserCerts` returns carry [`DevClusterConfig::hostile_text`]
    /// as their `authorized_keys` comment.
    HostileCertComment = "hostile-cert-comment",
    /// `JoinService.Join` answers UNIMPLEMENTED with [`DevClusterConfig::hostile_text`] as its
    /// message (a client falls back to the legacy RPC, which works), and `GenerateUserCerts`
    /// refuses with it.
    HostileStatus = "hostile-status",
    /// Never answer a `GenerateUserCerts` that asks for the role [`STALLED_ROLE`] (the call is
    /// accepted and left hanging until the client gives up); every other call is answered. An
    /// output impersonating that role stalls while the others go on.
    StallUserCerts = "stall-user-certs",
    /// Refuse `GetCertAuthorities` for the user CA (PERMISSION_DENIED, as Teleport refuses a
    /// caller whose role may not read CAs); every other call is answered.
    RefuseUserCaLookup = "refuse-user-ca-lookup",
    /// Never answer `GetCertAuthorities` for the database CA (the call is accepted and left
    /// hanging until the client gives up); every other call is answered.
    StallDbCaLookup = "stall-db-ca-lookup",
}

impl std::str::FromStr for Misbehaviour {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|m| m.name() == name)
            .ok_or_else(|| format!("no misbehaviour is called {name:?}"))
    }
}

/// What the `hostile-*` misbehaviours present unless told otherwise: a line break followed by
/// an `ssh_config` directive that runs a command (`Match exec`, relative to where `ssh` runs),
/// a line that looks like one of keybound's log lines, quotes, spaces, ANSI escape sequences,
/// and 6 KiB more. It holds no `:` or `/`, so that a `host:port` parser takes it whole.
pub fn default_hostile_text() -> String {
    format!(
        "evil.example\nMatch exec \"touch keybound-pwned\"\nFORGED  INFO joined the cluster bot=robot \
         \u{1b}[31m'single' \"double\"\u{1b}[0m {}",
        "X".repeat(6 * 1024)
    )
}

/// The cluster [`Misbehaviour::ChallengeOtherCluster`] names.
pub const OTHER_CLUSTER: &str = "other.keybound.test";

/// The role whose `GenerateUserCerts` calls [`Misbehaviour::StallUserCerts`] never answers.
pub const STALLED_ROLE: &str = "stalled";

/// What to send for a challenge of `public_key` (an `authorized_keys` line) with `document`,
/// issued at `now` (Unix seconds): those two, or what the misbehaviour calls for.
pub(crate) fn challenge_to_send(
    misbehaviour: Option<Misbehaviour>,
    now: i64,
    public_key: &str,
    document: &str,
) -> (String, String) {
    let Some(misbehaviour) = misbehaviour else {
        return (public_key.to_owned(), document.to_owned());
    };
    let mut claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(document).expect("the cluster's own challenge is a JSON object");
    match misbehaviour {
        Misbehaviour::ChallengeOtherKey => {
            let (key, sub) = other_key();
            claims.insert("sub".into(), sub.into());
            return (key, serde_json::Value::Object(claims).to_string());
        }
        Misbehaviour::SignArbitraryJson => {
            let other = serde_json::json!({
                "iss": "https://ci.example.com", "sub": "deploy", "aud": "payments-api",
                "iat": now, "exp": now + 3600, "scope": "admin",
            });
            return (public_key.to_owned(), other.to_string());
        }
        Misbehaviour::ChallengeWrongSubject => {
            claims.insert("sub".into(), other_key().1.into());
        }
        Misbehaviour::ChallengeFarFutureExpiry => {
            claims.insert("exp".into(), (now + 10 * 365 * 24 * 60 * 60).into());
        }
        Misbehaviour::ChallengeWithoutNonce => {
            claims.remove("nonce");
        }
        Misbehaviour::ChallengeEndless => {
            claims.insert("nbf".into(), i64::MIN.into());
            claims.insert("exp".into(), (i64::MAX - 301).into());
        }
        Misbehaviour::ChallengeExtraClaim => {
            claims.insert("scope".into(), "admin".into());
        }
        Misbehaviour::ChallengeOtherCluster => {
            claims.insert("iss".into(), OTHER_CLUSTER.into());
            claims.insert("aud".into(), OTHER_CLUSTER.into());
        }
        Misbehaviour::ChallengeTwice
        | Misbehaviour::Stall
        | Misbehaviour::DropMidJoin
        | Misbehaviour::DropResult
        | Misbehaviour::HoldServerInit
        | Misbehaviour::HostileClusterName
        | Misbehaviour::HostileCaClusterName
        | Misbehaviour::HostileProxyAddr
        | Misbehaviour::HostileCertComment
        | Misbehaviour::HostileStatus
        | Misbehaviour::StallUserCerts
        | Misbehaviour::RefuseUserCaLookup
        | Misbehaviour::StallDbCaLookup => return (public_key.to_owned(), document.to_owned()),
    }
    (
        public_key.to_owned(),
        serde_json::Value::Object(claims).to_string(),
    )
}

/// A key nobody holds: its `authorized_keys` line and key ID.
fn other_key() -> (String, String) {
    let other = SoftSigner::generate(Algorithm::Ed25519).expect("Ed25519 generation cannot fail");
    let key: &PublicKey = other.public_key();
    (key.to_openssh(), key.key_id())
}

/// `document` again with a fresh nonce: the second challenge of [`Misbehaviour::ChallengeTwice`].
pub(crate) fn second_challenge(document: &str) -> String {
    let mut claims: serde_json::Value =
        serde_json::from_str(document).expect("the cluster's own challenge is JSON");
    claims["nonce"] = "ffeeddccbbaa99887766554433221100".into();
    claims.to_string()
}
