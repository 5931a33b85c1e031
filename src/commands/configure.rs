//! `keybound configure <kind>`: the `tbot.yaml` that `keybound start <kind>` runs with the same
//! flags, printed or written to a new file (tbot's `configure`, `lib/tbot/cli/globals.go`).

use std::io::Write;

use anyhow::anyhow;

use crate::cli::Configure;
use crate::config::OutputConfig;
use crate::config::generate::{self, Yaml};
use crate::fsutil::{Replace, write_atomic};
use crate::{ExitKind, Failure};

/// Runs `keybound configure`.
pub fn configure(args: &Configure, out: &mut dyn Write) -> Result<(), Failure> {
    let mut start = args.start.clone();
    // tbot's configure builds the configuration from flags alone; no file is read.
    start.config = None;
    let config = start.effective_config()?;
    let mut services = Vec::new();
    // --destination-dir (tbot's legacy flag) made one identity output, first.
    if let (Some(OutputConfig::Identity(_)), Some(dir)) =
        (config.outputs.first(), &start.destination_dir)
    {
        services.push(Yaml::service("identity").map(
            "destination",
            Yaml::destination(&crate::values::Destination::Directory {
                path: dir.clone(),
                symlinks: crate::fsutil::Symlinks::default(),
            }),
        ));
    }
    if let Some(service) = &start.service {
        services.push(service.to_yaml().map_err(|e| Failure::config(anyhow!(e)))?);
    }
    let text = generate::document(&config, services)
        .map_err(|e| Failure::new(ExitKind::Software, anyhow!("configure: {e}")))?;
    match &args.output {
        None => out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Failure::new(ExitKind::Software, e.into())),
        Some(path) => {
            write_atomic(path, text.as_bytes(), 0o600, Replace::Never).map_err(|e| {
                Failure::config(anyhow!(
                    "--output {}: {e:#}; choose a new file or remove the old one",
                    path.display()
                ))
            })?;
            writeln!(out, "wrote {}", path.display())
                .map_err(|e| Failure::new(ExitKind::Software, e.into()))
        }
    }
}
