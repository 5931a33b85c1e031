//! Arithmetic on times a server chose.
//!
//! A challenge's `iat`, `nbf` and `exp` and a certificate's validity come from the cluster, and a
//! hostile one picks them: `i64::MIN` and `i64::MAX` are valid JSON numbers. Plain `-` and `+`
//! on such values wrap in release builds (the answer is a small, harmless-looking number) and
//! panic in debug builds. Every computation on a server's time goes through these functions
//! instead: each returns `None` when the true result does not fit, and the caller refuses the
//! input with an error that says so.
//!
//! Times are whole seconds since the Unix epoch, as JWT `NumericDate`s and Teleport carry them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in whole seconds since the epoch (negative before it); `None` past `i64` seconds.
pub fn unix_seconds(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => {
            // Round towards the past, as a clock reading in seconds does.
            let d = before.duration();
            let whole = i64::try_from(d.as_secs()).ok()?;
            let partial = i64::from(d.subsec_nanos() > 0);
            0i64.checked_sub(whole)?.checked_sub(partial)
        }
    }
}

/// `to - from` in seconds, or `None` when it does not fit in an `i64`.
pub fn seconds_between(from: i64, to: i64) -> Option<i64> {
    to.checked_sub(from)
}

/// `t + seconds`, or `None` when it does not fit in an `i64`.
pub fn add_seconds(t: i64, seconds: i64) -> Option<i64> {
    t.checked_add(seconds)
}

/// How far apart `a` and `b` are, in seconds, whichever comes first; `None` when it does not fit.
pub fn distance(a: i64, b: i64) -> Option<u64> {
    seconds_between(a, b).map(i64::unsigned_abs)
}

/// A length of time as `i64` seconds, for comparing with [`seconds_between`]; saturates (a
/// limit of more than 292 billion years is no limit).
pub fn whole_seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_are_none_not_wrapped() {
        // The challenge that started this: nbf = i64::MIN, exp = i64::MAX - 301. Unchecked,
        // exp - nbf wraps to -302 in a release build, "shorter than any limit".
        assert_eq!(seconds_between(i64::MIN, i64::MAX - 301), None);
        assert_eq!(seconds_between(i64::MAX, i64::MIN), None);
        assert_eq!(seconds_between(-5, 5), Some(10));
        assert_eq!(add_seconds(i64::MAX - 299, 300), None);
        assert_eq!(add_seconds(i64::MIN, -1), None);
        assert_eq!(add_seconds(10, -20), Some(-10));
        assert_eq!(distance(i64::MIN, 0), None);
        assert_eq!(distance(0, i64::MIN + 1), Some(i64::MAX as u64));
        assert_eq!(distance(7, 3), Some(4));
        assert_eq!(whole_seconds(Duration::MAX), i64::MAX);
        assert_eq!(whole_seconds(Duration::from_millis(2500)), 2);
    }

    #[test]
    fn clock_readings_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_760_000_000);
        assert_eq!(unix_seconds(t), Some(1_760_000_000));
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(unix_seconds(before), Some(-2));
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(2)), Some(-2));
    }
}
