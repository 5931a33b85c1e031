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
