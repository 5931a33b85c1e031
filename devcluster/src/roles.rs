//! Roles and bots in Teleport's resource YAML (the `tctl create` format), and the role
//! impersonation rules Auth applies when a bot asks for certificates for its outputs.
//!
//! Only what a bot's identity output touches is kept: a role's `allow.logins`, and its
//! `allow.impersonate` / `deny.impersonate` rules. A `kind: bot` resource stands for what
//! `tctl bots add` makes: the bot's role `bot-<name>`, which may impersonate `spec.roles`.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use keybound_proto::types;
use serde::Deserialize;

use crate::ca::bot_resource_name;

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
    /// `spec.allow.node_labels`: each label's allowed values (`*` for any).
    pub node_labels: BTreeMap<String, Vec<String>>,
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
        if !self.node_labels.is_empty() {
            allow.insert(
                "node_labels".to_owned(),
                serde_json::json!(self.node_labels),
            );
        }
        let mut deny = serde_json::Map::new();
        let denied = impersonate(&self.deny_impersonate_roles, &[]);
        if !denied.is_empty() {
            deny.insert("impersonate".to_owned(), denied.into());
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

/// `RoleSet.CheckAccess` for a node (`lib/services/role.go` `checkAccess`, allow rules only):
/// one role whose `node_labels` match the node's labels and, when the login is known, whose
/// `logins` hold it. A role without `node_labels` matches no node (`CheckLabelsMatch`: no
/// matchers is no match).
pub fn may_access_node(
    holder: &[&Role],
    labels: &BTreeMap<String, String>,
    login: Option<&str>,
) -> bool {
    holder.iter().any(|role| {
        !role.node_labels.is_empty()
            && labels_match(&role.node_labels, labels)
            && login.is_none_or(|l| role.logins.iter().any(|have| have == l))
    })
}

/// `MatchLabels` (`lib/services/role.go`): every selector key must be present with a matching
/// value, `'*': '*'` matching any node. Values are exact or globs with `*` (regular expressions,
/// `^...$`, are not supported by the dev cluster).
fn labels_match(
    selector: &BTreeMap<String, Vec<String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(key, values)| {
        if key == "*" {
            return values.len() == 1 && values[0] == "*";
        }
        labels
            .get(key)
            .is_some_and(|value| values.iter().any(|pattern| glob_match(pattern, value)))
    })
}

/// `*` matches any run of characters; everything else itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
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

/// Teleport's `utils.MatchString` globs: `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return remaining.ends_with(part);
        }
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    true
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
    node_labels: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    impersonate: Option<Impersonate>,
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

/// A label's value in a role: one string or a list (`types.Labels`, `utils.Strings`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

#[derive(Deserialize)]
struct BotSpec {
    #[serde(default)]
    roles: Vec<String>,
}

/// A role or bot read from a resource document.
pub enum Parsed {
    /// `kind: role`.
    Role(Role),
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
            let spec: RoleSpec = if resource.spec.is_null() {
                RoleSpec::default()
            } else {
                serde_yaml::from_value(resource.spec).with_context(|| format!("role {name}"))?
            };
            let allow = spec.allow.impersonate.unwrap_or_default();
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
            Ok(Parsed::Role(Role {
                name,
                logins: spec.allow.logins,
                impersonate_roles: allow.roles,
                impersonate_users: allow.users,
                deny_impersonate_roles: deny.roles,
                node_labels: spec
                    .allow
                    .node_labels
                    .into_iter()
                    .map(|(k, v)| (k, v.into_vec()))
                    .collect(),
            }))
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
        assert!(!may_access_node(
            &[&dev],
            &labels(&[("env", "prod"), ("team", "infra")]),
            None
        ));
        assert!(!may_access_node(&[&dev], &labels(&[("env", "dev")]), None));
        let mut any = dev.clone();
        any.node_labels = [("*".to_owned(), vec!["*".to_owned()])].into();
        assert!(may_access_node(&[&any], &labels(&[]), Some("ci")));
        let mut none = dev.clone();
        none.node_labels.clear();
        assert!(!may_access_node(&[&none], &node, Some("ci")));
        assert!(glob_match("a*c*e", "abcde") && !glob_match("a*c", "abd") && glob_match("*", ""));
        let back = from_value(serde_yaml::to_value(dev.to_resource()).unwrap()).unwrap();
        assert!(matches!(back, Parsed::Role(r) if r == dev));
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
        let shown = serde_yaml::to_value(role.to_resource()).unwrap();
        let Parsed::Role(back) = from_value(shown).unwrap() else {
            panic!("not a role")
        };
        assert_eq!(back, role);
        let bare = Role {
            name: "empty".into(),
            ..Role::default()
        };
        let Parsed::Role(back) =
            from_value(serde_yaml::to_value(bare.to_resource()).unwrap()).unwrap()
        else {
            panic!("not a role")
        };
        assert_eq!(back, bare);
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
