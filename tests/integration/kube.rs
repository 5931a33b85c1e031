//! The Kubernetes outputs (`type: kubernetes`, `type: kubernetes/v2`) and `keybound kube
//! credentials`, used by a real `kubectl` (Debian's kubernetes-client) against the dev
//! cluster's Kubernetes API: `version`, `get namespaces`, `get pods`, with the exec plugin and
//! with the certificate inline; two clusters selected by label give two working contexts; a
//! cluster the roles do not grant is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use keybound_devcluster::kube_clusters::KubeCluster;
use keybound_devcluster::roles::Role;

use crate::oneshot::{Env, env, failed, ok, oneshot, subject, values};
use crate::support::{keybound, tool};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A cluster with Kubernetes clusters k1, k2 (env=dev) and k3 (env=prod); the bot may
/// impersonate `kube`, which grants env=dev clusters as group `viewers`.
async fn kube_env() -> Env {
    env(|c| {
        c.roles.push(Role {
            name: "kube".into(),
            kubernetes_labels: [("env".to_owned(), vec!["dev".to_owned()])].into(),
            kubernetes_groups: vec!["viewers".into()],
            kubernetes_users: vec!["bot-view".into()],
            ..Role::default()
        });
        c.bots[0].roles = vec!["kube".into()];
        c.kube_clusters = vec![
            KubeCluster {
                name: "k1".into(),
                labels: labels(&[("env", "dev")]),
            },
            KubeCluster {
                name: "k2".into(),
                labels: labels(&[("env", "dev")]),
            },
            KubeCluster {
                name: "k3".into(),
                labels: labels(&[("env", "prod")]),
            },
        ];
    })
    .await
}

fn config_with(env: &Env, services: &str) -> std::path::PathBuf {
    let cfg = env.proxy_config(&[]);
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str(services);
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

fn directory(env: &Env, name: &str) -> String {
    format!(
        "    destination:\n      type: directory\n      path: {}\n",
        env.path(name).display()
    )
}

/// `kubectl --kubeconfig KUBECONFIG args...`, off the runtime serving the dev cluster.
async fn kubectl(env: &Env, kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(tool("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(env.path("kube-cache"))
        .arg("--request-timeout=20s")
        .args(args)
        .env_remove("KUBECONFIG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn kubectl_ok(env: &Env, kubeconfig: &Path, args: &[&str]) -> String {
    let output = kubectl(env, kubeconfig, args).await;
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_uses_a_kubernetes_output_with_the_exec_plugin_and_inline() {
    let env = kube_env().await;
    let services = format!(
        "  - type: kubernetes\n    kubernetes_cluster: k1\n{}  - type: kubernetes\n    kubernetes_cluster: k1\n    disable_exec_plugin: true\n{}",
        directory(&env, "exec"),
        directory(&env, "inline")
    );
    let cfg = config_with(&env, &services);
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(summary.contains("(kubernetes: kube)"), "{summary}");
    let attrs = subject(&env.path("exec").join("tlscert"));
    assert_eq!(values(&attrs, "1.3.9999.1.3"), ["k1"], "kube cluster route");
    assert_eq!(values(&attrs, "1.3.9999.1.2"), ["viewers"], "kube groups");

    for dir in ["exec", "inline"] {
        let kubeconfig = env.path(dir).join("kubeconfig.yaml");
        let yaml = std::fs::read_to_string(&kubeconfig).unwrap();
        assert!(
            yaml.contains("current-context: dev.keybound.test-k1"),
            "{yaml}"
        );
        assert!(
            yaml.contains("tls-server-name: kube-teleport-proxy-alpn.teleport.cluster.local"),
            "{yaml}"
        );
        assert_eq!(yaml.contains("exec:"), dir == "exec", "{yaml}");
        let version = kubectl_ok(&env, &kubeconfig, &["version", "-o", "json"]).await;
        let version: serde_json::Value = serde_json::from_str(&version).unwrap();
        assert_eq!(
            version["serverVersion"]["gitVersion"], "v1.31.0+keybound-dev",
            "{version}"
        );
        let pods = kubectl_ok(&env, &kubeconfig, &["get", "pods"]).await;
        assert!(
            pods.contains("echo-k1") && pods.contains("Running"),
            "{pods}"
        );
        let namespaces = kubectl_ok(&env, &kubeconfig, &["get", "namespaces", "-o", "name"]).await;
        assert_eq!(namespaces, "namespace/default\nnamespace/kube-system\n");
        let who = kubectl_ok(
            &env,
            &kubeconfig,
            &[
                "get",
                "pods",
                "-o",
                "jsonpath={.items[0].metadata.annotations}",
            ],
        )
        .await;
        assert!(
            who.contains("bot-robot") && who.contains("viewers"),
            "{who}"
        );
    }

    // keybound kube credentials: the ExecCredential kubectl ran, expiring a minute early.
    let output = keybound()
        .args(["kube", "credentials", "--destination-dir"])
        .arg(env.path("exec"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let credential: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(credential["kind"], "ExecCredential");
    assert_eq!(
        credential["apiVersion"],
        "client.authentication.k8s.io/v1beta1"
    );
    let status = &credential["status"];
    assert_eq!(
        status["clientCertificateData"].as_str().unwrap(),
        std::fs::read_to_string(env.path("exec").join("tlscert")).unwrap()
    );
    assert!(
        status["clientKeyData"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    let expires =
        humantime::parse_rfc3339(status["expirationTimestamp"].as_str().unwrap()).unwrap();
    let not_after = keybound_not_after(&env.path("exec").join("tlscert"));
    let early = not_after.duration_since(expires).unwrap();
    assert!(
        early >= std::time::Duration::from_secs(59) && early <= std::time::Duration::from_secs(61),
        "{early:?}"
    );
    let missing = keybound()
        .args(["kube", "credentials", "--destination-dir"])
        .arg(env.path("nowhere"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("--destination-dir must be a Kubernetes output's directory"),
        "{stderr}"
    );
}

fn keybound_not_after(pem: &Path) -> std::time::SystemTime {
    use x509_cert::der::Decode as _;
    let (_, der) = pem_rfc7468::decode_vec(&std::fs::read(pem).unwrap()).unwrap();
    x509_cert::Certificate::from_der(&der)
        .unwrap()
        .tbs_certificate
        .validity
        .not_after
        .to_system_time()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_v2_output_gives_a_context_per_cluster_and_refuses_the_rest() {
    let env = kube_env().await;
    let services = format!(
        "  - type: kubernetes/v2\n    selectors:\n      - labels: {{env: dev}}\n      - name: k2\n        default_namespace: kube-system\n{}",
        directory(&env, "v2")
    );
    let cfg = config_with(&env, &services);
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(summary.contains("(kubernetes/v2: kube)"), "{summary}");
    let dir = env.path("v2");
    assert!(dir.join("teleport-host-ca.crt").is_file());
    assert!(!dir.join("teleport-user-ca.crt").exists());
    // No route in the certificate: the path routes.
    assert!(values(&subject(&dir.join("tlscert")), "1.3.9999.1.3").is_empty());
    let kubeconfig = dir.join("kubeconfig.yaml");
    let contexts = kubectl_ok(&env, &kubeconfig, &["config", "get-contexts", "-o", "name"]).await;
    assert_eq!(contexts, "dev.keybound.test-k1\ndev.keybound.test-k2\n");
    for (kube, namespace) in [("k1", "default"), ("k2", "kube-system")] {
        let context = format!("dev.keybound.test-{kube}");
        let pods = kubectl_ok(
            &env,
            &kubeconfig,
            &["--context", &context, "get", "pods", "-o", "name"],
        )
        .await;
        assert_eq!(pods, format!("pod/echo-{kube}\n"));
        let ns = kubectl_ok(
            &env,
            &kubeconfig,
            &[
                "--context",
                &context,
                "get",
                "pods",
                "-o",
                "jsonpath={.items[0].metadata.namespace}",
            ],
        )
        .await;
        assert_eq!(ns, namespace);
    }

    // k3 (env=prod) is not granted: the same kubeconfig pointed at it is refused with a 403.
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let yaml = std::fs::read_to_string(&kubeconfig).unwrap();
    let to_k3 = env.path("k3.yaml");
    std::fs::write(
        &to_k3,
        yaml.replace(&format!("/{}", b64("k1")), &format!("/{}", b64("k3"))),
    )
    .unwrap();
    let refused = kubectl(
        &env,
        &to_k3,
        &["--context", "dev.keybound.test-k1", "get", "pods"],
    )
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Forbidden") && stderr.contains("k3"),
        "{stderr}"
    );

    // A selector naming a cluster the roles do not grant fails the output, naming it.
    let services = format!(
        "  - type: kubernetes/v2\n    name: prod\n    selectors:\n      - name: k3\n{}",
        directory(&env, "prod")
    );
    let cfg = config_with(&env, &services);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains("output prod: unable to fetch cluster \"k3\" by name"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_routed_to_one_kube_cluster_is_refused_by_another() {
    let env = kube_env().await;
    let services = format!(
        "  - type: kubernetes\n    kubernetes_cluster: k1\n    disable_exec_plugin: true\n{}",
        directory(&env, "k1")
    );
    ok(&oneshot(&config_with(&env, &services), &[]).await);
    // The k1 certificate on the v2 path of k2.
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let yaml = std::fs::read_to_string(env.path("k1").join("kubeconfig.yaml")).unwrap();
    let port = env.cluster.addr.port();
    let server = format!("https://localhost:{port}");
    let moved = yaml.replace(
        &format!("server: {server}"),
        &format!(
            "server: {server}/v1/teleport/{}/{}",
            b64("dev.keybound.test"),
            b64("k2")
        ),
    );
    let path = env.path("moved.yaml");
    std::fs::write(&path, moved).unwrap();
    let refused = kubectl(&env, &path, &["get", "pods"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("existing route in identity may not be overwritten"),
        "{stderr}"
    );
    // An unknown cluster is refused at issuance.
    let services = format!(
        "  - type: kubernetes\n    kubernetes_cluster: nowhere\n{}",
        directory(&env, "nowhere")
    );
    let stderr = failed(&oneshot(&config_with(&env, &services), &[]).await, 77);
    assert!(
        stderr.contains("kubernetes cluster \"nowhere\" not found"),
        "{stderr}"
    );
}
