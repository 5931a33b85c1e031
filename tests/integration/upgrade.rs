//! Behind a TLS-terminating L7 load balancer (a real nginx, with its own certificate, passing
//! HTTP/1.1 with `Upgrade` on to the dev cluster's web port): keybound sees on its own that ALPN
//! does not reach the proxy, joins and rejoins through the ALPN connection upgrade, and with
//! `TELEPORT_TLS_ROUTING_CONN_UPGRADE=false` fails as tbot would; a direct handshake the load
//! balancer stalls is dropped once the upgrade test has answered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use crate::oneshot::{Env, env, ok};
use crate::support::{free_port, keybound, localhost_tls};

/// nginx in the foreground with its own prefix; stopped when dropped.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the access log holds `n` upgrades answered `101`.
    async fn wait_for_upgrades(&self, n: usize) {
        let count = |log: &str| {
            log.lines()
                .filter(|l| l.contains("GET /webapi/connectionupgrade HTTP/1.1\" 101"))
                .count()
        };
        for _ in 0..200 {
            if count(&self.access_log()) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("not {n} upgrades in nginx's log:\n{}", self.access_log());
    }
}

/// The load balancer's certificate for `localhost`, from a CA made with openssl; keybound trusts
/// that CA through `SSL_CERT_FILE`, as Teleport's client trusts it through the system store.
/// Returns the CA, the certificate and its key.
fn lb_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = dir.join("lb");
    std::fs::create_dir(&dir).unwrap();
    localhost_tls(&dir)
}

async fn nginx(env: &Env, cert: &Path, key: &Path) -> Nginx {
    let dir = env.path("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let upstream = env
        .cluster
        .proxy_addr()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let d = dir.display();
    // As root nginx would hand its workers to `nobody`, who cannot enter the temporary prefix.
    let user = if rustix::process::geteuid().is_root() {
        "user root;"
    } else {
        ""
    };
    let conf = format!(
        "{user}\ndaemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{}}\nhttp {{\n  access_log {d}/access.log;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    \
         ssl_certificate_key {};\n    location / {{\n      proxy_pass https://127.0.0.1:{upstream};\n      \
         proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      \
         proxy_set_header Connection \"upgrade\";\n      proxy_set_header Host $host;\n      \
         proxy_read_timeout 300s;\n    }}\n  }}\n}}\n",
        cert.display(),
        key.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/deps.sh)");
    let nginx = Nginx { child, dir, port };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return nginx;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "nginx did not listen on {port}: {}",
        std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
    );
}

/// `keybound start --oneshot` through the load balancer, trusting its certificate.
async fn through(env: &Env, lb: &Nginx, lb_ca: &Path, upgrade: Option<&str>) -> Output {
    let cfg = env.config(
        &format!("proxy_server: localhost:{}", lb.port),
        "",
        &[("out", &[])],
    );
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"])
        .arg(cfg)
        .env("SSL_CERT_FILE", lb_ca);
    cmd.env_remove("TELEPORT_TLS_ROUTING_CONN_UPGRADE");
    if let Some(value) = upgrade {
        cmd.env("TELEPORT_TLS_ROUTING_CONN_UPGRADE", value);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_rejoins_through_a_tls_terminating_nginx_by_the_connection_upgrade() {
    let env = env(|_| {}).await;
    let (ca, cert, key) = lb_certificate(env.dir.path());
    let lb = nginx(&env, &cert, &key).await;

    let first = ok(&through(&env, &lb, &ca, None).await);
    assert!(first.contains("with the static key"), "{first}");
    assert!(env.path("out/identity").exists());
    // nginx logs an upgraded request when its connection closes: the join's and the Auth
    // connection's.
    lb.wait_for_upgrades(2).await;

    let again = ok(&through(&env, &lb, &ca, None).await);
    assert!(again.contains("authenticated rejoin"), "{again}");
    lb.wait_for_upgrades(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_upgrade_the_load_balancer_is_named_in_a_clear_error() {
    let env = env(|_| {}).await;
    let (ca, cert, key) = lb_certificate(env.dir.path());
    let lb = nginx(&env, &cert, &key).await;
    let output = through(&env, &lb, &ca, Some("false")).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("TELEPORT_TLS_ROUTING_CONN_UPGRADE"),
        "{stderr}"
    );
    assert!(!lb.access_log().contains("connectionupgrade"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_that_the_upgrade_is_needed_and_the_join_route_works_through_it() {
    let env = env(|_| {}).await;
    let (ca, cert, key) = lb_certificate(env.dir.path());
    let lb = nginx(&env, &cert, &key).await;
    let mut cmd = crate::doctor::doctor_on(keybound(), &format!("localhost:{}", lb.port));
    cmd.arg("--ca-path")
        .arg(&env.ca)
        .arg("--static-key-path")
        .arg(&env.key);
    cmd.env("SSL_CERT_FILE", &ca)
        .env_remove("TELEPORT_TLS_ROUTING_CONN_UPGRADE");
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        report.contains("connection upgrade needed (ALPN does not reach the proxy"),
        "{report}"
    );
    assert!(
        report.contains("ALPN teleport-proxy-grpc (the Proxy's join service) accepted"),
        "{report}"
    );

    // Straight to the dev cluster nothing is in the way.
    let mut direct = crate::doctor::doctor_on(keybound(), &env.cluster.proxy_addr());
    direct
        .arg("--ca-path")
        .arg(&env.ca)
        .arg("--static-key-path")
        .arg(&env.key);
    direct.env_remove("TELEPORT_TLS_ROUTING_CONN_UPGRADE");
    let output = tokio::task::spawn_blocking(move || direct.output().unwrap())
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!report.contains("connection upgrade"), "{report}");
    assert!(
        report.contains("ALPN teleport-proxy-grpc (the Proxy's join service) accepted"),
        "{report}"
    );
}

/// Before the upgrade test has answered, the direct handshake runs beside it; once it says an
/// upgrade is needed, that handshake is dropped where it stands, not waited for. A front before
/// nginx holds every connection offering `teleport-proxy-grpc` (the direct handshake), unread
/// and unanswered, for 5 s (keybound's own connect timeout is 10 s), and passes the rest on.
/// keybound closes the held connection itself before the 5 s are out, and joins through the
/// upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_handshake_the_load_balancer_stalls_is_dropped_once_an_upgrade_is_needed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let env = env(|_| {}).await;
    let (ca, cert, key) = lb_certificate(env.dir.path());
    let lb = nginx(&env, &cert, &key).await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    let held = Arc::new(AtomicUsize::new(0));
    let closed_by_keybound = Arc::new(AtomicUsize::new(0));
    let (held_in, closed_in) = (held.clone(), closed_by_keybound.clone());
    let lb_port = lb.port;
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = front.accept().await.unwrap();
            let (held, closed) = (held_in.clone(), closed_in.clone());
            tokio::spawn(async move {
                let mut first = vec![0u8; 4096];
                let n = conn.read(&mut first).await.unwrap_or(0);
                first.truncate(n);
                let direct = first
                    .windows(b"teleport-proxy-grpc".len())
                    .any(|w| w == b"teleport-proxy-grpc");
                if direct {
                    held.fetch_add(1, Ordering::SeqCst);
                    let mut rest = [0u8; 1024];
                    tokio::select! {
                        _ = async { while conn.read(&mut rest).await.is_ok_and(|n| n > 0) {} } => {
                            closed.fetch_add(1, Ordering::SeqCst);
                        }
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                    return;
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", lb_port)).await
                else {
                    return;
                };
                if up.write_all(&first).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                }
            });
        }
    });

    let cfg = env.config(
        &format!("proxy_server: localhost:{front_port}"),
        "",
        &[("out", &[])],
    );
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"])
        .arg(cfg)
        .env("SSL_CERT_FILE", &ca)
        .env_remove("TELEPORT_TLS_ROUTING_CONN_UPGRADE");
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let summary = ok(&output);
    assert!(summary.contains("with the static key"), "{summary}");
    assert!(env.path("out/identity").exists());
    assert_eq!(held.load(Ordering::SeqCst), 1, "one direct handshake");
    assert_eq!(
        closed_by_keybound.load(Ordering::SeqCst),
        1,
        "keybound waited for the stalled direct handshake"
    );
}
