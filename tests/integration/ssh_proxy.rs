//! OpenSSH through the Proxy with nothing but keybound: an identity output's `ssh_config` runs
//! `keybound ssh-proxy-command` (its own absolute path), which carries the SSH bytes over the dev
//! cluster's `TransportService.ProxySSH` to a real sshd registered as a `kind: node`; the sshd
//! has a host certificate from the cluster's host CA and trusts its user CA, and ssh checks the
//! host against the output's `known_hosts` (`StrictHostKeyChecking yes`).

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keybound_devcluster::admin::{AdminClient, AdminServer};
use keybound_devcluster::locks::LockTarget;
use keybound_devcluster::nodes::Node;
use keybound_devcluster::resources::Kind;
use keybound_devcluster::{DevCluster, DevClusterConfig};

use crate::oneshot::{Env, env, ok, oneshot};
use crate::outputs::Sshd;
use crate::support::{free_port, keybound, stdout, tool};

const CLUSTER: &str = "dev.keybound.test";

fn node(name: &str, hostname: &str, port: u16, env_label: &str) -> Node {
    Node {
        name: name.into(),
        labels: BTreeMap::from([("env".to_owned(), env_label.to_owned())]),
        hostname: hostname.into(),
        addr: format!("127.0.0.1:{port}"),
    }
}

fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// A dev cluster whose role `access` grants this user's login on nodes labelled `env: dev`;
/// the nodes `node1` (dev), `node2` (prod) and two named `twin`, all at one real sshd; and an
/// identity output in `out`.
struct Setup {
    env: Env,
    sshd: Sshd,
    out: PathBuf,
    user: String,
}

async fn setup() -> Setup {
    let user = whoami();
    let port = free_port();
    let env = env(with_nodes(port, user.clone())).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    ok(&oneshot(&cfg, &[]).await);
    let out = env.path("out");
    let sshd = start_node(&env.cluster, &env.path("sshd"), port);
    Setup {
        env,
        sshd,
        out,
        user,
    }
}

/// The role `access` grants `user`'s login on nodes labelled `env: dev`; the nodes `node1`
/// (dev), `node2` (prod) and two named `twin` are all the sshd on `port`.
fn with_nodes(port: u16, user: String) -> impl FnOnce(&mut DevClusterConfig) {
    move |c| {
        c.roles[0].logins.push(user);
        c.roles[0].node_labels = BTreeMap::from([("env".to_owned(), vec!["dev".to_owned()])]);
        c.nodes = vec![
            node("5b4b1a4e-96c3-4b44-9a57-0d0b1e6ff6a1", "node1", port, "dev"),
            node(
                "8d7f3c52-1d35-4c6b-a0cc-6f1d3a3a5d10",
                "node2",
                port,
                "prod",
            ),
            node("c0ffee00-0000-4000-8000-000000000001", "twin", port, "dev"),
            node("c0ffee00-0000-4000-8000-000000000002", "twin", port, "dev"),
        ];
    }
}

/// A real sshd on `port` in `dir`: a host certificate from the cluster's host CA for the
/// nodes' names, the cluster's user CA trusted.
fn start_node(cluster: &DevCluster, dir: &Path, port: u16) -> Sshd {
    std::fs::create_dir(dir).unwrap();
    let host_key = dir.join("host_key");
    let keygen = Command::new(tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let public = ssh_key::PublicKey::from_openssh(public.trim()).unwrap();
    let ca = cluster.cluster.ca();
    let principals = [
        "node1",
        "node1.dev.keybound.test",
        "node2.dev.keybound.test",
    ];
    std::fs::write(
        dir.join("host_key-cert.pub"),
        ca.issue_host_ssh(&public, &principals).unwrap(),
    )
    .unwrap();
    let (user_ca, _) = ca.authority_public("user").unwrap();
    std::fs::write(dir.join("user_ca.pub"), format!("{}\n", user_ca[0])).unwrap();
    Sshd::start_on(dir, port)
}

/// `ssh -F <out>/ssh_config <user>@node1.<cluster> echo <word>` succeeds with the word.
fn assert_ssh_echoes(out: &Path, port: u16, user: &str, sshd: &Sshd) {
    let output = Command::new(tool("ssh"))
        .arg("-F")
        .arg(out.join("ssh_config"))
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .args(["-p", &port.to_string()])
        .arg(format!("{user}@node1.{CLUSTER}"))
        .args(["echo", "through-keybound"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        sshd.log()
    );
    assert_eq!(stdout(&output), "through-keybound\n");
}

impl Setup {
    /// `ssh -F <out>/ssh_config -p <sshd>` (tbot's config says port 3022; the node's port is the
    /// sshd's), in batch mode, strict about host keys.
    fn ssh(&self, program: &str) -> Command {
        let mut cmd = Command::new(tool(program));
        cmd.arg("-F")
            .arg(self.out.join("ssh_config"))
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg(if program == "scp" { "-P" } else { "-p" })
            .arg(self.sshd.port.to_string());
        cmd
    }

    fn run_ssh(&self, login: &str, host: &str, command: &str) -> Output {
        let mut cmd = self.ssh("ssh");
        cmd.arg(format!("{login}@{host}"))
            .arg(command)
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }
}

/// keybound's one-line error, as ssh passes the ProxyCommand's standard error on.
fn keybound_error(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "one keybound error line: {stderr}");
    assert!(!output.status.success());
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_reaches_a_node_through_keybound_and_the_proxy_refuses_what_the_role_does_not_grant() {
    let s = setup().await;
    let config = std::fs::read_to_string(s.out.join("ssh_config")).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_keybound")).unwrap();
    assert!(
        config.contains(&format!(
            "ProxyCommand '{}' ssh-proxy-command ",
            exe.display()
        )),
        "{config}"
    );
    assert!(s.out.join("dev.keybound.test.ssh_config").exists());
    assert!(s.out.join("dev.keybound.test.known_hosts").exists());

    let host = format!("node1.{CLUSTER}");
    assert_ssh_echoes(&s.out, s.sshd.port, &s.user, &s.sshd);

    // A login the role does not grant, and a node outside its node_labels: the Proxy refuses
    // with Teleport's text.
    for (login, node) in [("nobody-granted", "node1"), (s.user.as_str(), "node2")] {
        let output = s.run_ssh(login, &format!("{node}.{CLUSTER}"), "true");
        let error = keybound_error(&output);
        assert!(
            error.contains(&format!(
                "is not authorized to login as {login}@{CLUSTER}: access to node denied"
            )),
            "{error}"
        );
        assert!(error.contains("node_labels and logins"), "{error}");
    }
    // An unknown host, and a name two nodes share.
    let error = keybound_error(&s.run_ssh(&s.user, &format!("ghost.{CLUSTER}"), "true"));
    assert!(
        error.contains(&format!(
            "failed connecting to host ghost:{}: target host ghost is offline or does not exist",
            s.sshd.port
        )),
        "{error}"
    );
    let error = keybound_error(&s.run_ssh(&s.user, &format!("twin.{CLUSTER}"), "true"));
    assert!(
        error.contains("ambiguous host could match multiple nodes; several nodes answer"),
        "{error}"
    );
    // Without the node's port, tbot's Port 3022 matches no node.
    let mut cmd = Command::new(tool("ssh"));
    cmd.arg("-F")
        .arg(s.out.join("ssh_config"))
        .args(["-o", "BatchMode=yes"])
        .arg(format!("{}@{host}", s.user))
        .arg("true")
        .stdin(Stdio::null());
    let error = keybound_error(&cmd.output().unwrap());
    assert!(
        error.contains("node1:3022: target host node1 is offline"),
        "{error}"
    );
    // A lock on the role refuses the stream (Teleport's lock-aware authorizer: a bare
    // "access denied"); its removal lets the bot back.
    let socket = s.env.path("admin.sock");
    let _admin = AdminServer::start(&s.env.cluster, Some(&socket)).unwrap();
    let admin = AdminClient::new(Some(&socket)).unwrap();
    let mut session = s
        .ssh("ssh")
        .arg(format!("{}@{host}", s.user))
        .arg("echo ready; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(session.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let lock = admin
        .lock(LockTarget::Role("access".into()), "test".into(), None)
        .await
        .unwrap();
    // The session in progress ends (Teleport's connection monitor), with the lock's message.
    let ended = tokio::task::spawn_blocking(move || session.wait_with_output().unwrap())
        .await
        .unwrap();
    let error = keybound_error(&ended);
    assert!(
        error.contains(
            "the connection through the proxy failed: lock targeting Role:\"access\" is in force: test"
        ),
        "{error}"
    );
    let error = keybound_error(&s.run_ssh(&s.user, &host, "true"));
    assert!(
        error.contains(&format!(
            "failed connecting to host node1:{}: access denied",
            s.sshd.port
        )),
        "{error}"
    );
    admin.remove(Kind::Lock, &lock).await.unwrap();
    assert_ssh_echoes(&s.out, s.sshd.port, &s.user, &s.sshd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_and_100_mib_arrive_byte_for_byte() {
    let s = setup().await;
    let host = format!("node1.{CLUSTER}");
    let data = s.env.path("data");
    let mut bytes = vec![0u8; 100 << 20];
    // Not compressible and not repeating: a simple generator is enough for a byte comparison.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&data, &bytes).unwrap();

    // Up with scp.
    let copy = s.env.path("copy");
    let output = s
        .ssh("scp")
        .arg(&data)
        .arg(format!("{}@{host}:{}", s.user, copy.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        std::fs::read(&copy).unwrap() == bytes,
        "scp changed the bytes"
    );

    // Down through the command's standard output.
    let output = s.run_ssh(&s.user, &host, &format!("cat '{}'", copy.display()));
    assert!(output.status.success());
    assert_eq!(output.stdout.len(), bytes.len());
    assert!(output.stdout == bytes, "the download changed the bytes");
}

/// Every process whose parent is `pid`, and theirs.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) {
                found.push(child);
                parents.push(child);
            }
        }
    }
    found
}

/// The command alone, as OpenSSH runs it: the node's banner comes out; when the node's sshd is
/// killed mid-connection the command ends by itself, successfully and silently; a closed input
/// ends it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_ends_cleanly_when_the_node_dies_or_ssh_closes_its_input() {
    let mut s = setup().await;
    let proxy = s.env.cluster.proxy_addr();
    let command = |s: &Setup| {
        let mut cmd = keybound();
        cmd.arg("ssh-proxy-command")
            .arg(format!("--destination-dir={}", s.out.display()))
            .arg(format!("--proxy-server={proxy}"))
            .args([
                "--cluster",
                CLUSTER,
                "--tls-routing",
                "--connection-upgrade",
                "--resume",
            ])
            .arg(format!("--user={}", s.user))
            .arg(format!("--host=node1.{CLUSTER}"))
            .arg(format!("--port={}", s.sshd.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let banner = |child: &mut std::process::Child| {
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("SSH-2.0-OpenSSH"), "{line:?}");
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"SSH-2.0-keybound-test\r\n")
            .unwrap();
        out
    };
    let ends = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "the command did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // The node dies: every sshd process serving the connection is killed.
    let mut child = command(&s);
    let mut out = banner(&mut child);
    // sshd serves each connection in a child that starts a session of its own (`setsid`) and
    // forks its privilege-separated child later: killing the child's process group takes
    // that one too, even if it is forked after the processes were listed.
    let serving = descendants(s.sshd.child.id());
    assert!(!serving.is_empty(), "sshd serves the connection in a child");
    for pid in serving {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}"), &pid.to_string()])
            .status();
    }
    // Drained aside, so that a command that does not end fails the bounded wait below.
    std::thread::spawn(move || out.read_to_end(&mut Vec::new()));
    let (status, stderr) = ends(&mut child);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "");

    // ssh is done: it closes the command's input.
    let mut child = command(&s);
    let _out = banner(&mut child);
    drop(child.stdin.take());
    let (status, stderr) = ends(&mut child);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "");
    // The sshd is still there for the next connection.
    assert!(s.sshd.child.try_wait().unwrap().is_none(), "sshd ended");
}

/// Before any node: a proxy that is not there, a proxy of another cluster (its certificate is
/// not from the identity's CAs), an expired identity, a directory that is no identity output:
/// one line each, naming the fix, and a failing exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_own_errors_are_one_line_naming_the_fix() {
    let env = env(|_| {}).await;
    let cfg = env.proxy_config(&[("out", &[])]);
    ok(&oneshot(&cfg, &[]).await);
    let out = env.path("out");
    let run = |dir: &Path, proxy: &str| {
        let mut cmd = keybound();
        cmd.arg("ssh-proxy-command")
            .arg(format!("--destination-dir={}", dir.display()))
            .arg(format!("--proxy-server={proxy}"))
            .args(["--user=ci", "--host=node1", "--port=22"])
            .stdin(Stdio::null());
        let output = cmd.output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr
    };
    let other = DevCluster::start(Default::default()).await.unwrap();
    let error = run(&out, &other.proxy_addr());
    assert!(
        error.contains("not issued by the cluster CAs in the identity file"),
        "{error}"
    );
    let error = run(&out, &format!("localhost:{}", free_port()));
    assert!(
        error.contains("cannot reach the proxy localhost:"),
        "{error}"
    );
    assert!(error.contains("check --proxy-server"), "{error}");
    let error = run(&env.path("storage"), &env.cluster.proxy_addr());
    assert!(error.contains("cannot read the identity file"), "{error}");
    assert!(error.contains("an identity output's directory"), "{error}");
    // Certificates that live a second have expired two seconds later.
    ok(&oneshot(&cfg, &["--certificate-ttl", "1s"]).await);
    std::thread::sleep(Duration::from_secs(2));
    let error = run(&out, &env.cluster.proxy_addr());
    assert!(error.contains("expired at"), "{error}");
    assert!(error.contains("keybound start must be running"), "{error}");
}

/// Only the output's certificate reaches the node, so an identity joined with a key in SoftHSM
/// or in a TPM (swtpm) serves ssh as a file key's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_works_with_identities_joined_from_softhsm_and_a_tpm() {
    let hsm = crate::pkcs11::Hsm::new("ssh-token");
    let key = hsm.create_key("bound", "ecdsa-p256");
    #[cfg_attr(not(feature = "tpm"), allow(unused_mut))]
    let mut signers = vec![(
        "softhsm",
        key,
        hsm.signer_args("bound"),
        Some(hsm.conf.clone()),
    )];
    #[cfg(feature = "tpm")]
    let tpm = keybound_signer_tpm::testing::Swtpm::start();
    #[cfg(feature = "tpm")]
    {
        let args = vec![
            "--signer".to_owned(),
            "tpm".to_owned(),
            "--tpm-tcti".to_owned(),
            tpm.tcti(),
            "--tpm-key-handle".to_owned(),
            "0x81000110".to_owned(),
        ];
        let created = crate::support::run_ok(
            keybound()
                .args(["keypair", "create", "--static", "--format", "json"])
                .args(&args),
        );
        let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
        let key =
            keybound_signer::PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
        signers.push(("swtpm", key, args, None));
    }
    let user = whoami();
    for (name, key, args, softhsm_conf) in signers {
        let port = free_port();
        let cluster = crate::cluster::cluster_for(&key, with_nodes(port, user.clone())).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::cluster::ca_file(&cluster, dir.path());
        let out = dir.path().join("out");
        let mut cmd = keybound();
        if let Some(conf) = &softhsm_conf {
            cmd.env("SOFTHSM2_CONF", conf)
                .env("HSM_PIN", crate::pkcs11::PIN);
        }
        cmd.args([
            "start",
            "--oneshot",
            "--join-method",
            "bound_keypair",
            "--token",
            "t",
        ])
        .arg(format!("--proxy-server={}", cluster.proxy_addr()))
        .arg("--ca-path")
        .arg(&ca)
        .args(&args)
        .args(["--storage", "memory://", "--destination-dir"])
        .arg(&out);
        let joined = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            joined.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&joined.stderr)
        );
        let sshd = start_node(&cluster, &dir.path().join("sshd"), port);
        assert_ssh_echoes(&out, port, &user, &sshd);
    }
}
