//! `keybound start --oneshot` as a user runs it, against a dev cluster: outputs checked with
//! openssl, ssh-keygen and Python's cryptography, exit codes, and atomicity.

use std::path::Path;
use std::process::Command;

use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{ca_file, cluster_for, key_file};
use crate::support::{keybound, run_ok, stdout, tool};

fn config(
    dir: &Path,
    proxy: &str,
    ca: &Path,
    key: Option<&Path>,
    out: &Path,
) -> std::path::PathBuf {
    let key_line = key
        .map(|k| {
            format!(
                "  bound_keypair:\n    static_private_key_path: {}\n",
                k.display()
            )
        })
        .unwrap_or_default();
    let yaml = format!(
        "version: v2\nproxy_server: {proxy}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n{key_line}storage:\n  type: directory\n  path: {}\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
        ca.display(),
        dir.join("storage").display(),
        out.display()
    );
    let path = dir.join("tbot.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A static key in a file, a dev cluster, its CA bundle, and a tbot.yaml joining it.
struct Setup {
    dir: tempfile::TempDir,
    signer: SoftSigner,
    cluster: keybound_devcluster::DevCluster,
    ca: std::path::PathBuf,
    out: std::path::PathBuf,
    cfg: std::path::PathBuf,
}

/// `bound_to_other_key` makes the cluster's token name another key than the one in the file.
async fn setup(algorithm: Algorithm, bound_to_other_key: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(algorithm).unwrap();
    let key = key_file(dir.path(), &signer);
    let other = SoftSigner::generate(algorithm).unwrap();
    let bound = if bound_to_other_key { &other } else { &signer };
    let cluster = cluster_for(bound.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let out = dir.path().join("out");
    let cfg = config(dir.path(), &cluster.proxy_addr(), &ca, Some(&key), &out);
    Setup {
        dir,
        signer,
        cluster,
        ca,
        out,
        cfg,
    }
}

/// Runs a blocking command off the runtime that serves the dev cluster.
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_writes_tbots_files_that_other_tools_accept() {
    let Setup {
        dir,
        signer,
        cluster: _cluster,
        out,
        cfg,
        ..
    } = setup(Algorithm::Ed25519, false).await;

    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&cfg);
    let output = run(cmd).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout(&output);
    assert!(
        summary.contains("Joined cluster dev.keybound.test as bot \"robot\""),
        "{summary}"
    );
    assert!(
        summary.contains(&signer.public_key().fingerprint()),
        "{summary}"
    );
    assert!(summary.contains("bot instance:  "), "{summary}");
    assert!(summary.contains("signer file"), "{summary}");

    // tbot's files, 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for name in [
        "key",
        "key.pub",
        "key-cert.pub",
        "tlscert",
        "teleport-host-ca.crt",
        "teleport-user-ca.crt",
        "teleport-database-ca.crt",
        "known_hosts",
        "identity",
        "ssh_config",
    ] {
        let meta = std::fs::metadata(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    for name in [
        "key",
        "key.pub",
        "key-cert.pub",
        "tlscert",
        "tlscacerts",
        "sshcacerts",
        "tokenhash",
    ] {
        assert!(
            dir.path().join("storage").join(name).is_file(),
            "storage/{name}"
        );
    }

    // openssl verifies the client certificate against the user CA, not the host CA.
    let verify = |ca: &str| {
        Command::new(tool("openssl"))
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(out.join(ca))
            .arg(out.join("tlscert"))
            .output()
            .unwrap()
    };
    assert!(verify("teleport-user-ca.crt").status.success());
    assert!(!verify("teleport-host-ca.crt").status.success());
    // The key file and the certificate hold the same key.
    let cert_key = run_ok(
        Command::new(tool("openssl"))
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(out.join("tlscert")),
    );
    let file_key = run_ok(
        Command::new(tool("openssl"))
            .args(["pkey", "-pubout", "-in"])
            .arg(out.join("key")),
    );
    assert_eq!(cert_key.stdout, file_key.stdout);

    // ssh-keygen reads the SSH certificate (and checks its CA signature while loading it).
    let listing = stdout(&run_ok(
        Command::new(tool("ssh-keygen"))
            .arg("-L")
            .arg("-f")
            .arg(out.join("key-cert.pub")),
    ));
    assert!(listing.contains("user certificate"), "{listing}");
    assert!(listing.contains("Key ID: \"bot-robot\""), "{listing}");
    assert!(listing.contains("-teleport-internal-join"), "{listing}");
    assert!(
        listing.contains("bot-instance-id@goteleport.com"),
        "{listing}"
    );
    // known_hosts names the host CA for the proxy and the cluster.
    let known = std::fs::read_to_string(out.join("known_hosts")).unwrap();
    assert!(
        known.starts_with(
            "@cert-authority localhost,dev.keybound.test,*.dev.keybound.test ssh-ed25519 "
        ),
        "{known}"
    );
    assert!(known.trim_end().ends_with(" type=host"));

    // The identity file, read by a parser we did not write (Python's cryptography).
    let check = run_ok(
        Command::new(tool("python3"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tools/identity_file.py"
            ))
            .arg(out.join("identity")),
    );
    let report = stdout(&check);
    assert!(
        report.contains("private key matches the TLS certificate"),
        "{report}"
    );
    assert!(report.contains("subject CN=bot-robot"), "{report}");
    assert!(report.contains("1 @cert-authority line"), "{report}");
    assert!(report.contains("1 CA certificate"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_config_rejection_and_unreachable_apart() {
    let Setup {
        dir,
        cluster: _cluster,
        out,
        cfg,
        ..
    } = setup(Algorithm::Ed25519, true).await;

    let code = |args: Vec<String>| async move {
        let mut cmd = keybound();
        cmd.args(&args);
        let output = run(cmd).await;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("")
            .to_owned();
        // The cause is said once: in the error line, not again in a log line before it.
        let cause = error.trim_start_matches("error: ");
        assert_eq!(stderr.matches(cause).count(), 1, "said twice: {stderr}");
        (output.status.code(), error)
    };
    let start = |extra: &[&str]| {
        let mut args = vec![
            "start".to_owned(),
            "--oneshot".to_owned(),
            "-c".to_owned(),
            cfg.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    // The token is bound to another key: keybound refuses to sign (EX_NOPERM, 77).
    let (status, error) = code(start(&[])).await;
    assert_eq!(status, Some(77), "{error}");
    assert!(error.contains("does not match"), "{error}");
    // An unknown token: rejected by the cluster (77).
    let (status, error) = code(start(&["--token", "missing"])).await;
    assert_eq!(status, Some(77), "{error}");
    assert!(error.contains("token expired or not found"), "{error}");
    // Nobody listening: EX_UNAVAILABLE (69).
    let port = crate::support::free_port();
    let (status, error) = code(start(&["--proxy-server", &format!("127.0.0.1:{port}")])).await;
    assert_eq!(status, Some(69), "{error}");
    assert!(error.contains("cannot reach proxy"), "{error}");
    // Configuration errors: EX_CONFIG (78).
    let (status, error) = code(vec![
        "start".into(),
        "-c".into(),
        cfg.display().to_string(),
        "--diag-addr".into(),
        "not-an-address".into(),
    ])
    .await;
    assert_eq!(status, Some(78), "{error}");
    assert!(
        error.contains("diag_addr \"not-an-address\" is not HOST:PORT"),
        "{error}"
    );
    let (status, error) = code(start(&["--static-key-path", "/no/such/key"])).await;
    assert_eq!(status, Some(78), "{error}");
    assert!(error.contains("/no/such/key"), "{error}");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "version: v2\nonboarding:\n  tokn: x\n",
    )
    .unwrap();
    let (status, error) = code(vec![
        "start".into(),
        "--oneshot".into(),
        "-c".into(),
        dir.path().join("bad.yaml").display().to_string(),
    ])
    .await;
    assert_eq!(status, Some(78), "{error}");
    assert!(error.contains("unknown field `tokn`"), "{error}");
    assert!(!out.exists(), "no output is written when the join fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_leaves_the_previous_identity_intact() {
    let Setup {
        dir: _dir,
        signer,
        cluster: _good,
        ca,
        out,
        cfg,
    } = setup(Algorithm::EcdsaP256Sha256, false).await;
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&cfg);
    assert!(run(cmd).await.status.success());
    let snapshot = |dir: &Path| {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&out);

    // A cluster that drops the stream mid-join, with the same CA trust file rewritten for it.
    // (A new cluster, so the stored identity means nothing to it: memory storage, a fresh join.)
    let flaky = cluster_for(signer.public_key(), |c| {
        c.misbehave = Some(keybound_devcluster::Misbehaviour::DropMidJoin)
    })
    .await;
    std::fs::write(&ca, flaky.ca_pem()).unwrap();
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&cfg).args([
        "--proxy-server",
        &flaky.proxy_addr(),
        "--storage",
        "memory://",
    ]);
    let output = run(cmd).await;
    assert_eq!(
        output.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        snapshot(&out),
        before,
        "the previous identity is untouched, with no stray files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_alone_with_an_env_key_and_memory_storage() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let cluster = cluster_for(signer.public_key(), |c| c.legacy_only = true).await;
    let ca = ca_file(&cluster, dir.path());
    let out = dir.path().join("dest");
    let mut cmd = keybound();
    cmd.args([
        "start",
        "--oneshot",
        "--join-method",
        "bound_keypair",
        "--token",
        "t",
        "--storage",
        "memory://",
    ])
    .args(["--proxy-server", &cluster.proxy_addr()])
    .arg("--ca-path")
    .arg(&ca)
    .arg("--destination-dir")
    .arg(&out)
    .env(
        "TBOT_BOUND_KEYPAIR_STATIC_KEY",
        signer.to_env_value().as_str(),
    );
    let output = run(cmd).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout(&output);
    assert!(summary.contains("(legacy)"), "{summary}");
    assert!(
        summary.contains("signer env $TBOT_BOUND_KEYPAIR_STATIC_KEY"),
        "{summary}"
    );
    assert!(out.join("identity").is_file());
}

/// The token given as an absolute path to a file holding it, as docs/config.md says, from each
/// of the three places tbot takes it: `--token`, `$TELEPORT_BOT_TOKEN` and `onboarding.token`.
/// Each joins with the name in the file; a refused one names the file, never its contents; an
/// unreadable one names where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_works_from_the_flag_the_variable_and_the_config_key() {
    let Setup {
        dir,
        cfg,
        cluster: _cluster,
        ..
    } = setup(Algorithm::Ed25519, false).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t\n").unwrap();
    let token_path = token_file.display().to_string();
    let start = |extra: &[&str], env: Option<&str>| {
        let mut cmd = keybound();
        cmd.args(["start", "--oneshot", "--storage", "memory://", "-c"])
            .arg(&cfg)
            .args(extra)
            .env_remove("TELEPORT_BOT_TOKEN");
        if let Some(value) = env {
            cmd.env("TELEPORT_BOT_TOKEN", value);
        }
        run(cmd)
    };
    let joined = |output: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stdout(output).starts_with("Joined cluster"), "{stderr}");
    };
    joined(&start(&["--token", &token_path], None).await);
    joined(&start(&[], Some(&token_path)).await);
    let in_config = dir.path().join("file-token.yaml");
    std::fs::write(
        &in_config,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("token: t\n", &format!("token: {token_path}\n")),
    )
    .unwrap();
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "--storage", "memory://", "-c"])
        .arg(&in_config)
        .env_remove("TELEPORT_BOT_TOKEN");
    joined(&run(cmd).await);

    // A file holding a name the cluster does not know: refused (77), naming the file only.
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "secret-name-4242\n").unwrap();
    let wrong_path = wrong.display().to_string();
    for output in [
        start(&["--token", &wrong_path], None).await,
        start(&[], Some(&wrong_path)).await,
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(77), "{stderr}");
        assert!(
            stderr.contains(&format!("joining with the token in {wrong_path}: ")),
            "{stderr}"
        );
        assert!(stderr.contains("token expired or not found"), "{stderr}");
        assert!(!stderr.contains("secret-name-4242"), "{stderr}");
    }

    // A file that cannot be read: a configuration error naming where it came from.
    for (output, from) in [
        (start(&["--token", "/no/such/token"], None).await, "--token"),
        (
            start(&[], Some("/no/such/token")).await,
            "$TELEPORT_BOT_TOKEN",
        ),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{from}: cannot read the token file /no/such/token: "
            )),
            "{stderr}"
        );
    }
}
