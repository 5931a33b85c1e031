//! Standard bound-keypair joining with keys made inside SoftHSM and the TPM (swtpm), beyond
//! registration and rotation (`standard_pkcs11.rs`, `standard_tpm.rs`): the authenticated
//! rejoin, a recovery, an old key refused after a rotation, a forged join state, the recovery
//! limit, and a crash after a rotation's result. The same steps as the file-key tests of
//! `standard.rs`, against `keybound dev-cluster` as its own process; every key is checked in the
//! device with pkcs11-tool and openssl (SoftHSM) or openssl's tpm2 provider (TPM), not keybound.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::cluster_process::ClusterProcess;
use crate::pkcs11::Hsm;
use crate::standard::{
    create_bot_and_token, doctor_line, doctor_with, failed, forged_state_locks_the_token,
    forget_identity, joined, read, recovery_result_lost_then_the_admins_steps, token_status,
    with_secret_token, write,
};
use crate::standard_pkcs11::{DEVICE, TOKEN, device_oneshot, label_of, private_keys, token_key_is};
use crate::support::run_ok;

/// A device standard mode makes its keys in, as these tests drive and read it.
enum Device {
    Hsm(Hsm),
    #[cfg(feature = "tpm")]
    Tpm(keybound_signer_tpm::testing::Swtpm),
}

impl Device {
    /// `keybound start --oneshot` in standard mode with keys in this device.
    fn oneshot(&self, cluster: &ClusterProcess, dir: &Path, extra: &[&str]) -> Command {
        match self {
            Self::Hsm(hsm) => device_oneshot(hsm, cluster, dir, extra),
            #[cfg(feature = "tpm")]
            Self::Tpm(tpm) => crate::standard_tpm::tpm_oneshot(tpm, cluster, dir, extra),
        }
    }

    /// Whether the device holds the key `reference` (as `bkp_device_keys.json` in `storage`
    /// names it) and its public half is the `authorized_keys` line `line`.
    fn holds(&self, storage: &Path, reference: &str, line: &str) -> bool {
        match self {
            // pkcs11-tool writes the public key it reads beside storage, not in it.
            Self::Hsm(hsm) => token_key_is(hsm, scratch(storage), &label_of(reference), line),
            #[cfg(feature = "tpm")]
            Self::Tpm(tpm) => crate::standard_tpm::tpm_key_is(tpm, &storage.join(reference), line),
        }
    }

    /// `keybound` with what this device needs in its environment.
    fn keybound(&self) -> Command {
        match self {
            Self::Hsm(hsm) => hsm.keybound(),
            #[cfg(feature = "tpm")]
            Self::Tpm(_) => crate::support::keybound(),
        }
    }

    /// The signer flags that make keys in this device (no key named).
    fn signer_args(&self) -> Vec<String> {
        match self {
            Self::Hsm(_) => DEVICE.iter().map(|&a| a.to_owned()).collect(),
            #[cfg(feature = "tpm")]
            Self::Tpm(tpm) => vec![
                "--signer".into(),
                "tpm".into(),
                "--tpm-tcti".into(),
                tpm.tcti(),
            ],
        }
    }

    /// How many keys the device holds: private keys in the token (pkcs11-tool), TPM key files
    /// in storage.
    fn keys(&self, storage: &Path) -> usize {
        match self {
            Self::Hsm(hsm) => {
                let _ = storage;
                private_keys(hsm).len()
            }
            #[cfg(feature = "tpm")]
            Self::Tpm(_) => crate::standard_tpm::key_files(storage).len(),
        }
    }
}

/// The test's directory, which holds `storage`.
fn scratch(storage: &Path) -> &Path {
    storage.parent().unwrap()
}

fn device_keys(storage: &Path) -> serde_json::Value {
    serde_json::from_str(&read(&storage.join("bkp_device_keys.json"))).unwrap()
}

fn active_ref(storage: &Path) -> String {
    device_keys(storage)["active"]["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn bound(cluster: &ClusterProcess) -> String {
    token_status(cluster)["bound_public_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The bot instance a join's summary names.
fn instance(summary: &str) -> String {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("bot instance:"))
        .unwrap_or_else(|| panic!("no bot instance: {summary}"))
        .trim()
        .to_owned()
}

/// Every file in `storage` (the lock aside), by name.
fn snapshot(storage: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(storage)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            !e.file_name()
                .to_string_lossy()
                .starts_with(".keybound.lock")
        })
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Registration, an authenticated rejoin, a recovery, a rotation, the rotated-out key refused,
/// and a forged join state that locks the token: with every key in `device`.
fn rejoin_recover_rotate_and_forge(device: &Device) {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: standard, limit: 5}");

    let first = joined(
        &device
            .oneshot(&cluster, dir.path(), &["--registration-secret", "s3cret"])
            .output()
            .unwrap(),
    );
    assert!(first.contains("unauthenticated"), "{first}");
    let first_instance = instance(&first);
    let first_key = bound(&cluster);
    let first_ref = active_ref(&storage);
    assert!(device.holds(&storage, &first_ref, &first_key));
    assert_eq!(token_status(&cluster)["recovery_count"], 1);

    // An authenticated rejoin: same instance, generation 2, no recovery used. The cluster
    // refuses a standard-mode rejoin without the join state, so the join state went with it.
    let second = joined(&device.oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(second.contains("authenticated rejoin"), "{second}");
    assert!(second.contains("generation:    2"), "{second}");
    assert_eq!(instance(&second), first_instance);
    let status = token_status(&cluster);
    assert_eq!(status["recovery_count"], 1);
    assert_eq!(status["bound_bot_instance_id"], first_instance.as_str());
    assert_eq!(active_ref(&storage), first_ref, "no new key");
    assert_eq!(device.keys(&storage), 1);

    // A recovery: the identity files gone, the references kept; a new instance, one more
    // recovery, the same key in the device.
    forget_identity(&storage);
    let third = joined(&device.oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(third.contains("unauthenticated"), "{third}");
    let third_instance = instance(&third);
    assert_ne!(
        third_instance, first_instance,
        "a recovery makes a new instance"
    );
    let status = token_status(&cluster);
    assert_eq!(status["recovery_count"], 2);
    assert_eq!(status["bound_bot_instance_id"], third_instance.as_str());
    assert_eq!(bound(&cluster), first_key);
    assert!(device.holds(&storage, &first_ref, &first_key));
    assert_eq!(device.keys(&storage), 1);

    // A rotation, then the rotated-out key (still in the device: it is in the history) and the
    // current join state, without the new key: the cluster challenges the new key, which this
    // client does not hold.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    joined(&device.oneshot(&cluster, dir.path(), &[]).output().unwrap());
    let new_key = bound(&cluster);
    assert_ne!(new_key, first_key);
    let new_ref = active_ref(&storage);
    assert!(device.holds(&storage, &new_ref, &new_key));
    assert!(device.holds(&storage, &first_ref, &first_key), "kept");
    assert_eq!(device.keys(&storage), 2);
    let thief = dir.path().join("thief");
    let thief_storage = thief.join("storage");
    std::fs::create_dir_all(&thief_storage).unwrap();
    let old = device_keys(&storage)["history"][1].clone();
    assert_eq!(old["key"], first_ref.as_str());
    write(
        &thief_storage,
        "bkp_device_keys.json",
        &serde_json::json!({"active": old, "history": [old]}).to_string(),
    );
    std::fs::copy(storage.join("bkp_state"), thief_storage.join("bkp_state")).unwrap();
    if storage.join(&first_ref).is_file() {
        // A TPM key file: the thief has the old key's blob (it loads in this TPM).
        std::fs::copy(storage.join(&first_ref), thief_storage.join(&first_ref)).unwrap();
    }
    let error = failed(&device.oneshot(&cluster, &thief, &[]).output().unwrap(), 77);
    assert!(error.contains("no matching key found"), "{error}");
    assert_eq!(bound(&cluster), new_key, "still bound");
    joined(&device.oneshot(&cluster, dir.path(), &[]).output().unwrap());

    // A forged join state: refused, the token locked, the outputs and the keys untouched.
    forged_state_locks_the_token(&cluster, dir.path(), || {
        device.oneshot(&cluster, dir.path(), &[])
    });
    assert_eq!(device.keys(&storage), 2);
    assert!(device.holds(&storage, &new_ref, &new_key));
}

/// A crash after a rotation's result (before the client state is written), the recovery that
/// follows without an admin, then the recovery limit: a clear error, and the last identity,
/// the client state and the device's keys as they were.
fn crash_after_the_result_then_the_limit(device: &Device) {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: standard, limit: 2}");
    joined(
        &device
            .oneshot(&cluster, dir.path(), &["--registration-secret", "s3cret"])
            .output()
            .unwrap(),
    );
    let first_ref = active_ref(&storage);
    let public_before = read(&storage.join("id_bkp.pub"));

    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let crashed = device
        .oneshot(&cluster, dir.path(), &[])
        .env("KEYBOUND_TEST_FAULT", "after-result")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let committed = bound(&cluster);
    assert_ne!(committed, public_before.trim(), "the cluster committed");
    assert_eq!(
        read(&storage.join("id_bkp.pub")),
        public_before,
        "not stored"
    );
    assert_eq!(active_ref(&storage), first_ref);
    // The committed key is in the device and at the head of the history.
    let new_ref = device_keys(&storage)["history"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_ref, first_ref);
    assert!(device.holds(&storage, &new_ref, &committed));

    let after = joined(&device.oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(after.contains("unauthenticated"), "a recovery: {after}");
    assert_eq!(token_status(&cluster)["recovery_count"], 2);
    assert_eq!(read(&storage.join("id_bkp.pub")).trim(), committed);
    assert_eq!(active_ref(&storage), new_ref);

    // The limit: two recoveries used of two.
    forget_identity(&storage);
    let before = snapshot(&storage);
    let out_before = std::fs::read(dir.path().join("out/identity")).unwrap();
    let keys_before = device.keys(&storage);
    let error = failed(
        &device.oneshot(&cluster, dir.path(), &[]).output().unwrap(),
        77,
    );
    assert!(error.contains("no rejoins remaining"), "{error}");
    assert!(error.contains("recovery.limit"), "{error}");
    assert_eq!(snapshot(&storage), before, "the client state is untouched");
    assert_eq!(
        std::fs::read(dir.path().join("out/identity")).unwrap(),
        out_before
    );
    assert_eq!(device.keys(&storage), keys_before);
    assert!(device.holds(&storage, &new_ref, &committed));
    assert_eq!(bound(&cluster), committed);
}

/// `keypair create --storage` with the device's signer flags: the key made in the device as a
/// registration makes it, kept without `--overwrite`, replaced with it (only keybound's own key
/// destroyed), then registered as the token's `initial_public_key` in `mode: standard`: the
/// first join is with that key.
fn pre_registered(device: &Device) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    let storage = dir.path().join("storage");
    std::fs::create_dir(&storage).unwrap();
    let create = |format: &str, extra: &[&str]| {
        let mut cmd = device.keybound();
        cmd.args(["keypair", "create", "--format", format, "--storage"])
            .arg(&storage)
            .args(device.signer_args())
            .args(extra);
        if matches!(device, Device::Hsm(_)) {
            cmd.args(["--algorithm", "ed25519"]);
        }
        String::from_utf8(run_ok(&mut cmd).stdout).unwrap()
    };
    let made: serde_json::Value = serde_json::from_str(&create("json", &[])).unwrap();
    let first = made["public_key"].as_str().unwrap().to_owned();
    let first_ref = active_ref(&storage);
    match device {
        Device::Hsm(_) => assert_eq!(made["pkcs11_uri"], first_ref.as_str()),
        #[cfg(feature = "tpm")]
        Device::Tpm(_) => assert_eq!(made["tpm_key"], storage.join(&first_ref).to_str().unwrap()),
    }
    assert_eq!(read(&storage.join("id_bkp.pub")).trim(), first);
    assert!(!storage.join("id_bkp").exists());
    assert!(device.holds(&storage, &first_ref, &first));
    assert_eq!(device.keys(&storage), 1);
    match device {
        Device::Hsm(hsm) => {
            let label = label_of(&first_ref);
            assert!(label.starts_with("keybound-bkp-"), "{label}");
            let listed = private_keys(hsm);
            assert!(
                listed[0].1.contains("sensitive") && listed[0].1.contains("never extractable"),
                "{listed:?}"
            );
            // Someone else's key in the token, which no --overwrite may touch.
            run_ok(hsm.pkcs11_tool().args([
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                "theirs",
                "--usage-sign",
            ]));
        }
        #[cfg(feature = "tpm")]
        Device::Tpm(_) => {}
    }

    // Again without --overwrite: the key is kept and shown, with the token example.
    let text = create("text", &[]);
    assert!(
        text.contains("The existing bound keypair is kept"),
        "{text}"
    );
    assert!(text.contains(&format!("\t{first}\n")), "{text}");
    assert!(text.contains("mode: standard"), "{text}");
    assert!(text.contains("bkp_device_keys.json"), "{text}");
    assert_eq!(active_ref(&storage), first_ref);

    // --overwrite: a new key in the device, the one keybound recorded destroyed, no other.
    let replaced: serde_json::Value =
        serde_json::from_str(&create("json", &["--overwrite"])).unwrap();
    let public = replaced["public_key"].as_str().unwrap().to_owned();
    assert_ne!(public, first);
    let key_ref = active_ref(&storage);
    assert_ne!(key_ref, first_ref);
    assert!(device.holds(&storage, &key_ref, &public));
    let keys = device_keys(&storage);
    assert_eq!(keys["history"].as_array().unwrap().len(), 1);
    assert_eq!(keys["retired"].as_array().map_or(0, Vec::len), 0);
    match device {
        Device::Hsm(hsm) => {
            let mut labels: Vec<String> = private_keys(hsm).into_iter().map(|(l, _)| l).collect();
            labels.sort();
            assert_eq!(labels, [label_of(&key_ref), "theirs".to_owned()]);
        }
        #[cfg(feature = "tpm")]
        Device::Tpm(_) => {
            assert_eq!(
                crate::standard_tpm::key_files(&storage),
                std::slice::from_ref(&key_ref)
            );
        }
    }

    // Registered on a standard-mode token: the first join is with that key.
    create_bot_and_token(
        &cluster,
        dir.path(),
        &format!("{{initial_public_key: '{public}'}}"),
        "{mode: standard, limit: 2}",
    );
    let first_join = joined(&device.oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(first_join.contains("unauthenticated"), "{first_join}");
    assert_eq!(bound(&cluster), public);
    assert_eq!(token_status(&cluster)["recovery_count"], 1);
    assert_eq!(active_ref(&storage), key_ref);
    assert!(device.holds(&storage, &key_ref, &public));
    let rejoin = joined(&device.oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(rejoin.contains("authenticated rejoin"), "{rejoin}");
}

#[test]
fn a_key_made_in_the_token_by_keypair_create_is_registered_and_joins() {
    pre_registered(&Device::Hsm(Hsm::new(TOKEN)));
}

#[cfg(feature = "tpm")]
#[test]
fn a_key_made_in_the_tpm_by_keypair_create_is_registered_and_joins() {
    pre_registered(&Device::Tpm(keybound_signer_tpm::testing::Swtpm::start()));
}

/// A crash after a recovery's result, with keys in `device`: as with file keys, the admin's
/// steps bring the bot back, with the same key, still in the device.
fn recovery_result_lost(device: &Device) {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let cluster = recovery_result_lost_then_the_admins_steps(dir.path(), &|cluster, extra| {
        device.oneshot(cluster, dir.path(), extra)
    });
    assert!(device.holds(&storage, &active_ref(&storage), &bound(&cluster)));
    assert_eq!(device.keys(&storage), 1);
}

#[test]
fn keys_in_the_token_come_back_from_a_lost_recovery_result_by_the_admins_steps() {
    recovery_result_lost(&Device::Hsm(Hsm::new(TOKEN)));
}

#[cfg(feature = "tpm")]
#[test]
fn keys_in_the_tpm_come_back_from_a_lost_recovery_result_by_the_admins_steps() {
    recovery_result_lost(&Device::Tpm(keybound_signer_tpm::testing::Swtpm::start()));
}

#[test]
fn keys_in_the_token_rejoin_recover_refuse_the_old_key_and_lock_on_a_forged_state() {
    rejoin_recover_rotate_and_forge(&Device::Hsm(Hsm::new(TOKEN)));
}

#[test]
fn keys_in_the_token_survive_a_crash_after_the_result_and_stop_at_the_limit() {
    crash_after_the_result_then_the_limit(&Device::Hsm(Hsm::new(TOKEN)));
}

#[cfg(feature = "tpm")]
#[test]
fn keys_in_the_tpm_rejoin_recover_refuse_the_old_key_and_lock_on_a_forged_state() {
    let tpm = keybound_signer_tpm::testing::Swtpm::start();
    rejoin_recover_rotate_and_forge(&Device::Tpm(tpm));
}

#[cfg(feature = "tpm")]
#[test]
fn keys_in_the_tpm_survive_a_crash_after_the_result_and_stop_at_the_limit() {
    let tpm = keybound_signer_tpm::testing::Swtpm::start();
    crash_after_the_result_then_the_limit(&Device::Tpm(tpm));
}

/// A registration killed after its key is made and recorded, before the cluster heard of it:
/// no key is active yet, and `keypair create --storage` without `--overwrite` refuses to replace
/// the recorded one (had the crash come after the result, the cluster would bind it); the next
/// join registers (with a key of its own, as the cluster asks) and the recorded key stays.
#[test]
fn keypair_create_leaves_the_key_of_an_unfinished_registration_in_the_token() {
    let device = Device::Hsm(Hsm::new(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: standard, limit: 2}");
    let crashed = device
        .oneshot(&cluster, dir.path(), &["--registration-secret", "s3cret"])
        .env("KEYBOUND_TEST_FAULT", "after-new-key")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let made = device_keys(&storage)["history"][0].clone();
    assert!(device_keys(&storage)["active"].is_null());
    let output = device
        .keybound()
        .args(["keypair", "create", "--algorithm", "ed25519", "--storage"])
        .arg(&storage)
        .args(device.signer_args())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a registration that has not finished") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(device.keys(&storage), 1);
    assert!(device.holds(
        &storage,
        made["key"].as_str().unwrap(),
        made["public_key"].as_str().unwrap()
    ));
    joined(
        &device
            .oneshot(&cluster, dir.path(), &["--registration-secret", "s3cret"])
            .output()
            .unwrap(),
    );
    assert_ne!(bound(&cluster), made["public_key"].as_str().unwrap());
    assert_eq!(device.keys(&storage), 2);
    assert_eq!(device_keys(&storage)["history"][1], made);
}

/// The labels of the private keys in the token, sorted.
fn sorted_labels(hsm: &Hsm) -> Vec<String> {
    let mut labels: Vec<String> = private_keys(hsm).into_iter().map(|(l, _)| l).collect();
    labels.sort();
    labels
}

/// Killed after the token made a key and before its reference was written (a registration's,
/// then a rotation's): the label, recorded as pending before the key was made, finds the
/// object, and the next join destroys it; an object of keybound's label scheme that keybound
/// did not record stays. The token is read with pkcs11-tool.
#[test]
fn a_key_whose_making_was_interrupted_is_destroyed_at_the_next_join() {
    let hsm = &Hsm::new(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: standard, limit: 5}");
    // Not keybound's, though its label fits keybound's scheme.
    run_ok(hsm.pkcs11_tool().args([
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "keybound-bkp-0123456789abcdef",
        "--usage-sign",
    ]));
    let stranger = "keybound-bkp-0123456789abcdef".to_owned();
    let killed_after_generate = |extra: &[&str]| {
        let crashed = device_oneshot(hsm, &cluster, dir.path(), extra)
            .env("KEYBOUND_TEST_FAULT", "after-generate")
            .output()
            .unwrap();
        assert!(!crashed.status.success());
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains("after-generate"),
            "killed at the seam: {crashed:?}"
        );
        let pending = device_keys(&storage)["pending"][0]["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let orphan = label_of(&pending);
        assert!(
            sorted_labels(hsm).contains(&orphan),
            "the key was made: {orphan}"
        );
        orphan
    };

    // A registration: the key is in the token, its reference nowhere but the pending record.
    let orphan = killed_after_generate(&["--registration-secret", "s3cret"]);
    assert!(
        device_keys(&storage)["history"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    assert!(token_status(&cluster).get("bound_public_key").is_none());
    joined(
        &device_oneshot(
            hsm,
            &cluster,
            dir.path(),
            &["--registration-secret", "s3cret"],
        )
        .output()
        .unwrap(),
    );
    let first = label_of(&active_ref(&storage));
    let mut expected = vec![first.clone(), stranger.clone()];
    expected.sort();
    assert_eq!(sorted_labels(hsm), expected, "{orphan} destroyed");
    assert!(device_keys(&storage).get("pending").is_none());

    // A rotation: the same, the old key kept (it is in the history); doctor tells of the
    // interrupted key.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let orphan = killed_after_generate(&[]);
    let (report, _) = doctor_with(hsm.keybound(), &cluster, dir.path(), &DEVICE);
    let line = doctor_line(&report, "keys");
    assert!(
        line.contains("1 key(s) whose making a crash interrupted"),
        "{line}"
    );
    joined(
        &device_oneshot(hsm, &cluster, dir.path(), &[])
            .output()
            .unwrap(),
    );
    let second = label_of(&active_ref(&storage));
    assert_ne!(second, first);
    let mut expected = vec![first, second, stranger];
    expected.sort();
    assert_eq!(sorted_labels(hsm), expected, "{orphan} destroyed");
    assert!(device_keys(&storage).get("pending").is_none());
    let active = label_of(&active_ref(&storage));
    assert!(token_key_is(hsm, dir.path(), &active, &bound(&cluster)));
}
