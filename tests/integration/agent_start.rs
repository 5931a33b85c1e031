//! How the agent starts, and what it does once the cluster no longer knows its identity, as the
//! real agent process against dev clusters that are stopped and started afresh: a first join
//! that fails ends the agent with that join's exit code (tbot's `Initialize`); a held identity
//! the cluster does not know (the cluster rebuilt with new CAs, the token made again) gives way
//! to a join with the static key at once, and the agent reports not ready while that fails.

use std::path::Path;
use std::time::Duration;

use keybound_devcluster::DevCluster;
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::agent_support::{
    Agent, blocking, cluster_on, config_with_storage, get, identity_not_ready, wait_for,
};
use crate::cluster::{ca_file, key_file, token};
use crate::support::{assert_output_verifies, free_port, keybound};

/// A static key in a file, a dev cluster with the token `t` for it, and an agent configuration
/// with directory storage renewing only when signalled (interval 1 h).
struct Rig {
    dir: tempfile::TempDir,
    signer: SoftSigner,
    cluster: Option<DevCluster>,
    cfg: std::path::PathBuf,
}

impl Rig {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
        let key = key_file(dir.path(), &signer);
        let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), signer.public_key(), "t").await;
        let ca = ca_file(&cluster, dir.path());
        let cfg = config_with_storage(
            dir.path(),
            &cluster.proxy_addr(),
            &ca,
            &format!(
                "  bound_keypair:\n    static_private_key_path: {}\n",
                key.display()
            ),
            "1h",
            "2h",
            &format!(
                "  type: directory\n  path: {}\n",
                dir.path().join("storage").display()
            ),
        );
        Self {
            dir,
            signer,
            cluster: Some(cluster),
            cfg,
        }
    }

    fn cluster(&self) -> &DevCluster {
        self.cluster.as_ref().expect("a cluster runs")
    }

    /// The cluster stopped and another started on its address: new CAs, no bot instance, the
    /// token `token` for the same key. Its CA bundle replaces the old one where `ca_path`
    /// points, as an operator rebuilding a dev cluster would write it.
    async fn rebuild(&mut self, token: &str) {
        let old = self.cluster.take().expect("a cluster runs");
        let addr = old.addr;
        drop(old);
        let fresh = cluster_on(addr, self.signer.public_key(), token).await;
        ca_file(&fresh, self.dir.path());
        self.cluster = Some(fresh);
    }

    fn agent(&self) -> impl FnOnce() -> Agent + Send + 'static {
        let (cfg, dir) = (self.cfg.clone(), self.dir.path().to_owned());
        move || Agent::start(&cfg, &dir, &[])
    }
}

fn ready(port: u16) -> bool {
    get(port, "/readyz").is_some_and(|(c, _)| c == 200)
}

/// Waits until the cluster `rig` runs now has had a join, then until the agent is ready.
async fn joined_and_ready(rig: &Rig, port: u16) {
    let state = rig.cluster().cluster.clone();
    blocking(move || {
        wait_for(
            "a join at the rebuilt cluster",
            Duration::from_secs(15),
            || state.joins_completed() >= 1,
        );
        wait_for("readiness", Duration::from_secs(10), || ready(port));
    })
    .await;
}

/// `keybound start --oneshot -c cfg`, off the runtime that serves the dev cluster.
async fn oneshot(cfg: &Path) -> std::process::Output {
    let cfg = cfg.to_owned();
    blocking(move || {
        keybound()
            .args(["start", "--oneshot", "-c"])
            .arg(cfg)
            .output()
            .unwrap()
    })
    .await
}

/// No token for the key (the first join is refused), then no cluster at all: each time the
/// agent ends at once with that join's exit code (77, 69), says that the first join failed,
/// and never calls it a renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_join_ends_the_agent_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    let cluster = cluster_on(
        "127.0.0.1:0".parse().unwrap(),
        signer.public_key(),
        "another-token",
    )
    .await;
    let ca = ca_file(&cluster, dir.path());
    let key_yaml = format!(
        "  bound_keypair:\n    static_private_key_path: {}\n",
        key.display()
    );
    for (proxy, code, cause) in [
        (cluster.proxy_addr(), 77, "token expired or not found"),
        (
            format!("127.0.0.1:{}", free_port()),
            69,
            "cannot reach proxy",
        ),
    ] {
        let cfg = config_with_storage(
            dir.path(),
            &proxy,
            &ca,
            &key_yaml,
            "20m",
            "1h",
            "  type: memory\n",
        );
        let dir_path = dir.path().to_owned();
        let (status, logs) = blocking(move || {
            let mut agent = Agent::spawn(keybound(), &cfg, &dir_path, &[]);
            // Bounded: the agent must end on its own, not wait for a retry.
            let status = agent.wait_exit(Duration::from_secs(20));
            (status, agent.logs())
        })
        .await;
        let status = status.unwrap_or_else(|| panic!("the agent did not end:\n{logs}"));
        assert_eq!(status.code(), Some(code), "{logs}");
        assert!(logs.contains("error: the first join failed"), "{logs}");
        assert!(logs.contains(cause), "{logs}");
        assert!(
            !logs.contains("the renewal"),
            "a first join called a renewal:\n{logs}"
        );
        if code == 77 {
            assert!(logs.contains("joining with token \"t\""), "{logs}");
        }
    }
    assert_eq!(cluster.cluster.joins_completed(), 0);
}

/// The cluster is rebuilt under a running agent (new CAs, the same token for the same key):
/// the next renewal's connection to Auth meets CAs the identity does not hold, and the agent
/// joins with the static key at once instead of retrying until the identity expires. Rebuilt
/// again without the token: the static key is refused, and the agent reports not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_cluster_is_joined_with_the_static_key_at_once() {
    let mut rig = Rig::new().await;
    let agent = blocking(rig.agent()).await;
    let port = agent.diag;
    blocking(move || wait_for("readiness", Duration::from_secs(15), || ready(port))).await;
    let stored = std::fs::read(rig.dir.path().join("storage/tlscert")).unwrap();

    let renewals = agent.renewals();
    rig.rebuild("t").await;
    agent.signal("USR1");
    joined_and_ready(&rig, port).await;
    // The whole renewal, outputs included, before the cluster goes again (its connections go
    // with it).
    blocking(move || {
        wait_for("the renewal", Duration::from_secs(15), || {
            crate::agent_support::metric(port, "keybound_renewals_total") > renewals
        })
    })
    .await;
    assert_eq!(rig.cluster().cluster.bot_instances("robot"), 1);
    let logs = agent.logs();
    assert!(
        logs.contains("the cluster no longer knows the bot identity"),
        "{logs}"
    );
    assert_ne!(
        std::fs::read(rig.dir.path().join("storage/tlscert")).unwrap(),
        stored,
        "the storage still holds the forgotten identity"
    );
    assert_output_verifies(&rig.dir.path().join("out"));

    // Rebuilt without the token: the static key's join is refused, and the agent says so.
    rig.rebuild("another-token").await;
    agent.signal("USR1");
    let body = blocking(move || identity_not_ready(port, Duration::from_secs(15))).await;
    assert!(body.contains("token expired or not found"), "{body}");
    assert_eq!(get(port, "/readyz").unwrap().0, 503);
    assert_eq!(get(port, "/healthz").unwrap().0, 200, "refused, not halted");
    assert_eq!(rig.cluster().cluster.joins_completed(), 0);
    drop(agent);
}

/// An identity stored before the cluster was rebuilt: `start --oneshot`, then the agent at its
/// start, each find that the cluster does not know it and join with the static key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_identity_the_cluster_forgot_gives_way_to_the_static_key() {
    let mut rig = Rig::new().await;
    let ok = |output: std::process::Output| {
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{text}");
        text
    };
    ok(oneshot(&rig.cfg).await);

    rig.rebuild("t").await;
    let logs = ok(oneshot(&rig.cfg).await);
    assert!(
        logs.contains("the cluster no longer knows the bot identity"),
        "{logs}"
    );
    assert_eq!(rig.cluster().cluster.joins_completed(), 1);

    rig.rebuild("t").await;
    let agent = blocking(rig.agent()).await;
    joined_and_ready(&rig, agent.diag).await;
    assert!(
        agent
            .logs()
            .contains("loaded the bot identity from storage")
    );
    drop(agent);
}

/// A cluster rebuilt under the same name that passes on another cluster's challenge: the join
/// with the static key that replaces the forgotten identity still takes challenges from the
/// identity's cluster only, so nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_cluster_may_not_pass_on_another_clusters_challenge() {
    use keybound_devcluster::Misbehaviour;

    let mut rig = Rig::new().await;
    assert!(oneshot(&rig.cfg).await.status.success());
    rig.rebuild("t").await;
    rig.cluster()
        .cluster
        .set_misbehaviour(Some(Misbehaviour::ChallengeOtherCluster));
    let output = oneshot(&rig.cfg).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("the cluster no longer knows the bot identity"),
        "{stderr}"
    );
    assert!(
        stderr.contains("but keybound joins cluster \"dev.keybound.test\""),
        "{stderr}"
    );
    assert_eq!(rig.cluster().cluster.solutions_received(), 0);
}

/// The token is made again (its status, which bound the bot's identity, starts empty): the
/// rejoin is refused as a first join with existing credentials, and the agent joins with the
/// static key at once, as the token now expects (a new bot instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_again_is_joined_with_the_static_key_at_once() {
    let rig = Rig::new().await;
    let agent = blocking(rig.agent()).await;
    let port = agent.diag;
    blocking(move || wait_for("readiness", Duration::from_secs(15), || ready(port))).await;
    assert_eq!(rig.cluster().cluster.bot_instances("robot"), 1);

    rig.cluster()
        .cluster
        .put_token(token("t", rig.signer.public_key(), "insecure", 1, ""));
    agent.signal("USR1");
    let state = rig.cluster().cluster.clone();
    blocking(move || {
        wait_for("a new bot instance", Duration::from_secs(15), || {
            state.bot_instances("robot") >= 2
        });
        wait_for("readiness", Duration::from_secs(10), || ready(port));
    })
    .await;
    let logs = agent.logs();
    assert!(logs.contains("the token no longer binds it"), "{logs}");
    drop(agent);
}
