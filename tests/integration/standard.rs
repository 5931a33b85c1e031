//! Standard bound-keypair joining with file keys kept in bot storage, against `keybound
//! dev-cluster` running as a process of its own: a registration secret, an authenticated
//! rejoin, a recovery, a rotation the admin requests, a tampered join state, the recovery
//! limit, a key made beforehand with `keypair create --storage`, and crashes at the two points
//! where the cluster and the client state can part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cluster_process::ClusterProcess;
use crate::support::{keybound, run_ok, tool};

const CLIENT_STATE: [&str; 4] = ["id_bkp", "id_bkp.pub", "bkp_state", "bkp_key_history.json"];

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A bot `robot` and a standard-mode token `t` with `onboarding` and `recovery`; what `create`
/// printed.
pub(crate) fn create_bot_and_token(
    cluster: &ClusterProcess,
    dir: &Path,
    onboarding: &str,
    recovery: &str,
) -> String {
    let yaml = format!(
        "kind: role\nversion: v7\nmetadata:\n  name: access\nspec:\n  allow:\n    logins: [ci]\n---\nkind: bot\nversion: v1\nmetadata:\n  name: robot\nspec:\n  roles: [access]\n---\nkind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n  bot_name: robot\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding: {onboarding}\n    recovery: {recovery}\n"
    );
    let file = write(dir, "resources.yaml", &yaml);
    let args: [&std::ffi::OsStr; 2] = ["create".as_ref(), file.as_os_str()];
    String::from_utf8(run_ok(&mut cluster.admin(&args)).stdout).unwrap()
}

pub(crate) fn token_status(cluster: &ClusterProcess) -> serde_json::Value {
    let output = run_ok(&mut cluster.admin(&["get", "tokens/t", "--format", "json"]));
    let token: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    token["status"]["bound_keypair"].clone()
}

/// A dev cluster process with the bot `robot` and its token `t` in `recovery` mode, onboarded by
/// the registration secret `s3cret`; the storage directory, made and empty.
pub(crate) fn with_secret_token(dir: &Path, recovery: &str) -> (ClusterProcess, PathBuf) {
    let cluster = ClusterProcess::start::<&str>(dir, &[]);
    create_bot_and_token(&cluster, dir, "{registration_secret: s3cret}", recovery);
    let storage = dir.join("storage");
    std::fs::create_dir(&storage).unwrap();
    (cluster, storage)
}

/// `keybound start --oneshot` in standard mode (no static key), storage and outputs in `dir`.
pub(crate) fn oneshot(cluster: &ClusterProcess, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "--join-method", "bound_keypair"])
        .args(["--proxy-server", &cluster.proxy, "--token", "t"])
        .arg("--ca-path")
        .arg(&cluster.ca)
        .arg("--data-dir")
        .arg(dir.join("storage"))
        .arg("--destination-dir")
        .arg(dir.join("out"))
        .args(extra)
        .env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY")
        .env_remove("TBOT_REGISTRATION_SECRET");
    cmd
}

/// `keybound doctor` with `oneshot`'s settings: its report (stdout) and whether it passed.
fn doctor(cluster: &ClusterProcess, dir: &Path) -> (String, bool) {
    doctor_with(keybound(), cluster, dir, &[])
}

/// `keybound doctor` run by `cmd` with `oneshot`'s settings and `extra`.
pub(crate) fn doctor_with(
    mut cmd: Command,
    cluster: &ClusterProcess,
    dir: &Path,
    extra: &[&str],
) -> (String, bool) {
    cmd.args(["doctor", "--join-method", "bound_keypair"])
        .args(extra)
        .args(["--proxy-server", &cluster.proxy, "--token", "t"])
        .arg("--ca-path")
        .arg(&cluster.ca)
        .arg("--data-dir")
        .arg(dir.join("storage"))
        .env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY")
        .env_remove("TBOT_REGISTRATION_SECRET");
    let output = cmd.output().unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        output.status.success(),
    )
}

/// The line of a doctor report about `area`.
pub(crate) fn doctor_line<'a>(report: &'a str, area: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(area))
        .unwrap_or_else(|| panic!("no {area} line: {report}"))
}

pub(crate) fn joined(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the join failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one `error:` line of a run that failed with `code`.
pub(crate) fn failed(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_owned()
}

/// Removes the bot identity from storage (not the client state, nor device keys' references
/// and TPM key files): the next join is a recovery.
pub(crate) fn forget_identity(storage: &Path) {
    for entry in std::fs::read_dir(storage).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !CLIENT_STATE.contains(&name.as_str())
            && name != "bkp_device_keys.json"
            && !name.starts_with("bkp_tpm_")
            && !name.starts_with(".keybound.lock")
        {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

/// `SHA256:...` of an `authorized_keys` file, as `ssh-keygen -l` prints it.
fn ssh_keygen_fingerprint(path: &Path) -> String {
    let out = run_ok(Command::new(tool("ssh-keygen")).arg("-lf").arg(path));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Whether the PEM private Ed25519 key `private_pem` is the key of the `ssh-ed25519` line
/// `line`: its public half by openssl (the last 32 bytes of the SubjectPublicKeyInfo) against the
/// end of the line's SSH wire blob.
fn openssl_agrees(private_pem: &Path, line: &str) -> bool {
    use base64::Engine as _;
    let out = run_ok(
        Command::new(tool("openssl"))
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(private_pem),
    );
    let blob = base64::engine::general_purpose::STANDARD
        .decode(line.split_whitespace().nth(1).unwrap())
        .unwrap();
    line.starts_with("ssh-ed25519 ") && out.stdout.ends_with(&blob[blob.len() - 32..])
}

#[test]
fn a_registration_secret_bot_rejoins_recovers_rotates_and_a_forged_state_locks_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    let created = create_bot_and_token(&cluster, dir.path(), "{}", "{mode: standard, limit: 5}");
    // The generated secret is shown once, by create; never by get.
    let secret = created
        .lines()
        .find_map(|l| {
            l.strip_prefix("Registration secret (shown only now; `get` does not show it): ")
        })
        .expect("create shows the generated secret")
        .to_owned();
    assert_eq!(secret.len(), 32);
    let shown = run_ok(&mut cluster.admin(&["get", "tokens/t"])).stdout;
    assert!(
        !String::from_utf8_lossy(&shown).contains(&secret),
        "get shows the secret"
    );
    let storage = dir.path().join("storage");
    std::fs::create_dir(&storage).unwrap();

    // A wrong secret: refused, one line with the fix, nothing made in storage.
    let error = failed(
        &oneshot(&cluster, dir.path(), &["--registration-secret", "nope"])
            .output()
            .unwrap(),
        77,
    );
    assert!(
        error.contains("a valid registration secret is required"),
        "{error}"
    );
    assert!(error.contains("tctl get token/NAME"), "{error}");

    // Registration: the cluster asks for a key first, keybound makes it in storage.
    let secret_file = write(dir.path(), "secret", &format!("{secret}\n"));
    let first = oneshot(
        &cluster,
        dir.path(),
        &["--registration-secret-path", secret_file.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(
        joined(&first).contains("unauthenticated"),
        "{}",
        joined(&first)
    );
    let status = token_status(&cluster);
    assert_eq!(status["recovery_count"], 1);
    let key_line = read(&storage.join("id_bkp.pub"));
    assert_eq!(
        key_line.trim(),
        status["bound_public_key"].as_str().unwrap()
    );
    assert!(openssl_agrees(&storage.join("id_bkp"), &key_line));
    let state = read(&storage.join("bkp_state"));
    assert_eq!(state.split('.').count(), 3, "a JWT, no newline: {state:?}");
    assert!(!state.ends_with('\n'));
    let mode = std::fs::metadata(storage.join("id_bkp")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // An authenticated rejoin: same instance, generation 2, the join state sent (the cluster
    // requires it after the first recovery, or it refuses).
    let second = joined(&oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(second.contains("authenticated rejoin"), "{second}");
    assert!(second.contains("generation:    2"), "{second}");
    assert_eq!(token_status(&cluster)["recovery_count"], 1);

    // A recovery: the identity gone, the client state kept.
    forget_identity(&storage);
    let third = joined(&oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(third.contains("unauthenticated"), "{third}");
    assert_eq!(token_status(&cluster)["recovery_count"], 2);

    // The admin asks for a rotation; the next join makes a new key and the cluster binds it.
    let old_key = key_line.trim().to_owned();
    let asked = run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    assert!(String::from_utf8_lossy(&asked.stdout).contains("rotate_after set to"));
    joined(&oneshot(&cluster, dir.path(), &[]).output().unwrap());
    let new_key = read(&storage.join("id_bkp.pub")).trim().to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(token_status(&cluster)["bound_public_key"], new_key.as_str());
    assert!(openssl_agrees(&storage.join("id_bkp"), &new_key));
    let history: serde_json::Value =
        serde_json::from_str(&read(&storage.join("bkp_key_history.json"))).unwrap();
    assert_eq!(
        history["entries"].as_array().unwrap().len(),
        2,
        "newest first, the old one kept"
    );
    let log = read(&cluster.log);
    assert!(
        log.contains("TBK002I") && log.contains("TBK001I"),
        "audit lines: {log}"
    );

    // The old key alone no longer joins: the cluster challenges the new one.
    let thief = dir.path().join("thief");
    std::fs::create_dir_all(thief.join("storage")).unwrap();
    let entries = history["entries"].as_array().unwrap();
    write(
        &thief.join("storage"),
        "id_bkp",
        entries[1]["private_key"].as_str().unwrap(),
    );
    std::fs::copy(storage.join("bkp_state"), thief.join("storage/bkp_state")).unwrap();
    let error = failed(&oneshot(&cluster, &thief, &[]).output().unwrap(), 77);
    assert!(error.contains("no matching key found"), "{error}");

    // The next join works.
    joined(&oneshot(&cluster, dir.path(), &[]).output().unwrap());

    // A tampered join state: refused, the token locked, the identity and outputs untouched.
    forged_state_locks_the_token(&cluster, dir.path(), || oneshot(&cluster, dir.path(), &[]));
    assert!(read(&cluster.log).contains("TBK003W"));
}

/// With the identity gone, a tampered `bkp_state` in `dir`'s storage: the join `run` starts is
/// refused with the admin's fix, the token locked, the outputs untouched; then even the real
/// state is refused by the lock (and put back).
pub(crate) fn forged_state_locks_the_token(
    cluster: &ClusterProcess,
    dir: &Path,
    run: impl Fn() -> Command,
) {
    let storage = dir.join("storage");
    forget_identity(&storage);
    let good_state = read(&storage.join("bkp_state"));
    let mut forged = good_state.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    std::fs::write(storage.join("bkp_state"), &forged).unwrap();
    let out_before = std::fs::read(dir.join("out/identity")).unwrap();
    let error = failed(&run().output().unwrap(), 77);
    assert!(error.contains("join state verification failed"), "{error}");
    assert!(error.contains("tctl rm lock/NAME"), "{error}");
    assert_eq!(std::fs::read(dir.join("out/identity")).unwrap(), out_before);
    let locks =
        String::from_utf8_lossy(&run_ok(&mut cluster.admin(&["ls", "locks"])).stdout).into_owned();
    assert!(locks.contains("failed to verify its join state"), "{locks}");
    // Even the real state is now refused by the lock.
    std::fs::write(storage.join("bkp_state"), &good_state).unwrap();
    let error = failed(&run().output().unwrap(), 77);
    assert!(error.contains("is in force"), "{error}");
}

#[test]
fn a_key_made_with_keypair_create_joins_until_the_recovery_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    let storage = dir.path().join("storage");
    std::fs::create_dir(&storage).unwrap();
    let create = || {
        let output = run_ok(
            keybound()
                .args(["keypair", "create", "--algorithm", "ed25519"])
                .args(["--format", "json", "--storage"])
                .arg(&storage),
        );
        let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        doc["public_key"].as_str().unwrap().to_owned()
    };
    let public = create();
    assert_eq!(read(&storage.join("id_bkp.pub")).trim(), public);
    // Again without --overwrite: the key is kept.
    assert_eq!(create(), public);

    create_bot_and_token(
        &cluster,
        dir.path(),
        &format!("{{initial_public_key: '{public}'}}"),
        "{mode: standard, limit: 1}",
    );
    // doctor knows standard mode: the key in storage, no static key opened.
    let (report, passed) = doctor(&cluster, dir.path());
    assert!(passed, "{report}");
    let keys = doctor_line(&report, "keys");
    assert!(keys.starts_with("ok"), "{keys}");
    assert!(
        keys.contains(&ssh_keygen_fingerprint(&storage.join("id_bkp.pub")))
            && keys.contains("no join state yet"),
        "{keys}"
    );
    assert!(!report.contains("signer"), "{report}");

    let first = oneshot(&cluster, dir.path(), &[]).output().unwrap();
    joined(&first);
    let log = String::from_utf8_lossy(&first.stderr);
    assert!(
        log.contains("no bot identity yet; joining with the bound keypair in storage"),
        "{log}"
    );
    assert!(!log.contains("joining with the static key"), "{log}");
    let (report, _) = doctor(&cluster, dir.path());
    let keys = doctor_line(&report, "keys");
    assert!(
        keys.contains("a join state (recovery 1, bot instance "),
        "{keys}"
    );
    let out_before = std::fs::read(dir.path().join("out/identity")).unwrap();
    forget_identity(&storage);
    let error = failed(&oneshot(&cluster, dir.path(), &[]).output().unwrap(), 77);
    assert!(error.contains("no rejoins remaining"), "{error}");
    assert!(error.contains("recovery.limit"), "{error}");
    assert_eq!(
        std::fs::read(dir.path().join("out/identity")).unwrap(),
        out_before
    );

    // Without a key or a secret, the error says what to do.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("storage")).unwrap();
    let error = failed(&oneshot(&cluster, &empty, &[]).output().unwrap(), 78);
    assert!(
        error.contains("keybound keypair create --storage"),
        "{error}"
    );
    let (report, passed) = doctor(&cluster, &empty);
    assert!(!passed);
    let keys = doctor_line(&report, "keys");
    assert!(
        keys.starts_with("FAIL") && keys.contains("fix: run keybound keypair create --storage"),
        "{keys}"
    );
}

#[test]
fn a_crash_after_the_new_key_or_after_the_result_does_not_lose_the_bound_key() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    create_bot_and_token(
        &cluster,
        dir.path(),
        "{registration_secret: s3cret}",
        "{mode: relaxed}",
    );
    std::fs::create_dir(dir.path().join("storage")).unwrap();
    let storage = dir.path().join("storage");

    // Killed after the registration's key is stored, before the cluster hears of it.
    let crashed = oneshot(&cluster, dir.path(), &["--registration-secret", "s3cret"])
        .env("KEYBOUND_TEST_FAULT", "after-new-key")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    assert!(
        token_status(&cluster).get("bound_public_key").is_none(),
        "nothing committed"
    );
    joined(
        &oneshot(&cluster, dir.path(), &["--registration-secret", "s3cret"])
            .output()
            .unwrap(),
    );

    // Killed after a rotation's result arrived, before the client state was written: the
    // cluster binds a key found only in the history, and an old join state it still accepts
    // after a soft rejoin; the next run recovers without an admin.
    run_ok(&mut cluster.admin(&["request-rotation", "t"]));
    let before = read(&storage.join("id_bkp.pub"));
    let crashed = oneshot(&cluster, dir.path(), &[])
        .env("KEYBOUND_TEST_FAULT", "after-result")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let bound = token_status(&cluster)["bound_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(bound, before.trim(), "the cluster committed the rotation");
    assert_eq!(
        read(&storage.join("id_bkp.pub")),
        before,
        "the client state was not written"
    );
    let after = joined(&oneshot(&cluster, dir.path(), &[]).output().unwrap());
    assert!(
        after.contains("unauthenticated"),
        "a recovery, as the rejoin was left in doubt: {after}"
    );
    assert_eq!(read(&storage.join("id_bkp.pub")).trim(), bound);
    let locks =
        String::from_utf8_lossy(&run_ok(&mut cluster.admin(&["ls", "locks"])).stdout).into_owned();
    assert!(!locks.contains("join_token"), "no lock: {locks}");
}

/// Killed after a recovery's result arrived, before the client state was written: the cluster
/// counted the recovery, so the join state in storage is one recovery behind. Teleport's
/// protocol gives the client no way back; the next join is refused and the token locked, and
/// the error names the admin's steps, which this test then takes.
#[test]
fn a_crash_after_a_recoverys_result_needs_the_admins_one_insecure_join() {
    let dir = tempfile::tempdir().unwrap();
    recovery_result_lost_then_the_admins_steps(dir.path(), &|cluster, extra| {
        oneshot(cluster, dir.path(), extra)
    });
}

/// The steps of the test above, each join started by `run` (file keys, or keys in a device);
/// the cluster, for whatever the caller checks after.
pub(crate) fn recovery_result_lost_then_the_admins_steps(
    dir: &Path,
    run: &dyn Fn(&ClusterProcess, &[&str]) -> Command,
) -> ClusterProcess {
    let (cluster, storage) = with_secret_token(dir, "{mode: standard, limit: 10}");
    joined(
        &run(&cluster, &["--registration-secret", "s3cret"])
            .output()
            .unwrap(),
    );
    let state_before = read(&storage.join("bkp_state"));

    forget_identity(&storage);
    let crashed = run(&cluster, &[])
        .env("KEYBOUND_TEST_FAULT", "after-result")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    assert_eq!(token_status(&cluster)["recovery_count"], 2, "committed");
    assert_eq!(read(&storage.join("bkp_state")), state_before, "not stored");

    let error = failed(&run(&cluster, &[]).output().unwrap(), 77);
    assert!(error.contains("join state verification failed"), "{error}");
    assert!(error.contains("tctl rm lock/NAME"), "{error}");
    assert!(
        error.contains("recovery.mode insecure for one join"),
        "{error}"
    );
    assert_eq!(token_status(&cluster)["recovery_count"], 2);

    // The admin's steps: remove the lock, one join in insecure mode (a get round trip keeps
    // the status), then standard again; the bot joins at each step.
    let locks = run_ok(&mut cluster.admin(&["get", "locks", "--format", "json"])).stdout;
    let locks: serde_json::Value = serde_json::from_slice(&locks).unwrap();
    let name = locks[0]["metadata"]["name"].as_str().unwrap().to_owned();
    run_ok(&mut cluster.admin(&["rm", &format!("locks/{name}")]));
    let set_mode = |mode: &str| {
        let shown = run_ok(&mut cluster.admin(&["get", "tokens/t", "--format", "json"])).stdout;
        let mut token: serde_json::Value = serde_json::from_slice(&shown).unwrap();
        token["spec"]["bound_keypair"]["recovery"]["mode"] = mode.into();
        let file = write(dir, "edited.json", &token.to_string());
        let args: [&std::ffi::OsStr; 3] = ["create".as_ref(), "-f".as_ref(), file.as_os_str()];
        run_ok(&mut cluster.admin(&args));
    };
    set_mode("insecure");
    joined(&run(&cluster, &[]).output().unwrap());
    set_mode("standard");
    forget_identity(&storage);
    joined(&run(&cluster, &[]).output().unwrap());
    assert_eq!(token_status(&cluster)["recovery_count"], 4);
    cluster
}
