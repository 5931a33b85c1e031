//! Each output's own `credential_ttl` and `renewal_interval` (tbot's per-service
//! `CredentialLifetime`): the long-running agent writes each output at its own rate, a renewal
//! of the bot identity leaves the outputs that are not due alone, SIGUSR1 writes them all; an
//! output's lifetime is its certificate's (read by `openssl x509 -checkend`); and the checks of
//! the two keys, each error one line naming the output and the key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::agent_support::{Agent, blocking, wait_for};
use crate::oneshot::{Env, env, failed, ok, oneshot};
use crate::support::tool;

/// A tbot.yaml for `env` with the top-level lines `top` and the identity outputs `outputs`,
/// each `(directory name, extra YAML lines indented four spaces)`.
fn config(env: &Env, top: &str, outputs: &[(&str, &str)]) -> PathBuf {
    let mut services = String::new();
    for (name, extra) in outputs {
        services.push_str(&format!(
            "  - type: identity\n    name: {name}\n{extra}    destination:\n      type: directory\n      path: {}\n",
            env.path(name).display()
        ));
    }
    let cfg = env.config(
        &format!("proxy_server: {}", env.cluster.proxy_addr()),
        top,
        &[],
    );
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str(&services);
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether `openssl x509 -checkend SECONDS` says the certificate is still valid then.
fn valid_in(cert: &Path, seconds: u64) -> bool {
    let output = Command::new(tool("openssl"))
        .args(["x509", "-noout", "-checkend", &seconds.to_string(), "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("Certificate will"), "{said}");
    output.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_output_is_written_on_its_own_interval() {
    let env = env(|_| {}).await;
    let cfg = config(
        &env,
        "credential_ttl: 1m\nrenewal_interval: 2s\n",
        &[
            ("fast", "    credential_ttl: 1m\n    renewal_interval: 1s\n"),
            ("slow", "    credential_ttl: 2h\n    renewal_interval: 1h\n"),
        ],
    );
    let mut agent = blocking({
        let (cfg, dir) = (cfg.clone(), env.dir.path().to_owned());
        move || Agent::start(&cfg, &dir, &[])
    })
    .await;
    let (fast, slow) = (
        env.path("fast").join("tlscert"),
        env.path("slow").join("tlscert"),
    );
    let first_slow = blocking({
        let (fast, slow) = (fast.clone(), slow.clone());
        move || {
            wait_for("both outputs", Duration::from_secs(30), || {
                fast.is_file() && slow.is_file()
            });
            read(&slow)
        }
    })
    .await;
    // The fast output is written anew several times, and the bot identity renewed meanwhile...
    blocking({
        let fast = fast.clone();
        let diag = agent.diag;
        move || {
            let mut seen = vec![read(&fast)];
            wait_for(
                "three new fast certificates",
                Duration::from_secs(60),
                || {
                    let now = read(&fast);
                    if !now.is_empty() && !seen.contains(&now) {
                        seen.push(now);
                    }
                    seen.len() >= 4
                },
            );
            wait_for(
                "two renewals of the bot identity",
                Duration::from_secs(60),
                || crate::agent_support::metric(diag, "keybound_renewals_total") >= 3.0,
            );
        }
    })
    .await;
    // ...while the slow one, due in an hour, is as first written.
    assert_eq!(read(&slow), first_slow, "the slow output was written again");
    // A reload (SIGUSR1) writes every output at once, as tbot's does.
    agent.signal("USR1");
    blocking(move || {
        wait_for(
            "the slow output after SIGUSR1",
            Duration::from_secs(30),
            || {
                let now = read(&slow);
                !now.is_empty() && now != first_slow
            },
        )
    })
    .await;
    let logs = agent.logs();
    assert!(logs.contains("wrote identity output"), "{logs}");
    // The slow output's certificates end with the bot identity's (1m): a warning says so.
    assert!(
        logs.contains("services[1].renewal_interval 1h is longer than the bot's credential_ttl 1m"),
        "{logs}"
    );
    assert!(blocking(move || agent.stop()).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outputs_own_credential_ttl_is_its_certificates_lifetime() {
    let env = env(|_| {}).await;
    let cfg = config(
        &env,
        "",
        &[
            (
                "short",
                "    credential_ttl: 10m\n    renewal_interval: 5m\n",
            ),
            ("bots", ""),
        ],
    );
    ok(&oneshot(&cfg, &[]).await);
    let short = env.path("short").join("tlscert");
    assert!(valid_in(&short, 9 * 60), "a 10m certificate ends within 9m");
    assert!(!valid_in(&short, 11 * 60), "a 10m certificate outlives 11m");
    // The other output keeps the bot's lifetime (1h, tbot's default).
    let bots = env.path("bots").join("tlscert");
    assert!(valid_in(&bots, 50 * 60));
    assert!(!valid_in(&bots, 70 * 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_output_lifetimes_are_checked_with_one_line_errors() {
    let env = env(|_| {}).await;
    for (extra, expected) in [
        (
            "    credential_ttl: 10m\n",
            "services[0].renewal_interval: missing; credential_ttl and renewal_interval must both be specified if either is",
        ),
        (
            "    renewal_interval: 10m\n",
            "services[0].credential_ttl: missing; credential_ttl and renewal_interval must both be specified if either is",
        ),
        (
            "    credential_ttl: 25h\n    renewal_interval: 1h\n",
            "services[0].credential_ttl: 1day 1h is over 24h, the most Teleport issues; set 24h or less",
        ),
        (
            "    credential_ttl: 0s\n    renewal_interval: 1h\n",
            "duration \"0s\" must be positive",
        ),
    ] {
        let cfg = config(&env, "", &[("out", extra)]);
        let stderr = failed(&oneshot(&cfg, &[]).await, 78);
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }

    // A lifetime shorter than its interval: fine for one run, refused for the agent.
    let cfg = config(
        &env,
        "",
        &[("out", "    credential_ttl: 1m\n    renewal_interval: 5m\n")],
    );
    ok(&oneshot(&cfg, &[]).await);
    let mut agent = blocking({
        let (cfg, dir) = (cfg.clone(), env.dir.path().to_owned());
        move || Agent::spawn(crate::support::keybound(), &cfg, &dir, &[])
    })
    .await;
    let status = blocking({
        let mut agent_exit = move || agent.wait_exit(Duration::from_secs(30));
        move || agent_exit()
    })
    .await;
    assert_eq!(status.and_then(|s| s.code()), Some(78));
    let logs = read(&env.dir.path().join("agent.log"));
    let expected = "services[0].credential_ttl: 1m is shorter than its renewal_interval 5m, so \
                    the output's certificates would expire between renewals; make credential_ttl \
                    longer or renewal_interval shorter";
    assert!(logs.contains(expected), "{logs}");
}
