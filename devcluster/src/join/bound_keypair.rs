//! The bound-keypair join as Teleport's Auth runs it (`lib/join/boundkeypair/boundkeypair.go`
//! `HandleBoundKeypairJoin`, `lib/auth/join_bound_keypair.go`), shared by both RPCs: the
//! decision table of spec §6.4 (onboarding, a soft rejoin by an authenticated bot, a recovery),
//! recovery limits, join state, rotation, locks, the token's compare-and-swap update and
//! certificate issuance, with Teleport's error texts and codes (spec §10,
//! `docs/teleport-source-notes.md` Q3/Q4).

use std::time::{Duration, SystemTime};

use keybound_signer::PublicKey;
use tonic::Status;

use super::peer::{JoinInput, JoinOutput, Peer};
use crate::ca::{BotCertRequest, BotCerts, bot_resource_name};
use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::misbehave::Misbehaviour;
use crate::secret::Secret;
use crate::tokens::{RecoveryMode, Status as TokenStatus, Token};

/// `defaults.DefaultRenewableCertTTL`: the TTL when a client sends no `expires`.
const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);
/// `defaults.MaxRenewableCertTTL`.
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// One join attempt: the token, its bound-keypair status when the attempt began, and what the
/// client sent.
pub(super) struct Attempt<'a> {
    pub(super) token: &'a Token,
    pub(super) status: &'a TokenStatus,
    pub(super) input: &'a JoinInput,
}

impl Attempt<'_> {
    fn mode(&self) -> RecoveryMode {
        self.token.bound_keypair.mode()
    }

    /// No recoveries left (`!hasJoinsRemaining`), where the mode enforces the limit (standard).
    fn out_of_recoveries(&self) -> bool {
        let joins_remaining = self.status.recovery_count < self.token.bound_keypair.recovery_limit;
        self.mode() == RecoveryMode::Standard && !joins_remaining
    }

    /// Join state is required after the first recovery, unless the mode is insecure.
    fn join_state_required(&self) -> bool {
        self.status.recovery_count > 0 && self.mode() != RecoveryMode::Insecure
    }
}

/// A soft rejoin's bot instance and the generation of the certificate it presented.
struct Rejoin {
    instance_id: String,
    presented: u64,
}

impl Cluster {
    /// `HandleBoundKeypairJoin`: onboarding, a soft rejoin by an authenticated bot (same
    /// instance, generation + 1, no recovery used), or a recovery (a new instance).
    pub(crate) async fn bound_keypair_join<P: Peer>(
        &self,
        token: &Token,
        input: JoinInput,
        peer: &mut P,
    ) -> Result<JoinOutput, Status> {
        let (status, revision) = self.token_status(&token.name);
        let attempt = Attempt {
            token,
            status: &status,
            input: &input,
        };
        self.check_lock(&token.name)?;
        let (mut bound_key, rejoin) = self.prove_bound_key(&attempt, peer).await?;
        self.check_lock(&token.name)?;

        let now = self.now();
        let mut new_status = status.clone();
        let instance_id = match &rejoin {
            Some(rejoin) => rejoin.instance_id.clone(),
            None => {
                self.audit_recovery(&attempt, Some(&bound_key), Ok(status.recovery_count + 1));
                consume_recovery(&mut new_status, now)
            }
        };
        // A registration used the secret: it is cleared (`last_rotated_at` is not set).
        new_status.registration_secret = None;
        let rotated = self.rotate_if_due(&attempt, &bound_key, now, peer).await;
        match rotated {
            Ok(Some(new_key)) => {
                self.audit_rotation(&attempt, &bound_key, Ok(&new_key));
                bound_key = new_key;
                new_status.last_rotated_at = Some(now);
            }
            Ok(None) => {}
            Err(e) => {
                self.audit_rotation(&attempt, &bound_key, Err(e.message()));
                return Err(e);
            }
        }
        new_status.bound_public_key = Some(bound_key.to_openssh());

        // The generation counter (`updateBotInstance` in `lib/auth/bot.go`): enforced for bound
        // keypair bots; a stale certificate locks the token.
        // Checked here, recorded once the certificates are made and the token state committed.
        let generation = match &rejoin {
            Some(rejoin) => {
                self.check_generation(token, &rejoin.instance_id, rejoin.presented)?;
                rejoin.presented + 1
            }
            None => 1,
        };
        // Certificates first, then the state write: a failed write discards them.
        let certs = self.generate_bot_certs(&attempt, &instance_id, generation, now)?;
        let join_state = self.sign_join_state(token, &new_status, attempt.mode())?;
        self.commit_status(&token.name, revision, new_status)?;
        match &rejoin {
            Some(rejoin) => {
                self.record_generation(token, &rejoin.instance_id, rejoin.presented, generation)?
            }
            None => self.new_instance(&token.bot_name, &instance_id),
        }
        if self.misbehaviour() == Some(Misbehaviour::DropResult) {
            return Err(Status::unavailable(
                "dev cluster: dropping the join result after issuing it, as asked",
            ));
        }
        Ok(JoinOutput {
            tls_cert: certs.tls_cert_der,
            ssh_cert: certs.ssh_cert_wire,
            tls_ca_certs: self.ca().tls_ca_ders(),
            ssh_ca_keys: self.ca().ssh_ca_wires(),
            join_state,
            bound_public_key: bound_key.to_openssh(),
        })
    }

    /// The decision table of spec §6.4: which key the client must prove it holds, and whether
    /// it goes on with its bot instance (a soft rejoin) or gets a new one.
    async fn prove_bound_key<P: Peer>(
        &self,
        attempt: &Attempt<'_>,
        peer: &mut P,
    ) -> Result<(PublicKey, Option<Rejoin>), Status> {
        let status = attempt.status;
        match (
            &status.bound_public_key,
            &status.bound_bot_instance_id,
            &attempt.input.caller,
        ) {
            (None, _, Some(_)) => Err(Status::invalid_argument(
                "cannot perform first bound keypair join with existing credentials",
            )),
            (None, _, None) => Ok((self.onboard(attempt, peer).await?, None)),
            (Some(_), None, _) => Err(bad_backend_state()),
            (Some(bound), Some(instance), Some(caller)) => {
                let key = self
                    .soft_rejoin(attempt, bound, instance, caller, peer)
                    .await?;
                let rejoin = Rejoin {
                    instance_id: instance.clone(),
                    presented: caller.generation,
                };
                Ok((key, Some(rejoin)))
            }
            (Some(bound), Some(_instance), None) => {
                Ok((self.recover(attempt, bound, peer).await?, None))
            }
        }
    }

    /// Onboarding (the first join): the client proves it holds the token's initial public key,
    /// or shows the registration secret and makes a key.
    async fn onboard<P: Peer>(
        &self,
        attempt: &Attempt<'_>,
        peer: &mut P,
    ) -> Result<PublicKey, Status> {
        if attempt.out_of_recoveries() {
            return Err(Status::permission_denied("no recovery attempts remaining"));
        }
        let spec = &attempt.token.bound_keypair;
        if let Some(initial) = &spec.initial_public_key {
            if let Err(e) = self.challenge(peer, initial, true).await {
                self.audit_recovery(attempt, Some(initial), Err(e.message()));
                return Err(e);
            }
            Ok(initial.clone())
        } else if let Some(secret) = &attempt.status.registration_secret {
            self.register_with_secret(attempt, secret, peer).await
        } else {
            Err(Status::invalid_argument(
                "either an initial public key or registration secret is required",
            ))
        }
    }

    /// Onboarding with a registration secret: a matching secret, in time, then a key the client
    /// makes on request and proves it holds.
    async fn register_with_secret<P: Peer>(
        &self,
        attempt: &Attempt<'_>,
        secret: &Secret,
        peer: &mut P,
    ) -> Result<PublicKey, Status> {
        let given = &attempt.input.initial_join_secret;
        let late = attempt
            .token
            .bound_keypair
            .must_register_before
            .is_some_and(|deadline| self.now() > deadline);
        let matches = secret.matches(given);
        let refused = || Status::permission_denied("a valid registration secret is required");
        // Teleport audits two of the three refusals, not the late one.
        if given.is_empty() {
            self.audit_recovery(attempt, None, Err("no registration secret was provided"));
            return Err(refused());
        }
        if late {
            return Err(refused());
        }
        if !matches {
            self.audit_recovery(attempt, None, Err("registration secret comparison failed"));
            return Err(refused());
        }
        let requested = async {
            let line = peer.rotate(self.config().suite).await.map_err(|s| {
                Status::new(
                    s.code(),
                    format!("requesting a new public key: {}", s.message()),
                )
            })?;
            let key = parse_public_key(&line)?;
            self.challenge(peer, &key, false).await.map_err(|s| {
                Status::new(
                    s.code(),
                    format!("solving challenge for new public key: {}", s.message()),
                )
            })?;
            Ok::<_, Status>(key)
        }
        .await
        .map_err(|s| Status::new(s.code(), format!("requesting public key: {}", s.message())));
        if let Err(e) = &requested {
            self.audit_recovery(attempt, None, Err(e.message()));
        }
        requested
    }

    /// A soft rejoin by a bot presenting its current certificate: the bound key, then (after a
    /// recovery) the latest join state, and the bound bot instance.
    async fn soft_rejoin<P: Peer>(
        &self,
        attempt: &Attempt<'_>,
        bound: &str,
        instance: &str,
        caller: &Caller,
        peer: &mut P,
    ) -> Result<PublicKey, Status> {
        let key = bound_public_key(bound)?;
        self.challenge(peer, &key, false).await?;
        self.check_lock(&attempt.token.name)?;
        self.verify_join_state_if_required(attempt)?;
        if caller.bot_instance_id.as_deref() != Some(instance) {
            return Err(Status::permission_denied("bot instance mismatch"));
        }
        Ok(key)
    }

    /// A recovery: every static-key join after the first without a valid identity. The bound
    /// key, a recovery left, then (after a recovery) the latest join state.
    async fn recover<P: Peer>(
        &self,
        attempt: &Attempt<'_>,
        bound: &str,
        peer: &mut P,
    ) -> Result<PublicKey, Status> {
        let key = bound_public_key(bound)?;
        if let Err(e) = self.challenge(peer, &key, false).await {
            self.audit_recovery(attempt, Some(&key), Err(e.message()));
            return Err(e);
        }
        if attempt.out_of_recoveries() {
            return Err(Status::permission_denied("no rejoins remaining"));
        }
        self.check_lock(&attempt.token.name)?;
        self.verify_join_state_if_required(attempt)?;
        Ok(key)
    }

    fn verify_join_state_if_required(&self, attempt: &Attempt<'_>) -> Result<(), Status> {
        if !attempt.join_state_required() {
            return Ok(());
        }
        self.verify_join_state(
            attempt.token,
            attempt.status,
            &attempt.input.previous_join_state,
        )
    }

    /// `shouldRequestBoundKeypairRotation` and `requestBoundKeypairRotation`: once the token's
    /// `rotate_after` has passed (and no rotation since), the client makes a new key, which
    /// must differ from `current`, and proves it holds it.
    async fn rotate_if_due<P: Peer>(
        &self,
        attempt: &Attempt<'_>,
        current: &PublicKey,
        now: SystemTime,
        peer: &mut P,
    ) -> Result<Option<PublicKey>, Status> {
        let Some(rotate_after) = attempt.token.bound_keypair.rotate_after else {
            return Ok(None);
        };
        let due = rotate_after <= now
            && attempt
                .status
                .last_rotated_at
                .is_none_or(|last| last < rotate_after);
        if !due {
            return Ok(None);
        }
        let line = peer.rotate(self.config().suite).await?;
        let new_key = parse_public_key(&line)?;
        self.challenge(peer, &new_key, false).await.map_err(|s| {
            Status::new(
                s.code(),
                format!("solving challenge for new public key: {}", s.message()),
            )
        })?;
        // Only once the new key is proven (the client has signed for it already), a key equal
        // to the bound one is refused (Teleport's test `rotation-same-key-not-allowed`).
        if new_key == *current {
            return Err(Status::invalid_argument(
                "public key may not be reused after rotation",
            ));
        }
        Ok(Some(new_key))
    }

    /// `generateCertsBot`: the bot's certificates for the subject keys the client sent, until
    /// the expiry it asked for (an hour by default, a day at most); refused while a lock
    /// targets the bot's user or role (`generateUserCert`).
    fn generate_bot_certs(
        &self,
        attempt: &Attempt<'_>,
        instance_id: &str,
        generation: u64,
        now: SystemTime,
    ) -> Result<BotCerts, Status> {
        let (token, input) = (attempt.token, attempt.input);
        // `generateInitialBotCerts` (lib/auth/bot.go) reads the bot's user `bot-<name>`; when it
        // does not exist, Auth answers with nothing more than this (trace.AccessDenied), after
        // the challenge and before the token's status changes (lib/auth/join_bound_keypair.go).
        if !self.bot_exists(&token.bot_name) {
            return Err(Status::permission_denied("access denied"));
        }
        let bot_user = bot_resource_name(&token.bot_name);
        self.check_user_locks(&bot_user, std::slice::from_ref(&bot_user))?;
        let expires = input
            .expires
            .unwrap_or(now + DEFAULT_TTL)
            .min(now + MAX_TTL);
        self.ca()
            .issue_bot(&BotCertRequest {
                bot_name: &token.bot_name,
                bot_instance_id: instance_id,
                generation,
                tls_public_key_der: &input.tls_public_key,
                ssh_public_key_wire: &input.ssh_public_key,
                not_after: expires,
                login_ip: input.remote_addr.as_deref(),
                join_token_name: &token.name,
            })
            .map_err(|e| Status::unknown(format!("{e:#}")))
    }
}

/// A recovery (onboarding included) consumes a recovery, in every mode (insecure skips only the
/// limit), and makes a new bot instance; returns its ID.
fn consume_recovery(status: &mut TokenStatus, now: SystemTime) -> String {
    let instance_id = uuid::Uuid::new_v4().to_string();
    status.recovery_count += 1;
    status.last_recovered_at = Some(now);
    status.bound_bot_instance_id = Some(instance_id.clone());
    instance_id
}

/// The bound key the token's status records.
fn bound_public_key(line: &str) -> Result<PublicKey, Status> {
    PublicKey::from_openssh(line).map_err(|_| bad_backend_state())
}

fn bad_backend_state() -> Status {
    Status::invalid_argument("bad backend state, please recreate the join token")
}

/// A key the client sent, as an `authorized_keys` line.
fn parse_public_key(line: &str) -> Result<PublicKey, Status> {
    PublicKey::from_openssh(line)
        .map_err(|e| Status::invalid_argument(format!("parsing public key: {e}")))
}
