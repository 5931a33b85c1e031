//! When keybound stops a join (a rotation request for a static key, a challenge it refuses to
//! sign), the cluster must learn why: keybound sends `GivingUp` and waits for the cluster to end
//! the stream before it exits. Shown with `keybound start --oneshot` and `keybound dev-cluster` as
//! separate processes over TCP, where an exit right after queueing the message loses it.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{key_file, token_yaml};
use crate::cluster_process::ClusterProcess;
use crate::support::keybound;

/// `keybound dev-cluster` as a process serving `resources`, logging JSON to a file.
struct DevClusterProcess(ClusterProcess);

impl DevClusterProcess {
    fn start(dir: &Path, resources: &str, extra: &[&str]) -> Self {
        let resources_path = dir.join("resources.yaml");
        std::fs::write(&resources_path, resources).unwrap();
        let mut args = vec![OsStr::new("--resources"), resources_path.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        Self(ClusterProcess::start(dir, &args))
    }

    /// The `GivingUp`s the dev cluster logged: (token, reason, message). Waits a little for the
    /// first, since the cluster logs as it reads the message (bounded; no speed is asserted).
    fn givings_up(&self) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = std::fs::read_to_string(&self.0.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["fields"]["message"] == "the client gave up on the join")
                .map(|v| {
                    let field = |name: &str| v["fields"][name].as_str().unwrap_or("").to_owned();
                    (field("token"), field("reason"), field("msg"))
                })
                .collect();
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `keybound start --oneshot` with `key` against `cluster`; returns its one `error:` line.
fn oneshot_error(dir: &Path, cluster: &DevClusterProcess, key: &Path) -> String {
    let config = dir.join("tbot.yaml");
    std::fs::write(
        &config,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    static_private_key_path: {}\nstorage:\n  type: memory\n",
            cluster.0.proxy,
            cluster.0.ca.display(),
            key.display()
        ),
    )
    .unwrap();
    let output = keybound()
        .args(["start", "--oneshot", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(77), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_owned()
}

#[test]
fn the_cluster_hears_why_keybound_gave_up() {
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "a rotation request",
            "    rotate_after: 2020-01-01T00:00:00Z\n",
            &[],
        ),
        (
            "a challenge for another key",
            "",
            &["--misbehave", "challenge-other-key"],
        ),
        (
            "arbitrary JSON to sign",
            "",
            &["--misbehave", "sign-arbitrary-json"],
        ),
        (
            "a challenge for another key ID",
            "",
            &["--misbehave", "challenge-wrong-subject"],
        ),
        (
            "a challenge valid for years",
            "",
            &["--misbehave", "challenge-far-future-expiry"],
        ),
        (
            "a challenge without a nonce",
            "",
            &["--misbehave", "challenge-without-nonce"],
        ),
        (
            "a second challenge",
            "",
            &["--misbehave", "challenge-twice"],
        ),
    ];
    for (case, token_extra, flags) in cases {
        let dir = tempfile::tempdir().unwrap();
        let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
        let key = key_file(dir.path(), &signer);
        let cluster = DevClusterProcess::start(
            dir.path(),
            &token_yaml("t", signer.public_key(), "insecure", 1, token_extra),
            flags,
        );
        let error = oneshot_error(dir.path(), &cluster, &key);
        let givings_up = cluster.givings_up();
        assert_eq!(
            givings_up.len(),
            1,
            "{case}: {givings_up:?}; keybound: {error}"
        );
        let (token, reason, message) = &givings_up[0];
        assert_eq!(token, "t", "{case}");
        assert_eq!(reason, "REASON_CHALLENGE_SOLUTION_FAILED", "{case}");
        if case == "a rotation request" {
            // tbot's own words (`StaticClientState.RequestNewKeypair`), which keybound's error
            // quotes too.
            assert_eq!(
                message, "static private keys do not support automatic rotation",
                "{case}"
            );
        }
        assert!(
            !message.is_empty() && error.contains(message.as_str()),
            "{case}: the cluster heard {message:?}; keybound said {error}"
        );
    }
}
