//! keybound joins a Teleport cluster as a Machine ID bot with the `bound_keypair` join method and
//! a static key that may live in a file, an environment variable, a PKCS#11 token or a TPM.
//!
//! Layout:
//! - [`cli`]: the command line (tbot's flags);
//! - [`config`]: tbot's v2 YAML, checked strictly;
//! - [`keypair`]: `keybound keypair create`;
//! - [`signer`]: opens the configured [`Signer`](keybound_signer::Signer) backend;
//! - [`suite`]: signature algorithm suites and the keys they call for;
//! - [`webapi`] and [`tls`]: talking to a Teleport Proxy;
//! - [`fsutil`]: atomic private file writes.
//!
//! Backends live in their own crates under `backends/`: `keybound-signer` (the trait and shared
//! types) and `keybound-signer-soft` (file and env keys).

pub mod cli;
pub mod config;
pub mod fsutil;
pub mod keypair;
pub mod logging;
pub mod signer;
pub mod suite;
pub mod tls;
pub mod webapi;

use cli::{Cli, Command, KeypairCommand};

/// Runs one command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keypair(KeypairCommand::Create(args)) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(keypair::create(&args, &mut std::io::stdout().lock()))
        }
        Command::Keypair(KeypairCommand::Show(args)) => {
            keypair::show(&args, &mut std::io::stdout().lock())
        }
    }
}
