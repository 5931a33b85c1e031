//! `type: identity`: the bot's certificates, role-impersonated, in tbot's file layout
//! (`lib/tbot/services/identity/output.go`, `lib/tbot/config/output_identity.go`): the CA
//! files, the tsh identity file, the key and certificates, and `known_hosts` and `ssh_config`
//! for OpenSSH.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::cluster::{ClusterCas, Needs, Shared};
use super::impersonate::{Impersonation, impersonate, roles_for};
use super::kind::{Described, Issue, Output};
use super::lifetime::Lifetime;
use super::ssh;
use crate::Failure;
use crate::fsutil::Files;
use crate::identity::{Identity, files};
use crate::values::{Destination, GoDuration, HostPort, OnOff, RawDestination, not_yet};

/// Host CA TLS certificates.
pub const HOST_CA: &str = "teleport-host-ca.crt";
/// User CA TLS certificates.
pub const USER_CA: &str = "teleport-user-ca.crt";
/// Database CA TLS certificates.
pub const DATABASE_CA: &str = "teleport-database-ca.crt";
/// The tsh-style identity file.
pub const IDENTITY: &str = "identity";

/// A `type: identity` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct IdentityOutput {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// Whether to write `known_hosts` and `ssh_config` (tbot's `ssh_config: on`, the default).
    pub ssh_config: bool,
    /// An optional name for logs.
    pub name: Option<String>,
    /// The roles to impersonate; empty means every role the bot may impersonate (tbot's
    /// default, read from the bot's role).
    pub roles: Vec<String>,
    /// Whether the output's certificates may request further certificates (`allow_reissue`).
    pub allow_reissue: bool,
    /// The program `ssh_config`'s `ProxyCommand` runs (`ssh_proxy_command_binary`, absolute);
    /// `None`: this keybound.
    pub ssh_proxy_command_binary: Option<String>,
}

impl IdentityOutput {
    /// An output in `dir` with tbot's defaults (`--destination-dir`).
    pub fn in_directory(dir: PathBuf) -> Self {
        Self {
            destination: Destination::Directory {
                path: dir,
                symlinks: Default::default(),
            },
            ssh_config: true,
            name: None,
            roles: Vec::new(),
            allow_reissue: false,
            lifetime: None,
            ssh_proxy_command_binary: None,
        }
    }
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentityOutput {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    ssh_config: Option<OnOff>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default, deserialize_with = "not_yet::cluster")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    cluster: (),
    #[serde(default)]
    allow_reissue: bool,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
    ssh_proxy_command_binary: Option<String>,
}

impl Output for IdentityOutput {
    type Raw = RawIdentityOutput;
    type Issued = Issued;

    fn from_raw(raw: RawIdentityOutput, at: &str) -> Result<Self, String> {
        let destination = raw
            .destination
            .ok_or_else(|| format!("{at}.destination: missing"))?
            .check(&format!("{at}.destination"))?;
        if let Some(empty) = raw.roles.iter().position(|r| r.trim().is_empty()) {
            return Err(format!(
                "{at}.roles[{empty}]: empty; name a role, or remove `roles` to impersonate every \
                 role the bot may"
            ));
        }
        if let Some(program) = &raw.ssh_proxy_command_binary {
            ssh::check_program(program).map_err(|e| format!("{at}.{e}"))?;
        }
        Ok(Self {
            lifetime: Lifetime::of(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            ssh_config: raw.ssh_config.is_none_or(|v| v.0),
            name: raw.name,
            roles: raw.roles,
            allow_reissue: raw.allow_reissue,
            ssh_proxy_command_binary: raw.ssh_proxy_command_binary,
        })
    }

    fn lifetime(&self) -> Option<&Lifetime> {
        self.lifetime.as_ref()
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn needs(&self) -> Needs {
        Needs {
            default_roles: self.roles.is_empty(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match &self.destination {
            Destination::Directory { path, .. } if self.ssh_config => {
                ssh::check_ssh_config_dir(path)
            }
            _ => Ok(()),
        }
    }

    async fn issue(&self, cx: &Issue<'_>) -> Result<Issued, Failure> {
        let roles = roles_for(cx, &self.roles).await?;
        let what = Impersonation {
            roles,
            allow_reissue: self.allow_reissue,
        };
        let identity = impersonate(cx, &what).await?;
        Ok(Issued {
            identity,
            roles: roles
                .iter()
                .map(|r| crate::untrusted::name(r).to_string())
                .collect(),
        })
    }

    fn render(
        &self,
        issued: &Issued,
        _: &Issue<'_>,
        shared: &Shared,
        dir: &Path,
    ) -> anyhow::Result<Files> {
        let ctx = OutputContext::of(shared);
        let program = match (&self.ssh_proxy_command_binary, self.ssh_config) {
            (_, false) => None,
            (Some(program), true) => Some(program.clone()),
            (None, true) => Some(ssh::this_program()?),
        };
        identity_files_with(&issued.identity, &ctx, dir, program.as_deref())
    }

    fn describe(&self, issued: &Issued) -> Described {
        Described {
            roles: issued.roles.clone(),
            expires: issued.identity.info.not_after,
        }
    }
}

/// What an identity output is issued: the role-impersonated identity, and its roles (for the
/// log, sanitized).
pub struct Issued {
    identity: Identity,
    /// The roles, sanitized.
    roles: Vec<String>,
}

/// What an identity output needs besides the identity. Every name in it that an output writes
/// is of a checked type ([`HostPort`], [`ClusterName`](crate::untrusted::ClusterName); see [`crate::untrusted`]).
pub struct OutputContext<'a> {
    /// The proxy's address (known_hosts, ssh_config); `None` when keybound reaches Auth
    /// directly and Auth names no proxy, which leaves the proxy out of known_hosts and skips
    /// ssh_config.
    pub proxy: Option<&'a HostPort>,
    /// The cluster's CAs.
    pub cas: &'a ClusterCas,
}

impl<'a> OutputContext<'a> {
    /// The context the shared lookups of a renewal give.
    pub fn of(shared: &'a Shared) -> Self {
        Self {
            proxy: shared.proxy.as_ref(),
            cas: &shared.cas,
        }
    }
}

/// The files of a `type: identity` output holding `identity` (role-impersonated by then), in
/// the order tbot writes them: the CA files, `identity`, the identity's own files, then
/// `known_hosts` and `ssh_config` (`lib/tbot/services/identity/output.go`). Fails when `dir`
/// cannot be written into `ssh_config` ([`check_ssh_config_dir`](ssh::check_ssh_config_dir)).
pub fn identity_files(
    identity: &Identity,
    ctx: &OutputContext<'_>,
    dir: &Path,
    ssh_config: bool,
) -> anyhow::Result<Files> {
    let program = if ssh_config {
        Some(ssh::this_program()?)
    } else {
        None
    };
    identity_files_with(identity, ctx, dir, program.as_deref())
}

/// [`identity_files`], the OpenSSH files written when `program` (what `ProxyCommand` runs) is
/// given.
pub fn identity_files_with(
    identity: &Identity,
    ctx: &OutputContext<'_>,
    dir: &Path,
    program: Option<&str>,
) -> anyhow::Result<Files> {
    let mut files = vec![
        (HOST_CA, ctx.cas.host_tls_pem.clone().into()),
        (USER_CA, ctx.cas.user_tls_pem.clone().into()),
        (DATABASE_CA, ctx.cas.db_tls_pem.clone().into()),
        (IDENTITY, identity_file(identity, ctx.cas)),
        (files::KEY, identity.private_key_pem.clone()),
        (
            files::PUBLIC_KEY,
            format!("{}\n", identity.ssh_public_key).into(),
        ),
        (files::SSH_CERT, format!("{}\n", identity.ssh_cert).into()),
        (files::TLS_CERT, identity.tls_cert_pem.clone().into()),
    ];
    let Some(program) = program else {
        return Ok(files);
    };
    let cluster = &identity.info.cluster_name;
    files.push((
        ssh::KNOWN_HOSTS,
        ssh::known_hosts(ctx.cas, ctx.proxy).into(),
    ));
    files.push((
        ssh::cluster_known_hosts_name(cluster),
        ssh::cluster_known_hosts(ctx.cas, ctx.proxy, cluster).into(),
    ));
    if let Some(proxy) = ctx.proxy {
        files.push((
            ssh::SSH_CONFIG,
            ssh::ssh_config_file(cluster, proxy, dir, program)?.into(),
        ));
        files.push((
            ssh::cluster_ssh_config_name(cluster),
            ssh::cluster_ssh_config_file(cluster, proxy, dir, program)?.into(),
        ));
    }
    Ok(files)
}

/// The tsh identity file (`api/identityfile`, `lib/client/identityfile` `FormatFile`): private
/// key, SSH certificate, TLS certificate, the host CAs' `@cert-authority` lines (no proxy host:
/// tbot's key ring has none), the host CAs' TLS certificates; each part ends with a newline.
///
/// It holds the private key, so it is built in a zeroizing buffer of its final size: a growing
/// `String` would leave copies of the key behind in the allocations it outgrew.
fn identity_file(identity: &Identity, cas: &ClusterCas) -> Zeroizing<String> {
    let lines: Vec<String> = cas
        .host_ssh_keys
        .iter()
        .map(|(cluster, key)| format!("@cert-authority {cluster},*.{cluster} {key} type=host"))
        .collect();
    let mut parts: Vec<&str> = vec![
        &identity.private_key_pem,
        &identity.ssh_cert,
        &identity.tls_cert_pem,
    ];
    parts.extend(lines.iter().map(String::as_str));
    if !cas.host_tls_pem.is_empty() {
        parts.push(&cas.host_tls_pem);
    }
    let size = parts.iter().map(|p| p.len() + 1).sum();
    let mut out = Zeroizing::new(String::with_capacity(size));
    for part in parts {
        out.push_str(part);
        if !part.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
