//! One full join on loopback against the in-process dev cluster, per key type: median and p99.
//! A benchmark, not a test: `cargo bench --bench join` (or `make bench`). It asserts nothing
//! about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keybound::config::HostPort;
use keybound::devcluster::{DevCluster, DevClusterConfig};
use keybound::join::{self, JOIN_TIMEOUT, JoinParams};
use keybound::suite::Suite;
use keybound::tls::Trust;
use keybound_signer::config::TpmKey;
use keybound_signer::{Algorithm, Signer};
use keybound_signer_pkcs11::testing::TestToken;
use keybound_signer_soft::SoftSigner;
use keybound_signer_tpm::testing::Swtpm;

const WARMUP: usize = 10;

#[path = "common.rs"]
mod common;
use common::percentile;

async fn measure(
    signer: Arc<dyn Signer>,
    suite: Suite,
    legacy_only: bool,
    runs: usize,
) -> (Duration, Duration) {
    let cluster = DevCluster::start(DevClusterConfig {
        suite,
        legacy_only,
        tokens: vec![common::token("bench", &signer.public_key().to_openssh())],
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
        credential_ttl: Duration::from_secs(3600),
        signer,
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
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn main() {
    // `cargo test --benches` runs this with --test-ish arguments; keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
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
        let (median, p99) = runtime.block_on(measure(
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
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
}
