//! The long-running agent as a child process, for the agent tests (`agent.rs`, `agent_pins.rs`,
//! `agent_stalls.rs`): started with a diagnostics listener, signalled, read through its metrics
//! and health endpoints and its log, stopped; and the dev clusters and configurations it runs
//! against.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use keybound_devcluster::{DevCluster, DevClusterConfig};
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{ca_file, token, with_robot};
use crate::support::{free_port, keybound};

/// A GET on the diagnostics listener: (status code, body).
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// The value of a metric line that starts with `prefix`.
pub(crate) fn metric(port: u16, prefix: &str) -> f64 {
    get(port, "/metrics")
        .and_then(|(_, body)| {
            body.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Waits up to `limit` for `/readyz/identity` to answer 503; its body.
pub(crate) fn identity_not_ready(port: u16, limit: Duration) -> String {
    let mut body = String::new();
    wait_for("/readyz/identity 503", limit, || {
        get(port, "/readyz/identity").is_some_and(|(c, b)| {
            body = b;
            c == 503
        })
    });
    body
}

/// A running `keybound start` (long-running); killed on drop, its output kept.
pub(crate) struct Agent {
    pub(crate) child: Option<Child>,
    pub(crate) diag: u16,
    pub(crate) log: std::path::PathBuf,
}

impl Agent {
    pub(crate) fn start(cfg: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(keybound(), cfg, dir, env)
    }

    /// As [`Agent::start`], with `cmd` as the program: `keybound`, or a tool that runs it.
    pub(crate) fn start_with(cmd: Command, cfg: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let agent = Self::spawn(cmd, cfg, dir, env);
        let diag = agent.diag;
        wait_for("the diagnostics listener", Duration::from_secs(10), || {
            get(diag, "/healthz").is_some()
        });
        agent
    }

    /// As [`Agent::start_with`], without waiting for the diagnostics listener (an agent that
    /// may end at once).
    pub(crate) fn spawn(mut cmd: Command, cfg: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let diag = free_port();
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        cmd.args(["--debug", "start", "-c"])
            .arg(cfg)
            .args(["--diag-addr", &format!("127.0.0.1:{diag}")])
            .env("RUST_LOG", "debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Self {
            child: Some(child),
            diag,
            log,
        }
    }

    pub(crate) fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args(["-s", name, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    pub(crate) fn renewals(&self) -> f64 {
        metric(self.diag, "keybound_renewals_total")
    }

    /// Waits up to `limit` for the agent to exit by itself; its exit status, or `None`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the agent's exit status, once it has exited (within 10 s).
    pub(crate) fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let started = Instant::now();
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the agent did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn config(
    dir: &Path,
    proxy: &str,
    ca: &Path,
    key_yaml: &str,
    interval: &str,
    ttl: &str,
) -> std::path::PathBuf {
    config_with_storage(dir, proxy, ca, key_yaml, interval, ttl, "  type: memory\n")
}

/// As [`config`], with `storage` as the lines under `storage:`.
pub(crate) fn config_with_storage(
    dir: &Path,
    proxy: &str,
    ca: &Path,
    key_yaml: &str,
    interval: &str,
    ttl: &str,
    storage: &str,
) -> std::path::PathBuf {
    let path = dir.join("tbot.yaml");
    std::fs::write(
        &path,
        format!(
            "version: v2\nproxy_server: {proxy}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n{key_yaml}storage:\n{storage}credential_ttl: {ttl}\nrenewal_interval: {interval}\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            ca.display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    path
}

/// A P-256 key in a file, a dev cluster for it, and an agent configuration in `dir` renewing
/// every second certificates that last `ttl`.
pub(crate) async fn file_key_agent(dir: &Path, ttl: &str) -> (DevCluster, std::path::PathBuf) {
    let signer = SoftSigner::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let key_path = crate::cluster::key_file(dir, &signer);
    let cluster = cluster_on("127.0.0.1:0".parse().unwrap(), signer.public_key(), "t").await;
    let ca = ca_file(&cluster, dir);
    let key_yaml = format!(
        "  bound_keypair:\n    static_private_key_path: {}\n",
        key_path.display()
    );
    let cfg = config(dir, &cluster.proxy_addr(), &ca, &key_yaml, "1s", ttl);
    (cluster, cfg)
}

pub(crate) async fn cluster_on(
    addr: SocketAddr,
    key: &keybound_signer::PublicKey,
    token_name: &str,
) -> DevCluster {
    // The port may take a moment to be free again after a previous cluster on it stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let config = with_robot(DevClusterConfig {
            listen: addr,
            tokens: vec![token(token_name, key, "insecure", 1, "")],
            ..Default::default()
        });
        match DevCluster::start(config).await {
            Ok(cluster) => return cluster,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

/// Serves a stopped cluster's state again on `addr` (once the port is free).
pub(crate) async fn serve_again(
    state: std::sync::Arc<keybound_devcluster::Cluster>,
    addr: SocketAddr,
) -> DevCluster {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match DevCluster::serve(state.clone(), addr, None).await {
            Ok(cluster) => return cluster,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
