//! Log setup: one place, stderr only, `RUST_LOG` over `--debug`.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Eq, PartialEq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter without `RUST_LOG`. The hardware libraries' own complaints are left out unless
/// `debug`: cryptoki logs an ERROR for every mechanism number it has no name for while listing a
/// token's mechanisms, and tss-esapi logs an ERROR for every TPM answer that is not a success,
/// even the ones keybound expects (an empty persistent handle before a key is made there).
/// keybound reports what those mean itself; `RUST_LOG=cryptoki=debug,tss_esapi=debug` brings
/// them back.
fn default_filter(debug: bool) -> &'static str {
    if debug {
        "keybound=debug,info,cryptoki=warn"
    } else {
        "keybound=info,warn,cryptoki=off,tss_esapi=off"
    }
}

/// Installs the global subscriber. Secrets are never passed to `tracing` anywhere in keybound, so
/// no filter here has to catch them.
pub fn init(debug: bool, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(debug)));
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines get ANSI colour: only for a person at a terminal. A pipe, a file, a
/// container's log or systemd's journal (a socket) gets plain lines; so does a terminal when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>), or `TERM=dumb`.
pub fn use_colour(terminal: bool, no_color: Option<&OsStr>, term: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty) && term != Some(OsStr::new("dumb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert!(use_colour(true, None, s("xterm-256color")));
        assert!(use_colour(true, None, None));
        assert!(use_colour(true, s(""), None), "an empty NO_COLOR is unset");
        assert!(!use_colour(false, None, s("xterm-256color")));
        assert!(!use_colour(true, s("1"), s("xterm")));
        assert!(!use_colour(true, s("0"), s("xterm")), "any value counts");
        assert!(!use_colour(true, None, s("dumb")));
    }
}
