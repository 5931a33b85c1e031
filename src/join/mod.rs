//! The bound-keypair join, as tbot does it with a static key (`lib/join/joinclient/`).
//!
//! 1. Open TLS to the Proxy with ALPN `teleport-proxy-grpc` ([`transport`]) and start the
//!    bidirectional stream `/teleport.join.v1.JoinService/Join`.
//! 2. Send `ClientInit{join_method: "bound_keypair", token_name, system_role: "Bot"}`.
//! 3. Receive `ServerInit`, which names the cluster's signature algorithm suite. If instead the
//!    call fails with UNIMPLEMENTED, or the first response fails for a connection-level reason
//!    (any code but PERMISSION_DENIED or INVALID_ARGUMENT), fall back to the legacy RPC
//!    `/proto.JoinService/RegisterUsingBoundKeypairMethod`, learning the suite from
//!    `/webapi/find` first, since that RPC has no `ServerInit`.
//! 4. Make a subject keypair for the suite ([`subject`]: RSA-2048 for legacy, P-256 otherwise)
//!    and send `BoundKeypairInit` with its PKIX DER and SSH wire public keys and
//!    `expires = now + credential_ttl`; no registration secret, no join state (static keys keep
//!    none).
//! 5. Answer each server message in whatever order it comes:
//!    - a further `ServerInit` (some 18.x builds send two, the second without a suite): ignored;
//!    - a challenge: keybound checks that it names its own public key and that the document is a
//!      fresh Teleport challenge for that key ([`challenge`]), then signs it as a compact JWS and
//!      sends the solution. Anything else gets `GivingUp(CHALLENGE_SOLUTION_FAILED)` and nothing
//!      is signed;
//!    - a rotation request: a static key cannot rotate, so `GivingUp(CHALLENGE_SOLUTION_FAILED)`
//!      and an error telling the admin what to do;
//!    - the result: the bot's certificates ([`Identity`]).
//!
//! The whole join, fallback included, is bounded by [`JOIN_TIMEOUT`], below the server's one
//! minute (`joinRequestTimeout` in `lib/join/joinv1/server.go`).

pub mod challenge;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use keybound_signer::{PublicKey, Signer, jws};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::identity::Identity;
use crate::subject_key::SubjectKey;
use crate::tls::{Trust, client_config};
use crate::transport;
use crate::untrusted;
use crate::values::HostPort;
use crate::webapi;
use keybound_teleport::suite::Suite;

/// The most one join may take, fallback included.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(45);

/// The largest join message keybound reads (tonic's default is 4 MiB). Teleport's are a few
/// kilobytes: the largest, the result, carries the bot's certificates and the cluster's CAs.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// tbot's message when the server challenges a key it does not hold (the missing "not" is in
/// the original, `lib/join/joinclient/join_boundkeypair.go`; keybound's message says it right).
const WRONG_KEY: &str =
    "configured static private key does not match the value requested by the server";
/// What a static key answers to a rotation request (tbot: `StaticClientState.RequestNewKeypair`).
const NO_ROTATION: &str = "static private keys do not support automatic rotation";

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
    /// another cluster is then refused ([`challenge::check`]). `None` for a first join, which
    /// takes the name the cluster gives.
    pub cluster: Option<String>,
    /// Requested certificate lifetime.
    pub credential_ttl: Duration,
    /// The static key.
    pub signer: Arc<dyn Signer>,
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
}

/// Why a join failed. Each variant's message says what to do.
#[derive(Debug)]
pub enum JoinError {
    /// The cluster refused the join.
    Rejected {
        /// The gRPC status code.
        code: Code,
        /// The cluster's message.
        message: String,
    },
    /// The cluster could not be reached, or the connection broke.
    Unreachable(String),
    /// keybound stopped the join: the server asked for something keybound will not do.
    Refused(String),
    /// The signer failed.
    Signer(keybound_signer::Error),
    /// Local setup (TLS trust) is wrong.
    Config(String),
    /// The join took longer than allowed.
    TimedOut(Duration),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected { code, message } => {
                write!(
                    f,
                    "the cluster rejected the join ({}): {message}",
                    code_name(*code)
                )?;
                if let Some(hint) = hint(message) {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            Self::Unreachable(message) => write!(f, "{message}"),
            Self::Refused(message) => write!(f, "{message}"),
            Self::Signer(error) => write!(f, "signing the join challenge failed: {error}"),
            Self::Config(message) => write!(f, "{message}"),
            Self::TimedOut(limit) => write!(
                f,
                "the join did not finish within {} s; check the network path to the proxy",
                limit.as_secs()
            ),
        }
    }
}

impl std::error::Error for JoinError {}

/// What to tell an admin about a cluster's error message (messages from
/// `lib/join/server.go`, `lib/join/boundkeypair/boundkeypair.go`, `lib/auth/auth.go`).
fn hint(message: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "token expired or not found",
            "check that onboarding.token names an existing bound_keypair token (tctl get tokens)",
        ),
        (
            "failed to complete challenge",
            "the static key does not match the token's initial_public_key: compare `keybound keypair show` with the token",
        ),
        (
            "no recovery attempts remaining",
            "static keys need the token's spec.bound_keypair.recovery.mode set to insecure",
        ),
        (
            "no rejoins remaining",
            "static keys need the token's spec.bound_keypair.recovery.mode set to insecure",
        ),
        (
            "join state verification failed",
            "static keys need recovery.mode insecure; the cluster has also locked the token: remove the lock (tctl get locks) after fixing the token",
        ),
        (
            "provision token only supports method",
            "the token is not a bound_keypair token",
        ),
        (
            "does not allow role",
            "the token's spec.roles must include Bot",
        ),
        (
            "client version is unsupported",
            "this cluster is too new for keybound's protocol version",
        ),
        (
            "public key may not be reused",
            "make a new key with keybound keypair create --static",
        ),
        ("bad backend state", "recreate the join token"),
        (
            "validating challenge response",
            "the static key does not match the key bound to the token: compare `keybound keypair show` with the token's status",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map(|(_, hint)| *hint)
}

fn code_name(code: Code) -> String {
    // tonic's Debug names (PermissionDenied) → gRPC's (PERMISSION_DENIED).
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Joins the cluster once.
pub async fn join(params: &JoinParams) -> Result<Joined, JoinError> {
    match tokio::time::timeout(params.timeout, join_inner(params)).await {
        Ok(result) => result,
        Err(_) => Err(JoinError::TimedOut(params.timeout)),
    }
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
    match join_new(channel.clone(), params, None, &answered).await {
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
            let found = webapi::find(&params.proxy, web_tls)
                .await
                .map_err(|e| JoinError::Unreachable(format!("{e:#}")))?;
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
        error,
        in_doubt: answered.load(Ordering::SeqCst),
    })
}

enum Attempt {
    /// Try the legacy RPC (the reason is logged).
    Fallback(String),
    Final(JoinError),
}

impl From<JoinError> for Attempt {
    fn from(error: JoinError) -> Self {
        Self::Final(error)
    }
}

fn unreachable_error(addr: &HostPort, error: &dyn std::error::Error) -> JoinError {
    let mut message = transport::describe(format!("cannot reach proxy {addr}"), error);
    if message.contains("certificate") {
        message.push_str(
            "; if the proxy uses a private CA give its bundle with --ca-path or onboarding.ca_path \
             (or --insecure, for development only)",
        );
    }
    JoinError::Unreachable(message)
}

/// Turns a status received mid-join into the error a user sees.
fn status_error(status: &Status) -> JoinError {
    let message = untrusted::message(status.message()).to_string();
    match status.code() {
        // tonic's own check of an incoming message's length (`codec/decode.rs`).
        Code::OutOfRange
            if status
                .message()
                .starts_with("Error, decoded message length too large") =>
        {
            JoinError::Refused(format!(
                "the cluster sent a join message larger than {} KiB, which no Teleport join message \
                 is ({message}); check that proxy_server names a Teleport proxy",
                MAX_MESSAGE / 1024
            ))
        }
        // A status with a source was made by tonic from a local error (the HTTP/2 connection
        // broke, say), not sent by the cluster: no rejection, whatever its code.
        _ if std::error::Error::source(status).is_some() => JoinError::Unreachable(format!(
            "the connection to the cluster broke during the join: {message}"
        )),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
            JoinError::Unreachable(format!(
                "the connection to the cluster broke during the join: {}",
                if message.is_empty() {
                    code_name(status.code())
                } else {
                    message
                }
            ))
        }
        code => JoinError::Rejected { code, message },
    }
}

/// Why the server ended a stream we could no longer write to: its final status, if it sent one.
async fn closed_reason<T>(inbound: &mut tonic::Streaming<T>) -> JoinError {
    match inbound.message().await {
        Err(status) => status_error(&status),
        Ok(_) => JoinError::Unreachable(
            "the cluster closed the join stream before sending certificates".to_owned(),
        ),
    }
}

fn expires(ttl: Duration) -> prost_types::Timestamp {
    prost_types::Timestamp::from(expiry_after(ttl))
}

/// Now plus `ttl`, saturating at a day past Teleport's 24 h cap for absurd lifetimes.
pub fn expiry_after(ttl: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(ttl)
        .unwrap_or(now + Duration::from_secs(48 * 60 * 60))
}

/// Decides whether keybound may sign a challenge the cluster sent: `public_key` (an
/// `authorized_keys` line) must be `ours`, and `document` a fresh Teleport challenge for it
/// from `cluster`, when keybound knows its cluster ([`challenge::check`]). The error says why
/// not, for the user and for `GivingUp`; `backend` names the signer in it.
pub fn vet_challenge(
    ours: &PublicKey,
    backend: &str,
    public_key: &str,
    document: &str,
    cluster: Option<&str>,
    now: SystemTime,
) -> Result<(), JoinError> {
    let named = PublicKey::from_openssh(public_key).map_err(|_| {
        JoinError::Refused(format!(
            "{WRONG_KEY}: the cluster challenged {}, which is not an Ed25519 or P-256 key",
            untrusted::quoted(public_key)
        ))
    })?;
    if &named != ours {
        return Err(JoinError::Refused(format!(
            "{WRONG_KEY}: the cluster challenged {} but keybound's key is {} ({backend}); the token is bound to another key: \
             recreate it with this key's public key (keybound keypair show)",
            named.fingerprint(),
            ours.fingerprint(),
        )));
    }
    challenge::check(document, ours, cluster, now).map_err(|why| {
        JoinError::Refused(format!(
            "refused to sign the cluster's challenge: {}",
            untrusted::message(&why)
        ))
    })
}

/// Decides whether to sign a challenge, and signs it. `Err` carries the reason to give up.
async fn answer(params: &JoinParams, public_key: &str, document: &str) -> Result<String, GiveUp> {
    let signer = &params.signer;
    vet_challenge(
        signer.public_key(),
        signer.backend(),
        public_key,
        document,
        params.cluster.as_deref(),
        SystemTime::now(),
    )
    .map_err(|error| GiveUp {
        error,
        message: None,
    })?;
    let signer = signer.clone();
    let payload = document.as_bytes().to_vec();
    let started = std::time::Instant::now();
    let solution = tokio::task::spawn_blocking(move || jws::compact(&*signer, &payload))
        .await
        .map_err(|e| GiveUp::refused(format!("the signing task failed: {e}")))?
        .map_err(GiveUp::signer)?;
    debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "signed the join challenge"
    );
    Ok(solution)
}

/// Why keybound stops a join: the error for the user, and the message `GivingUp` carries to the
/// cluster (the error's own text unless another is given).
struct GiveUp {
    error: JoinError,
    message: Option<&'static str>,
}

impl GiveUp {
    fn refused(message: String) -> Self {
        Self {
            error: JoinError::Refused(message),
            message: None,
        }
    }
    fn signer(error: keybound_signer::Error) -> Self {
        Self {
            error: JoinError::Signer(error),
            message: None,
        }
    }
    fn message(&self) -> String {
        self.message
            .map_or_else(|| self.error.to_string(), str::to_owned)
    }
}

/// keybound already answered a challenge in this join. It answers one: Teleport challenges the
/// bound key once per join (a second challenge follows only a rotation, which a static key
/// refuses), so a second one can only be a server collecting signatures.
fn second_challenge() -> GiveUp {
    GiveUp::refused(
        "the cluster sent a second challenge in one join; keybound answers one challenge per \
         join and signs nothing more (is proxy_server the Teleport cluster you expect?)"
            .to_owned(),
    )
}

/// The cluster sent certificates before keybound proved its key.
fn unchallenged_result() -> GiveUp {
    GiveUp::refused(
        "the cluster sent certificates before any challenge: a bound-keypair join always proves \
         the key first, so keybound refuses the result (is proxy_server the Teleport cluster you \
         expect?)"
            .to_owned(),
    )
}

/// A rotation request: the user is told what to do, the cluster gets tbot's message.
fn rotation_refused(suite: &str) -> GiveUp {
    let error = JoinError::Refused(format!(
        "the cluster asked to rotate the bound keypair (suite {}), which a static key cannot do \
         ({NO_ROTATION}); the token's spec.bound_keypair.rotate_after is set. An admin must make a \
         new key (keybound keypair create --static) and recreate the token with its public key as \
         initial_public_key",
        untrusted::quoted(if suite.is_empty() {
            "unspecified"
        } else {
            suite
        })
    ));
    GiveUp {
        error,
        message: Some(NO_ROTATION),
    }
}

// === The JoinService.Join RPC ===

/// How long keybound waits, after `GivingUp`, for the cluster to end the stream. The wait puts
/// the message on the wire before keybound goes on (or exits): Teleport records the reason in its
/// log and audit event. Teleport ends the stream as soon as it reads the message, so the wait is
/// one round trip; a cluster that never answers costs no more than this.
pub const GIVE_UP_WAIT: Duration = Duration::from_secs(2);

/// The request side of a `JoinService.Join` stream. Each send takes a sender of its own, so
/// taking the one kept here closes the side once in-flight sends are done.
struct Outbound(std::sync::Mutex<Option<mpsc::Sender<v1::JoinRequest>>>);

impl Outbound {
    fn sender(&self) -> Option<mpsc::Sender<v1::JoinRequest>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn close(&self) -> Option<mpsc::Sender<v1::JoinRequest>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Tells the cluster why keybound stops this join: sends `GivingUp`, closes the request side, and
/// waits (at most [`GIVE_UP_WAIT`]) for the cluster to end the stream, so that the message is
/// delivered before the stream is dropped. Returns the error for the user.
async fn give_up(
    outbound: &Outbound,
    inbound: &mut tonic::Streaming<v1::JoinResponse>,
    why: GiveUp,
) -> Attempt {
    let msg = why.message();
    warn!(reason = %msg, "giving up on the join");
    if let Some(tx) = outbound.close() {
        let giving_up = v1::JoinRequest {
            payload: Some(v1::join_request::Payload::GivingUp(v1::GivingUp {
                reason: v1::giving_up::Reason::ChallengeSolutionFailed as i32,
                msg,
            })),
        };
        if tx.send(giving_up).await.is_ok() {
            drop(tx);
            let ended = tokio::time::timeout(GIVE_UP_WAIT, async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
            if ended.is_err() {
                debug!(
                    wait_ms = GIVE_UP_WAIT.as_millis() as u64,
                    "the cluster did not end the join stream after GivingUp"
                );
            }
        }
    }
    Attempt::Final(why.error)
}

/// `JoinService.Join`. With `pipelined`, the subject key is made for that suite before the
/// stream opens and `BoundKeypairInit` goes out right behind `ClientInit`, saving a round trip:
/// Teleport's server reads it after sending `ServerInit` whenever it arrives, and does not check
/// the subject key against the suite (docs/teleport-source-notes.md, Q5 and Q10).
async fn join_new(
    channel: tonic::transport::Channel,
    params: &JoinParams,
    pipelined: Option<Suite>,
    answered: &AtomicBool,
) -> Result<Joined, Attempt> {
    use v1::{
        challenge as ch, challenge_solution as sol, join_request, join_response, result as res,
    };

    let (tx, rx) = mpsc::channel::<v1::JoinRequest>(4);
    let outbound = Outbound(std::sync::Mutex::new(Some(tx)));
    let send = |payload: join_request::Payload| {
        let tx = outbound.sender();
        async move {
            let closed =
                || JoinError::Unreachable("the join stream closed while sending".to_owned());
            tx.ok_or_else(closed)?
                .send(v1::JoinRequest {
                    payload: Some(payload),
                })
                .await
                .map_err(|_| closed())
        }
    };
    let bound_init = |subject: &SubjectKey| {
        join_request::Payload::BoundKeypairInit(v1::BoundKeypairInit {
            client_params: Some(v1::ClientParams {
                payload: Some(v1::client_params::Payload::BotParams(v1::BotParams {
                    public_keys: Some(v1::PublicKeys {
                        public_tls_key: subject.spki_der.clone(),
                        public_ssh_key: subject.ssh_wire.clone(),
                    }),
                    expires: Some(expires(params.credential_ttl)),
                })),
            }),
            initial_join_secret: String::new(),
            previous_join_state: Vec::new(),
        })
    };
    let early = match pipelined {
        Some(suite) => Some(generate_subject(suite).await?),
        None => None,
    };
    send(join_request::Payload::ClientInit(v1::ClientInit {
        join_method: Some("bound_keypair".to_owned()),
        token_name: params.token.clone(),
        system_role: "Bot".to_owned(),
        ..Default::default()
    }))
    .await?;
    if let Some(subject) = &early {
        send(bound_init(subject)).await?;
    }

    let first_failure = |status: Status| match status.code() {
        Code::PermissionDenied | Code::InvalidArgument => Attempt::Final(status_error(&status)),
        _ => Attempt::Fallback(format!(
            "{}: {}",
            code_name(status.code()),
            untrusted::message(status.message())
        )),
    };
    let mut client = v1::join_service_client::JoinServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE);
    let mut inbound = client
        .join(ReceiverStream::new(rx))
        .await
        .map_err(first_failure)?
        .into_inner();
    let suite = match inbound.message().await.map_err(first_failure)? {
        Some(v1::JoinResponse {
            payload: Some(join_response::Payload::Init(init)),
        }) => {
            debug!(
                join_method = %untrusted::name(&init.join_method),
                suite = %untrusted::name(&init.signature_algorithm_suite),
                "received ServerInit"
            );
            Suite::parse(&init.signature_algorithm_suite).map_err(|_| {
                JoinError::Refused(format!(
                    "the cluster's ServerInit names an unknown signature algorithm suite {}",
                    untrusted::quoted(&init.signature_algorithm_suite)
                ))
            })?
        }
        Some(other) => {
            return Err(JoinError::Refused(format!(
                "the cluster's first join message is not ServerInit ({:?})",
                other.payload.map(|p| payload_name(&p))
            ))
            .into());
        }
        None => {
            return Err(Attempt::Fallback(
                "the stream ended before ServerInit".to_owned(),
            ));
        }
    };

    let subject = match early {
        Some(subject) => {
            if subject.kind != SubjectKey::kind_for(suite) {
                warn!(%suite, subject_key = subject.kind, "the cluster's suite changed since the last join; this join keeps the old key type, the next one follows the suite");
            }
            info!(%suite, subject_key = subject.kind, "joining with JoinService.Join (BoundKeypairInit sent with ClientInit)");
            subject
        }
        None => {
            let subject = generate_subject(suite).await?;
            info!(%suite, subject_key = subject.kind, "joining with JoinService.Join");
            if send(bound_init(&subject)).await.is_err() {
                return Err(closed_reason(&mut inbound).await.into());
            }
            subject
        }
    };

    loop {
        let message = inbound
            .message()
            .await
            .map_err(|s| Attempt::Final(status_error(&s)))?;
        let Some(v1::JoinResponse {
            payload: Some(payload),
        }) = message
        else {
            if message.is_none() {
                return Err(JoinError::Unreachable(
                    "the cluster closed the join stream before sending certificates".to_owned(),
                )
                .into());
            }
            return Err(give_up(
                &outbound,
                &mut inbound,
                GiveUp::refused("the cluster sent an empty join message".to_owned()),
            )
            .await);
        };
        match payload {
            join_response::Payload::Init(init) => {
                debug!(suite = %untrusted::name(&init.signature_algorithm_suite), "ignoring a repeated ServerInit");
            }
            join_response::Payload::Challenge(v1::Challenge {
                payload: Some(ch::Payload::BoundKeypairChallenge(_)),
            }) if answered.load(Ordering::SeqCst) => {
                return Err(give_up(&outbound, &mut inbound, second_challenge()).await);
            }
            join_response::Payload::Challenge(v1::Challenge {
                payload: Some(ch::Payload::BoundKeypairChallenge(c)),
            }) => {
                match answer(
                    params,
                    &String::from_utf8_lossy(&c.public_key),
                    &c.challenge,
                )
                .await
                {
                    Ok(solution) => {
                        answered.store(true, Ordering::SeqCst);
                        let sent = send(join_request::Payload::Solution(v1::ChallengeSolution {
                            payload: Some(sol::Payload::BoundKeypairChallengeSolution(
                                v1::BoundKeypairChallengeSolution {
                                    solution: solution.into_bytes(),
                                },
                            )),
                        }))
                        .await;
                        if sent.is_err() {
                            return Err(closed_reason(&mut inbound).await.into());
                        }
                    }
                    Err(why) => return Err(give_up(&outbound, &mut inbound, why).await),
                }
            }
            join_response::Payload::Challenge(v1::Challenge {
                payload: Some(ch::Payload::BoundKeypairRotationRequest(r)),
            }) => {
                info!(suite = %untrusted::name(&r.signature_algorithm_suite), "Server has requested keypair rotation");
                let why = rotation_refused(&r.signature_algorithm_suite);
                return Err(give_up(&outbound, &mut inbound, why).await);
            }
            join_response::Payload::Result(_) if !answered.load(Ordering::SeqCst) => {
                return Err(give_up(&outbound, &mut inbound, unchallenged_result()).await);
            }
            join_response::Payload::Result(v1::Result {
                payload: Some(res::Payload::BotResult(result)),
            }) => {
                let certs = result.certificates.ok_or_else(|| {
                    JoinError::Refused("the cluster's result carries no certificates".to_owned())
                })?;
                let identity = Identity::from_wire(
                    subject.private_pem,
                    subject.ssh_authorized,
                    &certs.tls_cert,
                    &certs.tls_ca_certs,
                    &certs.ssh_cert,
                    &certs.ssh_ca_keys,
                )
                .map_err(|e| {
                    JoinError::Refused(format!("the cluster's certificates are unusable: {e:#}"))
                })?;
                let bound_public_key = result
                    .bound_keypair_result
                    .map(|b| String::from_utf8_lossy(&b.public_key).into_owned())
                    .filter(|k| !k.is_empty());
                return Ok(Joined {
                    identity,
                    rpc: Rpc::Join,
                    suite,
                    bound_public_key,
                    authenticated: false,
                });
            }
            other => {
                let why = GiveUp::refused(format!(
                    "the cluster sent an unexpected join message ({})",
                    payload_name(&other)
                ));
                return Err(give_up(&outbound, &mut inbound, why).await);
            }
        }
    }
}

fn payload_name(payload: &v1::join_response::Payload) -> &'static str {
    use v1::join_response::Payload;
    match payload {
        Payload::Init(_) => "ServerInit",
        Payload::Challenge(c) => match c.payload {
            Some(v1::challenge::Payload::BoundKeypairChallenge(_)) => "BoundKeypairChallenge",
            Some(v1::challenge::Payload::BoundKeypairRotationRequest(_)) => {
                "BoundKeypairRotationRequest"
            }
            _ => "a challenge for another join method",
        },
        Payload::Result(r) => match r.payload {
            Some(v1::result::Payload::BotResult(_)) => "BotResult",
            _ => "a result for a host",
        },
    }
}

async fn generate_subject(suite: Suite) -> Result<SubjectKey, JoinError> {
    tokio::task::spawn_blocking(move || SubjectKey::generate(suite))
        .await
        .map_err(|e| JoinError::Refused(format!("subject key generation failed: {e}")))?
        .map_err(|e| JoinError::Refused(format!("subject key generation failed: {e:#}")))
}

// === The legacy RegisterUsingBoundKeypairMethod RPC ===

/// The legacy RPC, which has no `ServerInit`: the caller learned `suite` beforehand.
async fn join_legacy(
    channel: tonic::transport::Channel,
    params: &JoinParams,
    suite: Suite,
    answered: &AtomicBool,
) -> Result<Joined, JoinError> {
    use legacy::{
        register_using_bound_keypair_method_request as req,
        register_using_bound_keypair_method_response as resp,
    };

    let subject = generate_subject(suite).await?;
    info!(%suite, subject_key = subject.kind, "joining with the legacy RegisterUsingBoundKeypairMethod");

    let (tx, rx) = mpsc::channel::<legacy::RegisterUsingBoundKeypairMethodRequest>(4);
    let send = |payload: req::Payload| {
        let tx = tx.clone();
        async move {
            tx.send(legacy::RegisterUsingBoundKeypairMethodRequest {
                payload: Some(payload),
            })
            .await
            .map_err(|_| JoinError::Unreachable("the join stream closed while sending".to_owned()))
        }
    };
    send(req::Payload::Init(
        legacy::RegisterUsingBoundKeypairInitialRequest {
            join_request: Some(keybound_proto::types::RegisterUsingTokenRequest {
                token: params.token.clone(),
                role: "Bot".to_owned(),
                // keys.MarshalPublicKey (PEM) and ssh.MarshalAuthorizedKey (with its newline), as
                // lib/auth/join/join.go sends them.
                public_tls_key: subject.public_pem.clone().into_bytes(),
                public_ssh_key: format!("{}\n", subject.ssh_authorized).into_bytes(),
                expires: Some(expires(params.credential_ttl)),
                ..Default::default()
            }),
            initial_join_secret: String::new(),
            previous_join_state: Vec::new(),
        },
    ))
    .await?;

    let mut client = legacy::join_service_client::JoinServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE);
    let mut inbound = client
        .register_using_bound_keypair_method(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    // The legacy RPC has no GivingUp: ending the stream is how a client gives up.
    let give_up = |why: GiveUp| {
        warn!(reason = %why.message(), "giving up on the join");
        why.error
    };
    loop {
        let message = inbound.message().await.map_err(|s| status_error(&s))?;
        let Some(legacy::RegisterUsingBoundKeypairMethodResponse {
            response: Some(response),
        }) = message
        else {
            return Err(if message.is_none() {
                JoinError::Unreachable(
                    "the cluster closed the join stream before sending certificates".to_owned(),
                )
            } else {
                JoinError::Refused("the cluster sent an empty join message".to_owned())
            });
        };
        match response {
            resp::Response::Challenge(_) if answered.load(Ordering::SeqCst) => {
                return Err(give_up(second_challenge()));
            }
            resp::Response::Challenge(c) => {
                match answer(params, &c.public_key, &c.challenge).await {
                    Ok(solution) => {
                        answered.store(true, Ordering::SeqCst);
                        let sent = send(req::Payload::ChallengeResponse(
                            legacy::RegisterUsingBoundKeypairChallengeResponse {
                                solution: solution.into_bytes(),
                            },
                        ))
                        .await;
                        if sent.is_err() {
                            return Err(closed_reason(&mut inbound).await);
                        }
                    }
                    Err(why) => return Err(give_up(why)),
                }
            }
            resp::Response::Rotation(r) => {
                info!(
                    suite = r.signature_algorithm_suite,
                    "Server has requested keypair rotation"
                );
                let suite = Suite::from_number(r.signature_algorithm_suite)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return Err(give_up(rotation_refused(&suite)));
            }
            resp::Response::Certs(_) if !answered.load(Ordering::SeqCst) => {
                return Err(give_up(unchallenged_result()));
            }
            resp::Response::Certs(result) => {
                let certs = result.certs.ok_or_else(|| {
                    JoinError::Refused("the cluster's result carries no certificates".to_owned())
                })?;
                let identity = Identity::from_text(
                    subject.private_pem,
                    subject.ssh_authorized,
                    &certs.tls,
                    &certs.tlsca_certs,
                    &certs.ssh,
                    &certs.sshca_certs,
                )
                .map_err(|e| {
                    JoinError::Refused(format!("the cluster's certificates are unusable: {e:#}"))
                })?;
                let bound_public_key = Some(result.public_key).filter(|k| !k.is_empty());
                return Ok(Joined {
                    identity,
                    rpc: Rpc::Legacy,
                    suite,
                    bound_public_key,
                    authenticated: false,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_like_grpc() {
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::Unknown), "UNKNOWN");
    }

    #[test]
    fn rejections_carry_hints() {
        let e = JoinError::Rejected {
            code: Code::PermissionDenied,
            message: "token expired or not found".into(),
        };
        assert_eq!(
            e.to_string(),
            "the cluster rejected the join (PERMISSION_DENIED): token expired or not found; check that \
             onboarding.token names an existing bound_keypair token (tctl get tokens)"
        );
    }
}
