//! The one error type every backend returns.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, coarsely, so callers can decide whether to retry.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum ErrorKind {
    /// A PIN, password or authorization value was refused, or the token is locked. Never
    /// retried: retrying a wrong PIN locks real tokens.
    Auth,
    /// The configuration or an input given by the user is wrong (bad path, bad permissions,
    /// unparsable value).
    Config,
    /// Key material was found but is malformed or of an unsupported type.
    InvalidKey,
    /// The key the configuration names does not exist.
    KeyNotFound,
    /// The device or service refused or failed to produce a signature.
    Sign,
    /// The device is busy or unreachable; trying again later may succeed.
    Unavailable,
    /// The request needs something this backend or key cannot do.
    Unsupported,
}

/// An error from a signer backend.
///
/// `Display` is one line naming the backend and the input at fault; the underlying library error,
/// if any, is the [`source`](StdError::source). Messages never contain key material, PINs or
/// authorization values.
pub struct Error {
    kind: ErrorKind,
    backend: &'static str,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Error {
    /// A new error of `kind` from `backend` (`"file"`, `"env"`, ...) with a one-line message.
    pub fn new(kind: ErrorKind, backend: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend that failed.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The message, without the backend prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.backend, self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("backend", &self.backend)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
