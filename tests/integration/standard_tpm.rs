//! Standard bound-keypair joining with every key made inside the TPM (swtpm), kept as TSS2 key
//! files in storage (`signer: tpm` and no key), against `keybound dev-cluster` as its own
//! process: registration, rotation, a crash after the new key, and the oldest key files removed
//! once the history is full. The key files are read with openssl's tpm2 provider
//! (tpm2-openssl), not keybound. With `tpm_key_handle` and a registration secret the keys are
//! kept at a pair of persistent handles instead: registration, rejoin, rotations alternating
//! between the handles, crashes after the new key and after the result, and a foreign key in the
//! pair refused; the handles are read with tpm2-tools (`tpm2_getcap`, `tpm2_readpublic`) and
//! openssl.

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

/// The pair of persistent handles the handle tests use (`tpm_key_handle` and the next).
pub(crate) const HANDLE_A: &str = "0x81000100";
pub(crate) const HANDLE_B: &str = "0x81000101";

/// A tpm2-tools command on `tpm`, run in `dir`.
fn tpm2(tpm: &Swtpm, dir: &Path, args: &[&str]) -> std::process::Output {
    run_ok(
        Command::new(tool(args[0]))
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .env("TSS2_LOG", "all+NONE")
            .current_dir(dir),
    )
}

/// The persistent handles in use, as `tpm2_getcap handles-persistent` lists them.
pub(crate) fn persistent_handles(tpm: &Swtpm, dir: &Path) -> Vec<String> {
    let listed = tpm2(tpm, dir, &["tpm2_getcap", "handles-persistent"]).stdout;
    String::from_utf8(listed)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .map(|h| h.trim().to_lowercase())
        .collect()
}

/// The public key at `handle`: `tpm2_readpublic` writes it as PEM, openssl as DER.
fn public_at(tpm: &Swtpm, dir: &Path, handle: &str) -> Vec<u8> {
    let pem = format!("{handle}.pem");
    tpm2(
        tpm,
        dir,
        &[
            "tpm2_readpublic",
            "-Q",
            "-c",
            handle,
            "-f",
            "pem",
            "-o",
            &pem,
        ],
    );
    let mut cmd = Command::new(tool("openssl"));
    cmd.args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(dir.join(pem));
    run_ok(&mut cmd).stdout
}

/// Whether the key at `handle` is the `ecdsa-sha2-nistp256` key `line` (the last 65 bytes of
/// openssl's SubjectPublicKeyInfo are the point the line's blob ends with).
pub(crate) fn key_at_is(tpm: &Swtpm, dir: &Path, handle: &str, line: &str) -> bool {
    use base64::Engine as _;
    let spki = public_at(tpm, dir, handle);
    let blob = base64::engine::general_purpose::STANDARD
        .decode(line.split_whitespace().nth(1).unwrap())
        .unwrap();
    line.starts_with("ecdsa-sha2-nistp256 ") && spki.ends_with(&blob[blob.len() - 65..])
}

/// The keys' authorization value, from `pin_source`.
const AUTH_ENV: (&str, &str) = ("KB_TEST_TPM_AUTH", "Handle-Auth-4f1d");

/// A standard-mode run with keys at the handle pair (the registration secret stays configured,
/// as in a tbot.yaml: it is what makes `tpm_key_handle` standard mode, and is sent only until a
/// join state is held), each key with an authorization value.
fn handle_oneshot(tpm: &Swtpm, cluster: &ClusterProcess, dir: &Path) -> Command {
    let mut cmd = tpm_oneshot(
        tpm,
        cluster,
        dir,
        &[
            "--tpm-key-handle",
            HANDLE_A,
            "--registration-secret",
            "s3cret",
            "--pin-source",
            &format!("env:{}", AUTH_ENV.0),
        ],
    );
    cmd.env(AUTH_ENV.0, AUTH_ENV.1);
    cmd
}

#[test]
fn keys_at_persistent_handles_alternate_and_the_old_key_is_evicted_only_after_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    let tpm = Swtpm::start();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: relaxed}");
    let handles = |expected: &[&str]| {
        assert_eq!(persistent_handles(&tpm, &tools), expected);
    };
    // The admin asks for a rotation, and the run that rotates is killed at `point`.
    let rotation_killed_at = |point: &str| {
        run_ok(&mut cluster.admin(&["request-rotation", "t"]));
        let crashed = handle_oneshot(&tpm, &cluster, dir.path())
            .env("KEYBOUND_TEST_FAULT", point)
            .output()
            .unwrap();
        assert!(!crashed.status.success());
    };
    let active_ref = || {
        device_keys(&storage)["active"]["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Registration: the key is made in the TPM and made persistent at the first handle; storage
    // holds its handle and public key only.
    let summary = joined(&handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap());
    assert!(
        summary.contains("(standard mode: made inside the TPM, at a persistent handle)"),
        "{summary}"
    );
    handles(&[HANDLE_A]);
    let first = bound(&cluster);
    assert!(key_at_is(&tpm, &tools, HANDLE_A, &first));
    assert_eq!(active_ref(), format!("tpm-handle:{HANDLE_A}"));
    assert_eq!(
        device_keys(&storage)["active"]["public_key"],
        first.as_str()
    );
    assert!(key_files(&storage).is_empty());
    assert!(!storage.join("id_bkp").exists());
    assert_eq!(read(&storage.join("id_bkp.pub")).trim(), first);
    // The key carries the pin_source's authorization value: tpm2_sign with it signs, and openssl
    // verifies the signature with the public key tpm2_readpublic gave.
    std::fs::write(tools.join("message"), b"keybound handle check").unwrap();
    tpm2(
        &tpm,
        &tools,
        &[
            "tpm2_sign",
            "-Q",
            "-c",
            HANDLE_A,
            "-p",
            AUTH_ENV.1,
            "-g",
            "sha256",
            "-f",
            "plain",
            "-o",
            "signature",
            "message",
        ],
    );
    run_ok(
        Command::new(tool("openssl"))
            .args(["dgst", "-sha256", "-verify"])
            .arg(format!("{HANDLE_A}.pem"))
            .args(["-signature", "signature", "message"])
            .current_dir(&tools),
    );

    // doctor shows the handles in use.
    let (line, ok) = doctor_handles(&tpm, &cluster, dir.path());
    assert!(ok, "{line}");
    assert!(
        line.contains(&format!("{HANDLE_A} the active key SHA256:"))
            && line.contains(&format!("{HANDLE_B} free")),
        "{line}"
    );

    // A rejoin signs with the key at the handle; nothing changes in the TPM.
    joined(&handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap());
    assert_eq!(bound(&cluster), first);
    handles(&[HANDLE_A]);

    // A rotation: the new key at the other handle; the old one evicted after the result.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    joined(&handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap());
    let second = bound(&cluster);
    assert_ne!(second, first);
    handles(&[HANDLE_B]);
    assert!(key_at_is(&tpm, &tools, HANDLE_B, &second));
    assert_eq!(active_ref(), format!("tpm-handle:{HANDLE_B}"));

    // Killed when the result has arrived, before the client state is written: the cluster binds
    // the new key, and the old one is still at its handle (evicted only once a result is
    // applied).
    rotation_killed_at("after-result");
    let third = bound(&cluster);
    assert_ne!(third, second, "the cluster committed the rotation");
    handles(&[HANDLE_A, HANDLE_B]);
    assert!(key_at_is(&tpm, &tools, HANDLE_A, &third));
    assert!(key_at_is(&tpm, &tools, HANDLE_B, &second));
    assert_eq!(active_ref(), format!("tpm-handle:{HANDLE_B}"), "not stored");

    // Another rotation before the lost result is made up for, killed after its new key: the
    // state still calls the key at B active, but the cluster challenged the key at A, so the new
    // key replaces B's, and the bound key stays at A.
    rotation_killed_at("after-new-key");
    assert_eq!(bound(&cluster), third, "nothing committed");
    handles(&[HANDLE_A, HANDLE_B]);
    assert!(key_at_is(&tpm, &tools, HANDLE_A, &third));
    assert!(!key_at_is(&tpm, &tools, HANDLE_B, &second));
    let orphan = public_at(&tpm, &tools, HANDLE_B);

    // The next run signs with the bound key, rotates (still due), the new key replacing the one
    // the cluster never bound; the result's key active, the other evicted.
    joined(&handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap());
    let fourth = bound(&cluster);
    assert_ne!(fourth, third);
    handles(&[HANDLE_B]);
    assert!(key_at_is(&tpm, &tools, HANDLE_B, &fourth));
    assert_ne!(public_at(&tpm, &tools, HANDLE_B), orphan);
    assert_eq!(active_ref(), format!("tpm-handle:{HANDLE_B}"));

    // Killed after the new key in the plain case (the state's active key is the bound one):
    // nothing committed; the next run joins with the key at B and rotates into A.
    rotation_killed_at("after-new-key");
    assert_eq!(bound(&cluster), fourth);
    handles(&[HANDLE_A, HANDLE_B]);
    joined(&handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap());
    let fifth = bound(&cluster);
    assert_ne!(fifth, fourth);
    handles(&[HANDLE_A]);
    assert!(key_at_is(&tpm, &tools, HANDLE_A, &fifth));
    let locks =
        String::from_utf8_lossy(&run_ok(&mut cluster.admin(&["ls", "locks"])).stdout).into_owned();
    assert!(!locks.contains("join_token"), "no lock: {locks}");
}

/// A key keybound did not make, at the second handle of the pair: the registration is refused
/// with one line naming the handle and the fix, nothing is made, and that key is untouched.
#[test]
fn a_foreign_key_in_the_handle_pair_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    let tpm = Swtpm::start();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: relaxed}");
    for args in [
        &["tpm2_createprimary", "-Q", "-C", "o", "-c", "prim.ctx"][..],
        &[
            "tpm2_create",
            "-Q",
            "-C",
            "prim.ctx",
            "-G",
            "ecc256:ecdsa-sha256",
            "-u",
            "k.pub",
            "-r",
            "k.priv",
        ],
        &["tpm2_flushcontext", "-t"],
        &[
            "tpm2_load",
            "-Q",
            "-C",
            "prim.ctx",
            "-u",
            "k.pub",
            "-r",
            "k.priv",
            "-c",
            "k.ctx",
        ],
        &[
            "tpm2_evictcontrol",
            "-Q",
            "-C",
            "o",
            "-c",
            "k.ctx",
            HANDLE_B,
        ],
        &["tpm2_flushcontext", "-t"],
    ] {
        tpm2(&tpm, &tools, args);
    }
    let foreign = public_at(&tpm, &tools, HANDLE_B);

    let error = crate::standard::failed(
        &handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap(),
        77,
    );
    assert!(
        error.contains(&format!("persistent handle {HANDLE_B}"))
            && error.contains("holds a key keybound did not make")
            && error.contains("set tpm_key_handle to a pair of free handles")
            && error.contains(&format!("tpm2_evictcontrol -C o -c {HANDLE_B}")),
        "{error}"
    );
    assert_eq!(persistent_handles(&tpm, &tools), [HANDLE_B]);
    assert_eq!(public_at(&tpm, &tools, HANDLE_B), foreign, "untouched");
    assert!(token_status(&cluster)["bound_public_key"].is_null());
    assert!(!storage.join("bkp_device_keys.json").exists());

    // doctor finds it too, before any join would.
    let (line, ok) = doctor_handles(&tpm, &cluster, dir.path());
    assert!(!ok, "{line}");
    assert!(
        line.starts_with("FAIL") && line.contains(&format!("persistent handle {HANDLE_B}")),
        "{line}"
    );
    assert_eq!(public_at(&tpm, &tools, HANDLE_B), foreign, "untouched");

    // A storage primary (not a signing key) persisted at the first handle is refused the same way.
    tpm2(
        &tpm,
        &tools,
        &[
            "tpm2_evictcontrol",
            "-Q",
            "-C",
            "o",
            "-c",
            "prim.ctx",
            HANDLE_A,
        ],
    );
    let error = crate::standard::failed(
        &handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap(),
        77,
    );
    assert!(
        error.contains(&format!(
            "persistent handle {HANDLE_A} in the TPM at {} holds an object keybound did not make",
            tpm.tcti()
        )),
        "{error}"
    );
    assert_eq!(persistent_handles(&tpm, &tools), [HANDLE_A, HANDLE_B]);
    assert_eq!(public_at(&tpm, &tools, HANDLE_B), foreign, "untouched");
}

/// `keybound doctor` with keys at the handle pair: its `handles` line, and whether it passed.
fn doctor_handles(tpm: &Swtpm, cluster: &ClusterProcess, dir: &Path) -> (String, bool) {
    let tcti = tpm.tcti();
    let pin_source = format!("env:{}", AUTH_ENV.0);
    let flags = [
        "--signer",
        "tpm",
        "--tpm-tcti",
        &tcti,
        "--tpm-key-handle",
        HANDLE_A,
        "--registration-secret",
        "s3cret",
        "--pin-source",
        &pin_source,
    ];
    let mut cmd = crate::support::keybound();
    cmd.env(AUTH_ENV.0, AUTH_ENV.1);
    let (report, ok) = crate::standard::doctor_with(cmd, cluster, dir, &flags);
    (
        crate::standard::doctor_line(&report, "handles").to_owned(),
        ok,
    )
}

/// A registration on a token whose rotation is already due: two rotations in one stream (the
/// registration's, then `rotate_after`'s). The first key is never bound, so the second takes the
/// free handle and the first is evicted after the result; the cluster binds the second.
#[test]
fn two_rotations_in_one_registration_keep_only_the_bound_key() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    let tpm = Swtpm::start();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: relaxed}");
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));

    joined(&handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap());
    let status = token_status(&cluster);
    assert!(status["last_rotated_at"].is_string(), "rotated: {status}");
    let bound_key = bound(&cluster);
    assert_eq!(persistent_handles(&tpm, &tools), [HANDLE_B]);
    assert!(key_at_is(&tpm, &tools, HANDLE_B, &bound_key));
    let keys = device_keys(&storage);
    assert_eq!(keys["active"]["key"], format!("tpm-handle:{HANDLE_B}"));
    assert_eq!(keys["history"].as_array().unwrap().len(), 1, "{keys}");
    joined(&handle_oneshot(&tpm, &cluster, dir.path()).output().unwrap());
    assert_eq!(bound(&cluster), bound_key);
}

#[test]
fn a_key_file_whose_making_was_interrupted_is_removed_at_the_next_join() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let (cluster, storage) = with_secret_token(dir.path(), "{mode: relaxed}");
    // Not named by any record, though its name fits keybound's scheme: left alone.
    std::fs::create_dir_all(&storage).unwrap();
    let stranger = "bkp_tpm_0123456789abcdef.pem";
    std::fs::write(storage.join(stranger), "someone else's").unwrap();
    let killed_after_generate = |extra: &[&str]| {
        let crashed = tpm_oneshot(&tpm, &cluster, dir.path(), extra)
            .env("KEYBOUND_TEST_FAULT", "after-generate")
            .output()
            .unwrap();
        assert!(!crashed.status.success());
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains("after-generate"),
            "killed at the seam: {crashed:?}"
        );
        let orphan = device_keys(&storage)["pending"][0]["key"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(storage.join(&orphan).exists(), "the key file was written");
        // The abort left its objects loaded: swtpm's socket has no resource manager to flush
        // them at close, as the kernel's /dev/tpmrm0 does.
        tpm2(&tpm, dir.path(), &["tpm2_flushcontext", "-t"]);
        orphan
    };

    // A registration killed once the TPM made the key: only the pending record names its file.
    let orphan = killed_after_generate(&["--registration-secret", "s3cret"]);
    assert!(token_status(&cluster).get("bound_public_key").is_none());
    joined(
        &tpm_oneshot(
            &tpm,
            &cluster,
            dir.path(),
            &["--registration-secret", "s3cret"],
        )
        .output()
        .unwrap(),
    );
    let first = device_keys(&storage)["active"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!storage.join(&orphan).exists(), "{orphan} removed");
    let mut expected = vec![first.clone(), stranger.to_owned()];
    expected.sort();
    assert_eq!(key_files(&storage), expected);
    assert!(device_keys(&storage).get("pending").is_none());
    assert!(tpm_key_is(&tpm, &storage.join(&first), &bound(&cluster)));

    // A rotation killed the same way: the next one removes the orphan, keeps the old key (in
    // the history) and the stranger.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let orphan = killed_after_generate(&[]);
    joined(
        &tpm_oneshot(&tpm, &cluster, dir.path(), &[])
            .output()
            .unwrap(),
    );
    assert!(!storage.join(&orphan).exists(), "{orphan} removed");
    let second = device_keys(&storage)["active"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut expected = vec![first, second.clone(), stranger.to_owned()];
    expected.sort();
    assert_eq!(key_files(&storage), expected);
    assert!(tpm_key_is(&tpm, &storage.join(&second), &bound(&cluster)));
}
