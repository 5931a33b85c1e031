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
pub mod config;
pub mod doctor;
pub mod fsutil;
pub mod generate;
pub mod identity;
pub mod join;
pub mod keypair;
pub mod logging;
pub mod output;
pub mod servertime;
pub mod signer;
pub mod start;
pub mod tls;
pub mod untrusted;
pub mod webapi;

use std::fmt;

use anyhow::Context as _;
use cli::{Cli, Command, KeypairCommand, SignerCommand};

/// What kind of failure ended a run, which the exit code tells (sysexits.h values for `start`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ExitKind {
    /// Anything else: exit 1.
    General,
    /// The configuration or a local input is wrong: `EX_CONFIG`, 78.
    Config,
    /// The cluster rejected the join: `EX_NOPERM`, 77.
    Rejected,
    /// The cluster (or a device) could not be reached: `EX_UNAVAILABLE`, 69.
    Unreachable,
    /// keybound itself failed: `EX_SOFTWARE`, 70.
    Software,
}

impl ExitKind {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::General => 1,
            Self::Config => 78,
            Self::Rejected => 77,
            Self::Unreachable => 69,
            Self::Software => 70,
        }
    }
}

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct Failure {
    /// Which exit code.
    pub kind: ExitKind,
    /// What happened.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: ExitKind, error: anyhow::Error) -> Self {
        Self { kind, error }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::new(ExitKind::General, error)
    }
}

impl fmt::Display for Failure {
    /// One line, whatever the error holds (server text is sanitized where it enters; this is
    /// the last line of defence).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&untrusted::one_line(&format!("{:#}", self.error)))
    }
}

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
            let result = runtime.block_on(start::start(&args, &mut std::io::stdout().lock()));
            // A signing thread stuck on a device must not hold up exit.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            result
        }
        Command::Keypair(KeypairCommand::Create(args)) => {
            Ok(runtime()?.block_on(keypair::create(&args, &mut std::io::stdout().lock()))?)
        }
        Command::Keypair(KeypairCommand::Show(args)) => {
            Ok(keypair::show(&args, &mut std::io::stdout().lock())?)
        }
        Command::Signer(SignerCommand::List(args)) => {
            Ok(signer::list(&args, &mut std::io::stdout().lock())?)
        }
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
            let result = runtime.block_on(doctor::run(&args, &mut std::io::stdout().lock()));
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
