//! Standard bound-keypair joining with every key made inside SoftHSM (`signer: pkcs11` and a
//! URI naming only the token), against `keybound dev-cluster` as its own process: registration,
//! rotation, a crash after the new key, and the oldest keys destroyed once the history is full.
//! The token is read with OpenSC's pkcs11-tool, not keybound.

use std::path::Path;
use std::process::{Command, Output};

use crate::cluster_process::ClusterProcess;
use crate::pkcs11::{Hsm, MODULE, PIN};
use crate::standard::{
    doctor_line, doctor_with, joined, oneshot, read, token_status, with_secret_token,
};
use crate::support::{run_ok, tool};

/// Standard mode with keys made in the token `bkp-token`.
pub(crate) const DEVICE: [&str; 8] = [
    "--signer",
    "pkcs11",
    "--pkcs11-uri",
    "pkcs11:token=bkp-token",
    "--pkcs11-module",
    MODULE,
    "--pin-source",
    "env:HSM_PIN",
];
pub(crate) const TOKEN: &str = "bkp-token";

pub(crate) fn device_oneshot(
    hsm: &Hsm,
    cluster: &ClusterProcess,
    dir: &Path,
    extra: &[&str],
) -> Command {
    let mut cmd = oneshot(cluster, dir, extra);
    cmd.env("SOFTHSM2_CONF", &hsm.conf)
        .env("HSM_PIN", PIN)
        .args(DEVICE);
    cmd
}

/// The labels of the private keys in the token, as pkcs11-tool lists them, with the access
/// flags it prints for each.
pub(crate) fn private_keys(hsm: &Hsm) -> Vec<(String, String)> {
    let out = run_ok(
        hsm.pkcs11_tool()
            .args(["--list-objects", "--type", "privkey"]),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut keys = Vec::new();
    let mut label = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(l) = line.strip_prefix("label:") {
            label = Some(l.trim().to_owned());
        }
        if let (Some(access), Some(l)) = (line.strip_prefix("Access:"), &label) {
            keys.push((l.clone(), access.trim().to_owned()));
            label = None;
        }
    }
    keys
}

/// Whether the token's public key labelled `label` is the `ssh-ed25519` key `line`: the key
/// pkcs11-tool reads out, through openssl, against the end of the line's blob.
pub(crate) fn token_key_is(hsm: &Hsm, dir: &Path, label: &str, line: &str) -> bool {
    use base64::Engine as _;
    let der = dir.join("pub.pem");
    run_ok(
        hsm.pkcs11_tool()
            .args(["--read-object", "--type", "pubkey", "--label", label, "-o"])
            .arg(&der),
    );
    // OpenSC 0.23 writes the public key as PEM; openssl turns it into the SubjectPublicKeyInfo,
    // whose last 32 bytes are the Ed25519 point.
    let spki = run_ok(
        Command::new(tool("openssl"))
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(&der),
    )
    .stdout;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(line.split_whitespace().nth(1).unwrap())
        .unwrap();
    line.starts_with("ssh-ed25519 ") && spki.len() == 44 && spki.ends_with(&blob[blob.len() - 32..])
}

pub(crate) fn key_labels(hsm: &Hsm) -> Vec<String> {
    private_keys(hsm).into_iter().map(|(l, _)| l).collect()
}

fn device_keys(storage: &Path) -> serde_json::Value {
    serde_json::from_str(&read(&storage.join("bkp_device_keys.json"))).unwrap()
}

pub(crate) fn label_of(uri: &str) -> String {
    uri.split(';')
        .find_map(|a| a.strip_prefix("object="))
        .unwrap()
        .to_owned()
}

/// An admin's rotation request, and a run killed once its new key is made and recorded.
fn rotation_killed_after_the_new_key(hsm: &Hsm, cluster: &ClusterProcess, dir: &Path) {
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let crashed = device_oneshot(hsm, cluster, dir, &[])
        .env("KEYBOUND_TEST_FAULT", "after-new-key")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
}

fn ok(output: &Output) {
    joined(output);
}

#[test]
fn keys_are_made_and_rotated_inside_the_token_and_old_ones_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::new(TOKEN);
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: standard, limit: 5}");

    // Registration: the key is made in the token; storage holds only references.
    let first_run = device_oneshot(
        &hsm,
        &cluster,
        dir.path(),
        &["--registration-secret", "s3cret"],
    )
    .output()
    .unwrap();
    let summary = joined(&first_run);
    assert!(
        summary
            .contains("(standard mode: made inside the PKCS#11 token, referenced in bot storage)"),
        "{summary}"
    );
    // doctor reads the references, and opens no key.
    let (report, passed) = doctor_with(hsm.keybound(), &cluster, dir.path(), &DEVICE);
    assert!(passed, "{report}");
    let line = doctor_line(&report, "keys");
    assert!(
        line.contains("standard mode, keys in the device: ")
            && line.contains("object=keybound-bkp-")
            && line.contains("1 keys in the history, a join state (recovery 1,"),
        "{line}"
    );
    let keys = device_keys(&storage);
    let first_uri = keys["active"]["key"].as_str().unwrap().to_owned();
    let first = label_of(&first_uri);
    assert!(first.starts_with("keybound-bkp-"), "{first}");
    let bound = token_status(&cluster)["bound_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(read(&storage.join("id_bkp.pub")).trim(), bound);
    assert!(token_key_is(&hsm, dir.path(), &first, &bound));
    let listed = private_keys(&hsm);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0].1.contains("sensitive") && listed[0].1.contains("never extractable"),
        "{listed:?}"
    );
    for name in ["id_bkp", "bkp_key_history.json"] {
        assert!(!storage.join(name).exists(), "{name} written");
    }
    // The client state holds references only (the storage's identity files hold the bot's
    // short-lived subject key, as always).
    for name in ["bkp_device_keys.json", "bkp_state", "id_bkp.pub"] {
        let text = read(&storage.join(name));
        assert!(
            !text.contains("PRIVATE") && !text.contains(PIN),
            "{name}: {text}"
        );
    }

    // A rotation on request: a new key in the token, the old one kept (it is in the history).
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    ok(&device_oneshot(&hsm, &cluster, dir.path(), &[])
        .output()
        .unwrap());
    let rotated = token_status(&cluster)["bound_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(rotated, bound);
    let second = label_of(device_keys(&storage)["active"]["key"].as_str().unwrap());
    assert!(token_key_is(&hsm, dir.path(), &second, &rotated));
    assert_eq!(private_keys(&hsm).len(), 2);

    // Killed after the new key is made and recorded, before the cluster hears of it: nothing
    // committed, the next run joins (and rotates, still due).
    rotation_killed_after_the_new_key(&hsm, &cluster, dir.path());
    assert_eq!(token_status(&cluster)["bound_public_key"], rotated.as_str());
    assert_eq!(private_keys(&hsm).len(), 3);
    ok(&device_oneshot(&hsm, &cluster, dir.path(), &[])
        .output()
        .unwrap());
    assert_ne!(token_status(&cluster)["bound_public_key"], rotated.as_str());
    assert_eq!(private_keys(&hsm).len(), 4);

    // Up to ten keys in the history (four made so far, the crashed run's included): the first
    // goes after the rotation that pushes it out, once the cluster confirmed the new key.
    for _ in 0..6 {
        run_ok(&mut cluster.admin(&["request-rotation", "t"]));
        ok(&device_oneshot(&hsm, &cluster, dir.path(), &[])
            .output()
            .unwrap());
    }
    let labels = key_labels(&hsm);
    assert_eq!(labels.len(), 10, "{labels:?}");
    assert!(labels.contains(&first), "still in the history");
    // The next key pushes the first out of the history; killed before the cluster hears of the
    // new key, the first is retired but still in the token.
    rotation_killed_after_the_new_key(&hsm, &cluster, dir.path());
    let labels = key_labels(&hsm);
    assert_eq!(labels.len(), 11, "{labels:?}");
    assert!(labels.contains(&first), "not yet destroyed: {labels:?}");
    assert_eq!(
        label_of(device_keys(&storage)["retired"][0]["key"].as_str().unwrap()),
        first
    );
    // The next run rotates again and the cluster commits: the first two are destroyed.
    ok(&device_oneshot(&hsm, &cluster, dir.path(), &[])
        .output()
        .unwrap());
    let labels = key_labels(&hsm);
    assert_eq!(labels.len(), 10, "{labels:?}");
    assert!(
        !labels.contains(&first) && !labels.contains(&second),
        "destroyed: {labels:?}"
    );
    let keys = device_keys(&storage);
    assert_eq!(keys["history"].as_array().unwrap().len(), 10);
    assert_eq!(keys["retired"].as_array().map_or(0, Vec::len), 0);
    let active = label_of(keys["active"]["key"].as_str().unwrap());
    assert!(token_key_is(
        &hsm,
        dir.path(),
        &active,
        token_status(&cluster)["bound_public_key"].as_str().unwrap()
    ));
}

/// `keypair create --storage` with signer flags makes the key inside the device and names it
/// itself (`standard_devices.rs`); flags that name a key, or a storage directory that holds a
/// key file already, are refused, and nothing is made.
#[test]
fn keypair_create_storage_refuses_a_named_key_and_a_storage_with_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::new(TOKEN);
    let create = |storage: &Path, uri: &str| {
        hsm.keybound()
            .args(["keypair", "create", "--algorithm", "ed25519", "--storage"])
            .arg(storage)
            .args(["--signer", "pkcs11", "--pkcs11-uri", uri])
            .args(&DEVICE[4..])
            .output()
            .unwrap()
    };
    let output = create(dir.path(), "pkcs11:token=bkp-token;object=mine");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a --pkcs11-uri that names only the token") && stderr.contains("--static"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing made"
    );
    assert!(key_labels(&hsm).is_empty());

    // A storage with a standard-mode key file keeps it, and gets no device key beside it.
    run_ok(
        hsm.keybound()
            .args(["keypair", "create", "--algorithm", "ed25519", "--storage"])
            .arg(dir.path()),
    );
    let key_file = read(&dir.path().join("id_bkp"));
    let output = create(dir.path(), "pkcs11:token=bkp-token");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("holds a standard-mode key file"),
        "{stderr}"
    );
    assert_eq!(read(&dir.path().join("id_bkp")), key_file);
    assert!(!dir.path().join("bkp_device_keys.json").exists());
    assert!(key_labels(&hsm).is_empty());
}
