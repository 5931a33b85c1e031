//! SSH nodes (`kind: node`, Teleport's `ServerV2`) in the resource YAML, and how the Proxy finds
//! the node a client names (`lib/proxy/router.go` `getServerWithResolver`, `api/utils`
//! `SSHRouteMatcher`).
//!
//! The dev cluster's nodes are OpenSSH servers it dials directly at their `spec.addr` (Teleport's
//! agentless nodes, `sub_kind: openssh`): they check the user's certificate against the user CA
//! (`TrustedUserCAKeys`) and present a host certificate from the host CA, and nothing else, so
//! the Proxy applies the role's `node_labels` and `logins` before it dials (`transport.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tonic::Status;

/// A node.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Node {
    /// `metadata.name`: its UUID in Teleport.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.hostname`.
    pub hostname: String,
    /// `spec.addr`: `host:port` the Proxy dials.
    pub addr: String,
}

impl Node {
    /// The node as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "node",
            "sub_kind": "openssh",
            "version": "v2",
            "metadata": { "name": self.name, "labels": self.labels },
            "spec": { "hostname": self.hostname, "addr": self.addr },
        })
    }
}

#[derive(Deserialize)]
struct Resource {
    version: String,
    #[serde(default)]
    sub_kind: Option<String>,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    hostname: String,
    addr: String,
}

/// Reads one `kind: node` (v2) document: the dev cluster dials every node directly, so it needs
/// `spec.addr` (`host:port`) and takes only `sub_kind: openssh` or none.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<Node> {
    let resource: Resource =
        serde_yaml::from_value(value).context("not a Teleport node resource")?;
    let name = resource.metadata.name;
    if resource.version != "v2" {
        bail!("node {name}: version {:?} is not v2", resource.version);
    }
    if let Some(sub_kind) = resource.sub_kind.filter(|s| s != "openssh") {
        bail!(
            "node {name}: sub_kind {sub_kind:?} is not supported; the dev cluster's nodes are \
             OpenSSH servers it dials (sub_kind: openssh)"
        );
    }
    let addr = resource.spec.addr;
    if split_host_port(&addr).is_none() {
        bail!("node {name}: spec.addr {addr:?} is not host:port");
    }
    if resource.spec.hostname.is_empty() {
        bail!("node {name}: spec.hostname is empty");
    }
    Ok(Node {
        name,
        labels: resource.metadata.labels,
        hostname: resource.spec.hostname,
        addr,
    })
}

/// `net.SplitHostPort`: `host:port` or `[v6]:port`.
fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some((host, port))
}

/// `api/utils` `SSHRouteMatcher` scores.
const DIRECT: u8 = 2;
const INDIRECT: u8 = 1;

/// What a client asked to reach (`TargetHost.host_port`, split).
pub(crate) struct Target<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: &'a str,
    /// The addresses `host` resolves to (a weaker match, `SSHRouteMatcher.ips`).
    pub(crate) ips: Vec<IpAddr>,
}

impl Target<'_> {
    /// Whether the target names nodes by ID (`uuid.Parse` succeeds, or an EC2 instance ID).
    fn by_id(&self) -> bool {
        uuid::Uuid::parse_str(self.host).is_ok() || is_ec2_node_id(self.host)
    }

    /// `RouteToServerScore` for a directly dialled node (no public addresses, case-sensitive).
    fn score(&self, node: &Node) -> u8 {
        if self.by_id() && node.name == self.host {
            return DIRECT;
        }
        let Some((ip, port)) = split_host_port(&node.addr) else {
            return 0;
        };
        if !self.port.is_empty() && self.port != "0" && self.port != port {
            return 0;
        }
        if node.hostname == self.host || ip == self.host {
            DIRECT
        } else if ip.parse::<IpAddr>().is_ok_and(|ip| self.ips.contains(&ip)) {
            INDIRECT
        } else {
            0
        }
    }
}

/// `aws.IsEC2NodeID`: `<account>-i-<8 or 17 hex>`.
fn is_ec2_node_id(host: &str) -> bool {
    let Some((account, instance)) = host.split_once("-i-") else {
        return false;
    };
    account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && matches!(instance.len(), 8 | 17)
        && instance.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a node matches `target` directly (by ID, hostname or address). Then the target's DNS
/// addresses cannot change the outcome (indirect matches lose to a direct one), and the lookup
/// Teleport makes anyway (`newSSHRouteMatcher`) can be skipped.
pub(crate) fn any_direct_match(nodes: &[Node], target: &Target<'_>) -> bool {
    nodes.iter().any(|n| target.score(n) == DIRECT)
}

/// `getServerWithResolver` (`lib/proxy/router.go`) under the default routing strategy
/// (`UNAMBIGUOUS_MATCH`): the best-scored node, an exact name winning among ID matches; two
/// equally good ones are ambiguous (NotFound, `teleport.NodeIsAmbiguous`); none is
/// "offline or does not exist" (ConnectionProblem, i.e. `Unavailable`), or for an ID-like
/// target "unable to locate node matching UUID-like target" (NotFound).
pub(crate) fn resolve<'a>(nodes: &'a [Node], target: &Target<'_>) -> Result<&'a Node, Status> {
    let scored: Vec<(&Node, u8)> = nodes
        .iter()
        .map(|n| (n, target.score(n)))
        .filter(|(_, s)| *s > 0)
        .collect();
    let best = scored.iter().map(|(_, s)| *s).max().unwrap_or(0);
    let mut matches: Vec<&Node> = scored
        .iter()
        .filter(|(_, s)| *s == best)
        .map(|(n, _)| *n)
        .collect();
    if target.by_id()
        && matches.len() > 1
        && let Some(exact) = matches.iter().find(|n| n.name == target.host)
    {
        matches = vec![*exact];
    }
    match matches.as_slice() {
        [one] => Ok(one),
        [] if target.by_id() => {
            let kind = if is_ec2_node_id(target.host) {
                "EC2"
            } else {
                "UUID"
            };
            Err(Status::not_found(format!(
                "unable to locate node matching {kind}-like target {}",
                target.host
            )))
        }
        [] => Err(Status::unavailable(format!(
            "target host {} is offline or does not exist",
            target.host
        ))),
        _ => Err(Status::not_found(
            "ambiguous host could match multiple nodes",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, hostname: &str, addr: &str) -> Node {
        Node {
            name: name.into(),
            labels: BTreeMap::new(),
            hostname: hostname.into(),
            addr: addr.into(),
        }
    }

    fn target<'a>(host: &'a str, port: &'a str) -> Target<'a> {
        Target {
            host,
            port,
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    const ID1: &str = "5b4b1a4e-96c3-4b44-9a57-0d0b1e6ff6a1";
    const ID2: &str = "8d7f3c52-1d35-4c6b-a0cc-6f1d3a3a5d10";

    #[test]
    fn resolution_follows_the_proxys_router() {
        let nodes = [
            node(ID1, "node1", "127.0.0.1:2201"),
            node(ID2, "twin", "127.0.0.2:2202"),
            node(
                "c0ffee00-0000-4000-8000-000000000000",
                "twin",
                "127.0.0.3:2203",
            ),
        ];
        let name = |t: &Target<'_>| resolve(&nodes, t).map(|n| n.name.clone());
        // By hostname, by address, by ID; a port that differs does not match.
        assert_eq!(name(&target("node1", "2201")).unwrap(), ID1);
        assert_eq!(name(&target("node1", "0")).unwrap(), ID1);
        assert_eq!(name(&target("127.0.0.2", "")).unwrap(), ID2);
        assert_eq!(name(&target(ID2, "3022")).unwrap(), ID2);
        let offline = name(&target("node1", "3022")).unwrap_err();
        assert_eq!(offline.code(), tonic::Code::Unavailable);
        assert_eq!(
            offline.message(),
            "target host node1 is offline or does not exist"
        );
        // Two nodes named alike: ambiguous.
        let twin = name(&target("twin", "0")).unwrap_err();
        assert_eq!(twin.code(), tonic::Code::NotFound);
        assert_eq!(twin.message(), "ambiguous host could match multiple nodes");
        // A name resolving to a node's address matches it, but less than a direct match.
        assert_eq!(name(&target("localhost", "0")).unwrap(), ID1);
        // An unknown ID.
        let mut by_id = target("11111111-2222-4333-8444-555555555555", "0");
        by_id.ips.clear();
        let unknown = name(&by_id).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert_eq!(
            unknown.message(),
            "unable to locate node matching UUID-like target 11111111-2222-4333-8444-555555555555"
        );
        assert!(is_ec2_node_id("123456789012-i-0123456789abcdef0"));
        assert!(!is_ec2_node_id("node1"));
    }

    #[test]
    fn a_node_resource_reads_and_shows_as_teleports() {
        let yaml = "kind: node\nversion: v2\nsub_kind: openssh\nmetadata:\n  name: n1\n  labels: {env: dev}\nspec:\n  hostname: node1\n  addr: 127.0.0.1:2222\n";
        let n = from_value(serde_yaml::from_str(yaml).unwrap()).unwrap();
        assert_eq!(n.labels["env"], "dev");
        let back = from_value(serde_yaml::to_value(n.to_resource()).unwrap()).unwrap();
        assert_eq!(back, n);
        let bad = yaml.replace("127.0.0.1:2222", "nowhere");
        let err = from_value(serde_yaml::from_str(&bad).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node n1: spec.addr \"nowhere\" is not host:port"
        );
        let tunnel = yaml.replace("sub_kind: openssh", "sub_kind: teleport");
        assert!(from_value(serde_yaml::from_str(&tunnel).unwrap()).is_err());
    }
}
