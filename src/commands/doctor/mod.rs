//! `keybound doctor`: read-only checks of everything `keybound start` depends on, one line each.
//!
//! The checks reuse what `start` runs ([`crate::cli::Start::effective_config`], [`crate::config::Config::route`],
//! [`crate::signer::open_signer`], [`crate::transport`], [`crate::webapi::find`]), so a
//! passing doctor means `start` gets past the same steps. Nothing here joins, signs anything for
//! the cluster, writes storage or outputs, or takes the storage lock (a running agent keeps it):
//! opening a PKCS#11 key logs in once with the configured PIN, exactly as `start` would, and a
//! refused PIN is reported, never retried. A TPM checks a key's authorization value only when the
//! key is used, so a TPM key signs one fixed local message: one try, never repeated.
//!
//! The checks run in the order `start` meets what they check, one file a group: the configuration
//! and its lifetimes (`config`), storage and directory outputs (`storage`), the signer
//! (`signer`) or, in standard mode, the keys and join state in storage (`standard`), the connection a join makes (`connection`: TCP, TLS, ALPN), and what the
//! proxy's web API tells (`web`: `/webapi/find`, the suite, the clock).

mod config;
mod connection;
#[cfg(feature = "tpm")]
mod nv;
mod report;
mod signer;
mod standard;
mod storage;
mod web;

use std::io::Write;

use anyhow::anyhow;
use keybound_signer::Algorithm;

use crate::cli::Start;
use crate::config::{Config, HostPort, KeyMode};
use crate::{ExitKind, Failure};

use report::Report;
pub use report::{Check, Status};
pub use web::clock_check;

/// Runs every check and prints one line per check to `out`. Fails (exit 1) when any check did.
pub async fn run(args: &Start, out: &mut dyn Write) -> Result<(), Failure> {
    let mut report = Report {
        out,
        failed: 0,
        total: 0,
    };
    checks(args, &mut report).await?;
    if report.failed > 0 {
        return Err(Failure::new(
            ExitKind::General,
            anyhow!(
                "{} of {} checks failed; fix the FAIL lines above",
                report.failed,
                report.total
            ),
        ));
    }
    Ok(())
}

/// Every check, in the order `start` meets what they check.
async fn checks(args: &Start, report: &mut Report<'_>) -> Result<(), Failure> {
    // The configuration: nothing else can be checked without it.
    let Some(config) = config::load(args, report)? else {
        return Ok(());
    };
    let route = config.route();
    config::checks(args, &config, route.as_ref().ok(), report)?;
    for check in storage::checks(&config) {
        report.add(check)?;
    }

    // The signer: opened as start opens it (one login, never a signature); in standard mode
    // (no static key) the client state in storage instead, and no suite check (each new key
    // follows the suite the cluster names).
    let algorithm = match config.onboarding.key_mode() {
        KeyMode::Static => signer::checks(&config, report)?,
        KeyMode::Standard => {
            standard::checks(&config, report)?;
            None
        }
    };

    // The cluster.
    let (proxy, direct) = match route {
        Ok(route) => route,
        Err(failure) => {
            return report.add(Check::new(Status::Fail, "cluster", failure.to_string()));
        }
    };
    cluster_checks(&config, &proxy, direct, algorithm, report).await
}

/// The connection a join makes; then, through the proxy's web port, `/webapi/find`, the suite
/// and the clock.
async fn cluster_checks(
    config: &Config,
    proxy: &HostPort,
    direct: bool,
    algorithm: Option<Algorithm>,
    report: &mut Report<'_>,
) -> Result<(), Failure> {
    let trust = config.trust();
    let connected = connection::checks(proxy, direct, &trust, report).await?;
    if direct {
        report.add(Check::new(
            Status::Skip,
            "cluster",
            format!(
                "/webapi/find, suite and clock: {proxy} is Auth's own port, which serves no web API"
            ),
        ))?;
        return Ok(());
    }
    if !connected {
        report.add(Check::new(
            Status::Skip,
            "cluster",
            "/webapi/find, suite and clock: not checked, the proxy could not be reached",
        ))?;
        return Ok(());
    }
    web::checks(proxy, &trust, algorithm, report).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_status_area_and_message() {
        let line = Check::new(Status::Fail, "cluster", "TLS: bad").fix("pass --ca-path");
        assert_eq!(
            line.to_string(),
            "FAIL cluster TLS: bad — fix: pass --ca-path"
        );
        let line = Check::new(Status::Ok, "signer", "file k.pem");
        assert_eq!(line.to_string(), "ok   signer  file k.pem");
    }
}
