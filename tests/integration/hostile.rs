//! A hostile or broken server: the dev cluster misbehaving on purpose, and a scripted join server
//! for what a well-meaning cluster cannot say (messages out of order, oversized, a stall, a
//! dropped connection, bad TLS). In every case keybound signs nothing it should not, ends within
//! its timeout with a one-line error, and (run as `keybound start`) leaves the previous identity
//! as it was.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keybound::join::{self, JoinError, JoinParams};
use keybound_devcluster::Misbehaviour;
use keybound_proto::teleport::join::v1;
use keybound_signer::{Algorithm, Signer};

use crate::cluster::{Counting, ca_file, cluster_for, key_file, params, tbot_yaml};
use crate::hostile_server::{
    SHORT, Scripted, Step, Tls, bot_result, challenge, document, send, server_init,
};
use crate::support::snapshot;

/// How long a test waits for keybound at most (it never asserts how fast keybound was).
const BOUND: Duration = Duration::from_secs(60);

/// Runs a join, bounded by [`BOUND`], and returns its error (a success fails the test). The error
/// must be one line.
async fn join_err(params: &JoinParams) -> JoinError {
    let error = tokio::time::timeout(BOUND, join::join(params))
        .await
        .expect("keybound must end within its own timeout")
        .expect_err("the join must fail");
    let text = error.to_string();
    assert!(!text.contains('\n'), "not one line: {text:?}");
    assert!(
        text.len() < 1024,
        "an error of {} bytes: {text:.200}",
        text.len()
    );
    error
}

// === The dev cluster, misbehaving ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_oracle_attempts_are_refused_without_signing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            Misbehaviour::ChallengeOtherKey,
            "does not match the value requested by the server",
        ),
        (
            Misbehaviour::SignArbitraryJson,
            "not a Teleport challenge document",
        ),
        (Misbehaviour::ChallengeWrongSubject, "not this key's"),
        (
            Misbehaviour::ChallengeFarFutureExpiry,
            "longer than the 600 s keybound accepts",
        ),
        (Misbehaviour::ChallengeWithoutNonce, "missing field `nonce`"),
        (Misbehaviour::ChallengeEndless, "times are out of range"),
        (
            Misbehaviour::ChallengeExtraClaim,
            "a claim Teleport's challenges never carry (unknown field `scope`",
        ),
    ];
    for legacy_only in [false, true] {
        for (misbehaviour, expected) in cases {
            let signer = Counting::new(Algorithm::Ed25519);
            let cluster = cluster_for(signer.public_key(), |c| {
                c.misbehave = Some(misbehaviour);
                c.legacy_only = legacy_only;
            })
            .await;
            let ca = ca_file(&cluster, dir.path());
            let error = join_err(&params(&cluster, &ca, "t", signer.clone())).await;
            let case = format!("{misbehaviour:?} legacy_only={legacy_only}");
            assert!(matches!(error, JoinError::Refused(_)), "{case}: {error:?}");
            assert!(error.to_string().contains(expected), "{case}: {error}");
            assert_eq!(signer.count(), 0, "{case}: keybound signed");
            assert_eq!(cluster.cluster.solutions_received(), 0, "{case}");
            assert_eq!(cluster.cluster.joins_completed(), 0, "{case}");
        }
    }
}

/// A challenge from another cluster (one passed on by the cluster keybound talks to) is refused
/// whenever keybound knows its cluster: from `/webapi/find` before a legacy join, from the held
/// identity on a rejoin (`a_hostile_cluster_leaves_the_previous_identity_untouched`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_challenge_is_refused_when_keybound_knows_its_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Counting::new(Algorithm::Ed25519);
    let cluster = cluster_for(signer.public_key(), |c| {
        c.misbehave = Some(Misbehaviour::ChallengeOtherCluster);
        c.legacy_only = true;
    })
    .await;
    let ca = ca_file(&cluster, dir.path());
    let error = join_err(&params(&cluster, &ca, "t", signer.clone())).await;
    assert!(matches!(error, JoinError::Refused(_)), "{error:?}");
    assert!(
        error.to_string().contains(&format!(
            "issued by cluster \"{}\", but keybound joins cluster \"dev.keybound.test\"",
            keybound_devcluster::OTHER_CLUSTER
        )),
        "{error}"
    );
    assert_eq!(signer.count(), 0);
    assert_eq!(cluster.cluster.solutions_received(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_challenge_in_one_join_is_not_signed() {
    let dir = tempfile::tempdir().unwrap();
    for legacy_only in [false, true] {
        let signer = Counting::new(Algorithm::EcdsaP256Sha256);
        let cluster = cluster_for(signer.public_key(), |c| {
            c.misbehave = Some(Misbehaviour::ChallengeTwice);
            c.legacy_only = legacy_only;
        })
        .await;
        let ca = ca_file(&cluster, dir.path());
        let error = join_err(&params(&cluster, &ca, "t", signer.clone())).await;
        assert!(matches!(error, JoinError::Refused(_)), "{error:?}");
        assert!(error.to_string().contains("second challenge"), "{error}");
        assert_eq!(signer.count(), 1, "only the first challenge is signed");
        assert_eq!(cluster.cluster.joins_completed(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_or_dropping_cluster_ends_the_join_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for legacy_only in [false, true] {
        let signer = Counting::new(Algorithm::Ed25519);
        let cluster = cluster_for(signer.public_key(), |c| {
            c.misbehave = Some(Misbehaviour::Stall);
            c.legacy_only = legacy_only;
        })
        .await;
        let ca = ca_file(&cluster, dir.path());
        let mut p = params(&cluster, &ca, "t", signer.clone());
        p.timeout = SHORT;
        let error = join_err(&p).await;
        assert!(matches!(error, JoinError::TimedOut(_)), "{error:?}");
        assert!(
            error.to_string().contains("did not finish within 3 s"),
            "{error}"
        );

        assert_eq!(signer.count(), 0);

        // The challenge is genuine, so keybound may answer it before it sees the drop.
        cluster
            .cluster
            .set_misbehaviour(Some(Misbehaviour::DropMidJoin));
        let error = join_err(&p).await;
        assert!(matches!(error, JoinError::Unreachable(_)), "{error:?}");
        assert!(
            error.to_string().contains("broke during the join"),
            "{error}"
        );
        assert!(signer.count() <= 1);
        assert_eq!(cluster.cluster.joins_completed(), 0);
    }
}

// === A scripted join server (hostile_server.rs) ===

/// Runs one join against a scripted server and checks that nothing was signed.
async fn scripted_err(tls: Tls, steps: Vec<Step>) -> JoinError {
    scripted_err_for(&Counting::new(Algorithm::Ed25519), tls, steps).await
}

/// [`scripted_err`] with `signer`.
async fn scripted_err_for(signer: &Arc<Counting>, tls: Tls, steps: Vec<Step>) -> JoinError {
    let server = Scripted::start(tls, steps).await;
    let error = join_err(&server.params(signer.clone())).await;
    assert_eq!(signer.count(), 0, "{tls:?}: keybound signed: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_and_out_of_order_messages_end_the_join() {
    let key = Counting::new(Algorithm::Ed25519);
    let ours = key.public_key().to_openssh();
    let cases: Vec<(&str, Vec<Step>, &str)> = vec![
        (
            "a challenge before ServerInit",
            vec![challenge(&ours, "{}")],
            "first join message is not ServerInit",
        ),
        (
            "certificates before any challenge",
            vec![server_init("balanced-v1"), bot_result()],
            "certificates before any challenge",
        ),
        (
            "an empty message",
            vec![
                server_init("balanced-v1"),
                Step::Send(v1::JoinResponse { payload: None }),
            ],
            "empty join message",
        ),
        (
            "a challenge of no known kind",
            vec![
                server_init("balanced-v1"),
                send(v1::join_response::Payload::Challenge(v1::Challenge {
                    payload: None,
                })),
            ],
            "unexpected join message",
        ),
        (
            "an unknown suite",
            vec![server_init("rot13-v9\n")],
            r#"unknown signature algorithm suite "rot13-v9\n""#,
        ),
        (
            "a challenge with a key that is not a key",
            vec![
                server_init("balanced-v1"),
                challenge("ssh-ed25519 AAAA", "{}"),
            ],
            "which is not an Ed25519 or P-256 key",
        ),
    ];
    for (case, steps, expected) in cases {
        let error = scripted_err(Tls::Good, steps).await;
        assert!(matches!(error, JoinError::Refused(_)), "{case}: {error:?}");
        assert!(error.to_string().contains(expected), "{case}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_valid_challenge_from_a_scripted_server_is_not_signed() {
    let signer = Counting::new(Algorithm::Ed25519);
    let (key, doc) = (
        signer.public_key().to_openssh(),
        document(signer.public_key()),
    );
    let second = doc.replace(&"ab".repeat(16), &"cd".repeat(16));
    let server = Scripted::start(
        Tls::Good,
        vec![
            server_init("balanced-v1"),
            challenge(&key, &doc),
            challenge(&key, &second),
        ],
    )
    .await;
    let error = join_err(&server.params(signer.clone())).await;
    assert!(error.to_string().contains("second challenge"), "{error}");
    assert_eq!(signer.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_ends_the_stream_after_giving_up_does_not_hold_keybound() {
    let signer = Counting::new(Algorithm::Ed25519);
    let other = Counting::new(Algorithm::Ed25519);
    let theirs = other.public_key().to_openssh();
    let server = Scripted::start(
        Tls::Good,
        vec![
            server_init("balanced-v1"),
            challenge(&theirs, &document(other.public_key())),
            Step::Receive,
            Step::Hang,
        ],
    )
    .await;
    // keybound's wait after GivingUp is bounded by GIVE_UP_WAIT, well below this join timeout:
    // an unbounded wait would end in the timeout's error instead of the refusal.
    let mut params = server.params(signer.clone());
    params.timeout = Duration::from_secs(20);
    let error = join_err(&params).await;
    assert!(
        error
            .to_string()
            .contains("does not match the value requested by the server"),
        "{error}"
    );
    assert_eq!(signer.count(), 0);
    let givings_up = server.givings_up();
    assert_eq!(givings_up.len(), 1, "{givings_up:?}");
    assert_eq!(
        givings_up[0].0,
        v1::giving_up::Reason::ChallengeSolutionFailed as i32
    );
    assert!(
        error.to_string().contains(&givings_up[0].1),
        "{givings_up:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_with_a_bounded_error() {
    let signer = Counting::new(Algorithm::Ed25519);
    let ours = signer.public_key().to_openssh();
    // Over the 1 MiB message limit: tonic refuses it before keybound looks at it.
    let huge = format!("ssh-ed25519 {}", "A".repeat(2 * 1024 * 1024));
    let error = scripted_err(
        Tls::Good,
        vec![server_init("balanced-v1"), challenge(&huge, "{}")],
    )
    .await;
    assert!(matches!(error, JoinError::Refused(_)), "{error:?}");
    assert!(
        error.to_string().contains("larger than 1024 KiB"),
        "{error}"
    );

    // Under the limit, but no key: the error quotes only the start of it.
    let big = format!("ssh-ed25519 {}", "A".repeat(200 * 1024));
    let error = scripted_err(
        Tls::Good,
        vec![server_init("balanced-v1"), challenge(&big, "{}")],
    )
    .await;
    assert!(error.to_string().contains("more bytes"), "{error}");

    // A challenge document far larger than Teleport's.
    let padded = document(signer.public_key()).replace(
        r#""iss":"hostile.test""#,
        &format!(r#""iss":"{}""#, "x".repeat(100 * 1024)),
    );
    let error = scripted_err_for(
        &signer,
        Tls::Good,
        vec![server_init("balanced-v1"), challenge(&ours, &padded)],
    )
    .await;
    assert!(error.to_string().contains("more than 4096"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_or_drops_mid_stream_ends_the_join() {
    // Silent after ServerInit: keybound's own timeout ends it.
    let error = scripted_err(Tls::Good, vec![server_init("balanced-v1"), Step::Stall]).await;
    assert!(matches!(error, JoinError::TimedOut(_)), "{error:?}");

    // Silent before TLS: the same.
    let error = scripted_err(Tls::Silent, vec![]).await;
    assert!(matches!(error, JoinError::TimedOut(_)), "{error:?}");

    // The TCP connection closes, without a gRPC status, before ServerInit. keybound sends
    // BoundKeypairInit with ClientInit, so having both tells the server nothing of what the
    // client read: a drop right behind a queued ServerInit may come before it (the old form of
    // this case failed so under load). As tbot on a connection error before ServerInit,
    // keybound falls back to the legacy RPC, whose `/webapi/find` this server (no `http/1.1`)
    // refuses; the error says both.
    let error = scripted_err(Tls::Good, vec![Step::Receive, Step::Receive, Step::Drop]).await;
    assert!(matches!(error, JoinError::Unreachable(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("JoinService.Join ended before ServerInit")
            && message.contains("/webapi/find failed")
            && message.contains("NoApplicationProtocol"),
        "{message}"
    );

    // The TCP connection closes mid-stream, without a gRPC status, once the client has shown
    // it read ServerInit: it answered the challenge that came after it. Nothing falls back.
    let signer = Counting::new(Algorithm::Ed25519);
    let ours = signer.public_key().to_openssh();
    let server = Scripted::start(
        Tls::Good,
        vec![
            server_init("balanced-v1"),
            Step::Receive,
            Step::Receive,
            challenge(&ours, &document(signer.public_key())),
            Step::Receive,
            Step::Drop,
        ],
    )
    .await;
    let error = join_err(&server.params(signer.clone())).await;
    assert_eq!(signer.count(), 1);
    assert!(matches!(error, JoinError::Unreachable(_)), "{error:?}");
    // Whether the HTTP/2 stream saw an error or a bare end depends on timing; both say so.
    let message = error.to_string();
    assert!(
        message.contains("broke during the join")
            || message.contains("closed the join stream before sending certificates"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_is_refused_before_anything_is_sent() {
    let cases = [
        (Tls::WrongName, "certificate"),
        (Tls::UntrustedCa, "--ca-path"),
        (
            Tls::NoAlpn,
            "chose ALPN None instead of teleport-proxy-grpc",
        ),
        // Refusing every protocol but http/1.1 is what an L7 load balancer does: keybound
        // tries the connection upgrade, whose TLS fails the same trust check.
        (Tls::WrongAlpn, "TLS to the load balancer"),
    ];
    for (tls, expected) in cases {
        let error = scripted_err(tls, vec![server_init("balanced-v1")]).await;
        assert!(
            matches!(error, JoinError::Unreachable(_)),
            "{tls:?}: {error:?}"
        );
        assert!(error.to_string().contains(expected), "{tls:?}: {error}");
    }
}

// === `keybound start`: the previous identity survives ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_cluster_leaves_the_previous_identity_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let signer = keybound_signer_soft::SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let (storage, out) = (dir.path().join("storage"), dir.path().join("out"));
    let cfg = tbot_yaml(
        dir.path(),
        &cluster,
        &ca,
        Some(&key),
        &format!("  type: directory\n  path: {}\n", storage.display()),
        &out,
    );
    let start = move || {
        let mut cmd = crate::support::keybound();
        cmd.args(["start", "--oneshot", "-c"]).arg(&cfg);
        cmd
    };
    let run =
        |mut cmd: std::process::Command| tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let first = run(start()).await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (before_storage, before_out) = (snapshot(&storage), snapshot(&out));
    assert!(
        before_storage
            .iter()
            .any(|(p, _)| p == Path::new("tlscert"))
    );

    // What each misbehaviour's error says; `None` for a genuine challenge on a broken stream,
    // which keybound may answer.
    for (misbehaviour, expected) in [
        (Misbehaviour::ChallengeOtherKey, Some("does not match")),
        (
            Misbehaviour::SignArbitraryJson,
            Some("not a Teleport challenge"),
        ),
        (Misbehaviour::ChallengeWrongSubject, Some("not this key's")),
        (Misbehaviour::ChallengeFarFutureExpiry, Some("longer than")),
        (Misbehaviour::ChallengeWithoutNonce, Some("missing field")),
        (Misbehaviour::ChallengeEndless, Some("out of range")),
        (Misbehaviour::ChallengeExtraClaim, Some("never carry")),
        // The first join took the cluster's name; the identity now says which cluster may
        // challenge the key.
        (
            Misbehaviour::ChallengeOtherCluster,
            Some("keybound joins cluster \"dev.keybound.test\""),
        ),
        (Misbehaviour::DropMidJoin, None),
    ] {
        cluster.cluster.set_misbehaviour(Some(misbehaviour));
        let answered = cluster.cluster.solutions_received();
        let output = run(start()).await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{misbehaviour:?} succeeded");
        assert!(!stderr.contains("panicked"), "{misbehaviour:?}: {stderr}");
        let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{misbehaviour:?}: {stderr}");
        if let Some(expected) = expected {
            assert!(errors[0].contains(expected), "{misbehaviour:?}: {stderr}");
            assert_eq!(
                cluster.cluster.solutions_received(),
                answered,
                "{misbehaviour:?}: keybound signed"
            );
        }
        assert_eq!(
            snapshot(&out),
            before_out,
            "{misbehaviour:?}: outputs changed"
        );
        assert_eq!(
            snapshot(&storage),
            before_storage,
            "{misbehaviour:?}: storage changed"
        );
    }
    assert_eq!(cluster.cluster.joins_completed(), 1);
}

// === The authenticated connection: a call that is never answered ===

/// `GenerateUserCerts` for one output's roles is accepted and never answered
/// (`--misbehave stall-user-certs`): `start --oneshot` ends with one error naming that output and
/// the call, the other output is written, and the stalled output's files stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_auth_call_fails_its_output_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = crate::cluster::with_a_stalling_output(dir.path(), "").await;
    let (fine, slow) = (dir.path().join("fine"), dir.path().join("slow"));
    let start = move || {
        let mut cmd = crate::support::keybound();
        cmd.args(["start", "--oneshot", "-c"])
            .arg(&cfg)
            .env(keybound::auth::RPC_TIMEOUT_ENV, "2s");
        cmd
    };
    let run = |mut cmd: std::process::Command| {
        tokio::task::spawn_blocking(move || crate::support::output_within(&mut cmd, BOUND))
    };
    let first = run(start()).await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (before_fine, before_slow) = (snapshot(&fine), snapshot(&slow));
    assert!(before_slow.iter().any(|(p, _)| p == Path::new("tlscert")));

    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::StallUserCerts));
    let output = run(start()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Unreachable (69): the agent would retry soon.
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for expected in [
        "output slow:",
        "no certificates came for roles [stalled]",
        "did not answer GenerateUserCerts within 2s",
    ] {
        assert!(errors[0].contains(expected), "{expected:?} not in {stderr}");
    }
    assert!(!errors[0].contains("output fine"), "{stderr}");
    assert_eq!(snapshot(&slow), before_slow, "the stalled output changed");
    assert_ne!(
        snapshot(&fine),
        before_fine,
        "the other output was not written"
    );
    crate::support::assert_output_verifies(&fine);
}
