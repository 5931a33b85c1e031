//! Which outputs are due: each output is written anew on its own `renewal_interval` (its own,
//! else the bot's), as each of tbot's output services runs its own `RunOnInterval`
//! (`lib/tbot/internal/loop.go`) with `cmp.Or(cfg.CredentialLifetime,
//! defaultCredentialLifetime).RenewalInterval` (`lib/tbot/services/*/output_service.go`).
//!
//! A renewal of the bot identity does not rewrite outputs that are not due: tbot's identity
//! service renews and stores the identity only (`renew` in
//! `lib/tbot/internal/identity/service.go` broadcasts nothing); the outputs pick the new identity
//! up at their next run. A reload (SIGHUP, SIGUSR1: tbot's `ReloadCh`) makes every output due.
//! A failed output is retried on its own back-off, never sooner than a tenth of a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_core::RngCore as _;
use tokio::time::Instant;
use tracing::warn;

use super::schedule::Schedule;
use super::status::Status;
use crate::Failure;
use crate::output::{OutputConfig, written};
use crate::renewal::{Prepared, Report};
use crate::storage::Held;

/// When each output that writes files is next due, by its service name.
#[derive(Debug)]
pub(super) struct OutputClock {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    service: String,
    interval: Duration,
    /// `None`: due now (never written, or a reload asked for it).
    next: Option<Instant>,
    failures: u32,
}

impl OutputClock {
    /// Every output of `outputs` that writes files, each due at once, on its own interval or
    /// `bot_interval`.
    pub(super) fn new(outputs: &[OutputConfig], bot_interval: Duration) -> Self {
        let entries = written(outputs)
            .into_iter()
            .map(|o| Entry {
                service: o.service_name(),
                interval: o.lifetime().map_or(bot_interval, |l| l.renewal_interval),
                next: None,
                failures: 0,
            })
            .collect();
        Self { entries }
    }

    /// The outputs due at `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.next.is_none_or(|at| at <= now))
            .map(|e| e.service.clone())
            .collect()
    }

    /// When the next output falls due (now, for one due already); `None` without outputs.
    pub(super) fn next_due(&self, now: Instant) -> Option<Instant> {
        self.entries.iter().map(|e| e.next.unwrap_or(now)).min()
    }

    /// Every output due at once (a reload).
    pub(super) fn all_due(&mut self) {
        for e in &mut self.entries {
            e.next = None;
        }
    }

    /// `service` was written (`true`) or failed at `now`: due again after its interval, or after
    /// a back-off that grows with its failures in a row (at most its interval, or 5 min).
    pub(super) fn record(&mut self, service: &str, ok: bool, now: Instant, random: u64) {
        for e in self.entries.iter_mut().filter(|e| e.service == service) {
            if ok {
                e.failures = 0;
                e.next = Some(now + e.interval);
            } else {
                e.failures = e.failures.saturating_add(1);
                let backoff = Schedule::for_interval(e.interval).backoff(e.failures, random);
                e.next = Some(now + backoff);
            }
        }
    }
}

/// A [`Report`] that passes everything on to the agent's [`Status`] and keeps how each output
/// went, for the [`OutputClock`].
pub(super) struct Recording<'a> {
    status: &'a Status,
    outputs: Mutex<HashMap<String, bool>>,
}

impl<'a> Recording<'a> {
    pub(super) fn new(status: &'a Status) -> Self {
        Self {
            status,
            outputs: Mutex::default(),
        }
    }

    /// Records in `clock` how each of `due` went: an output not reported (the cycle failed
    /// before it) counts as failed.
    pub(super) fn apply(self, due: &[String], clock: &Mutex<OutputClock>) {
        let outputs = self.outputs.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut clock = clock.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for service in due {
            let ok = outputs.get(service).copied().unwrap_or(false);
            clock.record(service, ok, now, rand_core::OsRng.next_u64());
        }
    }
}

impl Report for Recording<'_> {
    fn identity(&self, result: Result<(), &Failure>) {
        self.status.identity(result);
    }

    fn output(&self, service: &str, result: Result<(), &Failure>) {
        self.status.output(service, result);
        self.outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.to_owned(), result.is_ok());
    }
}

/// `prepared` with only the outputs named in `due`.
pub(super) fn with_outputs(prepared: &Prepared, due: &[String]) -> Prepared {
    let mut p = prepared.clone();
    p.config.outputs.retain(|o| due.contains(&o.service_name()));
    p
}

/// What the agent's loop does between renewals of the bot identity ([`super::run_loop`]).
pub trait Between {
    /// When it next has work; `None`: never.
    fn next_due(&self) -> Option<Instant>;
    /// Does that work.
    fn run(&self) -> impl Future<Output = ()> + Send;
    /// Everything is due at once (a reload).
    fn reload(&self);
}

/// Nothing between renewals.
impl Between for () {
    fn next_due(&self) -> Option<Instant> {
        None
    }
    async fn run(&self) {}
    fn reload(&self) {}
}

/// The outputs that fall due between renewals of the bot identity, written with the held one.
pub(super) struct Outputs {
    pub(super) clock: Arc<Mutex<OutputClock>>,
    pub(super) prepared: Arc<Prepared>,
    pub(super) held: Arc<Held>,
    pub(super) status: Arc<Status>,
}

impl Between for Outputs {
    fn next_due(&self) -> Option<Instant> {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.next_due(Instant::now())
    }

    async fn run(&self) {
        let due = {
            let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            clock.due(Instant::now())
        };
        if due.is_empty() {
            return;
        }
        let prepared = with_outputs(&self.prepared, &due);
        let recording = Recording::new(&self.status);
        if let Err(failure) = crate::renewal::outputs_only(&prepared, &self.held, &recording).await
        {
            warn!(error = %format!("{:#}", failure.error), outputs = %due.join(", "), "writing the outputs that were due failed; each is retried on its own back-off");
        }
        recording.apply(&due, &self.clock);
    }

    fn reload(&self) {
        self.clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all_due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(intervals: &[u64]) -> OutputClock {
        OutputClock {
            entries: intervals
                .iter()
                .enumerate()
                .map(|(i, s)| Entry {
                    service: format!("o{i}"),
                    interval: Duration::from_secs(*s),
                    next: None,
                    failures: 0,
                })
                .collect(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_output_falls_due_on_its_own_interval() {
        let mut c = clock(&[2, 5]);
        let t0 = Instant::now();
        assert_eq!(c.due(t0), ["o0", "o1"]);
        c.record("o0", true, t0, 0);
        c.record("o1", true, t0, 0);
        assert!(c.due(t0).is_empty());
        assert_eq!(c.next_due(t0), Some(t0 + Duration::from_secs(2)));
        assert_eq!(c.due(t0 + Duration::from_secs(2)), ["o0"]);
        assert_eq!(c.due(t0 + Duration::from_secs(5)), ["o0", "o1"]);
        c.all_due();
        assert_eq!(c.due(t0), ["o0", "o1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_output_backs_off_within_its_interval() {
        let mut c = clock(&[60]);
        let t0 = Instant::now();
        for failures in 1..10u32 {
            c.record("o0", false, t0, u64::MAX / 3);
            let next = c.next_due(t0).unwrap();
            assert!(
                next > t0 && next <= t0 + Duration::from_secs(60),
                "{failures}"
            );
        }
        c.record("o0", true, t0, 0);
        assert_eq!(c.next_due(t0), Some(t0 + Duration::from_secs(60)));
    }
}
