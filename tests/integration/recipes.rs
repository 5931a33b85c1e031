//! The recipes in docs/recipes/, checked here: the GitHub Actions job's script joins a dev
//! cluster with a SoftHSM key, the workflow gives the script what it needs, the systemd unit
//! passes `systemd-analyze verify` and scores well in `systemd-analyze security`, the systemd
//! recipe's steps run as written in a throwaway root and the unit then joins, and the
//! Dockerfile's runtime stage installs every library the binary links. (The image itself is not
//! built here: there is no container engine.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use keybound::cli::Cli;

use crate::cluster::{ca_file, cluster_for};
use crate::pkcs11::{Hsm, PIN};
use crate::support::{assert_output_verifies, run_ok, stdout, tool};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_github_actions_script_joins_with_a_softhsm_key() {
    let hsm = Hsm::new("ci");
    let key = hsm.create_key("bound-key", "ecdsa-p256");
    let cluster = cluster_for(&key, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&cluster, dir.path());
    let out = dir.path().join("machine-id");
    let github_env = dir.path().join("github-env");

    // The environment the workflow gives the step, and nothing of the test's own.
    let script = |pin: Option<&str>| {
        let mut cmd = Command::new(tool("bash"));
        cmd.arg(repo("scripts/ci-softhsm-recipe.sh"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("KEYBOUND", env!("CARGO_BIN_EXE_keybound"))
            .env("TELEPORT_PROXY", cluster.proxy_addr())
            .env("TELEPORT_BOT_TOKEN", "t")
            .env("PKCS11_URI", hsm.uri("bound-key"))
            .env("SOFTHSM2_CONF", &hsm.conf)
            .env("CA_PATH", &ca)
            .env("OUT_DIR", &out)
            .env("GITHUB_ENV", &github_env)
            .env("TSS2_LOG", "all+NONE");
        if let Some(pin) = pin {
            cmd.env("HSM_PIN", pin);
        }
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };

    // Without the PIN secret: a clear error, and no attempt to join.
    let output = script(None).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HSM_PIN is not set"), "{stderr}");
    assert_eq!(cluster.cluster.solutions_received(), 0);

    let output = script(Some(PIN)).await;
    let text = stdout(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}\n{stderr}");
    assert!(
        text.contains("ok   signer  pkcs11 pkcs11:token=ci;object=bound-key")
            && text.contains("non-exportable"),
        "doctor ran first: {text}"
    );
    assert!(
        text.contains("Joined cluster dev.keybound.test as bot \"robot\""),
        "{text}"
    );
    assert!(!text.contains(PIN) && !stderr.contains(PIN));
    assert_eq!(cluster.cluster.joins_completed(), 1);

    let exported = std::fs::read_to_string(&github_env).unwrap();
    assert!(
        exported.contains(&format!(
            "TELEPORT_IDENTITY_FILE={}\n",
            out.join("identity").display()
        )),
        "{exported}"
    );
    assert_output_verifies(&out);
}

#[test]
fn the_workflow_runs_the_script_with_everything_it_needs() {
    let workflow: serde_yaml::Value =
        serde_yaml::from_str(&read("docs/recipes/github-actions.yml")).unwrap();
    let jobs = workflow["jobs"].as_mapping().unwrap();
    assert_eq!(jobs.len(), 1);
    let job = jobs.values().next().unwrap();
    let step = job["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["run"].as_str() == Some("scripts/ci-softhsm-recipe.sh"))
        .expect("a step runs scripts/ci-softhsm-recipe.sh");
    let env = |name: &str| {
        step["env"]
            .get(name)
            .or_else(|| job["env"].get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    // What the script refuses to run without, and SoftHSM's store.
    for name in [
        "TELEPORT_PROXY",
        "TELEPORT_BOT_TOKEN",
        "PKCS11_URI",
        "HSM_PIN",
        "SOFTHSM2_CONF",
    ] {
        assert!(env(name).is_some(), "{name} is not set for the step");
        assert!(
            read("scripts/ci-softhsm-recipe.sh").contains(name),
            "the script does not read {name}"
        );
    }
    assert!(env("HSM_PIN").unwrap().contains("secrets."));
    // The step after it uses what the script exports.
    let later = serde_yaml::to_string(&job["steps"]).unwrap();
    assert!(later.contains("$MACHINE_ID_DIR/tlscert"));
}

/// The unit with ExecStart pointing at the binary under test (verify checks it exists), and
/// MANPATH holding keybound's generated pages (verify runs `man` for Documentation=).
fn unit_under_test(dir: &Path) -> (PathBuf, PathBuf) {
    let unit = read("docs/recipes/keybound.service")
        .replace("/usr/local/bin/keybound", env!("CARGO_BIN_EXE_keybound"));
    let path = dir.join("keybound.service");
    std::fs::write(&path, unit).unwrap();
    let man = dir.join("man");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_keybound"))
            .args(["man", "--out-dir"])
            .arg(man.join("man1")),
    );
    (path, man)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let (unit, man) = unit_under_test(dir.path());
    let verify = Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success() && said.is_empty(), "{said}");

    let security = stdout(&run_ok(
        Command::new(tool("systemd-analyze"))
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
    ));
    let level = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for keybound.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    // 0 is a sandbox with nothing, 10 no hardening at all; keybound needs the network.
    assert!(level <= 1.5, "exposure {level}:\n{security}");

    // The command lines the unit runs are ones keybound accepts.
    let text = read("docs/recipes/keybound.service");
    for line in text.lines().filter(|l| l.starts_with("ExecStart=")) {
        let argv = line["ExecStart=".len()..].split_whitespace();
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

/// Removes the throwaway service user when the test ends, however it ends.
struct ThrowawayUser(String);

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The systemd recipe's steps, run as written by `scripts/check-systemd-recipe.sh` (which reads
/// them from docs/recipes/README.md) in a throwaway root as a throwaway user: the user, the
/// directories, the PIN files, the SoftHSM store and the key made as that user, tbot.yaml, and
/// doctor. Then the unit's own command line, as its user with its environment, joins a dev
/// cluster with the key; the outputs are that user's, 0600, and verify with openssl. Nothing
/// outside the throwaway root changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_recipe_runs_as_written_in_a_throwaway_root() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test runs the recipe's steps as root (useradd, runuser), as CI does"
    );
    let system_paths = [
        "/etc/keybound",
        "/etc/systemd/system/keybound.service",
        "/var/lib/keybound",
        "/opt/machine-id",
        "/usr/local/bin/keybound",
    ];
    let before: Vec<bool> = system_paths.iter().map(|p| Path::new(p).exists()).collect();

    // A cluster to answer keypair create's suite question; the token comes once the key exists.
    let placeholder =
        keybound_signer_soft::SoftSigner::generate(keybound_signer::Algorithm::Ed25519).unwrap();
    let cluster = cluster_for(keybound_signer::Signer::public_key(&placeholder), |_| {}).await;
    let root = tempfile::tempdir().unwrap();
    // The service user must reach into the root, as it reaches / on a real machine.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = ca_file(&cluster, root.path());
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let user = ThrowawayUser(format!(
        "kbt{:08x}",
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    ));
    let check = |mode: &str, args: Vec<String>| {
        let mut cmd = Command::new(tool("bash"));
        cmd.arg(repo("scripts/check-systemd-recipe.sh"))
            .arg(mode)
            .arg(root.path())
            .arg(&user.0)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("SSL_CERT_FILE", &ca);
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };

    let steps = check(
        "steps",
        vec![
            env!("CARGO_BIN_EXE_keybound").to_owned(),
            cluster.proxy_addr(),
        ],
    )
    .await;
    let printed = stdout(&steps);
    let stderr = String::from_utf8_lossy(&steps.stderr);
    assert!(steps.status.success(), "{printed}\n{stderr}");
    // Step 7's doctor passed, as the service user, with the configuration the unit uses.
    assert!(
        printed.contains("ok   signer  pkcs11 pkcs11:token=agent;object=bound-key")
            && printed.contains("non-exportable"),
        "{printed}"
    );
    assert!(
        printed.contains("skipped, systemd is not PID 1 here:"),
        "{printed}"
    );
    let uid = |path: &Path| std::fs::metadata(path).unwrap().uid();
    let user_uid = uid(&root.path().join("var/lib/keybound"));
    assert_ne!(user_uid, 0);
    for (path, owner, mode) in [
        ("etc/keybound/hsm.pin", user_uid, 0o600),
        ("etc/keybound/hsm-so.pin", 0, 0o600),
        ("var/lib/keybound", user_uid, 0o700),
        ("var/lib/keybound/softhsm/softhsm2.conf", user_uid, 0o644),
        ("opt/machine-id", user_uid, 0o700),
        ("etc/systemd/system/keybound.service", 0, 0o644),
    ] {
        let meta = std::fs::metadata(root.path().join(path)).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (owner, mode), "{path}");
    }

    // The admin's step 7 on the cluster: the token names the key that step 5 made and printed.
    let key = printed
        .lines()
        .find_map(|l| keybound_signer::PublicKey::from_openssh(l.trim()).ok())
        .unwrap_or_else(|| panic!("no public key printed:\n{printed}"));
    cluster.cluster.put_token(crate::cluster::token(
        "example-token",
        &key,
        "insecure",
        1,
        "",
    ));

    // The unit's ExecStart, as systemd would run it; --oneshot so it ends after one join.
    let run = check("unit", vec!["--oneshot".to_owned()]).await;
    let text = stdout(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{text}\n{stderr}");
    assert!(
        text.contains("Joined cluster dev.keybound.test as bot \"robot\"")
            && text.contains("signer pkcs11 pkcs11:token=agent;object=bound-key"),
        "{text}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in the journal: {stderr:?}"
    );
    let out = root.path().join("opt/machine-id");
    for file in ["tlscert", "key", "identity"] {
        let meta = std::fs::metadata(out.join(file)).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (user_uid, 0o600),
            "{file}"
        );
    }
    assert_eq!(uid(&root.path().join("var/lib/keybound/bot")), user_uid);
    assert_output_verifies(&out);

    let after: Vec<bool> = system_paths.iter().map(|p| Path::new(p).exists()).collect();
    assert_eq!(
        before, after,
        "the recipe reached outside the throwaway root"
    );
}

#[test]
fn the_dockerfile_runs_keybound_and_installs_the_libraries_it_links() {
    let dockerfile = read("docs/recipes/Dockerfile");
    let runtime = dockerfile.split("\nFROM ").last().expect("a runtime stage");
    // The packages the runtime stage installs, each known to Debian 12's apt.
    let install = runtime
        .split("apt-get install")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap();
    let packages: BTreeSet<String> = install
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "\\")
        .map(str::to_owned)
        .collect();
    assert!(packages.contains("ca-certificates"), "{packages:?}");
    let mut provided = packages.clone();
    provided.extend(["libc6".to_owned(), "libgcc-s1".to_owned()]);
    for package in &packages {
        let depends = stdout(&run_ok(
            Command::new(tool("apt-cache"))
                .args(["depends", "--no-recommends", "--no-suggests"])
                .arg(package),
        ));
        provided.extend(
            depends
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .map(|p| p.trim_matches(|c| c == '<' || c == '>').to_owned()),
        );
    }
    // Every shared library the binary links comes from one of them.
    let linked = stdout(&run_ok(
        Command::new(tool("ldd")).arg(env!("CARGO_BIN_EXE_keybound")),
    ));
    for library in linked.lines().filter_map(|l| l.split(" => ").nth(1)) {
        let Some(path) = library.split_whitespace().next() else {
            continue;
        };
        let real = std::fs::canonicalize(path).unwrap();
        let owner = Command::new(tool("dpkg"))
            .arg("-S")
            .arg(&real)
            .output()
            .unwrap();
        let owner = String::from_utf8_lossy(&owner.stdout);
        // usrmerge: dpkg knows libc under /lib, not /usr/lib; those are in the base image.
        let Some(package) = owner.split(':').next().filter(|p| !p.is_empty()) else {
            continue;
        };
        assert!(
            provided.contains(package),
            "{} comes from {package}, which the runtime stage does not install",
            real.display()
        );
    }

    // ENTRYPOINT + CMD is a command line keybound accepts.
    let cmd = runtime
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    Cli::try_parse_from(std::iter::once("keybound".to_owned()).chain(cmd)).unwrap();
}
