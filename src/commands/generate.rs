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
        // `start kubernetes/v2`: a file name cannot hold the slash, so that page is
        // keybound-start-kubernetes-v2, and the parent page points to it by that name.
        let slashed: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().replace('-', "\\-"))
            .filter(|n| n.contains('/'))
            .collect();
        let mut command = command;
        let names: Vec<String> = command
            .get_subcommands()
            .filter(|s| s.get_name().contains('/'))
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            let display = command
                .get_subcommands()
                .find(|s| s.get_name() == name)
                .and_then(|s| s.get_display_name())
                .map(|d| d.replace('/', "-"));
            if let Some(display) = display {
                command = command.mut_subcommand(name, |s| s.display_name(display));
            }
        }
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir, written)?;
        }
        let page = clap_mangen::Man::new(command).generate_to(dir)?;
        if !slashed.is_empty() {
            let mut roff = std::fs::read_to_string(&page)?;
            for name in slashed {
                roff = roff.replace(
                    &format!("{name}(1)"),
                    &format!("{}(1)", name.replace('/', "\\-")),
                );
            }
            std::fs::write(&page, roff)?;
        }
        written.push(page);
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    write(man_command(), dir, &mut written)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(written)
}
