//! The resources a cluster keeps and an admin manages, kept together under one lock: tokens
//! with their bound-keypair status, roles, bots and locks; and what `tctl create`, `get`, `ls`
//! and `rm` do to them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::SystemTime;

use crate::apps::App;
use crate::ca::bot_resource_name;
use crate::databases::Database;
use crate::kube_clusters::KubeCluster;
use crate::locks::{Lock, LockTarget};
use crate::nodes::Node;
use crate::resources::{Kind, Resources};
use crate::roles::{Bot, Role};
use crate::secret::Secret;
use crate::spiffe_federations::SpiffeFederation;
use crate::tokens::{Status as TokenStatus, Token};
use crate::workload_identities::WorkloadIdentity;

/// The label Teleport puts on the role and user `tctl bots add` makes (`types.BotLabel`).
const BOT_LABEL: &str = "teleport.internal/bot";

/// A token and its bound-keypair status, with the revision its compare-and-swap update checks.
pub(super) struct Entry {
    pub(super) token: Token,
    pub(super) status: TokenStatus,
    pub(super) revision: u64,
}

/// Why an admin request was refused.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(crate) enum Refusal {
    /// No such resource.
    NotFound(String),
    /// The resource exists, and the request did not say to replace it.
    AlreadyExists(String),
    /// The request cannot be done as asked.
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(text) | Self::AlreadyExists(text) | Self::Invalid(text) => {
                f.write_str(text)
            }
        }
    }
}

/// What `create` did to one resource.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(crate) struct Applied {
    /// Its kind.
    pub(crate) kind: Kind,
    /// Its name.
    pub(crate) name: String,
    /// Whether it replaced one of the same name.
    pub(crate) replaced: bool,
    /// A registration secret the cluster generated for the token: shown in this answer only.
    pub(crate) generated_secret: Option<Secret>,
}

/// Tokens, roles, bots and locks.
#[derive(Default)]
pub(super) struct Catalog {
    pub(super) tokens: HashMap<String, Entry>,
    roles: HashMap<String, Role>,
    bots: HashMap<String, Bot>,
    locks: BTreeMap<String, Lock>,
    pub(super) apps: BTreeMap<String, App>,
    pub(super) databases: BTreeMap<String, Database>,
    pub(super) kube_clusters: BTreeMap<String, KubeCluster>,
    pub(super) workload_identities: BTreeMap<String, WorkloadIdentity>,
    pub(super) nodes: BTreeMap<String, Node>,
    pub(super) spiffe_federations: BTreeMap<String, SpiffeFederation>,
}

fn not_found(kind: Kind, name: &str) -> Refusal {
    Refusal::NotFound(format!("{kind} {name:?} not found"))
}

impl Catalog {
    /// The resources a cluster starts with.
    pub(super) fn new(tokens: &[Token], roles: &[Role], bots: &[Bot], locks: &[Lock]) -> Self {
        let mut catalog = Self::default();
        for token in tokens {
            catalog.put_token(token.clone());
        }
        catalog.roles = roles.iter().map(|r| (r.name.clone(), r.clone())).collect();
        catalog.bots = bots.iter().map(|b| (b.name.clone(), b.clone())).collect();
        catalog.locks = locks.iter().map(|l| (l.name.clone(), l.clone())).collect();
        catalog
    }

    /// Adds or replaces a token; its status starts as the resource gave it (empty, usually),
    /// and a replaced token's revision moves on, so a join that read the old one cannot commit.
    pub(super) fn put_token(&mut self, token: Token) {
        let revision = self.tokens.get(&token.name).map_or(0, |e| e.revision + 1);
        let mut status = token.status.clone();
        if token.join_method == "bound_keypair" {
            status.populate_registration_secret(&token.bound_keypair);
        }
        self.tokens.insert(
            token.name.clone(),
            Entry {
                token,
                status,
                revision,
            },
        );
    }

    /// Sets a bound-keypair token's `rotate_after` to `now`, its status kept; its revision moves
    /// on, as an upsert's does.
    pub(super) fn request_rotation(&mut self, name: &str, now: SystemTime) -> Result<(), Refusal> {
        let entry = self
            .tokens
            .get_mut(name)
            .ok_or_else(|| not_found(Kind::Token, name))?;
        if entry.token.join_method != "bound_keypair" {
            return Err(Refusal::Invalid(format!(
                "token {name:?} does not use the bound_keypair join method"
            )));
        }
        entry.token.bound_keypair.rotate_after = Some(now);
        entry.revision += 1;
        Ok(())
    }

    /// The role named `name`: one from the resources, or the role of a `kind: bot`. Explicit
    /// roles win over the ones bots imply; a token's `bot_name` implies none.
    pub(super) fn role(&self, name: &str) -> Option<Role> {
        if let Some(role) = self.roles.get(name) {
            return Some(role.clone());
        }
        self.bot_of_role(name).map(Role::for_bot)
    }

    /// Whether the bot `name` exists.
    pub(super) fn bot_exists(&self, name: &str) -> bool {
        self.bots.values().any(|b| b.name == name)
    }

    /// The bot whose role (`bot-<name>`) is `role`, if any.
    fn bot_of_role(&self, role: &str) -> Option<&Bot> {
        self.bots
            .values()
            .find(|b| bot_resource_name(&b.name) == role)
    }

    /// Every role's name: the resources' and the bots'.
    fn role_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.roles.keys().cloned().collect();
        names.extend(self.bots.values().map(|b| bot_resource_name(&b.name)));
        names.sort();
        names.dedup();
        names
    }

    /// How many resources of a kind there are (roles: from the resources and implied by bots).
    pub(super) fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Token => self.tokens.len(),
            Kind::Role => self.role_names().len(),
            Kind::Bot => self.bots.len(),
            Kind::Lock => self.locks.len(),
            Kind::App => self.apps.len(),
            Kind::Db => self.databases.len(),
            Kind::KubeCluster => self.kube_clusters.len(),
            Kind::WorkloadIdentity => self.workload_identities.len(),
            Kind::Node => self.nodes.len(),
            Kind::SpiffeFederation => self.spiffe_federations.len(),
        }
    }

    /// The first lock in force at `now` that targets any of `targets`.
    pub(super) fn lock_in_force(&self, targets: &[LockTarget], now: SystemTime) -> Option<&Lock> {
        self.locks
            .values()
            .find(|l| l.in_force(now) && targets.contains(&l.target))
    }

    /// Adds a lock (the cluster's own, as Teleport's Auth makes on a stolen-key sign).
    pub(super) fn put_lock(&mut self, lock: Lock) {
        self.locks.insert(lock.name.clone(), lock);
    }

    /// `tctl create` (`force`: `tctl create -f`): every resource of `resources`, or none of
    /// them when one is refused.
    pub(super) fn create(
        &mut self,
        resources: Resources,
        force: bool,
    ) -> Result<Vec<Applied>, Refusal> {
        let names = resources.names();
        let mut applied = Vec::with_capacity(names.len());
        for (i, &(kind, name)) in names.iter().enumerate() {
            if names[..i].contains(&(kind, name)) {
                return Err(Refusal::Invalid(format!(
                    "{kind} {name:?} appears twice; give each resource once"
                )));
            }
            let replaced = self.exists(kind, name);
            if replaced && !force {
                return Err(Refusal::AlreadyExists(format!(
                    "{kind} {name:?} already exists; create -f replaces it"
                )));
            }
            applied.push(Applied {
                kind,
                name: name.to_owned(),
                replaced,
                generated_secret: None,
            });
        }
        for token in resources.tokens {
            let name = token.name.clone();
            let given_secret = token.bound_keypair.registration_secret.is_some()
                || token.status.registration_secret.is_some();
            self.put_token(token);
            let status_secret = self.tokens[&name].status.registration_secret.clone();
            if let Some(applied) = applied
                .iter_mut()
                .find(|a| a.kind == Kind::Token && a.name == name)
                .filter(|_| !given_secret)
            {
                applied.generated_secret = status_secret;
            }
        }
        for role in resources.roles {
            self.roles.insert(role.name.clone(), role);
        }
        for bot in resources.bots {
            self.bots.insert(bot.name.clone(), bot);
        }
        for lock in resources.locks {
            self.put_lock(lock);
        }
        for app in resources.apps {
            self.apps.insert(app.name.clone(), app);
        }
        for db in resources.databases {
            self.databases.insert(db.name.clone(), db);
        }
        for kube in resources.kube_clusters {
            self.kube_clusters.insert(kube.name.clone(), kube);
        }
        for wi in resources.workload_identities {
            self.workload_identities.insert(wi.name.clone(), wi);
        }
        for node in resources.nodes {
            self.nodes.insert(node.name.clone(), node);
        }
        for federation in resources.spiffe_federations {
            (self.spiffe_federations).insert(federation.name.clone(), federation);
        }
        Ok(applied)
    }

    fn exists(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Token => self.tokens.contains_key(name),
            Kind::Role => self.roles.contains_key(name),
            Kind::Bot => self.bots.contains_key(name),
            Kind::Lock => self.locks.contains_key(name),
            Kind::App => self.apps.contains_key(name),
            Kind::Db => self.databases.contains_key(name),
            Kind::KubeCluster => self.kube_clusters.contains_key(name),
            Kind::WorkloadIdentity => self.workload_identities.contains_key(name),
            Kind::Node => self.nodes.contains_key(name),
            Kind::SpiffeFederation => self.spiffe_federations.contains_key(name),
        }
    }

    /// `tctl get KIND/NAME`: the resource as Teleport's YAML would show it.
    pub(super) fn get(&self, kind: Kind, name: &str) -> Result<serde_json::Value, Refusal> {
        let found = match kind {
            Kind::Token => self
                .tokens
                .get(name)
                .map(|e| e.token.to_resource(&e.status)),
            Kind::Role => self.role_resource(name),
            Kind::Bot => self.bots.get(name).map(Bot::to_resource),
            Kind::Lock => self.locks.get(name).map(Lock::to_resource),
            Kind::App => self.apps.get(name).map(App::to_resource),
            Kind::Db => self.databases.get(name).map(Database::to_resource),
            Kind::KubeCluster => self.kube_clusters.get(name).map(KubeCluster::to_resource),
            Kind::WorkloadIdentity => self
                .workload_identities
                .get(name)
                .map(WorkloadIdentity::to_resource),
            Kind::Node => self.nodes.get(name).map(Node::to_resource),
            Kind::SpiffeFederation => {
                (self.spiffe_federations.get(name)).map(SpiffeFederation::to_resource)
            }
        };
        found.ok_or_else(|| not_found(kind, name))
    }

    /// A role from the resources, or the one a bot implies, labelled as Teleport labels it.
    fn role_resource(&self, name: &str) -> Option<serde_json::Value> {
        if let Some(role) = self.roles.get(name) {
            return Some(role.to_resource());
        }
        let bot = self.bot_of_role(name)?;
        let mut shown = Role::for_bot(bot).to_resource();
        shown["metadata"]["labels"] = serde_json::json!({ BOT_LABEL: bot.name });
        Some(shown)
    }

    /// `tctl get KIND`: every resource of a kind, by name.
    pub(super) fn list(&self, kind: Kind) -> Vec<serde_json::Value> {
        let mut names: Vec<String> = match kind {
            Kind::Token => self.tokens.keys().cloned().collect(),
            Kind::Role => self.role_names(),
            Kind::Bot => self.bots.keys().cloned().collect(),
            Kind::Lock => self.locks.keys().cloned().collect(),
            Kind::App => self.apps.keys().cloned().collect(),
            Kind::Db => self.databases.keys().cloned().collect(),
            Kind::KubeCluster => self.kube_clusters.keys().cloned().collect(),
            Kind::WorkloadIdentity => self.workload_identities.keys().cloned().collect(),
            Kind::Node => self.nodes.keys().cloned().collect(),
            Kind::SpiffeFederation => self.spiffe_federations.keys().cloned().collect(),
        };
        names.sort();
        names
            .iter()
            .filter_map(|name| self.get(kind, name).ok())
            .collect()
    }

    /// `tctl rm KIND/NAME`.
    pub(super) fn remove(&mut self, kind: Kind, name: &str) -> Result<(), Refusal> {
        let removed = match kind {
            Kind::Token => self.tokens.remove(name).is_some(),
            Kind::Role => self.roles.remove(name).is_some(),
            Kind::Bot => self.bots.remove(name).is_some(),
            Kind::Lock => self.locks.remove(name).is_some(),
            Kind::App => self.apps.remove(name).is_some(),
            Kind::Db => self.databases.remove(name).is_some(),
            Kind::KubeCluster => self.kube_clusters.remove(name).is_some(),
            Kind::WorkloadIdentity => self.workload_identities.remove(name).is_some(),
            Kind::Node => self.nodes.remove(name).is_some(),
            Kind::SpiffeFederation => self.spiffe_federations.remove(name).is_some(),
        };
        if removed {
            return Ok(());
        }
        // A bot's role is the bot's: it goes with it.
        let owner = (kind == Kind::Role)
            .then(|| self.bot_of_role(name))
            .flatten();
        Err(match owner {
            Some(bot) => Refusal::Invalid(format!(
                "role {name:?} is the role of bot {:?}; remove the bot (rm bots/{}) to remove it",
                bot.name, bot.name
            )),
            None => not_found(kind, name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> Resources {
        crate::resources::parse(yaml, "test.yaml").unwrap()
    }

    const BOT: &str = "kind: bot\nversion: v1\nmetadata: {name: ci}\nspec: {roles: [access]}\n";
    const TOKEN: &str = "kind: token\nversion: v2\nmetadata: {name: t}\nspec: {roles: [Bot], join_method: bound_keypair, bot_name: ci, bound_keypair: {recovery: {mode: insecure}}}\n";

    #[test]
    fn create_is_all_or_nothing_and_force_replaces() {
        let mut catalog = Catalog::default();
        let applied = catalog.create(resources(BOT), false).unwrap();
        assert_eq!(
            applied,
            [Applied {
                kind: Kind::Bot,
                name: "ci".into(),
                replaced: false,
                generated_secret: None,
            }]
        );
        // The bot exists: nothing of the file is created, the token neither.
        let both = format!("{TOKEN}---\n{BOT}");
        let refused = catalog.create(resources(&both), false).unwrap_err();
        assert_eq!(
            refused,
            Refusal::AlreadyExists("bot \"ci\" already exists; create -f replaces it".into())
        );
        assert!(catalog.get(Kind::Token, "t").is_err());
        let applied = catalog.create(resources(&both), true).unwrap();
        assert_eq!(
            applied.iter().map(|a| a.replaced).collect::<Vec<_>>(),
            [false, true]
        );
        let twice = format!("{TOKEN}---\n{TOKEN}");
        assert!(matches!(
            catalog.create(resources(&twice), true),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn a_bots_role_is_listed_and_goes_with_the_bot() {
        let mut catalog = Catalog::default();
        catalog.create(resources(BOT), false).unwrap();
        let roles = catalog.list(Kind::Role);
        assert_eq!(roles.len(), 1);
        assert_eq!(roles[0]["metadata"]["name"], "bot-ci");
        assert_eq!(roles[0]["metadata"]["labels"][BOT_LABEL], "ci");
        assert_eq!(
            roles[0]["spec"]["allow"]["impersonate"]["roles"],
            serde_json::json!(["access"])
        );
        assert!(matches!(
            catalog.remove(Kind::Role, "bot-ci"),
            Err(Refusal::Invalid(_))
        ));
        catalog.remove(Kind::Bot, "ci").unwrap();
        assert!(catalog.role("bot-ci").is_none());
        assert_eq!(
            catalog.remove(Kind::Bot, "ci"),
            Err(Refusal::NotFound("bot \"ci\" not found".into()))
        );
    }

    #[test]
    fn a_replaced_token_moves_its_revision_and_takes_its_status_from_the_resource() {
        let mut catalog = Catalog::default();
        catalog.create(resources(TOKEN), false).unwrap();
        catalog.tokens.get_mut("t").unwrap().status.recovery_count = 3;
        let shown = catalog.get(Kind::Token, "t").unwrap();
        assert_eq!(shown["status"]["bound_keypair"]["recovery_count"], 3);
        // `get` then `create -f` (a tctl edit) keeps the status; the plain file resets it.
        let yaml = serde_yaml::to_string(&shown).unwrap();
        catalog.create(resources(&yaml), true).unwrap();
        assert_eq!(catalog.tokens["t"].status.recovery_count, 3);
        assert_eq!(catalog.tokens["t"].revision, 1);
        let secret = catalog.tokens["t"].status.registration_secret.clone();
        let applied = catalog.create(resources(TOKEN), true).unwrap();
        // The plain file resets the status: a new registration secret, nothing else; the
        // answer to create is the one place it shows.
        let status = &catalog.tokens["t"].status;
        let fresh = status
            .registration_secret
            .clone()
            .expect("a generated secret");
        assert_eq!(fresh.expose().len(), 32);
        assert_eq!(applied[0].generated_secret.as_ref(), Some(&fresh));
        assert_ne!(Some(fresh), secret, "each reset generates its own");
        let emptied = TokenStatus {
            registration_secret: None,
            ..status.clone()
        };
        assert_eq!(emptied, TokenStatus::default());
        assert_eq!(catalog.tokens["t"].revision, 2);
    }

    #[test]
    fn a_registration_secret_is_the_specs_or_generated_and_never_beside_a_key() {
        let mut catalog = Catalog::default();
        let with_secret = TOKEN.replace(
            "{recovery:",
            "{onboarding: {registration_secret: s3cret}, recovery:",
        );
        let applied = catalog.create(resources(&with_secret), false).unwrap();
        assert!(
            catalog.tokens["t"]
                .status
                .registration_secret
                .as_ref()
                .is_some_and(|s| s.matches("s3cret"))
        );
        assert_eq!(applied[0].generated_secret, None, "the admin's own");
        // `get` shows neither the spec's secret nor the status's.
        let shown = serde_json::to_string(&catalog.get(Kind::Token, "t").unwrap()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("registration_secret"), "{shown}");
        let with_key = TOKEN.replace("{recovery:", "{onboarding: {initial_public_key: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGzndE0n580QkgJflQRtlXfGYGNvpGGDwkgmvxQbAF9v'}, recovery:");
        catalog.create(resources(&with_key), true).unwrap();
        assert_eq!(catalog.tokens["t"].status.registration_secret, None);
        // request-rotation keeps the status and moves the revision on.
        catalog.tokens.get_mut("t").unwrap().status.recovery_count = 2;
        let now = SystemTime::now();
        catalog.request_rotation("t", now).unwrap();
        assert_eq!(
            catalog.tokens["t"].token.bound_keypair.rotate_after,
            Some(now)
        );
        assert_eq!(catalog.tokens["t"].status.recovery_count, 2);
        assert!(matches!(
            catalog.request_rotation("nope", now),
            Err(Refusal::NotFound(_))
        ));
    }
}
