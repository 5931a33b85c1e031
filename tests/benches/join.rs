//! One full join on loopback against the in-process dev cluster, per key type: median and p99.
//! A benchmark, not a test: `cargo bench --bench join` (or `make bench`). It asserts nothing
//! about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keybound::config::HostPort;
use keybound::join::{self, JOIN_TIMEOUT, JoinParams};
use keybound::tls::Trust;
use keybound_devcluster::roles::Bot;
use keybound_devcluster::{DevCluster, DevClusterConfig};
use keybound_signer::config::TpmKey;
use keybound_signer::{Algorithm, Signer};
use keybound_signer_pkcs11::testing::TestToken;
use keybound_signer_soft::SoftSigner;
use keybound_signer_tpm::testing::Swtpm;
use keybound_teleport::suite::Suite;

const WARMUP: usize = 10;

#[path = "common.rs"]
mod common;
use common::Stats;

async fn measure(signer: Arc<dyn Signer>, suite: Suite, legacy_only: bool, runs: usize) -> Stats {
    let cluster = DevCluster::start(DevClusterConfig {
        suite,
        legacy_only,
        tokens: vec![common::token("bench", &signer.public_key().to_openssh())],
        // The token's bot must exist, as in Teleport.
        bots: vec![Bot {
            name: "bench".into(),
            roles: Vec::new(),
        }],
        ..Default::default()
    })
    .await
    .expect("dev cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cluster.ca_pem()).expect("ca");
    let params = JoinParams {
        direct: false,
        proxy: HostPort::parse(&cluster.proxy_addr(), 443).expect("addr"),
        trust: Trust::Bundle(ca),
        token: "bench".to_owned(),
        cluster: None,
        credential_ttl: Duration::from_secs(3600),
        signer: Some(signer),
        standard: None,
        timeout: JOIN_TIMEOUT,
    };
    let mut times = Vec::with_capacity(runs);
    for i in 0..WARMUP + runs {
        let started = Instant::now();
        join::join(&params).await.expect("join");
        if i >= WARMUP {
            times.push(started.elapsed());
        }
    }
    Stats::of(times)
}

/// The floor under a join's three exchanges: one gRPC round trip (a unary `Ping` to Auth on an
/// established connection, through the same ALPN router and TLS stack), and what opening a
/// connection costs (TCP, TLS 1.3 with client certificate, HTTP/2, first `Ping`).
async fn round_trips(runs: usize) {
    use keybound::auth::{AuthClient, AuthRoute};
    let signer = Arc::new(SoftSigner::generate(Algorithm::Ed25519).expect("key"));
    let cluster = common::cluster_with_bot("rtt", &signer.public_key().to_openssh()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let prepared = common::prepared(&cluster, dir.path(), "rtt", "1h", signer.clone());
    let params = JoinParams {
        direct: false,
        proxy: prepared.proxy.clone(),
        trust: prepared.trust.clone(),
        token: "rtt".to_owned(),
        cluster: None,
        credential_ttl: Duration::from_secs(3600),
        signer: Some(signer),
        standard: None,
        timeout: JOIN_TIMEOUT,
    };
    let identity = join::join(&params).await.expect("join").identity;
    let route = AuthRoute::Proxy(prepared.proxy.clone());
    let auth = AuthClient::connect(&route, &identity)
        .await
        .expect("connect");
    let mut rtt = Vec::with_capacity(runs * 5);
    for i in 0..WARMUP + runs * 5 {
        let started = Instant::now();
        auth.ping().await.expect("ping");
        if i >= WARMUP {
            rtt.push(started.elapsed());
        }
    }
    let rtt = Stats::of(rtt);
    let mut connect = Vec::with_capacity(runs);
    for i in 0..WARMUP + runs {
        let started = Instant::now();
        let auth = AuthClient::connect(&route, &identity)
            .await
            .expect("connect");
        auth.ping().await.expect("ping");
        if i >= WARMUP {
            connect.push(started.elapsed());
        }
    }
    let connect = Stats::of(connect);
    for (name, stats) in [("gRPC round trip", rtt), ("connect + 1st RPC", connect)] {
        println!(
            "{name:<42} {:>8.3}ms {:>8.3}ms",
            stats.p50.as_secs_f64() * 1e3,
            stats.p99.as_secs_f64() * 1e3
        );
        common::record("rtt", name, stats.fields("time"));
    }
}

fn main() {
    let quick = common::quick();
    let runs = if quick { 3 } else { 200 };
    let runtime = common::runtime();
    println!(
        "one join, in process, TLS + gRPC on loopback, {runs} runs after {WARMUP} warm-up runs"
    );
    println!(
        "{:<20} {:<12} {:<8} {:>10} {:>10}",
        "bound key", "suite", "rpc", "median", "p99"
    );
    let soft = |algorithm| -> (String, Arc<dyn Signer>) {
        (
            format!("file {algorithm}"),
            Arc::new(SoftSigner::generate(algorithm).expect("key")),
        )
    };
    let hsm = |algorithm| -> (String, Arc<dyn Signer>) {
        let token = TestToken::new("joinbench");
        let signer =
            keybound_signer_pkcs11::generate(&token.config("k"), algorithm, false).expect("key");
        (format!("softhsm {algorithm}"), Arc::new(signer))
    };
    let swtpm = Swtpm::start();
    let tpm = || -> (String, Arc<dyn Signer>) {
        let signer =
            keybound_signer_tpm::TpmSigner::open(&swtpm.config(TpmKey::Handle(0x8100_0100)))
                .or_else(|_| {
                    keybound_signer_tpm::generate(
                        &swtpm.config(TpmKey::Handle(0x8100_0100)),
                        Algorithm::EcdsaP256Sha256,
                        false,
                    )
                    .map(|g| g.signer)
                })
                .expect("key");
        ("swtpm ecdsa-p256".to_owned(), Arc::new(signer))
    };
    for ((name, signer), suite, legacy_only) in [
        (soft(Algorithm::Ed25519), Suite::BalancedV1, false),
        (soft(Algorithm::EcdsaP256Sha256), Suite::BalancedV1, false),
        (soft(Algorithm::EcdsaP256Sha256), Suite::FipsV1, false),
        (hsm(Algorithm::Ed25519), Suite::BalancedV1, false),
        (hsm(Algorithm::EcdsaP256Sha256), Suite::BalancedV1, false),
        (tpm(), Suite::BalancedV1, false),
        (soft(Algorithm::Ed25519), Suite::BalancedV1, true),
        (soft(Algorithm::Ed25519), Suite::Legacy, false),
    ] {
        // KEYBOUND_BENCH_ONLY=<text>: only the rows whose "key suite rpc" contains it (to
        // profile one).
        let label = format!(
            "{name} {suite} {}",
            if legacy_only { "legacy" } else { "join" }
        );
        if std::env::var("KEYBOUND_BENCH_ONLY").is_ok_and(|only| !label.contains(&only)) {
            continue;
        }
        let stats = runtime.block_on(measure(
            signer,
            suite,
            legacy_only,
            if suite == Suite::Legacy {
                (runs / 4).max(1)
            } else {
                runs
            },
        ));
        println!(
            "{:<20} {:<12} {:<8} {:>8.2}ms {:>8.2}ms",
            name,
            suite.to_string(),
            if legacy_only { "legacy" } else { "join" },
            stats.p50.as_secs_f64() * 1e3,
            stats.p99.as_secs_f64() * 1e3
        );
        let rpc = if legacy_only { "legacy" } else { "join" };
        common::record(
            "join",
            &name,
            [
                ("suite".to_owned(), suite.to_string().into()),
                ("rpc".to_owned(), rpc.into()),
            ]
            .into_iter()
            .chain(stats.fields("time")),
        );
    }
    runtime.block_on(round_trips(runs));
    tls_configs(runs);
}

/// What building a TLS client configuration costs: the system trust store the first time (then
/// kept for the process), and a CA bundle (read every time, as it may change).
fn tls_configs(runs: usize) {
    use keybound::tls::client_config;
    let alpn: &[&[u8]] = &[b"h2"];
    let started = Instant::now();
    if client_config(&Trust::System, alpn).is_err() {
        println!("no system trust store here: install ca-certificates to time it");
        return;
    }
    let first = started.elapsed();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("ca.pem");
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &bundle).expect("a CA bundle to read");
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        client_config(&Trust::Bundle(bundle.clone()), alpn).expect("config");
        times.push(started.elapsed());
    }
    let bundle = Stats::of(times);
    for (name, stats) in [
        (
            "TLS config, system roots, first",
            Stats {
                p50: first,
                p99: first,
            },
        ),
        ("TLS config, same roots as a bundle", bundle),
    ] {
        println!(
            "{name:<42} {:>8.3}ms {:>8.3}ms",
            stats.p50.as_secs_f64() * 1e3,
            stats.p99.as_secs_f64() * 1e3
        );
        common::record("tls", name, stats.fields("time"));
    }
}
