//! The long-running agent as a process: renewals, the diagnostics endpoints, signals, an outage
//! and recovery, rejections, a halt on a wrong PIN, and no secret in its logs.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keybound_devcluster::{DevCluster, DevClusterConfig};
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{ca_file, token, with_robot};
use crate::support::{assert_no_secret, free_port, keybound};

/// A GET on the diagnostics listener: (status code, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// The value of a metric line that starts with `prefix`.
fn metric(port: u16, prefix: &str) -> f64 {
    get(port, "/metrics")
        .and_then(|(_, body)| {
            body.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// A running `keybound start` (long-running); killed on drop, its output kept.
struct Agent {
    child: Option<Child>,
    diag: u16,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(cfg: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(keybound(), cfg, dir, env)
    }

    /// As [`Agent::start`], with `cmd` as the program: `keybound`, or a tool that runs it.
    fn start_with(mut cmd: Command, cfg: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let diag = free_port();
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        cmd.args(["--debug", "start", "-c"])
            .arg(cfg)
            .args(["--diag-addr", &format!("127.0.0.1:{diag}")])
            .env("RUST_LOG", "debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let agent = Self {
            child: Some(child),
            diag,
            log,
        };
        wait_for("the diagnostics listener", Duration::from_secs(10), || {
            get(diag, "/healthz").is_some()
        });
        agent
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args(["-s", name, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn renewals(&self) -> f64 {
        metric(self.diag, "keybound_renewals_total")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the agent's exit status, once it has exited (within 10 s).
    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let started = Instant::now();
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the agent did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config(
    dir: &Path,
    proxy: &str,
    ca: &Path,
    key_yaml: &str,
    interval: &str,
    ttl: &str,
) -> std::path::PathBuf {
    let path = dir.join("tbot.yaml");
    std::fs::write(
        &path,
        format!(
            "version: v2\nproxy_server: {proxy}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n{key_yaml}storage:\n  type: memory\ncredential_ttl: {ttl}\nrenewal_interval: {interval}\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            ca.display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    path
}

/// A P-256 key in a file, a dev cluster for it, and an agent configuration in `dir` renewing
/// every second certificates that last `ttl`.
async fn file_key_agent(dir: &Path, ttl: &str) -> (DevCluster, std::path::PathBuf) {
    let signer = SoftSigner::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let key_path = crate::cluster::key_file(dir, &signer);
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), signer.public_key(), "t").await;
    let ca = ca_file(&cluster, dir);
    let key_yaml = format!(
        "  bound_keypair:\n    static_private_key_path: {}\n",
        key_path.display()
    );
    let cfg = config(dir, &cluster.proxy_addr(), &ca, &key_yaml, "1s", ttl);
    (cluster, cfg)
}

async fn cluster_on(
    addr: SocketAddr,
    key: &keybound_signer::PublicKey,
    token_name: &str,
) -> DevCluster {
    // The port may take a moment to be free again after a previous cluster on it stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let config = with_robot(DevClusterConfig {
            listen: addr,
            tokens: vec![token(token_name, key, "insecure", 1, "")],
            ..Default::default()
        });
        match DevCluster::start(config).await {
            Ok(cluster) => return cluster,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

/// Serves a stopped cluster's state again on `addr` (once the port is free).
async fn serve_again(
    state: std::sync::Arc<keybound_devcluster::Cluster>,
    addr: SocketAddr,
) -> DevCluster {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match DevCluster::serve(state.clone(), addr, None).await {
            Ok(cluster) => return cluster,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

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
    assert_eq!(ready["status"], "ready");
    assert!(
        ready["expires_in_seconds"].as_u64().unwrap() > 7000,
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
        r#"keybound_joins_total{outcome="success",reason=""} 3"#,
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
    // Still ready on the identity it has, and nothing was deleted or half-written.
    assert_eq!(get(port, "/readyz").unwrap().0, 200);
    assert_eq!(
        std::fs::read(dir.path().join("out/identity")).unwrap(),
        before
    );
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
    assert_ne!(
        std::fs::read(dir.path().join("out/identity")).unwrap(),
        before
    );
    // The rejoins after the outage were authenticated: still one bot instance.
    assert_eq!(cluster.cluster.bot_instances("robot"), 1);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_retried_slowly_and_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = cluster_on(
        "127.0.0.1:0".parse().unwrap(),
        signer.public_key(),
        "another-token",
    )
    .await;
    let ca = ca_file(&cluster, dir.path());
    let value = signer.to_env_value().to_string();
    let cfg = config(dir.path(), &cluster.proxy_addr(), &ca, "", "1s", "30s");
    let dir_path = dir.path().to_owned();
    let agent = blocking(move || {
        Agent::start(
            &cfg,
            &dir_path,
            &[("TBOT_BOUND_KEYPAIR_STATIC_KEY", &value)],
        )
    })
    .await;
    let port = agent.diag;
    blocking(move || {
        wait_for("a rejection", Duration::from_secs(10), || {
            metric(
                port,
                r#"keybound_joins_total{outcome="rejected",reason="PermissionDenied"}"#,
            ) >= 1.0
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Slow cadence: not once a second like renewals, at most once a minute.
    assert_eq!(
        metric(
            port,
            r#"keybound_joins_total{outcome="rejected",reason="PermissionDenied"}"#
        ),
        1.0
    );
    assert_eq!(get(port, "/readyz").unwrap().0, 503);
    assert_eq!(
        get(port, "/healthz").unwrap().0,
        200,
        "a rejection is the cluster's answer, not a broken agent"
    );
    assert!(agent.logs().contains("token expired or not found"));
}

/// A key in SoftHSM: the agent renews with it and never prints the PIN, even at debug level;
/// given a wrong PIN it says so once and never tries again (real tokens lock after a few).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pkcs11_agent_never_logs_the_pin_and_never_retries_a_wrong_one() {
    const RIGHT: &str = "Right-PIN-5150";
    const WRONG: &str = "Wrong-PIN-0000";
    let dir = tempfile::tempdir().unwrap();
    let module = "/usr/lib/softhsm/libsofthsm2.so";
    let (conf, key) = softhsm_key(dir.path(), "agent-token", RIGHT);
    let hsm = |pin: &str| {
        let mut cmd = keybound();
        cmd.env("SOFTHSM2_CONF", &conf).env("HSM_PIN", pin);
        cmd
    };
    let signer = [
        "--signer",
        "pkcs11",
        "--pkcs11-module",
        module,
        "--pkcs11-uri",
        "pkcs11:token=agent-token;object=k",
        "--pin-source",
        "env:HSM_PIN",
    ];

    // A full run: two renewals, a stop, and not a trace of the PIN in the debug logs.
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), &key, "t").await;
    let ca = ca_file(&cluster, dir.path());
    let key_yaml = format!(
        "  bound_keypair:\n    signer: pkcs11\n    pkcs11_module: {module}\n    pkcs11_uri: \"pkcs11:token=agent-token;object=k\"\n    pin_source: env:HSM_PIN\n"
    );
    let cfg = config(
        dir.path(),
        &cluster.proxy_addr(),
        &ca,
        &key_yaml,
        "1s",
        "30s",
    );
    let (dir_path, conf_value) = (dir.path().to_owned(), conf.display().to_string());
    let mut agent = blocking(move || {
        Agent::start(
            &cfg,
            &dir_path,
            &[("SOFTHSM2_CONF", &conf_value), ("HSM_PIN", RIGHT)],
        )
    })
    .await;
    let agent = blocking(move || {
        let a = &agent;
        wait_for("two renewals", Duration::from_secs(15), || {
            a.renewals() >= 2.0
        });
        let status = agent.stop();
        assert!(status.success(), "{status:?}");
        agent
    })
    .await;
    let logs = agent.logs();
    assert!(logs.contains("renewed"), "{logs}");
    assert!(logs.contains("pkcs11"), "{logs}");
    assert!(!logs.contains(RIGHT), "the PIN leaked:\n{logs}");

    // The agent opens the key before its loop: a wrong PIN ends it there, with EX_CONFIG.
    let output = hsm(WRONG)
        .args([
            "start",
            "--proxy-server",
            "127.0.0.1:9",
            "--join-method",
            "bound_keypair",
            "--token",
            "t",
            "--storage",
            "memory://",
        ])
        .args(signer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.matches("refused the PIN").count(), 1, "{stderr}");
    assert!(!stderr.contains(WRONG) && !stderr.contains(RIGHT));
}

/// A TPM key with an authorization value, and an agent given the wrong one: the TPM says so at
/// the first signature, and the agent stops signing (each failure counts towards the TPM's
/// dictionary-attack lockout), reports unhealthy, and stays up.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tpm_auth_value_halts_signing_and_marks_the_agent_unhealthy() {
    use keybound_signer::PinSource;
    use keybound_signer::config::TpmKey;
    use keybound_signer_tpm::testing::Swtpm;
    use zeroize::Zeroizing;

    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let mut tpm_config = tpm.config(TpmKey::Handle(0x8100_0100));
    tpm_config.auth = Some(PinSource::Value(Zeroizing::new("right-auth-value".into())));
    let key = keybound_signer_tpm::generate(&tpm_config, Algorithm::EcdsaP256Sha256, false)
        .unwrap()
        .signer
        .public_key()
        .clone();
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), &key, "t").await;
    let ca = ca_file(&cluster, dir.path());
    let key_yaml = format!(
        "  bound_keypair:\n    signer: tpm\n    tpm_tcti: \"{}\"\n    tpm_key_handle: 0x81000100\n    pin_source: env:TPM_AUTH\n",
        tpm.tcti()
    );
    let cfg = config(
        dir.path(),
        &cluster.proxy_addr(),
        &ca,
        &key_yaml,
        "1s",
        "30s",
    );
    let dir_path = dir.path().to_owned();
    let agent =
        blocking(move || Agent::start(&cfg, &dir_path, &[("TPM_AUTH", "wrong-auth-value")])).await;
    let port = agent.diag;
    blocking(move || {
        wait_for("the halt", Duration::from_secs(10), || {
            get(port, "/healthz").is_some_and(|(c, _)| c == 503)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        metric(port, r#"keybound_joins_total{outcome="halted""#),
        1.0,
        "one attempt, no retries"
    );
    assert_eq!(metric(port, "keybound_healthy"), 0.0);
    let (_, health) = get(port, "/healthz").unwrap();
    assert!(
        health.contains("refused the authorization value"),
        "{health}"
    );
    assert!(!agent.logs().contains("wrong-auth-value"));
    assert_eq!(cluster.cluster.joins_completed(), 0);
}

/// A SoftHSM store under `dir` with the token `label` (user PIN `pin`) and an Ed25519 key `k`
/// made by `keybound keypair create`: the store's config file and the key.
fn softhsm_key(
    dir: &Path,
    label: &str,
    pin: &str,
) -> (std::path::PathBuf, keybound_signer::PublicKey) {
    let init = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/softhsm-fixtures/init-token.sh"
    ))
    .arg(dir.join("hsm"))
    .args([label, pin, "12345678"])
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(init.success());
    let conf = dir.join("hsm/softhsm2.conf");
    let created = keybound()
        .env("SOFTHSM2_CONF", &conf)
        .env("HSM_PIN", pin)
        .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
        .args(["--format", "json", "--signer", "pkcs11"])
        .args(["--pkcs11-module", "/usr/lib/softhsm/libsofthsm2.so"])
        .args(["--pkcs11-uri", &format!("pkcs11:token={label};object=k")])
        .args(["--pin-source", "env:HSM_PIN"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key =
        keybound_signer::PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    (conf, key)
}

/// Writes a PIN file as an operator would fix it: mode 0600, the value alone.
fn write_pin_file(path: &Path, value: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, value).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A dev cluster for `key`, and an agent config in `dir` with these `bound_keypair` lines and a
/// renewal an hour away: only signals make it sign again.
async fn signal_driven(
    dir: &Path,
    key: &keybound_signer::PublicKey,
    bound_keypair: &str,
) -> (DevCluster, std::path::PathBuf) {
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), key, "t").await;
    let ca = ca_file(&cluster, dir);
    let key_yaml = format!("  bound_keypair:\n{bound_keypair}");
    let cfg = config(dir, &cluster.proxy_addr(), &ca, &key_yaml, "1h", "2h");
    (cluster, cfg)
}

/// How many cycles halted so far.
fn halts(port: u16) -> f64 {
    metric(port, r#"keybound_joins_total{outcome="halted""#)
}

/// Waits until the agent halted `n` times or renewed `renewals` times, whichever comes first:
/// what a SIGHUP led to, whatever the code does with it.
fn wait_for_cycle(agent: &Agent, n: f64, renewals: f64) {
    wait_for("the cycle after SIGHUP", Duration::from_secs(15), || {
        halts(agent.diag) >= n || agent.renewals() >= renewals
    });
}

/// `/healthz`'s body.
fn health(port: u16) -> String {
    get(port, "/healthz").map(|(_, b)| b).unwrap_or_default()
}

/// A halted agent's `/healthz` body, once it contains `text`.
fn wait_for_health(port: u16, text: &str) -> String {
    let mut body = String::new();
    wait_for(
        &format!("/healthz to say {text:?}"),
        Duration::from_secs(15),
        || {
            body = get(port, "/healthz").map(|(_, b)| b).unwrap_or_default();
            body.contains(text)
        },
    );
    body
}

/// `TPM2_PT_LOCKOUT_COUNTER` of the TPM at `tcti`, read with tpm2-tools.
#[cfg(feature = "tpm")]
fn lockout_counter(tcti: &str) -> String {
    let output = Command::new(crate::support::tool("tpm2_getcap"))
        .arg("properties-variable")
        .env("TPM2TOOLS_TCTI", tcti)
        .env("TSS2_LOG", "all+NONE")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// An agent whose TPM authorization value (from a file) is wrong: the TPM refuses it once
/// (lockout counter 1) and the agent halts. The operator rewrites the file with the same wrong
/// value and sends SIGHUP: the agent reads it, knows the TPM refused it, and does not send it
/// (the counter stays at 1, where before this fix it climbed 1 → 2 → 3 into lockout). The right
/// value and another SIGHUP: it signs and renews.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_tpm_auth_file_and_never_resends_a_refused_value() {
    use keybound_signer::PinSource;
    use keybound_signer::config::TpmKey;
    use keybound_signer_tpm::testing::Swtpm;
    use zeroize::Zeroizing;

    const RIGHT: &str = "right-auth-value-2468";
    const WRONG: &str = "wrong-auth-value-1357";
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let tcti = tpm.tcti();
    let mut tpm_config = tpm.config(TpmKey::Handle(0x8100_0101));
    tpm_config.auth = Some(PinSource::Value(Zeroizing::new(RIGHT.into())));
    let key = keybound_signer_tpm::generate(&tpm_config, Algorithm::EcdsaP256Sha256, false)
        .unwrap()
        .signer
        .public_key()
        .clone();
    // Three failures lock the TPM out, as the report saw on swtpm.
    let set = Command::new(crate::support::tool("tpm2_dictionarylockout"))
        .args(["-s", "-n", "3", "-t", "600", "-l", "600"])
        .env("TPM2TOOLS_TCTI", &tcti)
        .env("TSS2_LOG", "all+NONE")
        .status()
        .unwrap();
    assert!(set.success());
    let auth_file = dir.path().join("tpm-auth");
    write_pin_file(&auth_file, WRONG);
    let (cluster, cfg) = signal_driven(
        dir.path(),
        &key,
        &format!(
            "    signer: tpm\n    tpm_tcti: \"{tcti}\"\n    tpm_key_handle: 0x81000101\n    pin_source: file:{}\n",
            auth_file.display()
        ),
    )
    .await;
    let dir_path = dir.path().to_owned();
    let agent = blocking(move || Agent::start(&cfg, &dir_path, &[])).await;
    let port = agent.diag;
    let agent = blocking(move || {
        wait_for_health(port, "refused the authorization value");
        agent
    })
    .await;
    assert_eq!(lockout_counter(&tcti), "0x1");

    // The same wrong value, "fixed" and signalled: read, recognised, not sent.
    write_pin_file(&auth_file, WRONG);
    agent.signal("HUP");
    let agent = blocking(move || {
        wait_for_cycle(&agent, 2.0, 1.0);
        agent
    })
    .await;
    assert_eq!(
        lockout_counter(&tcti),
        "0x1",
        "a refused value was sent again"
    );
    let text = health(port);
    assert!(
        text.contains("already refused the authorization value that file:")
            && text.contains("send keybound SIGHUP"),
        "{text}"
    );
    assert_eq!(cluster.cluster.joins_completed(), 0);

    // The right value: the next SIGHUP signs and renews.
    write_pin_file(&auth_file, RIGHT);
    agent.signal("HUP");
    let agent = blocking(move || {
        wait_for("a renewal after the fix", Duration::from_secs(15), || {
            agent.renewals() >= 1.0
        });
        wait_for("health after the fix", Duration::from_secs(5), || {
            get(port, "/healthz").is_some_and(|(c, _)| c == 200)
        });
        agent
    })
    .await;
    assert_eq!(lockout_counter(&tcti), "0x1");
    assert_eq!(cluster.cluster.joins_completed(), 1);
    let logs = agent.logs();
    assert!(!logs.contains(WRONG) && !logs.contains(RIGHT), "{logs}");
}

/// The same with a SoftHSM token, counted by OpenSC's PKCS#11 spy (`pkcs11-spy.so` between
/// keybound and SoftHSM, logging every call): the agent runs with the right PIN; a wrong PIN
/// written to the file and SIGHUP make one `C_Login` that fails and a halt; the same wrong PIN
/// and SIGHUP again make no `C_Login` at all; the right PIN and SIGHUP log in and renew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_pin_file_and_never_presents_a_refused_pin() {
    const RIGHT: &str = "Right-PIN-8080";
    const WRONG: &str = "Wrong-PIN-9090";
    const SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so";
    const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
    assert!(
        Path::new(SPY).exists(),
        "OpenSC's PKCS#11 spy is missing: apt-get install opensc-pkcs11 (make deps does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (conf, key) = softhsm_key(dir.path(), "spied-token", RIGHT);
    let pin_file = dir.path().join("pin");
    write_pin_file(&pin_file, RIGHT);
    let (cluster, cfg) = signal_driven(
        dir.path(),
        &key,
        &format!(
            "    signer: pkcs11\n    pkcs11_module: {SPY}\n    pkcs11_uri: \"pkcs11:token=spied-token;object=k\"\n    pin_source: file:{}\n",
            pin_file.display()
        ),
    )
    .await;
    let spy_log = dir.path().join("spy.log");
    let (dir_path, conf_value, spy_value) = (
        dir.path().to_owned(),
        conf.display().to_string(),
        spy_log.display().to_string(),
    );
    let agent = blocking(move || {
        let agent = Agent::start(
            &cfg,
            &dir_path,
            &[
                ("SOFTHSM2_CONF", &conf_value),
                ("PKCS11SPY", SOFTHSM),
                ("PKCS11SPY_OUTPUT", &spy_value),
            ],
        );
        let a = &agent;
        wait_for("the first renewal", Duration::from_secs(15), || {
            a.renewals() >= 1.0
        });
        agent
    })
    .await;
    // (logins, refused logins) in the spy's log so far.
    let logins = || {
        let log = std::fs::read_to_string(&spy_log).unwrap_or_default();
        (
            log.lines().filter(|l| l.ends_with(": C_Login")).count(),
            log.matches("CKR_PIN_INCORRECT").count(),
        )
    };
    assert_eq!(logins(), (1, 0));
    let port = agent.diag;

    write_pin_file(&pin_file, WRONG);
    agent.signal("HUP");
    let agent = blocking(move || {
        wait_for_cycle(&agent, 1.0, 2.0);
        agent
    })
    .await;
    assert_eq!(
        logins(),
        (2, 1),
        "SIGHUP must read the PIN file again and present the new PIN once"
    );
    let text = health(port);
    assert!(
        text.contains("refused the PIN; keybound does not retry")
            && text.contains("send keybound SIGHUP"),
        "{text}"
    );

    write_pin_file(&pin_file, WRONG);
    agent.signal("HUP");
    let agent = blocking(move || {
        wait_for_cycle(&agent, 2.0, 2.0);
        agent
    })
    .await;
    assert_eq!(logins(), (2, 1), "a refused PIN was presented again");
    assert!(
        health(port).contains("already refused the PIN that file:"),
        "{}",
        health(port)
    );

    write_pin_file(&pin_file, RIGHT);
    agent.signal("HUP");
    let agent = blocking(move || {
        wait_for("a renewal after the fix", Duration::from_secs(15), || {
            agent.renewals() >= 2.0
        });
        agent
    })
    .await;
    assert_eq!(logins(), (3, 1));
    assert_eq!(cluster.cluster.joins_completed(), 2);
    let logs = agent.logs();
    assert!(!logs.contains(WRONG) && !logs.contains(RIGHT), "{logs}");
}

/// A cluster that never answers `GenerateUserCerts` for one output's roles: the agent's cycle
/// still ends (each RPC has a deadline), so it goes on renewing the bot identity and writing the
/// other output, leaves the stalled output's files as they were, and writes that output again
/// once the cluster answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_auth_call_does_not_stop_renewals() {
    use keybound_devcluster::Misbehaviour;

    use crate::support::snapshot;

    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = crate::cluster::with_a_stalling_output(
        dir.path(),
        "credential_ttl: 1m\nrenewal_interval: 1s\n",
    )
    .await;
    let (fine, slow) = (dir.path().join("fine"), dir.path().join("slow"));
    let dir_path = dir.path().to_owned();
    let agent =
        blocking(move || Agent::start(&cfg, &dir_path, &[(keybound::auth::RPC_TIMEOUT_ENV, "1s")]))
            .await;
    let port = agent.diag;
    let slow_path = slow.clone();
    blocking(move || {
        wait_for("both outputs", Duration::from_secs(20), || {
            metric(port, "keybound_renewals_total") >= 1.0 && slow_path.join("tlscert").is_file()
        })
    })
    .await;

    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::StallUserCerts));
    // Cycles run one after another: once one has met the stall, none started before it can
    // still write the output.
    let log = agent.log.clone();
    blocking(move || {
        wait_for("the first stalled call", Duration::from_secs(30), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("did not answer GenerateUserCerts within 1s")
        })
    })
    .await;
    // The agent may be writing `fine` at any moment: compare its certificate, which is renamed
    // into place whole, not a listing of the directory.
    let cert = |dir: &Path| std::fs::read(dir.join("tlscert")).unwrap();
    let before_slow = snapshot(&slow);
    let before_fine = cert(&fine);
    let joins = cluster.cluster.joins_completed();
    let state = cluster.cluster.clone();
    blocking(move || {
        wait_for(
            "three renewals while an output stalls",
            Duration::from_secs(30),
            || state.joins_completed() >= joins + 3,
        )
    })
    .await;
    assert_eq!(snapshot(&slow), before_slow, "the stalled output changed");
    assert_ne!(
        cert(&fine),
        before_fine,
        "the other output was not rewritten"
    );
    assert_eq!(get(port, "/readyz").unwrap().0, 200);

    // The cluster answers again: the stalled output is written at the next attempt.
    cluster.cluster.set_misbehaviour(None);
    let (slow_path, before_cert) = (slow.clone(), cert(&slow));
    blocking(move || {
        wait_for(
            "the stalled output written again",
            Duration::from_secs(30),
            || cert(&slow_path) != before_cert,
        )
    })
    .await;
    crate::support::assert_output_verifies(&slow);
    // Still the bot instance it started with: every renewal was an authenticated rejoin.
    assert_eq!(cluster.cluster.bot_instances("robot"), 1);
    drop(agent);
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

/// CPU time (user + system) a process has used so far, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name, in parentheses, may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Whether the server closed `tcp` (end of stream or reset, after whatever it sent), waiting
/// at most `limit` for it.
fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tcp.set_read_timeout(Some(left)).unwrap();
        match tcp.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// The diagnostics endpoint under a flood of idle and slow-header connections, in an agent
/// with 64 file descriptors (`prlimit`): it caps its connections, closes the idle and slow
/// ones, does not spin on `accept`, and the renewals go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_diagnostics_connections_does_not_stop_renewals() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = file_key_agent(dir.path(), "1m").await;
    let dir_path = dir.path().to_owned();
    let mut limited = Command::new(crate::support::tool("prlimit"));
    limited
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_keybound"))
        .env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY");
    let agent = blocking(move || Agent::start_with(limited, &cfg, &dir_path, &[])).await;
    let (port, pid) = (agent.diag, agent.child.as_ref().unwrap().id());
    let state = cluster.cluster.clone();
    blocking(move || {
        wait_for("the first renewal", Duration::from_secs(20), || {
            state.joins_completed() >= 1
        })
    })
    .await;

    // The flood, on a thread of its own: 20 connections that send a request's headers a byte
    // every half second, never finishing, then 200 that send nothing, all held until `stop`.
    // (Connections past the agent's cap and the listen backlog wait in `connect`: the kernel
    // drops their SYNs until slots free up.) It reports whether the first slow connection was
    // closed by the agent.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut slow: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let _ = tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                tcp
            })
            .collect();
        let drip = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                for tcp in &mut slow {
                    let _ = tcp.write_all(b"X");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            closed_within(&mut slow[0], Duration::from_secs(10))
        });
        let idle: Vec<TcpStream> = (0..200)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        (drip.join().unwrap(), idle.len())
    });

    let state = cluster.cluster.clone();
    let (renewed, used) = blocking(move || {
        // Let the flood build up, then measure a window of a few seconds.
        std::thread::sleep(Duration::from_secs(1));
        let (joins, ticks, started) = (state.joins_completed(), cpu_ticks(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(6));
        // Clock ticks are 1/100 s on Linux (`getconf CLK_TCK`).
        let used = (cpu_ticks(pid) - ticks) as f64 / 100.0 / started.elapsed().as_secs_f64();
        (state.joins_completed() - joins, used)
    })
    .await;
    // Renewals every second went on; the bound on CPU is far above what the agent needs and far
    // below a loop spinning on `accept` (a whole core).
    assert!(renewed >= 2, "{renewed} renewals in 6 s of flood");
    assert!(
        used < 0.3,
        "the agent used {used:.2} of a core while flooded"
    );

    // The header deadline closed the slow connections the agent took in first; all 200 idle
    // ones got through `connect`, so the agent went on accepting as slots freed up.
    stop.store(true, Ordering::Relaxed);
    let (closed_slow, idle) = blocking(move || flood.join().unwrap()).await;
    assert!(closed_slow, "a slow-header connection was left open");
    assert_eq!(idle, 200);
    // A fresh idle connection is taken in and closed in its turn, and requests are answered.
    blocking(move || {
        let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(
            closed_within(&mut fresh, Duration::from_secs(40)),
            "an idle connection was left open"
        );
        wait_for("/healthz after the flood", Duration::from_secs(20), || {
            get(port, "/healthz").is_some_and(|(c, _)| c == 200)
        });
    })
    .await;
    drop(agent);
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
