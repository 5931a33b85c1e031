//! One line per check ([`Check`]: ok, warn, FAIL or skip, with a fix), and the report that
//! writes them as they come.

use std::io::Write;

use anyhow::anyhow;

use crate::{ExitKind, Failure};

/// How a check came out.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// `start` would fail here.
    Fail,
    /// Not checked, because an earlier check failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Check {
    /// The outcome.
    pub status: Status,
    /// `config`, `storage`, `signer`, `cluster` or `clock`.
    pub area: &'static str,
    /// What was found.
    pub what: String,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Check {
    pub(super) fn new(status: Status, area: &'static str, what: impl Into<String>) -> Self {
        Self {
            status,
            area,
            what: what.into(),
            fix: None,
        }
    }

    pub(super) fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:<7} {}",
            self.status.label(),
            self.area,
            self.what
        )?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Prints each check as it completes, and remembers whether any failed.
pub(super) struct Report<'a> {
    pub(super) out: &'a mut dyn Write,
    pub(super) failed: usize,
    pub(super) total: usize,
}

impl Report<'_> {
    pub(super) fn add(&mut self, check: Check) -> Result<(), Failure> {
        self.total += 1;
        if check.status == Status::Fail {
            self.failed += 1;
        }
        writeln!(self.out, "{check}")
            .and_then(|()| self.out.flush())
            .map_err(|e| Failure::new(ExitKind::Software, anyhow!("cannot write: {e}")))
    }
}
