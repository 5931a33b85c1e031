use std::process::ExitCode;

use clap::Parser as _;
use keybound::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    keybound::logging::init(cli.debug, cli.log_format);
    match keybound::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.kind.code())
        }
    }
}
