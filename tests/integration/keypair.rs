//! `keybound keypair create` and `keypair show`, run as a user runs them.

use std::os::unix::fs::PermissionsExt as _;

use keybound_signer::{PublicKey, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::support::{FindServer, free_port, keybound, python_public_key, run_err, run_ok, stdout};

/// The token YAML tbot prints: the tab-indented block after "Refer to this token example".
fn token_example(text: &str) -> serde_yaml::Value {
    let block: String = text
        .split("Refer to this token example as a reference:\n\n")
        .nth(1)
        .expect("token example")
        .lines()
        .take_while(|l| l.starts_with('\t'))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    serde_yaml::from_str(&block).expect("token example is YAML")
}

#[test]
fn file_key_is_private_and_its_instructions_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bound.pem");
    let output = run_ok(
        keybound()
            .args([
                "keypair",
                "create",
                "--static",
                "--algorithm",
                "ed25519",
                "--static-key-path",
            ])
            .arg(&path),
    );
    let text = stdout(&output);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = python_public_key(&path);
    assert!(public.starts_with("ssh-ed25519 "));
    assert!(text.contains(&format!("\n\t{public}\n")), "{text}");
    assert!(text.contains(&format!("--initial-public-key='{public}'")));
    assert!(text.contains("--recovery-mode=insecure"));
    assert!(text.contains(&format!(
        "The static key has been written to: {}",
        path.display()
    )));
    assert!(text.contains(&format!(
        "\t    static_private_key_path: {}\n",
        path.display()
    )));
    assert!(text.contains("do not support keypair rotation"));
    let token = token_example(&text);
    assert_eq!(
        token["spec"]["bound_keypair"]["onboarding"]["initial_public_key"],
        public.as_str()
    );
    assert_eq!(
        token["spec"]["bound_keypair"]["recovery"]["mode"],
        "insecure"
    );
    assert_eq!(token["spec"]["join_method"], "bound_keypair");
    // The private key stays in the file.
    assert!(!text.contains("PRIVATE KEY"));
    assert!(!text.contains("TBOT_BOUND_KEYPAIR_STATIC_KEY"));

    // keypair show reads it back.
    let shown = run_ok(
        keybound()
            .args(["keypair", "show", "--format", "json", "--static-key-path"])
            .arg(&path),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["public_key"], public.as_str());
    assert_eq!(shown["signer"], "file");
    assert_eq!(shown["algorithm"], "ed25519");
}

/// The text `keypair create --static --static-key-path` prints is tbot's, line for line:
/// `keypairMessageTemplate` and `generateExampleToken` in `tool/tbot/keypair.go` (the token
/// through Go's YAML writer, keys sorted, `recovery.limit: 1`; the `tbot.yaml` lines with no
/// `token:`, which tbot does not print either). tbot's template ends with `{{- end }}`, which
/// drops the last newline; keybound ends its last line.
#[test]
fn file_key_text_is_tbots_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bound.pem");
    let text = stdout(&run_ok(
        keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .arg("--static-key-path")
            .arg(&path),
    ));
    let key = python_public_key(&path);
    let path = path.display();
    let tbot = format!(
        "
To register the keypair with Teleport, include this public key in the token's
'spec.bound_keypair.onboarding.initial_public_key' field:

\t{key}

You can use 'tctl' to create a bot and token automatically:

\t$ tctl bots add bot-name \\
\t  --roles=some-role,some-other-role \\
\t  --initial-public-key='{key}' \\
\t  --recovery-mode=insecure

Refer to this token example as a reference:

\tkind: token
\tmetadata:
\t  name: example-token
\tspec:
\t  bot_name: example-bot
\t  bound_keypair:
\t    onboarding:
\t      initial_public_key: {key}
\t    recovery:
\t      limit: 1
\t      mode: insecure
\t  join_method: bound_keypair
\t  roles:
\t  - Bot
\tversion: v2

Note that you must also set 'spec.bound_keypair.recovery.mode' to 'insecure'
to use static keys.

The static key has been written to: {path}

Configure your bot to use this static key by setting the following 'tbot.yaml'
field:

\tonboarding:
\t  join_method: bound_keypair
\t  bound_keypair:
\t    static_private_key_path: {path}

Note that bots joined with static tokens do not support keypair rotation and
will be unable to join if a rotation is requested server-side via the token's
'rotate_after' field. Additionally, 'insecure' recovery mode must be used, as
shown above. Read more at:

\thttps://goteleport.com/docs/reference/machine-workload-identity/machine-id/bound-keypair/concepts/#recovery"
    );
    assert_eq!(text, format!("{tbot}\n"));
}

#[test]
fn env_key_json_holds_the_base64_pem_that_loads_as_the_public_key() {
    let output = run_ok(keybound().args([
        "keypair",
        "create",
        "--static",
        "--algorithm",
        "ecdsa-p256",
        "--format",
        "json",
    ]));
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let public = doc["public_key"].as_str().unwrap();
    assert!(public.starts_with("ecdsa-sha2-nistp256 "));
    let private = doc["private_key"].as_str().unwrap();
    let signer = SoftSigner::from_env_value("TBOT_BOUND_KEYPAIR_STATIC_KEY", private).unwrap();
    assert_eq!(
        signer.public_key(),
        &PublicKey::from_openssh(public).unwrap()
    );

    // The same value through the environment, as the agent will read it.
    let shown = run_ok(
        keybound()
            .args(["keypair", "show", "--format", "json"])
            .env("TBOT_BOUND_KEYPAIR_STATIC_KEY", private),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["public_key"], public);
    assert_eq!(shown["signer"], "env");

    // A file key's JSON has no private_key.
    let dir = tempfile::tempdir().unwrap();
    let output = run_ok(
        keybound()
            .args([
                "keypair",
                "create",
                "--static",
                "--algorithm",
                "ed25519",
                "--format",
                "json",
            ])
            .arg("--static-key-path")
            .arg(dir.path().join("k")),
    );
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(doc.get("private_key").is_none(), "{doc}");
}

#[test]
fn env_key_text_says_what_to_export() {
    let output =
        run_ok(keybound().args(["keypair", "create", "--static", "--algorithm", "ed25519"]));
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|l| l.starts_with("\texport TBOT_BOUND_KEYPAIR_STATIC_KEY="))
        .expect("export line");
    let value = line.split_once('=').unwrap().1;
    let signer = SoftSigner::from_env_value("V", value).unwrap();
    assert!(text.contains(&format!("\n\t{}\n", signer.public_key().to_openssh())));
}

#[test]
fn an_existing_key_is_never_replaced_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    let create = |extra: &[&str]| {
        let mut cmd = keybound();
        cmd.args([
            "keypair",
            "create",
            "--static",
            "--algorithm",
            "ed25519",
            "--static-key-path",
        ])
        .arg(&path)
        .args(extra);
        cmd
    };
    run_ok(&mut create(&[]));
    let before = std::fs::read(&path).unwrap();
    let error = run_err(&mut create(&[]));
    assert!(
        error.contains("already exists; keybound never replaces a key without --overwrite"),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    run_ok(&mut create(&["--overwrite"]));
    assert_ne!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary files left"
    );
}

#[test]
fn the_proxy_suite_picks_the_key_type() {
    let find = |suite: &str| {
        format!(
            r#"{{"auth":{{"type":"local","signature_algorithm_suite":{suite}}},"proxy":{{"tls_routing_enabled":true}},"server_version":"18.2.10"}}"#
        )
    };
    for (find_json, prefix) in [
        (find(r#""fips-v1""#), "ecdsa-sha2-nistp256 "),
        (find(r#""balanced-v1""#), "ssh-ed25519 "),
        (
            find(r#""SIGNATURE_ALGORITHM_SUITE_HSM_V1""#),
            "ssh-ed25519 ",
        ),
        (find("3"), "ecdsa-sha2-nistp256 "),
        // An unspecified suite is omitted (`omitempty`) and means legacy: Ed25519.
        (
            r#"{"auth":{"type":"local"},"proxy":{}}"#.to_owned(),
            "ssh-ed25519 ",
        ),
    ] {
        let server = FindServer::start(&find_json);
        let output = run_ok(
            keybound()
                .args(["keypair", "create", "--static", "--format", "json"])
                .arg("--proxy-server")
                .arg(server.addr())
                .arg("--ca-path")
                .arg(&server.ca),
        );
        let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let public = doc["public_key"].as_str().unwrap();
        assert!(public.starts_with(prefix), "{find_json}: {doc}");
    }
}

#[test]
fn an_untrusted_proxy_is_refused_unless_insecure() {
    let server = FindServer::start(r#"{"auth":{"signature_algorithm_suite":"fips-v1"}}"#);
    let error = run_err(
        keybound()
            .args(["keypair", "create", "--static", "--proxy-server"])
            .arg(server.addr()),
    );
    assert!(error.contains("TLS handshake with proxy"), "{error}");
    assert!(error.contains("--ca-path"), "{error}");

    let output = run_ok(
        keybound()
            .args([
                "keypair",
                "create",
                "--static",
                "--format",
                "json",
                "--insecure",
                "--proxy-server",
            ])
            .arg(server.addr()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("NOT verifying the proxy's TLS certificate"),
        "{stderr}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        doc["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ecdsa-sha2-nistp256 ")
    );
}

#[test]
fn usage_errors_are_one_line_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--algorithm".into(), "ed25519".into()],
            "a storage path must be provided with --storage",
        ),
        (vec!["--static".into()], "pass --proxy-server HOST:PORT"),
        (
            vec![
                "--static".into(),
                "--signer".into(),
                "file".into(),
                "--algorithm".into(),
                "ed25519".into(),
            ],
            "the file signer needs --static-key-path",
        ),
        (
            vec![
                "--static".into(),
                "--storage".into(),
                "file:///tmp/x".into(),
            ],
            "drop --storage, or drop --static",
        ),
        (
            vec![
                "--static".into(),
                "--proxy-server".into(),
                format!("127.0.0.1:{}", free_port()),
            ],
            "cannot connect to proxy",
        ),
        (
            vec![
                "--static".into(),
                "--proxy-server".into(),
                "https://example.com".into(),
            ],
            "--proxy-server: \"https://example.com\" is not a host:port address",
        ),
        (
            vec![
                "--static".into(),
                "--algorithm".into(),
                "ed25519".into(),
                "--static-key-path".into(),
                dir.path().join("no/such/dir/k").display().to_string(),
            ],
            "does not exist; create it first",
        ),
    ];
    for (args, expected) in cases {
        let error = run_err(keybound().args(["keypair", "create"]).args(&args));
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}

#[test]
fn keypair_show_reports_bad_keys_and_configs_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8], mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let good = SoftSigner::generate(keybound_signer::Algorithm::Ed25519).unwrap();
    let pem = good.to_pkcs8_pem();
    let cases = [
        (
            write("truncated", &pem.as_bytes()[..40], 0o600),
            "truncated",
        ),
        (write("empty", b"", 0o600), "is empty"),
        (write("loose", pem.as_bytes(), 0o640), "chmod 600"),
        (
            write(
                "p384",
                include_bytes!("../../backends/soft/tests/data/p384-pkcs8.pem"),
                0o600,
            ),
            "unsupported key type ECDSA P-384",
        ),
        (
            write(
                "rsa",
                include_bytes!("../../backends/soft/tests/data/rsa-pkcs8.pem"),
                0o600,
            ),
            "unsupported key type RSA",
        ),
        (dir.path().join("missing"), "cannot open"),
    ];
    for (path, expected) in cases {
        let error = run_err(
            keybound()
                .args(["keypair", "show", "--static-key-path"])
                .arg(&path),
        );
        assert!(error.contains(expected), "{}: {error}", path.display());
        assert!(
            error.contains(&path.display().to_string()),
            "names the file: {error}"
        );
    }
    // The public half ssh-keygen writes beside the key (mode 0644), given instead of the key:
    // named as a public key, whatever its mode, never "chmod 600" it.
    let ssh_key = dir.path().join("id_ed25519");
    run_ok(
        std::process::Command::new(crate::support::tool("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&ssh_key),
    );
    let public = dir.path().join("id_ed25519.pub");
    for mode in [0o644, 0o600] {
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(mode)).unwrap();
        let error = run_err(
            keybound()
                .args(["keypair", "show", "--static-key-path"])
                .arg(&public),
        );
        assert!(
            error.contains("holds a public key; give keybound the private key"),
            "{mode:o}: {error}"
        );
        assert!(!error.contains("chmod"), "{error}");
    }
    // The same line through the environment.
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&public).unwrap());
    let error = run_err(
        keybound()
            .args(["keypair", "show"])
            .env("TBOT_BOUND_KEYPAIR_STATIC_KEY", value),
    );
    assert!(error.contains("holds a public key"), "{error}");
    // And the private key ssh-keygen wrote works.
    run_ok(
        keybound()
            .args(["keypair", "show", "--static-key-path"])
            .arg(&ssh_key),
    );
    let error = run_err(
        keybound()
            .args(["keypair", "show"])
            .env("TBOT_BOUND_KEYPAIR_STATIC_KEY", "%%%"),
    );
    assert!(
        error.contains("$TBOT_BOUND_KEYPAIR_STATIC_KEY is not valid base64"),
        "{error}"
    );

    let config = write(
        "tbot.yaml",
        b"version: v2\nonboarding:\n  join_method: bound_keypair\n  tokne: t\n",
        0o644,
    );
    let error = run_err(keybound().args(["keypair", "show", "-c"]).arg(&config));
    assert!(
        error.contains(&format!(
            "config {}:4:3: onboarding: unknown field `tokne`",
            config.display()
        )),
        "{error}"
    );

    // A config naming a key file: the path in the config is used.
    let key = write("bound.pem", pem.as_bytes(), 0o600);
    let config = write(
        "ok.yaml",
        format!("version: v2\nproxy_server: example.com:443\nonboarding:\n  join_method: bound_keypair\n  token: t\n  bound_keypair:\n    static_private_key_path: {}\n", key.display()).as_bytes(),
        0o644,
    );
    let output = run_ok(keybound().args(["keypair", "show", "-c"]).arg(&config));
    assert!(stdout(&output).contains(&good.public_key().to_openssh()));
    // ... and the config TBOT_CONFIG_PATH names, as for start and doctor.
    let output = run_ok(
        keybound()
            .args(["keypair", "show"])
            .env("TBOT_CONFIG_PATH", &config),
    );
    assert!(stdout(&output).contains(&good.public_key().to_openssh()));
}
