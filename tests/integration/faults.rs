//! Faults in what keybound writes to: an output directory that turns read-only or fills up, made
//! real with a private mount namespace (`unshare -m`: a read-only bind mount, a small tmpfs), so
//! nothing outside the test process changes. keybound must fail with one clear line, leave the
//! previous identity byte for byte, and leave no staged file behind.
//!
//! `unshare` and `mount` need root (CAP_SYS_ADMIN), which `make test` has; without it these tests
//! fail, naming what is missing.

use std::path::Path;
use std::process::{Command, Output};

use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{ca_file, cluster_for, key_file, tbot_yaml};
use crate::support::{snapshot, tool};

/// Runs `script` with `sh` in a private mount namespace, the keybound binary in `$KEYBOUND`.
async fn in_namespace(script: String) -> Output {
    let mut cmd = Command::new(tool("unshare"));
    cmd.args(["--mount", "--propagation", "private", "sh", "-euc", &script])
        .env("KEYBOUND", env!("CARGO_BIN_EXE_keybound"))
        .env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// The one `error:` line of keybound's stderr.
fn error_line(stderr: &str) -> String {
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_or_full_output_directory_leaves_the_previous_identity() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let out = dir.path().join("out");
    let cfg = tbot_yaml(
        dir.path(),
        &cluster,
        &ca,
        Some(&key),
        "  type: memory\n",
        &out,
    );
    let start = format!("\"$KEYBOUND\" start --oneshot -c {}", quoted(&cfg));
    let first = in_namespace(format!("{start} >/dev/null")).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = snapshot(&out);
    assert!(before.iter().any(|(p, _)| p == Path::new("identity")));

    // Read-only: the directory bind-mounted onto itself, read-only.
    let output = in_namespace(format!(
        "mount --bind {o} {o}; mount -o remount,bind,ro {o}; {start}",
        o = quoted(&out)
    ))
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let error = error_line(&stderr);
    assert!(error.contains("Read-only file system"), "{error}");
    assert!(error.contains(&out.display().to_string()), "{error}");
    assert_eq!(
        snapshot(&out),
        before,
        "the read-only run changed the outputs"
    );

    // Full: a 256 KiB tmpfs over the directory, holding the previous identity and a file that
    // takes all the room left. The listing is taken inside the namespace, where the tmpfs is.
    let copy = dir.path().join("copy");
    let listing = dir.path().join("listing");
    let output = in_namespace(format!(
        "cp -a {o} {c}; mount -t tmpfs -o size=256k,mode=0700 keybound-full {o}; cp -a {c}/. {o}/; \
         dd if=/dev/zero of={o}/fill bs=4k 2>/dev/null || true; \
         status=0; {start} || status=$?; \
         rm {o}/fill; mkdir {l}; cp -a {o}/. {l}/; exit $status",
        o = quoted(&out),
        c = quoted(&copy),
        l = quoted(&listing),
    ))
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let error = error_line(&stderr);
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(
        snapshot(&listing),
        before,
        "the full disk changed the outputs or left a staged file"
    );
    // Outside the namespace nothing changed either.
    assert_eq!(snapshot(&out), before);
}
