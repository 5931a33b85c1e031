//! What `keybound ssh-proxy-command` adds to an SSH connection, against a direct TCP connection
//! to the same node on loopback: the time to the node's first bytes (OpenSSH runs the command
//! once per `ssh`, so this is the start-up it waits for: exec, reading the identity, TLS to the
//! Proxy with the identity's certificate, ProxySSH, the Proxy dialling the node), and one small
//! round trip once connected. The node is a stand-in that sends an SSH banner and echoes.
//! Median and p99. A benchmark, not a test: `cargo bench --bench ssh_proxy` (or `make bench`);
//! it asserts nothing about time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keybound_devcluster::nodes::Node;
use keybound_devcluster::roles::{Bot, Role};
use keybound_devcluster::{DevCluster, DevClusterConfig};
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

#[path = "common.rs"]
mod common;

const BANNER: &[u8] = b"SSH-2.0-bench-node\r\n";
const HELLO: &[u8] = b"SSH-2.0-bench-client\r\n";
const PING: [u8; 64] = [7; 64];
const ROUND_TRIPS: usize = 20;

/// A stand-in node: each connection gets the banner, then its bytes back.
fn node() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_nodelay(true);
                if stream.write_all(BANNER).is_err() {
                    return;
                }
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads the banner, sends the client's line (the Proxy checks it starts with `SSH-2.0`) and
/// reads it back; then `ROUND_TRIPS` pings, each timed.
fn converse(reader: &mut impl BufRead, writer: &mut impl Write) -> Vec<Duration> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).expect("banner");
    assert_eq!(line, BANNER);
    writer.write_all(HELLO).expect("hello");
    writer.flush().expect("flush");
    let mut echo = vec![0u8; HELLO.len()];
    reader.read_exact(&mut echo).expect("hello back");
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    let mut back = [0u8; PING.len()];
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        writer.write_all(&PING).expect("ping");
        writer.flush().expect("flush");
        reader.read_exact(&mut back).expect("pong");
        times.push(started.elapsed());
    }
    times
}

fn main() {
    let quick = common::quick();
    let runs = if quick { 3 } else { 200 };
    let port = node();
    let signer = SoftSigner::generate(Algorithm::Ed25519).expect("key");
    let runtime = common::runtime();
    let cluster = runtime.block_on(async {
        DevCluster::start(DevClusterConfig {
            tokens: vec![common::token("bench", &signer.public_key().to_openssh())],
            roles: vec![Role {
                name: "access".into(),
                logins: vec!["ci".into()],
                node_labels: BTreeMap::from([("*".to_owned(), vec!["*".to_owned()])]),
                ..Role::default()
            }],
            bots: vec![Bot {
                name: "bench".into(),
                roles: vec!["access".into()],
            }],
            nodes: vec![Node {
                name: "5b4b1a4e-96c3-4b44-9a57-0d0b1e6ff6a1".into(),
                labels: BTreeMap::new(),
                hostname: "node1".into(),
                addr: format!("127.0.0.1:{port}"),
            }],
            ..Default::default()
        })
        .await
        .expect("dev cluster")
    });
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("bound.pem");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .and_then(|mut f| f.write_all(signer.to_pkcs8_pem().as_bytes()))
            .expect("key");
    }
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cluster.ca_pem()).expect("ca");
    let out = dir.path().join("out");
    let joined = Command::new(env!("CARGO_BIN_EXE_keybound"))
        .args([
            "start",
            "--oneshot",
            "--join-method",
            "bound_keypair",
            "--token",
            "bench",
        ])
        .arg(format!("--proxy-server={}", cluster.proxy_addr()))
        .arg("--ca-path")
        .arg(&ca)
        .arg("--static-key-path")
        .arg(&key)
        .args(["--storage", "memory://", "--destination-dir"])
        .arg(&out)
        .output()
        .expect("keybound start");
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );

    let mut direct_trips = Vec::new();
    let mut proxied_trips = Vec::new();
    let direct = || {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        (converse(&mut reader, &mut writer), ())
    };
    let proxied = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keybound"))
            .arg("ssh-proxy-command")
            .arg(format!("--destination-dir={}", out.display()))
            .arg(format!("--proxy-server={}", cluster.proxy_addr()))
            .args([
                "--cluster=dev.keybound.test",
                "--tls-routing",
                "--connection-upgrade",
            ])
            .args([
                "--resume",
                "--user=ci",
                "--host=node1.dev.keybound.test",
                "--port=0",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut writer = child.stdin.take().expect("stdin");
        let trips = converse(&mut reader, &mut writer);
        drop(writer);
        let status = child.wait().expect("wait");
        assert!(status.success(), "{status}");
        (trips, ())
    };
    // Connection: from connect (or exec) to the first round trip's end, timed alternately.
    let (connect_direct, connect_proxied) = common::time_pair(
        runs,
        || direct_trips.extend(direct().0),
        || proxied_trips.extend(proxied().0),
    );
    let report = |name: &str, stats: common::Stats| {
        println!(
            "{name:<62} {:>9.3}ms {:>9.3}ms",
            stats.p50.as_secs_f64() * 1e3,
            stats.p99.as_secs_f64() * 1e3
        );
        common::record("ssh_proxy", name, stats.fields("time"));
    };
    println!("{:<62} {:>11} {:>11}", "", "p50", "p99");
    report(
        &format!("direct TCP: connect, banner, {ROUND_TRIPS} round trips"),
        connect_direct,
    );
    report(
        &format!("ssh-proxy-command: exec, connect, banner, {ROUND_TRIPS} round trips"),
        connect_proxied,
    );
    report(
        "direct TCP: one 64-byte round trip",
        common::Stats::of(direct_trips),
    );
    report(
        "ssh-proxy-command: one 64-byte round trip",
        common::Stats::of(proxied_trips),
    );
    drop(cluster);
}
