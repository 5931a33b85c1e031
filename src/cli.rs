//! The command line, shaped after tbot's (`lib/tbot/cli`). These `///` comments are the `--help`
//! text; flags are public API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keybound_signer::Algorithm;

/// keybound: a Teleport Machine ID agent whose bound keypair can live in a file, an environment
/// variable, a PKCS#11 token or a TPM.
#[derive(Debug, Parser)]
#[command(name = "keybound", version, propagate_version = true)]
pub struct Cli {
    /// Log at debug level (RUST_LOG, when set, overrides this).
    #[arg(short, long, global = true)]
    pub debug: bool,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// keybound's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and inspect bound keypairs.
    #[command(subcommand)]
    Keypair(KeypairCommand),
}

/// `keybound keypair ...`.
#[derive(Debug, Subcommand)]
pub enum KeypairCommand {
    /// Create a static bound keypair and print how to register it with Teleport.
    Create(KeypairCreate),
    /// Print the public key of an existing static key: the one --static-key-path names, the one
    /// a config names, or the one in TBOT_BOUND_KEYPAIR_STATIC_KEY.
    Show(KeypairShow),
}

/// `keybound keypair show`.
#[derive(Debug, Args)]
pub struct KeypairShow {
    /// Read the key location from this tbot.yaml.
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The PEM key file (wins over --config and the environment).
    #[arg(long, value_name = "PATH")]
    pub static_key_path: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// `keybound keypair create`, with tbot's flags.
#[derive(Debug, Args)]
pub struct KeypairCreate {
    /// Create a static key: one you keep yourself (in a file or the environment), which never
    /// rotates. keybound makes only static keys.
    #[arg(long = "static")]
    pub static_key: bool,

    /// Write the private key to this PEM file (mode 0600) instead of printing it for the
    /// environment.
    #[arg(long, value_name = "PATH")]
    pub static_key_path: Option<PathBuf>,

    /// Ask this Teleport Proxy (host:port) for its signature algorithm suite, and make the key
    /// type that suite uses.
    #[arg(long, value_name = "HOST:PORT")]
    pub proxy_server: Option<String>,

    /// Choose the key type instead of asking a proxy.
    #[arg(long, value_parser = parse_algorithm, value_name = "ed25519|ecdsa-p256")]
    pub algorithm: Option<Algorithm>,

    /// Where the private key will live: file (needs --static-key-path) or env (printed for
    /// TBOT_BOUND_KEYPAIR_STATIC_KEY). Defaults to file when --static-key-path is given.
    #[arg(long, value_enum)]
    pub signer: Option<SignerKind>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Replace an existing key file.
    #[arg(long)]
    pub overwrite: bool,

    /// Do not verify the proxy's TLS certificate (development only).
    #[arg(long)]
    pub insecure: bool,

    /// Verify the proxy's TLS certificate with this PEM CA bundle instead of the system roots.
    #[arg(long, value_name = "PATH", conflicts_with = "insecure")]
    pub ca_path: Option<PathBuf>,

    /// tbot's bot storage for non-static keys; keybound makes static keys only, so this is refused.
    #[arg(long, value_name = "URI", hide = true)]
    pub storage: Option<String>,
}

/// Where a key made by `keypair create` is kept.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum SignerKind {
    /// A PEM file.
    File,
    /// Base64 in TBOT_BOUND_KEYPAIR_STATIC_KEY.
    Env,
}

/// Output format of `keypair create`.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum OutputFormat {
    /// Instructions for people.
    Text,
    /// One JSON object: `public_key`, and `private_key` for env keys.
    Json,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
        .map_err(|e: keybound_signer::UnknownAlgorithm| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
