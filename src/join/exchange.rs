//! What keybound does with each message of a join, whichever RPC carries it: the decisions of
//! the bound-keypair exchange ([`decide`]), made once for `JoinService.Join` ([`super::v1`]) and
//! the legacy RPC ([`super::legacy`]).
//!
//! With a static key, keybound answers one challenge per join, for its own key, and only once it
//! is a fresh Teleport challenge document ([`vet_challenge`]); it refuses a rotation (a static
//! key cannot rotate), certificates before any challenge, and anything it does not know. In
//! standard mode ([`crate::bkp`]) it signs with whichever of its keys the cluster names, makes a
//! new key on a rotation request (at any point of the stream), answers one more challenge for
//! each key it made in the join, and stores the result's key and join state before the identity
//! is made. Each refusal is a [`GiveUp`]: the user's error and the message the cluster is told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use keybound_signer::{PublicKey, jws};
use tracing::{debug, info};

use super::challenge;
use super::error::JoinError;
use super::types::{JoinParams, Joined, Rpc};
use crate::identity::Identity;
use crate::subject_key::SubjectKey;
use crate::untrusted;
use keybound_teleport::suite::Suite;

/// tbot's message when the server challenges a key it does not hold (the missing "not" is in
/// the original, `lib/join/joinclient/join_boundkeypair.go`; keybound's message says it right).
const WRONG_KEY: &str =
    "configured static private key does not match the value requested by the server";
/// What a static key answers to a rotation request (tbot: `StaticClientState.RequestNewKeypair`).
const NO_ROTATION: &str = "static private keys do not support automatic rotation";

/// A message of the cluster's, in either RPC's words.
pub(super) enum Message {
    /// Another `ServerInit` (some 18.x builds send two, the second without a suite).
    ServerInit {
        /// Its suite, as sent.
        suite: String,
    },
    /// A challenge for a bound key.
    Challenge {
        /// The key challenged, an `authorized_keys` line.
        public_key: String,
        /// The document to sign.
        document: String,
    },
    /// A request to rotate the bound key.
    Rotation {
        /// The suite the new key should have, as sent.
        suite: String,
    },
    /// The bot's certificates.
    Certificates(Issued),
    /// A result for another kind of join (a host's).
    OtherResult(&'static str),
    /// A message with nothing in it.
    Empty,
    /// A message for another join method.
    Unexpected(&'static str),
}

/// The certificates a result carries, as a way to make the identity from the subject key.
pub(super) struct Issued {
    /// The identity, from the subject key; `None` when the result carries no certificates.
    pub(super) identity: Option<Box<dyn FnOnce(SubjectKey) -> anyhow::Result<Identity> + Send>>,
    /// The public key now bound to the token, when the cluster says.
    pub(super) bound_public_key: Option<String>,
    /// The join state the cluster issued.
    pub(super) join_state: Vec<u8>,
}

impl Issued {
    /// The join's result: the identity for `subject`, through `rpc`, under `suite`.
    pub(super) fn joined(
        self,
        params: &JoinParams,
        subject: SubjectKey,
        rpc: Rpc,
        suite: Suite,
    ) -> Result<Joined, JoinError> {
        if let Some(standard) = &params.standard {
            // tbot's `UpdateFromRegisterResult` and `Store`, before the identity is made.
            let bound = self
                .bound_public_key
                .as_deref()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    JoinError::Refused(
                        "register result is missing bound keypair parameters".to_owned(),
                    )
                })?;
            standard
                .apply_result(bound, &self.join_state)
                .map_err(|e| {
                    JoinError::Refused(format!(
                        "the cluster accepted the join, but its result could not be stored: {e:#}"
                    ))
                })?;
        }
        let make = self.identity.ok_or_else(|| {
            JoinError::Refused("the cluster's result carries no certificates".to_owned())
        })?;
        let identity = make(subject).map_err(|e| {
            JoinError::Refused(format!("the cluster's certificates are unusable: {e:#}"))
        })?;
        Ok(Joined {
            identity,
            rpc,
            suite,
            bound_public_key: self.bound_public_key.filter(|k| !k.is_empty()),
            authenticated: false,
            join_state: self.join_state,
        })
    }
}

/// What to do next.
pub(super) enum Step {
    /// Nothing: read the next message.
    Ignore,
    /// Send this challenge solution.
    Solution(String),
    /// Send this rotation response: the new key's `authorized_keys` line.
    RotationResponse(String),
    /// Stop the join, telling the cluster why.
    GiveUp(GiveUp),
    /// The join is done.
    Done(Issued),
}

/// Decides what to do with `message`. `answered` says whether this join's challenge was
/// answered already; answering one sets it.
pub(super) async fn decide(params: &JoinParams, answered: &AtomicBool, message: Message) -> Step {
    let already = answered.load(Ordering::SeqCst);
    match message {
        Message::ServerInit { suite } => {
            debug!(suite = %untrusted::name(&suite), "ignoring a repeated ServerInit");
            Step::Ignore
        }
        Message::Challenge {
            public_key,
            document,
        } if params.standard.is_some() => {
            standard_challenge(params, answered, &public_key, &document).await
        }
        Message::Challenge { .. } if already => Step::GiveUp(second_challenge()),
        Message::Challenge {
            public_key,
            document,
        } => match answer(params, &public_key, &document).await {
            Ok(solution) => {
                answered.store(true, Ordering::SeqCst);
                Step::Solution(solution)
            }
            Err(why) => Step::GiveUp(why),
        },
        Message::Rotation { suite } => {
            info!(suite = %untrusted::name(&suite), "Server has requested keypair rotation");
            match &params.standard {
                Some(standard) => rotate(standard, &suite).await,
                None => Step::GiveUp(rotation_refused(&suite)),
            }
        }
        Message::Certificates(_) | Message::OtherResult(_) if !already => {
            Step::GiveUp(unchallenged_result())
        }
        Message::Certificates(issued) => Step::Done(issued),
        Message::Empty => Step::GiveUp(GiveUp::refused(
            "the cluster sent an empty join message".to_owned(),
        )),
        Message::OtherResult(name) | Message::Unexpected(name) => Step::GiveUp(GiveUp::refused(
            format!("the cluster sent an unexpected join message ({name})"),
        )),
    }
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

/// A challenge in standard mode: signed with the key it names, if keybound holds it (compared as
/// parsed keys: the active key, then the history, newest first; tbot's `SignerForPublicKey`).
/// A join answers one challenge, and one more for each key it made on the cluster's request.
async fn standard_challenge(
    params: &JoinParams,
    answered: &AtomicBool,
    public_key: &str,
    document: &str,
) -> Step {
    let Some(standard) = &params.standard else {
        return Step::GiveUp(GiveUp::refused("no client state".to_owned()));
    };
    let Ok(named) = PublicKey::from_openssh(public_key) else {
        return Step::GiveUp(GiveUp::refused(format!(
            "could not lookup signer for public key {}: not an Ed25519 or P-256 key",
            untrusted::quoted(public_key)
        )));
    };
    let Some(signer) = standard.signer_for(&named) else {
        return Step::GiveUp(GiveUp::refused(format!(
            "could not lookup signer for public key {}: no matching key found in the client \
             state; the token is bound to a key this bot does not hold: an admin must recreate \
             the token (with a new registration secret, or this bot's public key from \
             keybound keypair create --storage)",
            named.fingerprint()
        )));
    };
    let made_here = standard.take_pending(&named);
    if answered.load(Ordering::SeqCst) && !made_here {
        return Step::GiveUp(second_challenge());
    }
    match sign_with(&signer, params, public_key, document).await {
        Ok(solution) => {
            answered.store(true, Ordering::SeqCst);
            Step::Solution(solution)
        }
        Err(why) => Step::GiveUp(why),
    }
}

/// A rotation request in standard mode: a new key for the suite the cluster names, stored in the
/// client state before the cluster hears of it (tbot's `RequestNewKeypair`).
async fn rotate(standard: &crate::bkp::Standard, suite: &str) -> Step {
    let Ok(suite) = Suite::parse(suite) else {
        return Step::GiveUp(GiveUp::refused(format!(
            "requesting new keypair: the cluster names an unknown signature algorithm suite {}",
            untrusted::quoted(suite)
        )));
    };
    let standard = standard.clone();
    let made = tokio::task::spawn_blocking(move || standard.rotate(suite)).await;
    match made {
        Ok(Ok(public)) => Step::RotationResponse(public.to_openssh()),
        Ok(Err(e)) => Step::GiveUp(GiveUp::refused(format!("requesting new keypair: {e:#}"))),
        Err(e) => Step::GiveUp(GiveUp::refused(format!(
            "requesting new keypair: the task failed: {e}"
        ))),
    }
}

/// Decides whether to sign a challenge with the static key, and signs it. `Err` carries the
/// reason to give up.
async fn answer(params: &JoinParams, public_key: &str, document: &str) -> Result<String, GiveUp> {
    let signer = params
        .signer
        .as_ref()
        .ok_or_else(|| GiveUp::refused("no static key is configured".to_owned()))?;
    sign_with(signer, params, public_key, document).await
}

/// Vets the challenge for `signer`'s key and signs it.
async fn sign_with(
    signer: &std::sync::Arc<dyn keybound_signer::Signer>,
    params: &JoinParams,
    public_key: &str,
    document: &str,
) -> Result<String, GiveUp> {
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
pub(super) struct GiveUp {
    pub(super) error: JoinError,
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
    pub(super) fn message(&self) -> String {
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

/// A subject key for `suite`, made off the async threads (RSA takes a while).
pub(super) async fn generate_subject(suite: Suite) -> Result<SubjectKey, JoinError> {
    tokio::task::spawn_blocking(move || SubjectKey::generate(suite))
        .await
        .map_err(|e| JoinError::Refused(format!("subject key generation failed: {e}")))?
        .map_err(|e| JoinError::Refused(format!("subject key generation failed: {e:#}")))
}
