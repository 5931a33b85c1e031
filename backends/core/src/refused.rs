//! PINs and authorization values a device has refused, remembered so that none is presented twice.
//!
//! Each wrong PIN or authorization value counts towards the device's lockout: a token locks its
//! user PIN after a few, a TPM's dictionary-attack counter locks every DA-protected key. keybound
//! re-reads its PIN source whenever it opens a device again (SIGHUP, a lost session, a TPM that
//! went away), so an operator's fix takes effect; but a source nobody fixed yet gives the same
//! wrong value again. So when a device refuses a value, a fingerprint of it is kept for the life
//! of the process, per device, and a value whose fingerprint matches is refused locally, with a
//! message saying to fix the source.
//!
//! The fingerprint is SHA-256 over a random 32-byte salt drawn once per process, the device's
//! name and the value: it cannot be reversed or compared across processes, and holding it
//! reveals nothing a memory dump of the process would not (the process held the value itself).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use rand_core::{OsRng, RngCore as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::PinSource;

/// The salted fingerprint of one secret for one device.
#[derive(Clone, Copy, Eq, Hash, PartialEq)]
pub struct Fingerprint([u8; 32]);

fn salt() -> &'static [u8; 32] {
    static SALT: OnceLock<[u8; 32]> = OnceLock::new();
    SALT.get_or_init(|| {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        salt
    })
}

fn refused() -> &'static Mutex<HashSet<Fingerprint>> {
    static REFUSED: OnceLock<Mutex<HashSet<Fingerprint>>> = OnceLock::new();
    REFUSED.get_or_init(Default::default)
}

impl Fingerprint {
    /// The fingerprint of `secret` as presented to `device` (a name that identifies the token,
    /// or the TPM and key, the secret is for).
    pub fn of(device: &str, secret: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(salt());
        hash.update((device.len() as u64).to_be_bytes());
        hash.update(device.as_bytes());
        hash.update(secret);
        Self(hash.finalize().into())
    }

    /// Whether `device` refused this secret before, in this process.
    pub fn was_refused(&self) -> bool {
        refused()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(self)
    }

    /// Records that the device refused this secret.
    pub fn remember_refused(&self) {
        refused()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(*self);
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

/// A secret read from its source, with its fingerprint for one device.
pub struct Presented {
    /// The secret, zeroed when dropped.
    pub value: Zeroizing<String>,
    /// Its fingerprint for the device.
    pub fingerprint: Fingerprint,
}

impl PinSource {
    /// Reads the secret for `device` and checks it against the values that device refused
    /// before: `Ok(None)` when it was refused, so the caller must not present it (and says so
    /// with [`PinSource::refused_before`]).
    pub fn read_for(
        &self,
        backend: &'static str,
        device: &str,
    ) -> Result<Option<Presented>, crate::Error> {
        let value = self.read(backend)?;
        let fingerprint = Fingerprint::of(device, value.as_bytes());
        if fingerprint.was_refused() {
            return Ok(None);
        }
        Ok(Some(Presented { value, fingerprint }))
    }

    /// How an operator replaces the secret this source gives: edit a file and send SIGHUP, or
    /// restart (a running process's environment and arguments cannot change).
    pub fn how_to_replace(&self) -> String {
        match self {
            Self::File(path) => format!(
                "put the right value in {} and send keybound SIGHUP (systemctl reload keybound)",
                path.display()
            ),
            Self::Env(var) => format!(
                "set ${var} right and restart keybound (a running process's environment cannot change)"
            ),
            Self::Value(_) => {
                "correct pin-value and restart keybound (better: move the PIN to a file, pin-source=file:PATH)"
                    .to_owned()
            }
        }
    }

    /// The message for a secret the device refused before: `what` is "the PIN" or "the
    /// authorization value", `device` names the token or TPM for people.
    pub fn refused_before(&self, what: &str, device: &str, lockout: &str) -> String {
        format!(
            "{device} already refused {what} that {self:?} gives; keybound does not present a \
             refused value again ({lockout}): {}",
            self.how_to_replace()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_value_is_remembered_per_device_and_never_shown() {
        let source = PinSource::Value(Zeroizing::new("refused-value-1".into()));
        let first = source.read_for("t", "token A").unwrap().unwrap();
        first.fingerprint.remember_refused();
        assert!(source.read_for("t", "token A").unwrap().is_none());
        // Another device, or another value for the same one, is still presented.
        assert!(source.read_for("t", "token B").unwrap().is_some());
        let fixed = PinSource::Value(Zeroizing::new("refused-value-2".into()));
        assert!(fixed.read_for("t", "token A").unwrap().is_some());
        assert_eq!(format!("{:?}", first.fingerprint), "Fingerprint(..)");
        // The device name and the value are not confused with each other.
        assert_ne!(Fingerprint::of("ab", b"c"), Fingerprint::of("a", b"bc"));
        let message = source.refused_before("the PIN", "token \"A\"", "tokens lock");
        assert!(!message.contains("refused-value-1"), "{message}");
        assert!(message.contains("restart keybound"), "{message}");
        let file = PinSource::File("/run/pin".into());
        assert!(
            file.how_to_replace()
                .contains("/run/pin and send keybound SIGHUP")
        );
    }
}
