//! Join tokens in Teleport's resource YAML (the `tctl create` format) and their bound-keypair
//! status, as Auth keeps it (`status.bound_keypair`, spec §6.2).

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use keybound_signer::PublicKey;
use serde::Deserialize;
use time::OffsetDateTime;
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
}

/// `spec.bound_keypair`.
#[derive(Clone, Debug, Default)]
pub struct BoundKeypairSpec {
    /// `onboarding.initial_public_key`.
    pub initial_public_key: Option<PublicKey>,
    /// `onboarding.registration_secret`.
    pub registration_secret: Option<String>,
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

fn rfc3339(field: &str, text: &str) -> anyhow::Result<SystemTime> {
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

/// The resources of a YAML file in the `tctl create` format.
#[derive(Debug, Default)]
pub struct Resources {
    /// `kind: token`.
    pub tokens: Vec<Token>,
    /// `kind: role`.
    pub roles: Vec<super::roles::Role>,
    /// `kind: bot`.
    pub bots: Vec<super::roles::Bot>,
}

/// Reads every token, role and bot document of a YAML file.
pub fn load_resources(path: &Path) -> anyhow::Result<Resources> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read resource file {origin}"))?;
    let mut out = Resources::default();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("{origin}: not YAML"))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(serde_yaml::Value::as_str) == Some("token") {
            let resource: Resource = serde_yaml::from_value(value)
                .with_context(|| format!("{origin}: not a Teleport token resource"))?;
            out.tokens
                .push(resource.check().with_context(|| origin.clone())?);
            continue;
        }
        match super::roles::from_value(value).with_context(|| origin.clone())? {
            super::roles::Parsed::Role(role) => out.roles.push(role),
            super::roles::Parsed::Bot(bot) => out.bots.push(bot),
        }
    }
    if out.tokens.is_empty() && out.roles.is_empty() && out.bots.is_empty() {
        bail!("{origin}: holds no token, role or bot");
    }
    Ok(out)
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
                    registration_secret: onboarding.registration_secret.filter(|s| !s.is_empty()),
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
        })
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
}
