//! The configuration as `start` builds it, its cluster address and outputs, and lifetimes that
//! do not fit together.

use super::report::{Check, Report, Status};
use crate::Failure;
use crate::cli::Start;
use crate::config::{Config, HostPort};

/// The configuration `start` would run with. When it does not load, that is the one FAIL line,
/// and the signer and cluster are reported as not checked.
pub(super) fn load(args: &Start, report: &mut Report<'_>) -> Result<Option<Config>, Failure> {
    match args.effective_config() {
        Ok(config) => Ok(Some(config)),
        Err(failure) => {
            // The area column says "config" already: `config tbot.yaml: ...` loses its first
            // word, as the ok line reads `tbot.yaml: proxy ...`.
            let text = failure.to_string();
            let what = text.strip_prefix("config ").unwrap_or(&text);
            report.add(Check::new(Status::Fail, "config", what))?;
            for area in ["signer", "cluster"] {
                report.add(Check::new(
                    Status::Skip,
                    area,
                    "not checked: the configuration did not load",
                ))?;
            }
            Ok(None)
        }
    }
}

/// What the configuration says, then a warning for each lifetime that does not fit, with its
/// own fix (as `start` logs them).
pub(super) fn checks(
    args: &Start,
    config: &Config,
    route: Option<&(HostPort, bool)>,
    report: &mut Report<'_>,
) -> Result<(), Failure> {
    let source = match &args.config {
        Some(path) => path.display().to_string(),
        None => "flags".to_owned(),
    };
    report.add(config_check(&source, config, route))?;
    for warning in config.lifetime_warnings() {
        report.add(Check::new(Status::Warn, "config", warning.problem).fix(warning.fix))?;
    }
    Ok(())
}

fn config_check(source: &str, config: &Config, route: Option<&(HostPort, bool)>) -> Check {
    let cluster = match route {
        Some((addr, false)) => format!("proxy {addr}"),
        Some((addr, true)) => format!("auth {addr}"),
        None => "no cluster address".to_owned(),
    };
    let outputs = match config.outputs.len() {
        1 => "1 identity output".to_owned(),
        n => format!("{n} identity outputs"),
    };
    Check::new(
        Status::Ok,
        "config",
        format!(
            "{source}: {cluster}, join method bound_keypair, {outputs}, credential_ttl {}, \
             renewal_interval {}",
            humantime::format_duration(config.credential_ttl),
            humantime::format_duration(config.renewal_interval)
        ),
    )
}
