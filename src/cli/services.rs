//! `keybound start <kind>` and `keybound configure <kind>`: one service from flags, as tbot's
//! config-less commands build it (`lib/tbot/cli/start_*.go`, one file per kind). Each kind's flags
//! become the YAML of one `services:` entry, which the config reader then checks like a file's;
//! what a flag gets wrong is said here first, naming the flag.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};

use crate::config::generate::Yaml;
use crate::fsutil::Symlinks;
use crate::values::Destination;

/// The output kinds (and the Workload API service) a command line can ask for, with tbot's names
/// and aliases.
#[derive(Clone, Debug, Subcommand)]
pub enum ServiceCommand {
    /// An identity output: the bot's role certificates in tbot's file layout (tbot's `start
    /// identity`).
    #[command(visible_aliases = ["ssh", "id"])]
    Identity(IdentityFlags),
    /// An application output: certificates routed to one app.
    #[command(visible_alias = "app")]
    Application(ApplicationFlags),
    /// A database output: certificates routed to one database.
    #[command(visible_alias = "db")]
    Database(DatabaseFlags),
    /// A kubernetes output: certificates and a kubeconfig for one Kubernetes cluster.
    #[command(visible_alias = "k8s")]
    Kubernetes(KubernetesFlags),
    /// A kubernetes/v2 output: a kubeconfig with a context per selected Kubernetes cluster.
    #[command(name = "kubernetes/v2", visible_alias = "k8s/v2")]
    KubernetesV2(KubernetesV2Flags),
    /// A workload-identity-x509 output: an X.509 SVID, its key and the trust bundle.
    #[command(name = "workload-identity-x509")]
    WorkloadIdentityX509(WorkloadIdentityX509Flags),
    /// A workload-identity-jwt output: a JWT SVID.
    #[command(name = "workload-identity-jwt")]
    WorkloadIdentityJwt(WorkloadIdentityJwtFlags),
    /// The workload-identity-api service: the SPIFFE Workload API on a socket, which the
    /// long-running agent serves (a one-shot run skips it, as tbot does).
    #[command(name = "workload-identity-api")]
    WorkloadIdentityApi(WorkloadIdentityApiFlags),
}

/// tbot's destination flags (`newSharedDestinationArgs`).
#[derive(Clone, Debug, Args)]
pub struct DestinationFlags {
    /// Where the output's files go: file:///DIR (or a directory path), or memory://.
    #[arg(long, value_name = "URI")]
    pub destination: String,

    /// tbot's ACL readers; refused (keybound sets no ACLs yet).
    #[arg(long, value_name = "USER", hide = true)]
    pub reader_user: Vec<String>,

    /// tbot's ACL readers; refused (keybound sets no ACLs yet).
    #[arg(long, value_name = "GROUP", hide = true)]
    pub reader_group: Vec<String>,
}

/// `start identity`.
#[derive(Clone, Debug, Args)]
pub struct IdentityFlags {
    /// Where and how.
    #[command(flatten)]
    pub destination: DestinationFlags,

    /// tbot's leaf-cluster identity; refused (keybound issues for the bot's own cluster).
    #[arg(long, value_name = "NAME", hide = true)]
    pub cluster: Option<String>,
}

/// `start application`.
#[derive(Clone, Debug, Args)]
pub struct ApplicationFlags {
    /// Where and how.
    #[command(flatten)]
    pub destination: DestinationFlags,

    /// The app to route the certificates to.
    #[arg(long, value_name = "NAME")]
    pub app: String,

    /// Also write tls.crt, tls.key and tls.cas (specific_tls_naming).
    #[arg(long)]
    pub specific_tls_extensions: bool,
}

/// `start database`.
#[derive(Clone, Debug, Args)]
pub struct DatabaseFlags {
    /// Where and how.
    #[command(flatten)]
    pub destination: DestinationFlags,

    /// The database service (its name in Teleport).
    #[arg(long, value_name = "NAME")]
    pub service: String,

    /// The database user.
    #[arg(long, value_name = "USER")]
    pub username: String,

    /// The database (schema) name.
    #[arg(long, value_name = "NAME")]
    pub database: String,

    /// Extra files for a client: tls, mongo, cockroach (default: none).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

/// `start kubernetes`.
#[derive(Clone, Debug, Args)]
pub struct KubernetesFlags {
    /// Where and how.
    #[command(flatten)]
    pub destination: DestinationFlags,

    /// The Kubernetes cluster (its name in Teleport).
    #[arg(long, value_name = "NAME")]
    pub kubernetes_cluster: String,

    /// Put the credentials in the kubeconfig instead of running `keybound kube credentials`.
    #[arg(long)]
    pub disable_exec_plugin: bool,
}

/// `start kubernetes/v2`.
#[derive(Clone, Debug, Args)]
pub struct KubernetesV2Flags {
    /// Where and how.
    #[command(flatten)]
    pub destination: DestinationFlags,

    /// A Kubernetes cluster to include, by name; repeatable.
    #[arg(long, value_name = "NAME")]
    pub name_selector: Vec<String>,

    /// Kubernetes clusters to include, by labels k1=v1,k2=v2 (all must match); repeatable.
    #[arg(long, value_name = "K=V,...")]
    pub label_selector: Vec<String>,

    /// Put the credentials in the kubeconfig instead of running `keybound kube credentials`.
    #[arg(long)]
    pub disable_exec_plugin: bool,
}

/// The workload identity to issue: by name or by labels.
#[derive(Clone, Debug, Args)]
pub struct WorkloadSelectorFlags {
    /// The workload identity to issue, by name.
    #[arg(long, value_name = "NAME", conflicts_with = "label_selector")]
    pub name_selector: Option<String>,

    /// The workload identities to issue, by labels k1=v1,k2=v2.
    #[arg(long, value_name = "K=V,...")]
    pub label_selector: Option<String>,
}

/// `start workload-identity-x509`.
#[derive(Clone, Debug, Args)]
pub struct WorkloadIdentityX509Flags {
    /// Where and how.
    #[command(flatten)]
    pub destination: DestinationFlags,

    /// Which workload identity.
    #[command(flatten)]
    pub selector: WorkloadSelectorFlags,

    /// Also write the federated trust domains' CAs into svid_bundle.pem.
    #[arg(long)]
    pub include_federated_trust_bundles: bool,
}

/// `start workload-identity-jwt`.
#[derive(Clone, Debug, Args)]
pub struct WorkloadIdentityJwtFlags {
    /// Where and how.
    #[command(flatten)]
    pub destination: DestinationFlags,

    /// Which workload identity.
    #[command(flatten)]
    pub selector: WorkloadSelectorFlags,

    /// An audience of the JWT; repeatable, at least one.
    #[arg(long, value_name = "AUDIENCE", required = true)]
    pub audience: Vec<String>,
}

/// `start workload-identity-api` (`lib/tbot/cli/start_workload_identity_api.go`).
#[derive(Clone, Debug, Args)]
pub struct WorkloadIdentityApiFlags {
    /// Where to serve: unix:///PATH or tcp://HOST:PORT.
    #[arg(long, value_name = "URI", required = true)]
    pub listen: String,

    /// Which workload identity.
    #[command(flatten)]
    pub selector: WorkloadSelectorFlags,
}

impl ServiceCommand {
    /// The subcommand's name, for errors (`keybound start <name>`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Identity(_) => "identity",
            Self::Application(_) => "application",
            Self::Database(_) => "database",
            Self::Kubernetes(_) => "kubernetes",
            Self::KubernetesV2(_) => "kubernetes/v2",
            Self::WorkloadIdentityX509(_) => "workload-identity-x509",
            Self::WorkloadIdentityJwt(_) => "workload-identity-jwt",
            Self::WorkloadIdentityApi(_) => "workload-identity-api",
        }
    }

    /// The service's YAML, or an error naming the flag at fault and what to give instead.
    pub fn to_yaml(&self) -> Result<Yaml, String> {
        Ok(match self {
            Self::Identity(f) => {
                if f.cluster.is_some() {
                    return Err("--cluster: keybound issues identities for the bot's own \
                                cluster only; leave --cluster out"
                        .to_owned());
                }
                f.destination.service("identity")?
            }
            Self::Application(f) => f
                .destination
                .service("application")?
                .str("app_name", required("--app", &f.app)?)
                .flag("specific_tls_naming", f.specific_tls_extensions),
            Self::Database(f) => {
                let yaml = f
                    .destination
                    .service("database")?
                    .str("service", required("--service", &f.service)?)
                    .str("username", required("--username", &f.username)?)
                    .str("database", required("--database", &f.database)?);
                match &f.format {
                    Some(format) => yaml.str("format", format),
                    None => yaml,
                }
            }
            Self::Kubernetes(f) => f
                .destination
                .service("kubernetes")?
                .str(
                    "kubernetes_cluster",
                    required("--kubernetes-cluster", &f.kubernetes_cluster)?,
                )
                .flag("disable_exec_plugin", f.disable_exec_plugin),
            Self::KubernetesV2(f) => kubernetes_v2(f)?,
            Self::WorkloadIdentityX509(f) => f
                .destination
                .service("workload-identity-x509")?
                .map("selector", f.selector.to_yaml()?)
                .flag(
                    "include_federated_trust_bundles",
                    f.include_federated_trust_bundles,
                ),
            Self::WorkloadIdentityJwt(f) => {
                for audience in &f.audience {
                    required("--audience", audience)?;
                }
                f.destination
                    .service("workload-identity-jwt")?
                    .map("selector", f.selector.to_yaml()?)
                    .strs("audiences", &f.audience)
            }
            Self::WorkloadIdentityApi(f) => Yaml::service("workload-identity-api")
                .str("listen", required("--listen", &f.listen)?)
                .map("selector", f.selector.to_yaml()?),
        })
    }
}

impl DestinationFlags {
    /// A service of `kind` with this destination.
    fn service(&self, kind: &str) -> Result<Yaml, String> {
        if !self.reader_user.is_empty() || !self.reader_group.is_empty() {
            return Err(
                "--reader-user/--reader-group: keybound sets no ACLs on destinations \
                        yet; grant access with the directory's owner and mode"
                    .to_owned(),
            );
        }
        let destination = destination_uri("--destination", &self.destination)?;
        Ok(Yaml::service(kind).map("destination", Yaml::destination(&destination)))
    }
}

impl WorkloadSelectorFlags {
    /// `selector:` with `name:` or `labels:` (each label a list of one value, as tbot's).
    fn to_yaml(&self) -> Result<Yaml, String> {
        match (&self.name_selector, &self.label_selector) {
            (Some(name), _) => Ok(Yaml::default().str("name", required("--name-selector", name)?)),
            (None, Some(spec)) => {
                let mut labels = Yaml::default();
                for (key, value) in label_spec("--label-selector", spec)? {
                    labels = labels.strs(&key, &[value]);
                }
                Ok(Yaml::default().map("labels", labels))
            }
            (None, None) => Err(
                "give the workload identity with --name-selector NAME or --label-selector K=V"
                    .to_owned(),
            ),
        }
    }
}

fn kubernetes_v2(f: &KubernetesV2Flags) -> Result<Yaml, String> {
    let mut selectors = Vec::new();
    for name in &f.name_selector {
        selectors.push(Yaml::default().str("name", required("--name-selector", name)?));
    }
    for spec in &f.label_selector {
        let mut labels = Yaml::default();
        for (key, value) in label_spec("--label-selector", spec)? {
            labels = labels.str(&key, &value);
        }
        selectors.push(Yaml::default().map("labels", labels));
    }
    if selectors.is_empty() {
        return Err(
            "give at least one --name-selector NAME or --label-selector K=V,... for kubernetes/v2"
                .to_owned(),
        );
    }
    Ok(f.destination
        .service("kubernetes/v2")?
        .maps("selectors", selectors)
        .flag("disable_exec_plugin", f.disable_exec_plugin))
}

/// tbot's destination URIs (`--storage`, `--destination`): `file:///dir`, a bare path, or
/// `memory://`.
pub(super) fn destination_uri(flag: &str, uri: &str) -> Result<Destination, String> {
    if uri == "memory://" {
        return Ok(Destination::Memory);
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() || path.contains("://") {
        return Err(format!(
            "{flag} {uri:?}: use file:///DIR, a directory path, or memory://"
        ));
    }
    Ok(Destination::Directory {
        path: std::path::PathBuf::from(path),
        symlinks: Symlinks::default(),
    })
}

/// A value that must not be empty.
fn required<'a>(flag: &str, value: &'a str) -> Result<&'a str, String> {
    if value.trim().is_empty() {
        Err(format!("{flag}: must not be empty"))
    } else {
        Ok(value)
    }
}

/// tbot's label spec (`client.ParseLabelSpec`): `k1=v1,k2=v2`.
fn label_spec(flag: &str, spec: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                labels.insert(key.trim().to_owned(), value.trim().to_owned());
            }
            _ => {
                return Err(format!(
                    "{flag} {spec:?}: {pair:?} is not KEY=VALUE; write labels as k1=v1,k2=v2"
                ));
            }
        }
    }
    if labels.is_empty() {
        return Err(format!(
            "{flag} {spec:?}: no labels; write labels as k1=v1,k2=v2"
        ));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_specs() {
        let labels = label_spec("--label-selector", "env=prod, team=a").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["team"], "a");
        let e = label_spec("--label-selector", "env").unwrap_err();
        assert!(e.starts_with("--label-selector \"env\""), "{e}");
        assert!(label_spec("--label-selector", ",").is_err());
    }
}
