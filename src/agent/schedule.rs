//! What a renewal attempt came to ([`Outcome`], [`classify`]) and when the agent tries again:
//! the renewal interval after a success, capped exponential back-off with full jitter after a
//! transient failure, a slow cadence after a rejection (minutes: an operator's fix), never after
//! a halt.

use std::time::{Duration, SystemTime};

use keybound_signer::{Error as SignerError, ErrorKind};

use crate::join::JoinError;
use crate::{ExitKind, Failure};

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
    /// rejections retried every interval, but at least a minute and at most five apart: the
    /// cluster's answer will not change within seconds, and once an operator has fixed its cause
    /// (made the token, removed a lock) the agent should follow within minutes, not at a
    /// 20-minute interval (SIGHUP retries at once).
    pub fn for_interval(renewal_interval: Duration) -> Self {
        Self {
            renewal_interval,
            base_backoff: Duration::from_secs(1).min(renewal_interval),
            max_backoff: renewal_interval.clamp(Duration::from_secs(1), Duration::from_secs(300)),
            rejected_retry: renewal_interval
                .clamp(Duration::from_secs(60), Duration::from_secs(300)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let s = Schedule::for_interval(Duration::from_secs(20 * 60));
        assert_eq!(s.max_backoff, Duration::from_secs(300));
        assert_eq!(s.rejected_retry, Duration::from_secs(5 * 60));
        assert_eq!(
            Schedule::for_interval(Duration::from_secs(3 * 60)).rejected_retry,
            Duration::from_secs(3 * 60)
        );
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
}
