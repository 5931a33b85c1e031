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
    /// Join the cluster and write the bot's certificates (tbot's `start`).
    Start(Start),
    /// Create and inspect bound keypairs.
    #[command(subcommand)]
    Keypair(KeypairCommand),
    /// Run a local reference Teleport join server for tests, demos and rehearsals.
    DevCluster(DevClusterArgs),
}

/// `keybound start`, with tbot's flags. Flags override the config file.
#[derive(Debug, Args)]
pub struct Start {
    /// tbot.yaml to read.
    #[arg(short, long, value_name = "PATH", env = "TBOT_CONFIG_PATH")]
    pub config: Option<PathBuf>,

    /// Join once, write the outputs, and exit.
    #[arg(long)]
    pub oneshot: bool,

    /// The Teleport Proxy, host:port.
    #[arg(long, value_name = "HOST:PORT", env = "TELEPORT_PROXY")]
    pub proxy_server: Option<String>,

    /// A Teleport Auth Service (or a Proxy on 443/3080), host:port.
    #[arg(
        short = 'a',
        long,
        value_name = "HOST:PORT",
        env = "TELEPORT_AUTH_SERVER"
    )]
    pub auth_server: Option<String>,

    /// The bound_keypair join token's name.
    #[arg(long, env = "TELEPORT_BOT_TOKEN")]
    pub token: Option<String>,

    /// The join method; keybound joins only with bound_keypair.
    #[arg(long, value_name = "METHOD")]
    pub join_method: Option<String>,

    /// The static key's PEM file (onboarding.bound_keypair.static_private_key_path).
    #[arg(long, value_name = "PATH")]
    pub static_key_path: Option<PathBuf>,

    /// Keep the bot's own identity in this directory (storage type directory).
    #[arg(long, value_name = "DIR", conflicts_with = "storage")]
    pub data_dir: Option<PathBuf>,

    /// Where to keep the bot's own identity: file:///DIR (or a bare path) or memory://.
    #[arg(long, value_name = "URI")]
    pub storage: Option<String>,

    /// Write one identity output to this directory, replacing the configured outputs.
    #[arg(long, value_name = "DIR")]
    pub destination_dir: Option<PathBuf>,

    /// Requested certificate lifetime (tbot's flag name; the config key is credential_ttl).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub certificate_ttl: Option<std::time::Duration>,

    /// How often to renew.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub renewal_interval: Option<std::time::Duration>,

    /// Diagnostics listener address.
    #[arg(long, value_name = "HOST:PORT")]
    pub diag_addr: Option<String>,

    /// Do not verify the proxy's TLS certificate (development only).
    #[arg(long)]
    pub insecure: bool,

    /// Verify the proxy with this PEM CA bundle instead of the system roots.
    #[arg(long, value_name = "PATH", conflicts_with = "insecure")]
    pub ca_path: Option<PathBuf>,

    /// tbot's CA pins; not supported by keybound yet.
    #[arg(long, value_name = "PIN", hide = true)]
    pub ca_pin: Vec<String>,
}

/// `keybound dev-cluster`.
#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// Address to listen on (one TLS port, routed by ALPN like a Teleport Proxy).
    #[arg(long, default_value = "127.0.0.1:3080", value_name = "HOST:PORT")]
    pub listen: std::net::SocketAddr,

    /// The cluster's name.
    #[arg(long, default_value = "dev.keybound.test")]
    pub cluster_name: String,

    /// A Teleport token resource file (YAML, the tctl create format); repeatable.
    #[arg(long = "token", value_name = "FILE")]
    pub tokens: Vec<PathBuf>,

    /// The signature algorithm suite to announce.
    #[arg(long, default_value = "balanced-v1")]
    pub suite: String,

    /// Serve only the legacy RegisterUsingBoundKeypairMethod RPC.
    #[arg(long)]
    pub legacy_only: bool,

    /// Send a second, suite-less ServerInit (as some 18.x builds did).
    #[arg(long)]
    pub duplicate_server_init: bool,

    /// Misbehave on purpose, to test clients.
    #[arg(long, value_enum)]
    pub misbehave: Option<MisbehaveArg>,

    /// Write the CA bundle clients must trust here.
    #[arg(long, default_value = "dev-cluster-ca.pem", value_name = "PATH")]
    pub ca_out: PathBuf,

    /// The Teleport version to claim.
    #[arg(long, default_value = "18.2.10")]
    pub server_version: String,
}

/// `--misbehave` values.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum MisbehaveArg {
    /// Challenge a key the client does not hold.
    ChallengeOtherKey,
    /// Drop the stream after the first challenge.
    DropMidJoin,
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
