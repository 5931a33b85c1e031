//! `type: kubernetes/v2`: one role-impersonated identity and a `kubeconfig.yaml` with a context
//! per Kubernetes cluster its selectors find (`lib/tbot/services/k8s/output_v2_config.go`,
//! `output_v2.go`). No certificate is routed: each cluster's server is the Proxy's path route
//! `/v1/teleport/<base64url cluster>/<base64url kube>`. The files: `identity`, the key and
//! certificates, `kubeconfig.yaml`, and `teleport-host-ca.crt` only.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::anyhow;
use base64::Engine as _;
use serde::Deserialize;

use super::application::check_destination;
use super::cluster::{Needs, Shared};
use super::identity::{DATABASE_CA, OutputContext, USER_CA, identity_files};
use super::impersonate::{Impersonation, impersonate, roles_for};
use super::kind::{Described, Issue, Output};
use super::kubeconfig::{
    ContextTemplate, Credentials, Entry, KUBECONFIG, kube_address, kubeconfig,
};
use super::kubernetes::{find_kube, kube_names};
use super::lifetime::Lifetime;
use super::routed::{connect_as, list_all, page};
use crate::fsutil::Files;
use crate::identity::Identity;
use crate::untrusted::{self, KubeName};
use crate::values::{Destination, GoDuration, RawDestination};
use crate::{ExitKind, Failure};

/// One selector: a cluster by name, or every cluster with the labels.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Selector {
    /// `name:`.
    Name(String),
    /// `labels:`.
    Labels(BTreeMap<String, String>),
}

/// A selector with its `default_namespace`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Selected {
    /// Which clusters.
    pub selector: Selector,
    /// The namespace of their contexts.
    pub default_namespace: Option<String>,
}

/// A `type: kubernetes/v2` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KubernetesV2Output {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// An optional name for logs.
    pub name: Option<String>,
    /// The selectors, at least one.
    pub selectors: Vec<Selected>,
    /// Write the certificate and key into the kubeconfig instead of the exec plugin.
    pub disable_exec_plugin: bool,
    /// How contexts are named.
    pub context_name_template: ContextTemplate,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetesV2Output {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    #[serde(default)]
    selectors: Vec<RawSelector>,
    #[serde(default)]
    disable_exec_plugin: bool,
    context_name_template: Option<String>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

/// One selector's YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    default_namespace: Option<String>,
}

impl Output for KubernetesV2Output {
    type Raw = RawKubernetesV2Output;
    type Issued = Issued;

    fn from_raw(raw: RawKubernetesV2Output, at: &str) -> Result<Self, String> {
        let destination = check_destination(raw.destination, at)?;
        if raw.selectors.is_empty() {
            return Err(format!(
                "{at}.selectors: missing; give one or more (at least one selector must be provided)"
            ));
        }
        let mut selectors = Vec::new();
        for (i, s) in raw.selectors.into_iter().enumerate() {
            let selector = match (s.name, s.labels) {
                (Some(name), None) if !name.trim().is_empty() => Selector::Name(name),
                (None, Some(labels)) if !labels.is_empty() => Selector::Labels(labels),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{at}.selectors[{i}]: only one of 'name' and 'labels' may be specified"
                    ));
                }
                _ => {
                    return Err(format!(
                        "{at}.selectors[{i}]: one of 'name' and 'labels' must be specified"
                    ));
                }
            };
            selectors.push(Selected {
                selector,
                default_namespace: s.default_namespace.filter(|n| !n.is_empty()),
            });
        }
        let context_name_template = match raw.context_name_template {
            None => ContextTemplate::default_template(),
            Some(text) => ContextTemplate::parse(&text).map_err(|e| {
                format!("{at}.context_name_template: context_name_template is invalid: {e}")
            })?,
        };
        Ok(Self {
            lifetime: Lifetime::of(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            name: raw.name,
            selectors,
            disable_exec_plugin: raw.disable_exec_plugin,
            context_name_template,
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
            default_roles: true,
        }
    }

    async fn issue(&self, cx: &Issue<'_>) -> Result<Issued, Failure> {
        let roles = roles_for(cx, &[]).await?;
        let what = Impersonation {
            roles,
            allow_reissue: false,
        };
        let identity = impersonate(cx, &what).await?;
        let client = connect_as(cx, &identity).await?;
        let mut found: Vec<(KubeName, Option<String>)> = Vec::new();
        for selected in &self.selectors {
            let names = match &selected.selector {
                Selector::Name(name) => vec![find_kube(&client, name).await.map_err(|f| {
                    Failure::new(
                        f.kind,
                        anyhow!(
                            "unable to fetch cluster {} by name: {:#}",
                            untrusted::quoted(name),
                            f.error
                        ),
                    )
                })?],
                Selector::Labels(labels) => {
                    let labels: HashMap<String, String> =
                        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    let listed =
                        list_all(&client, "kube_server", String::new(), labels, page()).await?;
                    kube_names(listed)
                        .into_iter()
                        .map(|(name, _, _)| {
                            KubeName::parse(&name)
                                .map_err(|e| Failure::new(ExitKind::Rejected, anyhow!(e)))
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            for name in names {
                // The last selector naming a cluster gives its namespace.
                match found.iter_mut().find(|(n, _)| *n == name) {
                    Some(entry) => {
                        if selected.default_namespace.is_some() {
                            entry.1.clone_from(&selected.default_namespace);
                        }
                    }
                    None => found.push((name, selected.default_namespace.clone())),
                }
            }
        }
        Ok(Issued {
            identity,
            kubes: found,
            roles: roles
                .iter()
                .map(|r| untrusted::name(r).to_string())
                .collect(),
        })
    }

    fn render(
        &self,
        issued: &Issued,
        cx: &Issue<'_>,
        shared: &Shared,
        dir: &Path,
    ) -> anyhow::Result<Files> {
        let ctx = OutputContext::of(shared);
        let mut out: Files = identity_files(&issued.identity, &ctx, dir, false)?
            .into_iter()
            .filter(|(name, _)| *name != USER_CA && *name != DATABASE_CA)
            .collect();
        let (address, server_name) = kube_address(shared.proxy.as_ref())?;
        let teleport = cx.bot.info.cluster_name.as_str();
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let entries: Vec<Entry> = issued
            .kubes
            .iter()
            .map(|(kube, namespace)| Entry {
                name: self.context_name_template.render(teleport, kube.as_str()),
                server: format!(
                    "{address}/v1/teleport/{}/{}",
                    b64(teleport),
                    b64(kube.as_str())
                ),
                namespace: namespace.clone(),
            })
            .collect();
        let absolute = std::path::absolute(dir)?;
        let credentials = if self.disable_exec_plugin {
            Credentials::Inline(&issued.identity)
        } else {
            Credentials::Exec(&absolute)
        };
        out.push((
            KUBECONFIG,
            kubeconfig(
                &entries,
                teleport,
                &credentials,
                &shared.cas.host_tls_pem,
                &server_name,
            )?,
        ));
        Ok(out)
    }

    fn describe(&self, issued: &Issued) -> Described {
        Described {
            roles: issued.roles.clone(),
            expires: issued.identity.info.not_after,
        }
    }
}

/// What a kubernetes/v2 output is issued: the identity, the clusters found (with their
/// namespaces) in order, its roles (sanitized).
pub struct Issued {
    identity: Identity,
    kubes: Vec<(KubeName, Option<String>)>,
    roles: Vec<String>,
}
