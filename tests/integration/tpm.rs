//! keybound with its key in a TPM (swtpm), run as a user runs it: `keypair create --signer tpm`
//! with a persistent handle and with a TSS2 key file, and full joins with `start --oneshot`.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use keybound_signer::PublicKey;
use keybound_signer_tpm::testing::Swtpm;

use crate::cluster::{ca_file, cluster_for};
use crate::doctor::{doctor_on, run, single_failure};
use crate::support::{assert_output_verifies, keybound, run_err, run_ok, stdout, tool};

fn tpm_args(tpm: &Swtpm, key: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--signer".to_owned(),
        "tpm".to_owned(),
        "--tpm-tcti".to_owned(),
        tpm.tcti(),
    ];
    args.extend(key.iter().map(|s| (*s).to_owned()));
    args
}

async fn join_with(
    tpm: &Swtpm,
    key: &PublicKey,
    bound_keypair_yaml: &str,
) -> (std::process::Output, tempfile::TempDir) {
    let cluster = cluster_for(key, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&cluster, dir.path());
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    signer: tpm\n    tpm_tcti: \"{}\"\n    require_hardware_key: true\n{bound_keypair_yaml}storage:\n  type: memory\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy_addr(),
            ca.display(),
            tpm.tcti(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&cfg);
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    drop(cluster);
    (output, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_tpm_key_made_by_keypair_create_joins() {
    let tpm = Swtpm::start();
    let created = run_ok(
        keybound()
            .args(["keypair", "create", "--static", "--format", "json"])
            .args(tpm_args(&tpm, &["--tpm-key-handle", "0x81000100"])),
    );
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(doc["tpm_key"], "persistent handle 0x81000100");
    let key = PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(key.algorithm(), keybound_signer::Algorithm::EcdsaP256Sha256);

    // The handle is taken now.
    let error = run_err(
        keybound()
            .args(["keypair", "create", "--static"])
            .args(tpm_args(&tpm, &["--tpm-key-handle", "0x81000100"])),
    );
    assert!(
        error.contains("never replaces one without --overwrite"),
        "{error}"
    );
    // Asking for Ed25519 explains why not.
    let error = run_err(
        keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(tpm_args(&tpm, &["--tpm-key-handle", "0x81000101"])),
    );
    assert!(error.contains("TPMs do not make Ed25519 keys"), "{error}");

    let (output, dir) = join_with(&tpm, &key, "    tpm_key_handle: 0x81000100\n").await;
    let summary = stdout(&output);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        summary.contains("signer tpm persistent handle 0x81000100"),
        "{summary}"
    );
    assert!(
        summary
            .contains("key storage:   non-exportable (fixedTPM, fixedParent, sensitiveDataOrigin"),
        "{summary}"
    );
    assert_output_verifies(&dir.path().join("out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_key_file_made_by_keypair_create_joins() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bound.tss2.pem");
    let path = file.display().to_string();
    let created = run_ok(
        keybound()
            .args(["keypair", "create", "--static"])
            .args(tpm_args(&tpm, &["--tpm-key-path", &path])),
    );
    let text = stdout(&created);
    assert!(
        text.contains(&format!("\t    tpm_key_path: {path}\n")),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("-----BEGIN TSS2 PRIVATE KEY-----")
    );
    let shown = run_ok(
        keybound()
            .args(["keypair", "show", "--format", "json"])
            .args(tpm_args(&tpm, &["--tpm-key-path", &path])),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let key = PublicKey::from_openssh(shown["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(shown["signer"], "tpm");

    let error = run_err(
        keybound()
            .args(["keypair", "create", "--static"])
            .args(tpm_args(&tpm, &["--tpm-key-path", &path])),
    );
    assert!(error.contains("already exists"), "{error}");

    let (output, _dir) = join_with(&tpm, &key, &format!("    tpm_key_path: {path}\n")).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains(&format!("signer tpm key file {path}")));

    // A TCTI keybound cannot honour is refused before anything talks to a TPM.
    let error = run_err(
        keybound()
            .args([
                "keypair",
                "show",
                "--signer",
                "tpm",
                "--tpm-tcti",
                "swtpm:path=/run/swtpm.sock",
                "--tpm-key-path",
            ])
            .arg(&path),
    );
    assert!(
        error.contains("cannot reach a TPM over a UNIX socket"),
        "{error}"
    );
}

/// `keybound doctor` with the key in a TPM (swtpm): the key's attributes when it is there, and a
/// FAIL line naming the TCTI when the TPM cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_a_tpm_key_and_an_unreachable_tpm() {
    let tpm = Swtpm::start();
    let created = run_ok(
        keybound()
            .args(["keypair", "create", "--static", "--format", "json"])
            .args(tpm_args(&tpm, &["--tpm-key-handle", "0x81000102"])),
    );
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    let cluster = cluster_for(&key, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&cluster, dir.path());
    let doctor = |tcti: String| {
        let mut cmd = doctor_on(keybound(), &cluster.proxy_addr());
        cmd.arg("--ca-path")
            .arg(&ca)
            .args(["--signer", "tpm", "--tpm-tcti", &tcti])
            .args(["--tpm-key-handle", "0x81000102"]);
        run(cmd)
    };

    let output = doctor(tpm.tcti()).await;
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("ok   signer  tpm persistent handle 0x81000102: ecdsa-p256 key")
            && text.contains("non-exportable (fixedTPM, fixedParent"),
        "{text}"
    );
    // A P-256 key under balanced-v1: a warning, not a failure.
    assert!(text.contains("warn cluster suite balanced-v1"), "{text}");
    // doctor says the key can be attested.
    assert!(
        text.contains("ok   signer  attestable: a TPM key: keybound keypair attest makes evidence"),
        "{text}"
    );

    let port = crate::support::free_port();
    let output = doctor(format!("swtpm:host=127.0.0.1,port={port}")).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let fail = text.lines().find(|l| l.starts_with("FAIL")).unwrap();
    assert!(
        fail.starts_with("FAIL signer  tpm: cannot reach the TPM at swtpm:host=127.0.0.1")
            && fail.contains("fix: check that the device is present"),
        "{text}"
    );
    assert_eq!(cluster.cluster.solutions_received(), 0);
}

/// libtss2 prints `WARNING:esys:...` and `ERROR:esys:...` lines of its own for TPM answers
/// keybound expects (an empty handle before `keypair create` fills it), and tss-esapi logs an
/// ERROR for them: neither shows unless asked for with `--debug` or the user's own `TSS2_LOG`.
/// (The test harness sets TSS2_LOG for every process cargo runs; here it is removed, as a user's
/// shell does not have it.)
#[test]
fn the_tpm_librarys_own_logging_shows_only_when_asked_for() {
    let tpm = Swtpm::start();
    let quiet = |args: &[&str]| {
        let output = keybound()
            .env_remove("TSS2_LOG")
            .args(args)
            .args(tpm_args(&tpm, &["--tpm-key-handle", "0x81000103"]))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = quiet(&["keypair", "create", "--static"]);
    assert!(
        !stderr.contains("esys") && !stderr.contains("ERROR"),
        "{stderr}"
    );
    assert!(stderr.contains("made the key inside the TPM"), "{stderr}");

    // An empty handle, looked up: the same TPM answer, now shown.
    let empty = ["--tpm-key-handle", "0x81000104"];
    let debug = keybound()
        .env_remove("TSS2_LOG")
        .args(["--debug", "keypair", "show"])
        .args(tpm_args(&tpm, &empty))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&debug.stderr);
    assert!(
        stderr.contains("ERROR:esys:") && stderr.contains("Error when getting ESYS handle"),
        "{stderr}"
    );
    assert!(stderr.contains("error: tpm: no key at persistent handle 0x81000104"));

    // The user's own TSS2_LOG is left as it is.
    let own = keybound()
        .env("TSS2_LOG", "esys+ERROR")
        .args(["keypair", "show"])
        .args(tpm_args(&tpm, &empty))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&own.stderr);
    assert!(
        stderr.contains("ERROR:esys:") && !stderr.contains("WARNING:esys:"),
        "{stderr}"
    );
}

/// A device TCTI whose device is missing says so, and asks the two questions that explain it;
/// libtss2's own `ERROR:tcti:` lines stay quiet.
#[test]
fn a_missing_tpm_device_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("tpmrm0");
    let output = keybound()
        .env_remove("TSS2_LOG")
        .args(["keypair", "show", "--signer", "tpm", "--tpm-tcti"])
        .arg(format!("device:{}", device.display()))
        .args(["--tpm-key-handle", "0x81000100"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [format!(
            "error: tpm: no TPM device at {}: is the TPM enabled (in the firmware setup, with the \
             kernel's tpm_tis or tpm_crb driver loaded), or is tpm2-abrmd needed (--tpm-tcti \
             tabrmd:)? For a TPM elsewhere set --tpm-tcti (tpm_tcti), e.g. swtpm:host=127.0.0.1,port=P",
            device.display()
        )]
    );
}

/// `TPM2_PT_LOCKOUT_COUNTER`, the TPM's count of failed authorizations, read by tpm2-tools.
fn lockout_counter(tpm: &Swtpm) -> u32 {
    let output = run_ok(
        Command::new(tool("tpm2_getcap"))
            .arg("properties-variable")
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .env("TSS2_LOG", "all+NONE"),
    );
    let text = stdout(&output);
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
        .unwrap_or_else(|| panic!("no lockout counter in:\n{text}"));
    u32::from_str_radix(value.trim().trim_start_matches("0x"), 16).unwrap()
}

/// A TPM checks a key's authorization value only when the key is used, so opening the key cannot
/// tell a wrong one. doctor signs one fixed message: the right value passes, a wrong one is one
/// FAIL line naming the cause and the fix, and the TPM counted exactly one failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_catches_a_wrong_tpm_authorization_value_with_one_try() {
    const RIGHT: &str = "Tpm-Auth-Right-93b2";
    const WRONG: &str = "Tpm-Auth-Wrong-0c5e";
    let tpm = Swtpm::start();
    let key_args = [
        "--tpm-key-handle",
        "0x81000105",
        "--pin-source",
        "env:TPM_AUTH",
    ];
    let created = run_ok(
        keybound()
            .env("TPM_AUTH", RIGHT)
            .args(["keypair", "create", "--static", "--format", "json"])
            .args(tpm_args(&tpm, &key_args)),
    );
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    let cluster = cluster_for(&key, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&cluster, dir.path());
    let doctor = |auth: &str| {
        let mut cmd = doctor_on(keybound(), &cluster.proxy_addr());
        cmd.env("TPM_AUTH", auth)
            .arg("--ca-path")
            .arg(&ca)
            .args(tpm_args(&tpm, &key_args));
        run(cmd)
    };
    assert_eq!(lockout_counter(&tpm), 0);

    let output = doctor(RIGHT).await;
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("ok   signer  the TPM accepts the key's authorization value"),
        "{text}"
    );
    assert_eq!(lockout_counter(&tpm), 0);

    let (fail, printed) = single_failure(&doctor(WRONG).await);
    assert!(
        fail.starts_with(
            "FAIL signer  tpm: the TPM refused the authorization value of persistent handle 0x81000105"
        ) && fail.contains("— fix: correct the authorization value that pin_source names"),
        "{printed}"
    );
    for secret in [RIGHT, WRONG] {
        assert!(!printed.contains(secret));
    }
    assert_eq!(lockout_counter(&tpm), 1, "one try, no second");

    // One failure of swtpm's three does not lock the key: the right value still works.
    assert!(doctor(RIGHT).await.status.success());
    assert_eq!(cluster.cluster.solutions_received(), 0);
}
