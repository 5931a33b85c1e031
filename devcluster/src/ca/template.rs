//! What every certificate the dev CAs make shares, as Teleport's templates set it: a validity
//! window in whole Unix seconds, back-dated a minute; a random 128-bit serial; and names whose
//! strings are typed as Go's `encoding/asn1` types them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use rand_core::{OsRng, RngCore as _};
use rcgen::DnValue;
use rcgen::string::PrintableString;
use time::OffsetDateTime;

/// Lifetime of host certificates: the Proxy's and Auth's TLS certificates, SSH host
/// certificates.
pub(super) const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Teleport back-dates certificates by one minute against clock skew.
pub(super) const BACKDATE: Duration = Duration::from_secs(60);

/// How Go's `encoding/asn1` marshals a `string` with no explicit type: `PrintableString` when
/// every character is in its set, else `UTF8String`.
pub(super) fn go_string(value: &str) -> DnValue {
    match PrintableString::try_from(value) {
        Ok(printable) => DnValue::PrintableString(printable),
        Err(_) => DnValue::Utf8String(value.to_owned()),
    }
}

/// A random serial number below 2^128, as `GenerateCertificate` draws it.
pub(super) fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    serial
}

pub(super) fn unix_seconds(time: SystemTime) -> anyhow::Result<u64> {
    Ok(time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("time before 1970"))?
        .as_secs())
}

/// Whole seconds since the epoch, rounded up.
pub(super) fn unix_seconds_ceil(time: SystemTime) -> anyhow::Result<u64> {
    unix_seconds(time + Duration::from_nanos(999_999_999))
}

pub(super) fn datetime(unix_seconds: u64) -> anyhow::Result<OffsetDateTime> {
    let seconds = i64::try_from(unix_seconds).context("time out of range")?;
    OffsetDateTime::from_unix_timestamp(seconds).context("time out of range")
}
