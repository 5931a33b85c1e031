//! Files generated from the command-line definition in [`crate::cli`]: shell completion scripts
//! (`keybound completions`) and man pages (`keybound man`). Both come from the same clap
//! [`Command`](clap::Command) that parses the arguments, so they cannot drift from it.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// The program name the scripts and pages use.
const BIN: &str = "keybound";

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, BIN, out);
    Ok(())
}

/// The command line the man pages describe: no `help` subcommand, which has no page of its own
/// (so `keybound(1)` must not point to a `keybound-help(1)`), and the names built
/// (`keybound-start`, as clap_mangen's own `generate_to` names them).
fn man_command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// Writes the top-level man page, `keybound(1)`, to `out`: the same page `--out-dir` writes.
pub fn man_page(out: &mut dyn Write) -> anyhow::Result<()> {
    clap_mangen::Man::new(man_command())
        .render(out)
        .context("cannot write the man page")
}

/// Writes `keybound.1` and one page per subcommand (`keybound-start.1`, `keybound-keypair-create.1`,
/// ...) into `dir`, and returns the files written.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn write(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir, written)?;
        }
        written.push(clap_mangen::Man::new(command).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    write(man_command(), dir, &mut written)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(written)
}
