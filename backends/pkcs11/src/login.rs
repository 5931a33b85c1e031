//! Logging in: where the user PIN comes from, the token's own PIN flags, and the refused-PIN
//! memory that keeps a wrong PIN from being presented twice (real tokens lock after a few).

use std::path::Path;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keybound_signer::config::Pkcs11Config;
use keybound_signer::{Error, ErrorKind, PinSource};
use tracing::warn;

use crate::Pkcs11Uri;
use crate::error::{BACKEND, err, kind_of};

/// Where the user PIN comes from: the configuration's source, else the URI's `pin-source`,
/// else its `pin-value` (with a warning). Nothing is read here.
pub(crate) fn pin_source(
    config: &Pkcs11Config,
    uri: &Pkcs11Uri,
) -> Result<Option<PinSource>, Error> {
    Ok(match (&config.pin, &uri.pin_source, &uri.pin_value) {
        (Some(source), _, _) => Some(source.clone()),
        (None, Some(source), _) => Some(
            PinSource::parse(source)
                .map_err(|e| err(ErrorKind::Config, format!("pin-source: {e}")))?,
        ),
        (None, None, Some(value)) => {
            warn!(
                "the PKCS#11 URI carries pin-value: the PIN shows in process listings and shell history; use pin-source=env:VAR or file:PATH"
            );
            Some(PinSource::Value(value.clone()))
        }
        (None, None, None) => None,
    })
}

/// Refuses to open a token that needs the user PIN when no PIN source is configured.
pub(crate) fn require_pin_source(
    ctx: &Pkcs11,
    slot: Slot,
    token: &str,
    pin: Option<&PinSource>,
) -> Result<(), Error> {
    let info = ctx
        .get_token_info(slot)
        .map_err(|e| err(ErrorKind::Unavailable, "reading token info").with_source(e))?;
    if info.login_required() && pin.is_none() {
        return Err(err(
            ErrorKind::Config,
            format!(
                "token {token:?} needs the user PIN: pass --pin-source env:VAR or file:PATH (or pin-source in the URI)"
            ),
        ));
    }
    Ok(())
}

/// Refuses to log in when the token says the next wrong PIN would lock it, or it is locked.
fn check_pin_state(ctx: &Pkcs11, slot: Slot, token: &str) -> Result<(), Error> {
    let info = ctx.get_token_info(slot).map_err(|e| {
        err(ErrorKind::Unavailable, format!("reading token {token:?}")).with_source(e)
    })?;
    pin_policy(
        info.user_pin_locked(),
        info.user_pin_final_try(),
        info.user_pin_count_low(),
        token,
    )
}

/// The PIN policy as a pure function over the token's flags (`CKF_USER_PIN_LOCKED`,
/// `CKF_USER_PIN_FINAL_TRY`, `CKF_USER_PIN_COUNT_LOW`): the seam tests use, since SoftHSM never
/// sets these flags.
pub fn pin_policy(
    locked: bool,
    final_try: bool,
    count_low: bool,
    token: &str,
) -> Result<(), Error> {
    if locked {
        return Err(err(
            ErrorKind::Auth,
            format!(
                "the user PIN of token {token:?} is locked; unlock it with the security officer PIN before keybound can sign"
            ),
        ));
    }
    if final_try {
        return Err(err(
            ErrorKind::Auth,
            format!(
                "token {token:?} has one PIN try left; keybound will not risk locking it: log in once with the \
                 token's own tool and the right PIN to reset the counter"
            ),
        ));
    }
    if count_low {
        warn!(
            token,
            "the token reports that a wrong PIN has been entered recently"
        );
    }
    Ok(())
}

/// The name under which the refused-PIN memory ([`keybound_signer::refused`]) keeps a token's
/// PINs: the module, the token's label and its serial.
fn device_key(module: &Path, token: &str, serial: &str) -> String {
    format!(
        "pkcs11 {} token {token:?} serial {serial:?}",
        module.display()
    )
}

/// Logs `session` in with the PIN that `source` gives now: read afresh each time, so a fixed
/// source takes effect at the next open (SIGHUP) or reopen. A PIN this token refused before, in
/// this process, is not presented again; a PIN it refuses now is remembered. The token's own
/// PIN flags are checked first ([`pin_policy`]).
pub(crate) fn log_in(
    ctx: &Pkcs11,
    slot: Slot,
    session: &Session,
    source: Option<&PinSource>,
    (module, token, serial): (&Path, &str, &str),
) -> Result<(), Error> {
    let Some(source) = source else { return Ok(()) };
    let Some(pin) = source.read_for(BACKEND, &device_key(module, token, serial))? else {
        return Err(err(
            ErrorKind::Auth,
            source.refused_before(
                "the PIN",
                &format!("token {token:?}"),
                "real tokens lock after a few wrong PINs",
            ),
        ));
    };
    check_pin_state(ctx, slot, token)?;
    let mut exact = String::with_capacity(pin.value.len());
    exact.push_str(&pin.value);
    match session.login(UserType::User, Some(&AuthPin::from(exact))) {
        // Login is per application and token: another session already logged in.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
            _,
        )) => {
            pin.fingerprint.remember_refused();
            Err(err(
                ErrorKind::Auth,
                format!(
                    "token {token:?} refused the PIN; keybound does not retry a wrong PIN (real tokens lock): \
                     fix the PIN source: {}",
                    source.how_to_replace()
                ),
            ))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(err(
            ErrorKind::Auth,
            format!("the user PIN of token {token:?} is locked"),
        )),
        Err(e) => Err(err(kind_of(&e), format!("logging in to token {token:?}")).with_source(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_policy_never_risks_the_last_try() {
        assert!(pin_policy(false, false, false, "t").is_ok());
        assert!(pin_policy(false, false, true, "t").is_ok());
        let last = pin_policy(false, true, true, "t").unwrap_err();
        assert_eq!(last.kind(), ErrorKind::Auth);
        assert!(last.to_string().contains("one PIN try left"), "{last}");
        let locked = pin_policy(true, false, false, "t").unwrap_err();
        assert!(locked.to_string().contains("is locked"), "{locked}");
    }
}
