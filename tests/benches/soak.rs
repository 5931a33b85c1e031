//! A soak run of the long-running agent: thousands of renewals with a tiny lifetime against an
//! in-process dev cluster, writing real outputs each time. Reports resident memory and open file
//! descriptors early and at the end; they must stay flat. A benchmark, not a test:
//! `cargo bench --bench soak` (`RENEWALS=N` to change the count).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keybound::agent::{Outcome, Schedule, Status, run_loop};
use keybound::auth::AuthRoute;
use keybound::config::{Config, HostPort};
use keybound::devcluster::roles::{Bot, Role};
use keybound::devcluster::tokens;
use keybound::devcluster::{DevCluster, DevClusterConfig};
use keybound::start::{Held, Prepared, cycle};
use keybound::tls::Trust;
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;
use tokio::sync::Notify;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let renewals: usize = std::env::var("RENEWALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20 } else { 3000 });
    let warmup = (renewals / 10).max(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let signer = SoftSigner::generate(Algorithm::Ed25519).expect("key");
        let yaml = format!(
            "kind: token\nversion: v2\nmetadata:\n  name: soak\nspec:\n  bot_name: soak\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n      initial_public_key: {}\n    recovery:\n      mode: insecure\n",
            signer.public_key().to_openssh()
        );
        let cluster = DevCluster::start(DevClusterConfig {
            tokens: tokens::parse(&yaml, "soak").expect("token"),
            roles: vec![Role { name: "access".into(), logins: vec!["ci".into()], ..Role::default() }],
            bots: vec![Bot { name: "soak".into(), roles: vec!["access".into()] }],
            ..Default::default()
        })
            .await
            .expect("cluster");
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cluster.ca_pem()).expect("ca");
        let config = Config::parse(
            &format!(
                "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: soak\nstorage:\n  type: directory\n  path: {}\ncredential_ttl: 1s\nrenewal_interval: 1s\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
                cluster.proxy_addr(),
                dir.path().join("storage").display(),
                dir.path().join("out").display()
            ),
            "soak",
        )
        .expect("config");
        let proxy = HostPort::parse(&cluster.proxy_addr(), 443).expect("addr");
        let prepared = Arc::new(Prepared {
            auth_route: AuthRoute::Proxy(proxy.clone()),
            direct: false,
            proxy,
            trust: Trust::Bundle(ca),
            signer_config: keybound_signer::config::SignerConfig::Env(Default::default()),
            signer: Arc::new(signer),
            config,
        });
        let done = Arc::new(Notify::new());
        let count = Arc::new(AtomicUsize::new(0));
        let early = Arc::new(std::sync::Mutex::new((0u64, 0usize)));
        let started = Instant::now();
        // Renew back to back: the schedule's interval is a millisecond.
        let mut schedule = Schedule::for_interval(Duration::from_millis(1));
        schedule.renewal_interval = Duration::from_millis(1);
        let held = Arc::new(Held::default());
        let (p, c, d, e) = (prepared.clone(), count.clone(), done.clone(), early.clone());
        run_loop(
            move || {
                let (p, c, d, e, h) = (p.clone(), c.clone(), d.clone(), e.clone(), held.clone());
                async move {
                    let outcome = match cycle(&p, &h).await {
                        Ok(cycle) => (Outcome::Renewed(cycle.joined.identity.info.not_after), String::new()),
                        Err(f) => panic!("renewal failed: {:#}", f.error),
                    };
                    let n = c.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == warmup {
                        *e.lock().expect("lock") = (rss_kib(), open_fds());
                    }
                    if n == renewals {
                        d.notify_one();
                    }
                    outcome
                }
            },
            schedule,
            Status::new(),
            Arc::new(Notify::new()),
            done.notified(),
        )
        .await;
        let elapsed = started.elapsed();
        let (rss_early, fds_early) = *early.lock().expect("lock");
        assert_eq!(cluster.cluster.bot_instances("soak"), 1, "every renewal after the first was a soft rejoin");
        println!("{renewals} renewals (authenticated rejoin + storage + role-impersonated identity output each) in {:.1} s: {:.0} renewals/s", elapsed.as_secs_f64(), renewals as f64 / elapsed.as_secs_f64());
        println!("resident memory: {rss_early} KiB after {warmup}, {} KiB after {renewals}", rss_kib());
        println!("open file descriptors: {fds_early} after {warmup}, {} after {renewals}", open_fds());
    });
}
