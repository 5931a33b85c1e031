//! `keybound dev-cluster`: a reference Teleport join server, for keybound's tests, its
//! quickstart, and anyone rehearsing an HSM or TPM setup without a real cluster.
//!
//! It listens on one TLS port and routes by ALPN as a Teleport Proxy does with TLS routing:
//! `teleport-proxy-grpc` goes to the gRPC join services (the unified
//! `teleport.join.v1.JoinService` and the legacy `proto.JoinService`), a first ALPN value of
//! `teleport-auth@<hex cluster>.teleport.cluster.local` to Auth's own TLS endpoint (the Proxy
//! passes that TLS session through to Auth, so the client's certificate reaches Auth), anything
//! else (`h2`, `http/1.1`, none) to the web API (`/webapi/find`, `/webapi/auth/export`). Auth's
//! endpoint may also listen on a port of its own (`auth_listen`, like Auth's `:3025`).
//!
//! Auth's endpoint verifies client certificates against the user CA and serves the join
//! services (where a bot's certificate makes a soft rejoin: same instance, generation + 1),
//! `proto.AuthService` (`Ping`, `GetRole`, `GetClusterCACert`, `GenerateUserCerts` with role
//! impersonation) and `teleport.trust.v1.TrustService` (CA reads) (`auth.rs`). Tokens, roles and
//! bots load from Teleport's resource YAML; challenges, recovery, join state, rotation,
//! generations and locks follow Auth (`handler.rs`); certificates are real X.509 and SSH
//! certificates from in-memory CAs ([`ca`]).
//!
//! It is not Teleport: Auth and Proxy share one process, nothing persists, and only the RPCs a
//! bot makes exist.

mod auth;
pub mod ca;
mod handler;
pub mod roles;
mod service;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use keybound_signer::{Algorithm, PublicKey, Signer as _};
use keybound_signer_soft::SoftSigner;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::{debug, info, warn};

use ca::ClusterCa;
use keybound_teleport::suite::Suite;
use roles::{Bot, Role};
use tokens::{Status as TokenStatus, Token};

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
    /// both before waiting (as keybound's authenticated rejoin does) gets through; any other
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

/// How to run a dev cluster.
#[derive(Clone, Debug)]
pub struct DevClusterConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The cluster's name (CA subjects, challenge issuer).
    pub cluster_name: String,
    /// The signature algorithm suite it announces.
    pub suite: Suite,
    /// Serve only the legacy RPC (like clusters before bound keypair reached `JoinService.Join`).
    pub legacy_only: bool,
    /// Send a second, suite-less `ServerInit`, as builds before teleport#60291 did.
    pub duplicate_server_init: bool,
    /// Misbehave on purpose.
    pub misbehave: Option<Misbehaviour>,
    /// The Teleport version it claims (`/webapi/find`, client version check).
    pub server_version: String,
    /// Join tokens.
    pub tokens: Vec<Token>,
    /// Roles (for role impersonation).
    pub roles: Vec<Role>,
    /// Bots: each gets the role `bot-<name>`, which may impersonate the bot's roles.
    pub bots: Vec<Bot>,
    /// A separate port for Auth's endpoint (as Auth's `:3025`), besides the Proxy's route.
    pub auth_listen: Option<SocketAddr>,
    /// What the `hostile-*` misbehaviours present ([`default_hostile_text`] by default).
    pub hostile_text: String,
}

impl Default for DevClusterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_name: "dev.keybound.test".to_owned(),
            suite: Suite::BalancedV1,
            legacy_only: false,
            duplicate_server_init: false,
            misbehave: None,
            server_version: "18.2.10".to_owned(),
            tokens: Vec::new(),
            roles: Vec::new(),
            bots: Vec::new(),
            auth_listen: None,
            hostile_text: default_hostile_text(),
        }
    }
}

struct Entry {
    token: Token,
    status: TokenStatus,
    revision: u64,
}

/// A bot instance and the generation of its latest certificates.
struct Instance {
    bot_name: String,
    generation: u64,
}

/// The cluster's state, shared by every connection.
pub struct Cluster {
    config: DevClusterConfig,
    ca: ClusterCa,
    /// The bound-keypair CA's JWT key, which signs join state documents.
    join_state_key: SoftSigner,
    tokens: Mutex<HashMap<String, Entry>>,
    roles: HashMap<String, Role>,
    instances: Mutex<HashMap<String, Instance>>,
    locks: Mutex<HashMap<String, String>>,
    misbehave: Mutex<Option<Misbehaviour>>,
    clock_offset: AtomicI64,
    solutions: AtomicUsize,
    joins: AtomicUsize,
    user_certs: AtomicUsize,
    gave_up: Mutex<Vec<GaveUp>>,
}

/// A client's `GivingUp` on a join: Teleport logs the reason and message and puts them in its
/// audit event (`lib/join/server.go`); the dev cluster logs and keeps them.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct GaveUp {
    /// The token the join named in `ClientInit`.
    pub token: String,
    /// The reason's protobuf name, e.g. `REASON_CHALLENGE_SOLUTION_FAILED`.
    pub reason: String,
    /// The client's message.
    pub message: String,
}

impl Cluster {
    fn new(config: DevClusterConfig) -> anyhow::Result<Self> {
        let ca = ClusterCa::generate(&config.cluster_name)?;
        // `BoundKeypairCAJWT` per suite (spec §5.1): Ed25519 for balanced-v1, P-256 otherwise.
        let jwt_algorithm = match config.suite {
            Suite::BalancedV1 => Algorithm::Ed25519,
            _ => Algorithm::EcdsaP256Sha256,
        };
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Entry {
                        token: t.clone(),
                        status: TokenStatus::default(),
                        revision: 0,
                    },
                )
            })
            .collect();
        // Explicit roles win over the ones bots imply.
        let mut roles: HashMap<String, Role> = config
            .bots
            .iter()
            .map(Role::for_bot)
            .map(|r| (r.name.clone(), r))
            .collect();
        roles.extend(config.roles.iter().map(|r| (r.name.clone(), r.clone())));
        Ok(Self {
            ca,
            join_state_key: SoftSigner::generate(jwt_algorithm)?,
            tokens: Mutex::new(tokens),
            roles,
            instances: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            misbehave: Mutex::new(config.misbehave),
            clock_offset: AtomicI64::new(0),
            solutions: AtomicUsize::new(0),
            joins: AtomicUsize::new(0),
            user_certs: AtomicUsize::new(0),
            gave_up: Mutex::new(Vec::new()),
            config,
        })
    }

    /// The cluster's clock: the system clock moved by [`advance_clock`](Self::advance_clock).
    pub fn now(&self) -> SystemTime {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        if offset >= 0 {
            SystemTime::now() + Duration::from_secs(offset as u64)
        } else {
            SystemTime::now() - Duration::from_secs(offset.unsigned_abs())
        }
    }

    /// Moves the cluster's clock forward (tests of expiry).
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset
            .fetch_add(by.as_secs() as i64, Ordering::Relaxed);
    }

    /// The CAs.
    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// A token's bound-keypair status.
    pub fn token_status_of(&self, name: &str) -> Option<TokenStatus> {
        self.tokens
            .lock()
            .expect("token lock")
            .get(name)
            .map(|e| e.status.clone())
    }

    /// Adds or replaces a token (its status starts empty).
    pub fn put_token(&self, token: Token) {
        let mut tokens = self.tokens.lock().expect("token lock");
        let revision = tokens.get(&token.name).map_or(0, |e| e.revision + 1);
        tokens.insert(
            token.name.clone(),
            Entry {
                token,
                status: TokenStatus::default(),
                revision,
            },
        );
    }

    /// How many challenge solutions clients have sent.
    pub fn solutions_received(&self) -> usize {
        self.solutions.load(Ordering::Relaxed)
    }

    /// How many joins succeeded.
    pub fn joins_completed(&self) -> usize {
        self.joins.load(Ordering::Relaxed)
    }

    /// Whether a lock targets the token, and its message.
    pub fn lock_on(&self, token: &str) -> Option<String> {
        self.locks.lock().expect("lock lock").get(token).cloned()
    }

    /// How the cluster misbehaves now.
    pub fn misbehaviour(&self) -> Option<Misbehaviour> {
        *self.misbehave.lock().expect("misbehaviour lock")
    }

    /// Starts (or stops) misbehaving.
    pub fn set_misbehaviour(&self, misbehaviour: Option<Misbehaviour>) {
        *self.misbehave.lock().expect("misbehaviour lock") = misbehaviour;
    }

    /// How many bot instances the bot has had (one per onboarding or recovery).
    pub fn bot_instances(&self, bot_name: &str) -> usize {
        self.instances
            .lock()
            .expect("instance lock")
            .values()
            .filter(|i| i.bot_name == bot_name)
            .count()
    }

    /// The generation of an instance's latest certificates.
    pub fn generation_of(&self, instance_id: &str) -> Option<u64> {
        self.instances
            .lock()
            .expect("instance lock")
            .get(instance_id)
            .map(|i| i.generation)
    }

    /// How many certificate sets `GenerateUserCerts` issued.
    pub fn user_certs_issued(&self) -> usize {
        self.user_certs.load(Ordering::Relaxed)
    }

    /// Every `GivingUp` received so far, oldest first.
    pub fn givings_up(&self) -> Vec<GaveUp> {
        self.gave_up.lock().expect("giving-up lock").clone()
    }

    /// Records and logs a client's `GivingUp` on a join for `token`.
    fn record_giving_up(&self, token: &str, reason: String, message: &str) {
        // Client text: escaped and bounded before it reaches the log.
        let msg = keybound_teleport::text::message(message).to_string();
        warn!(token, reason, msg, "the client gave up on the join");
        self.gave_up.lock().expect("giving-up lock").push(GaveUp {
            token: token.to_owned(),
            reason,
            message: message.to_owned(),
        });
    }

    fn record_user_certs(&self) {
        self.user_certs.fetch_add(1, Ordering::Relaxed);
    }

    fn record_solution(&self) {
        self.solutions.fetch_add(1, Ordering::Relaxed);
    }

    fn record_join(&self) {
        self.joins.fetch_add(1, Ordering::Relaxed);
    }

    fn token_status(&self, name: &str) -> (TokenStatus, u64) {
        let tokens = self.tokens.lock().expect("token lock");
        tokens
            .get(name)
            .map_or_else(Default::default, |e| (e.status.clone(), e.revision))
    }

    /// The token's compare-and-swap update (`PatchToken` with mutators).
    fn commit_status(&self, name: &str, revision: u64, status: TokenStatus) -> Result<(), Status> {
        let mut tokens = self.tokens.lock().expect("token lock");
        match tokens.get_mut(name) {
            Some(entry) if entry.revision == revision => {
                entry.status = status;
                entry.revision += 1;
                Ok(())
            }
            _ => Err(Status::permission_denied(
                "committing updated token state, please try again: unexpected backend state",
            )),
        }
    }

    fn lock(&self, token: &str, message: String) {
        warn!(token, %message, "locking join token");
        self.locks
            .lock()
            .expect("lock lock")
            .insert(token.to_owned(), message);
    }

    fn check_lock(&self, token: &str) -> Result<(), Status> {
        match self.lock_on(token) {
            Some(message) => Err(Status::permission_denied(format!(
                "lock targeting JoinToken:{token:?} is in force: {message}"
            ))),
            None => Ok(()),
        }
    }

    /// `ValidateToken`, `checkJoinMethod` and `TokenAllowsRole` (`lib/join/server.go`).
    fn check_token(
        &self,
        name: &str,
        join_method: Option<&str>,
        role: &str,
    ) -> Result<Token, Status> {
        let token = {
            let tokens = self.tokens.lock().expect("token lock");
            tokens.get(name).map(|e| e.token.clone())
        };
        let token = token
            .filter(|t| t.expires.is_none_or(|e| e > self.now()))
            .ok_or_else(|| Status::permission_denied("token expired or not found"))?;
        let token_method = if token.join_method.is_empty() {
            "token"
        } else {
            token.join_method.as_str()
        };
        if let Some(requested) = join_method
            && requested != token_method
        {
            return Err(Status::invalid_argument(format!(
                "client requested join method {requested}, provision token only supports method {token_method}"
            )));
        }
        if !token.roles.iter().any(|r| r.eq_ignore_ascii_case(role)) {
            return Err(Status::invalid_argument(format!(
                "can not join the cluster, the token does not allow role {role}"
            )));
        }
        Ok(token)
    }

    /// `validateClientVersion`: no `version` is fine; one that does not parse, or is older than
    /// (major − 1).0.0-aa, is refused.
    fn check_client_version(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let values: Vec<_> = metadata.get_all("version").iter().collect();
        let Some(value) = values.first() else {
            return Ok(());
        };
        let server = semver::Version::parse(&self.config.server_version)
            .unwrap_or_else(|_| semver::Version::new(18, 0, 0));
        let minimum = semver::Version::parse(&format!("{}.0.0-aa", server.major.saturating_sub(1)))
            .expect("a fixed version parses");
        let ok = values.len() == 1
            && value
                .to_str()
                .ok()
                .and_then(|v| semver::Version::parse(v).ok())
                .is_some_and(|v| v >= minimum);
        if ok {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "client version is unsupported, minimum supported version is {}.0.0",
                minimum.major
            )))
        }
    }

    /// What to send for a challenge of `public_key` (an `authorized_keys` line) with `document`:
    /// those two, or what the misbehaviour calls for.
    fn challenge_to_send(&self, public_key: &str, document: &str) -> (String, String) {
        let Some(misbehaviour) = self.misbehaviour() else {
            return (public_key.to_owned(), document.to_owned());
        };
        let mut claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(document).expect("the cluster's own challenge is a JSON object");
        let now = handler::unix(self.now());
        match misbehaviour {
            Misbehaviour::ChallengeOtherKey => {
                let (key, sub) = Self::other_key();
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
                claims.insert("sub".into(), Self::other_key().1.into());
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
            | Misbehaviour::StallUserCerts => return (public_key.to_owned(), document.to_owned()),
        }
        (
            public_key.to_owned(),
            serde_json::Value::Object(claims).to_string(),
        )
    }

    /// A key nobody holds: its `authorized_keys` line and key ID.
    fn other_key() -> (String, String) {
        let other =
            SoftSigner::generate(Algorithm::Ed25519).expect("Ed25519 generation cannot fail");
        let key: &PublicKey = other.public_key();
        (key.to_openssh(), key.key_id())
    }

    /// `document` again with a fresh nonce: the second challenge of [`Misbehaviour::ChallengeTwice`].
    fn second_challenge(document: &str) -> String {
        let mut claims: serde_json::Value =
            serde_json::from_str(document).expect("the cluster's own challenge is JSON");
        claims["nonce"] = "ffeeddccbbaa99887766554433221100".into();
        claims.to_string()
    }

    fn find_document(&self, local: SocketAddr) -> serde_json::Value {
        let web = format!("{}:{}", "localhost", local.port());
        let mut auth = serde_json::json!({
            "type": "local", "private_key_policy": "none", "piv_slot": "", "piv_pin_cache_duration": 0,
            "device_trust": {}, "has_motd": false, "default_session_ttl": "12h0m0s",
        });
        if self.config.suite != Suite::Unspecified {
            auth["signature_algorithm_suite"] =
                serde_json::Value::String(self.config.suite.to_string());
        }
        serde_json::json!({
            "auth": auth,
            "proxy": {
                "kube": {},
                "ssh": {"listen_addr": web, "web_listen_addr": web, "public_addr": web},
                "db": {},
                "tls_routing_enabled": true,
            },
            "server_version": self.config.server_version,
            "min_client_version": format!("{}.0.0-aa", semver::Version::parse(&self.config.server_version).map(|v| v.major.saturating_sub(1)).unwrap_or(17)),
            "cluster_name": self.ca.cluster_name(),
            "automatic_upgrades": false,
            "edition": "community",
            "fips": false,
        })
    }
}

// === Serving ===

const ALPN_GRPC: &[u8] = b"teleport-proxy-grpc";
/// The ALPN prefix of the Proxy's pass-through route to Auth (`ProtocolAuth`,
/// `lib/srv/alpnproxy/common/protocols.go`), followed by the encoded cluster name.
const ALPN_AUTH_PREFIX: &[u8] = b"teleport-auth@";
/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running dev cluster. Dropping it stops the server.
pub struct DevCluster {
    /// Where it listens (the Proxy's web port, with every route).
    pub addr: SocketAddr,
    /// Where Auth's endpoint listens on its own, when asked for.
    pub auth_addr: Option<SocketAddr>,
    /// Its state.
    pub cluster: Arc<Cluster>,
    tasks: Vec<JoinHandle<()>>,
}

/// The gRPC services, made once and cloned per connection.
#[derive(Clone)]
struct Services {
    join_v1: v1::join_service_server::JoinServiceServer<service::JoinV1>,
    join_legacy: legacy::join_service_server::JoinServiceServer<service::JoinLegacy>,
    auth: legacy::auth_service_server::AuthServiceServer<auth::AuthApi>,
    trust: keybound_proto::teleport::trust::v1::trust_service_server::TrustServiceServer<
        auth::TrustApi,
    >,
}

impl Services {
    fn new(cluster: &Arc<Cluster>) -> Self {
        Self {
            join_v1: v1::join_service_server::JoinServiceServer::new(service::JoinV1(
                cluster.clone(),
            )),
            join_legacy: legacy::join_service_server::JoinServiceServer::new(service::JoinLegacy(
                cluster.clone(),
            )),
            auth: legacy::auth_service_server::AuthServiceServer::new(auth::AuthApi(
                cluster.clone(),
            )),
            trust:
                keybound_proto::teleport::trust::v1::trust_service_server::TrustServiceServer::new(
                    auth::TrustApi(cluster.clone()),
                ),
        }
    }
}

impl Services {
    /// Sends a gRPC request to its service: the join services everywhere, the Auth API only on
    /// Auth's endpoint.
    async fn route(
        self,
        request: hyper::Request<Incoming>,
        auth: bool,
    ) -> Result<hyper::Response<tonic::body::Body>, std::convert::Infallible> {
        use tower::Service as _;
        let path = request.uri().path();
        if path.starts_with("/teleport.join.v1.JoinService/") {
            self.join_v1.clone().call(request).await
        } else if path.starts_with("/proto.JoinService/") {
            self.join_legacy.clone().call(request).await
        } else if auth && path.starts_with("/proto.AuthService/") {
            self.auth.clone().call(request).await
        } else if auth && path.starts_with("/teleport.trust.v1.TrustService/") {
            self.trust.clone().call(request).await
        } else {
            Ok(Status::unimplemented(format!("unknown method {path}")).into_http())
        }
    }
}

/// TLS for the two endpoints.
#[derive(Clone)]
struct Endpoints {
    proxy: Arc<ServerConfig>,
    auth: Arc<ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl DevCluster {
    /// Starts serving on `config.listen` (and `config.auth_listen`).
    pub async fn start(config: DevClusterConfig) -> anyhow::Result<Self> {
        let (listen, auth_listen) = (config.listen, config.auth_listen);
        Self::serve(Arc::new(Cluster::new(config)?), listen, auth_listen).await
    }

    /// Serves `cluster` (its CAs, tokens, instances and locks) on `listen` and `auth_listen`:
    /// a cluster that stopped comes back as it was, as a Teleport cluster restarts from its
    /// backend.
    pub async fn serve(
        cluster: Arc<Cluster>,
        listen: SocketAddr,
        auth_listen: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let auth_listener = match auth_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let addr = listener.local_addr()?;
        let mut names = vec![
            "localhost".to_owned(),
            addr.ip().to_string(),
            cluster.ca.cluster_name().to_owned(),
        ];
        names.dedup();
        let (chain, key) = cluster.ca.server_cert(&names)?;
        let mut proxy = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        proxy.alpn_protocols = vec![ALPN_GRPC.to_vec(), b"h2".to_vec(), b"http/1.1".to_vec()];

        // Auth: client certificates from the user CA if given (`VerifyClientCertIfGiven`; a
        // join needs none), HTTP/2 only.
        let mut users = rustls::RootCertStore::empty();
        users.add(cluster.ca.user_ca_der())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(users),
            provider(),
        )
        .allow_unauthenticated()
        .build()?;
        let (chain, key) = cluster.ca.auth_cert()?;
        let mut auth = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        auth.alpn_protocols = vec![b"h2".to_vec()];
        let endpoints = Endpoints {
            proxy: Arc::new(proxy),
            auth: Arc::new(auth),
        };
        let services = Services::new(&cluster);

        let mut tasks = vec![tokio::spawn(serve(
            listener,
            endpoints.clone(),
            services.clone(),
            cluster.clone(),
        ))];
        let mut auth_addr = None;
        if let Some(listener) = auth_listener {
            auth_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(serve_auth(listener, endpoints.auth, services)));
        }
        info!(%addr, auth = ?auth_addr, cluster = cluster.ca.cluster_name(), "dev cluster listening");
        Ok(Self {
            addr,
            auth_addr,
            cluster,
            tasks,
        })
    }

    /// `host:port` for `proxy_server` (`localhost`, which the certificate names).
    pub fn proxy_addr(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// The CA bundle a client trusts to reach it.
    pub fn ca_pem(&self) -> String {
        self.cluster.ca.host_ca_pem()
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // gRPC writes small frames; without this, Nagle's algorithm and the peer's
                // delayed ACKs add 40 ms to every exchange.
                let _ = tcp.set_nodelay(true);
                return (tcp, peer);
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The Proxy's web port: every connection is routed by the ALPN of its ClientHello.
async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    services: Services,
    cluster: Arc<Cluster>,
) {
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    loop {
        let (tcp, peer) = accept(&listener).await;
        let (endpoints, services, cluster) = (endpoints.clone(), services.clone(), cluster.clone());
        tokio::spawn(async move {
            let routed = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let start =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                        .await?;
                let first = start
                    .client_hello()
                    .alpn()
                    .and_then(|mut protocols| protocols.next())
                    .map(<[u8]>::to_vec);
                match first
                    .as_deref()
                    .and_then(|p| p.strip_prefix(ALPN_AUTH_PREFIX))
                {
                    Some(encoded) => {
                        let wanted = decode_cluster_name(encoded);
                        if wanted.as_deref() != Some(cluster.ca.cluster_name()) {
                            // Teleport would dial a leaf cluster's Auth here; the dev cluster
                            // has none.
                            return Err(std::io::Error::other(format!(
                                "no route to the Auth of cluster {wanted:?}"
                            )));
                        }
                        Ok(Route::Auth(start.into_stream(endpoints.auth).await?))
                    }
                    None => Ok(Route::Proxy(start.into_stream(endpoints.proxy).await?)),
                }
            })
            .await;
            let route = match routed {
                Ok(Ok(route)) => route,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let result = match route {
                Route::Auth(tls) => serve_auth_connection(tls, peer, services).await,
                Route::Proxy(tls) => {
                    serve_proxy_connection(tls, peer, local, services, cluster).await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

enum Route {
    Auth(Tls),
    Proxy(Tls),
}

/// `apiutils.DecodeClusterName`: `<hex>.teleport.cluster.local` → the cluster's name.
fn decode_cluster_name(encoded: &[u8]) -> Option<String> {
    let hex = std::str::from_utf8(encoded)
        .ok()?
        .strip_suffix(".teleport.cluster.local")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Auth's own port.
async fn serve_auth(listener: TcpListener, tls: Arc<ServerConfig>, services: Services) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = accept(&listener).await;
        let (acceptor, services) = (acceptor.clone(), services.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            if let Err(e) = serve_auth_connection(tls, peer, services).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// One connection to Auth: gRPC with the caller's identity (if it showed a certificate) in
/// every request's extensions.
async fn serve_auth_connection(
    tls: Tls,
    peer: SocketAddr,
    services: Services,
) -> Result<(), String> {
    let caller = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| match auth::Caller::from_der(cert) {
            Ok(caller) => Some(caller),
            Err(e) => {
                debug!(%peer, error = %e, "unreadable client certificate");
                None
            }
        });
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(peer);
        if let Some(caller) = &caller {
            request.extensions_mut().insert(caller.clone());
        }
        services.clone().route(request, true)
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| e.to_string())
}

/// One connection to the Proxy: the unauthenticated join services, or the web API.
async fn serve_proxy_connection(
    tls: Tls,
    peer: SocketAddr,
    local: SocketAddr,
    services: Services,
    cluster: Arc<Cluster>,
) -> Result<(), String> {
    let grpc = tls.get_ref().1.alpn_protocol() == Some(ALPN_GRPC);
    let io = TokioIo::new(tls);
    if grpc {
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer);
            services.clone().route(request, false)
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string())
    } else {
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let cluster = cluster.clone();
            async move { Ok::<_, std::convert::Infallible>(web(&cluster, local, &request)) }
        });
        auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The web API subset: `/webapi/find` and the public CA export.
fn web(
    cluster: &Cluster,
    local: SocketAddr,
    request: &hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let respond = |status: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is well-formed")
    };
    match request.uri().path() {
        "/webapi/find" | "/webapi/ping" => respond(
            200,
            "application/json",
            cluster.find_document(local).to_string(),
        ),
        "/webapi/auth/export" => {
            let kind = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("type=")))
                .unwrap_or("");
            match cluster.ca.export(kind) {
                Some(pem) => respond(200, "text/plain", pem),
                None => respond(
                    400,
                    "text/plain",
                    format!("unsupported authority type {kind:?}\n"),
                ),
            }
        }
        path => respond(
            404,
            "application/json",
            format!(r#"{{"error":{{"message":"not found: {path}"}}}}"#),
        ),
    }
}

// === The command ===

/// Runs `keybound dev-cluster` until SIGINT or SIGTERM.
pub async fn run(config: DevClusterConfig, ca_out: &std::path::Path) -> anyhow::Result<()> {
    let cluster = DevCluster::start(config).await?;
    write_ca_bundle(ca_out, &cluster.ca_pem())
        .with_context(|| format!("writing the CA bundle to {}", ca_out.display()))?;
    println!(
        "keybound dev cluster {:?} listening on {}",
        cluster.cluster.ca.cluster_name(),
        cluster.addr
    );
    println!("proxy_server: {}", cluster.proxy_addr());
    if let Some(addr) = cluster.auth_addr {
        println!("auth_server: {addr}");
    }
    println!("CA bundle: {}", ca_out.display());
    let tokens = cluster.cluster.tokens.lock().expect("token lock").len();
    println!("tokens: {tokens}, roles: {}", cluster.cluster.roles.len());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("dev cluster stopping");
    Ok(())
}

/// Writes the CA bundle clients trust, mode 0644, whole or not at all (a temporary file in the
/// same directory, renamed into place).
fn write_ca_bundle(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(pem.as_bytes())?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.as_file().sync_all()?;
    file.persist(path)?;
    Ok(())
}
