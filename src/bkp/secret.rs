//! The registration secret (tbot's `RegistrationSecret()`, `lib/tbot/bot/onboarding/config.go`):
//! where it comes from, in tbot's order, and a type that never shows it.

use std::fmt;
use std::path::Path;

use tracing::warn;
use zeroize::Zeroizing;

use super::REGISTRATION_SECRET_ENV;

/// A registration secret: zeroized on drop, never printed.
#[derive(Clone, Eq, PartialEq)]
pub struct RegistrationSecret(Zeroizing<String>);

impl fmt::Debug for RegistrationSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistrationSecret(..)")
    }
}

impl RegistrationSecret {
    /// A secret given as a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret, for the join message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Resolves the secret as tbot does: both the value and the path set is an error; the path's
/// file, whitespace-trimmed; the value, verbatim; `TBOT_REGISTRATION_SECRET`, verbatim; or none.
/// Errors name the setting and the fix, never the secret.
pub fn resolve(
    value: Option<&RegistrationSecret>,
    path: Option<&Path>,
) -> Result<Option<RegistrationSecret>, String> {
    let env = || {
        std::env::var(REGISTRATION_SECRET_ENV)
            .ok()
            .filter(|v| !v.is_empty())
    };
    match (value, path) {
        (Some(_), Some(_)) => Err(
            "only one of 'registration_secret' and 'registration_secret_path' may be set; \
             remove one (the flags --registration-secret and --registration-secret-path too)"
                .to_owned(),
        ),
        (None, Some(path)) => {
            if env().is_some() {
                warn!("{REGISTRATION_SECRET_ENV} is set but registration_secret_path wins");
            }
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "registration_secret_path {}: cannot read: {e}; point it at the file holding \
                     the token's registration secret",
                    path.display()
                )
            })?);
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(format!(
                    "registration_secret_path {}: the file is empty; put the token's \
                     registration secret in it (tctl get token/NAME shows it)",
                    path.display()
                ));
            }
            Ok(Some(RegistrationSecret::new(trimmed)))
        }
        (Some(value), None) => {
            if env().is_some() {
                warn!("{REGISTRATION_SECRET_ENV} is set but registration_secret wins");
            }
            Ok(Some(value.clone()))
        }
        (None, None) => Ok(env().map(RegistrationSecret::new)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_or_file_never_both_and_the_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "  s3cret \n").unwrap();
        let value = RegistrationSecret::new(" raw ");
        assert!(
            resolve(Some(&value), Some(&file))
                .unwrap_err()
                .starts_with("only one of 'registration_secret' and 'registration_secret_path'")
        );
        assert_eq!(
            resolve(None, Some(&file)).unwrap().unwrap().expose(),
            "s3cret"
        );
        assert_eq!(
            resolve(Some(&value), None).unwrap().unwrap().expose(),
            " raw "
        );
        std::fs::write(&file, "\n").unwrap();
        let err = resolve(None, Some(&file)).unwrap_err();
        assert!(err.contains("the file is empty"), "{err}");
        assert_eq!(format!("{value:?}"), "RegistrationSecret(..)");
    }
}
