//! `type: kubernetes` (v1): certificates routed to one Kubernetes cluster and a
//! `kubeconfig.yaml` for it (`lib/tbot/services/k8s/output_v1_config.go`, `output_v1.go`). The
//! cluster is looked up by name or by the name Discovery found it under (`ListResources`,
//! `kube_server`), then certificates are issued with `KubernetesCluster` set; the files are
//! the identity output's without `known_hosts` and `ssh_config`, plus `kubeconfig.yaml`.

use std::collections::HashMap;
use std::path::Path;

use keybound_proto::proto as legacy;
use serde::Deserialize;

use super::application::{check_destination, check_roles};
use super::cluster::{Needs, Shared};
use super::identity::{OutputContext, identity_files};
use super::impersonate::{Impersonation, impersonate, impersonate_routed, roles_for};
use super::kind::{Described, Issue, Output};
use super::kubeconfig::{Credentials, Entry, KUBECONFIG, kube_address, kubeconfig};
use super::lifetime::Lifetime;
use super::routed::{choose_one, connect_as, list_all, name_or_discovered, page};
use crate::fsutil::Files;
use crate::identity::Identity;
use crate::untrusted::{self, KubeName};
use crate::values::{Destination, GoDuration, RawDestination};
use crate::{ExitKind, Failure};

/// A `type: kubernetes` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KubernetesOutput {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// An optional name for logs.
    pub name: Option<String>,
    /// The Kubernetes cluster, by name or by the name Discovery found it under.
    pub kubernetes_cluster: String,
    /// Write the certificate and key into the kubeconfig instead of running
    /// `keybound kube credentials`.
    pub disable_exec_plugin: bool,
    /// The roles to impersonate; empty means every role the bot may impersonate.
    pub roles: Vec<String>,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetesOutput {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    kubernetes_cluster: Option<String>,
    #[serde(default)]
    disable_exec_plugin: bool,
    #[serde(default)]
    roles: Vec<String>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

impl Output for KubernetesOutput {
    type Raw = RawKubernetesOutput;
    type Issued = Issued;

    fn from_raw(raw: RawKubernetesOutput, at: &str) -> Result<Self, String> {
        let destination = check_destination(raw.destination, at)?;
        let kubernetes_cluster = raw.kubernetes_cluster.unwrap_or_default();
        if kubernetes_cluster.trim().is_empty() {
            return Err(format!(
                "{at}.kubernetes_cluster: missing; name the Kubernetes cluster to issue \
                 certificates for (kubernetes_cluster must not be empty)"
            ));
        }
        check_roles(&raw.roles, at)?;
        Ok(Self {
            lifetime: Lifetime::of(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            name: raw.name,
            kubernetes_cluster,
            disable_exec_plugin: raw.disable_exec_plugin,
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

    async fn issue(&self, cx: &Issue<'_>) -> Result<Issued, Failure> {
        let roles = roles_for(cx, &self.roles).await?;
        let what = Impersonation {
            roles,
            allow_reissue: false,
        };
        let impersonated = impersonate(cx, &what).await?;
        let client = connect_as(cx, &impersonated).await?;
        let kube = find_kube(&client, &self.kubernetes_cluster).await?;
        let routed = kube.as_str().to_owned();
        // Auth refuses a cluster that does not exist or is offline.
        let identity = impersonate_routed(cx, &what, cx.suite, move |r| {
            r.kubernetes_cluster = routed;
        })
        .await?;
        Ok(Issued {
            identity,
            kube,
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
        let mut out = identity_files(&issued.identity, &ctx, dir, false)?;
        let (server, server_name) = kube_address(shared.proxy.as_ref())?;
        let name = format!(
            "{}-{}",
            cx.bot.info.cluster_name.as_str(),
            issued.kube.as_str()
        );
        let absolute = std::path::absolute(dir)?;
        let credentials = if self.disable_exec_plugin {
            Credentials::Inline(&issued.identity)
        } else {
            Credentials::Exec(&absolute)
        };
        out.push((
            KUBECONFIG,
            kubeconfig(
                &[Entry {
                    name: name.clone(),
                    server,
                    namespace: None,
                }],
                &name,
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

/// The Kubernetes cluster `name` names (or the one Discovery renamed from it), as the
/// connection's roles see it.
pub(super) async fn find_kube(
    client: &crate::auth::AuthClient,
    name: &str,
) -> Result<KubeName, Failure> {
    let found = list_all(
        client,
        "kube_server",
        name_or_discovered(name),
        HashMap::new(),
        page(),
    )
    .await?;
    let chosen = choose_one(
        kube_names(found),
        name,
        "kubernetes cluster",
        "check the name, and that the roles' kubernetes_labels grant it",
    )?;
    KubeName::parse(&chosen).map_err(|e| Failure::new(ExitKind::Rejected, anyhow::anyhow!(e)))
}

/// The Kubernetes clusters of a listing: (name, labels, name).
pub(super) fn kube_names(
    found: Vec<legacy::paginated_resource::Resource>,
) -> Vec<(String, HashMap<String, String>, String)> {
    found
        .into_iter()
        .filter_map(|r| match r {
            legacy::paginated_resource::Resource::KubernetesServer(server) => {
                server.spec.and_then(|s| s.cluster)
            }
            _ => None,
        })
        .filter_map(|k| k.metadata)
        .map(|m| (m.name.clone(), m.labels, m.name))
        .collect()
}

/// What a Kubernetes output is issued: the routed identity, the cluster, its roles (sanitized).
pub struct Issued {
    identity: Identity,
    kube: KubeName,
    roles: Vec<String>,
}
