//! The dev cluster's admin side, as the seed guide's `tctl` steps use it: `keybound dev-cluster
//! create/get/ls/rm/lock/status` against `keybound dev-cluster` running as a process of its own,
//! with joins by `keybound start --oneshot` in between and no restart anywhere.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::key_file;
use crate::cluster_process::ClusterProcess;
use crate::support::{keybound, run_err, run_ok, stdout, tool};

/// A bot and its token for `key`, in the seed guide's YAML (steps 2 and 3).
fn bot_and_token(bot: &str, token: &str, key: &SoftSigner) -> String {
    format!(
        "kind: bot\nversion: v1\nmetadata:\n  name: {bot}\nspec:\n  roles: []\n---\nkind: token\nmetadata:\n  name: {token}\nspec:\n  bot_name: {bot}\n  bound_keypair:\n    onboarding:\n      initial_public_key: {}\n    recovery:\n      limit: 0\n      mode: insecure\n  join_method: bound_keypair\n  roles:\n  - Bot\nversion: v2\n",
        key.public_key().to_openssh()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `keybound start --oneshot` with the token and key, keeping the bot's identity in `storage`.
fn oneshot(cluster: &ClusterProcess, token: &str, key: &Path, storage: &Path) -> Output {
    keybound()
        .args(["start", "--oneshot", "--join-method", "bound_keypair"])
        .args(["--proxy-server", &cluster.proxy, "--token", token])
        .arg("--ca-path")
        .arg(&cluster.ca)
        .arg("--static-key-path")
        .arg(key)
        .arg("--data-dir")
        .arg(storage)
        .output()
        .unwrap()
}

/// The one `error:` line of a join the cluster refused (exit 77).
fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(77), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_owned()
}

fn joined(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the join failed: {stderr}");
    stdout(output)
}

/// `get KIND/NAME --format json`.
fn get_json(cluster: &ClusterProcess, resource: &str) -> serde_json::Value {
    let output = run_ok(&mut cluster.admin(&["get", resource, "--format", "json"]));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn every_kind_is_created_shown_listed_and_removed_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    let key = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let all = format!(
        "{}---\nkind: role\nversion: v7\nmetadata:\n  name: access\nspec:\n  allow:\n    logins: [root, ci]\n---\nkind: lock\nversion: v2\nmetadata:\n  name: maintenance\nspec:\n  target:\n    role: access\n  message: down for maintenance\n",
        bot_and_token("example", "example-token", &key)
    );
    let file = write(dir.path(), "all.yaml", &all);
    let created = stdout(&run_ok(cluster.admin(&["create"]).arg(&file)));
    assert_eq!(
        created,
        "token \"example-token\" has been created\nbot \"example\" has been created\nrole \"access\" has been created\nlock \"maintenance\" has been created\n"
    );

    // tctl get: each as Teleport's YAML shows it, what create takes back.
    let token = get_json(&cluster, "tokens/example-token");
    assert_eq!(token["spec"]["bot_name"], "example");
    assert_eq!(
        token["spec"]["bound_keypair"]["onboarding"]["initial_public_key"],
        key.public_key().to_openssh()
    );
    assert_eq!(token["status"]["bound_keypair"]["recovery_count"], 0);
    assert_eq!(
        get_json(&cluster, "bot/example")["spec"]["roles"],
        serde_json::json!([])
    );
    assert_eq!(
        get_json(&cluster, "roles/access")["spec"]["allow"]["logins"],
        serde_json::json!(["root", "ci"])
    );
    let lock = get_json(&cluster, "locks/maintenance");
    assert_eq!(lock["spec"]["target"]["role"], "access");
    assert_eq!(lock["spec"]["message"], "down for maintenance");
    let yaml = stdout(&run_ok(
        &mut cluster.admin(&["get", "tokens/example-token"]),
    ));
    let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(parsed["metadata"]["name"].as_str(), Some("example-token"));
    // The bot's role comes with the bot, as tctl bots add makes it.
    let roles = stdout(&run_ok(&mut cluster.admin(&["get", "roles"])));
    assert_eq!(roles.matches("kind: role").count(), 2, "{roles}");
    assert!(roles.contains("name: bot-example"), "{roles}");

    // ls: one line each.
    let tokens = stdout(&run_ok(&mut cluster.admin(&["ls", "tokens"])));
    assert!(
        tokens
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("example-token  example  bound_keypair  0/0 insecure"),
        "{tokens}"
    );
    let locks = stdout(&run_ok(&mut cluster.admin(&["list", "locks"])));
    assert!(
        locks.contains("role=access") && locks.contains("down for maintenance"),
        "{locks}"
    );
    let status = stdout(&run_ok(&mut cluster.admin(&["status"])));
    assert!(
        status.contains("1 tokens, 1 bots, 2 roles, 1 locks"),
        "{status}"
    );
    assert!(status.contains(&cluster.proxy), "{status}");

    // Created twice: refused, nothing changes; -f replaces, and a `get` round trip is a
    // tctl edit.
    let again = run_err(cluster.admin(&["create"]).arg(&file));
    assert_eq!(
        again,
        "error: token \"example-token\" already exists; create -f replaces it"
    );
    let shown = write(dir.path(), "shown.yaml", &yaml);
    let replaced = stdout(&run_ok(cluster.admin(&["create", "-f"]).arg(&shown)));
    assert_eq!(replaced, "token \"example-token\" has been updated\n");

    // tctl rm, each kind; then they are gone.
    for resource in [
        "tokens/example-token",
        "bots/example",
        "roles/access",
        "locks/maintenance",
    ] {
        let removed = stdout(&run_ok(&mut cluster.admin(&["rm", resource])));
        assert!(removed.ends_with("has been deleted\n"), "{removed}");
        let gone = run_err(&mut cluster.admin(&["get", resource]));
        assert!(gone.ends_with("not found"), "{gone}");
    }
    for kind in ["tokens", "bots", "roles", "locks"] {
        let empty = stdout(&run_ok(&mut cluster.admin(&["ls", kind])));
        assert_eq!(empty, format!("no {kind}\n"));
    }

    // Bad input: one line naming the file or what to type.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "kind: token\nversion: v3\nmetadata: {name: x}\nspec: {}\n",
    );
    let error = run_err(cluster.admin(&["create"]).arg(&bad));
    assert!(
        error.contains("bad.yaml") && error.contains("version \"v3\" is not v2"),
        "{error}"
    );
    let error = run_err(&mut cluster.admin(&["rm", "tokens"]));
    assert!(
        error.contains("rm takes KIND/NAME, e.g. tokens/NAME"),
        "{error}"
    );
    let error = run_err(&mut cluster.admin(&["get", "users/alice"]));
    assert!(error.contains("unknown resource kind \"users\""), "{error}");
    cluster.stop();
}

#[test]
fn a_token_created_at_run_time_joins_and_a_removed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    // Before the token exists, the join is refused; created while it runs, it joins.
    let storage = dir.path().join("storage");
    let before = refused(&oneshot(&cluster, "example-token", &key, &storage));
    assert!(before.contains("token expired or not found"), "{before}");
    let file = write(
        dir.path(),
        "token.yaml",
        &bot_and_token("example", "example-token", &signer),
    );
    run_ok(cluster.admin(&["create", "-f"]).arg(&file));
    let summary = joined(&oneshot(&cluster, "example-token", &key, &storage));
    assert!(summary.contains("as bot \"example\""), "{summary}");

    run_ok(&mut cluster.admin(&["rm", "token/example-token"]));
    let fresh = dir.path().join("fresh-storage");
    let after = refused(&oneshot(&cluster, "example-token", &key, &fresh));
    assert!(after.contains("token expired or not found"), "{after}");
}

#[test]
fn a_lock_made_at_run_time_refuses_the_bot_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    let resources = write(
        dir.path(),
        "bot.yaml",
        &bot_and_token("example", "example-token", &signer),
    );
    let cluster = ClusterProcess::start(
        dir.path(),
        &[OsStr::new("--resources"), resources.as_os_str()],
    );
    let storage = dir.path().join("storage");
    joined(&oneshot(&cluster, "example-token", &key, &storage));

    // tctl lock --join-token: the next join is refused with the lock's words.
    let locked = stdout(&run_ok(&mut cluster.admin(&[
        "lock",
        "--join-token",
        "example-token",
        "--message",
        "key under review",
    ])));
    let name = locked
        .strip_prefix("Created a lock with name \"")
        .and_then(|rest| rest.strip_suffix("\".\n"))
        .unwrap_or_else(|| panic!("{locked}"));
    let error = refused(&oneshot(&cluster, "example-token", &key, &storage));
    assert!(
        error.contains("lock targeting JoinToken:\"example-token\" is in force: key under review"),
        "{error}"
    );
    run_ok(&mut cluster.admin(&["rm", &format!("locks/{name}")]));
    joined(&oneshot(&cluster, "example-token", &key, &storage));

    // A lock on the bot's user, from YAML (tctl create): refused, then back once removed.
    let lock = write(
        dir.path(),
        "lock.yaml",
        "kind: lock\nversion: v2\nmetadata:\n  name: bot-lock\nspec:\n  target:\n    user: bot-example\n  message: stolen laptop\n",
    );
    run_ok(cluster.admin(&["create"]).arg(&lock));
    let error = refused(&oneshot(&cluster, "example-token", &key, &storage));
    assert!(
        error.contains("lock targeting User:\"bot-example\" is in force: stolen laptop"),
        "{error}"
    );
    run_ok(&mut cluster.admin(&["rm", "locks/bot-lock"]));
    joined(&oneshot(&cluster, "example-token", &key, &storage));
}

#[test]
fn a_stored_identity_survives_what_the_admin_changes_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    let file = write(
        dir.path(),
        "bot.yaml",
        &bot_and_token("example", "example-token", &signer),
    );
    run_ok(cluster.admin(&["create"]).arg(&file));
    let storage = dir.path().join("storage");
    joined(&oneshot(&cluster, "example-token", &key, &storage));
    let first = get_json(&cluster, "tokens/example-token")["status"]["bound_keypair"].clone();
    assert_eq!(first["recovery_count"], 1);

    // An access guide's steps, later: a role, the bot allowed to impersonate it, an output.
    // Before, each meant a restart, and the restarted cluster had never seen the stored identity.
    let access = write(
        dir.path(),
        "access.yaml",
        "kind: role\nversion: v7\nmetadata:\n  name: access\nspec:\n  allow:\n    logins: [ci]\n---\nkind: bot\nversion: v1\nmetadata:\n  name: example\nspec:\n  roles: [access]\n",
    );
    let changed = stdout(&run_ok(cluster.admin(&["create", "-f"]).arg(&access)));
    assert_eq!(
        changed,
        "bot \"example\" has been updated\nrole \"access\" has been created\n"
    );
    let out = dir.path().join("out");
    let config = write(
        dir.path(),
        "tbot.yaml",
        &format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: example-token\n  ca_path: {}\n  bound_keypair:\n    static_private_key_path: {}\nstorage:\n  type: directory\n  path: {}\nservices:\n  - type: identity\n    roles: [access]\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy,
            cluster.ca.display(),
            key.display(),
            storage.display(),
            out.display()
        ),
    );
    let summary = joined(
        &keybound()
            .args(["start", "--oneshot", "-c"])
            .arg(&config)
            .output()
            .unwrap(),
    );
    assert!(summary.contains("authenticated rejoin"), "{summary}");
    assert!(summary.contains("generation:    2"), "{summary}");
    assert!(summary.contains("(identity: access)"), "{summary}");
    let logins = run_ok(
        Command::new(tool("ssh-keygen"))
            .arg("-L")
            .arg("-f")
            .arg(out.join("key-cert.pub")),
    );
    assert!(stdout(&logins).contains("ci"), "{}", stdout(&logins));
    // The same bot instance, and no recovery used.
    let now = get_json(&cluster, "tokens/example-token")["status"]["bound_keypair"].clone();
    assert_eq!(now["bound_bot_instance_id"], first["bound_bot_instance_id"]);
    assert_eq!(now["recovery_count"], 1);
}

#[test]
fn without_admin_socket_the_one_running_cluster_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let env = [("XDG_RUNTIME_DIR", runtime.as_os_str())];
    let start = |name: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        ClusterProcess::start_with::<&str>(&sub, &[], &env)
    };
    let admin = |args: &[&str]| {
        let mut cmd = keybound();
        cmd.arg("dev-cluster").args(args).envs(env);
        cmd
    };
    let one = start("one");
    let sockets = runtime.join("keybound-dev-cluster");
    let port = one.proxy.rsplit(':').next().unwrap();
    assert_eq!(one.admin_socket, sockets.join(format!("{port}.sock")));
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&sockets), 0o700);
    assert_eq!(mode(&one.admin_socket), 0o600);
    let status = stdout(&run_ok(&mut admin(&["status"])));
    assert!(status.contains(&one.proxy), "{status}");

    let two = start("two");
    let error = run_err(&mut admin(&["status"]));
    assert!(
        error.contains("2 dev clusters are running") && error.contains("--admin-socket"),
        "{error}"
    );
    two.stop();
    let (socket, proxy) = (one.admin_socket.clone(), one.proxy.clone());
    assert!(stdout(&run_ok(&mut admin(&["status"]))).contains(&proxy));
    one.stop();
    assert!(!socket.exists(), "a stopped dev cluster removes its socket");
    let error = run_err(&mut admin(&["ls", "tokens"]));
    assert!(
        error.contains("no dev cluster of yours is running"),
        "{error}"
    );

    // A directory others may enter is not trusted.
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o755)).unwrap();
    let error = run_err(&mut admin(&["status"]));
    assert!(
        error.contains("is open to other users (mode 755)"),
        "{error}"
    );
}

#[test]
fn the_admin_socket_refuses_other_users() {
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test runs the admin client as the user nobody (setpriv), as root does in CI"
    );
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start::<&str>(dir.path(), &[]);
    let as_nobody = |program: &Path| {
        let mut cmd = Command::new(tool("setpriv"));
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        cmd
    };
    let keybound_bin = Path::new(env!("CARGO_BIN_EXE_keybound"));
    let status_as_nobody = || {
        let mut cmd = as_nobody(keybound_bin);
        cmd.args(["dev-cluster", "status", "--admin-socket"])
            .arg(&cluster.admin_socket);
        cmd
    };
    // The socket is 0600 in a directory only root may enter: nobody cannot even connect.
    let error = run_err(&mut status_as_nobody());
    assert!(error.contains("permission denied"), "{error}");

    // Opened up by mistake, the socket still serves only its user: the server reads the
    // client's user from the socket (curl, not keybound, speaks to it here).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(
        &cluster.admin_socket,
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let curl = as_nobody(&tool("curl"))
        .args([
            "--silent",
            "--show-error",
            "--write-out",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(&cluster.admin_socket)
        .arg("http://dev-cluster/v1/tokens")
        .output()
        .unwrap();
    let answer = stdout(&curl);
    assert!(
        answer.ends_with("\n403") && answer.contains("serves only uid 0, the user running it"),
        "{answer}"
    );
    // keybound's client, for its part, will not talk to a socket another user serves.
    let error = run_err(&mut status_as_nobody());
    assert!(error.contains("is served by uid 0, not by you"), "{error}");
    // Root, the cluster's user, is served as before.
    run_ok(&mut cluster.admin(&["status"]));
}

/// The README's quick start by hand, as written (its port changed to a free one): the dev
/// cluster in one shell, the guide's steps in another, with `keybound` on the PATH and a
/// runtime directory of the test's own.
#[test]
fn the_readmes_quick_start_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(block, _)| block))
        .collect();
    let at = blocks
        .iter()
        .position(|b| b.starts_with("keybound dev-cluster --listen 127.0.0.1:3080"))
        .expect("the README's quick start starts a dev cluster on 127.0.0.1:3080");
    let port = crate::support::free_port().to_string();
    let (serve, steps) = (
        blocks[at].replace("3080", &port),
        blocks[at + 1].replace("3080", &port),
    );
    assert!(
        steps.contains("keybound dev-cluster create -f token.yaml"),
        "{steps}"
    );

    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_keybound")).parent().unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin.to_owned())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let shell = |script: &str| {
        let mut cmd = Command::new(tool("bash"));
        cmd.args(["-euo", "pipefail", "-c", script])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY")
            .env_remove("RUST_LOG");
        cmd
    };
    let cluster = ClusterProcess::spawn(
        shell(&format!("exec {serve}")),
        dir.path().join("ca.pem"),
        dir.path().join("dev-cluster.log"),
    );
    let output = run_ok(&mut shell(&steps));
    let printed = stdout(&output);
    assert!(
        printed.contains("Joined cluster dev.keybound.test as bot \"example\""),
        "{printed}"
    );
    assert!(
        printed.contains("token \"example-token\" has been created"),
        "{printed}"
    );
    let listed = printed.lines().last().unwrap_or_default();
    assert!(
        listed.starts_with("example-token  example  bound_keypair  1/0 insecure"),
        "{printed}"
    );
    cluster.stop();
}
