//! Identity outputs with role-impersonated certificates: `keybound start --oneshot` as a user
//! runs it, against a dev cluster, checked with openssl, ssh-keygen, and a real sshd and ssh; and
//! where outputs may be written: never into the storage or each other, links as `symlinks:`
//! says, one process at a time, the subject key only in zeroizing buffers. The renewals that
//! keep one bot instance are in `rejoin.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keybound_devcluster::roles::Role;
use keybound_signer_soft::SoftSigner;

use crate::oneshot::{env, failed, ok, oneshot, subject, values};
use crate::support::{free_port, keybound, stdout, tool};

fn run_tool(name: &str, args: &[&str]) -> String {
    let output = Command::new(tool(name)).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_hold_role_impersonated_certificates_that_openssl_and_ssh_keygen_read() {
    let env = env(|c| {
        c.roles.push(Role {
            name: "auditor".into(),
            logins: vec!["audit".into()],
            ..Role::default()
        });
        c.bots[0].roles = vec!["access".into(), "auditor".into()];
    })
    .await;
    // One output with every role the bot may impersonate (the default), one with one role.
    let cfg = env.proxy_config(&[("all", &[]), ("one", &["auditor"])]);
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(summary.contains("(identity: access, auditor)"), "{summary}");
    assert!(summary.contains("(identity: auditor)"), "{summary}");

    let all = env.path("all");
    // The X.509 certificate chains to the user CA the output holds.
    let verified = run_tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            all.join("teleport-user-ca.crt").to_str().unwrap(),
            all.join("tlscert").to_str().unwrap(),
        ],
    );
    assert!(verified.trim().ends_with(": OK"), "{verified}");
    // It carries the impersonated roles (O), the roles' logins (L), and who impersonated them.
    let attrs = subject(&all.join("tlscert"));
    assert_eq!(values(&attrs, "2.5.4.3"), ["bot-robot"]);
    let mut roles = values(&attrs, "2.5.4.10");
    roles.sort();
    assert_eq!(roles, ["access", "auditor"]);
    for login in ["root", "ci", "audit", "-teleport-internal-join"] {
        assert!(values(&attrs, "2.5.4.7").contains(&login), "{attrs:?}");
    }
    assert_eq!(
        values(&attrs, "1.3.9999.2.7"),
        ["bot-robot"],
        "impersonator"
    );
    assert_eq!(values(&attrs, "1.3.9999.2.9"), ["true"], "disallow reissue");
    // openssl agrees: both roles in one multi-valued RDN, as Go writes them.
    let text = run_tool(
        "openssl",
        &[
            "x509",
            "-in",
            all.join("tlscert").to_str().unwrap(),
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
    );
    assert!(
        text.contains("O=access+O=auditor") || text.contains("O=auditor+O=access"),
        "{text}"
    );

    // The SSH certificate: ssh-keygen reads the principals and the extensions.
    let listed = run_tool(
        "ssh-keygen",
        &["-L", "-f", all.join("key-cert.pub").to_str().unwrap()],
    );
    let principals: Vec<&str> = listed
        .split("Principals:")
        .nth(1)
        .unwrap()
        .split("Critical Options:")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        principals,
        ["root", "ci", "audit", "-teleport-internal-join"]
    );
    assert!(listed.contains("Key ID: \"bot-robot\""), "{listed}");
    assert!(listed.contains("impersonator"), "{listed}");
    assert!(listed.contains("disallow-reissue"), "{listed}");

    // The other output holds only what it asked for.
    let one = subject(&env.path("one").join("tlscert"));
    assert_eq!(values(&one, "2.5.4.10"), ["auditor"]);
    // Each output has its own fresh key, which is not the bot's.
    let bot_key = std::fs::read(env.path("storage/key")).unwrap();
    let key_all = std::fs::read(all.join("key")).unwrap();
    assert_ne!(key_all, bot_key);
    assert_ne!(key_all, std::fs::read(env.path("one/key")).unwrap());
    assert_eq!(env.cluster.cluster.user_certs_issued(), 2);

    // The CA files and known_hosts: the cluster's host CA for the proxy and the cluster.
    let host_ca = std::fs::read_to_string(all.join("teleport-host-ca.crt")).unwrap();
    assert_eq!(host_ca, env.cluster.ca_pem());
    let known = std::fs::read_to_string(all.join("known_hosts")).unwrap();
    let (host_ssh, _) = env.cluster.cluster.ca().authority_public("host").unwrap();
    assert_eq!(
        known,
        format!(
            "@cert-authority localhost,dev.keybound.test,*.dev.keybound.test {} type=host\n",
            host_ssh[0]
        )
    );
}

/// A real sshd whose host certificate comes from the cluster's host CA and which trusts the
/// user CA: `ssh` with nothing but an output's files logs in, and refuses a host whose
/// certificate another CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_logs_into_an_sshd_of_the_cluster_with_an_outputs_files() {
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let login = user.clone();
    let env = env(move |c| c.roles[0].logins.push(login)).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    ok(&oneshot(&cfg, &[]).await);
    let out = env.path("out");

    let sshd_dir = env.path("sshd");
    std::fs::create_dir(&sshd_dir).unwrap();
    let host_key = sshd_dir.join("host_key");
    run_tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            host_key.to_str().unwrap(),
        ],
    );
    let public = ssh_key::PublicKey::from_openssh(
        std::fs::read_to_string(sshd_dir.join("host_key.pub"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let ca = env.cluster.cluster.ca();
    std::fs::write(
        sshd_dir.join("host_key-cert.pub"),
        ca.issue_host_ssh(&public, &["localhost"]).unwrap(),
    )
    .unwrap();
    let (user_ca, _) = ca.authority_public("user").unwrap();
    std::fs::write(sshd_dir.join("user_ca.pub"), format!("{}\n", user_ca[0])).unwrap();

    let good = Sshd::start(&sshd_dir);
    let ssh = |port: u16| {
        let mut cmd = Command::new(tool("ssh"));
        cmd.args(["-F", "/dev/null", "-p", &port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                out.join("known_hosts").display()
            ))
            .arg("-i")
            .arg(out.join("key"))
            .arg("-o")
            .arg(format!(
                "CertificateFile={}",
                out.join("key-cert.pub").display()
            ))
            .arg(format!("{user}@localhost"))
            .args(["echo", "logged-in-with-keybound"]);
        cmd.stdin(Stdio::null());
        cmd.output().unwrap()
    };
    let output = ssh(good.port);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        good.log()
    );
    assert_eq!(stdout(&output).trim(), "logged-in-with-keybound");

    // The same sshd with a host certificate from another CA: known_hosts refuses it.
    let other = keybound_devcluster::ca::ClusterCa::generate("dev.keybound.test").unwrap();
    std::fs::write(
        sshd_dir.join("host_key-cert.pub"),
        other.issue_host_ssh(&public, &["localhost"]).unwrap(),
    )
    .unwrap();
    let bad = Sshd::start(&sshd_dir);
    let output = ssh(bad.port);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("Host key verification failed") || stderr.contains("not signed"),
        "{stderr}"
    );
}

/// OpenSSH's sshd on a free loopback port, as the current user, with its own configuration.
pub(crate) struct Sshd {
    pub(crate) child: std::process::Child,
    pub(crate) port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    /// sshd on `port`, with `host_key`, `host_key-cert.pub` and `user_ca.pub` from `dir`.
    pub(crate) fn start_on(dir: &Path, port: u16) -> Self {
        let log = dir.join(format!("sshd-{port}.log"));
        let config = dir.join(format!("sshd-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nHostCertificate {d}/host_key-cert.pub\nTrustedUserCAKeys {d}/user_ca.pub\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nPidFile {d}/sshd-{port}.pid\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n",
                d = dir.display()
            ),
        )
        .unwrap();
        // sshd drops privileges into this directory when started as root.
        std::fs::create_dir_all("/run/sshd").ok();
        let child = Command::new(tool("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_bot_may_not_impersonate_is_refused_and_other_outputs_still_update() {
    let env = env(|c| {
        c.roles.push(Role {
            name: "editor".into(),
            ..Role::default()
        })
    })
    .await;
    let cfg = env.proxy_config(&[("editor", &["editor"]), ("access", &["access"])]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains(r#"user "bot-robot" has requested role impersonation for ["editor"]"#),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not allow impersonating [editor]"),
        "{stderr}"
    );
    assert!(!env.path("editor/tlscert").exists());
    let access = subject(&env.path("access/tlscert"));
    assert_eq!(values(&access, "2.5.4.10"), ["access"]);
    // A role that does not exist is named too.
    let cfg = env.proxy_config(&[("ghost", &["ghost"])]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(stderr.contains("role ghost is not found"), "{stderr}");
    // Beside another output that fails here (its directory cannot be made: a file is in the
    // way), the refusal still decides the exit code (77, not 78), and each failure is said
    // once, in the error.
    std::fs::write(env.path("blocked"), b"a file, not a directory").unwrap();
    let cfg = env.proxy_config(&[("editor", &["editor"]), ("blocked/out", &["access"])]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        error.contains("does not allow impersonating [editor]")
            && error.contains(&format!("output {}", env.path("blocked/out").display())),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("does not allow impersonating").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_in_the_storage_directory_is_refused() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("storage", &[])]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 78);
    assert!(stderr.contains("is the storage directory"), "{stderr}");
    let cfg = env.proxy_config(&[("out", &[]), ("out", &["access"])]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 78);
    assert!(stderr.contains("two outputs write to"), "{stderr}");
    assert_eq!(env.cluster.cluster.solutions_received(), 0);
}

/// Destinations are compared where they lead, not as written: `x/../storage`, a symbolic link
/// to the storage directory, a directory inside it, and a link to another output's directory
/// are all refused before the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_that_lead_to_the_storage_or_to_each_other_are_refused() {
    let env = env(|_| {}).await;
    std::fs::create_dir_all(env.path("storage")).unwrap();
    std::fs::create_dir_all(env.path("out")).unwrap();
    std::os::unix::fs::symlink(env.path("storage"), env.path("alias")).unwrap();
    std::os::unix::fs::symlink(env.path("out"), env.path("out-link")).unwrap();
    let storage = env.path("storage").canonicalize().unwrap();
    type Outputs<'a> = &'a [(&'a str, &'a [&'a str])];
    let cases: [(Outputs<'_>, &str); 4] = [
        (
            &[("x/../storage", &[])],
            &format!(
                "x/../storage (it resolves to {}) is the storage directory",
                storage.display()
            ),
        ),
        (&[("alias", &[])], "is the storage directory"),
        (&[("storage/sub", &[])], "is inside the storage directory"),
        (
            &[("out", &[]), ("out-link", &["access"])],
            "two outputs write to",
        ),
    ];
    for (outputs, expected) in cases {
        let cfg = env.proxy_config(outputs);
        let stderr = failed(&oneshot(&cfg, &[]).await, 78);
        assert!(stderr.contains(expected), "{outputs:?}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1
        );
    }
    assert_eq!(env.cluster.cluster.solutions_received(), 0);
    assert_eq!(std::fs::read_dir(env.path("storage")).unwrap().count(), 0);
}

/// `symlinks:` as tbot has it (`lib/tbot/botfs/fs_linux.go`): `secure` and `try-secure` open
/// the destination with `openat2(RESOLVE_NO_SYMLINKS)`, refusing a link in any component of
/// the path, not only the last; `insecure` follows links. On a kernel without `openat2`
/// (simulated with a seccomp filter that makes it `ENOSYS`), `try-secure` falls back to a plain
/// open with a warning and `secure` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_in_a_destination_path_follows_the_symlinks_policy() {
    let env = env(|_| {}).await;
    std::fs::create_dir_all(env.path("real")).unwrap();
    std::os::unix::fs::symlink(env.path("real"), env.path("link")).unwrap();
    let with_policy = |policy: &str| {
        let cfg = env.proxy_config(&[("link/out", &[])]);
        let yaml = std::fs::read_to_string(&cfg).unwrap();
        let out_line = format!("      path: {}\n", env.path("link/out").display());
        assert!(yaml.contains(&out_line), "{yaml}");
        let yaml = yaml.replace(&out_line, &format!("{out_line}      symlinks: {policy}\n"));
        std::fs::write(&cfg, yaml).unwrap();
        cfg
    };
    let written = env.path("real/out/tlscert");
    for policy in ["secure", "try-secure"] {
        let stderr = failed(&oneshot(&with_policy(policy), &[]).await, 78);
        let expected = format!(
            "{} is a symbolic link, which the symlinks policy refuses",
            env.path("link").display()
        );
        assert!(stderr.contains(&expected), "{policy}: {stderr}");
        assert!(
            !env.path("real/out").exists(),
            "{policy}: written through the link"
        );
    }
    ok(&oneshot(&with_policy("insecure"), &[]).await);
    assert!(written.is_file());
    std::fs::remove_dir_all(env.path("real/out")).unwrap();

    let without_openat2 = |cfg: PathBuf| {
        let mut cmd = Command::new(tool("python3"));
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/without_openat2.py"
        ))
        .arg(env!("CARGO_BIN_EXE_keybound"))
        .args(["start", "--oneshot", "-c"])
        .arg(cfg)
        .env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY")
        .env_remove("RUST_LOG");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let output = without_openat2(with_policy("try-secure")).await.unwrap();
    ok(&output);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("this kernel has no openat2"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(written.is_file(), "try-secure fell back and wrote");
    std::fs::remove_dir_all(env.path("real/out")).unwrap();
    let output = without_openat2(with_policy("secure")).await.unwrap();
    let stderr = failed(&output, 78);
    assert!(
        stderr.contains("this kernel has no openat2 (Linux 5.6 or later)"),
        "{stderr}"
    );
    assert!(!env.path("real/out").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_write_that_fails_stops_before_the_outputs() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    // `key` cannot be replaced: something made it a directory.
    std::fs::create_dir_all(env.path("storage/key/x")).unwrap();
    let stderr = failed(&oneshot(&cfg, &[]).await, 78);
    assert!(
        stderr.contains("writing the new bot identity to storage"),
        "{stderr}"
    );
    assert!(!env.path("out/tlscert").exists());
    assert!(!env.path("storage/tlscert").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_cannot_renew_from_one_storage() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    let mut agent = keybound()
        .args(["start", "-c"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let storage = env.path("storage/tlscert");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !storage.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never joined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stderr = failed(&oneshot(&cfg, &[]).await, 78);
    assert!(
        stderr.contains("is in use by another keybound process"),
        "{stderr}"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    // Once it is gone, the storage is free again.
    let summary = ok(&oneshot(&cfg, &[]).await);
    assert!(summary.contains("authenticated rejoin"), "{summary}");
}

/// The subject private key stays in zeroizing buffers all the way into the files: every file's
/// contents are `Zeroizing` (a plain `String` copy fails to compile here), and the `identity`
/// file, which holds the key among other parts, is made in one allocation of its final size,
/// so no outgrown buffer is freed with a copy of the key in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_contents_holding_the_subject_key_are_zeroized() {
    use keybound::output::ClusterCas;
    use keybound::output::identity::{IDENTITY, OutputContext, identity_files};
    use keybound::storage::storage_files;
    use zeroize::Zeroizing;

    let env = env(|_| {}).await;
    let pem = std::fs::read(&env.key).unwrap();
    let signer = SoftSigner::from_pem(&pem, keybound_signer_soft::Source::File(env.key.clone()));
    let signer = std::sync::Arc::new(signer.unwrap());
    let joined = keybound::join::join(&crate::cluster::params(&env.cluster, &env.ca, "t", signer))
        .await
        .unwrap();
    let identity = &joined.identity;
    let cas = ClusterCas::default();
    let ctx = OutputContext {
        proxy: None,
        cas: &cas,
    };
    let zeroized = |_: &Zeroizing<String>| {};
    let output = identity_files(identity, &ctx, env.dir.path(), true).unwrap();
    let storage = storage_files(identity, "t");
    for (_, content) in output.iter().chain(&storage) {
        zeroized(content);
    }
    let (_, file) = output.iter().find(|(n, _)| *n == IDENTITY).unwrap();
    assert!(file.contains(identity.private_key_pem.as_str()));
    assert!(
        file.capacity() - file.len() <= 8,
        "grew to {} for {} bytes",
        file.capacity(),
        file.len()
    );
}
