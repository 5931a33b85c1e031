//! Kubernetes clusters (`kind: kube_cluster`, `version: v3`, the `tctl create` format): what a
//! Kubernetes Service would serve, and how `ListResources` shows it (a `kube_server` holding
//! the cluster). The dev cluster answers for every one itself, on its Proxy port, with a small
//! Kubernetes API (`front/kube.rs`).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use keybound_proto::types;
use serde::Deserialize;

use crate::apps::Metadata;

/// A Kubernetes cluster.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KubeCluster {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    kind: String,
    version: String,
    metadata: Metadata,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "a kube_cluster's spec holds nothing the dev cluster uses"
    )]
    spec: serde_yaml::Value,
}

/// Reads one `kind: kube_cluster` document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<KubeCluster> {
    let resource: Resource =
        serde_yaml::from_value(value).context("not a Teleport kube_cluster resource")?;
    let name = resource.metadata.name;
    ensure!(
        resource.kind == "kube_cluster",
        "kind {:?} is not kube_cluster",
        resource.kind
    );
    if resource.version != "v3" {
        bail!(
            "kube_cluster {name}: version {:?} is not v3",
            resource.version
        );
    }
    Ok(KubeCluster {
        name,
        labels: resource.metadata.labels,
    })
}

impl KubeCluster {
    /// The cluster as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "kube_cluster",
            "version": "v3",
            "metadata": { "name": self.name, "labels": self.labels },
            "spec": {},
        })
    }

    /// The cluster as `ListResources` returns it: a Kubernetes server (named after the
    /// cluster) holding the cluster.
    pub fn to_server(&self, hostname: &str) -> types::KubernetesServerV3 {
        let metadata = types::Metadata {
            name: self.name.clone(),
            namespace: "default".to_owned(),
            labels: self.labels.clone().into_iter().collect(),
            ..Default::default()
        };
        types::KubernetesServerV3 {
            kind: "kube_server".to_owned(),
            sub_kind: String::new(),
            version: "v3".to_owned(),
            metadata: Some(metadata.clone()),
            spec: Some(types::KubernetesServerSpecV3 {
                version: String::new(),
                hostname: hostname.to_owned(),
                host_id: String::new(),
                cluster: Some(types::KubernetesClusterV3 {
                    kind: "kube_cluster".to_owned(),
                    sub_kind: String::new(),
                    version: "v3".to_owned(),
                    metadata: Some(metadata),
                }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kube_clusters_in_the_tctl_format_and_shows_them_back() {
        let parse = |y: &str| from_value(serde_yaml::from_str(y).unwrap());
        let kube = parse(
            "kind: kube_cluster\nversion: v3\nmetadata: {name: k1, labels: {env: dev}}\nspec: {}\n",
        )
        .unwrap();
        assert_eq!(kube.labels["env"], "dev");
        let back = from_value(serde_yaml::to_value(kube.to_resource()).unwrap()).unwrap();
        assert_eq!(back, kube);
        assert!(parse("kind: kube_cluster\nversion: v2\nmetadata: {name: k}\n").is_err());
    }
}
