//! One renewal on loopback against the in-process dev cluster: the authenticated rejoin alone,
//! and the whole cycle a running agent repeats (authenticated rejoin, storage, one
//! role-impersonated identity output), next to the same cycle done as an unauthenticated
//! recovery join. Median and p99. A benchmark, not a test: `cargo bench --bench renewal` (or
//! `make bench`); it asserts nothing about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keybound::auth::{AuthClient, AuthRoute};
use keybound::join::{self, JOIN_TIMEOUT, JoinParams};
use keybound::renewal::cycle;
use keybound::storage::Held;
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

#[path = "common.rs"]
mod common;

const WARMUP: usize = 10;

fn report(name: &str, times: Vec<Duration>) {
    let stats = common::Stats::of(times);
    println!(
        "{name:<58} {:>8.2}ms {:>8.2}ms",
        stats.p50.as_secs_f64() * 1e3,
        stats.p99.as_secs_f64() * 1e3
    );
    common::record("renewal", name, stats.fields("time"));
}

fn main() {
    let quick = common::quick();
    let runs = if quick { 3 } else { 200 };
    common::runtime().block_on(async move {
        let signer = Arc::new(SoftSigner::generate(Algorithm::Ed25519).expect("key"));
        let cluster = common::cluster_with_bot("bench", &signer.public_key().to_openssh()).await;
        let dir = tempfile::tempdir().expect("dir");
        let prepared = common::prepared(&cluster, dir.path(), "bench", "1h", signer.clone());
        let proxy = prepared.proxy.clone();
        println!(
            "one renewal, in process, on loopback, {runs} runs after {WARMUP} warm-up runs (file Ed25519 bound key, balanced-v1)"
        );
        println!("{:<58} {:>10} {:>10}", "", "median", "p99");

        // The authenticated rejoin alone: mutual TLS to Auth through the proxy, then the join.
        let params = JoinParams {
            direct: false,
            proxy: proxy.clone(),
            trust: prepared.trust.clone(),
            token: "bench".to_owned(),
            cluster: None,
            credential_ttl: Duration::from_secs(3600),
            signer: Some(signer.clone()),
            standard: None,
            timeout: JOIN_TIMEOUT,
        };
        let route = AuthRoute::Proxy(proxy.clone());
        let mut identity = join::join(&params).await.expect("join").identity;
        let mut times = Vec::with_capacity(runs);
        for i in 0..WARMUP + runs {
            let started = Instant::now();
            let auth = AuthClient::connect(&route, &identity).await.expect("connect");
            identity = join::rejoin(&params, &auth).await.expect("rejoin").identity;
            if i >= WARMUP {
                times.push(started.elapsed());
            }
        }
        report("authenticated rejoin (connect + JoinService.Join)", times);

        // The agent's whole cycle, with one identity output.
        for (name, authenticated) in [
            ("renewal: authenticated rejoin + storage + 1 output", true),
            ("renewal: recovery join (no identity) + storage + 1 output", false),
        ] {
            let mut held = Held::default();
            let mut times = Vec::with_capacity(runs);
            for i in 0..WARMUP + runs {
                if !authenticated {
                    held = Held::default();
                }
                let started = Instant::now();
                let done = cycle(&prepared, &held).await.expect("renewal");
                // The first authenticated-series renewal has no identity yet.
                let joined = done.joined.expect("a renewal");
                assert_eq!(joined.authenticated, authenticated && i > 0);
                if i >= WARMUP {
                    times.push(started.elapsed());
                }
            }
            report(name, times);
        }
    });
}
