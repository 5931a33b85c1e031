//! The resources the dev cluster keeps, in Teleport's YAML (the `tctl create` format): tokens,
//! roles, bots, locks and nodes, read from files (`--resources`) or handed to a running cluster (its
//! admin socket), and the names `tctl` gives their kinds.

use std::fmt;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::apps::{self, App};
use crate::databases::{self, Database};
use crate::kube_clusters::{self, KubeCluster};
use crate::locks::{self, Lock};
use crate::nodes::{self, Node};
use crate::roles::{self, Bot, Role};
use crate::spiffe_federations::{self, SpiffeFederation};
use crate::tokens::{self, Token};
use crate::workload_identities::{self, WorkloadIdentity};

/// A kind of resource, named as `tctl get` names it.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Hash)]
pub enum Kind {
    /// `kind: token`.
    Token,
    /// `kind: role`.
    Role,
    /// `kind: bot`.
    Bot,
    /// `kind: lock`.
    Lock,
    /// `kind: app`.
    App,
    /// `kind: db`.
    Db,
    /// `kind: kube_cluster`.
    KubeCluster,
    /// `kind: workload_identity`.
    WorkloadIdentity,
    /// `kind: node`.
    Node,
    /// `kind: spiffe_federation`.
    SpiffeFederation,
}

impl Kind {
    /// Every kind, in the order listings show them.
    pub const ALL: [Self; 10] = [
        Self::Token,
        Self::Bot,
        Self::Role,
        Self::Lock,
        Self::App,
        Self::Db,
        Self::KubeCluster,
        Self::WorkloadIdentity,
        Self::Node,
        Self::SpiffeFederation,
    ];

    /// The resource's `kind:` (`token`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Role => "role",
            Self::Bot => "bot",
            Self::Lock => "lock",
            Self::App => "app",
            Self::Db => "db",
            Self::KubeCluster => "kube_cluster",
            Self::WorkloadIdentity => "workload_identity",
            Self::Node => "node",
            Self::SpiffeFederation => "spiffe_federation",
        }
    }

    /// The plural `tctl get tokens` takes (`tokens`).
    pub fn plural(self) -> &'static str {
        match self {
            Self::Token => "tokens",
            Self::Role => "roles",
            Self::Bot => "bots",
            Self::Lock => "locks",
            Self::App => "apps",
            Self::Db => "dbs",
            Self::KubeCluster => "kube_clusters",
            Self::WorkloadIdentity => "workload_identities",
            Self::Node => "nodes",
            Self::SpiffeFederation => "spiffe_federations",
        }
    }

    /// A kind by either name, as `tctl` takes them: `token` or `tokens`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| text == k.name() || text == k.plural())
            .with_context(|| {
                format!("unknown resource kind {text:?}; the dev cluster keeps tokens, bots, roles, locks, apps, dbs, kube_clusters, workload_identities, nodes and spiffe_federations")
            })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Resources read from YAML.
#[derive(Debug, Default)]
pub struct Resources {
    /// `kind: token`.
    pub tokens: Vec<Token>,
    /// `kind: role`.
    pub roles: Vec<Role>,
    /// `kind: bot`.
    pub bots: Vec<Bot>,
    /// `kind: lock`.
    pub locks: Vec<Lock>,
    /// `kind: app`.
    pub apps: Vec<App>,
    /// `kind: db`.
    pub databases: Vec<Database>,
    /// `kind: kube_cluster`.
    pub kube_clusters: Vec<KubeCluster>,
    /// `kind: workload_identity`.
    pub workload_identities: Vec<WorkloadIdentity>,
    /// `kind: node`.
    pub nodes: Vec<Node>,
    /// `kind: spiffe_federation`.
    pub spiffe_federations: Vec<SpiffeFederation>,
}

impl Resources {
    /// Adds `other`'s resources to these.
    pub fn extend(&mut self, other: Self) {
        self.tokens.extend(other.tokens);
        self.roles.extend(other.roles);
        self.bots.extend(other.bots);
        self.locks.extend(other.locks);
        self.apps.extend(other.apps);
        self.databases.extend(other.databases);
        self.kube_clusters.extend(other.kube_clusters);
        self.workload_identities.extend(other.workload_identities);
        self.nodes.extend(other.nodes);
        self.spiffe_federations.extend(other.spiffe_federations);
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
            && self.roles.is_empty()
            && self.bots.is_empty()
            && self.locks.is_empty()
            && self.apps.is_empty()
            && self.databases.is_empty()
            && self.kube_clusters.is_empty()
            && self.workload_identities.is_empty()
            && self.nodes.is_empty()
            && self.spiffe_federations.is_empty()
    }

    /// Each resource's kind and name, in the order they were read per kind.
    pub fn names(&self) -> Vec<(Kind, &str)> {
        let tokens = self.tokens.iter().map(|t| (Kind::Token, t.name.as_str()));
        let bots = self.bots.iter().map(|b| (Kind::Bot, b.name.as_str()));
        let roles = self.roles.iter().map(|r| (Kind::Role, r.name.as_str()));
        let locks = self.locks.iter().map(|l| (Kind::Lock, l.name.as_str()));
        let apps = self.apps.iter().map(|a| (Kind::App, a.name.as_str()));
        let dbs = self.databases.iter().map(|d| (Kind::Db, d.name.as_str()));
        let kubes = (self.kube_clusters.iter()).map(|k| (Kind::KubeCluster, k.name.as_str()));
        let workload_identities = self
            .workload_identities
            .iter()
            .map(|w| (Kind::WorkloadIdentity, w.name.as_str()));
        let nodes = self.nodes.iter().map(|n| (Kind::Node, n.name.as_str()));
        let federations =
            (self.spiffe_federations.iter()).map(|f| (Kind::SpiffeFederation, f.name.as_str()));
        tokens
            .chain(bots)
            .chain(roles)
            .chain(locks)
            .chain(apps)
            .chain(dbs)
            .chain(kubes)
            .chain(workload_identities)
            .chain(nodes)
            .chain(federations)
            .collect()
    }
}

/// Reads every token, role, bot and lock document of `text` (YAML documents separated by
/// `---`), `origin` naming it in errors; none at all is an error.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Resources> {
    let mut out = Resources::default();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("{origin}: not YAML"))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
        match kind {
            Some("token") => out
                .tokens
                .push(tokens::from_value(value).with_context(|| origin.to_owned())?),
            Some("lock") => out
                .locks
                .push(locks::from_value(value).with_context(|| origin.to_owned())?),
            Some("app") => out
                .apps
                .push(apps::from_value(value).with_context(|| origin.to_owned())?),
            Some("db") => out
                .databases
                .push(databases::from_value(value).with_context(|| origin.to_owned())?),
            Some("kube_cluster") => out
                .kube_clusters
                .push(kube_clusters::from_value(value).with_context(|| origin.to_owned())?),
            Some("workload_identity") => out
                .workload_identities
                .push(workload_identities::from_value(value).with_context(|| origin.to_owned())?),
            Some("node") => out
                .nodes
                .push(nodes::from_value(value).with_context(|| origin.to_owned())?),
            Some("spiffe_federation") => out
                .spiffe_federations
                .push(spiffe_federations::from_value(value).with_context(|| origin.to_owned())?),
            _ => match roles::from_value(value).with_context(|| origin.to_owned())? {
                roles::Parsed::Role(role) => out.roles.push(*role),
                roles::Parsed::Bot(bot) => out.bots.push(bot),
            },
        }
    }
    if out.is_empty() {
        bail!("{origin}: holds no token, role, bot, lock, app, db, kube_cluster or node");
    }
    Ok(out)
}

/// Reads every token, role, bot and lock document of a YAML file.
pub fn load(path: &Path) -> anyhow::Result<Resources> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read resource file {origin}"))?;
    parse(&text, &origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_holds_every_kind() {
        let yaml = "kind: token\nversion: v2\nmetadata: {name: t}\nspec: {roles: [Bot], join_method: bound_keypair, bot_name: ci, bound_keypair: {recovery: {mode: insecure}}}\n---\nkind: bot\nversion: v1\nmetadata: {name: ci}\nspec: {roles: [access]}\n---\nkind: role\nversion: v7\nmetadata: {name: access}\nspec: {allow: {logins: [root]}}\n---\nkind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {join_token: t}}\n---\n";
        let all = parse(yaml, "all.yaml").unwrap();
        assert_eq!(
            all.names(),
            [
                (Kind::Token, "t"),
                (Kind::Bot, "ci"),
                (Kind::Role, "access"),
                (Kind::Lock, "l")
            ]
        );
        let err = parse("---\n", "empty.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "empty.yaml: holds no token, role, bot, lock, app, db, kube_cluster or node"
        );
        let err = parse("kind: user\nversion: v2\nmetadata: {name: u}\n", "u.yaml").unwrap_err();
        assert!(format!("{err:#}").starts_with("u.yaml: "), "{err:#}");
        assert_eq!(Kind::parse("locks").unwrap(), Kind::Lock);
        assert_eq!(Kind::parse("bot").unwrap(), Kind::Bot);
        assert!(Kind::parse("users").is_err());
    }
}
