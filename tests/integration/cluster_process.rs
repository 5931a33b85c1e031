//! `keybound dev-cluster` as a process of its own, as a user runs it: its JSON log in a file,
//! its CA bundle and admin socket in a scratch directory, and its admin commands.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::keybound;

/// A running `keybound dev-cluster`.
pub(crate) struct ClusterProcess {
    child: Child,
    /// `proxy_server` for a client.
    pub(crate) proxy: String,
    /// The CA bundle it wrote.
    pub(crate) ca: PathBuf,
    /// Where its admin side listens, as it printed.
    pub(crate) admin_socket: PathBuf,
    /// Its log (JSON lines).
    pub(crate) log: PathBuf,
}

impl ClusterProcess {
    /// `keybound dev-cluster --listen 127.0.0.1:0` with `extra` flags, its CA bundle, admin
    /// socket (`admin.sock`) and log in `dir`.
    pub(crate) fn start<S: AsRef<OsStr>>(dir: &Path, extra: &[S]) -> Self {
        let mut args = vec![
            OsString::from("--admin-socket"),
            dir.join("admin.sock").into_os_string(),
        ];
        args.extend(extra.iter().map(|a| a.as_ref().to_owned()));
        Self::start_with(dir, &args, &[])
    }

    /// The same with `args` as they are (no `--admin-socket` unless given) and `env` set.
    pub(crate) fn start_with<S: AsRef<OsStr>>(
        dir: &Path,
        args: &[S],
        env: &[(&str, &OsStr)],
    ) -> Self {
        let ca = dir.join("ca.pem");
        let mut cmd = keybound();
        cmd.args([
            "--log-format",
            "json",
            "dev-cluster",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--ca-out")
        .arg(&ca)
        .args(args)
        .envs(env.iter().copied());
        Self::spawn(cmd, ca, dir.join("dev-cluster.log"))
    }

    /// Runs `cmd`, a dev cluster that writes its CA bundle to `ca`, its stderr to `log`, and
    /// waits (a minute at most) for it to print its proxy address and admin socket.
    pub(crate) fn spawn(mut cmd: Command, ca: PathBuf, log: PathBuf) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Its first lines, read on a thread of their own (which then drains the rest), so that
        // a cluster that never prints them fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let mut proxy = None;
            for line in lines.by_ref() {
                if let Some(p) = line.strip_prefix("proxy_server: ") {
                    proxy = Some(p.to_owned());
                }
                if let Some(socket) = line.strip_prefix("admin socket: ") {
                    let _ = tx.send((proxy.take(), PathBuf::from(socket)));
                    break;
                }
            }
            lines.for_each(drop);
        });
        let mut process = Self {
            child,
            proxy: String::new(),
            ca,
            admin_socket: PathBuf::new(),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((Some(proxy), socket)) => {
                (process.proxy, process.admin_socket) = (proxy, socket);
                process
            }
            _ => panic!(
                "the dev cluster printed no proxy_server and admin socket: {}",
                std::fs::read_to_string(&process.log).unwrap_or_default()
            ),
        }
    }

    /// `keybound dev-cluster ARGS --admin-socket <its socket>`.
    pub(crate) fn admin<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = keybound();
        cmd.arg("dev-cluster")
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket);
        cmd
    }

    /// Stops it as a user does (SIGTERM) and waits for it.
    pub(crate) fn stop(mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the dev cluster exited with {status}");
    }
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
