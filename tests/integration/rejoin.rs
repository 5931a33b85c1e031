//! The authenticated renewal that keeps one bot instance: `keybound start --oneshot` run again
//! and again against a dev cluster, rejoining with the identity it stored. Also: an expired
//! identity, an impostor's Auth, a stale certificate generation (the token locks), a cluster
//! with only the legacy RPC, `auth_server`, and a rejoin result lost on the way.

use std::path::Path;
use std::time::Duration;

use keybound_devcluster::DevCluster;
use keybound_devcluster::locks::LockTarget;

use crate::oneshot::{env, failed, ok, oneshot, subject, values};
use crate::support::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_renewals_keep_one_bot_instance_and_use_no_recovery() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    let first = ok(&oneshot(&cfg, &[]).await);
    assert!(first.contains("with the static key"), "{first}");
    let mut last_cert = std::fs::read(env.path("out/tlscert")).unwrap();
    for _ in 0..10 {
        let summary = ok(&oneshot(&cfg, &[]).await);
        assert!(summary.contains("authenticated rejoin"), "{summary}");
        let cert = std::fs::read(env.path("out/tlscert")).unwrap();
        assert_ne!(
            cert, last_cert,
            "each renewal writes new output certificates"
        );
        last_cert = cert;
    }
    let state = &env.cluster.cluster;
    assert_eq!(state.bot_instances("robot"), 1);
    let status = state.token_status_of("t").unwrap();
    assert_eq!(
        status.recovery_count, 1,
        "only the first join used a recovery"
    );
    let instance = status.bound_bot_instance_id.unwrap();
    assert_eq!(state.generation_of(&instance), Some(11));
    // The stored bot certificate is the newest generation.
    let stored = subject(&env.path("storage/tlscert"));
    assert_eq!(values(&stored, "1.3.9999.1.14"), ["11"]);
    assert_eq!(values(&stored, "1.3.9999.2.20"), [instance.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_identity_falls_back_to_a_recovery_join() {
    let env = env(|_| {}).await;
    let cfg = env.config(
        &format!("proxy_server: {}", env.cluster.proxy_addr()),
        "credential_ttl: 1s\nrenewal_interval: 1s\n",
        &[("out", &[])],
    );
    ok(&oneshot(&cfg, &[]).await);
    // Certificates end on a whole second: two seconds is past the end of a one-second TTL.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let output = oneshot(&cfg, &[]).await;
    let summary = ok(&output);
    assert!(summary.contains("with the static key"), "{summary}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("expired before it could be renewed"),
        "{stderr}"
    );
    let state = &env.cluster.cluster;
    assert_eq!(state.bot_instances("robot"), 2);
    assert_eq!(state.token_status_of("t").unwrap().recovery_count, 2);
}

/// Another cluster, trusted for its proxy certificate and holding a token for the same key: the
/// bot's stored identity asks its proxy for the bot's own cluster's Auth (by name, in the ALPN
/// value), which it does not have, so the connection ends there: nothing is signed for it and
/// the outputs stay. (A cluster of the same name whose Auth has other CAs cannot be told from
/// the bot's cluster rebuilt: keybound joins it with the static key, `agent_start.rs`; only
/// that cluster may then challenge the key.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_proxy_gets_nothing_signed_for_a_stored_identity() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    ok(&oneshot(&cfg, &[]).await);
    let before = std::fs::read(env.path("out/tlscert")).unwrap();

    let impostor = DevCluster::start(crate::cluster::with_robot(
        keybound_devcluster::DevClusterConfig {
            cluster_name: "impostor.keybound.test".into(),
            tokens: vec![crate::cluster::token("t", &env.public, "insecure", 1, "")],
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let bundle = env.path("both.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", env.cluster.ca_pem(), impostor.ca_pem()),
    )
    .unwrap();
    let output = oneshot(
        &cfg,
        &[
            "--proxy-server",
            &impostor.proxy_addr(),
            "--ca-path",
            bundle.to_str().unwrap(),
        ],
    )
    .await;
    let stderr = failed(&output, 69);
    assert!(
        stderr.contains("error: cannot reach Auth through proxy"),
        "{stderr}"
    );
    assert_eq!(
        impostor.cluster.solutions_received(),
        0,
        "nothing was signed for it"
    );
    assert_eq!(impostor.cluster.user_certs_issued(), 0);
    assert_eq!(std::fs::read(env.path("out/tlscert")).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoining_with_an_older_certificate_locks_the_bot_user() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    ok(&oneshot(&cfg, &[]).await);
    // A copy of the generation-1 identity, as a thief (or a restored backup) would hold.
    let copy = env.path("storage-copy");
    copy_dir(&env.path("storage"), &copy);
    ok(&oneshot(&cfg, &[]).await);
    std::fs::remove_dir_all(env.path("storage")).unwrap();
    copy_dir(&copy, &env.path("storage"));

    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains("cert generation mismatch for bot robot/"),
        "{stderr}"
    );
    assert!(stderr.contains("stored=2, presented=1"), "{stderr}");
    assert!(
        stderr.contains("renewable cert generation mismatch"),
        "{stderr}"
    );
    // Teleport 18 locks the bot's user (lib/auth/bot.go), not the token.
    assert_eq!(env.cluster.cluster.lock_on("t"), None);
    let lock = env
        .cluster
        .cluster
        .lock_on_target(LockTarget::User("bot-robot".into()))
        .expect("the bot user is locked");
    assert!(
        lock.starts_with(
            "The bot user \"bot-robot\" has been locked due to a certificate generation mismatch"
        ),
        "{lock}"
    );
    // From now on every join of the bot is refused, authenticated or not.
    let stderr = failed(&oneshot(&cfg, &["--storage", "memory://"]).await, 77);
    assert!(
        stderr.contains("lock targeting User:\"bot-robot\" is in force"),
        "{stderr}"
    );
    assert!(
        stderr.contains("certificate generation mismatch"),
        "{stderr}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_only_the_legacy_rpc_rejoins_with_it_over_auth() {
    let env = env(|c| c.legacy_only = true).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    ok(&oneshot(&cfg, &[]).await);
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(
        summary.contains(
            "RegisterUsingBoundKeypairMethod (legacy) (suite balanced-v1, authenticated rejoin"
        ),
        "{summary}"
    );
    assert_eq!(env.cluster.cluster.bot_instances("robot"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_server_joins_and_rejoins_straight_to_auth() {
    let auth_port = free_port();
    let env = env(move |c| c.auth_listen = Some(([127, 0, 0, 1], auth_port).into())).await;
    let cfg = env.config(
        &format!("auth_server: 127.0.0.1:{auth_port}"),
        "",
        &[("out", &[])],
    );
    let first = ok(&oneshot(&cfg, &[]).await);
    assert!(first.contains("with the static key"), "{first}");
    let second = ok(&oneshot(&cfg, &[]).await);
    assert!(second.contains("authenticated rejoin"), "{second}");
    assert_eq!(env.cluster.cluster.bot_instances("robot"), 1);
    // Auth names no proxy here: known_hosts names the cluster only, and no ssh_config.
    let known = std::fs::read_to_string(env.path("out/known_hosts")).unwrap();
    assert!(
        known.starts_with("@cert-authority dev.keybound.test,*.dev.keybound.test "),
        "{known}"
    );
    assert!(!env.path("out/ssh_config").exists());
    assert!(env.path("out/tlscert").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_result_lost_on_the_way_leads_to_a_fresh_join_not_a_lock() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    ok(&oneshot(&cfg, &[]).await);
    // The cluster issues the next generation, then the result never arrives.
    let state = &env.cluster.cluster;
    state.set_misbehaviour(Some(keybound_devcluster::Misbehaviour::DropResult));
    let output = oneshot(&cfg, &[]).await;
    let stderr = failed(&output, 69);
    assert!(
        stderr.contains("after the challenge was answered"),
        "{stderr}"
    );
    state.set_misbehaviour(None);
    // The stored identity is now a generation behind: keybound must not rejoin with it.
    let output = oneshot(&cfg, &[]).await;
    let summary = ok(&output);
    assert!(summary.contains("with the static key"), "{summary}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("a rejoin was interrupted"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(state.lock_on("t"), None, "no lock");
    assert_eq!(state.bot_instances("robot"), 2);
    // And the next run is an authenticated rejoin again.
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(summary.contains("authenticated rejoin"), "{summary}");
}
