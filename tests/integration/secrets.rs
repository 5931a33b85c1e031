//! No secret in anything keybound prints: every command that reads a key, run with `--debug` and
//! `RUST_LOG=trace`, on success and on each kind of failure, with its whole stdout and stderr
//! searched for pieces of the key.

use std::process::{Command, Output};

use keybound_devcluster::Misbehaviour;
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{ca_file, cluster_for, key_file, tbot_yaml};
use crate::support::{assert_no_secret, keybound};

/// The key's secrets: the env value, and the base64 body of its PEM file.
fn secrets(signer: &SoftSigner) -> [(String, &'static str); 2] {
    let pem = signer.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    [
        (signer.to_env_value().to_string(), "the env value"),
        (body, "the PEM body"),
    ]
}

/// `keybound --debug ARGS` with `RUST_LOG=trace` and `env`.
fn verbose(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = keybound();
    cmd.env("RUST_LOG", "trace").arg("--debug").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_prints_the_key_on_success_or_failure() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let secrets = secrets(&signer);
    let value = signer.to_env_value().to_string();
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let cfg = tbot_yaml(
        dir.path(),
        &cluster,
        &ca,
        None,
        "  type: memory\n",
        &dir.path().join("out"),
    );
    let cfg = cfg.to_str().unwrap();
    let env = [("TBOT_BOUND_KEYPAIR_STATIC_KEY", value.as_str())];
    // One character of the value replaced: mostly still the key, and not base64.
    let mut corrupt = value.clone();
    corrupt.replace_range(40..41, "%");
    let corrupt_env = [("TBOT_BOUND_KEYPAIR_STATIC_KEY", corrupt.as_str())];
    let key = key_file(dir.path(), &signer);
    let key = key.to_str().unwrap();

    let mut runs = vec![
        ("keypair show", verbose(&["keypair", "show"], &env), true),
        (
            "a join",
            verbose(&["start", "--oneshot", "-c", cfg], &env),
            true,
        ),
        (
            "keypair show, value not base64",
            verbose(&["keypair", "show"], &corrupt_env),
            false,
        ),
        (
            "a join, value not base64",
            verbose(&["start", "--oneshot", "-c", cfg], &corrupt_env),
            false,
        ),
        (
            "a file key",
            verbose(&["keypair", "show", "--static-key-path", key], &[]),
            true,
        ),
    ];
    for (what, cmd, ok) in runs.drain(..) {
        let out = output(cmd).await;
        let text = printed(&out);
        assert_eq!(out.status.success(), ok, "{what}: {text}");
        assert!(!text.contains("panicked"), "{what}: {text}");
        for (secret, name) in &secrets {
            assert_no_secret(&text, secret, &format!("{what}: {name}"));
        }
    }

    // A file key group can read: refused, the key not quoted.
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = output(verbose(&["keypair", "show", "--static-key-path", key], &[])).await;
    let text = printed(&out);
    assert!(text.contains("permissions 0640 are too open"), "{text}");
    for (secret, name) in &secrets {
        assert_no_secret(&text, secret, name);
    }

    // A hostile cluster: the refusal quotes the cluster's challenge, never the key.
    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::SignArbitraryJson));
    let out = output(verbose(&["start", "--oneshot", "-c", cfg], &env)).await;
    let text = printed(&out);
    assert!(text.contains("refused to sign"), "{text}");
    for (secret, name) in &secrets {
        assert_no_secret(&text, secret, name);
    }
}
