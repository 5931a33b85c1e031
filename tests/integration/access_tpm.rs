//! An access output in the long-running agent with the bound key in a TPM (swtpm): the
//! application output is written anew on its own interval while each renewal of the bot
//! identity is signed in the TPM, and the renewed certificate still reaches the app (`curl`). With
//! the SoftHSM test in `access.rs`, every signer is shown with the access outputs.

use std::time::Duration;

use keybound_devcluster::apps::App;
use keybound_devcluster::roles::Role;
use keybound_signer::PublicKey;
use keybound_signer_tpm::testing::Swtpm;

use crate::agent_support::{Agent, blocking, wait_for};
use crate::support::{keybound, run_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_an_application_output_with_the_key_in_a_tpm() {
    let tpm = Swtpm::start();
    let created = run_ok(keybound().args([
        "keypair",
        "create",
        "--static",
        "--format",
        "json",
        "--signer",
        "tpm",
        "--tpm-tcti",
        &tpm.tcti(),
        "--tpm-key-handle",
        "0x81000110",
    ]));
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    let cluster = crate::cluster::cluster_for(&key, |c| {
        c.roles.push(Role {
            name: "web".into(),
            app_labels: [("env".to_owned(), vec!["dev".to_owned()])].into(),
            ..Role::default()
        });
        c.bots[0].roles = vec!["web".into()];
        c.apps = vec![App {
            name: "echo".into(),
            labels: [("env".to_owned(), "dev".to_owned())].into(),
            uri: "http://localhost:8080".into(),
            public_addr: "echo.localhost".into(),
        }];
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::cluster::ca_file(&cluster, dir.path());
    let app_dir = dir.path().join("app");
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    signer: tpm\n    tpm_tcti: \"{}\"\n    tpm_key_handle: 0x81000110\n    require_hardware_key: true\nstorage:\n  type: memory\ncredential_ttl: 1m\nrenewal_interval: 2s\nservices:\n  - type: application\n    app_name: echo\n    credential_ttl: 1m\n    renewal_interval: 1s\n    destination: {{type: directory, path: {}}}\n",
            cluster.proxy_addr(),
            ca.display(),
            tpm.tcti(),
            app_dir.display()
        ),
    )
    .unwrap();
    let mut agent = blocking({
        let (cfg, dir) = (cfg.clone(), dir.path().to_owned());
        move || Agent::start(&cfg, &dir, &[])
    })
    .await;
    let cert = app_dir.join("tlscert");
    let diag = agent.diag;
    blocking(move || {
        wait_for("the application output", Duration::from_secs(60), || {
            cert.is_file()
        });
        let first = std::fs::read_to_string(&cert).unwrap();
        wait_for("renewed app certificates", Duration::from_secs(60), || {
            let now = std::fs::read_to_string(&cert).unwrap_or_default();
            !now.is_empty() && now != first
        });
        // The bot identity is renewed too, each time signed in the TPM.
        wait_for(
            "a renewal of the bot identity",
            Duration::from_secs(60),
            || crate::agent_support::metric(diag, "keybound_renewals_total") >= 2.0,
        );
    })
    .await;
    let body = crate::access::curl_echo(cluster.addr.port(), &app_dir);
    assert!(body.contains("\"name\":\"echo\""), "{body}");
    let logs = agent.logs();
    assert!(logs.contains("wrote application output"), "{logs}");
    // Every join and renewal signed in the TPM: the first join and at least one renewal.
    let signed = crate::agent_support::metric(
        agent.diag,
        "keybound_sign_duration_seconds_count{backend=\"tpm\"}",
    );
    assert!(signed >= 2.0, "{signed} signatures in the TPM");
    assert!(blocking(move || agent.stop()).await.success());
}
