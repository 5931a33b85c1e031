//! The recipes in docs/recipes/, checked here: the GitHub Actions job's script joins a dev
//! cluster with a SoftHSM key, the workflow gives the script what it needs, the systemd unit
//! passes `systemd-analyze verify` and scores well in `systemd-analyze security`, and the
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
