//! The join client against the dev cluster, in process: both RPCs, both key types, file and
//! env keys, and every refusal.

use std::sync::Arc;
use std::time::Duration;

use keybound::join::{self, JoinError, Rpc};
use keybound_devcluster::Misbehaviour;
use keybound_signer::config::FileConfig;
use keybound_signer::{Algorithm, Signer};
use keybound_signer_soft::SoftSigner;
use keybound_teleport::suite::Suite;
use tonic::Code;

use crate::cluster::{Counting, ca_file, cluster_for, params, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_rpcs_both_key_types_file_and_env() {
    let dir = tempfile::tempdir().unwrap();
    for algorithm in Algorithm::ALL {
        let generated = SoftSigner::generate(algorithm).unwrap();
        let key_path = dir.path().join(format!("{algorithm}.pem"));
        keybound::fsutil::write_atomic(
            &key_path,
            generated.to_pkcs8_pem().as_bytes(),
            0o600,
            keybound::fsutil::Replace::Allow,
        )
        .unwrap();
        let from_file: Arc<dyn Signer> =
            Arc::new(SoftSigner::open_file(&FileConfig::new(&key_path)).unwrap());
        let from_env: Arc<dyn Signer> = Arc::new(
            SoftSigner::from_env_value("TBOT_BOUND_KEYPAIR_STATIC_KEY", &generated.to_env_value())
                .unwrap(),
        );
        for legacy_only in [false, true] {
            for suite in [Suite::BalancedV1, Suite::Legacy] {
                let cluster = cluster_for(generated.public_key(), |c| {
                    c.legacy_only = legacy_only;
                    c.suite = suite;
                })
                .await;
                let ca = ca_file(&cluster, dir.path());
                for signer in [&from_file, &from_env] {
                    let joined = join::join(&params(&cluster, &ca, "t", signer.clone()))
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "{algorithm} legacy_only={legacy_only} {suite} {}: {e}",
                                signer.backend()
                            )
                        });
                    assert_eq!(
                        joined.rpc,
                        if legacy_only { Rpc::Legacy } else { Rpc::Join }
                    );
                    assert_eq!(joined.suite, suite);
                    let info = &joined.identity.info;
                    assert_eq!(info.bot_name, "robot");
                    assert_eq!(info.username, "bot-robot");
                    assert_eq!(info.cluster_name, "dev.keybound.test");
                    assert!(info.bot_instance_id.is_some());
                    assert_eq!(
                        joined.bound_public_key.as_deref(),
                        Some(generated.public_key().to_openssh().as_str())
                    );
                    // Subject keys follow the suite: RSA for legacy, P-256 otherwise.
                    let expected = if suite == Suite::Legacy {
                        "ssh-rsa "
                    } else {
                        "ecdsa-sha2-nistp256 "
                    };
                    assert!(
                        joined.identity.ssh_public_key.starts_with(expected),
                        "{}",
                        joined.identity.ssh_public_key
                    );
                    assert_eq!(joined.identity.user_ca_pems.len(), 1);
                    assert_eq!(joined.identity.host_ca_pems.len(), 1);
                    assert_eq!(joined.identity.ssh_host_ca_keys.len(), 1);
                }
                // Insecure mode: every join after the first is a recovery; each one counts.
                assert_eq!(
                    cluster.cluster.token_status_of("t").unwrap().recovery_count,
                    2
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_suite_less_server_init_is_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Counting::new(Algorithm::Ed25519);
    let cluster = cluster_for(signer.public_key(), |c| c.duplicate_server_init = true).await;
    let ca = ca_file(&cluster, dir.path());
    let joined = join::join(&params(&cluster, &ca, "t", signer.clone()))
        .await
        .unwrap();
    assert_eq!(
        joined.suite,
        Suite::BalancedV1,
        "the first ServerInit's suite counts"
    );
    assert_eq!(signer.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_request_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    for legacy_only in [false, true] {
        let signer = Counting::new(Algorithm::Ed25519);
        let cluster = cluster_for(signer.public_key(), |c| {
            c.legacy_only = legacy_only;
            c.tokens = vec![token(
                "t",
                signer.public_key(),
                "insecure",
                1,
                "    rotate_after: 2020-01-01T00:00:00Z\n",
            )];
        })
        .await;
        let ca = ca_file(&cluster, dir.path());
        let error = join::join(&params(&cluster, &ca, "t", signer.clone()))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, JoinError::Refused(_)), "{error:?}");
        assert!(
            message.contains("static private keys do not support automatic rotation"),
            "{message}"
        );
        assert!(message.contains("recreate the token"), "{message}");
        // The bound key was proven first (one signature); nothing was signed for the rotation.
        assert_eq!(signer.count(), 1, "legacy_only={legacy_only}");
        assert_eq!(cluster.cluster.joins_completed(), 0);
        // The failed join left the token as it was.
        assert_eq!(
            cluster.cluster.token_status_of("t").unwrap().recovery_count,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_for_another_key_is_refused_without_signing() {
    let dir = tempfile::tempdir().unwrap();
    for legacy_only in [false, true] {
        let signer = Counting::new(Algorithm::EcdsaP256Sha256);
        let cluster = cluster_for(signer.public_key(), |c| {
            c.misbehave = Some(Misbehaviour::ChallengeOtherKey);
            c.legacy_only = legacy_only;
        })
        .await;
        let ca = ca_file(&cluster, dir.path());
        let error = join::join(&params(&cluster, &ca, "t", signer.clone()))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("does not match the value requested by the server"),
            "{error}"
        );
        assert_eq!(
            signer.count(),
            0,
            "keybound must not sign a challenge for another key"
        );
        assert_eq!(cluster.cluster.solutions_received(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_drops_the_stream_mid_join_is_an_unreachable_error() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Counting::new(Algorithm::Ed25519);
    let cluster = cluster_for(signer.public_key(), |c| {
        c.misbehave = Some(Misbehaviour::DropMidJoin)
    })
    .await;
    let ca = ca_file(&cluster, dir.path());
    let error = join::join(&params(&cluster, &ca, "t", signer.clone()))
        .await
        .unwrap_err();
    assert!(matches!(error, JoinError::Unreachable(_)), "{error:?}");
    assert!(
        error.to_string().contains("broke during the join"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_carry_the_clusters_code_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Counting::new(Algorithm::Ed25519);
    let other = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = cluster_for(other.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());

    // Unknown token: PERMISSION_DENIED on the first response, which is final (no legacy retry).
    let error = join::join(&params(&cluster, &ca, "nope", signer.clone()))
        .await
        .unwrap_err();
    match &error {
        JoinError::Rejected { code, message, .. } => {
            assert_eq!(*code, Code::PermissionDenied);
            assert_eq!(message, "token expired or not found");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("tctl get tokens"));

    // The token is bound to another key: keybound refuses to sign, tbot's wording.
    let error = join::join(&params(&cluster, &ca, "t", signer.clone()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("does not match"), "{error}");
    assert_eq!(signer.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_mode_limits_static_keys() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Counting::new(Algorithm::Ed25519);
    let key = signer.public_key().clone();
    let cluster = cluster_for(&key, |c| {
        c.tokens = vec![
            token("one", &key, "standard", 1, ""),
            token("two", &key, "standard", 2, ""),
        ];
    })
    .await;
    let ca = ca_file(&cluster, dir.path());
    // limit 1: the first join uses it; the second has none left.
    join::join(&params(&cluster, &ca, "one", signer.clone()))
        .await
        .unwrap();
    let error = join::join(&params(&cluster, &ca, "one", signer.clone()))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("(PERMISSION_DENIED): no rejoins remaining"),
        "{error}"
    );
    assert!(
        error.to_string().contains("recovery.mode set to insecure"),
        "{error}"
    );

    // limit 2: the second join must show join state, which a static key never keeps. A missing
    // state fails without locking (only a forged one locks: see server_checks).
    join::join(&params(&cluster, &ca, "two", signer.clone()))
        .await
        .unwrap();
    let error = join::join(&params(&cluster, &ca, "two", signer.clone()))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("join state verification failed"),
        "{error}"
    );
    assert!(cluster.cluster.lock_on("two").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_cluster_is_unreachable_with_a_hint() {
    let signer = Counting::new(Algorithm::Ed25519);
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let mut p = params(
        &cluster,
        std::path::Path::new("/unused"),
        "t",
        signer.clone(),
    );
    p.trust = keybound::tls::Trust::System;
    let error = join::join(&p).await.unwrap_err();
    assert!(matches!(error, JoinError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("--ca-path"), "{error}");
    assert_eq!(signer.count(), 0);
}

/// The dev cluster's own checks of solutions, driven by a hand-rolled client so the solutions can
/// be tampered with, delayed past expiry, or replayed from another stream.
mod server_checks {
    use super::*;
    use keybound_proto::teleport::join::v1;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    enum Twist {
        Tamper,
        Expire,
        Replay(String),
        ForgedJoinState,
        /// Answers a rotation request with the bound key itself.
        ReuseKey,
        None,
    }

    /// Runs one join by hand; returns the solution sent and the final status.
    async fn raw_join(
        cluster: &keybound_devcluster::DevCluster,
        ca: &std::path::Path,
        signer: &dyn Signer,
        twist: Twist,
    ) -> (String, Result<(), tonic::Status>) {
        use v1::{
            challenge as ch, challenge_solution as sol, join_request as rq, join_response as rs,
        };
        let tls = keybound::tls::client_config(
            &keybound::tls::Trust::Bundle(ca.to_owned()),
            &[b"teleport-proxy-grpc"],
        )
        .unwrap();
        let addr = keybound::config::HostPort::parse(&cluster.proxy_addr(), 443).unwrap();
        let channel = keybound::transport::connect(&addr, tls).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        let send = |p| {
            tx.clone()
                .try_send(v1::JoinRequest { payload: Some(p) })
                .unwrap()
        };
        send(rq::Payload::ClientInit(v1::ClientInit {
            join_method: Some("bound_keypair".into()),
            token_name: "t".into(),
            system_role: "Bot".into(),
            ..Default::default()
        }));
        let subject = keybound::subject_key::SubjectKey::generate(Suite::BalancedV1).unwrap();
        send(rq::Payload::BoundKeypairInit(v1::BoundKeypairInit {
            client_params: Some(v1::ClientParams {
                payload: Some(v1::client_params::Payload::BotParams(v1::BotParams {
                    public_keys: Some(v1::PublicKeys {
                        public_tls_key: subject.spki_der,
                        public_ssh_key: subject.ssh_wire,
                    }),
                    expires: Some(prost_types::Timestamp::from(
                        std::time::SystemTime::now() + Duration::from_secs(600),
                    )),
                })),
            }),
            previous_join_state: match twist {
                Twist::ForgedJoinState => b"eyJhbGciOiJFZERTQSJ9.e30.AAAA".to_vec(),
                _ => Vec::new(),
            },
            ..Default::default()
        }));
        let mut client = v1::join_service_client::JoinServiceClient::new(channel);
        let mut inbound = client
            .join(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut sent = String::new();
        loop {
            let message = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return (sent, Err(tonic::Status::unknown("stream ended"))),
                Err(status) => return (sent, Err(status)),
            };
            match message.payload.unwrap() {
                rs::Payload::Init(_) => {}
                rs::Payload::Challenge(v1::Challenge {
                    payload: Some(ch::Payload::BoundKeypairChallenge(c)),
                }) => {
                    let mut solution =
                        keybound_signer::jws::compact(signer, c.challenge.as_bytes()).unwrap();
                    match &twist {
                        Twist::Tamper => {
                            let i = solution.len() - 3;
                            let flipped = if &solution[i..=i] == "A" { "B" } else { "A" };
                            solution.replace_range(i..=i, flipped);
                        }
                        Twist::Expire => cluster.cluster.advance_clock(Duration::from_secs(180)),
                        Twist::Replay(old) => solution.clone_from(old),
                        Twist::ForgedJoinState | Twist::ReuseKey | Twist::None => {}
                    }
                    sent = solution.clone();
                    send(rq::Payload::Solution(v1::ChallengeSolution {
                        payload: Some(sol::Payload::BoundKeypairChallengeSolution(
                            v1::BoundKeypairChallengeSolution {
                                solution: solution.into_bytes(),
                            },
                        )),
                    }));
                }
                rs::Payload::Challenge(v1::Challenge {
                    payload: Some(ch::Payload::BoundKeypairRotationRequest(_)),
                }) if matches!(twist, Twist::ReuseKey) => {
                    send(rq::Payload::Solution(v1::ChallengeSolution {
                        payload: Some(sol::Payload::BoundKeypairRotationResponse(
                            v1::BoundKeypairRotationResponse {
                                public_key: signer.public_key().to_openssh().into_bytes(),
                            },
                        )),
                    }));
                }
                rs::Payload::Result(_) => return (sent, Ok(())),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// `rotation-same-key-not-allowed` (`lib/join/boundkeypair/boundkeypair.go`): the cluster
    /// challenges the key a rotation brings, and only then refuses one equal to the bound key;
    /// nothing is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotation_to_the_same_key_is_challenged_then_refused() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
        let cluster = cluster_for(signer.public_key(), |config| {
            config.tokens = vec![token(
                "t",
                signer.public_key(),
                "insecure",
                1,
                "    rotate_after: 2020-01-01T00:00:00Z\n",
            )];
        })
        .await;
        let ca = ca_file(&cluster, dir.path());
        let (_, result) = raw_join(&cluster, &ca, &signer, Twist::ReuseKey).await;
        let status = result.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::InvalidArgument,
                "public key may not be reused after rotation"
            )
        );
        // The bound key's challenge, then the same key's again as the rotation's new key.
        assert_eq!(cluster.cluster.solutions_received(), 2);
        let state = cluster.cluster.token_status_of("t").unwrap();
        assert_eq!(state.recovery_count, 0, "nothing committed");
        assert_eq!(state.last_rotated_at, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampered_expired_and_replayed_solutions_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SoftSigner::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let cluster = cluster_for(signer.public_key(), |_| {}).await;
        let ca = ca_file(&cluster, dir.path());

        // Onboarding (the first join): every failure reads "failed to complete challenge".
        let (_, result) = raw_join(&cluster, &ca, &signer, Twist::Tamper).await;
        let status = result.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "failed to complete challenge")
        );

        let (first, result) = raw_join(&cluster, &ca, &signer, Twist::None).await;
        result.unwrap();
        let state = cluster.cluster.token_status_of("t").unwrap();
        assert_eq!(state.recovery_count, 1);

        // Recovery joins report the cause with Teleport's code.
        let (_, result) = raw_join(&cluster, &ca, &signer, Twist::Tamper).await;
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Unknown, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("validating challenge response"),
            "{status:?}"
        );

        let (_, result) = raw_join(&cluster, &ca, &signer, Twist::Replay(first)).await;
        let status = result.unwrap_err();
        // Another stream's challenge has other times (or, within the same second, another nonce).
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            ["invalid challenge document", "invalid nonce"].contains(&status.message()),
            "{status:?}"
        );

        let (_, result) = raw_join(&cluster, &ca, &signer, Twist::Expire).await;
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Unknown, "{status:?}");
        assert!(
            status.message().contains("token is expired (exp)"),
            "{status:?}"
        );

        // Nothing above changed the token's state.
        assert_eq!(cluster.cluster.token_status_of("t").unwrap(), state);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forged_join_state_locks_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
        let cluster = cluster_for(signer.public_key(), |c| {
            c.tokens = vec![token("t", signer.public_key(), "relaxed", 0, "")];
        })
        .await;
        let ca = ca_file(&cluster, dir.path());
        raw_join(&cluster, &ca, &signer, Twist::None)
            .await
            .1
            .unwrap();
        let status = raw_join(&cluster, &ca, &signer, Twist::ForgedJoinState)
            .await
            .1
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "join state verification failed")
        );
        assert!(
            cluster
                .cluster
                .lock_on("t")
                .unwrap()
                .contains("possibly indicating a stolen keypair")
        );
        // The lock holds against every later join, even a well-formed one.
        let status = raw_join(&cluster, &ca, &signer, Twist::None)
            .await
            .1
            .unwrap_err();
        assert!(
            status
                .message()
                .starts_with("lock targeting JoinToken:\"t\" is in force"),
            "{status:?}"
        );
    }
}

/// A cluster whose clock is ten minutes off: keybound refuses its challenge, and says which way
/// the clocks differ in words, never as a signed number of seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_from_a_skewed_clock_is_refused_saying_which_way() {
    let dir = tempfile::tempdir().unwrap();
    let signer: Arc<dyn Signer> = Arc::new(SoftSigner::generate(Algorithm::Ed25519).unwrap());
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    cluster.cluster.advance_clock(Duration::from_secs(600));
    let error = join::join(&params(&cluster, &ca, "t", signer))
        .await
        .unwrap_err()
        .to_string();
    // 600 s, or 599 when this machine's clock passed a second between the two readings.
    assert!(
        ["600", "599"].iter().any(|n| error.contains(&format!(
            "the challenge was issued {n} s in the future by this machine's clock"
        ))),
        "{error}"
    );
    assert_eq!(cluster.cluster.solutions_received(), 0);
}

/// A token whose `bot_name` names no bot: the cluster checks the challenge, then refuses to make
/// the certificates with Teleport's code and text, and the token's status stays as it was (no
/// recovery used, no key bound), on both RPCs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_a_bot_that_does_not_exist_is_refused_as_teleport_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    for legacy_only in [false, true] {
        let signer: Arc<dyn Signer> = Arc::new(SoftSigner::generate(Algorithm::Ed25519).unwrap());
        let cluster = cluster_for(signer.public_key(), |c| {
            c.bots.clear();
            c.legacy_only = legacy_only;
        })
        .await;
        let ca = ca_file(&cluster, dir.path());
        let error = join::join(&params(&cluster, &ca, "t", signer))
            .await
            .unwrap_err();
        match &error {
            JoinError::Rejected { code, message, .. } => {
                assert_eq!(*code, Code::PermissionDenied, "{error}");
                assert_eq!(message, "access denied");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cluster.cluster.solutions_received(), 1);
        let status = cluster.cluster.token_status_of("t").unwrap();
        assert_eq!(status.recovery_count, 0, "{status:?}");
        assert_eq!(status.bound_public_key, None, "{status:?}");
        assert_eq!(cluster.cluster.bot_instances("robot"), 0);
    }
}
