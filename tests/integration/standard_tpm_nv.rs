//! Standard bound-keypair joining with the client state in a TPM NV index
//! (`tpm_state_nv_index`), against `keybound dev-cluster` as its own process and swtpm. The
//! record is read with tpm2-tools (`tpm2_nvreadpublic`, `tpm2_nvread` with the authorization
//! value), not keybound: storage holds no client state, a registration, a recovery and a rotation
//! write the record, a plain renewal does not, and a wrong authorization value is one clear line.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keybound_signer_tpm::testing::Swtpm;

use crate::cluster_process::ClusterProcess;
use crate::standard::{
    doctor_line, doctor_with, failed, joined, oneshot, token_status, with_secret_token,
};
use crate::support::{keybound, run_ok, tool};

pub(crate) const INDEX: &str = "0x01800100";
const AUTH: &str = "5f0c2a9e71d84b36a0e9c4d2b7f18e63";

/// A 0600 file holding the authorization value.
pub(crate) fn auth_file(dir: &Path, value: &str) -> PathBuf {
    let path = dir.join(format!("auth-{}", &value[..6]));
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `oneshot` with the TPM signer, the state in NV at `INDEX`, and `auth` as pin_source.
pub(crate) fn nv_oneshot(
    tpm: &Swtpm,
    cluster: &ClusterProcess,
    dir: &Path,
    auth: &Path,
    extra: &[&str],
) -> Command {
    let mut cmd = oneshot(cluster, dir, extra);
    cmd.args(nv_flags(tpm, auth));
    cmd
}

fn tpm_tool(tpm: &Swtpm, name: &str) -> Command {
    let mut cmd = Command::new(tool(name));
    cmd.env("TPM2TOOLS_TCTI", tpm.tcti())
        .env("TSS2_LOG", "all+NONE");
    cmd
}

/// The index's bytes, as tpm2_nvread reads them with the authorization value.
pub(crate) fn nv_bytes(tpm: &Swtpm, dir: &Path) -> Vec<u8> {
    let out = dir.join("nv.bin");
    run_ok(
        tpm_tool(tpm, "tpm2_nvread")
            .args([INDEX, "-C", INDEX, "-P", AUTH, "-o"])
            .arg(&out),
    );
    std::fs::read(out).unwrap()
}

/// The newest sequence number in the index's two slots (by their headers: `KBN1`, seq).
pub(crate) fn nv_sequence(bytes: &[u8]) -> u64 {
    let half = bytes.len() / 2;
    [&bytes[..half], &bytes[half..]]
        .iter()
        .filter(|slot| slot.starts_with(b"KBN1"))
        .map(|slot| u64::from_be_bytes(slot[4..12].try_into().unwrap()))
        .max()
        .expect("no record in the index")
}

/// The index's bytes are as they were (compared without printing 2 KiB on failure).
fn unchanged(now: &[u8], before: &[u8], after: &str) {
    assert!(
        now == before,
        "{after} wrote NV: record {} became {}",
        nv_sequence(before),
        nv_sequence(now)
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Removes everything from storage but the TPM key files: the identity, so that the next
/// join is a recovery.
fn forget_identity(storage: &Path) {
    for entry in std::fs::read_dir(storage).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("bkp_tpm_") && !name.starts_with(".keybound.lock") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

#[test]
fn the_client_state_lives_in_nv_and_only_what_the_cluster_checks_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: relaxed}");
    let auth = auth_file(dir.path(), AUTH);
    let run = |extra: &[&str]| {
        nv_oneshot(&tpm, &cluster, dir.path(), &auth, extra)
            .output()
            .unwrap()
    };
    let doctor = |auth: &Path| {
        let flags = nv_flags(&tpm, auth);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (report, _) = doctor_with(keybound(), &cluster, dir.path(), &flags);
        doctor_line(&report, "state").to_owned()
    };

    // Before the first join the index does not exist; doctor says the join defines it.
    let line = doctor(&auth);
    assert!(
        line.contains("TPM NV index 0x01800100 is not defined yet; the first join defines it"),
        "{line}"
    );

    // Registration: the index is defined as keybound defines it, and storage holds no state.
    joined(&run(&["--registration-secret", "s3cret"]));
    let public = run_ok(tpm_tool(&tpm, "tpm2_nvreadpublic").arg(INDEX));
    let public = String::from_utf8(public.stdout).unwrap();
    assert!(
        public.contains("friendly: authwrite|authread|no_da|written\n"),
        "{public}"
    );
    assert!(public.contains("size: 2048"), "{public}");
    for name in ["bkp_state", "bkp_device_keys.json", "id_bkp", "id_bkp.pub"] {
        assert!(!storage.join(name).exists(), "{name} in storage");
    }
    let registered = nv_bytes(&tpm, dir.path());
    let after_registration = nv_sequence(&registered);
    let status = token_status(&cluster);
    let instance = status["bound_bot_instance_id"].as_str().unwrap().to_owned();
    assert!(contains(&registered, instance.as_bytes()), "the join state");

    // A plain renewal (an authenticated rejoin): a new join state that verifies as the old, so
    // the index is not written. (A second apart, so that its `iat` differs: the dev cluster's
    // EdDSA join state issued in the same second would be the same bytes.)
    std::thread::sleep(Duration::from_millis(1100));
    joined(&run(&[]));
    assert_eq!(
        token_status(&cluster)["bound_bot_instance_id"],
        instance.as_str()
    );
    unchanged(&nv_bytes(&tpm, dir.path()), &registered, "a renewal");

    // A recovery: the identity gone, the join state from NV presented and accepted (no lock);
    // the new join state is written.
    forget_identity(&storage);
    joined(&run(&[]));
    let status = token_status(&cluster);
    assert_eq!(status["recovery_count"], 2);
    let recovered = nv_bytes(&tpm, dir.path());
    assert_eq!(nv_sequence(&recovered), after_registration + 1);
    let new_instance = status["bound_bot_instance_id"].as_str().unwrap();
    assert_ne!(new_instance, instance);
    assert!(contains(&recovered, new_instance.as_bytes()));

    // A rotation: the new key's reference, then the result: two writes.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let before = token_status(&cluster)["bound_public_key"].clone();
    joined(&run(&[]));
    assert_ne!(token_status(&cluster)["bound_public_key"], before);
    let rotated = nv_bytes(&tpm, dir.path());
    assert_eq!(nv_sequence(&rotated), after_registration + 3);
    // And the next renewal writes nothing again.
    std::thread::sleep(Duration::from_millis(1100));
    joined(&run(&[]));
    unchanged(
        &nv_bytes(&tpm, dir.path()),
        &rotated,
        "a renewal after the rotation",
    );

    // doctor reads the index, its size and the record's sequence.
    let line = doctor(&auth);
    assert!(
        line.starts_with("ok ")
            && line.contains(&format!(
                "client state in TPM NV index 0x01800100 (2048 bytes, authwrite|authread|no_da|written), record {}",
                after_registration + 3
            )),
        "{line}"
    );

    // A wrong authorization value: one line, the value never shown, nothing written.
    let wrong = auth_file(dir.path(), "0000000000wrongwrongwrong0000000");
    let out = nv_oneshot(&tpm, &cluster, dir.path(), &wrong, &[])
        .output()
        .unwrap();
    let line = failed(&out, 78);
    assert!(
        line.contains("the TPM refused the authorization value of NV index 0x01800100"),
        "{line}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrongwrong"));
    unchanged(&nv_bytes(&tpm, dir.path()), &rotated, "a refused value");
    let line = doctor(&wrong);
    assert!(
        line.starts_with("FAIL")
            && line.contains("the TPM refused the authorization value of NV index 0x01800100"),
        "{line}"
    );
}

/// The TPM signer, the state in NV at `INDEX`, and `auth` as pin_source.
pub(crate) fn nv_flags(tpm: &Swtpm, auth: &Path) -> Vec<String> {
    vec![
        "--signer".into(),
        "tpm".into(),
        "--tpm-tcti".into(),
        tpm.tcti(),
        "--tpm-state-nv-index".into(),
        INDEX.into(),
        format!("--pin-source=file:{}", auth.display()),
    ]
}

#[test]
fn nv_settings_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = |body: &str| {
        let path = dir.path().join("tbot.yaml");
        std::fs::write(
            &path,
            format!(
                "version: v2\nproxy_server: 127.0.0.1:1\nstorage:\n  type: directory\n  path: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  bound_keypair:\n{body}",
                dir.path().join("s").display()
            ),
        )
        .unwrap();
        let out = keybound()
            .args(["start", "--oneshot", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        failed(&out, 78)
    };
    let line =
        config("    signer: tpm\n    pin_source: env:A\n    tpm_state_nv_index: 0x01000000\n");
    assert!(
        line.contains("tpm_state_nv_index 0x01000000 is not an owner-range NV index"),
        "{line}"
    );
    let line = config("    signer: tpm\n    tpm_state_nv_index: 0x01800100\n");
    assert!(
        line.contains("tpm_state_nv_index needs pin_source"),
        "{line}"
    );
    let line = config(
        "    signer: tpm\n    tpm_key_path: /k.pem\n    pin_source: env:A\n    tpm_state_nv_index: 0x01800100\n",
    );
    assert!(
        line.contains("it needs signer: tpm with keys made by keybound"),
        "{line}"
    );
}

/// The stateless TPM: a `relaxed` token, keys at persistent handles, the client state in
/// NV, and the whole storage directory deleted before every run, one of them after a rotation:
/// every run joins (a recovery presenting the join state from NV), and the cluster never locks.
#[test]
fn a_node_whose_storage_is_wiped_at_every_boot_joins_every_time() {
    use crate::standard_tpm::{HANDLE_A, HANDLE_B, key_at_is, persistent_handles};
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: relaxed}");
    let auth = auth_file(dir.path(), AUTH);
    // The registration secret stays configured, as in an image's tbot.yaml: it is sent only
    // while no join state is held.
    let boot = || {
        if storage.exists() {
            std::fs::remove_dir_all(&storage).unwrap();
        }
        let out = nv_oneshot(
            &tpm,
            &cluster,
            dir.path(),
            &auth,
            &[
                "--tpm-key-handle",
                HANDLE_A,
                "--registration-secret",
                "s3cret",
            ],
        )
        .output()
        .unwrap();
        joined(&out);
        let names: Vec<String> = std::fs::read_dir(&storage)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("bkp_") || n.starts_with("id_bkp")),
            "client state in storage: {names:?}"
        );
        nv_sequence(&nv_bytes(&tpm, dir.path()))
    };
    let no_lock = || {
        let locks = run_ok(&mut cluster.admin(&["ls", "locks"])).stdout;
        let locks = String::from_utf8_lossy(&locks).into_owned();
        assert!(!locks.contains("join_token"), "locked: {locks}");
    };
    let bound = || {
        token_status(&cluster)["bound_public_key"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // First boot: the registration, the key at the first handle.
    let mut seq = boot();
    let first = bound();
    assert!(key_at_is(&tpm, dir.path(), HANDLE_A, &first));
    let mut recoveries = token_status(&cluster)["recovery_count"].as_u64().unwrap();
    assert_eq!(recoveries, 1);

    // Two boots, each wiped first: a recovery with the join state from NV, one record each, the
    // bound key `key` kept.
    let recover_twice = |seq: &mut u64, recoveries: &mut u64, key: &str| {
        for _ in 0..2 {
            let next = boot();
            assert_eq!(next, *seq + 1);
            *seq = next;
            *recoveries += 1;
            assert_eq!(token_status(&cluster)["recovery_count"], *recoveries);
            assert_eq!(bound(), key);
            no_lock();
        }
    };
    recover_twice(&mut seq, &mut recoveries, &first);

    // A rotation at the next boot: the new key at the other handle, the old one evicted after
    // the result.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let next = boot();
    // Three records: the new key's reference, the result, the old key's removal.
    assert_eq!(next, seq + 3, "records written by a boot that rotates");
    seq = next;
    recoveries += 1;
    let second = bound();
    assert_ne!(second, first);
    assert!(key_at_is(&tpm, dir.path(), HANDLE_B, &second));
    assert_eq!(persistent_handles(&tpm, dir.path()), [HANDLE_B]);
    no_lock();

    // Wiped after the rotation: the next boots join with the new key and the newest join state.
    recover_twice(&mut seq, &mut recoveries, &second);

    // The NV index alone says standard mode: a boot whose config no longer names the secret
    // joins the same way (were `tpm_key_handle` read as a static key, it would present the
    // first handle, which holds no key since the rotation).
    std::fs::remove_dir_all(&storage).unwrap();
    let out = nv_oneshot(
        &tpm,
        &cluster,
        dir.path(),
        &auth,
        &["--tpm-key-handle", HANDLE_A],
    )
    .output()
    .unwrap();
    joined(&out);
    assert_eq!(nv_sequence(&nv_bytes(&tpm, dir.path())), seq + 1);
    assert_eq!(bound(), second);
    no_lock();
}
