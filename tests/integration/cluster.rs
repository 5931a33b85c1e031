//! Shared setup for tests against an in-process dev cluster.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keybound::config::HostPort;
use keybound::join::{JOIN_TIMEOUT, JoinParams};
use keybound::tls::Trust;
use keybound_devcluster::roles::{Bot, Role};
use keybound_devcluster::tokens::{self, Token};
use keybound_devcluster::{DevCluster, DevClusterConfig, STALLED_ROLE};
use keybound_signer::{Algorithm, Error, PublicKey, Signature, Signer};
use keybound_signer_soft::SoftSigner;

/// A Teleport token YAML for a static key.
pub(crate) fn token_yaml(
    name: &str,
    key: &PublicKey,
    mode: &str,
    limit: u32,
    extra: &str,
) -> String {
    format!(
        "kind: token\nversion: v2\nmetadata:\n  name: {name}\nspec:\n  bot_name: robot\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n      initial_public_key: {}\n    recovery:\n      limit: {limit}\n      mode: {mode}\n{extra}",
        key.to_openssh()
    )
}

pub(crate) fn token(name: &str, key: &PublicKey, mode: &str, limit: u32, extra: &str) -> Token {
    tokens::parse(&token_yaml(name, key, mode, limit, extra), "test")
        .unwrap()
        .remove(0)
}

/// The role the test bot `robot` impersonates: `access`, with SSH logins `root` and `ci`.
pub(crate) fn access_role() -> Role {
    Role {
        name: "access".into(),
        logins: vec!["root".into(), "ci".into()],
        ..Role::default()
    }
}

/// Gives `config` the role `access` and the bot `robot`, which may impersonate it (what `tctl
/// bots add robot --roles=access` makes).
pub(crate) fn with_robot(mut config: DevClusterConfig) -> DevClusterConfig {
    config.roles.push(access_role());
    config.bots.push(Bot {
        name: "robot".into(),
        roles: vec!["access".into()],
    });
    config
}

/// A dev cluster with one insecure-mode token `t` for `key`, and the bot `robot` (role
/// `access`).
pub(crate) async fn cluster_for(
    key: &PublicKey,
    tweak: impl FnOnce(&mut DevClusterConfig),
) -> DevCluster {
    let mut config = with_robot(DevClusterConfig {
        tokens: vec![token("t", key, "insecure", 1, "")],
        ..Default::default()
    });
    tweak(&mut config);
    DevCluster::start(config).await.unwrap()
}

/// Writes `signer`'s private key to `dir/bound.pem`, mode 0600.
pub(crate) fn key_file(dir: &Path, signer: &SoftSigner) -> std::path::PathBuf {
    let path = dir.join("bound.pem");
    keybound::fsutil::write_atomic(
        &path,
        signer.to_pkcs8_pem().as_bytes(),
        0o600,
        keybound::fsutil::Replace::Allow,
    )
    .unwrap();
    path
}

/// Writes `dir/tbot.yaml` for `cluster` (CA bundle `ca`): token `t`, the static key in the file
/// `key` (or, with `None`, the environment), `storage` as YAML lines (`type: memory`, ...) and one
/// identity output to `out`.
pub(crate) fn tbot_yaml(
    dir: &Path,
    cluster: &DevCluster,
    ca: &Path,
    key: Option<&Path>,
    storage: &str,
    out: &Path,
) -> std::path::PathBuf {
    let key = key
        .map(|k| {
            format!(
                "  bound_keypair:\n    static_private_key_path: {}\n",
                k.display()
            )
        })
        .unwrap_or_default();
    let path = dir.join("tbot.yaml");
    std::fs::write(
        &path,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n{key}storage:\n{storage}services:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy_addr(),
            ca.display(),
            out.display()
        ),
    )
    .unwrap();
    path
}

/// Writes `dir/tbot.yaml` for `cluster` (CA bundle `ca`): token `t`, the static key in the file
/// `key`, storage in `dir/storage`, the top-level YAML lines `top` (`renewal_interval: 1s\n`,
/// ...) and one identity output per `(name, roles)` in `dir/<name>`, named `name`, with `roles`
/// as a YAML list (`[access]`).
pub(crate) fn outputs_yaml(
    dir: &Path,
    cluster: &DevCluster,
    ca: &Path,
    key: &Path,
    top: &str,
    outputs: &[(&str, &str)],
) -> std::path::PathBuf {
    let mut yaml = format!(
        "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    static_private_key_path: {}\nstorage:\n  type: directory\n  path: {}\n{top}services:\n",
        cluster.proxy_addr(),
        ca.display(),
        key.display(),
        dir.join("storage").display()
    );
    for (name, roles) in outputs {
        yaml.push_str(&format!(
            "  - type: identity\n    name: {name}\n    roles: {roles}\n    destination:\n      type: directory\n      path: {}\n",
            dir.join(name).display()
        ));
    }
    let path = dir.join("tbot.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Gives `config` the role [`STALLED_ROLE`] and lets the bot `robot` impersonate it: an output
/// for that role stalls under `Misbehaviour::StallUserCerts`.
fn with_stalled_role(config: &mut DevClusterConfig) {
    config.roles.push(Role {
        name: STALLED_ROLE.into(),
        logins: vec!["slow".into()],
        ..Role::default()
    });
    config.bots[0].roles.push(STALLED_ROLE.into());
}

/// For a stalled-output test: a file key, a dev cluster for it whose bot may also impersonate
/// [`STALLED_ROLE`], and `dir/tbot.yaml` (with the top-level lines `top`) holding two outputs:
/// `fine` (role `access`) in `dir/fine` and `slow` (role `stalled`) in `dir/slow`.
pub(crate) async fn with_a_stalling_output(
    dir: &Path,
    top: &str,
) -> (DevCluster, std::path::PathBuf) {
    with_stalling_outputs(dir, top, &[("fine", "[access]"), ("slow", "[stalled]")]).await
}

/// [`with_a_stalling_output`] with the outputs `outputs` (see [`outputs_yaml`]).
pub(crate) async fn with_stalling_outputs(
    dir: &Path,
    top: &str,
    outputs: &[(&str, &str)],
) -> (DevCluster, std::path::PathBuf) {
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir, &signer);
    let cluster = cluster_for(signer.public_key(), with_stalled_role).await;
    let ca = ca_file(&cluster, dir);
    let cfg = outputs_yaml(dir, &cluster, &ca, &key, top, outputs);
    (cluster, cfg)
}

/// Writes the cluster's CA bundle into `dir`.
pub(crate) fn ca_file(cluster: &DevCluster, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, cluster.ca_pem()).unwrap();
    path
}

pub(crate) fn params(
    cluster: &DevCluster,
    ca: &Path,
    token: &str,
    signer: Arc<dyn Signer>,
) -> JoinParams {
    JoinParams {
        direct: false,
        proxy: HostPort::parse(&cluster.proxy_addr(), 443).unwrap(),
        trust: Trust::Bundle(ca.to_owned()),
        token: token.to_owned(),
        cluster: None,
        credential_ttl: std::time::Duration::from_secs(3600),
        signer: Some(signer),
        standard: None,
        timeout: JOIN_TIMEOUT,
    }
}

/// A signer that counts its signatures: proof that keybound signed nothing.
#[derive(Debug)]
pub(crate) struct Counting {
    pub(crate) inner: SoftSigner,
    pub(crate) signatures: AtomicUsize,
}

impl Counting {
    pub(crate) fn new(algorithm: Algorithm) -> Arc<Self> {
        Arc::new(Self {
            inner: SoftSigner::generate(algorithm).unwrap(),
            signatures: AtomicUsize::new(0),
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.signatures.load(Ordering::SeqCst)
    }
}

impl Signer for Counting {
    fn backend(&self) -> &'static str {
        "counting"
    }
    fn public_key(&self) -> &PublicKey {
        self.inner.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        self.signatures.fetch_add(1, Ordering::SeqCst);
        self.inner.sign(message)
    }
}
