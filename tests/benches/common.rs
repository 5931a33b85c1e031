//! What the benchmarks share: a runtime like the agent's, percentiles, and a dev cluster with a
//! bot that may impersonate a role, plus the agent configuration that renews against it.

#![allow(dead_code, reason = "each benchmark uses a part")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keybound::auth::AuthRoute;
use keybound::config::{Config, HostPort};
use keybound::devcluster::roles::{Bot, Role};
use keybound::devcluster::tokens;
use keybound::devcluster::{DevCluster, DevClusterConfig};
use keybound::start::Prepared;
use keybound::tls::Trust;
use keybound_signer::Signer;

/// Two worker threads, as on the 2-core machine the numbers come from.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `p` quantile of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A bound_keypair token named `name` for the bot `name`, insecure recovery.
pub(crate) fn token(name: &str, key: &str) -> tokens::Token {
    let yaml = format!(
        "kind: token\nversion: v2\nmetadata:\n  name: {name}\nspec:\n  bot_name: {name}\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n      initial_public_key: {key}\n    recovery:\n      mode: insecure\n"
    );
    tokens::parse(&yaml, name).expect("token").remove(0)
}

/// A dev cluster with the token and bot `name`, which may impersonate the role `access`.
pub(crate) async fn cluster_with_bot(name: &str, key: &str) -> DevCluster {
    DevCluster::start(DevClusterConfig {
        tokens: vec![token(name, key)],
        roles: vec![Role {
            name: "access".into(),
            logins: vec!["ci".into()],
            ..Role::default()
        }],
        bots: vec![Bot {
            name: name.into(),
            roles: vec!["access".into()],
        }],
        ..Default::default()
    })
    .await
    .expect("cluster")
}

/// What `keybound start` would prepare for the bot `name`: storage and one identity output
/// under `dir`, `lifetime` (credential_ttl and renewal_interval), the cluster's CA trusted.
pub(crate) fn prepared(
    cluster: &DevCluster,
    dir: &Path,
    name: &str,
    lifetime: &str,
    signer: Arc<dyn Signer>,
) -> Prepared {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cluster.ca_pem()).expect("ca");
    let config = Config::parse(
        &format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: {name}\nstorage:\n  type: directory\n  path: {}\ncredential_ttl: {lifetime}\nrenewal_interval: {lifetime}\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy_addr(),
            dir.join("storage").display(),
            dir.join("out").display()
        ),
        name,
    )
    .expect("config");
    let proxy = HostPort::parse(&cluster.proxy_addr(), 443).expect("addr");
    Prepared {
        auth_route: AuthRoute::Proxy(proxy.clone()),
        direct: false,
        proxy,
        trust: Trust::Bundle(ca),
        signer_config: keybound_signer::config::SignerConfig::Env(Default::default()),
        signer,
        config,
    }
}
