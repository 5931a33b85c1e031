//! A token's registration secret as the dev cluster holds it: zeroized when dropped, compared
//! in constant time, and never printed by `Debug` or `tctl get` (`Token::to_resource`). The one
//! place its value leaves the cluster is the answer to the `create` that generated it.
//!
//! Teleport 18's `tctl get token/NAME` shows `status.bound_keypair.registration_secret` (the
//! admin guide reads it there); v19's `tctl bots add` prints a generated secret once, in its
//! joining URI (`tool/tctl/common/bots_command.go`). The dev cluster does the latter for every
//! token: a secret that a listing can show is a secret every log of admin commands keeps.

use std::fmt;

use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// A registration secret.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for Secret {}

impl Secret {
    /// The secret `value` (an admin's, from the token's YAML).
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// A new secret as `populateRegistrationSecret` makes one (`CryptoRandomHex(16)`,
    /// `lib/auth/bound_keypair_tokens.go`): 16 random bytes, 32 lowercase hex digits.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 16]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
        let mut hex = Zeroizing::new(String::with_capacity(32));
        for b in bytes.iter() {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Self(hex)
    }

    /// Whether `given` is this secret, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }

    /// The value, for the one answer that shows it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_hex_compared_whole_and_never_debug_printed() {
        let secret = Secret::generate();
        let value = secret.expose().to_owned();
        assert_eq!(value.len(), 32);
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(Secret::generate(), secret);
        assert!(secret.matches(&value));
        assert!(!secret.matches(&value[..31]));
        assert!(!secret.matches(""));
        let shown = format!("{secret:?} {:?}", Some(secret.clone()));
        assert!(!shown.contains(&value), "{shown}");
    }
}
