//! `type: application`: certificates routed to one app, for clients that reach it through the
//! Proxy (`lib/tbot/services/application/output_config.go`, `output_service.go`). The app is
//! looked up with `ListResources` as the output's roles see it (`app_server`, `name == "<app>"`,
//! one result), then certificates are issued with `RouteToApp{name, public_addr, cluster}`; the
//! files are the identity output's without `known_hosts` and `ssh_config`, plus `tls.crt`,
//! `tls.key` and `tls.cas` with `specific_tls_naming`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::anyhow;
use keybound_proto::proto as legacy;
use serde::Deserialize;

use super::cluster::{Needs, Shared};
use super::identity::{OutputContext, identity_files};
use super::impersonate::{Impersonation, impersonate, impersonate_routed, roles_for};
use super::kind::{Described, Issue, Output};
use super::lifetime::Lifetime;
use super::routed::{Routed, connect_as, list_all, quoted};
use crate::fsutil::Files;
use crate::identity::Identity;
use crate::values::{Destination, GoDuration, RawDestination};
use crate::{ExitKind, Failure, untrusted};

/// `tls.crt`, `tls.key`, `tls.cas`: the certificate, key and host CAs under the names many
/// TLS clients expect (`specific_tls_naming`).
pub const TLS_CERT: &str = "tls.crt";
/// See [`TLS_CERT`].
pub const TLS_KEY: &str = "tls.key";
/// See [`TLS_CERT`].
pub const TLS_CAS: &str = "tls.cas";

/// A `type: application` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ApplicationOutput {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// An optional name for logs.
    pub name: Option<String>,
    /// The app the certificates are routed to (`app_name`).
    pub app_name: String,
    /// Whether to write `tls.crt`, `tls.key` and `tls.cas` too (`specific_tls_naming`).
    pub specific_tls_naming: bool,
    /// The roles to impersonate; empty means every role the bot may impersonate.
    pub roles: Vec<String>,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApplicationOutput {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    app_name: Option<String>,
    #[serde(default)]
    specific_tls_naming: bool,
    #[serde(default)]
    roles: Vec<String>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

/// `roles:` as the access outputs check it: no empty name.
pub(super) fn check_roles(roles: &[String], at: &str) -> Result<(), String> {
    match roles.iter().position(|r| r.trim().is_empty()) {
        Some(empty) => Err(format!(
            "{at}.roles[{empty}]: empty; name a role, or remove `roles` to impersonate every \
             role the bot may"
        )),
        None => Ok(()),
    }
}

/// `destination:`, required (tbot: "no destination configured for output").
pub(super) fn check_destination(
    raw: Option<RawDestination>,
    at: &str,
) -> Result<Destination, String> {
    raw.ok_or_else(|| {
        format!("{at}.destination: missing; give the output a directory (no destination configured for output)")
    })?
    .check(&format!("{at}.destination"))
}

impl Output for ApplicationOutput {
    type Raw = RawApplicationOutput;
    type Issued = Routed;

    fn from_raw(raw: RawApplicationOutput, at: &str) -> Result<Self, String> {
        let destination = check_destination(raw.destination, at)?;
        let app_name = raw.app_name.unwrap_or_default();
        if app_name.trim().is_empty() {
            return Err(format!(
                "{at}.app_name: missing; name the app to issue certificates for (app_name must not be empty)"
            ));
        }
        check_roles(&raw.roles, at)?;
        Ok(Self {
            lifetime: Lifetime::of(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            name: raw.name,
            app_name,
            specific_tls_naming: raw.specific_tls_naming,
            roles: raw.roles,
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

    async fn issue(&self, cx: &Issue<'_>) -> Result<Routed, Failure> {
        let roles = roles_for(cx, &self.roles).await?;
        let what = Impersonation {
            roles,
            allow_reissue: false,
        };
        let impersonated = impersonate(cx, &what).await?;
        let app = self.find_app(cx, &impersonated).await?;
        let route = legacy::RouteToApp {
            name: app.0,
            public_addr: app.1,
            cluster_name: cx.bot.info.cluster_name.as_str().to_owned(),
        };
        let identity = impersonate_routed(cx, &what, cx.suite, move |r| {
            r.route_to_app = Some(route);
        })
        .await?;
        Ok(Routed::new(identity, roles))
    }

    fn render(
        &self,
        issued: &Routed,
        _: &Issue<'_>,
        shared: &Shared,
        dir: &Path,
    ) -> anyhow::Result<Files> {
        let ctx = OutputContext::of(shared);
        let mut out = identity_files(&issued.identity, &ctx, dir, false)?;
        if self.specific_tls_naming {
            out.extend(tls_files(&issued.identity, shared.cas.host_tls_pem.clone()));
        }
        Ok(out)
    }

    fn describe(&self, issued: &Routed) -> Described {
        issued.described()
    }
}

impl ApplicationOutput {
    /// `getApp`: the app named `app_name` as the impersonated roles see it, its name and
    /// public address.
    async fn find_app(
        &self,
        cx: &Issue<'_>,
        impersonated: &Identity,
    ) -> Result<(String, String), Failure> {
        let client = connect_as(cx, impersonated).await?;
        let predicate = format!("name == {}", quoted(&self.app_name));
        let found = list_all(&client, "app_server", predicate, HashMap::new(), 1).await?;
        found
            .into_iter()
            .find_map(|r| match r {
                legacy::paginated_resource::Resource::AppServer(server) => {
                    server.spec.and_then(|s| s.app).map(|app| {
                        (
                            app.metadata.map(|m| m.name).unwrap_or_default(),
                            app.spec.map(|s| s.public_addr).unwrap_or_default(),
                        )
                    })
                }
                _ => None,
            })
            .ok_or_else(|| {
                Failure::new(
                    ExitKind::Rejected,
                    anyhow!(
                        "app {} not found: the cluster lists no app of that name the output's \
                         roles may see; check app_name, and that the roles' app_labels grant it",
                        untrusted::quoted(&self.app_name)
                    ),
                )
            })
    }
}

/// `tls.crt`, `tls.key` and `tls.cas` (`host_cas`, the host CAs' certificates, since the key
/// ring tbot writes them from holds the host CAs).
pub(super) fn tls_files(identity: &Identity, host_cas: String) -> Files {
    vec![
        (TLS_CERT, identity.tls_cert_pem.clone().into()),
        (TLS_KEY, identity.private_key_pem.clone()),
        (TLS_CAS, host_cas.into()),
    ]
}
