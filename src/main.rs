use std::process::ExitCode;

use clap::Parser as _;
use keybound::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    keybound::logging::init(cli.debug, cli.log_format);
    match keybound::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
