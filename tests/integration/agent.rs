//! The long-running agent as a process: renewals, the diagnostics endpoints, signals, an outage
//! and recovery, refusals, and no secret in its environment or its logs. Device secrets (PINs,
//! TPM authorization values) are in `agent_pins.rs`; what could stall renewals, in
//! `agent_stalls.rs`.

use std::process::Command;
use std::time::Duration;

use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::agent_support::{
    Agent, blocking, cluster_on, config, file_key_agent, get, identity_not_ready, metric,
    serve_again, wait_for,
};
use crate::cluster::ca_file;
use crate::support::assert_no_secret;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_reports_and_obeys_signals_without_leaking_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), signer.public_key(), "t").await;
    let ca = ca_file(&cluster, dir.path());
    // An env key: the most exposed place a key can be, and the one to check logs against.
    let value = signer.to_env_value();
    let cfg = config(dir.path(), &cluster.proxy_addr(), &ca, "", "1h", "2h");
    let dir_path = dir.path().to_owned();
    let value2 = value.to_string();
    let mut agent = blocking(move || {
        Agent::start(
            &cfg,
            &dir_path,
            &[
                ("TBOT_BOUND_KEYPAIR_STATIC_KEY", &value2),
                ("KEYBOUND_TEST_MARKER", "present"),
            ],
        )
    })
    .await;
    let port = agent.diag;
    // The key left the environment before any thread started: /proc shows the variable's bytes
    // zeroed (another variable is still there, so the file was read right), and core dumps are
    // off for good.
    let pid = ready_with_a_clean_environ(&agent, &[&value]).await;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );

    let (_, ready) = get(port, "/readyz").unwrap();
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["status"], "healthy");
    assert_eq!(
        ready["services"]["identity"]["status"], "healthy",
        "{ready}"
    );
    assert_eq!(agent.renewals(), 1.0);

    // SIGHUP and SIGUSR1 renew now, though the interval is an hour.
    for (signal, expected) in [("HUP", 2.0), ("USR1", 3.0)] {
        agent.signal(signal);
        let a = &agent;
        wait_for(
            &format!("a renewal after SIG{signal}"),
            Duration::from_secs(10),
            || a.renewals() >= expected,
        );
    }
    let (_, metrics) = get(port, "/metrics").unwrap();
    for line in [
        // The first with the static key, then authenticated rejoins; each labelled so.
        r#"keybound_joins_total{outcome="success",reason="join"} 1"#,
        r#"keybound_joins_total{outcome="success",reason="rejoin"} 2"#,
        r#"keybound_sign_duration_seconds_count{backend="env"} 3"#,
        "keybound_certificate_expiry_timestamp_seconds ",
        "keybound_healthy 1",
        "# TYPE keybound_last_error_timestamp_seconds gauge",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
    assert!(dir.path().join("out/identity").is_file());
    assert_eq!(cluster.cluster.joins_completed(), 3);

    // SIGTERM: a clean stop, at once rather than at the next renewal an hour away (`stop` waits
    // at most 10 s: a bound that tells the two apart, not a speed claim).
    let status = blocking(move || agent.stop()).await;
    assert!(status.success(), "{status:?}");

    // No secret in anything the agent printed at debug level.
    let logs = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(logs.contains("renewed"), "{logs}");
    let pem = signer.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_no_secret(&logs, &value, "the env value");
    assert_no_secret(&logs, &body, "the private key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_cluster_outage_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = file_key_agent(dir.path(), "30s").await;
    let addr = cluster.addr;
    let dir_path = dir.path().to_owned();
    let agent = blocking(move || Agent::start(&cfg, &dir_path, &[])).await;
    let port = agent.diag;
    blocking(move || {
        wait_for("two renewals", Duration::from_secs(15), || {
            metric(port, "keybound_renewals_total") >= 2.0
        })
    })
    .await;

    // The cluster goes away for longer than a renewal interval.
    let state = cluster.cluster.clone();
    drop(cluster);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = std::fs::read(dir.path().join("out/identity")).unwrap();
    let renewed = metric(port, "keybound_renewals_total");
    let failed = blocking(move || {
        wait_for("failed renewals", Duration::from_secs(10), || {
            metric(port, r#"keybound_joins_total{outcome="transient""#) >= 2.0
        });
        metric(port, r#"keybound_joins_total{outcome="transient""#)
    })
    .await;
    assert!(failed >= 2.0);
    // What failed is the label's reason: the cluster could not be reached.
    assert!(
        metric(
            port,
            r#"keybound_joins_total{outcome="transient",reason="unreachable"}"#
        ) >= 2.0
    );
    // Nothing was deleted or half-written; once the failures outnumber tbot's retries of one
    // renewal, the identity reports itself unhealthy, with the cause (the agent is not halted).
    assert_eq!(
        std::fs::read(dir.path().join("out/identity")).unwrap(),
        before
    );
    let reason = blocking(move || identity_not_ready(port, Duration::from_secs(20))).await;
    assert!(reason.contains("cannot reach"), "{reason}");
    assert!(
        metric(port, r#"keybound_joins_total{outcome="transient""#)
            >= f64::from(keybound::agent::RENEWAL_RETRY_LIMIT)
    );
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    assert!(
        get(port, "/metrics")
            .unwrap()
            .1
            .contains("keybound_last_error_timestamp_seconds ")
    );

    // Back on the same address, as it was (its CAs, and the bot instance it knows).
    let cluster = serve_again(state, addr).await;
    blocking(move || {
        wait_for(
            "a renewal after the outage",
            Duration::from_secs(20),
            || metric(port, "keybound_renewals_total") > renewed,
        )
    })
    .await;
    // The output follows on its own clock (each output is retried after its failures with its
    // own back-off), so it may land just after the bot identity's renewal.
    let out = dir.path().join("out/identity");
    blocking(move || {
        wait_for(
            "the output written again after the outage",
            Duration::from_secs(20),
            || std::fs::read(&out).unwrap() != before,
        )
    })
    .await;
    assert_eq!(get(port, "/readyz").unwrap().0, 200, "ready again");
    // The rejoins after the outage were authenticated: still one bot instance.
    assert_eq!(cluster.cluster.bot_instances("robot"), 1);
    drop(agent);
}

/// A renewal the cluster answers with something keybound refuses to do (a challenge for
/// another key): retried at a slow cadence, not once a second like renewals; not ready, with
/// the cause, at once (retrying soon would not change it); healthy (nothing halted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_renewal_is_retried_slowly_and_not_ready() {
    use keybound_devcluster::Misbehaviour;

    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = file_key_agent(dir.path(), "30s").await;
    let dir_path = dir.path().to_owned();
    let agent = blocking(move || Agent::start(&cfg, &dir_path, &[])).await;
    let port = agent.diag;
    blocking(move || {
        wait_for("a renewal", Duration::from_secs(15), || {
            metric(port, "keybound_renewals_total") >= 1.0
        })
    })
    .await;
    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::ChallengeOtherKey));
    let refused = r#"keybound_joins_total{outcome="rejected""#;
    blocking(move || {
        wait_for("a refusal", Duration::from_secs(10), || {
            metric(port, refused) >= 1.0
        })
    })
    .await;
    let (code, body) = get(port, "/readyz/identity").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the token is bound to another key"), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Slow cadence: not once a second like renewals, at least a minute apart.
    assert_eq!(metric(port, refused), 1.0);
    assert_eq!(
        get(port, "/healthz").unwrap().0,
        200,
        "a refusal is the cluster's answer, not a broken agent"
    );
}

/// Waits until `agent` is ready, then checks its `/proc/<pid>/environ`: it still holds
/// `KEYBOUND_TEST_MARKER=present` (so it was read right), and neither the static key's name nor
/// any piece of `values`. Returns the pid.
async fn ready_with_a_clean_environ(agent: &Agent, values: &[&str]) -> u32 {
    let port = agent.diag;
    blocking(move || {
        wait_for("readiness", Duration::from_secs(10), || {
            get(port, "/readyz").is_some_and(|(c, _)| c == 200)
        })
    })
    .await;
    let pid = agent.child.as_ref().unwrap().id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("KEYBOUND_TEST_MARKER=present"),
        "{environ}"
    );
    assert!(
        !environ.contains("TBOT_BOUND_KEYPAIR_STATIC_KEY"),
        "{environ}"
    );
    for value in values {
        assert_no_secret(&environ, value, "an env value");
    }
    pid
}

/// An environment that names the static key twice (an `execve` may pass any list; Rust's
/// `Command` and env(1) cannot make one, so `tests/tools/exec_with_env.py` does): the agent
/// joins with the first value, says the name was repeated, and `/proc/<pid>/environ` holds no
/// piece of either value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_key_named_twice_in_the_environment_is_scrubbed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let first = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let second = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), first.public_key(), "t").await;
    let ca = ca_file(&cluster, dir.path());
    let cfg = config(dir.path(), &cluster.proxy_addr(), &ca, "", "1h", "2h");
    let (one, two) = (
        first.to_env_value().to_string(),
        second.to_env_value().to_string(),
    );
    let mut cmd = Command::new(crate::support::tool("python3"));
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/exec_with_env.py"
    ))
    .arg(format!("TBOT_BOUND_KEYPAIR_STATIC_KEY={one}"))
    .arg("KEYBOUND_TEST_MARKER=present")
    .arg(format!("TBOT_BOUND_KEYPAIR_STATIC_KEY={two}"))
    .args(["--", env!("CARGO_BIN_EXE_keybound")]);
    let dir_path = dir.path().to_owned();
    let agent = blocking(move || Agent::start_with(cmd, &cfg, &dir_path, &[])).await;
    ready_with_a_clean_environ(&agent, &[&one, &two]).await;
    assert!(
        agent
            .logs()
            .contains("is set more than once in the environment"),
        "{}",
        agent.logs()
    );
    // It joined with the first value: the cluster knows only that key.
    assert_eq!(cluster.cluster.joins_completed(), 1);
}
