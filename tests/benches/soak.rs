//! A soak run of the long-running agent: thousands of renewals with a tiny lifetime against an
//! in-process dev cluster, writing real outputs each time. Reports resident memory and open file
//! descriptors early and at the end; they must stay flat. A benchmark, not a test:
//! `cargo bench --bench soak` (`RENEWALS=N` to change the count).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keybound::agent::{Outcome, Schedule, Status, run_loop};
use keybound::renewal::cycle;
use keybound::storage::Held;
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;
use tokio::sync::Notify;

#[path = "common.rs"]
mod common;

fn rss_kib() -> u64 {
    common::status_kib("self", "VmRSS")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn main() {
    let quick = common::quick();
    let renewals: usize = std::env::var("RENEWALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20 } else { 3000 });
    let warmup = (renewals / 10).max(5);
    common::runtime().block_on(async move {
        let signer = SoftSigner::generate(Algorithm::Ed25519).expect("key");
        let cluster = common::cluster_with_bot("soak", &signer.public_key().to_openssh()).await;
        let dir = tempfile::tempdir().expect("dir");
        let prepared = Arc::new(common::prepared(&cluster, dir.path(), "soak", "1s", Arc::new(signer)));
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
                        Ok(cycle) => (Outcome::Renewed(cycle.joined.expect("a renewal").identity.info.not_after), String::new()),
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
            None,
            schedule,
            Status::new(),
            Arc::new(Notify::new()),
            &(),
            done.notified(),
        )
        .await;
        let elapsed = started.elapsed();
        let (rss_early, fds_early) = *early.lock().expect("lock");
        assert_eq!(cluster.cluster.bot_instances("soak"), 1, "every renewal after the first was a soft rejoin");
        println!("{renewals} renewals (authenticated rejoin + storage + role-impersonated identity output each) in {:.1} s: {:.0} renewals/s", elapsed.as_secs_f64(), renewals as f64 / elapsed.as_secs_f64());
        println!("resident memory: {rss_early} KiB after {warmup}, {} KiB after {renewals}", rss_kib());
        println!("open file descriptors: {fds_early} after {warmup}, {} after {renewals}", open_fds());
        common::record(
            "soak",
            "renewals",
            [
                ("renewals".to_owned(), renewals.into()),
                ("per_second".to_owned(), (renewals as f64 / elapsed.as_secs_f64()).round().into()),
                ("rss_early_kib".to_owned(), rss_early.into()),
                ("rss_end_kib".to_owned(), rss_kib().into()),
                ("fds_early".to_owned(), fds_early.into()),
                ("fds_end".to_owned(), open_fds().into()),
            ],
        );
    });
}
