//! `type: ssh_host` end to end: `keybound start --oneshot` writes a host key, its certificate
//! and the user CA keys; OpenSSH's own sshd serves with them and its own ssh logs in with an
//! identity output's files, checking the host certificate against that output's known_hosts.
//! The role's `host_cert` rule decides which principals a host certificate may hold.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keybound_devcluster::rules::Rule;
use keybound_teleport::suite::Suite;

use crate::oneshot::{Env, env, failed, ok, oneshot};
use crate::support::{free_port, stdout, tool};

/// The login `ssh` uses: the user running the tests, which sshd (not root-only) can switch to.
fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A dev cluster whose role `access` grants the current user's login and host certificates for
/// principals under the cluster's name.
async fn cluster(suite: Suite) -> (Env, String) {
    let login = current_user();
    let env = env(move |c| {
        c.suite = suite;
        let cluster = c.cluster_name.clone();
        let access = &mut c.roles[0];
        access.logins.push(login);
        access.rules.push(
            Rule::new(
                &["host_cert"],
                &["create"],
                &format!("all_end_with(host_cert.principals, \".{cluster}\")"),
            )
            .unwrap(),
        );
    })
    .await;
    let cluster = env.cluster.cluster.ca().cluster_name().to_owned();
    (env, cluster)
}

/// A tbot.yaml with an identity output `out` and one `ssh_host` output per (directory,
/// principals), all with role `access`.
fn config(env: &Env, hosts: &[(&str, &[&str])]) -> PathBuf {
    let cfg = env.proxy_config(&[("out", &["access"])]);
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    for (dir, principals) in hosts {
        yaml.push_str(&format!(
            "  - type: ssh_host\n    destination:\n      type: directory\n      path: {}\n    principals: [{}]\n    roles: [access]\n",
            env.path(dir).display(),
            principals.join(", ")
        ));
    }
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_serves_with_an_ssh_host_output_and_ssh_logs_in_with_an_identity_output() {
    for suite in [Suite::BalancedV1, Suite::FipsV1, Suite::Legacy] {
        let (env, cluster) = cluster(suite).await;
        let node = format!("node1.{cluster}");
        let other = format!("node2.{cluster}");
        let cfg = config(&env, &[("host", &[&node]), ("other", &[&other])]);
        ok(&oneshot(&cfg, &[]).await);
        let host = env.path("host");

        // The files, as tbot writes them.
        let key = std::fs::read_to_string(host.join("ssh_host")).unwrap();
        let first_line = key.lines().next().unwrap();
        match suite {
            Suite::Legacy => assert_eq!(first_line, "-----BEGIN RSA PRIVATE KEY-----"),
            _ => assert_eq!(first_line, "-----BEGIN OPENSSH PRIVATE KEY-----"),
        }
        let listing = run(Command::new(tool("ssh-keygen"))
            .arg("-L")
            .arg("-f")
            .arg(host.join("ssh_host-cert.pub")));
        assert!(listing.contains("host certificate"), "{listing}");
        assert!(listing.contains(&node), "{listing}");
        // Extensions ssh-keygen does not know are shown as their value's wire string in hex:
        // "Node" and the cluster's name.
        let hex = |s: &str| -> String {
            let mut wire = (s.len() as u32).to_be_bytes().to_vec();
            wire.extend(s.as_bytes());
            wire.iter().map(|b| format!("{b:02x}")).collect()
        };
        assert!(
            listing.contains(&format!("x-teleport-role UNKNOWN OPTION: {}", hex("Node"))),
            "{listing}"
        );
        assert!(
            listing.contains(&format!(
                "x-teleport-authority UNKNOWN OPTION: {}",
                hex(&cluster)
            )),
            "{listing}"
        );
        let want_type = match suite {
            Suite::Legacy => "ssh-rsa-cert-v01@openssh.com",
            Suite::FipsV1 => "ecdsa-sha2-nistp256-cert-v01@openssh.com",
            _ => "ssh-ed25519-cert-v01@openssh.com",
        };
        assert!(listing.contains(want_type), "{suite}: {listing}");
        let user_ca = std::fs::read_to_string(host.join("ssh_host-user-ca.pub")).unwrap();
        let (user_keys, _) = env.cluster.cluster.ca().authority_public("user").unwrap();
        assert_eq!(
            user_ca,
            format!("{} clustername={cluster}&type=user\n", user_keys[0])
        );

        let sshd = Sshd::start(&host, "ssh_host");
        let login = current_user();
        let output = ssh(&env, sshd.port, &login, &node);
        assert!(
            output.status.success(),
            "{suite}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            sshd.log()
        );
        assert_eq!(stdout(&output).trim(), "logged-in-with-keybound");

        // A login the role does not grant: the certificate does not hold it, sshd refuses.
        let output = ssh(&env, sshd.port, "keybound-no-such-login", &node);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("Permission denied"), "{stderr}");

        // A host whose certificate names another host: the client refuses it.
        let sshd = Sshd::start(&env.path("other"), "ssh_host");
        let output = ssh(&env, sshd.port, &login, &node);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("Host key verification failed"),
            "{suite}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_the_role_does_not_allow_is_refused_and_the_files_stay() {
    let (env, cluster) = cluster(Suite::BalancedV1).await;
    let node = format!("node1.{cluster}");
    ok(&oneshot(&config(&env, &[("host", &[&node])]), &[]).await);
    let before = std::fs::read(env.path("host/ssh_host-cert.pub")).unwrap();

    let cfg = config(&env, &[("host", &[&node, "evil.example.com"])]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains(r#"access denied to perform action "create" on "host_cert""#),
        "{stderr}"
    );
    assert!(stderr.contains("resources [host_cert]"), "{stderr}");
    assert_eq!(
        std::fs::read(env.path("host/ssh_host-cert.pub")).unwrap(),
        before
    );
    // The identity output beside it was still written.
    assert!(env.path("out/key-cert.pub").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_a_host_cert_rule_gets_no_host_certificate() {
    let env = env(|_| {}).await;
    let cfg = config(&env, &[("host", &["node1.example.com"])]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains(r#"access denied to perform action "create" on "host_cert""#),
        "{stderr}"
    );
    assert!(!env.path("host/ssh_host").exists());
}

fn run(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

/// `ssh login@<alias>` to sshd on `port`, with nothing but the identity output's files: its key
/// and certificate, and its known_hosts, strictly. `alias` is the name the host certificate
/// must hold.
fn ssh(env: &Env, port: u16, login: &str, alias: &str) -> Output {
    let out = env.path("out");
    Command::new(tool("ssh"))
        .args(["-F", "/dev/null", "-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
        .arg("-o")
        .arg(format!("HostKeyAlias={alias}"))
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
        .arg(format!("{login}@127.0.0.1"))
        .args(["echo", "logged-in-with-keybound"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// OpenSSH's sshd on a free loopback port with the `ssh_host` output in `dir` (`prefix` is
/// its file prefix): `HostKey`, `HostCertificate` and `TrustedUserCAKeys` from it.
struct Sshd {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, prefix: &str) -> Self {
        let port = free_port();
        let scratch = dir.parent().unwrap().join(format!("sshd-{port}"));
        std::fs::create_dir(&scratch).unwrap();
        let log = scratch.join("sshd.log");
        let config = scratch.join("sshd_config");
        let file = |suffix: &str| dir.join(format!("{prefix}{suffix}")).display().to_string();
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {key}\nHostCertificate {cert}\n\
                 TrustedUserCAKeys {ca}\nAuthorizedKeysFile none\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPermitRootLogin yes\nPidFile {pid}\nLogLevel VERBOSE\n",
                key = file(""),
                cert = file("-cert.pub"),
                ca = file("-user-ca.pub"),
                pid = scratch.join("sshd.pid").display(),
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
