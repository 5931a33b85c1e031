//! The bound-keypair join as Teleport's Auth runs it (`lib/join/boundkeypair/boundkeypair.go`
//! `HandleBoundKeypairJoin`, `lib/boundkeypair/bound_keypair.go`), shared by both RPCs.
//!
//! Each RPC supplies a [`Peer`] that carries a challenge or a rotation request to the client and
//! brings back its answer; everything else (the decision table of spec §6.4, recovery limits,
//! join state, rotation, locks, the token's compare-and-swap update, certificate issuance) is
//! here, with Teleport's error texts and codes (spec §10, `docs/teleport-source-notes.md` Q3/Q4).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keybound_signer::{PublicKey, Signer as _, jws};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tonic::Status;

use super::Cluster;
use super::auth::Caller;
use super::ca::BotCertRequest;
use super::tokens::{RecoveryMode, Status as TokenStatus, Token};
use keybound_teleport::suite::Suite;

/// Go-jose's leeway in Teleport's challenge validation.
const LEEWAY: Duration = Duration::from_secs(60);
/// `defaults.DefaultRenewableCertTTL`: the TTL when a client sends no `expires`.
const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);
/// `defaults.MaxRenewableCertTTL`.
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Carries the server's half of the conversation to the client.
pub(crate) trait Peer {
    /// The cluster, whose misbehaviour the peer follows.
    fn cluster(&self) -> &Cluster;

    /// Sends one challenge (`public_key` as an `authorized_keys` line, the JSON `document`) and
    /// returns the client's compact JWS.
    async fn ask(&mut self, public_key: &str, document: &str) -> Result<Vec<u8>, Status>;

    /// Waits for the client's next message and returns the status that ends the stream.
    async fn wait_for_client(&mut self) -> Status;

    /// Challenges the client as the cluster's misbehaviour says (normally: [`ask`](Self::ask)
    /// once) and returns its solution.
    async fn challenge(&mut self, public_key: &str, document: &str) -> Result<Vec<u8>, Status> {
        use super::Misbehaviour;
        if self.cluster().misbehaviour() == Some(Misbehaviour::Stall) {
            return Err(self.wait_for_client().await);
        }
        let (public_key, document) = self.cluster().challenge_to_send(public_key, document);
        let solution = self.ask(&public_key, &document).await?;
        if self.cluster().misbehaviour() == Some(Misbehaviour::ChallengeTwice) {
            self.ask(&public_key, &Cluster::second_challenge(&document))
                .await?;
            self.cluster().record_solution();
        }
        Ok(solution)
    }

    /// Asks the client for a new key under `suite`; returns its `authorized_keys` line.
    async fn rotate(&mut self, suite: Suite) -> Result<String, Status>;
}

/// What the client sent in its init message.
pub(crate) struct JoinInput {
    pub(crate) remote_addr: Option<String>,
    /// PKIX DER of the subject key.
    pub(crate) tls_public_key: Vec<u8>,
    /// SSH wire blob of the subject key.
    pub(crate) ssh_public_key: Vec<u8>,
    pub(crate) expires: Option<SystemTime>,
    pub(crate) initial_join_secret: String,
    pub(crate) previous_join_state: Vec<u8>,
    /// The bot identity the stream authenticated with, on Auth's own endpoint (a soft rejoin);
    /// `None` through the Proxy, which drops any authentication (`forwarded_by_proxy`).
    pub(crate) caller: Option<Caller>,
}

/// What a successful join returns.
pub(crate) struct JoinOutput {
    pub(crate) tls_cert: Vec<u8>,
    pub(crate) ssh_cert: Vec<u8>,
    pub(crate) tls_ca_certs: Vec<Vec<u8>>,
    pub(crate) ssh_ca_keys: Vec<Vec<u8>>,
    pub(crate) join_state: Vec<u8>,
    pub(crate) bound_public_key: String,
}

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

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Why a challenge answer was refused, mapped to Teleport's codes: go-jose's own errors are
/// plain errors (UNKNOWN); the time-field and nonce checks are AccessDenied.
enum ChallengeError {
    Plain(String),
    Denied(&'static str),
}

impl Cluster {
    fn issue_challenge(&self, key: &PublicKey) -> (Document, String) {
        let now = unix(self.now());
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let doc = Document {
            iss: self.ca.cluster_name().to_owned(),
            sub: key.key_id(),
            aud: vec![self.ca.cluster_name().to_owned()],
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
        if !doc.aud.iter().any(|a| a == self.ca.cluster_name()) {
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
    async fn challenge<P: Peer>(
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

    /// `HandleBoundKeypairJoin`: onboarding, a soft rejoin by an authenticated bot (same
    /// instance, generation + 1, no recovery used), or a recovery (a new instance).
    pub(crate) async fn bound_keypair_join<P: Peer>(
        &self,
        token: &Token,
        input: JoinInput,
        peer: &mut P,
    ) -> Result<JoinOutput, Status> {
        let spec = &token.bound_keypair;
        let mode = spec.mode();
        let (status, revision) = self.token_status(&token.name);
        let joins_remaining = status.recovery_count < spec.recovery_limit;
        self.check_lock(&token.name)?;

        let mut new_status = status.clone();
        let mut bound_key: PublicKey;
        // A soft rejoin keeps the instance; everything else makes a new one.
        let mut continued: Option<(String, u64)> = None;
        match (&status.bound_public_key, &status.bound_bot_instance_id) {
            (None, _) if input.caller.is_some() => {
                return Err(Status::invalid_argument(
                    "cannot perform first bound keypair join with existing credentials",
                ));
            }
            (None, _) => {
                // Onboarding.
                if mode == RecoveryMode::Standard && !joins_remaining {
                    return Err(Status::permission_denied("no recovery attempts remaining"));
                }
                if let Some(initial) = &spec.initial_public_key {
                    self.challenge(peer, initial, true).await?;
                    bound_key = initial.clone();
                } else if let Some(secret) = &spec.registration_secret {
                    let late = spec
                        .must_register_before
                        .is_some_and(|deadline| self.now() > deadline);
                    let matches = bool::from(
                        input
                            .initial_join_secret
                            .as_bytes()
                            .ct_eq(secret.as_bytes()),
                    );
                    if input.initial_join_secret.is_empty() || late || !matches {
                        return Err(Status::permission_denied(
                            "a valid registration secret is required",
                        ));
                    }
                    let line = peer.rotate(self.config.suite).await.map_err(|s| {
                        Status::new(s.code(), format!("requesting public key: {}", s.message()))
                    })?;
                    bound_key = PublicKey::from_openssh(&line).map_err(|e| {
                        Status::invalid_argument(format!("parsing public key: {e}"))
                    })?;
                    self.challenge(peer, &bound_key, true).await?;
                } else {
                    return Err(Status::invalid_argument(
                        "either an initial public key or registration secret is required",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(Status::invalid_argument(
                    "bad backend state, please recreate the join token",
                ));
            }
            (Some(bound), Some(instance)) if input.caller.is_some() => {
                // Soft rejoin by a bot presenting its current certificate.
                let caller = input.caller.as_ref().expect("checked above");
                let key = PublicKey::from_openssh(bound).map_err(|_| {
                    Status::invalid_argument("bad backend state, please recreate the join token")
                })?;
                self.challenge(peer, &key, false).await?;
                self.check_lock(&token.name)?;
                if status.recovery_count > 0 && mode != RecoveryMode::Insecure {
                    self.verify_join_state(token, &status, &input.previous_join_state)?;
                }
                if caller.bot_instance_id.as_deref() != Some(instance.as_str()) {
                    return Err(Status::permission_denied("bot instance mismatch"));
                }
                continued = Some((instance.clone(), caller.generation));
                bound_key = key;
            }
            (Some(bound), Some(_instance)) => {
                // Recovery: every static-key join after the first without a valid identity.
                let key = PublicKey::from_openssh(bound).map_err(|_| {
                    Status::invalid_argument("bad backend state, please recreate the join token")
                })?;
                self.challenge(peer, &key, false).await?;
                if mode == RecoveryMode::Standard && !joins_remaining {
                    return Err(Status::permission_denied("no rejoins remaining"));
                }
                self.check_lock(&token.name)?;
                if status.recovery_count > 0 && mode != RecoveryMode::Insecure {
                    self.verify_join_state(token, &status, &input.previous_join_state)?;
                }
                bound_key = key;
            }
        }
        self.check_lock(&token.name)?;

        // A recovery (onboarding included) consumes a recovery, in every mode (insecure skips
        // only the limit), and makes a new bot instance.
        let now = self.now();
        let instance_id = match &continued {
            Some((instance, _)) => instance.clone(),
            None => {
                let instance_id = uuid::Uuid::new_v4().to_string();
                new_status.recovery_count += 1;
                new_status.last_recovered_at = Some(now);
                new_status.bound_bot_instance_id = Some(instance_id.clone());
                instance_id
            }
        };

        // Rotation (`shouldRequestBoundKeypairRotation`).
        if let Some(rotate_after) = spec.rotate_after {
            let due = rotate_after <= now
                && status
                    .last_rotated_at
                    .is_none_or(|last| last < rotate_after);
            if due {
                let line = peer.rotate(self.config.suite).await?;
                let new_key = PublicKey::from_openssh(&line)
                    .map_err(|e| Status::invalid_argument(format!("parsing public key: {e}")))?;
                if new_key == bound_key {
                    return Err(Status::invalid_argument(
                        "public key may not be reused after rotation",
                    ));
                }
                self.challenge(peer, &new_key, false).await.map_err(|s| {
                    Status::new(
                        s.code(),
                        format!("solving challenge for new public key: {}", s.message()),
                    )
                })?;
                bound_key = new_key;
                new_status.last_rotated_at = Some(now);
            }
        }
        new_status.bound_public_key = Some(bound_key.to_openssh());

        // The generation counter (`updateBotInstance` in `lib/auth/bot.go`): enforced for bound
        // keypair bots; a stale certificate locks the token.
        // Checked here, recorded once the certificates are made and the token state committed.
        let generation = match &continued {
            Some((instance, presented)) => {
                self.check_generation(token, instance, *presented)?;
                presented + 1
            }
            None => 1,
        };
        // Certificates first, then the state write: a failed write discards them.
        let expires = input
            .expires
            .unwrap_or(now + DEFAULT_TTL)
            .min(now + MAX_TTL);
        let certs = self
            .ca
            .issue_bot(&BotCertRequest {
                bot_name: &token.bot_name,
                bot_instance_id: &instance_id,
                generation,
                tls_public_key_der: &input.tls_public_key,
                ssh_public_key_wire: &input.ssh_public_key,
                not_after: expires,
                login_ip: input.remote_addr.as_deref(),
                join_token_name: &token.name,
            })
            .map_err(|e| Status::unknown(format!("{e:#}")))?;
        let join_state = self.sign_join_state(token, &new_status, mode)?;
        self.commit_status(&token.name, revision, new_status)?;
        match &continued {
            Some((instance, presented)) => {
                self.record_generation(token, instance, *presented, generation)?
            }
            None => self.new_instance(&token.bot_name, &instance_id),
        }
        if self.misbehaviour() == Some(super::Misbehaviour::DropResult) {
            return Err(Status::unavailable(
                "dev cluster: dropping the join result after issuing it, as asked",
            ));
        }
        Ok(JoinOutput {
            tls_cert: certs.tls_cert_der,
            ssh_cert: certs.ssh_cert_wire,
            tls_ca_certs: self.ca.tls_ca_ders(),
            ssh_ca_keys: self.ca.ssh_ca_wires(),
            join_state,
            bound_public_key: bound_key.to_openssh(),
        })
    }

    // === Bot instances and their generation counter (`lib/auth/bot.go`) ===

    /// Records a new bot instance, whose first certificates are generation 1.
    fn new_instance(&self, bot_name: &str, instance_id: &str) {
        self.instances.lock().expect("instance lock").insert(
            instance_id.to_owned(),
            super::Instance {
                bot_name: bot_name.to_owned(),
                generation: 1,
            },
        );
    }

    /// `updateBotInstance`: the presented generation must be the instance's latest. A mismatch
    /// means two holders of one identity (a stolen certificate, or a copy rejoining with an old
    /// one): the token is locked.
    fn check_generation(
        &self,
        token: &Token,
        instance_id: &str,
        presented: u64,
    ) -> Result<(), Status> {
        let stored = self
            .instances
            .lock()
            .expect("instance lock")
            .get(instance_id)
            .map(|i| i.generation);
        match stored {
            Some(stored) if stored == presented => Ok(()),
            Some(stored) => Err(self.generation_mismatch(
                token,
                instance_id,
                format!("stored={stored}, presented={presented}"),
            )),
            None => Err(self.generation_mismatch(
                token,
                instance_id,
                format!("instance not found, presented={presented}"),
            )),
        }
    }

    /// Records the generation of certificates just issued, if no other rejoin of the instance
    /// got there first (a compare-and-swap on the instance, as Auth's backend write is).
    fn record_generation(
        &self,
        token: &Token,
        instance_id: &str,
        presented: u64,
        next: u64,
    ) -> Result<(), Status> {
        let mut instances = self.instances.lock().expect("instance lock");
        match instances.get_mut(instance_id) {
            Some(instance) if instance.generation == presented => {
                instance.generation = next;
                Ok(())
            }
            other => {
                let detail = match other {
                    Some(i) => format!("stored={}, presented={presented}", i.generation),
                    None => format!("instance not found, presented={presented}"),
                };
                drop(instances);
                Err(self.generation_mismatch(token, instance_id, detail))
            }
        }
    }

    fn generation_mismatch(&self, token: &Token, instance_id: &str, detail: String) -> Status {
        self.lock(
            &token.name,
            format!(
                "Bot joins via the token {:?} have been locked due to a certificate generation mismatch by {}/{instance_id}, possibly indicating a stolen certificate.",
                token.name, token.bot_name
            ),
        );
        Status::permission_denied(format!(
            "cert generation mismatch for bot {}/{instance_id}: {detail}",
            token.bot_name
        ))
    }

    // === Join state (`lib/boundkeypair/join_state.go`) ===

    fn sign_join_state(
        &self,
        token: &Token,
        status: &TokenStatus,
        mode: RecoveryMode,
    ) -> Result<Vec<u8>, Status> {
        let key = self.join_state_key.public_key();
        let header = serde_json::json!({"alg": key.algorithm().jws_alg(), "kid": key.key_id(), "typ": "JWT"});
        let now = unix(self.now());
        let claims = serde_json::json!({
            "iss": self.ca.cluster_name(), "sub": token.bot_name, "aud": [self.ca.cluster_name()],
            "nbf": now - 10, "iat": now,
            "bot_instance_id": status.bound_bot_instance_id, "recovery_sequence": status.recovery_count,
            "recovery_limit": token.bound_keypair.recovery_limit, "recovery_mode": mode.as_str(),
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .join_state_key
            .sign(jwt.as_bytes())
            .map_err(|e| Status::internal(format!("signing join state: {e}")))?;
        jwt.push('.');
        jwt.push_str(&signature.to_base64url());
        Ok(jwt.into_bytes())
    }

    fn verify_join_state(
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
        let verified = jws::verify_compact(self.join_state_key.public_key(), state)
            .ok()
            .and_then(|payload| serde_json::from_slice::<Claims>(&payload).ok())
            .filter(|c| {
                c.iss == self.ca.cluster_name()
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
