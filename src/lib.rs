//! keybound joins a Teleport cluster as a Machine ID bot with the `bound_keypair` join method and
//! a static key that may live in a file, an environment variable, a PKCS#11 token or a TPM.
//!
//! Layout:
//! - [`cli`]: the command line (tbot's flags);
//! - [`config`]: tbot's v2 YAML, checked strictly;
//! - [`start`]: `keybound start`: join, then write storage and outputs;
//! - [`join`]: the bound-keypair join client (new and legacy RPCs);
//! - [`identity`] and [`output`]: the bot identity and the files tbot writes for it;
//! - [`keypair`]: `keybound keypair create` and `show`;
//! - [`servertime`]: checked arithmetic on times a server chose;
//! - [`signer`]: opens the configured [`Signer`](keybound_signer::Signer) backend;
//! - [`webapi`] and [`tls`]: talking to a Teleport Proxy's web API;
//! - [`fsutil`]: atomic private file writes;
//! - [`untrusted`]: what the cluster says, checked before it reaches a file and sanitized before
//!   it reaches a log line or an error;
//! - [`doctor`]: `keybound doctor`, read-only checks of a setup;
//! - [`generate`]: shell completions and man pages from the CLI definition.
//!
//! Backends live in their own crates under `backends/`: `keybound-signer` (the trait and shared
//! types) and `keybound-signer-soft` (file and env keys).

#![forbid(unsafe_code)]

pub mod agent;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
mod failure;
pub mod fsutil;
pub mod generate;
pub mod identity;
pub mod join;
pub mod logging;
pub mod output;
pub mod renewal;
pub mod servertime;
pub mod signer;
pub mod storage;
pub mod subject_key;
pub mod tls;
pub mod transport;
pub mod untrusted;
pub mod values;
pub mod webapi;

use anyhow::Context as _;
use cli::{Cli, Command, KeypairCommand, SignerCommand};

pub use failure::{ExitKind, Failure};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs one command to completion.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Start(args) => {
            let runtime = runtime()?;
            let result =
                runtime.block_on(commands::start::start(&args, &mut std::io::stdout().lock()));
            // A signing thread stuck on a device must not hold up exit.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            result
        }
        Command::Keypair(KeypairCommand::Create(args)) => Ok(runtime()?.block_on(
            commands::keypair::create(&args, &mut std::io::stdout().lock()),
        )?),
        Command::Keypair(KeypairCommand::Show(args)) => Ok(commands::keypair::show(
            &args,
            &mut std::io::stdout().lock(),
        )?),
        Command::Signer(SignerCommand::List(args)) => Ok(commands::signer_list::list(
            &args,
            &mut std::io::stdout().lock(),
        )?),
        Command::DevCluster(args) => {
            let config = args.to_config()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            Ok(runtime.block_on(keybound_devcluster::run(config, &args.ca_out))?)
        }
        Command::Doctor(args) => {
            let runtime = runtime()?;
            let result =
                runtime.block_on(commands::doctor::run(&args, &mut std::io::stdout().lock()));
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            result
        }
        Command::Completions(args) => Ok(generate::completions(
            args.shell,
            &mut std::io::stdout().lock(),
        )?),
        Command::Man(args) => match &args.out_dir {
            None => Ok(generate::man_page(&mut std::io::stdout().lock())?),
            Some(dir) => {
                for page in generate::man_pages(dir)? {
                    println!("{}", page.display());
                }
                Ok(())
            }
        },
    }
}
