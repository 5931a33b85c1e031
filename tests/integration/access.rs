//! The access outputs (`type: application`, `type: database`) against a dev cluster with apps
//! and databases, checked with tools keybound did not write: `curl` against the dev cluster's
//! echo app (which answers only for a certificate routed to it), and `openssl` reading the
//! database route out of the certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use keybound_devcluster::apps::App;
use keybound_devcluster::databases::Database;
use keybound_devcluster::roles::Role;

use crate::oneshot::{Env, env, failed, ok, oneshot, subject, values};
use crate::support::tool;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn app(name: &str, env_label: &str) -> App {
    App {
        name: name.into(),
        labels: labels(&[("env", env_label)]),
        uri: "http://localhost:8080".into(),
        public_addr: format!("{name}.localhost"),
    }
}

/// A cluster with apps `echo` and `other` (env=dev), `secret` (env=prod), the database `pg`
/// (env=dev) and `mongo` (env=prod, found under its discovered name `mdb`); the bot may
/// impersonate `web`, which grants env=dev apps and databases, db names `app` and users
/// `alice`, and `access`, which grants nothing.
async fn access_env() -> Env {
    env(|c| {
        let dev: BTreeMap<String, Vec<String>> = [("env".to_owned(), vec!["dev".to_owned()])]
            .into_iter()
            .collect();
        c.roles.push(Role {
            name: "web".into(),
            app_labels: dev.clone(),
            db_labels: dev,
            db_names: vec!["app".into()],
            db_users: vec!["alice".into()],
            ..Role::default()
        });
        c.bots[0].roles = vec!["web".into()];
        c.apps = vec![
            app("echo", "dev"),
            app("other", "dev"),
            app("secret", "prod"),
        ];
        c.databases = vec![
            Database {
                name: "pg".into(),
                labels: labels(&[("env", "dev")]),
                protocol: "postgres".into(),
                uri: "localhost:5432".into(),
            },
            Database {
                name: "mongo-east".into(),
                labels: labels(&[("env", "dev"), ("teleport.internal/discovered-name", "mdb")]),
                protocol: "mongodb".into(),
                uri: "localhost:27017".into(),
            },
        ];
    })
    .await
}

/// A tbot.yaml for `env` with `services` (YAML list items, indented two spaces).
fn config_with(env: &Env, services: &str) -> PathBuf {
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

/// `curl` to `host` (resolved to the dev cluster) with the client certificate `cert` and key
/// `key`, trusting `cas`: (HTTP status, body), or curl's error when the TLS handshake fails.
fn curl(env: &Env, host: &str, dir: &Path, cert: &str, key: &str, cas: &str) -> (u16, String) {
    let port = env.cluster.addr.port();
    let output = Command::new(tool("curl"))
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(dir.join(cas))
        .arg("--cert")
        .arg(dir.join(cert))
        .arg("--key")
        .arg(dir.join(key))
        .arg(format!("https://{host}:{port}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (code.trim().parse().unwrap_or(0), format!("{body}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_output_reaches_its_app_with_curl_and_only_its_app() {
    let env = access_env().await;
    let services = format!(
        "  - type: application\n    app_name: echo\n    specific_tls_naming: true\n{}  - type: application\n    app_name: other\n{}",
        directory(&env, "echo"),
        directory(&env, "other")
    );
    let cfg = config_with(&env, &services);
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(summary.contains("(application: web)"), "{summary}");

    let echo = env.path("echo");
    for file in [
        "identity",
        "key",
        "key.pub",
        "key-cert.pub",
        "tlscert",
        "tls.crt",
        "tls.key",
        "tls.cas",
        "teleport-host-ca.crt",
        "teleport-user-ca.crt",
        "teleport-database-ca.crt",
    ] {
        assert!(echo.join(file).is_file(), "{file} missing");
    }
    assert!(!echo.join("known_hosts").exists());
    assert!(!env.path("other").join("tls.crt").exists());

    // The app route is in the certificate.
    let attrs = subject(&echo.join("tlscert"));
    assert_eq!(values(&attrs, "1.3.9999.1.10"), ["echo"], "app name");
    assert_eq!(values(&attrs, "1.3.9999.1.6"), ["echo.localhost"]);
    assert_eq!(values(&attrs, "1.3.9999.1.5"), ["dev.keybound.test"]);

    // curl with tlscert/key, and with the tls.* names, gets the echo of the identity.
    for (cert, key, cas) in [
        ("tlscert", "key", "teleport-host-ca.crt"),
        ("tls.crt", "tls.key", "tls.cas"),
    ] {
        let (status, body) = curl(&env, "echo.localhost", &echo, cert, key, cas);
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["user"], "bot-robot");
        assert_eq!(json["roles"], serde_json::json!(["web"]));
        assert_eq!(json["app"]["name"], "echo");
        assert_eq!(json["app"]["public_addr"], "echo.localhost");
        assert_eq!(json["app"]["cluster_name"], "dev.keybound.test");
    }
    // A certificate for app echo is refused by app other, and the other way round.
    let (status, body) = curl(
        &env,
        "other.localhost",
        &echo,
        "tlscert",
        "key",
        "teleport-host-ca.crt",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("routed to app \\\"echo\\\""), "{body}");
    let other = env.path("other");
    let (status, body) = curl(
        &env,
        "other.localhost",
        &other,
        "tlscert",
        "key",
        "teleport-host-ca.crt",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = curl(
        &env,
        "echo.localhost",
        &other,
        "tlscert",
        "key",
        "teleport-host-ca.crt",
    );
    assert_eq!(status, 403);
    // The bot's role-impersonated identity output (no route) is refused too.
    let services = format!("  - type: identity\n{}", directory(&env, "plain"));
    let cfg = config_with(&env, &services);
    ok(&oneshot(&cfg, &[]).await);
    let (status, body) = curl(
        &env,
        "echo.localhost",
        &env.path("plain"),
        "tlscert",
        "key",
        "teleport-host-ca.crt",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not routed to an app"), "{body}");
    // Without a client certificate the TLS handshake fails.
    let port = env.cluster.addr.port();
    let bare = Command::new(tool("curl"))
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("echo.localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(echo.join("teleport-host-ca.crt"))
        .arg(format!("https://echo.localhost:{port}/"))
        .output()
        .unwrap();
    assert!(
        !bare.status.success(),
        "a request without a certificate got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_the_roles_do_not_grant_fails_its_output_alone() {
    let env = access_env().await;
    let services = format!(
        "  - type: application\n    name: hidden\n    app_name: secret\n{}  - type: application\n    name: missing\n    app_name: nowhere\n{}  - type: application\n    app_name: echo\n{}",
        directory(&env, "secret"),
        directory(&env, "nowhere"),
        directory(&env, "echo")
    );
    let cfg = config_with(&env, &services);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains("output hidden: app \"secret\" not found") && stderr.contains("app_labels"),
        "{stderr}"
    );
    assert!(
        stderr.contains("output missing: app \"nowhere\" not found"),
        "{stderr}"
    );
    assert!(
        env.path("echo").join("tlscert").is_file(),
        "the good output was not written"
    );
    assert!(!env.path("secret").join("tlscert").exists());
}

fn openssl(args: &[&str]) -> String {
    let output = Command::new(tool("openssl")).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_output_holds_an_rsa_certificate_routed_to_its_database() {
    let env = access_env().await;
    let services = format!(
        "  - type: database\n    service: pg\n    database: app\n    username: alice\n    format: tls\n{}  - type: database\n    service: mdb\n    username: alice\n    format: mongo\n{}  - type: database\n    service: pg\n{}  - type: database\n    service: pg\n    username: root\n    format: cockroach\n{}",
        directory(&env, "pg"),
        directory(&env, "mongo"),
        directory(&env, "plain"),
        directory(&env, "cockroach")
    );
    let cfg = config_with(&env, &services);
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(summary.contains("(database: web)"), "{summary}");

    let pg = env.path("pg");
    let cert = pg.join("tlscert");
    let cert = cert.to_str().unwrap();
    // openssl reads the route out of the subject, and an RSA-2048 key (the dev cluster's
    // suite is balanced-v1: the database key is RSA anyway).
    let text = openssl(&[
        "x509", "-in", cert, "-noout", "-text", "-nameopt", "oneline",
    ]);
    for route in [
        "1.3.9999.2.1 = pg",
        "1.3.9999.2.2 = postgres",
        "1.3.9999.2.3 = alice",
        "1.3.9999.2.4 = app",
        "1.3.9999.2.5 = app",
        "1.3.9999.2.6 = alice",
    ] {
        assert!(text.contains(route), "{route} not in\n{text}");
    }
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        pg.join("teleport-user-ca.crt").to_str().unwrap(),
        cert,
    ]);
    assert!(verified.trim().ends_with(": OK"), "{verified}");
    // format: tls: the same certificate and key, and the host CAs.
    assert_eq!(
        std::fs::read(pg.join("tls.crt")).unwrap(),
        std::fs::read(pg.join("tlscert")).unwrap()
    );
    let key_modulus = openssl(&[
        "rsa",
        "-in",
        pg.join("tls.key").to_str().unwrap(),
        "-noout",
        "-modulus",
    ]);
    let cert_modulus = openssl(&[
        "x509",
        "-in",
        pg.join("tls.crt").to_str().unwrap(),
        "-noout",
        "-modulus",
    ]);
    assert_eq!(key_modulus, cert_modulus);
    assert_eq!(
        std::fs::read_to_string(pg.join("tls.cas")).unwrap(),
        std::fs::read_to_string(pg.join("teleport-host-ca.crt")).unwrap()
    );

    // format: mongo, found by its discovered name: mongo.crt holds the certificate then the
    // key; mongo.cas the database CA.
    let mongo = env.path("mongo");
    let attrs = subject(&mongo.join("tlscert"));
    assert_eq!(values(&attrs, "1.3.9999.2.1"), ["mongo-east"]);
    assert_eq!(values(&attrs, "1.3.9999.2.2"), ["mongodb"]);
    let both = mongo.join("mongo.crt");
    openssl(&["x509", "-in", both.to_str().unwrap(), "-noout"]);
    let key_modulus = openssl(&["rsa", "-in", both.to_str().unwrap(), "-noout", "-modulus"]);
    let cert_modulus = openssl(&["x509", "-in", both.to_str().unwrap(), "-noout", "-modulus"]);
    assert_eq!(key_modulus, cert_modulus);
    assert_eq!(
        std::fs::read_to_string(mongo.join("mongo.cas")).unwrap(),
        std::fs::read_to_string(mongo.join("teleport-database-ca.crt")).unwrap()
    );
    openssl(&[
        "x509",
        "-in",
        mongo.join("mongo.cas").to_str().unwrap(),
        "-noout",
    ]);
    // format: cockroach: cockroach/node.crt and node.key (the output's certificate and key),
    // ca-client.crt the database CAs, and ca.crt empty, as tbot 18.x writes it.
    let cockroach = env.path("cockroach").join("cockroach");
    let node = cockroach.join("node.crt");
    openssl(&["x509", "-in", node.to_str().unwrap(), "-noout"]);
    let key_modulus = openssl(&[
        "rsa",
        "-in",
        cockroach.join("node.key").to_str().unwrap(),
        "-noout",
        "-modulus",
    ]);
    let cert_modulus = openssl(&["x509", "-in", node.to_str().unwrap(), "-noout", "-modulus"]);
    assert_eq!(key_modulus, cert_modulus);
    openssl(&[
        "x509",
        "-in",
        cockroach.join("ca-client.crt").to_str().unwrap(),
        "-noout",
    ]);
    assert_eq!(
        std::fs::read_to_string(cockroach.join("ca-client.crt")).unwrap(),
        std::fs::read_to_string(env.path("cockroach").join("teleport-database-ca.crt")).unwrap()
    );
    assert_eq!(std::fs::read(cockroach.join("ca.crt")).unwrap(), b"");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(cockroach.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // No format: no extra files.
    assert!(!env.path("plain").join("tls.crt").exists());
    assert!(!env.path("plain").join("mongo.crt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_outputs_refuse_bad_configuration_naming_the_output_and_the_key() {
    let env = access_env().await;
    for (service, expected) in [
        (
            "  - type: application\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].app_name: missing",
        ),
        (
            "  - type: application\n    app_name: echo\n",
            "services[0].destination: missing",
        ),
        (
            "  - type: application\n    app_name: echo\n    roles: ['']\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].roles[0]: empty",
        ),
        (
            "  - type: database\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].service: missing",
        ),
        (
            "  - type: database\n    service: pg\n    format: pem\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].format: unrecognized format (pem)",
        ),
        (
            "  - type: database\n    service: pg\n    destination: {type: directory, path: /tmp/x}\n    tables: [a]\n",
            "unknown field `tables`",
        ),
        (
            "  - type: kubernetes\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].kubernetes_cluster: missing",
        ),
        (
            "  - type: kubernetes/v2\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].selectors: missing; give one or more (at least one selector must be provided)",
        ),
        (
            "  - type: kubernetes/v2\n    selectors: [{name: a, labels: {env: dev}}]\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].selectors[0]: only one of 'name' and 'labels' may be specified",
        ),
        (
            "  - type: kubernetes/v2\n    selectors: [{default_namespace: x}]\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].selectors[0]: one of 'name' and 'labels' must be specified",
        ),
        (
            "  - type: kubernetes/v2\n    selectors: [{name: a}]\n    context_name_template: '{{.Namespace}}'\n    destination: {type: directory, path: /tmp/x}\n",
            "services[0].context_name_template: context_name_template is invalid",
        ),
        (
            "  - type: kubernetes/v2\n    selectors: [{name: a}]\n    roles: [access]\n    destination: {type: directory, path: /tmp/x}\n",
            "unknown field `roles`",
        ),
    ] {
        let cfg = config_with(&env, service);
        let stderr = failed(&oneshot(&cfg, &[]).await, 78);
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// The access outputs with the bound key in SoftHSM, in the long-running agent: each renewal
/// writes them anew (new certificates, still working with curl and kubectl's credentials),
/// whatever signs the join; the output keys are the agent's own, never the token's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_access_outputs_with_the_key_in_softhsm() {
    use crate::agent_support::{Agent, blocking, wait_for};
    use crate::pkcs11::{Hsm, MODULE};
    use std::time::Duration;

    let hsm = Hsm::new("access-token");
    let created = crate::support::run_ok(
        hsm.keybound()
            .args([
                "keypair",
                "create",
                "--static",
                "--algorithm",
                "ecdsa-p256",
                "--format",
                "json",
            ])
            .args(hsm.signer_args("bound")),
    );
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key =
        keybound_signer::PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    let uri = doc["pkcs11_uri"].as_str().unwrap().to_owned();
    let cluster = crate::cluster::cluster_for(&key, |c| {
        c.roles.push(Role {
            name: "web".into(),
            app_labels: [("env".to_owned(), vec!["dev".to_owned()])].into(),
            db_labels: [("env".to_owned(), vec!["dev".to_owned()])].into(),
            ..Role::default()
        });
        c.bots[0].roles = vec!["web".into()];
        c.apps = vec![app("echo", "dev")];
        c.databases = vec![Database {
            name: "pg".into(),
            labels: labels(&[("env", "dev")]),
            protocol: "postgres".into(),
            uri: "localhost:5432".into(),
        }];
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::cluster::ca_file(&cluster, dir.path());
    let (app_dir, db_dir) = (dir.path().join("app"), dir.path().join("db"));
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    signer: pkcs11\n    pkcs11_uri: \"{uri}\"\n    pkcs11_module: {MODULE}\n    pin_source: env:HSM_PIN\nstorage:\n  type: memory\ncredential_ttl: 1m\nrenewal_interval: 1s\nservices:\n  - type: application\n    app_name: echo\n    destination: {{type: directory, path: {}}}\n  - type: database\n    service: pg\n    destination: {{type: directory, path: {}}}\n",
            cluster.proxy_addr(),
            ca.display(),
            app_dir.display(),
            db_dir.display()
        ),
    )
    .unwrap();
    let mut agent = blocking({
        let (cmd, cfg, dir) = (hsm.keybound(), cfg.clone(), dir.path().to_owned());
        move || Agent::start_with(cmd, &cfg, &dir, &[])
    })
    .await;
    let cert = app_dir.join("tlscert");
    let first = blocking(move || {
        wait_for("the application output", Duration::from_secs(30), || {
            cert.is_file()
        });
        std::fs::read_to_string(cert).unwrap()
    })
    .await;
    let cert = app_dir.join("tlscert");
    let renewed = blocking(move || {
        let mut now = String::new();
        wait_for("renewed app certificates", Duration::from_secs(30), || {
            now = std::fs::read_to_string(&cert).unwrap_or_default();
            !now.is_empty() && now != first
        });
        now
    })
    .await;
    assert!(renewed.contains("BEGIN CERTIFICATE"));
    let attrs = subject(&db_dir.join("tlscert"));
    assert_eq!(values(&attrs, "1.3.9999.2.1"), ["pg"]);
    // The renewed certificate reaches the app.
    let port = cluster.addr.port();
    let output = Command::new(tool("curl"))
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("echo.localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(app_dir.join("teleport-host-ca.crt"))
        .arg("--cert")
        .arg(app_dir.join("tlscert"))
        .arg("--key")
        .arg(app_dir.join("key"))
        .arg(format!("https://echo.localhost:{port}/"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(body.contains("\"name\":\"echo\""), "{body}");
    let logs = agent.logs();
    assert!(logs.contains("wrote application output"), "{logs}");
    assert!(logs.contains("wrote database output"), "{logs}");
    assert!(blocking(move || agent.stop()).await.success());
}
