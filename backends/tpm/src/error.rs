//! One error type for the crate ([`keybound_signer::Error`] with backend `tpm`), what a TPM
//! response code means (try again, a refused authorization, lockout), and the bounded retry of
//! commands the TPM asks to repeat.

use std::time::Duration;

use keybound_signer::{Error, ErrorKind};
use tracing::debug;
use tss_esapi::Error as TssError;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;

/// The backend's name, in errors and in the refused-value memory.
pub(crate) const BACKEND: &str = "tpm";
/// Attempts for a command the TPM asks to repeat (`TPM_RC_RETRY`, `YIELDED`, `TESTING`).
const ATTEMPTS: u32 = 5;
/// The first back-off; it doubles for each further attempt.
const BACKOFF: Duration = Duration::from_millis(20);

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, BACKEND, message)
}

pub(crate) fn rc_kind(e: &TssError) -> Option<Tss2ResponseCodeKind> {
    match e {
        TssError::Tss2Error(rc) => rc.kind(),
        TssError::WrapperError(_) => None,
    }
}

pub(crate) fn is_transient(e: &TssError) -> bool {
    matches!(
        rc_kind(e),
        Some(
            Tss2ResponseCodeKind::Retry
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Testing
        )
    )
}

pub(crate) fn is_auth_failure(e: &TssError) -> bool {
    matches!(
        rc_kind(e),
        Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth)
    )
}

/// Runs `op`, repeating it with bounded back-off while the TPM answers RETRY, YIELDED or TESTING.
pub(crate) fn retrying<T>(mut op: impl FnMut() -> Result<T, TssError>) -> Result<T, TssError> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if is_transient(&e) && attempt + 1 < ATTEMPTS => {
                debug!(error = %e, attempt, "the TPM asked to try again");
                std::thread::sleep(BACKOFF * 2u32.pow(attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// An error for a failed TPM command: `Unavailable` when the TPM asked to try again.
pub(crate) fn tpm_error(e: &TssError, doing: String) -> Error {
    let kind = if is_transient(e) {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Sign
    };
    err(kind, format!("{doing}: {e}")).with_source(*e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::constants::response_code::Tss2ResponseCode;

    fn rc(code: u32) -> TssError {
        TssError::Tss2Error(Tss2ResponseCode::from(code))
    }

    // TPM 2.0 Part 2, 6.6: warnings are 0x900 + n; TPM_RC_RETRY 0x922, YIELDED 0x908,
    // TESTING 0x90A, LOCKOUT 0x921; TPM_RC_AUTH_FAIL 0x08E (+ session in the format-one bits).
    const RETRY: u32 = 0x922;
    const YIELDED: u32 = 0x908;
    const TESTING: u32 = 0x90A;
    const LOCKOUT: u32 = 0x921;
    const AUTH_FAIL_SESSION_1: u32 = 0x98E;

    #[test]
    fn retry_yielded_and_testing_are_retried_a_bounded_number_of_times() {
        for code in [RETRY, YIELDED, TESTING] {
            let mut calls = 0;
            let result: Result<(), TssError> = retrying(|| {
                calls += 1;
                if calls < 3 { Err(rc(code)) } else { Ok(()) }
            });
            assert!(result.is_ok(), "0x{code:x}");
            assert_eq!(calls, 3);
            let mut calls = 0;
            let result: Result<(), TssError> = retrying(|| {
                calls += 1;
                Err(rc(code))
            });
            assert!(result.is_err());
            assert_eq!(calls, ATTEMPTS, "bounded");
        }
    }

    #[test]
    fn authorization_failures_and_lockout_are_never_retried() {
        for code in [AUTH_FAIL_SESSION_1, LOCKOUT] {
            let mut calls = 0;
            let _: Result<(), TssError> = retrying(|| {
                calls += 1;
                Err(rc(code))
            });
            assert_eq!(calls, 1, "0x{code:x}");
        }
        assert!(is_auth_failure(&rc(AUTH_FAIL_SESSION_1)));
        assert_eq!(rc_kind(&rc(LOCKOUT)), Some(Tss2ResponseCodeKind::Lockout));
    }
}
