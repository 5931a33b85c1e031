//! Standard bound-keypair joining with every key made inside the TPM (swtpm), kept as TSS2 key
//! files in storage (`signer: tpm` and no key), against `keybound dev-cluster` as its own
//! process: registration, rotation, a crash after the new key, and the oldest key files removed
//! once the history is full. The key files are read with openssl's tpm2 provider
//! (tpm2-openssl), not keybound.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use keybound_signer_tpm::testing::Swtpm;

use crate::cluster_process::ClusterProcess;
use crate::standard::{joined, oneshot, read, token_status, with_secret_token};
use crate::support::{run_ok, tool};

pub(crate) fn tpm_oneshot(
    tpm: &Swtpm,
    cluster: &ClusterProcess,
    dir: &Path,
    extra: &[&str],
) -> Command {
    let mut cmd = oneshot(cluster, dir, extra);
    cmd.args(["--signer", "tpm", "--tpm-tcti", &tpm.tcti()]);
    cmd
}

/// Whether the TSS2 key file `file` holds the `ecdsa-sha2-nistp256` key `line`: openssl's tpm2
/// provider loads it in the TPM and writes its SubjectPublicKeyInfo, whose last 65 bytes are the
/// point the line's blob ends with.
pub(crate) fn tpm_key_is(tpm: &Swtpm, file: &Path, line: &str) -> bool {
    use base64::Engine as _;
    let spki = run_ok(
        Command::new(tool("openssl"))
            .env("TPM2OPENSSL_TCTI", tpm.tcti())
            .args(["pkey", "-provider", "tpm2", "-provider", "default"])
            .args(["-pubout", "-outform", "DER", "-in"])
            .arg(file),
    )
    .stdout;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(line.split_whitespace().nth(1).unwrap())
        .unwrap();
    line.starts_with("ecdsa-sha2-nistp256 ") && spki.ends_with(&blob[blob.len() - 65..])
}

fn device_keys(storage: &Path) -> serde_json::Value {
    serde_json::from_str(&read(&storage.join("bkp_device_keys.json"))).unwrap()
}

pub(crate) fn key_files(storage: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bkp_tpm_"))
        .collect();
    names.sort();
    names
}

/// The admin's rotation request, and the join that rotates.
fn rotate(tpm: &Swtpm, cluster: &ClusterProcess, dir: &Path) {
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    joined(&tpm_oneshot(tpm, cluster, dir, &[]).output().unwrap());
}

fn bound(cluster: &ClusterProcess) -> String {
    token_status(cluster)["bound_public_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn keys_are_made_and_rotated_inside_the_tpm_and_old_key_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: relaxed}");

    // Registration: a P-256 key made in the TPM (the suite asks for Ed25519, which a TPM cannot
    // make), its wrapped blob the only thing in storage.
    let first_run = tpm_oneshot(
        &tpm,
        &cluster,
        dir.path(),
        &["--registration-secret", "s3cret"],
    )
    .output()
    .unwrap();
    let summary = joined(&first_run);
    assert!(
        summary.contains("(standard mode: made inside the TPM, its key file in bot storage)"),
        "{summary}"
    );
    let first = device_keys(&storage)["active"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(key_files(&storage), std::slice::from_ref(&first));
    let file = storage.join(&first);
    assert!(read(&file).starts_with("-----BEGIN TSS2 PRIVATE KEY-----"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first_bound = bound(&cluster);
    assert_eq!(read(&storage.join("id_bkp.pub")).trim(), first_bound);
    assert!(tpm_key_is(&tpm, &file, &first_bound));
    assert!(!storage.join("id_bkp").exists());

    // A rotation on request: a new key file, the old one kept (it is in the history).
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    joined(
        &tpm_oneshot(&tpm, &cluster, dir.path(), &[])
            .output()
            .unwrap(),
    );
    let second = device_keys(&storage)["active"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second, first);
    assert!(tpm_key_is(&tpm, &storage.join(&second), &bound(&cluster)));
    assert_eq!(key_files(&storage).len(), 2);

    // Killed after the new key is made and recorded: nothing committed; the next run joins.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let before = bound(&cluster);
    let crashed = tpm_oneshot(&tpm, &cluster, dir.path(), &[])
        .env("KEYBOUND_TEST_FAULT", "after-new-key")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    assert_eq!(bound(&cluster), before);
    assert_eq!(key_files(&storage).len(), 3);
    joined(
        &tpm_oneshot(&tpm, &cluster, dir.path(), &[])
            .output()
            .unwrap(),
    );
    assert_ne!(bound(&cluster), before);

    // Ten keys in the history: the next rotation's result removes the first key file.
    for _ in 0..6 {
        rotate(&tpm, &cluster, dir.path());
    }
    assert_eq!(key_files(&storage).len(), 10);
    assert!(storage.join(&first).exists());
    rotate(&tpm, &cluster, dir.path());
    assert_eq!(key_files(&storage).len(), 10);
    assert!(!storage.join(&first).exists(), "removed");
    let active = device_keys(&storage)["active"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(tpm_key_is(&tpm, &storage.join(active), &bound(&cluster)));
}
