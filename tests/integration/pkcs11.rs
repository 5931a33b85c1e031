//! keybound with its key in SoftHSM, run as a user runs it: `keypair create --signer pkcs11`,
//! `signer list`, and a full join with `start --oneshot`. Each test has its own SoftHSM token
//! store (softhsm-fixtures/init-token.sh), handed to each child process in SOFTHSM2_CONF.

use std::path::{Path, PathBuf};
use std::process::Command;

use keybound_signer::PublicKey;

use crate::cluster::{ca_file, cluster_for};
use crate::support::{keybound, run_err, run_ok, stdout, tool};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A private SoftHSM store with one token; the user PIN is in `HSM_PIN` of each command.
struct Hsm {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    token: String,
}

impl Hsm {
    fn new(token: &str) -> Self {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM is missing: apt-get install softhsm2"
        );
        let dir = tempfile::tempdir().unwrap();
        let output = run_ok(
            Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/softhsm-fixtures/init-token.sh"
            ))
            .arg(dir.path())
            .arg(token)
            .args(["1234", "12345678"]),
        );
        let line = stdout(&output);
        assert!(line.starts_with("export SOFTHSM2_CONF="), "{line}");
        Self {
            conf: dir.path().join("softhsm2.conf"),
            token: token.to_owned(),
            _dir: dir,
        }
    }

    fn keybound(&self) -> Command {
        let mut cmd = keybound();
        cmd.env("SOFTHSM2_CONF", &self.conf).env("HSM_PIN", "1234");
        cmd
    }

    fn uri(&self, object: &str) -> String {
        format!("pkcs11:token={};object={object}", self.token)
    }

    fn signer_args(&self, object: &str) -> Vec<String> {
        vec![
            "--signer".into(),
            "pkcs11".into(),
            "--pkcs11-uri".into(),
            self.uri(object),
            "--pkcs11-module".into(),
            MODULE.into(),
            "--pin-source".into(),
            "env:HSM_PIN".into(),
        ]
    }
}

#[test]
fn keypair_create_makes_the_key_in_the_token_and_show_and_list_find_it() {
    let hsm = Hsm::new("ci-token");
    let output = run_ok(
        hsm.keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(hsm.signer_args("bound")),
    );
    let text = stdout(&output);
    let public = text
        .lines()
        .find(|l| l.starts_with('\t'))
        .unwrap()
        .trim()
        .to_owned();
    PublicKey::from_openssh(&public).unwrap();
    assert!(
        text.contains(
            "The key was made inside the token and cannot leave it: pkcs11:token=ci-token"
        ),
        "{text}"
    );
    assert!(text.contains("\t    signer: pkcs11\n"), "{text}");
    assert!(text.contains("\t    pin_source: env:HSM_PIN\n"), "{text}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("1234"),
        "{text}"
    );

    // Again without --overwrite: refused, nothing replaced.
    let error = run_err(
        hsm.keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(hsm.signer_args("bound")),
    );
    assert!(
        error.contains("never replaces a key without --overwrite"),
        "{error}"
    );

    let shown = run_ok(
        hsm.keybound()
            .args(["keypair", "show", "--format", "json"])
            .args(hsm.signer_args("bound")),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["public_key"], public.as_str());
    assert_eq!(shown["signer"], "pkcs11");
    assert!(
        shown["protection"]
            .as_str()
            .unwrap()
            .starts_with("non-exportable"),
        "{shown}"
    );

    let listed = stdout(&run_ok(hsm.keybound().args([
        "signer",
        "list",
        "--pkcs11-module",
        MODULE,
        "--pin-source",
        "env:HSM_PIN",
    ])));
    assert!(listed.contains("pkcs11:token=ci-token"), "{listed}");
    let key_uri = listed
        .lines()
        .find(|l| l.contains("object=bound"))
        .expect("the key's line")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // The listed URI is ready to paste.
    let again = run_ok(
        hsm.keybound()
            .args([
                "keypair",
                "show",
                "--signer",
                "pkcs11",
                "--pkcs11-module",
                MODULE,
                "--pin-source",
                "env:HSM_PIN",
                "--pkcs11-uri",
            ])
            .arg(&key_uri),
    );
    assert!(stdout(&again).contains(&public));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_join_with_the_key_in_softhsm() {
    let hsm = Hsm::new("join-token");
    let created = run_ok(
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
    assert!(doc.get("private_key").is_none(), "{doc}");
    let key = PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    let uri = doc["pkcs11_uri"].as_str().unwrap().to_owned();

    let cluster = cluster_for(&key, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&cluster, dir.path());
    let out = dir.path().join("out");
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    signer: pkcs11\n    pkcs11_uri: \"{uri}\"\n    pkcs11_module: {MODULE}\n    pin_source: env:HSM_PIN\n    require_hardware_key: true\nstorage:\n  type: memory\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy_addr(),
            ca.display(),
            out.display()
        ),
    )
    .unwrap();
    let mut cmd = hsm.keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&cfg);
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary = stdout(&output);
    assert!(
        summary.contains("signer pkcs11 pkcs11:token=join-token"),
        "{summary}"
    );
    assert!(
        summary.contains("key storage:   non-exportable (CKA_SENSITIVE, not CKA_EXTRACTABLE"),
        "{summary}"
    );
    assert!(!stderr.contains("1234") && !summary.contains("1234"));
    let verify = run_ok(
        Command::new(tool("openssl"))
            .args(["verify", "-CAfile"])
            .arg(out.join("teleport-user-ca.crt"))
            .arg(out.join("tlscert")),
    );
    assert!(stdout(&verify).contains("OK"));
    assert_eq!(cluster.cluster.joins_completed(), 1);

    // A wrong PIN: a configuration error (78), said once, never retried.
    let mut cmd = hsm.keybound();
    cmd.env("HSM_PIN", "0000")
        .args(["start", "--oneshot", "-c"])
        .arg(&cfg);
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refused the PIN; keybound does not retry a wrong PIN"),
        "{stderr}"
    );
    assert!(!stderr.contains("0000"), "{stderr}");
}

#[test]
fn pin_value_in_a_uri_works_with_a_warning_and_bad_settings_are_named() {
    let hsm = Hsm::new("warn-token");
    run_ok(
        hsm.keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(hsm.signer_args("k")),
    );
    let output = run_ok(
        hsm.keybound()
            .args([
                "keypair",
                "show",
                "--signer",
                "pkcs11",
                "--pkcs11-module",
                MODULE,
                "--pkcs11-uri",
            ])
            .arg(format!("{}?pin-value=1234", hsm.uri("k"))),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pin-value: the PIN shows in process listings"),
        "{stderr}"
    );

    for (args, expected) in [
        (
            vec!["--signer", "pkcs11", "--pkcs11-module", MODULE],
            "the pkcs11 signer needs pkcs11_uri",
        ),
        (
            vec!["--signer", "pkcs11", "--pkcs11-uri", "pkcs11:slot-id=0"],
            "never by slot",
        ),
        (
            vec!["--pin-source", "1234"],
            "never given on the command line",
        ),
    ] {
        let output = hsm
            .keybound()
            .args(["keypair", "show"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
