//! The cluster's state, shared by every connection: its configuration, CAs and join-state key;
//! tokens with their bound-keypair status; roles; bot instances and their generations; locks;
//! the misbehaviour in force; a clock tests can move; and counters tests read.

mod instances;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybound_signer::Algorithm;
use keybound_signer_soft::SoftSigner;
use keybound_teleport::suite::Suite;
use tonic::Status;
use tracing::warn;

use crate::ca::ClusterCa;
use crate::config::DevClusterConfig;
use crate::misbehave::Misbehaviour;
use crate::roles::Role;
use crate::tokens::{Status as TokenStatus, Token};
use instances::Instances;

/// A token and its bound-keypair status, with the revision its compare-and-swap update checks.
struct Entry {
    token: Token,
    status: TokenStatus,
    revision: u64,
}

/// The cluster's state, shared by every connection.
pub struct Cluster {
    config: DevClusterConfig,
    ca: ClusterCa,
    /// The bound-keypair CA's JWT key, which signs join state documents.
    join_state_key: SoftSigner,
    tokens: Mutex<HashMap<String, Entry>>,
    roles: HashMap<String, Role>,
    instances: Instances,
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
    pub(crate) fn new(config: DevClusterConfig) -> anyhow::Result<Self> {
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
            instances: Instances::default(),
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
        self.instances.count(bot_name)
    }

    /// The generation of an instance's latest certificates.
    pub fn generation_of(&self, instance_id: &str) -> Option<u64> {
        self.instances.generation(instance_id)
    }

    /// How many certificate sets `GenerateUserCerts` issued.
    pub fn user_certs_issued(&self) -> usize {
        self.user_certs.load(Ordering::Relaxed)
    }

    /// Every `GivingUp` received so far, oldest first.
    pub fn givings_up(&self) -> Vec<GaveUp> {
        self.gave_up.lock().expect("giving-up lock").clone()
    }

    /// How the cluster was configured.
    pub(crate) fn config(&self) -> &DevClusterConfig {
        &self.config
    }

    /// The bound-keypair CA's JWT key, which signs join state documents.
    pub(crate) fn join_state_key(&self) -> &SoftSigner {
        &self.join_state_key
    }

    /// How many tokens it has.
    pub(crate) fn token_count(&self) -> usize {
        self.tokens.lock().expect("token lock").len()
    }

    /// How many roles it has (from the resources and implied by bots).
    pub(crate) fn role_count(&self) -> usize {
        self.roles.len()
    }

    /// Records and logs a client's `GivingUp` on a join for `token`.
    pub(crate) fn record_giving_up(&self, token: &str, reason: String, message: &str) {
        // Client text: escaped and bounded before it reaches the log.
        let msg = keybound_teleport::text::message(message).to_string();
        warn!(token, reason, msg, "the client gave up on the join");
        self.gave_up.lock().expect("giving-up lock").push(GaveUp {
            token: token.to_owned(),
            reason,
            message: message.to_owned(),
        });
    }

    pub(crate) fn record_user_certs(&self) {
        self.user_certs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_solution(&self) {
        self.solutions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_join(&self) {
        self.joins.fetch_add(1, Ordering::Relaxed);
    }

    /// The token named `name`, if there is one.
    pub(crate) fn token(&self, name: &str) -> Option<Token> {
        let tokens = self.tokens.lock().expect("token lock");
        tokens.get(name).map(|e| e.token.clone())
    }

    /// A token's bound-keypair status and its revision (for [`commit_status`](Self::commit_status)).
    pub(crate) fn token_status(&self, name: &str) -> (TokenStatus, u64) {
        let tokens = self.tokens.lock().expect("token lock");
        tokens
            .get(name)
            .map_or_else(Default::default, |e| (e.status.clone(), e.revision))
    }

    /// The token's compare-and-swap update (`PatchToken` with mutators).
    pub(crate) fn commit_status(
        &self,
        name: &str,
        revision: u64,
        status: TokenStatus,
    ) -> Result<(), Status> {
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

    /// Locks the join token `token` (a Teleport lock targeting `JoinToken:<name>`).
    pub(crate) fn lock(&self, token: &str, message: String) {
        warn!(token, %message, "locking join token");
        self.locks
            .lock()
            .expect("lock lock")
            .insert(token.to_owned(), message);
    }

    /// Refuses a join with a token a lock targets.
    pub(crate) fn check_lock(&self, token: &str) -> Result<(), Status> {
        match self.lock_on(token) {
            Some(message) => Err(Status::permission_denied(format!(
                "lock targeting JoinToken:{token:?} is in force: {message}"
            ))),
            None => Ok(()),
        }
    }

    /// The role named `name`, if it exists: one from the resources, or the role of a `kind:
    /// bot`. A token's `bot_name` makes no role: a bot that does not exist has none.
    pub(crate) fn role(&self, name: &str) -> Option<Role> {
        self.roles.get(name).cloned()
    }

    /// Whether the bot `name` exists (`kind: bot`, what `tctl bots add` makes: its user
    /// `bot-<name>` and that role). A join with a token whose `bot_name` names no bot is refused
    /// when its certificates are made, as Teleport's Auth refuses it.
    pub(crate) fn bot_exists(&self, name: &str) -> bool {
        self.config.bots.iter().any(|bot| bot.name == name)
    }

    // === Bot instances and their generation counter (`lib/auth/bot.go`) ===

    /// Records a new bot instance, whose first certificates are generation 1.
    pub(crate) fn new_instance(&self, bot_name: &str, instance_id: &str) {
        self.instances.insert(bot_name, instance_id);
    }

    /// `updateBotInstance`: the presented generation must be the instance's latest. A mismatch
    /// means two holders of one identity (a stolen certificate, or a copy rejoining with an old
    /// one): the token is locked.
    pub(crate) fn check_generation(
        &self,
        token: &Token,
        instance_id: &str,
        presented: u64,
    ) -> Result<(), Status> {
        self.instances
            .check(instance_id, presented)
            .map_err(|detail| self.generation_mismatch(token, instance_id, detail))
    }

    /// Records the generation of certificates just issued, if no other rejoin of the instance
    /// got there first (a compare-and-swap on the instance, as Auth's backend write is).
    pub(crate) fn record_generation(
        &self,
        token: &Token,
        instance_id: &str,
        presented: u64,
        next: u64,
    ) -> Result<(), Status> {
        self.instances
            .advance(instance_id, presented, next)
            .map_err(|detail| self.generation_mismatch(token, instance_id, detail))
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
}

/// Whole seconds since the epoch (0 before it), as JWT claims carry time.
pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
