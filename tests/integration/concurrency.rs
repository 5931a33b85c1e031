//! The renewal's calls that go out at once (the outputs, their shared lookups, the connection
//! to Auth opened ahead) against a dev cluster that refuses, drops or stalls: each fails as
//! clearly as one call after another would, and what does not fail is not held up.

use std::process::Stdio;
use std::time::{Duration, Instant};

use keybound_devcluster::Misbehaviour;

/// How long a test waits for what it expects: far above what it takes, far below the stall.
const BOUND: Duration = Duration::from_secs(60);

/// The outputs of a renewal go out at once: with the first output's `GenerateUserCerts` never
/// answered (`--misbehave stall-user-certs`, and a deadline of an hour), the output listed after
/// it is written while the first still waits. One after another, it would wait the hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_is_written_while_the_one_before_it_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = crate::cluster::with_stalling_outputs(
        dir.path(),
        "",
        &[("slow", "[stalled]"), ("fine", "[access]")],
    )
    .await;
    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::StallUserCerts));
    let mut child = crate::support::keybound()
        .args(["start", "--oneshot", "-c"])
        .arg(&cfg)
        .env(keybound::auth::RPC_TIMEOUT_ENV, "1h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let fine = dir.path().join("fine");
    let written = wait_for(|| fine.join("tlscert").exists() && fine.join("identity").exists());
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(written, "the output after the stalled one was not written");
    assert!(still_running, "keybound ended although an output stalled");
    assert!(!dir.path().join("slow").join("tlscert").exists());
    crate::support::assert_output_verifies(&fine);
}

/// Polls `done` until it holds or [`BOUND`] passes.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < BOUND {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}
