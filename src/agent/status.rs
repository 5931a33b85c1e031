//! What the agent reports: its state (renewed, failing, halted, and why), the bot identity's
//! expiry, its services' statuses as tbot reports them (`/readyz`), and the Prometheus metrics;
//! and the signer wrapper that times each signature.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use keybound_signer::{Error as SignerError, Protection, PublicKey, Signature, Signer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::readyz::{self, Health, IDENTITY, ServiceStatus};
use super::schedule::{Outcome, classify};
use crate::join::JoinError;
use crate::renewal::{Cycle, Report};
use crate::{ExitKind, Failure};

/// How many renewals in a row may fail for a reason worth retrying soon (the cluster out of
/// reach) before the identity reports itself unhealthy: tbot's `botIdentityRenewalRetryLimit`
/// (`lib/tbot/internal/identity/service.go`), the attempts its renewal loop makes, backing off
/// from 1 s, before it reports `unhealthy` (`lib/tbot/internal/loop.go`, `RunOnInterval`).
/// Any other failure reports at once: retrying soon will not change it.
pub const RENEWAL_RETRY_LIMIT: u32 = 7;

/// What the agent knows about itself, shared with the diagnostics listener.
pub struct Status {
    expiry: Mutex<Option<SystemTime>>,
    pub(super) healthy: AtomicBool,
    pub(super) halted_because: Mutex<Option<String>>,
    last_error_unix: AtomicI64,
    /// The services' statuses (`/readyz`).
    services: readyz::Registry,
    /// The identity renewal's failures in a row, and the last one's text.
    identity_failures: AtomicU32,
    identity_error: Mutex<String>,
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
            services: readyz::Registry::default(),
            identity_failures: AtomicU32::new(0),
            identity_error: Mutex::new(String::new()),
            metrics: Metrics::new(),
        })
    }

    /// Adds a service to `/readyz`, `initializing` until it reports.
    pub fn add_service(&self, name: &str) {
        self.services.add(name);
    }

    /// Every service's status as `/readyz` shows it. The identity is unhealthy whatever it last
    /// reported once keybound holds no valid identity (it expired, or was dropped).
    fn services(&self) -> BTreeMap<String, ServiceStatus> {
        let mut services = self.services.all();
        if let Some(identity) = services.get_mut(IDENTITY)
            && identity.status == Health::Healthy
        {
            let last = self.identity_error.lock().expect("status lock").clone();
            match self.expiry() {
                Some(expiry) if expiry <= SystemTime::now() => {
                    *identity = ServiceStatus {
                        status: Health::Unhealthy,
                        reason: format!(
                            "the bot identity expired at {}",
                            keybound_teleport::time::format_time(expiry)
                        ),
                        updated_at: Some(expiry),
                    };
                }
                None => {
                    identity.status = Health::Unhealthy;
                    identity.reason = if last.is_empty() {
                        "keybound holds no valid bot identity".to_owned()
                    } else {
                        format!("keybound holds no valid bot identity; the last attempt: {last}")
                    };
                }
                Some(_) => {}
            }
        }
        services
    }

    /// `/readyz`: every service, and the HTTP code.
    pub fn readyz(&self) -> (u16, String) {
        readyz::overall(&self.services())
    }

    /// `/readyz/{service}`: one service, and the HTTP code.
    pub fn readyz_of(&self, name: &str) -> (u16, String) {
        readyz::one(name, self.services().get(name))
    }

    pub(super) fn record(&self, outcome: &Outcome, reason: &str) {
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

    /// Follows the held bot identity: a renewal whose outputs failed still replaced it, and a
    /// failed one may have dropped it (`None`).
    pub(super) fn follow(&self, expiry: Option<SystemTime>) {
        *self.expiry.lock().expect("status lock") = expiry;
        if let Some(expiry) = expiry {
            self.metrics.expiry.set(unix(expiry));
        }
    }

    pub(super) fn resume(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.metrics.healthy.set(1);
        *self.halted_because.lock().expect("status lock") = None;
    }

    /// When the current certificates expire.
    pub fn expiry(&self) -> Option<SystemTime> {
        *self.expiry.lock().expect("status lock")
    }
}

/// The `reason` label of a renewal that succeeded: how (`rejoin`, an authenticated rejoin;
/// `join`, with the static key; `outputs`, the last renewal's outputs written again).
pub(super) fn success_reason(cycle: &Cycle) -> &'static str {
    match &cycle.joined {
        Some(joined) if joined.authenticated => "rejoin",
        Some(_) => "join",
        None => "outputs",
    }
}

/// The `reason` label of a renewal that failed: the gRPC code of the cluster's refusal
/// (`PermissionDenied`, ...), else what failed: `refused` (keybound would not sign or go on),
/// `unreachable`, `timeout`, `signer`, `config`, `local` (a file or directory here),
/// `internal`. Never empty: a success and a failure never share a label set.
pub(super) fn failure_reason(failure: &Failure) -> String {
    for cause in failure.error.chain() {
        if let Some(join) = cause.downcast_ref::<JoinError>() {
            return match join {
                JoinError::Rejected { code, .. } => format!("{code:?}"),
                JoinError::Refused(_) => "refused".to_owned(),
                JoinError::Unreachable(_) => "unreachable".to_owned(),
                JoinError::TimedOut(_) => "timeout".to_owned(),
                JoinError::Signer(_) => "signer".to_owned(),
                JoinError::Config(_) => "config".to_owned(),
            };
        }
        if cause.downcast_ref::<SignerError>().is_some() {
            return "signer".to_owned();
        }
    }
    match failure.kind {
        ExitKind::Unreachable => "unreachable",
        ExitKind::Rejected => "rejected",
        ExitKind::Config => "local",
        ExitKind::Software | ExitKind::General => "internal",
    }
    .to_owned()
}

/// The cycle's parts as tbot's services report them: the identity renewal (unhealthy after a
/// failure that retrying soon will not fix, or after [`RENEWAL_RETRY_LIMIT`] in a row), and
/// each output.
impl Report for Status {
    fn identity(&self, result: Result<(), &Failure>) {
        match result {
            Ok(()) => {
                self.identity_failures.store(0, Ordering::Relaxed);
                self.identity_error.lock().expect("status lock").clear();
                self.services
                    .report(IDENTITY, Health::Healthy, String::new());
            }
            Err(failure) => {
                let failures = self.identity_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let reason = failure.to_string();
                reason.clone_into(&mut self.identity_error.lock().expect("status lock"));
                let retrying = matches!(classify(failure), Outcome::Transient(_))
                    && failures < RENEWAL_RETRY_LIMIT;
                if !retrying {
                    self.services.report(IDENTITY, Health::Unhealthy, reason);
                }
            }
        }
    }

    fn output(&self, service: &str, result: Result<(), &Failure>) {
        match result {
            Ok(()) => self
                .services
                .report(service, Health::Healthy, String::new()),
            Err(failure) => self
                .services
                .report(service, Health::Unhealthy, failure.to_string()),
        }
    }
}

/// A signer that times its signatures into the metrics.
#[derive(Debug)]
pub(super) struct Metered {
    inner: Arc<dyn Signer>,
    histogram: Histogram,
}

impl Metered {
    /// `inner`, each signature timed into `status`'s histogram for its backend.
    pub(super) fn new(status: &Status, inner: Arc<dyn Signer>) -> Self {
        let histogram = status
            .metrics
            .sign_seconds
            .get_or_create(&BackendLabels {
                backend: inner.backend().to_owned(),
            })
            .clone();
        Self { inner, histogram }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    /// Every failure gets a reason of its own, never the empty one a label set could share.
    #[test]
    fn each_failure_names_its_reason() {
        let join = |e: JoinError, kind| Failure::new(kind, anyhow::Error::new(e));
        let cases = [
            (
                join(
                    JoinError::Rejected {
                        code: tonic::Code::PermissionDenied,
                        message: "no".into(),
                        standard: false,
                    },
                    ExitKind::Rejected,
                ),
                "PermissionDenied",
            ),
            (
                join(JoinError::Refused("rotation".into()), ExitKind::Rejected),
                "refused",
            ),
            (
                join(JoinError::Unreachable("gone".into()), ExitKind::Unreachable),
                "unreachable",
            ),
            (
                join(
                    JoinError::TimedOut(std::time::Duration::from_secs(45)),
                    ExitKind::Unreachable,
                ),
                "timeout",
            ),
            (
                Failure::new(
                    ExitKind::Unreachable,
                    anyhow::Error::new(SignerError::new(
                        keybound_signer::ErrorKind::Unavailable,
                        "tpm",
                        "busy",
                    ))
                    .context("opening the signer"),
                ),
                "signer",
            ),
            (
                Failure::new(ExitKind::Unreachable, anyhow!("cannot reach Auth")),
                "unreachable",
            ),
            (
                Failure::new(ExitKind::Rejected, anyhow!("output: roles refused")),
                "rejected",
            ),
            (
                Failure::new(ExitKind::Config, anyhow!("disk full")),
                "local",
            ),
            (Failure::new(ExitKind::Software, anyhow!("bug")), "internal"),
        ];
        for (failure, reason) in cases {
            assert_eq!(failure_reason(&failure), reason, "{failure}");
        }
    }

    /// A success and a transient failure are told apart by both labels.
    #[test]
    fn successes_and_transient_failures_do_not_share_a_label_set() {
        let status = Status::new();
        let cycle = Cycle {
            joined: None,
            written: Vec::new(),
        };
        status.record(&Outcome::Renewed(SystemTime::now()), success_reason(&cycle));
        let down = Failure::new(ExitKind::Unreachable, anyhow!("cannot reach the proxy"));
        status.record(&Outcome::Transient("down".into()), &failure_reason(&down));
        let metrics = status.metrics.encode();
        assert!(
            metrics.contains(r#"keybound_joins_total{outcome="success",reason="outputs"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"keybound_joins_total{outcome="transient",reason="unreachable"} 1"#),
            "{metrics}"
        );
        assert!(!metrics.contains(r#"reason="""#), "{metrics}");
    }
}
