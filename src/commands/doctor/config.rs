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

/// The outputs, counted by kind in the order they first appear: `1 identity output`,
/// `2 identity outputs, 1 kubernetes output`; `0 identity outputs` for none.
fn outputs_by_kind(outputs: &[crate::output::OutputConfig]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for output in outputs {
        match counts.iter_mut().find(|(k, _)| *k == output.kind()) {
            Some((_, n)) => *n += 1,
            None => counts.push((output.kind(), 1)),
        }
    }
    if counts.is_empty() {
        counts.push(("identity", 0));
    }
    counts
        .iter()
        .map(|(kind, n)| format!("{n} {kind} output{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn config_check(source: &str, config: &Config, route: Option<&(HostPort, bool)>) -> Check {
    let cluster = match route {
        Some((addr, false)) => format!("proxy {addr}"),
        Some((addr, true)) => format!("auth {addr}"),
        None => "no cluster address".to_owned(),
    };
    let outputs = outputs_by_kind(&config.outputs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{IdentityOutput, OutputConfig, application::ApplicationOutput};

    #[test]
    fn outputs_are_counted_by_kind() {
        let identity = || OutputConfig::Identity(IdentityOutput::in_directory("/o".into()));
        let app = OutputConfig::Application(ApplicationOutput {
            destination: crate::values::Destination::Memory,
            name: None,
            app_name: "echo".into(),
            specific_tls_naming: false,
            roles: Vec::new(),
        });
        assert_eq!(outputs_by_kind(&[identity()]), "1 identity output");
        assert_eq!(outputs_by_kind(&[]), "0 identity outputs");
        assert_eq!(
            outputs_by_kind(&[identity(), app, identity()]),
            "2 identity outputs, 1 application output"
        );
    }
}
