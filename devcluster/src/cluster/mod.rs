//! The cluster's state, shared by every connection: its configuration, CAs and join-state key;
//! the resources an admin manages (`catalog`: tokens with their bound-keypair status, roles,
//! bots, locks); bot instances and their generations; the misbehaviour in force; a clock tests
//! can move; and counters tests read.

mod catalog;
mod instances;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybound_signer::Algorithm;
use keybound_signer_soft::SoftSigner;
use keybound_teleport::suite::Suite;
use tonic::Status;
use tracing::{info, warn};

use crate::ca::{ClusterCa, bot_resource_name};
use crate::config::DevClusterConfig;
use crate::locks::{Lock, LockTarget};
use crate::misbehave::Misbehaviour;
use crate::resources::{Kind, Resources};
use crate::roles::Role;
use crate::tokens::{Status as TokenStatus, Token};
use crate::workload_identities::WorkloadIdentity;
use catalog::Catalog;
pub(crate) use catalog::{Applied, Refusal};
use instances::Instances;

/// The cluster's state, shared by every connection.
pub struct Cluster {
    config: DevClusterConfig,
    ca: ClusterCa,
    /// The bound-keypair CA's JWT key, which signs join state documents.
    join_state_key: SoftSigner,
    catalog: Mutex<Catalog>,
    instances: Instances,
    misbehave: Mutex<Option<Misbehaviour>>,
    clock_offset: AtomicI64,
    solutions: AtomicUsize,
    joins: AtomicUsize,
    user_certs: AtomicUsize,
    gave_up: Mutex<Vec<GaveUp>>,
    /// Bot instance heartbeats (`crate::heartbeats`).
    pub(crate) heartbeats: crate::heartbeats::Heartbeats,
    /// The Proxy's public address (`host:port`), once it listens.
    public_addr: std::sync::OnceLock<String>,
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
        let mut catalog = Catalog::new(&config.tokens, &config.roles, &config.bots, &config.locks);
        catalog.apps = config
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.clone()))
            .collect();
        catalog.databases = (config.databases.iter())
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        catalog.kube_clusters = (config.kube_clusters.iter())
            .map(|k| (k.name.clone(), k.clone()))
            .collect();
        catalog.workload_identities = config
            .workload_identities
            .iter()
            .map(|w| (w.name.clone(), w.clone()))
            .collect();
        for node in &config.nodes {
            catalog.nodes.insert(node.name.clone(), node.clone());
        }
        catalog.spiffe_federations = (config.spiffe_federations.iter())
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
        Ok(Self {
            ca,
            join_state_key: SoftSigner::generate(jwt_algorithm)?,
            catalog: Mutex::new(catalog),
            instances: Instances::default(),
            misbehave: Mutex::new(config.misbehave),
            clock_offset: AtomicI64::new(0),
            solutions: AtomicUsize::new(0),
            joins: AtomicUsize::new(0),
            user_certs: AtomicUsize::new(0),
            gave_up: Mutex::new(Vec::new()),
            heartbeats: crate::heartbeats::Heartbeats::default(),
            public_addr: std::sync::OnceLock::new(),
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

    /// The SSH nodes, by name.
    pub(crate) fn nodes(&self) -> Vec<crate::nodes::Node> {
        self.catalog().nodes.values().cloned().collect()
    }

    /// The resources, locked.
    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().expect("catalog lock")
    }

    /// A token's bound-keypair status.
    pub fn token_status_of(&self, name: &str) -> Option<TokenStatus> {
        self.catalog().tokens.get(name).map(|e| e.status.clone())
    }

    /// Adds or replaces a token (its status starts as the resource gave it: empty, unless it
    /// has a `status` section).
    pub fn put_token(&self, token: Token) {
        self.catalog().put_token(token);
    }

    /// How many challenge solutions clients have sent.
    pub fn solutions_received(&self) -> usize {
        self.solutions.load(Ordering::Relaxed)
    }

    /// How many joins succeeded.
    pub fn joins_completed(&self) -> usize {
        self.joins.load(Ordering::Relaxed)
    }

    /// Whether a lock in force targets the join token, and its message.
    pub fn lock_on(&self, token: &str) -> Option<String> {
        self.lock_on_target(LockTarget::JoinToken(token.to_owned()))
    }

    /// The message of a lock in force on `target`, if any.
    pub fn lock_on_target(&self, target: LockTarget) -> Option<String> {
        let target = [target];
        let catalog = self.catalog();
        catalog
            .lock_in_force(&target, self.now())
            .map(|l| l.message.clone())
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

    /// Every app, by name.
    pub(crate) fn apps(&self) -> Vec<crate::apps::App> {
        self.catalog().apps.values().cloned().collect()
    }

    /// Every database, by name.
    pub(crate) fn databases(&self) -> Vec<crate::databases::Database> {
        self.catalog().databases.values().cloned().collect()
    }

    /// Every Kubernetes cluster, by name.
    pub(crate) fn kube_clusters(&self) -> Vec<crate::kube_clusters::KubeCluster> {
        self.catalog().kube_clusters.values().cloned().collect()
    }

    /// How many resources of a kind it has (roles: from the resources and implied by bots).
    pub(crate) fn count(&self, kind: Kind) -> usize {
        self.catalog().count(kind)
    }

    // === The admin side: `tctl create`, `get`, `rm` ===

    /// `tctl create` (`force`: `-f`): all of `resources`, or none when one is refused.
    pub(crate) fn create(
        &self,
        resources: Resources,
        force: bool,
    ) -> Result<Vec<Applied>, Refusal> {
        let applied = self.catalog().create(resources, force)?;
        for a in &applied {
            let action = if a.replaced { "replaced" } else { "created" };
            info!(kind = %a.kind, name = %a.name, "{action} by the admin");
        }
        Ok(applied)
    }

    /// `tctl get KIND/NAME`, as Teleport's resource would show it.
    pub(crate) fn get(&self, kind: Kind, name: &str) -> Result<serde_json::Value, Refusal> {
        self.catalog().get(kind, name)
    }

    /// `tctl get KIND`: every resource of the kind, by name.
    pub(crate) fn list(&self, kind: Kind) -> Vec<serde_json::Value> {
        self.catalog().list(kind)
    }

    /// `tctl rm KIND/NAME`.
    pub(crate) fn remove(&self, kind: Kind, name: &str) -> Result<(), Refusal> {
        self.catalog().remove(kind, name)?;
        info!(%kind, name, "removed by the admin");
        Ok(())
    }

    /// `tctl bound-keypair request-rotation` (`tool/tctl/common/bound_keypair_command.go`): sets
    /// the token's `spec.bound_keypair.rotate_after` to now and upserts it with its status, so
    /// the bot's next join (of any kind) rotates its key. Returns the time set.
    pub(crate) fn request_rotation(&self, name: &str) -> Result<SystemTime, Refusal> {
        let now = self.now();
        self.catalog().request_rotation(name, now)?;
        info!(token = name, "rotation requested by the admin");
        Ok(now)
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
        self.catalog().tokens.get(name).map(|e| e.token.clone())
    }

    /// A token's bound-keypair status and its revision (for [`commit_status`](Self::commit_status)).
    pub(crate) fn token_status(&self, name: &str) -> (TokenStatus, u64) {
        self.catalog()
            .tokens
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
        let mut catalog = self.catalog();
        match catalog.tokens.get_mut(name) {
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

    /// Locks the join token `token` (a Teleport lock targeting `JoinToken:<name>`, named by a
    /// new UUID as Auth names the locks it makes).
    pub(crate) fn lock(&self, token: &str, message: String) {
        warn!(token, %message, "locking join token");
        self.catalog().put_lock(Lock {
            name: uuid::Uuid::new_v4().to_string(),
            target: LockTarget::JoinToken(token.to_owned()),
            message,
            expires: None,
        });
    }

    /// The refusal of a lock in force on any of `targets`
    /// (`services.LockInForceAccessDenied`).
    pub(crate) fn check_locks(&self, targets: &[LockTarget]) -> Result<(), Status> {
        let catalog = self.catalog();
        match catalog.lock_in_force(targets, self.now()) {
            Some(lock) => Err(Status::permission_denied(lock.refusal())),
            None => Ok(()),
        }
    }

    /// Refuses a join with a token a lock targets (`verifyLocksForBoundKeypairToken`).
    pub(crate) fn check_lock(&self, token: &str) -> Result<(), Status> {
        self.check_locks(&[LockTarget::JoinToken(token.to_owned())])
    }

    /// Refuses certificates for `user` with `roles` when a lock targets the user or one of the
    /// roles (`generateUserCert`, `lib/auth/auth.go`).
    pub(crate) fn check_user_locks(&self, user: &str, roles: &[String]) -> Result<(), Status> {
        let mut targets = vec![LockTarget::User(user.to_owned())];
        targets.extend(roles.iter().cloned().map(LockTarget::Role));
        self.check_locks(&targets)
    }

    /// The role named `name`, if it exists: one from the resources, or the role of a `kind:
    /// bot`. A token's `bot_name` makes no role: a bot that does not exist has none.
    pub(crate) fn role(&self, name: &str) -> Option<Role> {
        self.catalog().role(name)
    }

    /// The workload identity named `name`.
    pub(crate) fn workload_identity(&self, name: &str) -> Option<WorkloadIdentity> {
        self.catalog().workload_identities.get(name).cloned()
    }

    /// Every workload identity, by name.
    pub(crate) fn workload_identities(&self) -> Vec<WorkloadIdentity> {
        self.catalog()
            .workload_identities
            .values()
            .cloned()
            .collect()
    }

    /// Every SPIFFE federation, by name.
    pub(crate) fn spiffe_federations(&self) -> Vec<crate::spiffe_federations::SpiffeFederation> {
        self.catalog()
            .spiffe_federations
            .values()
            .cloned()
            .collect()
    }

    /// Records the Proxy's public address, once it listens.
    pub(crate) fn set_public_addr(&self, addr: String) {
        let _ = self.public_addr.set(addr);
    }

    /// The Proxy's public address, `host:port`.
    pub(crate) fn public_addr(&self) -> &str {
        self.public_addr.get().map_or("localhost", String::as_str)
    }

    /// Whether the bot `name` exists (`kind: bot`, what `tctl bots add` makes: its user
    /// `bot-<name>` and that role). A join with a token whose `bot_name` names no bot is refused
    /// when its certificates are made, as Teleport's Auth refuses it.
    pub(crate) fn bot_exists(&self, name: &str) -> bool {
        self.catalog().bot_exists(name)
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

    /// Teleport 18's answer to a generation mismatch (`updateBotInstance` and
    /// `tryLockBotDueToGenerationMismatch`, `lib/auth/bot.go` at `ff374ff7`): a lock on the
    /// bot's user, so every certificate for the bot is refused, whatever token it joins with.
    /// Newer code (scoped bots, v19) locks the join token instead, with "Bot joins via the token
    /// ... have been locked"; docs/teleport-source-notes.md.
    fn generation_mismatch(&self, token: &Token, instance_id: &str, detail: String) -> Status {
        let user = bot_resource_name(&token.bot_name);
        let message = format!(
            "The bot user {user:?} has been locked due to a certificate generation mismatch, possibly indicating a stolen certificate."
        );
        warn!(user, %message, "locking the bot user");
        self.catalog().put_lock(Lock {
            name: uuid::Uuid::new_v4().to_string(),
            target: LockTarget::User(user),
            message,
            expires: None,
        });
        Status::permission_denied(format!(
            "renewable cert generation mismatch for bot {}/{instance_id}: {detail}",
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
