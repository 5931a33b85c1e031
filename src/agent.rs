//! The long-running agent: renew on a schedule, survive failures, report health.
//!
//! The loop has the shape of linkerd's identity `Certify::run`: join, then sleep until the next
//! renewal, forever. What happens after a failure depends on its kind:
//! - **transient** (the cluster or the device is unreachable, a timeout): capped exponential
//!   back-off with full jitter, while the current identity stays in place until it expires;
//! - **rejected** (the cluster said no, or asked for something a static key cannot do): logged as
//!   an error saying what to do, and retried at a slow cadence;
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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use keybound_signer::{Error as SignerError, ErrorKind, Protection, PublicKey, Signature, Signer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rand_core::RngCore as _;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::join::JoinError;
use crate::renewal::{Prepared, cycle};
use crate::storage::Held;
use crate::{ExitKind, Failure};

// === The schedule ===

/// When to try again.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// After a success.
    pub renewal_interval: Duration,
    /// The first back-off after a transient failure.
    pub base_backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// After a rejection.
    pub rejected_retry: Duration,
}

impl Schedule {
    /// The schedule for a renewal interval: back-off from 1 s up to the interval (at most 5 min);
    /// rejections retried every interval, at least every minute.
    pub fn for_interval(renewal_interval: Duration) -> Self {
        Self {
            renewal_interval,
            base_backoff: Duration::from_secs(1).min(renewal_interval),
            max_backoff: renewal_interval.clamp(Duration::from_secs(1), Duration::from_secs(300)),
            rejected_retry: renewal_interval.max(Duration::from_secs(60)),
        }
    }

    /// The delay after the `failures`-th transient failure in a row: "full jitter", uniform in
    /// `[0, min(max, base * 2^(failures-1))]`, never below a tenth of the base.
    pub fn backoff(&self, failures: u32, random: u64) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(30)));
        let cap = exp.min(self.max_backoff);
        let jittered = Duration::from_nanos(random % (cap.as_nanos() as u64).max(1));
        jittered.max(self.base_backoff / 10)
    }
}

/// What a cycle came to, for the schedule.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Outcome {
    /// New certificates, valid until then.
    Renewed(SystemTime),
    /// Worth retrying soon.
    Transient(String),
    /// The cluster refused; retry slowly.
    Rejected(String),
    /// Retrying could do harm (a wrong PIN locks tokens): stop until told to go on.
    Halt(String),
}

/// Sorts a failed cycle into an outcome.
pub fn classify(failure: &Failure) -> Outcome {
    let message = format!("{:#}", failure.error);
    let signer = failure.error.chain().find_map(|e| {
        e.downcast_ref::<SignerError>()
            .or_else(|| match e.downcast_ref::<JoinError>() {
                Some(JoinError::Signer(s)) => Some(s),
                _ => None,
            })
    });
    if signer.is_some_and(|s| s.kind() == ErrorKind::Auth) {
        return Outcome::Halt(message);
    }
    match failure.kind {
        ExitKind::Unreachable => Outcome::Transient(message),
        ExitKind::Rejected => Outcome::Rejected(message),
        // Local failures (a full disk, a permission) may clear: back off.
        _ => Outcome::Transient(message),
    }
}

// === Shared state ===

/// What the agent knows about itself, shared with the diagnostics listener.
pub struct Status {
    expiry: Mutex<Option<SystemTime>>,
    healthy: AtomicBool,
    halted_because: Mutex<Option<String>>,
    last_error_unix: AtomicI64,
    /// The metrics.
    pub metrics: Metrics,
}

/// The Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    joins: Family<JoinLabels, Counter>,
    sign_seconds: Family<BackendLabels, Histogram>,
    expiry: Gauge,
    renewals: Counter,
    last_error: Gauge,
    healthy: Gauge,
}

#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
struct JoinLabels {
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("keybound");
        let joins = Family::<JoinLabels, Counter>::default();
        registry.register(
            "joins",
            "Join attempts by outcome and reason",
            joins.clone(),
        );
        let sign_seconds = Family::<BackendLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "sign_duration_seconds",
            "Time to sign a join challenge, by signer backend",
            sign_seconds.clone(),
        );
        let expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the current certificates expire (Unix time)",
            expiry.clone(),
        );
        let renewals = Counter::default();
        registry.register("renewals", "Successful renewals", renewals.clone());
        let last_error = Gauge::default();
        registry.register(
            "last_error_timestamp_seconds",
            "When the last join failed (Unix time)",
            last_error.clone(),
        );
        let healthy = Gauge::default();
        registry.register(
            "healthy",
            "1 while the agent can sign, 0 once it stopped (wrong PIN, locked token)",
            healthy.clone(),
        );
        healthy.set(1);
        Self {
            registry,
            joins,
            sign_seconds,
            expiry,
            renewals,
            last_error,
            healthy,
        }
    }

    /// The metrics in the OpenMetrics text format, which Prometheus reads.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// `t` in Unix seconds for a metric (the certificate's expiry is the cluster's choice: checked).
fn unix(t: SystemTime) -> i64 {
    crate::servertime::unix_seconds(t).unwrap_or_default()
}

impl Status {
    /// A fresh status: healthy, no identity yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            expiry: Mutex::new(None),
            healthy: AtomicBool::new(true),
            halted_because: Mutex::new(None),
            last_error_unix: AtomicI64::new(0),
            metrics: Metrics::new(),
        })
    }

    fn record(&self, outcome: &Outcome, reason: &str) {
        let label = |o: &str| JoinLabels {
            outcome: o.to_owned(),
            reason: reason.to_owned(),
        };
        match outcome {
            Outcome::Renewed(expiry) => {
                *self.expiry.lock().expect("status lock") = Some(*expiry);
                self.metrics.expiry.set(unix(*expiry));
                self.metrics.renewals.inc();
                self.metrics.joins.get_or_create(&label("success")).inc();
            }
            failed => {
                let now = unix(SystemTime::now());
                self.last_error_unix.store(now, Ordering::Relaxed);
                self.metrics.last_error.set(now);
                let outcome = match failed {
                    Outcome::Transient(_) => "transient",
                    Outcome::Rejected(_) => "rejected",
                    _ => "halted",
                };
                self.metrics.joins.get_or_create(&label(outcome)).inc();
                if let Outcome::Halt(why) = failed {
                    self.healthy.store(false, Ordering::Relaxed);
                    self.metrics.healthy.set(0);
                    *self.halted_because.lock().expect("status lock") = Some(why.clone());
                }
            }
        }
    }

    /// Follows the held bot identity's expiry: a renewal whose outputs failed still replaced it.
    fn follow(&self, expiry: Option<SystemTime>) {
        if let Some(expiry) = expiry {
            *self.expiry.lock().expect("status lock") = Some(expiry);
            self.metrics.expiry.set(unix(expiry));
        }
    }

    fn resume(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.metrics.healthy.set(1);
        *self.halted_because.lock().expect("status lock") = None;
    }

    /// When the current certificates expire.
    pub fn expiry(&self) -> Option<SystemTime> {
        *self.expiry.lock().expect("status lock")
    }
}

/// A signer that times its signatures into the metrics.
#[derive(Debug)]
struct Metered {
    inner: Arc<dyn Signer>,
    histogram: Histogram,
}

impl Signer for Metered {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn public_key(&self) -> &PublicKey {
        self.inner.public_key()
    }
    fn protection(&self) -> Protection {
        self.inner.protection()
    }
    fn sign(&self, message: &[u8]) -> Result<Signature, SignerError> {
        let started = std::time::Instant::now();
        let result = self.inner.sign(message);
        self.histogram.observe(started.elapsed().as_secs_f64());
        result
    }
}

// === The loop ===

/// Runs `cycle` on `schedule` until `shutdown` completes. `renew_now` cuts a wait short (and lifts
/// a halt). Returns when shut down.
pub async fn run_loop<C, F>(
    mut cycle: C,
    schedule: Schedule,
    status: Arc<Status>,
    renew_now: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) where
    C: FnMut() -> F,
    F: Future<Output = (Outcome, String)>,
{
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let (outcome, reason) = tokio::select! {
            result = cycle() => result,
            () = &mut shutdown => return,
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
                warn!(error = %why, failures, retry_in = ?delay, keeping_current_identity = valid, "renewal failed; will retry");
                Some(delay)
            }
            Outcome::Rejected(why) => {
                failures = 0;
                error!(error = %why, retry_in = %humantime::format_duration(schedule.rejected_retry), "the cluster rejected the renewal");
                Some(schedule.rejected_retry)
            }
            Outcome::Halt(why) => {
                error!(error = %why, "stopped signing: retrying could lock the key's device; fix the cause, then send SIGHUP");
                None
            }
        };
        let wait = async {
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wait => {}
            () = renew_now.notified() => {
                info!("renewing now, as asked");
                status.resume();
            }
            () = &mut shutdown => return,
        }
    }
}

/// Runs the long-running agent until SIGTERM or SIGINT.
pub async fn run(mut prepared: Prepared, held: Held) -> Result<(), Failure> {
    let status = Status::new();
    let signer = Arc::new(crate::signer::Reopenable::new(
        prepared.signer_config.clone(),
        prepared.signer.clone(),
    ));
    prepared.signer = Arc::new(Metered {
        histogram: status
            .metrics
            .sign_seconds
            .get_or_create(&BackendLabels {
                backend: prepared.signer.backend().to_owned(),
            })
            .clone(),
        inner: signer.clone(),
    });
    if let Some(addr) = &prepared.config.diag_addr {
        let addr: SocketAddr = addr.parse().map_err(|e| {
            Failure::new(
                ExitKind::Config,
                anyhow::anyhow!("diag_addr {addr:?} is not HOST:PORT: {e}"),
            )
        })?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Failure::new(
                ExitKind::Config,
                anyhow::anyhow!("cannot listen on diag_addr {addr}: {e}"),
            )
        })?;
        info!(addr = %listener.local_addr().map_or(addr, |a| a), "diagnostics listening (/healthz, /readyz, /metrics)");
        tokio::spawn(serve_diag(listener, status.clone()));
    }

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
    let prepared = Arc::new(prepared);
    let held = Arc::new(held);
    let watched = status.clone();
    run_loop(
        || {
            let (prepared, held, status) = (prepared.clone(), held.clone(), watched.clone());
            let (signer, reopen) = (signer.clone(), reopen.clone());
            async move {
                if reopen.swap(false, Ordering::SeqCst)
                    && let Err(failure) = reopen_signer(signer).await
                {
                    // Tried again at the next cycle, unless it halts (a refused PIN).
                    reopen.store(true, Ordering::SeqCst);
                    return (classify(&failure), String::new());
                }
                let result = cycle(&prepared, &held).await;
                let expiry = held.expiry().await;
                status.follow(expiry);
                match result {
                    Ok(_) => (
                        Outcome::Renewed(expiry.unwrap_or_else(SystemTime::now)),
                        String::new(),
                    ),
                    Err(f) => {
                        let reason = f
                            .error
                            .downcast_ref::<JoinError>()
                            .and_then(|e| match e {
                                JoinError::Rejected { code, .. } => Some(format!("{code:?}")),
                                _ => None,
                            })
                            .unwrap_or_default();
                        (classify(&f), reason)
                    }
                }
            }
        },
        schedule,
        status,
        renew_now,
        stop.notified(),
    )
    .await;
    signals.abort();
    info!("keybound agent stopped");
    Ok(())
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

// === Diagnostics ===

/// How long a client has to send a request's headers, from the connection (or the previous
/// response) on: an idle or slow-header connection is closed after this.
pub const DIAG_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a diagnostics connection lives, whatever it does (a client that sends its
/// headers in time but never reads the answer, say).
pub const DIAG_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The most diagnostics connections open at once, when the file-descriptor limit allows.
pub const DIAG_MAX_CONNECTIONS: usize = 64;

/// How many diagnostics connections may be open at once: [`DIAG_MAX_CONNECTIONS`], but never
/// more than a quarter of the open-file limit, so that the endpoint cannot take the descriptors
/// a renewal needs (its sockets, the files it writes).
pub fn diag_connection_cap() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let quarter = limit.map_or(usize::MAX, |l| usize::try_from(l / 4).unwrap_or(usize::MAX));
    quarter.clamp(1, DIAG_MAX_CONNECTIONS)
}

/// Serves the diagnostics endpoint. Connections are capped (a new one is accepted only once a
/// slot is free; until then it waits in the kernel's backlog, holding no descriptor of ours),
/// each is bounded in time, and a failing `accept` (out of descriptors, say) is retried after a
/// growing pause instead of at once, as Go's `http.Server.Serve` does (5 ms doubling to 1 s):
/// the endpoint can neither spin nor starve the renewals that share its runtime.
async fn serve_diag(listener: tokio::net::TcpListener, status: Arc<Status>) {
    let cap = diag_connection_cap();
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let mut pause = Duration::ZERO;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                pause = Duration::ZERO;
                tcp
            }
            Err(e) => {
                pause = (pause * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if pause == Duration::from_millis(5) {
                    warn!(error = %e, "diagnostics: cannot accept a connection; pausing the listener");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let status = status.clone();
                    async move { Ok::<_, std::convert::Infallible>(diag(&status, request.uri().path())) }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(DIAG_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(DIAG_CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

/// Answers one diagnostics request.
pub fn diag(status: &Status, path: &str) -> hyper::Response<Full<Bytes>> {
    let respond = |code: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is well-formed")
    };
    match path {
        "/healthz" => {
            if status.healthy.load(Ordering::Relaxed) {
                respond(200, "text/plain", "ok\n".to_owned())
            } else {
                let why = status
                    .halted_because
                    .lock()
                    .expect("status lock")
                    .clone()
                    .unwrap_or_default();
                respond(503, "text/plain", format!("unhealthy: {why}\n"))
            }
        }
        "/readyz" => {
            let expiry = status.expiry();
            let now = SystemTime::now();
            let ready = expiry.is_some_and(|e| e > now);
            let body = serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "expires": expiry.map(keybound_teleport::time::format_time),
                "expires_in_seconds": expiry.map(|e| e.duration_since(now).map_or(0, |d| d.as_secs())),
                "healthy": status.healthy.load(Ordering::Relaxed),
            });
            respond(
                if ready { 200 } else { 503 },
                "application/json",
                format!("{body}\n"),
            )
        }
        "/metrics" => respond(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            status.metrics.encode(),
        ),
        _ => respond(
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let s = Schedule::for_interval(Duration::from_secs(20 * 60));
        assert_eq!(s.max_backoff, Duration::from_secs(300));
        assert_eq!(s.rejected_retry, Duration::from_secs(20 * 60));
        for failures in 1..40 {
            for random in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = s.backoff(failures, random);
                assert!(d <= s.max_backoff, "{failures}: {d:?}");
                assert!(d >= s.base_backoff / 10);
                let cap = s.base_backoff * 2u32.pow((failures - 1).min(20));
                assert!(d <= cap.max(s.base_backoff / 10));
            }
        }
        let short = Schedule::for_interval(Duration::from_secs(2));
        assert_eq!(short.max_backoff, Duration::from_secs(2));
        assert_eq!(short.rejected_retry, Duration::from_secs(60));
    }

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
            Schedule::for_interval(Duration::from_secs(20 * 60)),
            status.clone(),
            renew_now,
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
        assert_eq!(times, vec![0.0, 1200.0, 2400.0]);
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

    #[test]
    fn readiness_follows_the_identity() {
        let status = Status::new();
        assert_eq!(diag(&status, "/readyz").status(), 503);
        assert_eq!(diag(&status, "/healthz").status(), 200);
        status.record(
            &Outcome::Renewed(SystemTime::now() + Duration::from_secs(60)),
            "",
        );
        assert_eq!(diag(&status, "/readyz").status(), 200);
        status.record(
            &Outcome::Renewed(SystemTime::now() - Duration::from_secs(1)),
            "",
        );
        assert_eq!(
            diag(&status, "/readyz").status(),
            503,
            "an expired identity is not ready"
        );
        assert_eq!(diag(&status, "/nope").status(), 404);
    }
}
