//! Join tokens in Teleport's resource YAML (the `tctl create` format) and their bound-keypair
//! status, as Auth keeps it (`status.bound_keypair`, spec §6.2).

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use keybound_signer::PublicKey;
use keybound_teleport::time::format_time;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::secret::Secret;
use time::format_description::well_known::Rfc3339;

/// Recovery modes (`lib/boundkeypair`): what a join after the first may skip.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RecoveryMode {
    /// The recovery limit holds and join state is verified.
    Standard,
    /// No limit; join state is verified.
    Relaxed,
    /// Neither: what static keys need.
    Insecure,
}

impl RecoveryMode {
    fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "" | "standard" => Ok(Self::Standard),
            "relaxed" => Ok(Self::Relaxed),
            "insecure" => Ok(Self::Insecure),
            other => bail!("unknown recovery mode {other:?}; use standard, relaxed or insecure"),
        }
    }

    /// The mode's name, as the join state document records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Relaxed => "relaxed",
            Self::Insecure => "insecure",
        }
    }
}

/// A provision token.
#[derive(Clone, Debug)]
pub struct Token {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.expires`.
    pub expires: Option<SystemTime>,
    /// `spec.roles`.
    pub roles: Vec<String>,
    /// `spec.join_method` (empty means `token`).
    pub join_method: String,
    /// `spec.bot_name`.
    pub bot_name: String,
    /// `spec.bound_keypair`.
    pub bound_keypair: BoundKeypairSpec,
    /// `status.bound_keypair` as the resource gave it (empty when it has none): where the
    /// cluster's status for the token starts. What the cluster keeps afterwards is its own
    /// (`Cluster::token_status_of`).
    pub status: Status,
}

/// `spec.bound_keypair`.
#[derive(Clone, Debug, Default)]
pub struct BoundKeypairSpec {
    /// `onboarding.initial_public_key`.
    pub initial_public_key: Option<PublicKey>,
    /// `onboarding.registration_secret`.
    pub registration_secret: Option<Secret>,
    /// `onboarding.must_register_before`.
    pub must_register_before: Option<SystemTime>,
    /// `recovery.limit`.
    pub recovery_limit: u32,
    /// `recovery.mode`.
    pub recovery_mode: Option<RecoveryMode>,
    /// `rotate_after`.
    pub rotate_after: Option<SystemTime>,
}

impl BoundKeypairSpec {
    /// The recovery mode, `standard` when unset.
    pub fn mode(&self) -> RecoveryMode {
        self.recovery_mode.unwrap_or(RecoveryMode::Standard)
    }
}

/// `status.bound_keypair`, kept by the cluster.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Status {
    /// The currently bound key, `authorized_keys` line.
    pub bound_public_key: Option<String>,
    /// The bot instance that owns the binding.
    pub bound_bot_instance_id: Option<String>,
    /// Recoveries used; the first join counts as one.
    pub recovery_count: u32,
    /// When the last recovery happened.
    pub last_recovered_at: Option<SystemTime>,
    /// When the key was last rotated.
    pub last_rotated_at: Option<SystemTime>,
    /// The registration secret a first join must show (`populateRegistrationSecret`,
    /// `lib/auth/bound_keypair_tokens.go`): the spec's, or one generated when the token has
    /// neither a secret nor a public key; cleared once a join used it. Never shown by
    /// `tctl get` (`to_resource`).
    pub registration_secret: Option<Secret>,
}

#[derive(Deserialize)]
struct Resource {
    kind: String,
    version: String,
    metadata: Metadata,
    spec: Spec,
    #[serde(default)]
    status: Option<RawStatus>,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    expires: Option<String>,
}

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    join_method: String,
    #[serde(default)]
    bot_name: String,
    bound_keypair: Option<RawBoundKeypair>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoundKeypair {
    onboarding: Option<RawOnboarding>,
    recovery: Option<RawRecovery>,
    rotate_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnboarding {
    initial_public_key: Option<String>,
    registration_secret: Option<String>,
    must_register_before: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    mode: String,
}

/// `status`, as `tctl get` shows it (what a `tctl edit` round trip gives back).
#[derive(Deserialize)]
struct RawStatus {
    bound_keypair: Option<RawBoundStatus>,
}

/// `status.bound_keypair`.
#[derive(Deserialize)]
struct RawBoundStatus {
    bound_public_key: Option<String>,
    registration_secret: Option<String>,
    bound_bot_instance_id: Option<String>,
    #[serde(default)]
    recovery_count: u32,
    last_recovered_at: Option<String>,
    last_rotated_at: Option<String>,
}

impl RawBoundStatus {
    fn check(self, name: &str) -> anyhow::Result<Status> {
        let at = |field: &str, text: Option<String>| {
            text.filter(|t| !t.is_empty())
                .map(|t| rfc3339(&format!("status.bound_keypair.{field}"), &t))
                .transpose()
        };
        let bound_public_key = self.bound_public_key.filter(|k| !k.trim().is_empty());
        if let Some(key) = &bound_public_key {
            PublicKey::from_openssh(key)
                .with_context(|| format!("token {name}: status.bound_keypair.bound_public_key"))?;
        }
        Ok(Status {
            bound_public_key,
            bound_bot_instance_id: self.bound_bot_instance_id.filter(|i| !i.is_empty()),
            recovery_count: self.recovery_count,
            last_recovered_at: at("last_recovered_at", self.last_recovered_at)?,
            last_rotated_at: at("last_rotated_at", self.last_rotated_at)?,
            registration_secret: self
                .registration_secret
                .filter(|s| !s.is_empty())
                .map(Secret::new),
        })
    }
}

/// An RFC 3339 time in a resource, its field named in the error.
pub(crate) fn rfc3339(field: &str, text: &str) -> anyhow::Result<SystemTime> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .with_context(|| format!("{field}: {text:?} is not an RFC 3339 time"))?;
    Ok(t.into())
}

/// Parses every `kind: token` document in `text` (YAML documents separated by `---`).
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("{origin}: not YAML"))?;
        if value.is_null() {
            continue;
        }
        let resource: Resource = serde_yaml::from_value(value)
            .with_context(|| format!("{origin}: not a Teleport token resource"))?;
        tokens.push(resource.check().with_context(|| origin.to_owned())?);
    }
    if tokens.is_empty() {
        bail!("{origin}: holds no token");
    }
    Ok(tokens)
}

/// Reads one `kind: token` (v2) document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<Token> {
    let resource: Resource =
        serde_yaml::from_value(value).context("not a Teleport token resource")?;
    resource.check()
}

/// Reads tokens from a YAML file.
pub fn load(path: &Path) -> anyhow::Result<Vec<Token>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

impl Resource {
    fn check(self) -> anyhow::Result<Token> {
        if self.kind != "token" {
            bail!("kind is {:?}, not token", self.kind);
        }
        if self.version != "v2" {
            bail!(
                "token {}: version {:?} is not v2",
                self.metadata.name,
                self.version
            );
        }
        let name = self.metadata.name;
        let bk = match self.spec.bound_keypair {
            None => BoundKeypairSpec::default(),
            Some(raw) => {
                let onboarding = raw.onboarding.unwrap_or(RawOnboarding {
                    initial_public_key: None,
                    registration_secret: None,
                    must_register_before: None,
                });
                let recovery = raw.recovery.unwrap_or(RawRecovery {
                    limit: 0,
                    mode: String::new(),
                });
                BoundKeypairSpec {
                    initial_public_key: onboarding
                        .initial_public_key
                        .filter(|k| !k.trim().is_empty())
                        .map(|k| {
                            PublicKey::from_openssh(&k)
                                .with_context(|| format!("token {name}: initial_public_key"))
                        })
                        .transpose()?,
                    registration_secret: onboarding
                        .registration_secret
                        .filter(|s| !s.is_empty())
                        .map(Secret::new),
                    must_register_before: onboarding
                        .must_register_before
                        .map(|t| rfc3339("must_register_before", &t))
                        .transpose()?,
                    recovery_limit: recovery.limit,
                    recovery_mode: Some(
                        RecoveryMode::parse(&recovery.mode)
                            .with_context(|| format!("token {name}"))?,
                    ),
                    rotate_after: raw
                        .rotate_after
                        .map(|t| rfc3339("rotate_after", &t))
                        .transpose()?,
                }
            }
        };
        if self.spec.join_method == "bound_keypair" && self.spec.bot_name.is_empty() {
            bail!("token {name}: a bound_keypair token needs spec.bot_name");
        }
        let status = match self.status.and_then(|s| s.bound_keypair) {
            Some(raw) => raw.check(&name)?,
            None => Status::default(),
        };
        Ok(Token {
            expires: self
                .metadata
                .expires
                .map(|t| rfc3339("metadata.expires", &t))
                .transpose()?,
            name,
            roles: self.spec.roles,
            join_method: self.spec.join_method,
            bot_name: self.spec.bot_name,
            bound_keypair: bk,
            status,
        })
    }
}

impl Token {
    /// The token with `status` as `tctl get` shows it: Teleport's keys, the ones set, but never
    /// a registration secret (`crate::secret`).
    pub fn to_resource(&self, status: &Status) -> serde_json::Value {
        let mut metadata = serde_json::json!({ "name": self.name });
        if let Some(expires) = self.expires {
            metadata["expires"] = format_time(expires).into();
        }
        let mut spec = serde_json::json!({ "roles": self.roles, "join_method": self.join_method });
        if !self.bot_name.is_empty() {
            spec["bot_name"] = self.bot_name.clone().into();
        }
        let bk = &self.bound_keypair;
        // A token whose YAML had `bound_keypair` has a recovery mode.
        if let Some(mode) = bk.recovery_mode {
            let mut onboarding = serde_json::Map::new();
            let mut put = |key: &str, value: Option<String>| {
                if let Some(value) = value {
                    onboarding.insert(key.to_owned(), value.into());
                }
            };
            put(
                "initial_public_key",
                bk.initial_public_key.as_ref().map(PublicKey::to_openssh),
            );
            put(
                "must_register_before",
                bk.must_register_before.map(format_time),
            );
            let mut bound = serde_json::json!({
                "onboarding": onboarding,
                "recovery": { "limit": bk.recovery_limit, "mode": mode.as_str() },
            });
            if let Some(at) = bk.rotate_after {
                bound["rotate_after"] = format_time(at).into();
            }
            spec["bound_keypair"] = bound;
        }
        let mut resource = serde_json::json!({
            "kind": "token",
            "version": "v2",
            "metadata": metadata,
            "spec": spec,
        });
        if bk.recovery_mode.is_some() {
            resource["status"] = serde_json::json!({ "bound_keypair": status.to_resource() });
        }
        resource
    }
}

impl Status {
    /// `status.bound_keypair` as `tctl get` shows it.
    fn to_resource(&self) -> serde_json::Value {
        let mut out = serde_json::json!({ "recovery_count": self.recovery_count });
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                out[key] = value.into();
            }
        };
        put("bound_public_key", self.bound_public_key.clone());
        put("bound_bot_instance_id", self.bound_bot_instance_id.clone());
        put("last_recovered_at", self.last_recovered_at.map(format_time));
        put("last_rotated_at", self.last_rotated_at.map(format_time));
        out
    }

    /// `populateRegistrationSecret` (`lib/auth/bound_keypair_tokens.go`), on create and upsert:
    /// nothing when a key is bound or pre-registered (the key wins over any secret) or a
    /// secret is already there; else the spec's secret, else 16 random bytes in hex.
    pub fn populate_registration_secret(&mut self, spec: &BoundKeypairSpec) {
        if self.bound_public_key.is_some()
            || spec.initial_public_key.is_some()
            || self.registration_secret.is_some()
        {
            return;
        }
        self.registration_secret = Some(
            spec.registration_secret
                .clone()
                .unwrap_or_else(Secret::generate),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tbots_example_token() {
        let yaml = "kind: token\nmetadata:\n  name: example-token\nspec:\n  bot_name: example\n  bound_keypair:\n    onboarding:\n      initial_public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGzndE0n580QkgJflQRtlXfGYGNvpGGDwkgmvxQbAF9v\n    recovery:\n      limit: 0\n      mode: insecure\n  join_method: bound_keypair\n  roles:\n  - Bot\nversion: v2\n---\nkind: token\nversion: v2\nmetadata:\n  name: other\n  expires: 2030-01-01T00:00:00Z\nspec:\n  roles: [Node]\n  join_method: token\n";
        let tokens = parse(yaml, "t.yaml").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].bound_keypair.mode(), RecoveryMode::Insecure);
        assert!(tokens[0].bound_keypair.initial_public_key.is_some());
        assert!(tokens[1].expires.is_some());
        assert!(
            parse(
                "kind: role\nversion: v7\nmetadata: {name: x}\nspec: {}\n",
                "r"
            )
            .is_err()
        );
    }

    #[test]
    fn what_get_shows_reads_back_the_same() {
        let yaml = "kind: token\nversion: v2\nmetadata:\n  name: t\n  expires: 2030-01-01T00:00:00Z\nspec:\n  bot_name: ci\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n      initial_public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGzndE0n580QkgJflQRtlXfGYGNvpGGDwkgmvxQbAF9v\n      must_register_before: 2029-01-01T00:00:00Z\n    recovery: {limit: 2, mode: relaxed}\n    rotate_after: 2031-01-01T00:00:00Z\nstatus:\n  bound_keypair:\n    bound_public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGzndE0n580QkgJflQRtlXfGYGNvpGGDwkgmvxQbAF9v\n    bound_bot_instance_id: 0b6b4a3e-4c1e-4f5e-9d7a-1c2b3d4e5f60\n    recovery_count: 1\n    last_recovered_at: 2026-01-02T03:04:05.5Z\n    registration_secret: kept\n";
        let token = parse(yaml, "t.yaml").unwrap().remove(0);
        assert_eq!(token.status.recovery_count, 1);
        assert!(token.status.last_recovered_at.is_some());
        let shown = token.to_resource(&token.status);
        let back = from_value(serde_yaml::to_value(&shown).unwrap()).unwrap();
        assert_eq!(back.to_resource(&back.status), shown);
        // All but the registration secret, which `get` never shows.
        assert!(!serde_json::to_string(&shown).unwrap().contains("kept"));
        assert!(token.status.registration_secret.is_some());
        let without_secret = Status {
            registration_secret: None,
            ..token.status
        };
        assert_eq!(back.status, without_secret);
        assert_eq!(
            shown["spec"]["bound_keypair"]["recovery"]["mode"],
            "relaxed"
        );
        assert_eq!(shown["metadata"]["expires"], "2030-01-01T00:00:00Z");
        // A bound key that does not parse is refused where it is given.
        let broken = yaml.replace("bound_public_key: ssh-ed25519", "bound_public_key: ssh-rsa");
        let err = parse(&broken, "t.yaml").unwrap_err();
        assert!(
            format!("{err:#}").contains("status.bound_keypair.bound_public_key"),
            "{err:#}"
        );
    }
}
