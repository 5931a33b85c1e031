//! What could stall the agent's renewals and must not: an Auth call that never answers, and a
//! flood of idle and slow connections on the diagnostics endpoint.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::agent_support::{Agent, blocking, file_key_agent, get, metric, wait_for};

/// A cluster that never answers `GenerateUserCerts` for one output's roles: the agent's cycle
/// still ends (each RPC has a deadline), so it goes on renewing the bot identity and writing the
/// other output, leaves the stalled output's files as they were, and writes that output again
/// once the cluster answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_auth_call_does_not_stop_renewals() {
    use keybound_devcluster::Misbehaviour;

    use crate::support::snapshot;

    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = crate::cluster::with_a_stalling_output(
        dir.path(),
        "credential_ttl: 1m\nrenewal_interval: 1s\n",
    )
    .await;
    let (fine, slow) = (dir.path().join("fine"), dir.path().join("slow"));
    let dir_path = dir.path().to_owned();
    let agent =
        blocking(move || Agent::start(&cfg, &dir_path, &[(keybound::auth::RPC_TIMEOUT_ENV, "1s")]))
            .await;
    let port = agent.diag;
    let slow_path = slow.clone();
    blocking(move || {
        wait_for("both outputs", Duration::from_secs(20), || {
            metric(port, "keybound_renewals_total") >= 1.0 && slow_path.join("tlscert").is_file()
        })
    })
    .await;

    cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::StallUserCerts));
    // Cycles run one after another: once one has met the stall, none started before it can
    // still write the output.
    let log = agent.log.clone();
    blocking(move || {
        wait_for("the first stalled call", Duration::from_secs(30), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("did not answer GenerateUserCerts within 1s")
        })
    })
    .await;
    // The agent may be writing `fine` at any moment: compare its certificate, which is renamed
    // into place whole, not a listing of the directory.
    let cert = |dir: &Path| std::fs::read(dir.join("tlscert")).unwrap();
    let before_slow = snapshot(&slow);
    let before_fine = cert(&fine);
    let joins = cluster.cluster.joins_completed();
    let state = cluster.cluster.clone();
    blocking(move || {
        wait_for(
            "three renewals while an output stalls",
            Duration::from_secs(30),
            || state.joins_completed() >= joins + 3,
        )
    })
    .await;
    assert_eq!(snapshot(&slow), before_slow, "the stalled output changed");
    assert_ne!(
        cert(&fine),
        before_fine,
        "the other output was not rewritten"
    );
    // tbot's statuses: the identity and `fine` healthy, `slow` not, with the cause.
    assert_eq!(get(port, "/readyz/identity").unwrap().0, 200);
    assert_eq!(get(port, "/readyz/fine").unwrap().0, 200);
    let (code, body) = get(port, "/readyz/slow").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("did not answer GenerateUserCerts"), "{body}");
    assert_eq!(get(port, "/readyz").unwrap().0, 503);

    // The cluster answers again: the stalled output is written at the next attempt.
    cluster.cluster.set_misbehaviour(None);
    let (slow_path, before_cert) = (slow.clone(), cert(&slow));
    blocking(move || {
        wait_for(
            "the stalled output written again",
            Duration::from_secs(30),
            || cert(&slow_path) != before_cert,
        )
    })
    .await;
    crate::support::assert_output_verifies(&slow);
    blocking(move || {
        wait_for("every service ready", Duration::from_secs(10), || {
            get(port, "/readyz").is_some_and(|(c, _)| c == 200)
        })
    })
    .await;
    // Still the bot instance it started with: every renewal was an authenticated rejoin.
    assert_eq!(cluster.cluster.bot_instances("robot"), 1);
    drop(agent);
}

/// CPU time (user + system) a process has used so far, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name, in parentheses, may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Whether the server closed `tcp` (end of stream or reset, after whatever it sent), waiting
/// at most `limit` for it.
fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tcp.set_read_timeout(Some(left)).unwrap();
        match tcp.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// The diagnostics endpoint under a flood of idle and slow-header connections, in an agent
/// with 64 file descriptors (`prlimit`): it caps its connections, closes the idle and slow
/// ones, does not spin on `accept`, and the renewals go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_diagnostics_connections_does_not_stop_renewals() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let (cluster, cfg) = file_key_agent(dir.path(), "1m").await;
    let dir_path = dir.path().to_owned();
    let mut limited = Command::new(crate::support::tool("prlimit"));
    limited
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_keybound"))
        .env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY");
    let agent = blocking(move || Agent::start_with(limited, &cfg, &dir_path, &[])).await;
    let (port, pid) = (agent.diag, agent.child.as_ref().unwrap().id());
    let state = cluster.cluster.clone();
    blocking(move || {
        wait_for("the first renewal", Duration::from_secs(20), || {
            state.joins_completed() >= 1
        })
    })
    .await;

    // The flood, on a thread of its own: 20 connections that send a request's headers a byte
    // every half second, never finishing, then 200 that send nothing, all held until `stop`.
    // (Connections past the agent's cap and the listen backlog wait in `connect`: the kernel
    // drops their SYNs until slots free up.) It reports whether the first slow connection was
    // closed by the agent.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut slow: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let _ = tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                tcp
            })
            .collect();
        let drip = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                for tcp in &mut slow {
                    let _ = tcp.write_all(b"X");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            closed_within(&mut slow[0], Duration::from_secs(10))
        });
        let idle: Vec<TcpStream> = (0..200)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        (drip.join().unwrap(), idle.len())
    });

    let state = cluster.cluster.clone();
    let (renewed, used) = blocking(move || {
        // Let the flood build up, then measure a window of a few seconds.
        std::thread::sleep(Duration::from_secs(1));
        let (joins, ticks, started) = (state.joins_completed(), cpu_ticks(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(6));
        // Clock ticks are 1/100 s on Linux (`getconf CLK_TCK`).
        let used = (cpu_ticks(pid) - ticks) as f64 / 100.0 / started.elapsed().as_secs_f64();
        (state.joins_completed() - joins, used)
    })
    .await;
    // Renewals every second went on; the bound on CPU is far above what the agent needs and far
    // below a loop spinning on `accept` (a whole core).
    assert!(renewed >= 2, "{renewed} renewals in 6 s of flood");
    assert!(
        used < 0.3,
        "the agent used {used:.2} of a core while flooded"
    );

    // The header deadline closed the slow connections the agent took in first; all 200 idle
    // ones got through `connect`, so the agent went on accepting as slots freed up.
    stop.store(true, Ordering::Relaxed);
    let (closed_slow, idle) = blocking(move || flood.join().unwrap()).await;
    assert!(closed_slow, "a slow-header connection was left open");
    assert_eq!(idle, 200);
    // A fresh idle connection is taken in and closed in its turn, and requests are answered.
    blocking(move || {
        let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(
            closed_within(&mut fresh, Duration::from_secs(40)),
            "an idle connection was left open"
        );
        wait_for("/healthz after the flood", Duration::from_secs(20), || {
            get(port, "/healthz").is_some_and(|(c, _)| c == 200)
        });
    })
    .await;
    drop(agent);
}
