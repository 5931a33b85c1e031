//! What the proxy's web API tells: `/webapi/find` (Teleport's version and signature algorithm
//! suite), whether the key's type is the suite's, and how far the clocks are apart.

use std::time::{Duration, SystemTime};

use keybound_signer::Algorithm;
use keybound_teleport::suite::Suite;

use super::report::{Check, Report, Status};
use crate::Failure;
use crate::config::HostPort;
use crate::tls::{Trust, client_config};
use crate::webapi::FindResponse;

/// Asks the proxy's `/webapi/find`, then checks the suite against the key's type (when the signer
/// opened) and the clock against the proxy's `Date` header.
pub(super) async fn checks(
    proxy: &HostPort,
    trust: &Trust,
    algorithm: Option<Algorithm>,
    report: &mut Report<'_>,
) -> Result<(), Failure> {
    let found = match find(proxy, trust).await {
        Ok(found) => found,
        Err(check) => return report.add(check),
    };
    report.add(found_check(&found))?;
    if let Some(algorithm) = algorithm {
        report.add(suite_check(found.suite, algorithm))?;
    }
    report.add(match found.date {
        Some(theirs) => clock_check(SystemTime::now(), theirs),
        None => Check::new(
            Status::Warn,
            "clock",
            "the proxy sent no HTTP Date header, so the clocks could not be compared",
        )
        .fix("keep this machine's clock synchronised (NTP, systemd-timesyncd)"),
    })
}

/// `/webapi/find` over HTTP/1.1 with the trust a join uses; a failure is the FAIL line.
async fn find(proxy: &HostPort, trust: &Trust) -> Result<FindResponse, Check> {
    let found = match client_config(trust, &[b"http/1.1"]) {
        Ok(tls) => crate::webapi::find(proxy, tls).await,
        Err(e) => Err(e),
    };
    found.map_err(|e| {
        Check::new(Status::Fail, "cluster", format!("/webapi/find: {e:#}"))
            .fix("proxy_server must be the Teleport Proxy's web address (host:443 or host:3080)")
    })
}

/// The Teleport version (as the proxy gives it, made safe to print) and the suite.
fn found_check(found: &FindResponse) -> Check {
    Check::new(
        Status::Ok,
        "cluster",
        format!(
            "/webapi/find: Teleport {}, signature algorithm suite {}",
            crate::untrusted::name(
                found
                    .server_version
                    .as_deref()
                    .unwrap_or("(version not given)")
            ),
            found.suite
        ),
    )
}

/// Whether the key type is the one the cluster's suite calls for. Auth compares the bound key
/// with the token's `initial_public_key` and, in the source read for keybound, checks no key type
/// against the suite (docs/teleport-source-notes.md, Q10): a mismatch is a warning.
fn suite_check(suite: Suite, algorithm: Algorithm) -> Check {
    let expected = suite.bound_key_algorithm();
    if expected == algorithm {
        Check::new(
            Status::Ok,
            "cluster",
            format!("suite {suite}: the bound key's type ({algorithm}) is the one this suite uses"),
        )
    } else {
        Check::new(
            Status::Warn,
            "cluster",
            format!(
                "suite {suite} calls for {expected} bound keys and this key is {algorithm}; the \
                 join still works when the token's initial_public_key is this key"
            ),
        )
        .fix(
            "nothing if the token names this key; if the cluster refuses it, make a key with \
             `keybound keypair create --static --proxy-server HOST:PORT`",
        )
    }
}

/// Clock skew beyond which `start` refuses to answer a challenge (the challenge's `iat` must be
/// within it).
const SKEW_FAIL: Duration = crate::join::challenge::CLOCK_SKEW;
/// Skew worth a warning: Teleport back-dates certificates by one minute, so a clock further
/// behind than that sees new certificates as not yet valid.
const SKEW_WARN: Duration = Duration::from_secs(30);

/// Compares our clock with the proxy's `Date` header (which has whole seconds).
pub fn clock_check(ours: SystemTime, theirs: SystemTime) -> Check {
    let (ahead, skew) = match ours.duration_since(theirs) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let seconds = skew.as_secs();
    let direction = if ahead { "ahead of" } else { "behind" };
    let what = format!("this machine's clock is {seconds} s {direction} the proxy's");
    let fix = "synchronise the clock (timedatectl set-ntp true, chrony or systemd-timesyncd)";
    if skew > SKEW_FAIL {
        Check::new(
            Status::Fail,
            "clock",
            format!(
                "{what}; keybound refuses challenges more than {} s off",
                SKEW_FAIL.as_secs()
            ),
        )
        .fix(fix)
    } else if skew > SKEW_WARN {
        Check::new(
            Status::Warn,
            "clock",
            format!("{what}; certificates may look not yet valid or expire early here"),
        )
        .fix(fix)
    } else {
        Check::new(
            Status::Ok,
            "clock",
            format!("{what} (within {} s)", SKEW_WARN.as_secs()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_is_sorted_by_size_and_direction() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let check = |offset: i64| {
            let theirs = if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            };
            clock_check(now, theirs)
        };
        assert_eq!(check(0).status, Status::Ok);
        assert_eq!(check(-30).status, Status::Ok);
        let warn = check(-31);
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.what.contains("31 s ahead of the proxy's"), "{warn}");
        let fail = check(301);
        assert_eq!(fail.status, Status::Fail);
        assert!(fail.what.contains("301 s behind the proxy's"), "{fail}");
        assert!(
            fail.to_string().contains(" — fix: synchronise the clock"),
            "{fail}"
        );
    }

    #[test]
    fn a_key_of_another_type_than_the_suite_is_a_warning_only() {
        assert_eq!(
            suite_check(Suite::BalancedV1, Algorithm::Ed25519).status,
            Status::Ok
        );
        assert_eq!(
            suite_check(Suite::BalancedV1, Algorithm::EcdsaP256Sha256).status,
            Status::Warn
        );
        assert_eq!(
            suite_check(Suite::FipsV1, Algorithm::EcdsaP256Sha256).status,
            Status::Ok
        );
    }
}
