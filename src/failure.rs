//! How a run ends: an error and the exit code it deserves (sysexits.h values for `start`).

use std::fmt;

use keybound_teleport::text::one_line;

/// What kind of failure ended a run, which the exit code tells (sysexits.h values for `start`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ExitKind {
    /// Anything else: exit 1.
    General,
    /// The configuration or a local input is wrong: `EX_CONFIG`, 78.
    Config,
    /// The cluster rejected the join: `EX_NOPERM`, 77.
    Rejected,
    /// The cluster (or a device) could not be reached: `EX_UNAVAILABLE`, 69.
    Unreachable,
    /// keybound itself failed: `EX_SOFTWARE`, 70.
    Software,
}

impl ExitKind {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::General => 1,
            Self::Config => 78,
            Self::Rejected => 77,
            Self::Unreachable => 69,
            Self::Software => 70,
        }
    }
}

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct Failure {
    /// Which exit code.
    pub kind: ExitKind,
    /// What happened.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: ExitKind, error: anyhow::Error) -> Self {
        Self { kind, error }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::new(ExitKind::General, error)
    }
}

impl fmt::Display for Failure {
    /// One line, whatever the error holds (server text is sanitized where it enters; this is
    /// the last line of defence).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&one_line(&format!("{:#}", self.error)))
    }
}

impl Failure {
    /// The configuration or a local input is wrong: exit 78.
    pub fn config(error: impl Into<anyhow::Error>) -> Self {
        Self::new(ExitKind::Config, error.into())
    }
}
