//! Roles and bots in Teleport's resource YAML (the `tctl create` format), and the role
//! impersonation rules Auth applies when a bot asks for certificates for its outputs.
//!
//! Only what a bot's outputs touch is kept: a role's `allow.logins`, its `allow.impersonate` /
//! `deny.impersonate` rules, and its `allow.rules` / `deny.rules` ([`crate::rules`]). A `kind: bot` resource stands for what
//! `tctl bots add` makes: the bot's role `bot-<name>`, which may impersonate `spec.roles`.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use keybound_proto::types;
use serde::Deserialize;

use crate::ca::bot_resource_name;
use crate::labels::{self, Selector, glob};
use crate::rules::{RawRule, Rule};

/// A role.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Role {
    /// `metadata.name`.
    pub name: String,
    /// `spec.allow.logins`.
    pub logins: Vec<String>,
    /// `spec.allow.impersonate.roles`.
    pub impersonate_roles: Vec<String>,
    /// `spec.allow.impersonate.users`.
    pub impersonate_users: Vec<String>,
    /// `spec.deny.impersonate.roles`.
    pub deny_impersonate_roles: Vec<String>,
    /// `spec.allow.app_labels`: the apps the role grants.
    pub app_labels: Selector,
    /// `spec.allow.db_labels`: the databases the role grants.
    pub db_labels: Selector,
    /// `spec.allow.db_names`: the database names it allows.
    pub db_names: Vec<String>,
    /// `spec.allow.db_users`: the database users it allows.
    pub db_users: Vec<String>,
    /// `spec.allow.kubernetes_labels`: the Kubernetes clusters the role grants.
    pub kubernetes_labels: Selector,
    /// `spec.allow.node_labels`: the SSH nodes the role grants.
    pub node_labels: Selector,
    /// `spec.allow.kubernetes_groups`: the Kubernetes groups it grants.
    pub kubernetes_groups: Vec<String>,
    /// `spec.allow.kubernetes_users`: the Kubernetes users it grants.
    pub kubernetes_users: Vec<String>,
    /// `spec.allow.rules` ([`crate::rules`]).
    pub rules: Vec<Rule>,
    /// `spec.deny.rules`.
    pub deny_rules: Vec<Rule>,
    /// `spec.allow.workload_identity_labels`: the workload identities the role may issue from
    /// (a value of `*` matches any; `'*': '*'` every resource).
    pub workload_identity_labels: BTreeMap<String, Vec<String>>,
}

/// A bot (`kind: bot`, `version: v1`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Bot {
    /// `metadata.name`.
    pub name: String,
    /// `spec.roles`: the roles the bot may impersonate.
    pub roles: Vec<String>,
}

impl Role {
    /// The role `tctl bots add` makes for `bot`: it may impersonate the bot's roles.
    pub fn for_bot(bot: &Bot) -> Self {
        Self {
            name: bot_resource_name(&bot.name),
            impersonate_roles: bot.roles.clone(),
            ..Self::default()
        }
    }

    /// The role as `GetRole` returns it.
    pub fn to_proto(&self) -> types::RoleV6 {
        let impersonate = |roles: &[String], users: &[String]| {
            (!roles.is_empty() || !users.is_empty()).then(|| types::ImpersonateConditions {
                users: users.to_vec(),
                roles: roles.to_vec(),
                r#where: String::new(),
            })
        };
        types::RoleV6 {
            kind: "role".to_owned(),
            sub_kind: String::new(),
            version: "v7".to_owned(),
            metadata: Some(types::Metadata {
                name: self.name.clone(),
                namespace: "default".to_owned(),
                ..Default::default()
            }),
            spec: Some(types::RoleSpecV6 {
                allow: Some(types::RoleConditions {
                    logins: self.logins.clone(),
                    impersonate: impersonate(&self.impersonate_roles, &self.impersonate_users),
                }),
                deny: Some(types::RoleConditions {
                    logins: Vec::new(),
                    impersonate: impersonate(&self.deny_impersonate_roles, &[]),
                }),
            }),
        }
    }

    /// The role as `tctl get` shows it: the keys the dev cluster keeps.
    pub fn to_resource(&self) -> serde_json::Value {
        let impersonate = |roles: &[String], users: &[String]| {
            let mut out = serde_json::Map::new();
            if !roles.is_empty() {
                out.insert("roles".to_owned(), roles.into());
            }
            if !users.is_empty() {
                out.insert("users".to_owned(), users.into());
            }
            out
        };
        let mut allow = serde_json::Map::new();
        if !self.logins.is_empty() {
            allow.insert("logins".to_owned(), self.logins.clone().into());
        }
        let allowed = impersonate(&self.impersonate_roles, &self.impersonate_users);
        if !allowed.is_empty() {
            allow.insert("impersonate".to_owned(), allowed.into());
        }
        for (key, selector) in [
            ("app_labels", &self.app_labels),
            ("db_labels", &self.db_labels),
            ("kubernetes_labels", &self.kubernetes_labels),
            ("node_labels", &self.node_labels),
        ] {
            if !selector.is_empty() {
                allow.insert(key.to_owned(), labels::to_json(selector));
            }
        }
        for (key, list) in [
            ("db_names", &self.db_names),
            ("db_users", &self.db_users),
            ("kubernetes_groups", &self.kubernetes_groups),
            ("kubernetes_users", &self.kubernetes_users),
        ] {
            if !list.is_empty() {
                allow.insert(key.to_owned(), list.clone().into());
            }
        }
        let mut deny = serde_json::Map::new();
        let denied = impersonate(&self.deny_impersonate_roles, &[]);
        if !denied.is_empty() {
            deny.insert("impersonate".to_owned(), denied.into());
        }
        if !self.workload_identity_labels.is_empty() {
            allow.insert(
                "workload_identity_labels".to_owned(),
                serde_json::json!(self.workload_identity_labels),
            );
        }
        for (rules, out) in [(&self.rules, &mut allow), (&self.deny_rules, &mut deny)] {
            if !rules.is_empty() {
                let shown: Vec<_> = rules.iter().map(Rule::to_resource).collect();
                out.insert("rules".to_owned(), shown.into());
            }
        }
        serde_json::json!({
            "kind": "role",
            "version": "v7",
            "metadata": { "name": self.name },
            "spec": { "allow": allow, "deny": deny },
        })
    }
}

impl Bot {
    /// The bot as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "bot",
            "version": "v1",
            "metadata": { "name": self.name },
            "spec": { "roles": self.roles },
        })
    }
}

/// `RoleSet.CheckImpersonateRoles` (`lib/services/role.go`) for role requests: a deny rule
/// naming any requested role refuses; otherwise one role of the set must allow every requested
/// role and no users (an allow rule that also names users is for user impersonation).
pub fn may_impersonate(holder: &[&Role], requested: &[String]) -> bool {
    let matches = |patterns: &[String], role: &str| {
        patterns
            .iter()
            .any(|p| p == "*" || p == role || glob(p, role))
    };
    if holder.iter().any(|r| {
        requested
            .iter()
            .any(|q| matches(&r.deny_impersonate_roles, q))
    }) {
        return false;
    }
    holder.iter().any(|r| {
        r.impersonate_users.is_empty()
            && !r.impersonate_roles.is_empty()
            && requested.iter().all(|q| matches(&r.impersonate_roles, q))
    })
}

#[derive(Deserialize)]
struct Resource {
    kind: String,
    version: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_yaml::Value,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Deserialize, Default)]
struct RoleSpec {
    #[serde(default)]
    allow: Conditions,
    #[serde(default)]
    deny: Conditions,
}

#[derive(Deserialize, Default)]
struct Conditions {
    #[serde(default)]
    logins: Vec<String>,
    #[serde(default)]
    impersonate: Option<Impersonate>,
    #[serde(default, deserialize_with = "labels::deserialize_selector")]
    app_labels: Selector,
    #[serde(default, deserialize_with = "labels::deserialize_selector")]
    db_labels: Selector,
    #[serde(default)]
    db_names: Vec<String>,
    #[serde(default)]
    db_users: Vec<String>,
    #[serde(default, deserialize_with = "labels::deserialize_selector")]
    kubernetes_labels: Selector,
    #[serde(default, deserialize_with = "labels::deserialize_selector")]
    node_labels: Selector,
    #[serde(default)]
    kubernetes_groups: Vec<String>,
    #[serde(default)]
    kubernetes_users: Vec<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    workload_identity_labels: BTreeMap<String, LabelValues>,
}

/// A label's values in a role: one value or a list (`types.Labels`, `utils.Strings`).
#[derive(Deserialize)]
#[serde(untagged)]
enum LabelValues {
    One(String),
    Many(Vec<String>),
}

impl LabelValues {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(v) => vec![v],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Impersonate {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default, rename = "where")]
    predicate: String,
}

#[derive(Deserialize)]
struct BotSpec {
    #[serde(default)]
    roles: Vec<String>,
}

/// A role or bot read from a resource document.
pub enum Parsed {
    /// `kind: role`.
    Role(Box<Role>),
    /// `kind: bot`.
    Bot(Bot),
}

/// Reads one `kind: role` (v5 to v8) or `kind: bot` (v1) document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<Parsed> {
    let resource: Resource =
        serde_yaml::from_value(value).context("not a Teleport role or bot resource")?;
    let name = resource.metadata.name;
    match resource.kind.as_str() {
        "role" => {
            if !matches!(resource.version.as_str(), "v5" | "v6" | "v7" | "v8") {
                bail!(
                    "role {name}: version {:?} is not v5 to v8",
                    resource.version
                );
            }
            let mut spec: RoleSpec = if resource.spec.is_null() {
                RoleSpec::default()
            } else {
                serde_yaml::from_value(resource.spec).with_context(|| format!("role {name}"))?
            };
            let allow = spec.allow.impersonate.take().unwrap_or_default();
            let deny = spec.deny.impersonate.unwrap_or_default();
            if !allow.predicate.is_empty() || !deny.predicate.is_empty() {
                bail!(
                    "role {name}: impersonate.where is not supported by the dev cluster; remove it"
                );
            }
            if !spec.deny.node_labels.is_empty() {
                bail!(
                    "role {name}: deny.node_labels is not supported by the dev cluster; remove it"
                );
            }
            if !deny.users.is_empty() {
                bail!(
                    "role {name}: deny.impersonate.users is not supported by the dev cluster; remove it"
                );
            }
            let rules = |raw: Vec<RawRule>, side: &str| {
                raw.into_iter()
                    .enumerate()
                    .map(|(i, r)| Rule::from_raw(r, &format!("role {name}: {side}.rules[{i}]")))
                    .collect::<anyhow::Result<Vec<_>>>()
            };
            let deny_rules = rules(spec.deny.rules, "deny")?;
            let conditions = spec.allow;
            Ok(Parsed::Role(Box::new(Role {
                rules: rules(conditions.rules, "allow")?,
                deny_rules,
                workload_identity_labels: conditions
                    .workload_identity_labels
                    .into_iter()
                    .map(|(k, v)| (k, v.into_vec()))
                    .collect(),
                name,
                logins: conditions.logins,
                impersonate_roles: allow.roles,
                impersonate_users: allow.users,
                deny_impersonate_roles: deny.roles,
                app_labels: conditions.app_labels,
                db_labels: conditions.db_labels,
                db_names: conditions.db_names,
                db_users: conditions.db_users,
                kubernetes_labels: conditions.kubernetes_labels,
                node_labels: conditions.node_labels,
                kubernetes_groups: conditions.kubernetes_groups,
                kubernetes_users: conditions.kubernetes_users,
            })))
        }
        "bot" => {
            if resource.version != "v1" {
                bail!("bot {name}: version {:?} is not v1", resource.version);
            }
            let spec: BotSpec =
                serde_yaml::from_value(resource.spec).with_context(|| format!("bot {name}"))?;
            Ok(Parsed::Bot(Bot {
                name,
                roles: spec.roles,
            }))
        }
        other => bail!("kind {other:?} is not role or bot"),
    }
}

/// `RoleSet.CheckAccess` for a node (`lib/services/role.go` `checkAccess`, allow rules only):
/// one role whose `node_labels` match the node's labels (`labels::matches`: none matches no
/// node) and, when the login is known, whose `logins` hold it.
pub fn may_access_node(
    holder: &[&Role],
    node_labels: &BTreeMap<String, String>,
    login: Option<&str>,
) -> bool {
    holder.iter().any(|role| {
        labels::matches(&role.node_labels, node_labels)
            && login.is_none_or(|l| role.logins.iter().any(|have| have == l))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, allow: &[&str], deny: &[&str]) -> Role {
        Role {
            name: name.into(),
            impersonate_roles: allow.iter().map(|s| s.to_string()).collect(),
            deny_impersonate_roles: deny.iter().map(|s| s.to_string()).collect(),
            ..Role::default()
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn node_access_follows_labels_and_logins() {
        let yaml = "kind: role\nversion: v7\nmetadata: {name: dev}\nspec:\n  allow:\n    logins: [ci]\n    node_labels: {env: [dev, 'stage-*'], team: infra}\n";
        let Parsed::Role(dev) = from_value(serde_yaml::from_str(yaml).unwrap()).unwrap() else {
            panic!("not a role")
        };
        let dev = *dev;
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let node = labels(&[("env", "stage-2"), ("team", "infra")]);
        assert!(may_access_node(&[&dev], &node, Some("ci")));
        assert!(may_access_node(&[&dev], &node, None));
        assert!(!may_access_node(&[&dev], &node, Some("root")));
        let prod = labels(&[("env", "prod"), ("team", "infra")]);
        assert!(!may_access_node(&[&dev], &prod, None));
        assert!(!may_access_node(&[&dev], &labels(&[("env", "dev")]), None));
        let mut any = dev.clone();
        any.node_labels = [("*".to_owned(), vec!["*".to_owned()])].into();
        assert!(may_access_node(&[&any], &labels(&[]), Some("ci")));
        let mut none = dev.clone();
        none.node_labels.clear();
        assert!(!may_access_node(&[&none], &node, Some("ci")));
        let back = from_value(serde_yaml::to_value(dev.to_resource()).unwrap()).unwrap();
        assert!(matches!(back, Parsed::Role(r) if *r == dev));
    }

    #[test]
    fn impersonation_follows_teleports_rules() {
        let bot = role("bot-ci", &["access", "db-*"], &[]);
        assert!(may_impersonate(&[&bot], &names(&["access"])));
        assert!(may_impersonate(&[&bot], &names(&["access", "db-read"])));
        assert!(!may_impersonate(&[&bot], &names(&["editor"])));
        assert!(!may_impersonate(&[&bot], &names(&["access", "editor"])));
        // One role must allow them all: two roles allowing one each is not enough.
        let (a, b) = (role("a", &["x"], &[]), role("b", &["y"], &[]));
        assert!(!may_impersonate(&[&a, &b], &names(&["x", "y"])));
        // A deny anywhere wins.
        let deny = role("d", &[], &["db-*"]);
        assert!(!may_impersonate(&[&bot, &deny], &names(&["db-read"])));
        // An allow rule naming users is for user impersonation.
        let mut users = role("u", &["access"], &[]);
        users.impersonate_users = names(&["alice"]);
        assert!(!may_impersonate(&[&users], &names(&["access"])));
        assert!(glob("a*b*c", "axxbyyc") && !glob("a*b*c", "axxc") && glob("*", ""));
    }

    #[test]
    fn reads_roles_and_bots_in_the_tctl_format() {
        let parse = |y: &str| from_value(serde_yaml::from_str(y).unwrap());
        let Parsed::Role(r) = parse(
            "kind: role\nversion: v7\nmetadata: {name: access}\nspec:\n  allow:\n    logins: [root, ubuntu]\n    node_labels: {'*': '*'}\n  deny: {}\n",
        )
        .unwrap() else {
            panic!("not a role")
        };
        assert_eq!(r.logins, names(&["root", "ubuntu"]));
        let Parsed::Bot(b) =
            parse("kind: bot\nversion: v1\nmetadata: {name: ci}\nspec: {roles: [access]}\n")
                .unwrap()
        else {
            panic!("not a bot")
        };
        assert_eq!(Role::for_bot(&b).impersonate_roles, names(&["access"]));
        assert_eq!(Role::for_bot(&b).name, "bot-ci");
        let err = parse("kind: role\nversion: v7\nmetadata: {name: w}\nspec:\n  allow:\n    impersonate: {roles: [a], where: 'true'}\n")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("where is not supported"),
            "{err:#}"
        );
        assert!(parse("kind: user\nversion: v2\nmetadata: {name: u}\n").is_err());
    }

    #[test]
    fn what_get_shows_reads_back_the_same() {
        let mut role = role("r", &["access", "db-*"], &["admin"]);
        role.logins = names(&["root"]);
        role.impersonate_users = names(&["alice"]);
        role.app_labels = [("env".to_owned(), names(&["dev", "qa"]))].into();
        role.db_labels = [("*".to_owned(), names(&["*"]))].into();
        role.db_names = names(&["app"]);
        role.db_users = names(&["alice"]);
        role.rules = vec![
            Rule::new(
                &["host_cert"],
                &["create"],
                r#"all_end_with(host_cert.principals, ".x")"#,
            )
            .unwrap(),
        ];
        role.deny_rules = vec![Rule::new(&["*"], &["read"], "").unwrap()];
        role.workload_identity_labels = [("env".to_owned(), names(&["dev", "ci"]))].into();
        let shown = serde_yaml::to_value(role.to_resource()).unwrap();
        let Parsed::Role(back) = from_value(shown).unwrap() else {
            panic!("not a role")
        };
        assert_eq!(*back, role);
        let bare = Role {
            name: "empty".into(),
            ..Role::default()
        };
        let Parsed::Role(back) =
            from_value(serde_yaml::to_value(bare.to_resource()).unwrap()).unwrap()
        else {
            panic!("not a role")
        };
        assert_eq!(*back, bare);
        let bot = Bot {
            name: "ci".into(),
            roles: names(&["access"]),
        };
        let Parsed::Bot(back) =
            from_value(serde_yaml::to_value(bot.to_resource()).unwrap()).unwrap()
        else {
            panic!("not a bot")
        };
        assert_eq!(back, bot);
    }
}
