//! The agent and its device secrets: a PIN or TPM authorization value is never logged, a wrong
//! one is presented once and ends the agent at start-up or halts signing later (real tokens and
//! TPMs lock after a few), and SIGHUP reads the source again without ever presenting a value the
//! device refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keybound_devcluster::DevCluster;
#[cfg(feature = "tpm")]
use keybound_signer::config::TpmKey;
#[cfg(feature = "tpm")]
use keybound_signer::{Algorithm, PinSource, Signer as _};
#[cfg(feature = "tpm")]
use keybound_signer_tpm::testing::Swtpm;
#[cfg(feature = "tpm")]
use zeroize::Zeroizing;

use crate::agent_support::{Agent, blocking, cluster_on, config, get, metric, wait_for};
use crate::cluster::ca_file;
use crate::support::keybound;

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
/// the first signature, the first join. With no identity to run on, the agent ends there with
/// EX_CONFIG, as a wrong PKCS#11 PIN ends it when the key is opened (and as tbot ends when its
/// first join fails): one try (the TPM's lockout counter says so), and the value in no log.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tpm_auth_value_at_the_first_join_ends_the_agent_after_one_try() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let tcti = tpm.tcti();
    let key = tpm_key(&tpm, 0x8100_0100, "right-auth-value");
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), &key, "t").await;
    let ca = ca_file(&cluster, dir.path());
    let key_yaml = format!(
        "  bound_keypair:\n    signer: tpm\n    tpm_tcti: \"{tcti}\"\n    tpm_key_handle: 0x81000100\n    pin_source: env:TPM_AUTH\n"
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
    let (status, logs) = blocking(move || {
        let mut agent = Agent::spawn(
            keybound(),
            &cfg,
            &dir_path,
            &[("TPM_AUTH", "wrong-auth-value")],
        );
        (agent.wait_exit(Duration::from_secs(20)), agent.logs())
    })
    .await;
    let status = status.unwrap_or_else(|| panic!("the agent did not end:\n{logs}"));
    assert_eq!(status.code(), Some(78), "{logs}");
    let error = logs
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or("");
    assert!(error.starts_with("error: the first join failed"), "{logs}");
    assert!(error.contains("refused the authorization value"), "{logs}");
    assert!(!logs.contains("wrong-auth-value"));
    assert_eq!(lockout_counter(&tcti), "0x1", "one try");
    assert_eq!(cluster.cluster.joins_completed(), 0);
}

/// A P-256 key made in `tpm` at the persistent `handle`, with the authorization value `auth`.
#[cfg(feature = "tpm")]
fn tpm_key(tpm: &Swtpm, handle: u32, auth: &str) -> keybound_signer::PublicKey {
    let mut tpm_config = tpm.config(TpmKey::Handle(handle));
    tpm_config.auth = Some(PinSource::Value(Zeroizing::new(auth.into())));
    keybound_signer_tpm::generate(&tpm_config, Algorithm::EcdsaP256Sha256, false)
        .unwrap()
        .signer
        .public_key()
        .clone()
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
#[cfg(feature = "tpm")]
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

/// An agent renewing with a TPM key whose authorization value it reads from a file; the file
/// is changed to a wrong value and SIGHUP sent: the TPM refuses it once (lockout counter 1) and
/// the agent halts. The operator rewrites the file with the same wrong value and sends SIGHUP:
/// the agent reads it, knows the TPM refused it, and does not send it (the counter stays at 1,
/// where before this fix it climbed 1 → 2 → 3 into lockout). The right value and another
/// SIGHUP: it signs and renews.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_tpm_auth_file_and_never_resends_a_refused_value() {
    const RIGHT: &str = "right-auth-value-2468";
    const WRONG: &str = "wrong-auth-value-1357";
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let tcti = tpm.tcti();
    let key = tpm_key(&tpm, 0x8100_0101, RIGHT);
    // Three failures lock the TPM out, as the report saw on swtpm.
    let set = Command::new(crate::support::tool("tpm2_dictionarylockout"))
        .args(["-s", "-n", "3", "-t", "600", "-l", "600"])
        .env("TPM2TOOLS_TCTI", &tcti)
        .env("TSS2_LOG", "all+NONE")
        .status()
        .unwrap();
    assert!(set.success());
    let auth_file = dir.path().join("tpm-auth");
    write_pin_file(&auth_file, RIGHT);
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
    let agent = blocking(move || {
        let agent = Agent::start(&cfg, &dir_path, &[]);
        let a = &agent;
        wait_for("the first renewal", Duration::from_secs(15), || {
            a.renewals() >= 1.0
        });
        agent
    })
    .await;
    let port = agent.diag;

    // A wrong value, signalled: tried once, refused, the agent halts.
    write_pin_file(&auth_file, WRONG);
    agent.signal("HUP");
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
        wait_for_cycle(&agent, 2.0, 2.0);
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
    assert_eq!(cluster.cluster.joins_completed(), 1);

    // The right value: the next SIGHUP signs and renews.
    write_pin_file(&auth_file, RIGHT);
    agent.signal("HUP");
    let agent = blocking(move || {
        wait_for("a renewal after the fix", Duration::from_secs(15), || {
            agent.renewals() >= 2.0
        });
        wait_for("health after the fix", Duration::from_secs(5), || {
            get(port, "/healthz").is_some_and(|(c, _)| c == 200)
        });
        agent
    })
    .await;
    assert_eq!(lockout_counter(&tcti), "0x1");
    assert_eq!(cluster.cluster.joins_completed(), 2);
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
