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
    let mut child = oneshot_waiting_an_hour(&cfg);
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

/// `keybound start --oneshot` with `cfg`, each call allowed an hour: one that is never answered
/// leaves it running.
fn oneshot_waiting_an_hour(cfg: &std::path::Path) -> std::process::Child {
    crate::support::keybound()
        .args(["start", "--oneshot", "-c"])
        .arg(cfg)
        .env(keybound::auth::RPC_TIMEOUT_ENV, "1h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

/// The TCP connection opened ahead for the outputs' connection to Auth may be closed by the
/// server before keybound uses it (Teleport's ALPN router closes one whose ClientHello has not
/// come within `HandshakeReadDeadline`): keybound then dials afresh and connects as it would
/// have without it. The server here is a front that closes the first connection it accepts
/// unread and passes the others through to the dev cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_ahead_and_closed_by_the_server_is_replaced() {
    use keybound::auth::{AuthClient, AuthRoute};
    use keybound::config::HostPort;
    use keybound::transport::Preconnect;
    use keybound_signer::{Algorithm, Signer as _};
    use keybound_signer_soft::SoftSigner;

    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = crate::cluster::cluster_for(signer.public_key(), |_| {}).await;
    let ca = crate::cluster::ca_file(&cluster, dir.path());
    let signer: std::sync::Arc<dyn keybound_signer::Signer> = std::sync::Arc::new(signer);
    let joined = keybound::join::join(&crate::cluster::params(&cluster, &ca, "t", signer))
        .await
        .unwrap();

    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let upstream = cluster.proxy_addr();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (first, _) = front.accept().await.unwrap();
        drop(first);
        closed_tx.send(()).unwrap();
        while let Ok((mut conn, _)) = front.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
            });
        }
    });
    let addr = HostPort::parse(&front_addr.to_string(), 443).unwrap();
    let ahead = Preconnect::start(&addr);
    closed_rx.await.unwrap();
    let route = AuthRoute::Proxy(addr);
    let auth = AuthClient::connect_over(&route, &joined.identity, Some(ahead))
        .await
        .expect("a fresh connection replaces the closed one");
    let ping = auth.ping().await.unwrap();
    assert_eq!(ping.cluster_name, "dev.keybound.test");
}

/// The outputs' lookups go out at once (and, on a rejoin, on the rejoin's connection while it
/// runs, then again on the new identity's when they failed there): when the cluster refuses one
/// (`--misbehave refuse-user-ca-lookup`) or never answers one (`stall-db-ca-lookup`), the run
/// ends as it would with one lookup after another: one error naming that lookup and the
/// cluster's answer or the deadline, the exit code of a refusal (77) or of a cluster out of
/// reach (69), and the output's files as they were. For a first join and for a rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_stalled_lookup_fails_the_outputs_as_clearly_as_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) =
        crate::cluster::with_stalling_outputs(dir.path(), "", &[("out", "[access]")]).await;
    let start = |extra: &[&str]| {
        let mut cmd = crate::support::keybound();
        cmd.args(["start", "--oneshot", "-c"])
            .arg(&cfg)
            .args(extra)
            .env(keybound::auth::RPC_TIMEOUT_ENV, "2s");
        cmd
    };
    let run = |mut cmd: std::process::Command| {
        tokio::task::spawn_blocking(move || crate::support::output_within(&mut cmd, BOUND))
    };
    let first = run(start(&[])).await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = dir.path().join("out");
    let before = crate::support::snapshot(&out);

    let cases = [
        (
            Misbehaviour::RefuseUserCaLookup,
            77,
            [
                "reading the user CAs for the identity outputs",
                "access denied to perform action",
            ],
        ),
        (
            Misbehaviour::StallDbCaLookup,
            69,
            [
                "reading the database CAs for the identity outputs",
                "did not answer GetCertAuthorities within 2s",
            ],
        ),
    ];
    // The rejoins first: a first join starts a new bot instance, which the stored identity is not.
    for (how, extra) in [
        ("a rejoin", &[][..]),
        ("a first join", &["--storage", "memory://"][..]),
    ] {
        for (misbehaviour, code, expected) in &cases {
            cluster.cluster.set_misbehaviour(Some(*misbehaviour));
            let output = run(start(extra)).await.unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let case = format!("{how}, {misbehaviour:?}");
            assert_eq!(output.status.code(), Some(*code), "{case}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{case}: {stderr}");
            for text in expected {
                assert!(errors[0].contains(text), "{case}: {text:?} not in {stderr}");
            }
            assert_eq!(crate::support::snapshot(&out), before, "{case}");
        }
    }
}

/// An output that names its roles asks for its certificates beside the lookups the outputs
/// share, not after them: with the database CA lookup never answered (`stall-db-ca-lookup`, a
/// deadline of an hour), a first join's `GenerateUserCerts` for the output naming `[access]`
/// reaches the cluster all the same. The output that names none waits for the bot's role, so
/// asks nothing yet, and neither output writes a file before the lookups have answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_naming_its_roles_asks_for_certificates_beside_the_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = crate::cluster::with_stalling_outputs(
        dir.path(),
        "",
        &[("named", "[access]"), ("default", "[]")],
    )
    .await;
    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::StallDbCaLookup));
    let mut child = oneshot_waiting_an_hour(&cfg);
    let asked = wait_for(|| cluster.cluster.user_certs_issued() > 0);
    let issued = cluster.cluster.user_certs_issued();
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        asked,
        "no GenerateUserCerts came while a lookup was unanswered"
    );
    assert_eq!(issued, 1, "only the output naming its roles may ask yet");
    assert!(still_running, "keybound ended although a lookup stalled");
    for out in ["named", "default"] {
        let written = std::fs::read_dir(dir.path().join(out)).map_or(0, |d| d.count());
        assert_eq!(written, 0, "{out} was written before the lookups answered");
    }
}

/// When a lookup is refused and the output's own `GenerateUserCerts` is refused too (they go
/// out together now), the run reports the lookup's refusal, once, as it did when the lookups
/// went first and the output never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lookup_is_reported_over_an_output_refused_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) =
        crate::cluster::with_stalling_outputs(dir.path(), "", &[("out", "[not-allowed]")]).await;
    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::RefuseUserCaLookup));
    let mut cmd = crate::support::keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&cfg);
    let output =
        tokio::task::spawn_blocking(move || crate::support::output_within(&mut cmd, BOUND))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(77), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("reading the user CAs for the identity outputs"),
        "{stderr}"
    );
    assert!(!errors[0].contains("refused certificates"), "{stderr}");
    assert!(!dir.path().join("out").exists(), "{stderr}");
}

/// A TCP front for the dev cluster that counts the connections it passes through and can
/// close every open one, as a restart of Auth or an idle timeout would.
struct Front {
    addr: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Front {
    async fn start(upstream: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("localhost:{}", listener.local_addr().unwrap().port());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, handles) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                });
                handles.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            accepted,
            open,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn close_all(&self) {
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// An agent in `dir` (a P-256 key in a file, renewing every hour, one identity output, `env`
/// set) reaching its dev cluster through a [`Front`], once it is listening.
async fn agent_behind_front(
    dir: &std::path::Path,
    env: &[(&'static str, &'static str)],
) -> (
    keybound_devcluster::DevCluster,
    Front,
    crate::agent_support::Agent,
) {
    use keybound_signer::{Algorithm, Signer as _};
    use keybound_signer_soft::SoftSigner;

    let signer = SoftSigner::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let key = crate::cluster::key_file(dir, &signer);
    let cluster =
        crate::agent_support::cluster_on("127.0.0.1:0".parse().unwrap(), signer.public_key(), "t")
            .await;
    let ca = crate::cluster::ca_file(&cluster, dir);
    let upstream = cluster.proxy_addr().replace("localhost", "127.0.0.1");
    let front = Front::start(upstream).await;
    let key_yaml = format!(
        "  bound_keypair:\n    static_private_key_path: {}\n",
        key.display()
    );
    let cfg = crate::agent_support::config(dir, &front.addr, &ca, &key_yaml, "1h", "2h");
    let (d, env) = (dir.to_owned(), env.to_vec());
    let agent =
        crate::agent_support::blocking(move || crate::agent_support::Agent::start(&cfg, &d, &env))
            .await;
    (cluster, front, agent)
}

/// The agent keeps its connection to Auth from one renewal to the next, as tbot keeps its bot
/// client (`lib/tbot/client/builder.go`): a renewal opens one connection (the outputs', with
/// the new identity), not two. When that kept connection has gone (closed here by the front
/// between renewals), the renewal goes through on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rejoins_on_its_kept_connection_and_on_a_new_one_when_it_has_gone() {
    use crate::agent_support::{blocking, metric, wait_for};

    let dir = tempfile::tempdir().unwrap();
    let (cluster, front, agent) = agent_behind_front(dir.path(), &[]).await;
    let port = agent.diag;
    let renewed = |after: f64| {
        blocking(move || {
            wait_for("a renewal", Duration::from_secs(30), || {
                metric(port, "keybound_renewals_total") > after
            })
        })
    };
    renewed(0.0).await;
    // The start-up heartbeat is sent once the first join is done (over the kept connection, or a
    // new one if that has gone; the next comes in 30 minutes): waited for, so that nothing of it
    // is counted during the renewal below.
    let state = cluster.cluster.clone();
    blocking(move || {
        wait_for("the start-up heartbeat", Duration::from_secs(30), || {
            !state.heartbeats().is_empty()
        })
    })
    .await;

    let before = front.accepted();
    agent.signal("USR1");
    renewed(1.0).await;
    assert_eq!(
        front.accepted() - before,
        1,
        "a renewal opened more than the outputs' connection"
    );

    front.close_all();
    let before = front.accepted();
    agent.signal("USR1");
    renewed(2.0).await;
    assert_eq!(
        front.accepted() - before,
        2,
        "the rejoin and the outputs each on a new connection"
    );
    crate::support::assert_output_verifies(&dir.path().join("out"));
    assert_eq!(
        cluster.cluster.bot_instances("robot"),
        1,
        "no recovery was used"
    );
    drop(agent);
}

/// A first join sends `BoundKeypairInit` with `ClientInit`, for the P-256 subject key of every
/// suite but `legacy`. Against a `legacy` cluster that guess is wrong: keybound drops the stream
/// before answering anything and joins on a second one with an RSA key, as the suite asks, also
/// when the cluster holds `ServerInit` back until `BoundKeypairInit` has come. One join
/// completes, one bot instance, no recovery spent on the dropped stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_join_that_guessed_the_wrong_key_type_joins_again_with_the_suites() {
    use keybound_signer::{Algorithm, Signer as _};
    use keybound_signer_soft::SoftSigner;
    use keybound_teleport::suite::Suite;

    for misbehaviour in [None, Some(Misbehaviour::HoldServerInit)] {
        let dir = tempfile::tempdir().unwrap();
        let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
        let cluster =
            crate::cluster::cluster_for(signer.public_key(), |c| c.suite = Suite::Legacy).await;
        cluster.cluster.set_misbehaviour(misbehaviour);
        let ca = crate::cluster::ca_file(&cluster, dir.path());
        let signer: std::sync::Arc<dyn keybound_signer::Signer> = std::sync::Arc::new(signer);
        let joined = keybound::join::join(&crate::cluster::params(&cluster, &ca, "t", signer))
            .await
            .unwrap_or_else(|e| panic!("{misbehaviour:?}: {e}"));
        assert_eq!(joined.suite, Suite::Legacy);
        assert!(
            joined.identity.ssh_public_key.starts_with("ssh-rsa "),
            "{misbehaviour:?}: {}",
            joined.identity.ssh_public_key
        );
        assert_eq!(cluster.cluster.joins_completed(), 1, "{misbehaviour:?}");
        assert_eq!(
            cluster.cluster.bot_instances("robot"),
            1,
            "{misbehaviour:?}"
        );
    }
}

/// The new identity is stored while the outputs are already issued with it; their files wait
/// for it. When storing fails, the run ends as it did when the outputs began only after it: at
/// once (an output whose `GenerateUserCerts` is never answered, with a deadline of an hour, does
/// not hold it), with storage's one error and exit 78, and no output written, not even one
/// whose certificates came back before the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_while_the_outputs_are_issued_writes_none_of_them() {
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
    // `key` cannot be replaced: something made it a directory.
    std::fs::create_dir_all(dir.path().join("storage/key/x")).unwrap();
    let mut cmd = crate::support::keybound();
    cmd.args(["start", "--oneshot", "-c"])
        .arg(&cfg)
        .env(keybound::auth::RPC_TIMEOUT_ENV, "1h");
    let output =
        tokio::task::spawn_blocking(move || crate::support::output_within(&mut cmd, BOUND))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("writing the new bot identity to storage"),
        "{stderr}"
    );
    for out in ["fine", "slow"] {
        assert!(
            !dir.path().join(out).join("tlscert").exists(),
            "{out} was written: {stderr}"
        );
    }
    assert!(!dir.path().join("storage/tlscert").exists());
}

/// A `--oneshot` run's start-up heartbeat goes over the connection its outputs made with the new
/// identity, the one it reports on: the run opens the join's connection and the outputs' one,
/// not a third (a connection of its own costs its TCP and TLS round trips, after the outputs).
/// The ALPN upgrade test, which would add a connection of its own, is turned off by
/// `TELEPORT_TLS_ROUTING_CONN_UPGRADE=false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneshot_sends_its_heartbeat_over_the_outputs_connection() {
    use keybound_signer::{Algorithm, Signer as _};
    use keybound_signer_soft::SoftSigner;

    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = crate::cluster::key_file(dir.path(), &signer);
    let cluster =
        crate::agent_support::cluster_on("127.0.0.1:0".parse().unwrap(), signer.public_key(), "t")
            .await;
    let ca = crate::cluster::ca_file(&cluster, dir.path());
    let upstream = cluster.proxy_addr().replace("localhost", "127.0.0.1");
    let front = Front::start(upstream).await;
    let key_yaml = format!(
        "  bound_keypair:\n    static_private_key_path: {}\n",
        key.display()
    );
    let cfg = crate::agent_support::config(dir.path(), &front.addr, &ca, &key_yaml, "1h", "2h");
    let mut cmd = crate::support::keybound();
    cmd.args(["start", "--oneshot", "-c"])
        .arg(&cfg)
        .env(keybound::upgrade::ENV, "false");
    let output =
        tokio::task::spawn_blocking(move || crate::support::output_within(&mut cmd, BOUND))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    crate::support::assert_output_verifies(&dir.path().join("out"));
    let beats = cluster.cluster.heartbeats();
    assert_eq!(beats.len(), 1, "{beats:?}");
    assert!(beats[0].one_shot, "{beats:?}");
    assert_eq!(
        front.accepted(),
        2,
        "the join's and the outputs' connections, and no other: {stderr}"
    );
}

/// A `--oneshot` run's heartbeat goes beside its outputs, in their flight, not after them: with
/// the only output's `GenerateUserCerts` never answered (until the RPC deadline ends the run),
/// the heartbeat has reached the cluster all the same. (After the outputs, it cost a round trip
/// of its own, and a run whose outputs failed sent none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneshot_sends_its_heartbeat_beside_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) =
        crate::cluster::with_stalling_outputs(dir.path(), "", &[("slow", "[stalled]")]).await;
    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::StallUserCerts));
    let mut cmd = crate::support::keybound();
    cmd.args(["start", "--oneshot", "-c"])
        .arg(&cfg)
        .env(keybound::auth::RPC_TIMEOUT_ENV, "3s");
    let output =
        tokio::task::spawn_blocking(move || crate::support::output_within(&mut cmd, BOUND))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        !dir.path().join("slow").join("tlscert").exists(),
        "{stderr}"
    );
    let beats = cluster.cluster.heartbeats();
    assert_eq!(beats.len(), 1, "{stderr}");
    assert!(beats[0].one_shot, "{beats:?}");
}

/// The first dial of a process to the Proxy tests whether an ALPN connection upgrade is needed
/// (Teleport's `IsALPNConnUpgradeRequired`: a TLS handshake of its own) and makes the direct
/// handshake at once, not after it: the test's TCP and TLS round trips no longer come before
/// the join's. The front here holds the first connection it accepts, unread and unanswered,
/// until a second one comes (then both go through). The join completes, and the second
/// connection came while the first was still held, that is, before the test had an answer.
/// One after another, the second would only come once the held test had given up (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_test_and_the_direct_handshake_go_at_once() {
    use keybound_signer::{Algorithm, Signer as _};
    use keybound_signer_soft::SoftSigner;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::AsyncWriteExt as _;

    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = crate::cluster::cluster_for(signer.public_key(), |_| {}).await;
    let ca = crate::cluster::ca_file(&cluster, dir.path());
    let upstream = cluster.proxy_addr().replace("localhost", "127.0.0.1");

    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    let overlapped = std::sync::Arc::new(AtomicBool::new(false));
    let seen = overlapped.clone();
    tokio::spawn(async move {
        let pass = |mut conn: tokio::net::TcpStream, first: Vec<u8>, upstream: String| async move {
            let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
            up.write_all(&first).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
        };
        // The first connection: what it sends is read and kept, nothing answered, until the
        // second comes; whether it closed meanwhile is noted.
        let (held, _) = front.accept().await.unwrap();
        let (closed_tx, mut closed_rx) = tokio::sync::watch::channel(false);
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn(async move {
            let mut held = held;
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            tokio::pin!(release_rx);
            loop {
                tokio::select! {
                    _ = &mut release_rx => return Some((held, kept)),
                    read = tokio::io::AsyncReadExt::read(&mut held, &mut buf) => match read {
                        Ok(0) | Err(_) => {
                            let _ = closed_tx.send(true);
                            return None;
                        }
                        Ok(n) => kept.extend_from_slice(&buf[..n]),
                    },
                }
            }
        });
        let (second, _) = front.accept().await.unwrap();
        seen.store(!*closed_rx.borrow_and_update(), Ordering::SeqCst);
        let _ = release_tx.send(());
        if let Ok(Some((held, kept))) = holder.await {
            tokio::spawn(pass(held, kept, upstream.clone()));
        }
        tokio::spawn(pass(second, Vec::new(), upstream.clone()));
        while let Ok((conn, _)) = front.accept().await {
            tokio::spawn(pass(conn, Vec::new(), upstream.clone()));
        }
    });

    let mut params = crate::cluster::params(&cluster, &ca, "t", std::sync::Arc::new(signer));
    params.proxy =
        keybound::config::HostPort::parse(&format!("127.0.0.1:{front_port}"), 443).unwrap();
    let joined = tokio::time::timeout(BOUND, keybound::join::join(&params))
        .await
        .expect("the join ends")
        .expect("the join goes through the front");
    assert_eq!(joined.identity.info.bot_name, "robot");
    assert!(
        overlapped.load(Ordering::SeqCst),
        "the direct handshake waited for the upgrade test"
    );
}

/// The agent's heartbeats go over its kept connection to Auth, as tbot submits them on its bot
/// client's connection (`lib/tbot/tbot.go`): heartbeats every second open no connection of
/// their own (this failed before, each one opening a connection, and under load its start-up
/// heartbeat's connection was counted as the first renewal's in the test above). When the kept
/// connection has gone (closed by the front), they go on over new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_over_the_kept_connection_and_on_when_it_has_gone() {
    use crate::agent_support::{blocking, metric, wait_for};

    let dir = tempfile::tempdir().unwrap();
    let env = [("KEYBOUND_HEARTBEAT_INTERVAL", "1s")];
    let (cluster, front, agent) = agent_behind_front(dir.path(), &env).await;
    let port = agent.diag;
    blocking(move || {
        wait_for("a renewal", Duration::from_secs(30), || {
            metric(port, "keybound_renewals_total") > 0.0
        })
    })
    .await;
    let state = cluster.cluster.clone();
    // Waits for two heartbeats after the one that may be on its way when `before` is read: the
    // second of them starts after it, so any connection it opens is counted.
    let two_more = |seen: usize| {
        let state = state.clone();
        blocking(move || {
            wait_for("two more heartbeats", Duration::from_secs(30), || {
                state.heartbeats().len() >= seen + 2
            })
        })
    };

    let before = front.accepted();
    two_more(state.heartbeats().len()).await;
    assert_eq!(
        front.accepted() - before,
        0,
        "a heartbeat opened a connection beside the kept one"
    );

    front.close_all();
    two_more(state.heartbeats().len()).await;
    assert!(front.accepted() > before, "no new connection was opened");
    let renewals = blocking(move || metric(port, "keybound_renewals_total")).await;
    assert_eq!(renewals, 1.0, "a renewal ran between the heartbeats");
    drop(agent);
}
