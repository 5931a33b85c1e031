//! What keybound's log lines look like where they end up: plain text in a pipe, a file and a
//! socket (systemd's journal reads a service's stderr from a socket), colour only on a terminal,
//! and none there either with `NO_COLOR`.

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use crate::support::{keybound, tool};

/// Arguments that make keybound log a warning (insecure) and then fail at once (no key file),
/// without reaching anything.
const WARNS_THEN_FAILS: &[&str] = &[
    "start",
    "--oneshot",
    "--insecure",
    "--join-method",
    "bound_keypair",
    "--token",
    "t",
    "--storage",
    "memory://",
    "--proxy-server",
    "127.0.0.1:9",
    "--static-key-path",
    "/nonexistent/keybound-key.pem",
];

const ESC: u8 = 0x1b;

fn assert_plain(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(text.contains("WARN"), "{what}: no log line: {text}");
    assert!(!bytes.contains(&ESC), "{what}: ANSI escapes: {text:?}");
}

/// keybound with a terminal (a pty from util-linux's `script`) as stdin, stdout and stderr;
/// returns what the terminal showed.
fn on_a_terminal(no_color: Option<&str>) -> Vec<u8> {
    let mut line = format!("'{}'", env!("CARGO_BIN_EXE_keybound"));
    for arg in WARNS_THEN_FAILS {
        line.push_str(&format!(" '{arg}'"));
    }
    let mut cmd = Command::new(tool("script"));
    cmd.args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null());
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let output = cmd.output().unwrap();
    assert_eq!(output.status.code(), Some(78), "{output:?}");
    output.stdout
}

#[test]
fn logs_are_plain_in_a_pipe_a_file_and_a_socket() {
    // A pipe.
    let output = keybound()
        .args(WARNS_THEN_FAILS)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert_plain("pipe", &output.stderr);

    // A file.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("keybound.log");
    let status = keybound()
        .args(WARNS_THEN_FAILS)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(78));
    assert_plain("file", &std::fs::read(&log).unwrap());

    // A stream socket, as systemd connects a service's stderr to the journal.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let status = keybound()
        .args(WARNS_THEN_FAILS)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stderr(std::os::fd::OwnedFd::from(theirs))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(78));
    let mut received = Vec::new();
    std::io::Read::read_to_end(&mut &ours, &mut received).unwrap();
    assert_plain("socket", &received);
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    let shown = on_a_terminal(None);
    let text = String::from_utf8_lossy(&shown);
    assert!(text.contains("WARN"), "{text}");
    assert!(shown.contains(&ESC), "no colour on a terminal: {text:?}");

    for value in ["1", "true"] {
        let shown = on_a_terminal(Some(value));
        assert_plain(&format!("NO_COLOR={value}"), &shown);
    }
    // The standard says an empty NO_COLOR is as good as unset.
    assert!(on_a_terminal(Some("")).contains(&ESC));
}
