//! The long-running agent: renew on a schedule, survive failures, report health.
//!
//! It starts as tbot's identity service does (`Initialize`, `lib/tbot/internal/identity/
//! service.go`): with no bot identity to start from, the first join must work, or the agent
//! ends with that join's exit code (a service manager may start it again); with one, a failure
//! is retried like any renewal's.
//!
//! The loop has the shape of linkerd's identity `Certify::run`: join, then sleep until the next
//! renewal, forever. What happens after a failure depends on its kind:
//! - **transient** (the cluster or the device is unreachable, a timeout): capped exponential
//!   back-off with full jitter, while the current identity stays in place until it expires;
//! - **rejected** (the cluster said no, or asked for something a static key cannot do): logged as
//!   an error saying what to do, and retried at a slow cadence (an operator's fix takes
//!   minutes); a held identity the cluster no longer knows is not retried at all: the renewal
//!   joins with the static key at once (`renewal.rs`);
//! - **halt** (a wrong PIN, a locked token or TPM): no further signing attempts at all, so a real
//!   token is never locked by retries; the agent reports itself unhealthy and waits for an
//!   operator's SIGHUP after fixing the cause.
//!
//! SIGTERM and SIGINT stop the agent (never in the middle of writing files: writes happen in one
//! synchronous step after a join). SIGHUP and SIGUSR1 renew now; SIGHUP first opens the signer
//! again, reading its PIN or authorization value from the source afresh, so that a fixed PIN
//! file takes effect (a value the device refused before is never presented again: the backends
//! refuse it locally, see `keybound_signer::refused`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use rand_core::RngCore as _;
use tokio::sync::Notify;
use tracing::{error, info, warn};

mod diag;
mod due;
mod readyz;
mod schedule;
mod status;

pub use diag::{
    DIAG_CONNECTION_LIFETIME, DIAG_HEADER_TIMEOUT, DIAG_MAX_CONNECTIONS, diag, diag_connection_cap,
};
pub use due::Between;
pub use readyz::IDENTITY;
pub use schedule::{Outcome, Schedule, classify};
use status::Metered;
pub use status::{Metrics, RENEWAL_RETRY_LIMIT, Status};

use crate::renewal::{Prepared, Report as _, cycle_reporting};
use crate::storage::Held;
use crate::{ExitKind, Failure};

// === The loop ===

/// Runs `cycle` on `schedule` until `shutdown` completes, and `between` whenever it is due in
/// the waits (the outputs due before the next renewal of the bot identity; when both are due,
/// the cycle goes first). `renew_now` cuts a wait short (lifts a halt, and makes everything of
/// `between` due). Returns when shut down.
pub async fn run_loop<C, F>(
    mut cycle: C,
    first: Option<(Outcome, String)>,
    schedule: Schedule,
    status: Arc<Status>,
    renew_now: Arc<Notify>,
    between: &impl Between,
    shutdown: impl Future<Output = ()>,
) where
    C: FnMut() -> F,
    F: Future<Output = (Outcome, String)>,
{
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    let mut first = first;
    loop {
        let (outcome, reason) = match first.take() {
            Some(done) => done,
            None => tokio::select! {
                result = cycle() => result,
                () = &mut shutdown => return,
            },
        };
        status.record(&outcome, &reason);
        let delay = match &outcome {
            Outcome::Renewed(expiry) => {
                failures = 0;
                let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
                info!(next_in = %humantime::format_duration(schedule.renewal_interval), expires_in = %humantime::format_duration(Duration::from_secs(left.as_secs())), "renewed");
                Some(schedule.renewal_interval)
            }
            Outcome::Transient(why) => {
                failures += 1;
                let delay = schedule.backoff(failures, rand_core::OsRng.next_u64());
                let valid = status.expiry().is_some_and(|e| e > SystemTime::now());
                warn!(error = %why, failures, retry_in = ?delay, keeping_current_identity = valid, "the attempt failed; will retry soon");
                Some(delay)
            }
            Outcome::Rejected(why) => {
                failures = 0;
                error!(error = %why, retry_in = %humantime::format_duration(schedule.rejected_retry), "the cluster refused; fix the cause, then send SIGHUP to retry at once");
                Some(schedule.rejected_retry)
            }
            Outcome::Halt(why) => {
                error!(error = %why, "stopped signing: retrying could lock the key's device; fix the cause, then send SIGHUP");
                None
            }
        };
        let renewal_at = delay.map(|d| tokio::time::Instant::now() + d);
        loop {
            let between_at = between.next_due();
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = renew_now.notified() => {
                    info!("renewing now, as asked");
                    status.resume();
                    between.reload();
                    break;
                }
                () = sleep_until(renewal_at) => break,
                () = sleep_until(between_at) => {
                    tokio::select! {
                        () = between.run() => {}
                        () = &mut shutdown => return,
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`; forever for `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the long-running agent until SIGTERM or SIGINT.
pub async fn run(mut prepared: Prepared, held: Held) -> Result<(), Failure> {
    let status = Status::new();
    // tbot's services, as `/readyz` lists them: the identity renewal and each output.
    status.add_service(IDENTITY);
    for output in crate::output::written(&prepared.config.outputs) {
        status.add_service(&output.service_name());
    }
    // A static key is metered and reopened on SIGHUP; standard mode reads its keys from storage
    // at each join.
    let signer = prepared.signer.clone().map(|opened| {
        Arc::new(crate::signer::Reopenable::new(
            prepared.signer_config.clone(),
            opened,
        ))
    });
    if let Some(signer) = &signer {
        prepared.signer = Some(Arc::new(Metered::new(&status, signer.clone())));
    }
    if let Some(addr) = &prepared.config.diag_addr {
        diag::listen(addr, status.clone()).await?;
    }

    // The services (the Workload API) listen from now on, and serve once an identity is held.
    let services = Arc::new(
        crate::service::Services::start(
            &prepared.config.services,
            crate::service::Context {
                route: prepared.auth_route.clone(),
                rpc_timeout: prepared.rpc_timeout,
                credential_ttl: prepared.config.credential_ttl,
                renewal_interval: prepared.config.renewal_interval,
            },
        )
        .await?,
    );
    services.follow(&held).await;

    let renew_now = Arc::new(Notify::new());
    let reopen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(Notify::new());
    let signals = tokio::spawn(watch_signals(
        renew_now.clone(),
        reopen.clone(),
        stop.clone(),
    ));
    let schedule = Schedule::for_interval(prepared.config.renewal_interval);
    info!(renewal_interval = %humantime::format_duration(schedule.renewal_interval), credential_ttl = %humantime::format_duration(prepared.config.credential_ttl), "keybound agent started");
    let clock = Arc::new(std::sync::Mutex::new(due::OutputClock::new(
        &prepared.config.outputs,
        prepared.config.renewal_interval,
    )));
    let prepared = Arc::new(prepared);
    let held = Arc::new(held);
    let outputs = due::Outputs {
        clock: clock.clone(),
        prepared: prepared.clone(),
        held: held.clone(),
        status: status.clone(),
    };
    let heartbeats = crate::heartbeat::Heartbeats::new(false).run(prepared.clone(), held.clone());
    let attempt = {
        let (status, held, services) = (status.clone(), held.clone(), services.clone());
        move || {
            let (prepared, held, status) = (prepared.clone(), held.clone(), status.clone());
            let (signer, reopen, clock) = (signer.clone(), reopen.clone(), clock.clone());
            let services = services.clone();
            async move {
                let done = attempt(prepared, held.clone(), status, signer, reopen, clock).await;
                services.follow(&held).await;
                done
            }
        }
    };
    let result = match first_join(&held, &attempt, &stop).await {
        Ok(Started::Loop(first)) => {
            // The start-up heartbeat once the first join is done, then every 30 minutes.
            let heartbeats = tokio::spawn(heartbeats);
            let cycle = || {
                let attempt = attempt();
                async move {
                    let (outcome, reason, _) = attempt.await;
                    (outcome, reason)
                }
            };
            run_loop(
                cycle,
                first,
                schedule,
                status,
                renew_now,
                &outputs,
                stop.notified(),
            )
            .await;
            heartbeats.abort();
            Ok(())
        }
        Ok(Started::Stopped) => Ok(()),
        Err(failure) => Err(failure),
    };
    signals.abort();
    services.stop().await;
    info!("keybound agent stopped");
    result
}

/// How the agent's start went, when it did not end it.
enum Started {
    /// Stopped (SIGTERM, SIGINT) during the first join.
    Stopped,
    /// The loop goes on, from the first join's outcome, or (`None`: an identity was held, so no
    /// first join ran) from the first renewal.
    Loop(Option<(Outcome, String)>),
}

/// The agent's start, as tbot's (`Initialize` in `lib/tbot/internal/identity/service.go`):
/// with no bot identity held, the first join runs now, and its failure ends the agent with that
/// join's exit code (69 unreachable, 77 refused, 78 configuration or a refused PIN), as
/// `start --oneshot` would; only an identity gives the agent something to renew.
async fn first_join<C, F>(held: &Held, attempt: &C, stop: &Notify) -> Result<Started, Failure>
where
    C: Fn() -> F,
    F: Future<Output = (Outcome, String, Option<Failure>)>,
{
    if held.expiry().await.is_some() {
        return Ok(Started::Loop(None));
    }
    let (outcome, reason, failure) = tokio::select! {
        done = attempt() => done,
        () = stop.notified() => return Ok(Started::Stopped),
    };
    match failure {
        // The join failed: nothing is held.
        Some(failure) if held.expiry().await.is_none() => Err(Failure::new(
            failure.kind,
            failure
                .error
                .context("the first join failed (with no bot identity to renew, the agent ends)"),
        )),
        _ => Ok(Started::Loop(Some((outcome, reason)))),
    }
}

/// One attempt of the loop: reopen the signer first when SIGHUP asked for it, then one renewal
/// cycle writing the outputs due now (`clock`), its parts reported to `status`; the outcome,
/// its reason for the metrics (`status::failure_reason`), and the failure.
async fn attempt(
    prepared: Arc<Prepared>,
    held: Arc<Held>,
    status: Arc<Status>,
    signer: Option<Arc<crate::signer::Reopenable>>,
    reopen: Arc<AtomicBool>,
    clock: Arc<std::sync::Mutex<due::OutputClock>>,
) -> (Outcome, String, Option<Failure>) {
    if reopen.swap(false, Ordering::SeqCst)
        && let Some(signer) = signer
        && let Err(failure) = reopen_signer(signer).await
    {
        // Tried again at the next cycle, unless it halts (a refused PIN).
        reopen.store(true, Ordering::SeqCst);
        status.identity(Err(&failure));
        let reason = status::failure_reason(&failure);
        return (classify(&failure), reason, Some(failure));
    }
    let due = clock
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .due(tokio::time::Instant::now());
    let recording = due::Recording::new(&status);
    let result = cycle_reporting(&due::with_outputs(&prepared, &due), &held, &recording).await;
    recording.apply(&due, &clock);
    let expiry = held.valid_until().await;
    status.follow(expiry);
    match result {
        Ok(done) => (
            Outcome::Renewed(expiry.unwrap_or_else(SystemTime::now)),
            status::success_reason(&done).to_owned(),
            None,
        ),
        Err(f) => {
            let reason = status::failure_reason(&f);
            (classify(&f), reason, Some(f))
        }
    }
}

/// Opens the signer again (SIGHUP): its PIN or authorization value is read afresh.
async fn reopen_signer(signer: Arc<crate::signer::Reopenable>) -> Result<(), Failure> {
    info!("SIGHUP: opening the signer again, reading its PIN source afresh");
    let reopened = tokio::task::spawn_blocking(move || signer.reopen())
        .await
        .map_err(|e| {
            Failure::new(
                ExitKind::Software,
                anyhow::anyhow!("the reopen task failed: {e}"),
            )
        })?;
    reopened.map_err(|e| {
        let kind = if e.is_transient() {
            ExitKind::Unreachable
        } else {
            ExitKind::Config
        };
        Failure::new(kind, anyhow::Error::new(e))
    })
}

async fn watch_signals(renew_now: Arc<Notify>, reopen: Arc<AtomicBool>, stop: Arc<Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); stop.notify_one(); }
            _ = int.recv() => { info!("SIGINT: stopping"); stop.notify_one(); }
            _ = hup.recv() => {
                reopen.store(true, Ordering::SeqCst);
                renew_now.notify_one();
            }
            _ = usr1.recv() => renew_now.notify_one(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Drives `run_loop` on tokio's paused clock with scripted outcomes; returns when each cycle
    /// started, in seconds since the start.
    async fn schedule_of(
        outcomes: Vec<Outcome>,
        run_for: Duration,
        poke_at: Option<Duration>,
    ) -> (Vec<f64>, Arc<Status>) {
        let start = tokio::time::Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(outcomes.into_iter()));
        let status = Status::new();
        let renew_now = Arc::new(Notify::new());
        if let Some(at) = poke_at {
            let renew_now = renew_now.clone();
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                renew_now.notify_one();
            });
        }
        let (t, sc) = (times.clone(), script.clone());
        run_loop(
            move || {
                t.lock().unwrap().push(start.elapsed().as_secs_f64());
                let next = sc.lock().unwrap().next().unwrap_or(Outcome::Renewed(
                    SystemTime::now() + Duration::from_secs(3600),
                ));
                async move { (next, String::new()) }
            },
            None,
            Schedule::for_interval(Duration::from_secs(20 * 60)),
            status.clone(),
            renew_now,
            &(),
            tokio::time::sleep(run_for),
        )
        .await;
        let times = times.lock().unwrap().clone();
        (times, status)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_interval() {
        let (times, status) = schedule_of(vec![], Duration::from_secs(3 * 20 * 60 + 1), None).await;
        assert_eq!(times, vec![0.0, 1200.0, 2400.0, 3600.0]);
        assert!(status.expiry().is_some());
        assert!(
            status
                .metrics
                .encode()
                .contains("keybound_renewals_total 4")
        );
    }

    /// Work due every `every` between renewals, recording when it ran.
    struct Every {
        every: Duration,
        next: Mutex<tokio::time::Instant>,
        ran: Mutex<Vec<f64>>,
        start: tokio::time::Instant,
    }

    impl Between for Every {
        fn next_due(&self) -> Option<tokio::time::Instant> {
            Some(*self.next.lock().unwrap())
        }
        async fn run(&self) {
            let now = tokio::time::Instant::now();
            self.ran
                .lock()
                .unwrap()
                .push((now - self.start).as_secs_f64());
            *self.next.lock().unwrap() = now + self.every;
        }
        fn reload(&self) {
            *self.next.lock().unwrap() = tokio::time::Instant::now();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn outputs_due_between_renewals_run_between_them() {
        let start = tokio::time::Instant::now();
        let every = Every {
            every: Duration::from_secs(500),
            next: Mutex::new(start + Duration::from_secs(500)),
            ran: Mutex::default(),
            start,
        };
        let cycles = Arc::new(Mutex::new(Vec::new()));
        let c = cycles.clone();
        run_loop(
            move || {
                c.lock().unwrap().push(start.elapsed().as_secs_f64());
                async {
                    (
                        Outcome::Renewed(SystemTime::now() + Duration::from_secs(3600)),
                        String::new(),
                    )
                }
            },
            None,
            Schedule::for_interval(Duration::from_secs(20 * 60)),
            Status::new(),
            Arc::new(Notify::new()),
            &every,
            tokio::time::sleep(Duration::from_secs(2500)),
        )
        .await;
        // The renewals keep their interval; the work between runs on its own.
        assert_eq!(*cycles.lock().unwrap(), [0.0, 1200.0, 2400.0]);
        assert_eq!(*every.ran.lock().unwrap(), [500.0, 1000.0, 1500.0, 2000.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_then_recover() {
        let transient = || Outcome::Transient("unreachable".into());
        let (times, _) = schedule_of(
            vec![transient(), transient(), transient(), transient()],
            Duration::from_secs(1300),
            None,
        )
        .await;
        // Four failures with growing, jittered gaps (each at most 1, 2, 4, 8 s), then a success,
        // then the normal interval.
        assert_eq!(times.len(), 6, "{times:?}");
        for (i, pair) in times.windows(2).take(4).enumerate() {
            let gap = pair[1] - pair[0];
            assert!(
                gap <= 2f64.powi(i as i32) + 1e-6 && gap >= 0.1 - 1e-6,
                "{times:?}"
            );
        }
        assert!((times[5] - times[4] - 1200.0).abs() < 1e-6, "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_retry_slowly() {
        let rejected = || Outcome::Rejected("token expired or not found".into());
        let (times, status) = schedule_of(
            vec![rejected(), rejected()],
            Duration::from_secs(2500),
            None,
        )
        .await;
        assert_eq!(times, vec![0.0, 300.0, 600.0, 1800.0]);
        assert!(
            status
                .metrics
                .encode()
                .contains(r#"keybound_joins_total{outcome="rejected",reason=""} 2"#)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_halt_stops_signing_until_told_to_go_on() {
        let (times, status) = schedule_of(
            vec![Outcome::Halt("wrong PIN".into())],
            Duration::from_secs(10_000),
            None,
        )
        .await;
        assert_eq!(times, vec![0.0], "no second attempt after a wrong PIN");
        assert!(!status.healthy.load(Ordering::Relaxed));
        assert_eq!(diag(&status, "/healthz").status(), 503);

        let (times, status) = schedule_of(
            vec![Outcome::Halt("wrong PIN".into())],
            Duration::from_secs(10_000),
            Some(Duration::from_secs(500)),
        )
        .await;
        assert_eq!(times[..2], [0.0, 500.0], "SIGHUP lifts the halt");
        assert!(status.healthy.load(Ordering::Relaxed));
    }
}
