//! Bot instance heartbeats as the dev cluster records them: once in `--oneshot`, at start-up and
//! then on the interval in daemon mode, with tbot's fields; a cluster without the RPC or with a
//! failing one never fails a run; `keybound dev-cluster heartbeats` lists them.

use std::time::Duration;

use keybound_devcluster::heartbeats::{Heartbeat, HeartbeatService};

use crate::agent_support::{Agent, blocking, config, wait_for};
use crate::cluster::{ca_file, cluster_for};
use crate::oneshot::{env, ok};
use crate::support::keybound;

/// `keybound start identity --oneshot` against `cluster`, by flags.
async fn oneshot(env: &crate::oneshot::Env) -> std::process::Output {
    let mut cmd = keybound();
    cmd.args([
        "start",
        "identity",
        "--oneshot",
        "--join-method",
        "bound_keypair",
    ])
    .args(["--token", "t", "--storage", "memory://", "--proxy-server"])
    .arg(env.cluster.proxy_addr())
    .arg("--ca-path")
    .arg(&env.ca)
    .arg("--static-key-path")
    .arg(&env.key)
    .arg("--destination")
    .arg(env.dir.path().join("out"));
    blocking(move || cmd.output().unwrap()).await
}

/// The fields every heartbeat of keybound carries, whatever the mode.
fn assert_tbots_fields(beat: &Heartbeat) {
    assert_eq!(beat.bot_name, "robot");
    assert_eq!(beat.join_method, "bound_keypair");
    assert_eq!(beat.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(beat.os, "linux");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(beat.architecture, arch);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(beat.hostname, host.trim());
    assert_eq!(beat.kind, 1, "BOT_KIND_TBOT_BINARY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneshot_run_sends_one_startup_heartbeat_for_its_instance() {
    let env = env(|_| {}).await;
    let summary = ok(&oneshot(&env).await);
    let beats = env.cluster.cluster.heartbeats();
    assert_eq!(beats.len(), 1, "{beats:?}");
    let beat = &beats[0];
    assert_tbots_fields(beat);
    assert!(beat.is_startup && beat.one_shot, "{beat:?}");
    assert!(
        summary.contains(&format!("bot instance:  {}", beat.instance_id)),
        "{summary}"
    );
    assert!(beat.uptime < Duration::from_secs(60), "{beat:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_heartbeats_or_with_failing_ones_never_fails_the_run() {
    let quiet = env(|c| c.heartbeats = HeartbeatService::Unimplemented).await;
    let output = oneshot(&quiet).await;
    ok(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("heartbeat"),
        "Unimplemented is silent: {stderr}"
    );
    assert!(quiet.cluster.cluster.heartbeats().is_empty());

    let failing = env(|c| c.heartbeats = HeartbeatService::Fail).await;
    let output = oneshot(&failing).await;
    ok(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "the bot instance heartbeat was not sent: Internal: backend unavailable; renewals go on"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sends_a_startup_heartbeat_then_one_each_interval() {
    let dir = tempfile::tempdir().unwrap();
    let signer =
        keybound_signer_soft::SoftSigner::generate(keybound_signer::Algorithm::Ed25519).unwrap();
    let key = crate::cluster::key_file(dir.path(), &signer);
    use keybound_signer::Signer as _;
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let key_yaml = format!(
        "  bound_keypair:\n    static_private_key_path: {}\n",
        key.display()
    );
    let cfg = config(
        dir.path(),
        &cluster.proxy_addr(),
        &ca,
        &key_yaml,
        "1h",
        "2h",
    );
    let mut agent = blocking({
        let (cfg, dir) = (cfg.clone(), dir.path().to_owned());
        move || Agent::start(&cfg, &dir, &[("KEYBOUND_HEARTBEAT_INTERVAL", "1s")])
    })
    .await;
    let state = cluster.cluster.clone();
    blocking(move || {
        wait_for("three heartbeats", Duration::from_secs(30), || {
            state.heartbeats().len() >= 3
        })
    })
    .await;
    agent.stop();
    let beats = cluster.cluster.heartbeats();
    for beat in &beats {
        assert_tbots_fields(beat);
        assert!(!beat.one_shot, "{beat:?}");
        assert_eq!(beat.instance_id, beats[0].instance_id);
    }
    assert!(beats[0].is_startup, "{beats:?}");
    assert!(beats[1..].iter().all(|b| !b.is_startup), "{beats:?}");
    assert!(beats[2].uptime > beats[0].uptime, "{beats:?}");
}

#[test]
fn the_admin_socket_lists_heartbeats() {
    use crate::cluster_process::ClusterProcess;
    use keybound_signer::Signer as _;
    let dir = tempfile::tempdir().unwrap();
    let signer =
        keybound_signer_soft::SoftSigner::generate(keybound_signer::Algorithm::Ed25519).unwrap();
    let key = crate::cluster::key_file(dir.path(), &signer);
    let resources = dir.path().join("bot.yaml");
    std::fs::write(
        &resources,
        format!(
            "kind: bot\nversion: v1\nmetadata:\n  name: hb\nspec:\n  roles: []\n---\nkind: token\nmetadata:\n  name: hb-token\nspec:\n  bot_name: hb\n  bound_keypair:\n    onboarding:\n      initial_public_key: {}\n    recovery:\n      limit: 0\n      mode: insecure\n  join_method: bound_keypair\n  roles:\n  - Bot\nversion: v2\n",
            signer.public_key().to_openssh()
        ),
    )
    .unwrap();
    let cluster = ClusterProcess::start(
        dir.path(),
        &[
            std::ffi::OsString::from("--resources"),
            resources.into_os_string(),
        ],
    );
    let output = keybound()
        .args(["start", "id", "--oneshot", "--join-method", "bound_keypair"])
        .args(["--proxy-server", &cluster.proxy, "--token", "hb-token"])
        .arg("--ca-path")
        .arg(&cluster.ca)
        .arg("--static-key-path")
        .arg(&key)
        .args(["--storage", "memory://", "--destination", "memory://"])
        .output()
        .unwrap();
    let summary = ok(&output);
    let instance = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("bot instance:"))
        .unwrap()
        .trim()
        .to_owned();
    let listed = ok(&cluster.admin(&["heartbeats"]).output().unwrap());
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].starts_with("Instance"), "{listed}");
    assert!(lines[1].starts_with(&instance), "{listed}");
    assert!(
        lines[1].contains(" hb ") && lines[1].contains(" oneshot "),
        "{listed}"
    );
    let log = std::fs::read_to_string(&cluster.log).unwrap();
    assert!(log.contains("bot instance heartbeat"), "{log}");
    cluster.stop();
}
