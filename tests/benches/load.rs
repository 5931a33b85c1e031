//! Many bots joining at once: one load generator (this process) against `keybound dev-cluster`
//! running as its own process on loopback. Each of `KEYBOUND_LOAD_BOTS` bots (default 500) has its
//! own token and file Ed25519 key; all join at the same instant, `KEYBOUND_LOAD_ROUNDS` times
//! (default 4), so that many joins are in flight together. Reports joins per second, the latency
//! of one join (median, p99) and every error. A benchmark, not a test: `cargo bench --bench load`
//! (`scripts/perf.py` runs it for docs/PERFORMANCE.md); it asserts nothing about time, but it
//! fails when any join fails.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybound::config::HostPort;
use keybound::join::{self, JOIN_TIMEOUT, JoinParams};
use keybound::tls::Trust;
use keybound_signer::{Algorithm, Signer};
use keybound_signer_soft::SoftSigner;

#[path = "common.rs"]
mod common;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn main() {
    let quick = common::quick();
    let bots = if quick {
        4
    } else {
        setting("KEYBOUND_LOAD_BOTS", 500)
    };
    let rounds = if quick {
        1
    } else {
        setting("KEYBOUND_LOAD_ROUNDS", 4)
    };
    let dir = tempfile::tempdir().expect("tempdir");

    let signers: Vec<Arc<dyn Signer>> = (0..bots)
        .map(|_| {
            Arc::new(SoftSigner::generate(Algorithm::Ed25519).expect("key")) as Arc<dyn Signer>
        })
        .collect();
    let resources: String = signers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "kind: token\nversion: v2\nmetadata:\n  name: load-{i}\nspec:\n  bot_name: load-{i}\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n      initial_public_key: {}\n    recovery:\n      mode: insecure\n---\nkind: bot\nversion: v1\nmetadata:\n  name: load-{i}\nspec:\n  roles: []\n---\n",
                s.public_key().to_openssh()
            )
        })
        .collect();
    let resources_path = dir.path().join("tokens.yaml");
    std::fs::write(&resources_path, resources).expect("tokens");
    let ca = dir.path().join("ca.pem");

    let mut cluster = Command::new(env!("CARGO_BIN_EXE_keybound"))
        .args(["dev-cluster", "--listen", "127.0.0.1:0", "--ca-out"])
        .arg(&ca)
        .arg("--resources")
        .arg(&resources_path)
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start keybound dev-cluster");
    let pid = cluster.id();
    let mut lines = BufReader::new(cluster.stdout.take().expect("stdout")).lines();
    let proxy = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("proxy_server: ").map(str::to_owned))
        .expect("the dev cluster prints proxy_server");
    // Keep reading what else it prints, so that its stdout never breaks.
    std::thread::spawn(move || lines.for_each(drop));
    let proxy = HostPort::parse(&proxy, 443).expect("address");

    let runtime = common::runtime();
    let outcome = runtime.block_on(async {
        let mut times = Vec::with_capacity(bots * rounds);
        let mut errors = Vec::new();
        let started = Instant::now();
        for _ in 0..rounds {
            let barrier = Arc::new(tokio::sync::Barrier::new(bots));
            let tasks: Vec<_> = signers
                .iter()
                .enumerate()
                .map(|(i, signer)| {
                    let params = JoinParams {
                        direct: false,
                        proxy: proxy.clone(),
                        trust: Trust::Bundle(ca.clone()),
                        token: format!("load-{i}"),
                        cluster: None,
                        credential_ttl: Duration::from_secs(3600),
                        signer: Some(signer.clone()),
                        standard: None,
                        timeout: JOIN_TIMEOUT,
                    };
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let started = Instant::now();
                        join::join(&params).await.map(|_| started.elapsed())
                    })
                })
                .collect();
            for task in tasks {
                match task.await.expect("join task") {
                    Ok(elapsed) => times.push(elapsed),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        (started.elapsed(), times, errors)
    });
    let (elapsed, times, errors) = outcome;
    let cluster_rss = common::status_kib(&pid.to_string(), "VmHWM");
    let _ = cluster.kill();
    let _ = cluster.wait();

    let joins = times.len();
    let per_second = joins as f64 / elapsed.as_secs_f64();
    let stats = common::Stats::of(times);
    println!(
        "{bots} bots joining at once, {rounds} rounds: {joins} joins in {:.2} s ({per_second:.0} joins/s), \
         one join {:.1} ms median, {:.1} ms p99; {} errors; dev cluster peak RSS {cluster_rss} KiB",
        elapsed.as_secs_f64(),
        stats.p50.as_secs_f64() * 1e3,
        stats.p99.as_secs_f64() * 1e3,
        errors.len()
    );
    common::record(
        "load",
        "concurrent joins",
        [
            ("bots".to_owned(), bots.into()),
            ("rounds".to_owned(), rounds.into()),
            ("joins".to_owned(), joins.into()),
            ("errors".to_owned(), errors.len().into()),
            ("per_second".to_owned(), per_second.round().into()),
            ("cluster_peak_rss_kib".to_owned(), cluster_rss.into()),
        ]
        .into_iter()
        .chain(stats.fields("time")),
    );
    if let Some(first) = errors.first() {
        panic!(
            "{} of {} joins failed; the first: {first}",
            errors.len(),
            bots * rounds
        );
    }
}
