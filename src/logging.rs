//! Log setup: one place, stderr only, `RUST_LOG` over `--debug`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Secrets are never passed to `tracing` anywhere in keybound, so
/// no filter here has to catch them.
pub fn init(debug: bool, format: LogFormat) {
    // cryptoki logs an ERROR for every mechanism number it has no name for while listing a
    // token's mechanisms: noise, not errors. RUST_LOG=cryptoki=debug brings it back.
    let default = if debug {
        "keybound=debug,info,cryptoki=warn"
    } else {
        "keybound=info,warn,cryptoki=off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
