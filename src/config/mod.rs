//! tbot's v2 YAML configuration, the only module that touches `serde_yaml`.
//!
//! keybound reads the same `tbot.yaml` that Teleport's `tbot` reads (`lib/tbot/config/config.go`,
//! `lib/tbot/bot/onboarding/config.go`). Parsing is strict: an unknown key or a value of the wrong
//! type is an error naming the file, line, column and key. Keys that tbot knows but keybound does
//! not implement are errors that say so, never silently ignored; setting them to their "off"
//! value (`false`, empty) is accepted.

pub mod generate;
mod keys;
mod onboarding;
mod raw;
pub mod token;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::fsutil::Symlinks;
pub use crate::output::{IdentityOutput, OutputConfig};
use anyhow::anyhow;
use tracing::info;

use crate::Failure;
use crate::fsutil::resolve;
use crate::tls::Trust;
pub use crate::values::{Destination, HostPort, parse_duration};
pub use keys::keys;
pub use onboarding::{KeyMode, Onboarding};
pub use raw::parse_handle;

/// tbot's default storage directory (`lib/tbot/config`, `defaultStoragePath`).
pub const DEFAULT_STORAGE_PATH: &str = "/var/lib/teleport/bot";
/// tbot's default certificate lifetime.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(60 * 60);
/// tbot's default renewal interval.
pub const DEFAULT_RENEWAL_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// A loaded, checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the cluster is reached, if the file says.
    pub cluster: Option<ClusterAddr>,
    /// How to join.
    pub onboarding: Onboarding,
    /// Where the bot's own identity is kept between runs.
    pub storage: Destination,
    /// Requested certificate lifetime.
    pub credential_ttl: Duration,
    /// How often to renew.
    pub renewal_interval: Duration,
    /// Join once, write outputs, and exit.
    pub oneshot: bool,
    /// Verbose logging.
    pub debug: bool,
    /// Skip TLS verification of the cluster (development only).
    pub insecure: bool,
    /// The diagnostics listener address.
    pub diag_addr: Option<String>,
    /// The outputs (`outputs:` and `services:` together, in that order).
    pub outputs: Vec<OutputConfig>,
    /// The services of `services:` (the Workload API), run by the agent, not by `--oneshot`.
    pub services: Vec<crate::service::ServiceConfig>,
}

/// The cluster address: through a Proxy (`proxy_server`) or straight to Auth (`auth_server`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ClusterAddr {
    /// A Teleport Proxy, normally its web port.
    Proxy(HostPort),
    /// A Teleport Auth Service (or a Proxy on 443/3080, which tbot tries as a Proxy first).
    Auth(HostPort),
}

/// The longest certificate lifetime Teleport issues a bot (`defaults.MaxRenewableCertTTL`).
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A lifetime setting that does not fit ([`Config::lifetime_warnings`]), and what to change.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct LifetimeWarning {
    /// What is wrong.
    pub problem: String,
    /// What to change.
    pub fix: &'static str,
}

impl fmt::Display for LifetimeWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

/// A configuration error: one line naming the file and, where YAML knows it, line and column.
#[derive(Debug)]
pub struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Where a join goes: the Proxy, or Auth itself (`true`) when `auth_server` is not on a web
    /// port.
    pub fn route(&self) -> Result<(HostPort, bool), Failure> {
        match &self.cluster {
            Some(ClusterAddr::Proxy(p)) => Ok((p.clone(), false)),
            // tbot treats an auth_server on the web ports as a Proxy first (lib/join/joinclient).
            Some(ClusterAddr::Auth(a)) if a.port() == 443 || a.port() == 3080 => {
                info!(addr = %a, "auth_server is on a web port; joining through it as a Proxy, as tbot does");
                Ok((a.clone(), false))
            }
            Some(ClusterAddr::Auth(a)) => Ok((a.clone(), true)),
            None => Err(Failure::config(anyhow!(
                "no cluster address: set proxy_server in the config or pass --proxy-server HOST:PORT"
            ))),
        }
    }

    /// What is wrong with the certificate lifetime and renewal interval, as tbot checks them
    /// (`CredentialLifetime.Validate`, `lib/tbot/bot/credential_lifetime.go`): a lifetime shorter
    /// than the interval matters to the long-running agent only; one over Teleport's 24 h
    /// (`defaults.MaxRenewableCertTTL`) is cut to 24 h by the cluster, `--oneshot` or not.
    pub fn lifetime_warnings(&self) -> Vec<LifetimeWarning> {
        let (ttl, interval) = (
            humantime::format_duration(self.credential_ttl),
            humantime::format_duration(self.renewal_interval),
        );
        let mut warnings = Vec::new();
        if !self.oneshot && self.credential_ttl < self.renewal_interval {
            warnings.push(LifetimeWarning {
                problem: format!(
                    "credential_ttl {ttl} is shorter than renewal_interval {interval}: the \
                     certificates will expire between renewals"
                ),
                fix: "make credential_ttl longer than renewal_interval, or renewal_interval \
                      shorter",
            });
        }
        if !self.oneshot {
            for problem in self
                .outputs
                .iter()
                .filter_map(|o| o.lifetime()?.lapses(self.credential_ttl))
            {
                warnings.push(LifetimeWarning {
                    problem,
                    fix: "make the output's renewal_interval at most the bot's credential_ttl",
                });
            }
        }
        if self.credential_ttl > MAX_CREDENTIAL_TTL {
            warnings.push(LifetimeWarning {
                problem: format!(
                    "credential_ttl {ttl} is over 24h, the most Teleport issues; the \
                     certificates will last 24h"
                ),
                fix: "set credential_ttl (or --certificate-ttl) to 24h or less",
            });
        }
        warnings
    }

    /// Checks each output's own lifetime against the run, once the flags are known (`--oneshot`):
    /// outside `--oneshot`, one shorter than its interval is refused, as tbot refuses it
    /// ([`crate::output::lifetime::Lifetime::check`]).
    pub fn check_lifetimes(&self) -> Result<(), String> {
        self.outputs
            .iter()
            .filter_map(|o| o.lifetime())
            .try_for_each(|l| l.check(self.oneshot))
    }

    /// How the cluster's TLS certificate is verified.
    pub fn trust(&self) -> Trust {
        if self.insecure {
            Trust::Insecure
        } else if let Some(path) = &self.onboarding.ca_path {
            Trust::Bundle(path.clone())
        } else {
            Trust::System
        }
    }

    /// Refuses destinations that would overwrite each other: an output that is the storage
    /// directory or inside it (its role-impersonated files would replace the bot's own, which
    /// the cluster would then see rejoin with the wrong certificate, or sit among them), or two
    /// outputs in one directory; and an output directory its `ssh_config` could not name
    /// ([`crate::output::check_ssh_config_dir`], through each output's `validate`). Paths are compared where they lead
    /// ([`resolve`]): `x/../storage` and a symbolic link to the storage directory are the storage
    /// directory.
    pub fn check_destinations(&self) -> Result<(), String> {
        let via = |path: &Path, resolved: &Path| {
            if path == resolved {
                String::new()
            } else {
                format!(" (it resolves to {})", resolved.display())
            }
        };
        let storage = match &self.storage {
            Destination::Directory { path, .. } => Some((path, resolve(path))),
            Destination::Memory => None,
        };
        let mut seen: Vec<PathBuf> = Vec::new();
        for output in &self.outputs {
            let Destination::Directory { path, .. } = output.destination() else {
                continue;
            };
            let here = resolve(path);
            if let Some((storage_path, storage)) = &storage {
                if *storage == here {
                    return Err(format!(
                        "output {}{} is the storage directory; outputs hold role-impersonated \
                         certificates that would replace the bot's own: give the output its own \
                         directory",
                        path.display(),
                        via(path, &here)
                    ));
                }
                if here.starts_with(storage) {
                    return Err(format!(
                        "output {}{} is inside the storage directory {}; give the output a \
                         directory outside it",
                        path.display(),
                        via(path, &here),
                        storage_path.display()
                    ));
                }
            }
            if seen.contains(&here) {
                return Err(format!(
                    "two outputs write to {}{}; give each its own directory",
                    path.display(),
                    via(path, &here)
                ));
            }
            seen.push(here);
            output.validate()?;
        }
        Ok(())
    }
}
