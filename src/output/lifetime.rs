//! An output's own `credential_ttl` and `renewal_interval`, as tbot reads them: both inlined in
//! every output's YAML (`bot.CredentialLifetime`, `lib/tbot/bot/credential_lifetime.go`), both or
//! neither, and, when unset, the bot's top-level values (each output service takes
//! `cmp.Or(cfg.CredentialLifetime, defaultCredentialLifetime)`, e.g.
//! `lib/tbot/services/application/output_service.go`).
//!
//! tbot checks an output's pair harder than the top-level one: `BotConfig.CheckAndSetDefaults`
//! (`lib/tbot/config/config.go`) refuses the configuration for any error of
//! `CredentialLifetime.Validate`, where the top-level pair only logs a warning for the
//! "suboptimal" two (a lifetime shorter than the interval outside `--oneshot`, one over
//! Teleport's 24 h). The workload-identity outputs skip the 24 h limit (an SVID may live two
//! weeks: `SkipMaxTTLValidation` in their `GetCredentialLifetime`).

use std::time::Duration;

use crate::values::GoDuration;

/// The longest lifetime Teleport issues a certificate for (`defaults.MaxRenewableCertTTL`).
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// An output's own certificate lifetime and renewal interval.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Lifetime {
    /// How long its certificates should last (`credential_ttl`).
    pub ttl: Duration,
    /// How often it is written anew (`renewal_interval`).
    pub renewal_interval: Duration,
    /// Where it was configured (`services[0]`), for errors found once the flags are known.
    at: String,
}

/// Whether an output kind holds its lifetime to Teleport's 24 h.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum MaxTtl {
    /// Certificates from Auth: at most 24 h.
    Teleport,
    /// SVIDs: no limit here (the cluster's own applies).
    Unchecked,
}

impl Lifetime {
    /// An output's two keys, for certificates from Auth ([`MaxTtl::Teleport`]).
    pub(crate) fn of(
        ttl: Option<GoDuration>,
        interval: Option<GoDuration>,
        at: &str,
    ) -> Result<Option<Self>, String> {
        Self::from_raw(ttl, interval, at, MaxTtl::Teleport)
    }

    /// An output's two keys, for SVIDs ([`MaxTtl::Unchecked`]).
    pub(crate) fn of_svid(
        ttl: Option<GoDuration>,
        interval: Option<GoDuration>,
        at: &str,
    ) -> Result<Option<Self>, String> {
        Self::from_raw(ttl, interval, at, MaxTtl::Unchecked)
    }

    /// Checks an output's two keys: both or neither (`None`), and a lifetime within `max`.
    pub(crate) fn from_raw(
        ttl: Option<GoDuration>,
        interval: Option<GoDuration>,
        at: &str,
        max: MaxTtl,
    ) -> Result<Option<Self>, String> {
        let both = "credential_ttl and renewal_interval must both be specified if either is";
        let (ttl, renewal_interval) = match (ttl, interval) {
            (None, None) => return Ok(None),
            (Some(ttl), Some(interval)) => (ttl.0, interval.0),
            (Some(_), None) => return Err(format!("{at}.renewal_interval: missing; {both}")),
            (None, Some(_)) => return Err(format!("{at}.credential_ttl: missing; {both}")),
        };
        if max == MaxTtl::Teleport && ttl > MAX_TTL {
            return Err(format!(
                "{at}.credential_ttl: {} is over 24h, the most Teleport issues; set 24h or less",
                humantime::format_duration(ttl)
            ));
        }
        Ok(Some(Self {
            ttl,
            renewal_interval,
            at: at.to_owned(),
        }))
    }

    /// Outside `--oneshot`, why an interval longer than the bot's `credential_ttl` leaves the
    /// output without valid certificates for a while: keybound never issues an output's
    /// certificates past the bot identity's own expiry (`impersonate::output_expiry`).
    pub fn lapses(&self, bot_ttl: Duration) -> Option<String> {
        (self.renewal_interval > bot_ttl).then(|| {
            format!(
                "{}.renewal_interval {} is longer than the bot's credential_ttl {}: the output's \
                 certificates end with the bot identity's and will lapse before it is written \
                 again",
                self.at,
                humantime::format_duration(self.renewal_interval),
                humantime::format_duration(bot_ttl)
            )
        })
    }

    /// Checks it against the run: outside `--oneshot`, certificates that would expire before
    /// the output is written again are refused.
    pub fn check(&self, oneshot: bool) -> Result<(), String> {
        if !oneshot && self.ttl < self.renewal_interval {
            return Err(format!(
                "{}.credential_ttl: {} is shorter than its renewal_interval {}, so the output's \
                 certificates would expire between renewals; make credential_ttl longer or \
                 renewal_interval shorter",
                self.at,
                humantime::format_duration(self.ttl),
                humantime::format_duration(self.renewal_interval)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: &str) -> Option<GoDuration> {
        Some(v.parse().unwrap())
    }

    #[test]
    fn both_or_neither_and_within_a_day() {
        let check = |t, i, max| Lifetime::from_raw(t, i, "services[1]", max);
        assert_eq!(check(None, None, MaxTtl::Teleport), Ok(None));
        let both = check(d("10m"), d("2m"), MaxTtl::Teleport).unwrap().unwrap();
        assert_eq!(both.ttl, Duration::from_secs(600));
        assert_eq!(both.renewal_interval, Duration::from_secs(120));
        assert_eq!(
            check(d("10m"), None, MaxTtl::Teleport).unwrap_err(),
            "services[1].renewal_interval: missing; credential_ttl and renewal_interval must \
             both be specified if either is"
        );
        assert!(
            check(None, d("1m"), MaxTtl::Teleport)
                .unwrap_err()
                .starts_with("services[1].credential_ttl: missing;")
        );
        assert!(
            check(d("25h"), d("1h"), MaxTtl::Teleport)
                .unwrap_err()
                .starts_with("services[1].credential_ttl: 1day 1h is over 24h")
        );
        assert!(check(d("336h"), d("1h"), MaxTtl::Unchecked).is_ok());
    }

    #[test]
    fn a_lifetime_shorter_than_the_interval_is_refused_outside_oneshot() {
        let short = Lifetime::from_raw(d("1m"), d("5m"), "outputs[0]", MaxTtl::Teleport)
            .unwrap()
            .unwrap();
        assert!(short.check(true).is_ok());
        assert_eq!(short.lapses(Duration::from_secs(300)), None);
        assert!(short.lapses(Duration::from_secs(60)).unwrap().starts_with(
            "outputs[0].renewal_interval 5m is longer than the bot's credential_ttl 1m"
        ));
        let error = short.check(false).unwrap_err();
        assert!(
            error.starts_with(
                "outputs[0].credential_ttl: 1m is shorter than its renewal_interval 5m"
            ),
            "{error}"
        );
    }
}
