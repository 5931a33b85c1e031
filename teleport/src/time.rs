//! Times as Teleport prints them: RFC 3339, UTC.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `t` in RFC 3339 (`2026-11-23T21:29:49Z`), or `?` for a time RFC 3339 cannot write.
pub fn format_time(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn rfc3339_in_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_469_389);
        assert_eq!(format_time(t), "2026-11-23T21:29:49Z");
    }
}
