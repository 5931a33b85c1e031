//! tbot's health endpoints on the running agent, read with curl as a Kubernetes probe or an
//! operator would: `/livez`, `/readyz` with an entry per service (the identity renewal and each
//! output, named as tbot names them), `/readyz/{service}`, and keybound's `/metrics` beside them.

use std::process::Command;
use std::time::Duration;

use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::agent_support::{Agent, blocking, wait_for};
use crate::cluster::{ca_file, cluster_for, key_file};
use crate::support::tool;

/// `curl` on the agent's diagnostics listener: the status code and the body.
fn curl(port: u16, path: &str) -> (u16, String) {
    let output = Command::new(tool("curl"))
        .args(["--silent", "--show-error", "--globoff", "--output", "-"])
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Three outputs: `fine` (named), one without a name (tbot calls it
/// `identity-output (directory: <path>)`), and `refused`, whose role the bot may not
/// impersonate. The identity and the first two are healthy, `refused` is not, so the agent is
/// not ready; each service answers on its own path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tbots_health_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let plain = dir.path().join("plain");
    let output = |name: &str, roles: &str, path: &std::path::Path| {
        format!(
            "  - type: identity\n{name}    roles: {roles}\n    destination:\n      type: directory\n      path: {}\n",
            path.display()
        )
    };
    let yaml = format!(
        "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    static_private_key_path: {}\nstorage:\n  type: memory\ncredential_ttl: 2h\nrenewal_interval: 1h\nservices:\n{}{}{}",
        cluster.proxy_addr(),
        ca.display(),
        key.display(),
        output("    name: fine\n", "[access]", &dir.path().join("fine")),
        output("", "[access]", &plain),
        output(
            "    name: refused\n",
            "[editor]",
            &dir.path().join("refused")
        ),
    );
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let dir_path = dir.path().to_owned();
    let agent = blocking(move || Agent::start(&cfg, &dir_path, &[])).await;
    let port = agent.diag;
    let plain_name = format!("identity-output (directory: {})", plain.display());
    let (code, body) = blocking(move || {
        let mut last = (0, String::new());
        wait_for(
            "every service's first report",
            Duration::from_secs(15),
            || {
                last = curl(port, "/readyz");
                !last.1.contains("initializing")
            },
        );
        last
    })
    .await;

    // The whole: tbot's words and shape, one entry per service.
    assert_eq!(code, 503, "{body}");
    let overall = json(&body);
    assert_eq!(overall["status"], "unhealthy", "{body}");
    let services = overall["services"].as_object().unwrap();
    let mut names: Vec<_> = services.keys().cloned().collect();
    names.sort();
    let mut expected = vec![
        "fine".to_owned(),
        "identity".to_owned(),
        plain_name.clone(),
        "refused".to_owned(),
    ];
    expected.sort();
    assert_eq!(names, expected, "{body}");
    for healthy in ["identity", "fine", plain_name.as_str()] {
        let entry = services[healthy].as_object().unwrap();
        assert_eq!(entry["status"], "healthy", "{healthy}: {body}");
        assert!(!entry.contains_key("reason"), "{healthy}: {body}");
        let at = entry["updated_at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.contains('T'), "{at}");
    }
    let refused = &services["refused"];
    assert_eq!(refused["status"], "unhealthy", "{body}");
    assert!(
        refused["reason"].as_str().unwrap().contains("editor"),
        "{body}"
    );
    assert!(
        body.starts_with("{\n  \"status\""),
        "tbot's indented JSON: {body}"
    );

    // Each service on its own path (the unnamed output's name percent-encoded).
    let encoded = plain_name
        .replace('%', "%25")
        .replace(' ', "%20")
        .replace('/', "%2F");
    let (code, body) = blocking(move || curl(port, &format!("/readyz/{encoded}"))).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "healthy");
    let (code, body) = blocking(move || curl(port, "/readyz/identity")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = blocking(move || curl(port, "/readyz/refused")).await;
    assert_eq!(code, 503, "{body}");
    assert!(json(&body)["reason"].as_str().unwrap().contains("editor"));
    // A service keybound does not run (tbot's heartbeat): tbot's 404.
    let (code, body) = blocking(move || curl(port, "/readyz/heartbeat")).await;
    assert_eq!(code, 404);
    assert_eq!(
        json(&body)["error"],
        "Service named \"heartbeat\" not found."
    );

    // Liveness, whatever the services say; keybound's own endpoints beside tbot's.
    assert_eq!(
        blocking(move || curl(port, "/livez")).await,
        (200, "OK".to_owned())
    );
    assert_eq!(blocking(move || curl(port, "/healthz")).await.0, 200);
    let (_, metrics) = blocking(move || curl(port, "/metrics")).await;
    assert!(
        metrics.contains(r#"keybound_sign_duration_seconds_count{backend="file"} 1"#),
        "{metrics}"
    );
    drop(agent);
}
