//! Where a PIN or authorization value comes from. One grammar for every hardware backend:
//! `env:VAR`, `file:PATH` (RFC 7512's `pin-source` form, also `file:///PATH`), or a literal value
//! from a URI's `pin-value` (which shows in process listings; callers warn).

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::{Error, ErrorKind};

/// A source of a secret PIN or authorization value.
#[derive(Clone, Eq, PartialEq)]
pub enum PinSource {
    /// An environment variable.
    Env(String),
    /// A file (its first line; it must not be readable by group or others).
    File(PathBuf),
    /// The value itself.
    Value(Zeroizing<String>),
}

impl PinSource {
    /// Parses `env:VAR`, `file:PATH` or `file:///PATH`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(var) = text.strip_prefix("env:") {
            if var.is_empty() || var.contains('=') {
                return Err(format!("pin source {text:?} names no environment variable"));
            }
            return Ok(Self::Env(var.to_owned()));
        }
        if let Some(path) = text
            .strip_prefix("file://")
            .or_else(|| text.strip_prefix("file:"))
        {
            if path.is_empty() {
                return Err(format!("pin source {text:?} names no file"));
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        Err(format!(
            "pin source {text:?} is not env:VAR or file:PATH (a PIN is never given on the command line)"
        ))
    }

    /// Reads the secret. `backend` names the caller in errors.
    pub fn read(&self, backend: &'static str) -> Result<Zeroizing<String>, Error> {
        match self {
            Self::Value(v) => Ok(v.clone()),
            Self::Env(var) => {
                let value = std::env::var_os(var).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Config,
                        backend,
                        format!("the PIN variable ${var} is not set"),
                    )
                })?;
                let value = Zeroizing::new(value.into_string().map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        backend,
                        format!("${var} is not valid UTF-8"),
                    )
                })?);
                Ok(value)
            }
            Self::File(path) => {
                let meta = std::fs::metadata(path).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        backend,
                        format!("PIN file {}: {e}", path.display()),
                    )
                })?;
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(Error::new(
                        ErrorKind::Config,
                        backend,
                        format!(
                            "PIN file {} has permissions {mode:04o}, readable by group or others; fix \
                             with `chmod 600 {}`",
                            path.display(),
                            path.display()
                        ),
                    ));
                }
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        backend,
                        format!("PIN file {}: {e}", path.display()),
                    )
                })?);
                Ok(Zeroizing::new(
                    text.lines().next().unwrap_or_default().to_owned(),
                ))
            }
        }
    }
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(var) => write!(f, "env:{var}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Value(_) => f.write_str("pin-value:[REDACTED]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(
            PinSource::parse("env:HSM_PIN"),
            Ok(PinSource::Env("HSM_PIN".into()))
        );
        assert_eq!(
            PinSource::parse("file:/run/pin"),
            Ok(PinSource::File("/run/pin".into()))
        );
        assert_eq!(
            PinSource::parse("file:///run/pin"),
            Ok(PinSource::File("/run/pin".into()))
        );
        assert!(
            PinSource::parse("1234")
                .unwrap_err()
                .contains("never given on the command line")
        );
        assert!(PinSource::parse("env:").is_err());
        let value = PinSource::Value(Zeroizing::new("1234".into()));
        assert!(!format!("{value:?}").contains("1234"));
    }
}
