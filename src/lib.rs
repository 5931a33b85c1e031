//! keybound joins a Teleport cluster as a Machine ID bot with the `bound_keypair` join method and
//! a static key that may live in a file, an environment variable, a PKCS#11 token or a TPM.
//!
//! The map, from the bottom up; each module imports only modules above it in this list
//! (docs/ARCHITECTURE.md draws it):
//!
//! - foundations: [`failure`](Failure) (exit kinds), [`fsutil`] (atomic private writes, directories
//!   opened without following symlinks), [`servertime`] (checked arithmetic on a server's times),
//!   [`untrusted`] (names from the cluster, checked; text from it, sanitized), [`tls`],
//!   [`subject_key`] (the bot's short-lived keys), [`logging`];
//! - values and the key: [`values`] (what tbot.yaml, flags and the cluster give, checked),
//!   [`signer`] (opens the [`Signer`](keybound_signer::Signer) backend; the backends are crates
//!   under `backends/`), [`identity`] (a bot identity and what its certificates say),
//!   [`attest`] (evidence that a key is in a TPM, checked offline);
//! - talking to the cluster: [`transport`] (TLS and gRPC to the Proxy or Auth), [`webapi`]
//!   (`/webapi/find`), [`auth`] (the bot's authenticated Auth client), [`join`] (the
//!   bound-keypair join and rejoin);
//! - what a bot writes: [`output`] (one file per output kind), [`storage`] (the bot's own
//!   identity between runs), [`service`] (what it serves between renewals: the SPIFFE
//!   Workload API);
//! - [`config`]: tbot's v2 YAML, checked strictly;
//! - running: [`renewal`] (one cycle: join or rejoin, persist, outputs), [`agent`] (cycles on a
//!   schedule, signals, health);
//! - the edge: [`cli`] (tbot's flags, and the flags over the file), [`commands`] (one file per
//!   command).
//!
//! The dev cluster is a crate of its own (`devcluster/`, `keybound-devcluster`), and what it
//! shares with this one lives below both (`teleport/`, `keybound-teleport`).

#![forbid(unsafe_code)]

pub mod agent;
pub mod attest;
pub mod auth;
pub mod bkp;
pub mod cli;
pub mod commands;
pub mod config;
mod failure;
pub mod fsutil;
pub mod heartbeat;
pub mod identity;
pub mod join;
pub mod logging;
pub mod output;
pub mod renewal;
pub mod servertime;
pub mod service;
pub mod signer;
pub mod storage;
pub mod subject_key;
pub mod tls;
pub mod transport;
pub mod untrusted;
pub mod upgrade;
pub mod values;
pub mod webapi;

use anyhow::Context as _;
use cli::{AttestCommand, Cli, Command, KeypairCommand, KubeCommand, SignerCommand};

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
        Command::Configure(args) => {
            commands::configure::configure(&args, &mut std::io::stdout().lock())
        }
        Command::Keypair(KeypairCommand::Create(args)) => Ok(runtime()?.block_on(
            commands::keypair::create(&args, &mut std::io::stdout().lock()),
        )?),
        Command::Keypair(KeypairCommand::Show(args)) => Ok(commands::keypair::show(
            &args,
            &mut std::io::stdout().lock(),
        )?),
        Command::Keypair(KeypairCommand::Attest(args)) => Ok(commands::keypair::attest(
            &args,
            &mut std::io::stdout().lock(),
        )?),
        Command::Attest(AttestCommand::Verify(args)) => {
            commands::attest::verify(&args, &mut std::io::stdout().lock())
        }
        Command::Attest(AttestCommand::Challenge(args)) => {
            commands::attest::challenge(&args, &mut std::io::stdout().lock())
        }
        Command::Signer(SignerCommand::List(args)) => Ok(commands::signer_list::list(
            &args,
            &mut std::io::stdout().lock(),
        )?),
        Command::DevCluster(command) => match &command.admin {
            Some(admin) => Ok(runtime()?.block_on(commands::dev_cluster::run(
                admin,
                &mut std::io::stdout().lock(),
            ))?),
            None => {
                let args = &command.serve;
                let config = args.to_config()?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?;
                Ok(runtime.block_on(keybound_devcluster::run(config, &args.to_serve()))?)
            }
        },
        Command::Doctor(args) => {
            let runtime = runtime()?;
            let result =
                runtime.block_on(commands::doctor::run(&args, &mut std::io::stdout().lock()));
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            result
        }
        Command::Kube(KubeCommand::Credentials(args)) => Ok(commands::kube::credentials(
            &args.destination_dir,
            &mut std::io::stdout().lock(),
        )
        .map_err(|e| Failure::new(ExitKind::Config, e))?),
        Command::Completions(args) => Ok(commands::generate::completions(
            args.shell,
            &mut std::io::stdout().lock(),
        )?),
        Command::SshProxyCommand(args) => {
            let runtime = runtime()?;
            let result = runtime.block_on(commands::ssh_proxy::run(&args));
            // Standard input is read on a blocking thread that may sit in read(2): do not wait.
            runtime.shutdown_background();
            result
        }
        Command::Man(args) => match &args.out_dir {
            None => Ok(commands::generate::man_page(&mut std::io::stdout().lock())?),
            Some(dir) => {
                for page in commands::generate::man_pages(dir)? {
                    println!("{}", page.display());
                }
                Ok(())
            }
        },
    }
}
