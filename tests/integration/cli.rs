//! The command line as a tbot user meets it: tbot's flags keybound lacks are refused by name,
//! `--help` describes what each command does and prints, and a value a command cannot take is a
//! usage error (exit 2).

use std::process::Output;

use crate::support::{keybound, run_ok, stdout};

/// Runs `args`, expecting a usage error as clap writes it: exit 2, and stderr's first line, which starts
/// with `error: `.
fn usage_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let output: Output = keybound()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains("try '--help'"), "{args:?}: {stderr}");
    stderr.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn tbot_flags_keybound_lacks_are_refused_by_name_with_what_to_do() {
    for (args, env, expected) in [
        (
            &["start", "--config-string", "dmVyc2lvbjogdjIK"][..],
            &[][..],
            "error: keybound does not support --config-string (TBOT_CONFIG): give the \
             configuration as a file with -c PATH",
        ),
        (
            &["doctor"],
            &[("TBOT_CONFIG", "dmVyc2lvbjogdjIK")],
            "error: keybound does not support --config-string (TBOT_CONFIG)",
        ),
        (
            &["start", "--fips", "-c", "tbot.yaml"],
            &[],
            "error: keybound does not support --fips: ",
        ),
        (
            &["--fips", "keypair", "create", "--static"],
            &[],
            "error: keybound does not support --fips: ",
        ),
        (
            &["start", "--trace"],
            &[],
            "error: keybound does not support --trace: ",
        ),
        // Before anything else is checked: with no configuration at all, the pointer to
        // --ca-path comes first.
        (
            &["start", "--ca-pin", "sha256:abcd"],
            &[],
            "error: keybound does not support --ca-pin: give the cluster's CA bundle with \
             --ca-path",
        ),
        (
            &[
                "doctor",
                "--ca-pin",
                "sha256:abcd",
                "-c",
                "/no/such/tbot.yaml",
            ],
            &[],
            "error: keybound does not support --ca-pin",
        ),
    ] {
        let first = usage_error(args, env);
        assert!(first.starts_with(expected), "{args:?}: {first}");
    }
}

#[test]
fn doctor_help_lists_starts_flags_but_not_oneshot() {
    let help = stdout(&run_ok(keybound().args(["doctor", "--help"])));
    assert!(help.contains("--proxy-server"), "{help}");
    assert!(!help.contains("--oneshot"), "{help}");
    // Still accepted, so a start command line can be checked as it is.
    let output = keybound()
        .args(["doctor", "--oneshot", "-c", "/no/such/tbot.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("FAIL config"));
}

#[test]
fn signer_list_takes_only_a_backend_it_can_list() {
    for signer in ["env", "file", "tpm"] {
        let first = usage_error(
            &[
                "signer",
                "list",
                "--signer",
                signer,
                "--pkcs11-module",
                "/x.so",
            ],
            &[],
        );
        assert!(
            first.contains(&format!("invalid value '{signer}' for '--signer")),
            "{first}"
        );
    }
}

/// Each command's `--format json` help names every key of the JSON it prints.
#[test]
fn format_help_describes_each_commands_json() {
    let help = |args: &[&str]| stdout(&run_ok(keybound().args(args).arg("--help")));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let created = run_ok(
        keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(["--format", "json", "--static-key-path"])
            .arg(&key),
    );
    let shown = run_ok(
        keybound()
            .args(["keypair", "show", "--format", "json", "--static-key-path"])
            .arg(&key),
    );
    for (command, output) in [
        (&["keypair", "create"][..], created),
        (&["keypair", "show"], shown),
    ] {
        let text = help(command);
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        for field in document.as_object().unwrap().keys() {
            assert!(
                text.contains(field.as_str()),
                "{command:?} --help lacks {field}: {text}"
            );
        }
    }
    // keypair show's help promises no private key; signer list's an array of tokens.
    assert!(!help(&["keypair", "show"]).contains("private_key"));
    let list = help(&["signer", "list"]);
    for field in [
        "token",
        "description",
        "login_required",
        "error",
        "keys",
        "uri",
        "kind",
        "public_key",
    ] {
        assert!(
            list.contains(field),
            "signer list --help lacks {field}: {list}"
        );
    }
}
