//! Locks in Teleport's resource YAML (`kind: lock`, `version: v2`, what `tctl lock` and
//! `tctl create` make): a target, a message, and an optional expiry. While one is in force,
//! Auth refuses what it targets (`services.LockInForceAccessDenied`, `lib/services/lock.go`).
//!
//! The dev cluster knows the targets a bot meets: `user` (the bot's user `bot-<name>`), `role`
//! and `join_token`. A Teleport lock target may name several of them at once (all must match);
//! the dev cluster takes one.

use std::fmt;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use keybound_teleport::time::format_time;

use crate::tokens::rfc3339;

/// What a lock targets (`types.LockTarget`).
#[derive(Clone, Debug, Eq, PartialEq, Hash)]
pub enum LockTarget {
    /// `user`: a user, as a bot's `bot-<name>`.
    User(String),
    /// `role`: anyone holding the role.
    Role(String),
    /// `join_token`: joins with the token, and identities it issued.
    JoinToken(String),
}

impl fmt::Display for LockTarget {
    /// As Teleport's error texts print a target: `User:"bot-ci"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => write!(f, "User:{name:?}"),
            Self::Role(name) => write!(f, "Role:{name:?}"),
            Self::JoinToken(name) => write!(f, "JoinToken:{name:?}"),
        }
    }
}

impl LockTarget {
    /// The target's key under `spec.target` and its value.
    pub fn key_value(&self) -> (&'static str, &str) {
        match self {
            Self::User(name) => ("user", name),
            Self::Role(name) => ("role", name),
            Self::JoinToken(name) => ("join_token", name),
        }
    }
}

/// A lock.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Lock {
    /// `metadata.name`.
    pub name: String,
    /// `spec.target`.
    pub target: LockTarget,
    /// `spec.message`.
    pub message: String,
    /// `spec.expires`: in force until then (for ever when unset).
    pub expires: Option<SystemTime>,
}

impl Lock {
    /// Whether the lock is in force at `now`.
    pub fn in_force(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|expires| expires > now)
    }

    /// `services.LockInForceAccessDenied`'s text: `lock targeting <target> is in force[: <message>]`.
    pub fn refusal(&self) -> String {
        if self.message.is_empty() {
            format!("lock targeting {} is in force", self.target)
        } else {
            format!(
                "lock targeting {} is in force: {}",
                self.target, self.message
            )
        }
    }

    /// The lock as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        let (key, value) = self.target.key_value();
        let mut spec = serde_json::json!({ "target": { key: value } });
        if !self.message.is_empty() {
            spec["message"] = self.message.clone().into();
        }
        if let Some(expires) = self.expires {
            spec["expires"] = format_time(expires).into();
        }
        serde_json::json!({
            "kind": "lock",
            "version": "v2",
            "metadata": { "name": self.name },
            "spec": spec,
        })
    }
}

#[derive(Deserialize)]
struct Resource {
    kind: String,
    version: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    target: Target,
    #[serde(default)]
    message: String,
    expires: Option<String>,
    /// Set by Teleport when it makes a lock; kept out of the dev cluster's.
    #[serde(default, rename = "created_at")]
    _created_at: Option<serde_yaml::Value>,
    #[serde(default, rename = "created_by")]
    _created_by: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Target {
    user: Option<String>,
    role: Option<String>,
    join_token: Option<String>,
    // Teleport's other targets: named so that the error says the dev cluster lacks them.
    login: Option<serde_yaml::Value>,
    node: Option<serde_yaml::Value>,
    mfa_device: Option<serde_yaml::Value>,
    windows_desktop: Option<serde_yaml::Value>,
    access_request: Option<serde_yaml::Value>,
    device: Option<serde_yaml::Value>,
    server_id: Option<serde_yaml::Value>,
    bot_instance_id: Option<serde_yaml::Value>,
}

/// Reads one `kind: lock` (v2) document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<Lock> {
    let resource: Resource =
        serde_yaml::from_value(value).context("not a Teleport lock resource")?;
    let name = resource.metadata.name;
    if resource.kind != "lock" {
        bail!("kind is {:?}, not lock", resource.kind);
    }
    if resource.version != "v2" {
        bail!("lock {name}: version {:?} is not v2", resource.version);
    }
    let t = resource.spec.target;
    let unsupported = [
        ("login", t.login.is_some()),
        ("node", t.node.is_some()),
        ("mfa_device", t.mfa_device.is_some()),
        ("windows_desktop", t.windows_desktop.is_some()),
        ("access_request", t.access_request.is_some()),
        ("device", t.device.is_some()),
        ("server_id", t.server_id.is_some()),
        ("bot_instance_id", t.bot_instance_id.is_some()),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
        bail!(
            "lock {name}: spec.target.{key} is not supported by the dev cluster; target user, role or join_token"
        );
    }
    let mut targets: Vec<LockTarget> = [
        t.user.map(LockTarget::User),
        t.role.map(LockTarget::Role),
        t.join_token.map(LockTarget::JoinToken),
    ]
    .into_iter()
    .flatten()
    .filter(|target| !target.key_value().1.is_empty())
    .collect();
    if targets.len() != 1 {
        bail!(
            "lock {name}: spec.target must name exactly one of user, role or join_token (the dev cluster's targets)"
        );
    }
    Ok(Lock {
        target: targets.remove(0),
        message: resource.spec.message,
        expires: resource
            .spec
            .expires
            .map(|t| rfc3339("spec.expires", &t))
            .transpose()
            .with_context(|| format!("lock {name}"))?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<Lock> {
        from_value(serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn reads_what_tctl_writes_and_reads_back_what_it_shows() {
        let lock = parse(
            "kind: lock\nversion: v2\nmetadata: {name: l1}\nspec:\n  target: {user: bot-ci}\n  message: stolen laptop\n  expires: 2030-01-02T03:04:05Z\n  created_at: 2025-01-01T00:00:00Z\n  created_by: alice\n",
        )
        .unwrap();
        assert_eq!(lock.target, LockTarget::User("bot-ci".into()));
        assert_eq!(
            lock.refusal(),
            r#"lock targeting User:"bot-ci" is in force: stolen laptop"#
        );
        let shown = serde_yaml::to_value(lock.to_resource()).unwrap();
        assert_eq!(from_value(shown).unwrap(), lock);
        let expires = lock.expires.unwrap();
        assert!(lock.in_force(expires - std::time::Duration::from_secs(1)));
        assert!(!lock.in_force(expires));
    }

    #[test]
    fn refuses_targets_the_dev_cluster_does_not_know_by_name() {
        let err =
            parse("kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {login: root}}\n")
                .unwrap_err();
        assert!(
            format!("{err:#}").contains("spec.target.login is not supported"),
            "{err:#}"
        );
        let err = parse(
            "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {user: a, role: b}}\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("exactly one"), "{err:#}");
        let err = parse("kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {}}\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("exactly one"), "{err:#}");
        let bare = parse(
            "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {join_token: t}}\n",
        )
        .unwrap();
        assert_eq!(
            bare.refusal(),
            r#"lock targeting JoinToken:"t" is in force"#
        );
    }
}
