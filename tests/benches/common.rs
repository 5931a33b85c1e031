//! What the benchmarks share: a runtime like the agent's, percentiles, and a dev cluster with a
//! bot that may impersonate a role, plus the agent configuration that renews against it.

#![allow(dead_code, reason = "each benchmark uses a part")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keybound::auth::AuthRoute;
use keybound::config::{Config, HostPort};
use keybound::renewal::Prepared;
use keybound::tls::Trust;
use keybound_devcluster::roles::{Bot, Role};
use keybound_devcluster::tokens;
use keybound_devcluster::{DevCluster, DevClusterConfig};
use keybound_signer::Signer;

/// Two worker threads, as on the 2-core machine the numbers come from.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A short run: under `cargo test --benches` (which passes `--test`), or with `--quick`
/// (`scripts/perf.py --quick`, to check the script).
pub(crate) fn quick() -> bool {
    std::env::args().any(|a| a == "--test" || a == "--list" || a == "--quick")
}

/// A memory figure (`VmRSS`, `VmHWM`, ...) of process `pid` (or `self`) from
/// `/proc/<pid>/status`, in KiB; 0 when it cannot be read.
pub(crate) fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `p` quantile of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Median and p99 of some samples.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

impl Stats {
    pub(crate) fn of(mut times: Vec<Duration>) -> Self {
        times.sort();
        Self {
            p50: percentile(&times, 0.5),
            p99: percentile(&times, 0.99),
        }
    }

    /// `{"<prefix>_p50_us": .., "<prefix>_p99_us": ..}` entries for [`record`].
    pub(crate) fn fields(&self, prefix: &str) -> [(String, serde_json::Value); 2] {
        let us = |d: Duration| serde_json::json!((d.as_secs_f64() * 1e7).round() / 10.0);
        [
            (format!("{prefix}_p50_us"), us(self.p50)),
            (format!("{prefix}_p99_us"), us(self.p99)),
        ]
    }
}

/// Runs `op` `runs` times after a tenth as many warm-up runs; the time of each run.
pub(crate) fn time_runs(runs: usize, mut op: impl FnMut()) -> Stats {
    for _ in 0..runs / 10 + 1 {
        op();
    }
    Stats::of(
        (0..runs)
            .map(|_| {
                let started = std::time::Instant::now();
                op();
                started.elapsed()
            })
            .collect(),
    )
}

/// Times `a` and `b` alternately, `runs` times each after a tenth as many warm-up runs, so that
/// whatever else the machine does weighs on both alike.
pub(crate) fn time_pair(runs: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Stats, Stats) {
    for _ in 0..runs / 10 + 1 {
        a();
        b();
    }
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let started = std::time::Instant::now();
        a();
        ta.push(started.elapsed());
        let started = std::time::Instant::now();
        b();
        tb.push(started.elapsed());
    }
    (Stats::of(ta), Stats::of(tb))
}

/// Appends one result, as a JSON line, to the file `KEYBOUND_BENCH_JSON` names (how
/// `scripts/perf.py` collects the figures for docs/PERFORMANCE.md); nothing when it is unset.
pub(crate) fn record(
    bench: &str,
    name: &str,
    fields: impl IntoIterator<Item = (String, serde_json::Value)>,
) {
    let Some(path) = std::env::var_os("KEYBOUND_BENCH_JSON") else {
        return;
    };
    let mut line = serde_json::Map::new();
    line.insert("bench".into(), bench.into());
    line.insert("name".into(), name.into());
    line.extend(fields);
    let mut text = serde_json::Value::Object(line).to_string();
    text.push('\n');
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("append to KEYBOUND_BENCH_JSON");
}

/// A bound_keypair token named `name` for the bot `name`, insecure recovery.
pub(crate) fn token(name: &str, key: &str) -> tokens::Token {
    let yaml = format!(
        "kind: token\nversion: v2\nmetadata:\n  name: {name}\nspec:\n  bot_name: {name}\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n      initial_public_key: {key}\n    recovery:\n      mode: insecure\n"
    );
    tokens::parse(&yaml, name).expect("token").remove(0)
}

/// A dev cluster with the token and bot `name`, which may impersonate the role `access`.
pub(crate) async fn cluster_with_bot(name: &str, key: &str) -> DevCluster {
    DevCluster::start(DevClusterConfig {
        tokens: vec![token(name, key)],
        roles: vec![Role {
            name: "access".into(),
            logins: vec!["ci".into()],
            ..Role::default()
        }],
        bots: vec![Bot {
            name: name.into(),
            roles: vec!["access".into()],
        }],
        ..Default::default()
    })
    .await
    .expect("cluster")
}

/// What `keybound start` would prepare for the bot `name`: storage and one identity output
/// under `dir`, `lifetime` (credential_ttl and renewal_interval), the cluster's CA trusted.
pub(crate) fn prepared(
    cluster: &DevCluster,
    dir: &Path,
    name: &str,
    lifetime: &str,
    signer: Arc<dyn Signer>,
) -> Prepared {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cluster.ca_pem()).expect("ca");
    let config = Config::parse(
        &format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: {name}\nstorage:\n  type: directory\n  path: {}\ncredential_ttl: {lifetime}\nrenewal_interval: {lifetime}\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy_addr(),
            dir.join("storage").display(),
            dir.join("out").display()
        ),
        name,
    )
    .expect("config");
    let proxy = HostPort::parse(&cluster.proxy_addr(), 443).expect("addr");
    Prepared {
        auth_route: AuthRoute::Proxy(proxy.clone()),
        direct: false,
        proxy,
        trust: Trust::Bundle(ca),
        signer_config: keybound_signer::config::SignerConfig::Env(Default::default()),
        signer: Some(signer),
        standard: None,
        config,
        rpc_timeout: keybound::auth::RPC_TIMEOUT,
    }
}
