//! `keybound completions` and `keybound man`, checked by the shells and the formatter that read
//! them: bash, zsh and fish parse the scripts and complete real command lines; groff renders
//! every man page without a warning.

use std::path::Path;
use std::process::Command;

use crate::support::{keybound, run_ok, stdout, tool};

fn script(dir: &Path, shell: &str) -> std::path::PathBuf {
    let output = run_ok(keybound().args(["completions", shell]));
    let path = dir.join(format!("keybound.{shell}"));
    std::fs::write(&path, &output.stdout).unwrap();
    path
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), "bash");
    run_ok(Command::new(tool("bash")).arg("-n").arg(&path));
    // Bash calls the function with COMP_WORDS/COMP_CWORD set, as it does on <Tab>.
    let complete = |words: &str, cword: usize| {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; \
             COMP_POINT=${{#COMP_LINE}}; _keybound keybound \"${{COMP_WORDS[COMP_CWORD]}}\" \
             \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        stdout(&run_ok(Command::new(tool("bash")).args(["-c", &program])))
    };
    assert_eq!(complete("keybound do", 1).trim(), "doctor");
    let admin = complete("keybound dev-cluster ''", 2);
    assert!(
        admin.contains("create") && admin.contains("--listen"),
        "{admin}"
    );
    let flags = complete("keybound start --pkcs11-", 2);
    assert!(
        flags.contains("--pkcs11-uri") && flags.contains("--pkcs11-module"),
        "{flags}"
    );
    let shells = complete("keybound completions ''", 2);
    assert!(
        shells.contains("fish") && shells.contains("zsh"),
        "{shells}"
    );
}

#[test]
fn zsh_loads_the_completion_function() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), "zsh");
    run_ok(Command::new(tool("zsh")).arg("-n").arg(&path));
    let program = format!(
        "autoload -U compinit && compinit -u -d {}/zcompdump && source {} && whence -w _keybound",
        dir.path().display(),
        path.display()
    );
    let found = stdout(&run_ok(
        Command::new(tool("zsh"))
            .args(["-f", "-c", &program])
            .env("HOME", dir.path()),
    ));
    assert_eq!(found.trim(), "_keybound: function");
}

#[test]
fn fish_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), "fish");
    run_ok(Command::new(tool("fish")).arg("-n").arg(&path));
    let program = format!(
        "source {}; complete -C 'keybound do'; complete -C 'keybound start --pkcs11-'",
        path.display()
    );
    let found = stdout(&run_ok(
        Command::new(tool("fish"))
            .args(["--no-config", "-c", &program])
            .env("HOME", dir.path()),
    ));
    assert!(found.contains("doctor\tCheck the configuration"), "{found}");
    assert!(
        found.contains("--pkcs11-uri\tThe key in a PKCS#11 token"),
        "{found}"
    );
}

#[test]
fn an_unknown_shell_is_a_usage_error_naming_the_choices() {
    let output = keybound().args(["completions", "csh"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'csh'") && stderr.contains("bash"),
        "{stderr}"
    );
}

/// groff's own warnings (-ww) on stderr; the page rendered as text on stdout.
fn render(page: &Path) -> String {
    let output = run_ok(
        Command::new(tool("groff"))
            .args(["-man", "-Tascii", "-P-cbou", "-ww"])
            .arg(page),
    );
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(warnings.is_empty(), "{}: {warnings}", page.display());
    stdout(&output)
}

#[test]
fn the_man_pages_render_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("keybound.1");
    std::fs::write(&top, run_ok(keybound().arg("man")).stdout).unwrap();
    // groff justifies lines by widening spaces (alternating sides line by line): words are
    // compared, not spacing.
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = words(&render(&top));
    for expected in [
        "keybound",
        "doctor",
        "completions",
        "Exit status: 0 on success",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }

    let pages_dir = dir.path().join("man1");
    let listed = stdout(&run_ok(
        keybound().args(["man", "--out-dir"]).arg(&pages_dir),
    ));
    let pages: Vec<&str> = listed.lines().collect();
    for name in [
        "keybound.1",
        "keybound-start.1",
        "keybound-doctor.1",
        "keybound-keypair-create.1",
        "keybound-completions.1",
        "keybound-dev-cluster.1",
        "keybound-dev-cluster-create.1",
        "keybound-dev-cluster-rm.1",
    ] {
        let page = pages_dir.join(name);
        assert!(
            pages.contains(&page.to_str().unwrap()),
            "{name} not listed: {listed}"
        );
        render(&page);
    }
    // The NAME line says the name once, and every page a page points to was written.
    let roff = std::fs::read_to_string(&top).unwrap();
    let name = roff
        .lines()
        .skip_while(|l| *l != ".SH NAME")
        .nth(1)
        .unwrap_or_default();
    assert!(
        name.starts_with("keybound \\- A Teleport Machine ID agent"),
        "{name}"
    );
    for page in &pages {
        let roff = std::fs::read_to_string(page).unwrap();
        for word in roff.split_whitespace() {
            let Some(name) = word.strip_suffix("(1)") else {
                continue;
            };
            let file = pages_dir.join(format!("{}.1", name.replace("\\-", "-")));
            assert!(
                file.exists(),
                "{page} names {name}(1), not written: {listed}"
            );
        }
    }
    assert!(!text.contains("keybound-help"), "{text}");
    let start = render(&pages_dir.join("keybound-start.1"));
    assert!(
        start.contains("--proxy-server") && start.contains("TELEPORT_PROXY"),
        "{start}"
    );
    // The dev cluster's page has both its flags and its admin commands.
    let dev_cluster = words(&render(&pages_dir.join("keybound-dev-cluster.1")));
    for expected in [
        "--listen",
        "--admin-socket",
        "create",
        "Remove a resource (tctl rm)",
    ] {
        assert!(
            dev_cluster.contains(expected),
            "{expected:?} missing: {dev_cluster}"
        );
    }
    // man(1) itself reads the page.
    let man = run_ok(
        Command::new(tool("man"))
            .args(["-l", "-P", "cat"])
            .arg(pages_dir.join("keybound-doctor.1"))
            .env("MANWIDTH", "100"),
    );
    assert!(stdout(&man).contains("keybound-doctor"));
}
