//! How to run a dev cluster.

use std::net::SocketAddr;

use keybound_teleport::suite::Suite;

use crate::apps::App;
use crate::databases::Database;
use crate::kube_clusters::KubeCluster;
use crate::locks::Lock;
use crate::misbehave::{Misbehaviour, default_hostile_text};
use crate::nodes::Node;
use crate::roles::{Bot, Role};
use crate::spiffe_federations::SpiffeFederation;
use crate::tokens::Token;
use crate::workload_identities::WorkloadIdentity;

/// How to run a dev cluster.
#[derive(Clone, Debug)]
pub struct DevClusterConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The cluster's name (CA subjects, challenge issuer).
    pub cluster_name: String,
    /// The signature algorithm suite it announces.
    pub suite: Suite,
    /// Serve only the legacy RPC (like clusters before bound keypair reached `JoinService.Join`).
    pub legacy_only: bool,
    /// Send a second, suite-less `ServerInit`, as builds before teleport#60291 did.
    pub duplicate_server_init: bool,
    /// Misbehave on purpose.
    pub misbehave: Option<Misbehaviour>,
    /// The Teleport version it claims (`/webapi/find`, client version check).
    pub server_version: String,
    /// Join tokens.
    pub tokens: Vec<Token>,
    /// Roles (for role impersonation).
    pub roles: Vec<Role>,
    /// Bots: each gets the role `bot-<name>`, which may impersonate the bot's roles.
    pub bots: Vec<Bot>,
    /// Locks in force from the start.
    pub locks: Vec<Lock>,
    /// Applications (`kind: app`), answered by the built-in echo app.
    pub apps: Vec<App>,
    /// Databases (`kind: db`).
    pub databases: Vec<Database>,
    /// Kubernetes clusters (`kind: kube_cluster`), answered by the built-in Kubernetes API.
    pub kube_clusters: Vec<KubeCluster>,
    /// Workload identities (`kind: workload_identity`), for the SVID issuance RPCs.
    pub workload_identities: Vec<WorkloadIdentity>,
    /// SSH nodes (OpenSSH servers the Proxy dials for `TransportService.ProxySSH`).
    pub nodes: Vec<Node>,
    /// SPIFFE federations (`kind: spiffe_federation`), for `ListSPIFFEFederations`.
    pub spiffe_federations: Vec<SpiffeFederation>,
    /// A separate port for Auth's endpoint (as Auth's `:3025`), besides the Proxy's route.
    pub auth_listen: Option<SocketAddr>,
    /// What the `hostile-*` misbehaviours present ([`default_hostile_text`] by default).
    pub hostile_text: String,
    /// How bot instance heartbeats are answered (recorded, by default).
    pub heartbeats: crate::heartbeats::HeartbeatService,
}

impl Default for DevClusterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_name: "dev.keybound.test".to_owned(),
            suite: Suite::BalancedV1,
            legacy_only: false,
            duplicate_server_init: false,
            misbehave: None,
            server_version: "18.2.10".to_owned(),
            tokens: Vec::new(),
            roles: Vec::new(),
            bots: Vec::new(),
            locks: Vec::new(),
            apps: Vec::new(),
            databases: Vec::new(),
            kube_clusters: Vec::new(),
            workload_identities: Vec::new(),
            nodes: Vec::new(),
            spiffe_federations: Vec::new(),
            auth_listen: None,
            hostile_text: default_hostile_text(),
            heartbeats: crate::heartbeats::HeartbeatService::default(),
        }
    }
}
