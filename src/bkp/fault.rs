//! The crash tests' fault-injection seam: the process ends where a kill would end it, at the
//! points where the cluster, the device and the client state can part.

/// A fault to inject, for the crash tests: `KEYBOUND_TEST_FAULT=after-new-key` ends the process
/// at once after a rotation's new key is stored (before the cluster hears of it);
/// `after-result` ends it when the result has arrived, before the client state is written;
/// `after-generate` ends it when a device has made a new key, before its reference is stored.
pub const FAULT_ENV: &str = "KEYBOUND_TEST_FAULT";

/// Ends the process (as a kill would: no destructor, no flush) if `FAULT_ENV` names `point`.
pub fn fault_point(point: &str) {
    if std::env::var(FAULT_ENV).is_ok_and(|v| v == point) {
        tracing::error!(point, "{FAULT_ENV}: ending the process here");
        std::process::abort();
    }
}
