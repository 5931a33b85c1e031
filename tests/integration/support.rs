//! Helpers shared by the integration tests.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The keybound binary under test.
pub(crate) fn keybound() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybound"));
    cmd.env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY")
        .env_remove("RUST_LOG");
    cmd
}

/// The path of an external tool; a missing tool fails the test (never skips it), naming the
/// Debian package that provides it. `make deps` installs them all.
pub(crate) fn tool(name: &str) -> PathBuf {
    let package = match name {
        "openssl" => "openssl",
        "ssh-keygen" | "ssh" => "openssh-client",
        "sshd" => "openssh-server",
        "python3" => "python3 (with python3-jwt, python3-cryptography and python3-seccomp)",
        "groff" => "groff-base",
        "man" => "man-db",
        "systemd-analyze" => "systemd",
        "ldd" => "libc-bin",
        "apt-cache" => "apt",
        "unshare" | "setpriv" => "util-linux",
        "script" => "bsdutils",
        _ => name,
    };
    let path = match name {
        // Debian's interpreter, where apt installs python3-jwt and python3-cryptography.
        "python3" => PathBuf::from("/usr/bin/python3"),
        // Not on a normal user's PATH.
        "sshd" => PathBuf::from("/usr/sbin/sshd"),
        _ => std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from(name)),
    };
    assert!(
        path.is_file(),
        "{name} is missing: install the Debian package {package} (`make deps` does)"
    );
    path
}

/// Runs `cmd` and returns its output, failing with stderr if it did not succeed.
pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().expect("spawn");
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `cmd`, expects it to fail, and returns its stderr, checking that it is one `error:` line
/// with no panic.
pub(crate) fn run_err(cmd: &mut Command) -> String {
    let output = cmd.output().expect("spawn");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{cmd:?} succeeded; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(output.status.code(), Some(1), "{cmd:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_owned()
}

/// Runs `cmd` to its end, waiting at most `limit`: a process still running then is killed, and
/// the test fails saying so (a bound on a hang, not a speed claim).
pub(crate) fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read as _;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Both pipes drain on threads of their own, so a chatty child never blocks on them.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{cmd:?} was still running after {limit:?}; its stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

/// Checks with openssl that an identity output's TLS certificate chains to the output's user CA.
pub(crate) fn assert_output_verifies(out: &Path) {
    let verify = run_ok(
        Command::new(tool("openssl"))
            .args(["verify", "-CAfile"])
            .arg(out.join("teleport-user-ca.crt"))
            .arg(out.join("tlscert")),
    );
    assert!(stdout(&verify).contains("OK"));
}

/// Makes a private key with `openssl genpkey` (`algorithm`: "ed25519" or "P-256"), mode 0600.
pub(crate) fn openssl_key(dir: &Path, name: &str, algorithm: &str) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new(tool("openssl"));
    cmd.arg("genpkey");
    match algorithm {
        "ed25519" => cmd.args(["-algorithm", "ed25519"]),
        "P-256" => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        other => panic!("no openssl recipe for {other}"),
    };
    run_ok(cmd.arg("-out").arg(&path));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The OpenSSH public key of a PEM private key, computed by Python's `cryptography`.
pub(crate) fn python_public_key(private_key: &Path) -> String {
    let output = run_ok(
        Command::new(tool("python3"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tools/public_key.py"
            ))
            .arg(private_key),
    );
    stdout(&output).trim().to_owned()
}

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl s_server -WWW` serving a `/webapi/find` document over TLS on localhost, with a fresh
/// self-signed certificate: a stand-in Teleport proxy web endpoint written by someone else.
pub(crate) struct FindServer {
    child: Child,
    pub(crate) port: u16,
    pub(crate) ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// A CA and a leaf certificate for `localhost` signed by it, made with openssl in `dir`, as a
/// real deployment has: returns the CA, the certificate and its key (PEM files).
pub(crate) fn localhost_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name);
    let openssl = || {
        let mut cmd = Command::new(tool("openssl"));
        cmd.current_dir(dir).stderr(Stdio::null());
        cmd
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run_ok(openssl().args(["req", "-x509"]).args(ec).args([
        "-days",
        "1",
        "-subj",
        "/CN=keybound test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]));
    run_ok(openssl().args(["req"]).args(ec).args([
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]));
    std::fs::write(
        path("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run_ok(openssl().args([
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]));
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

impl FindServer {
    pub(crate) fn start(find_json: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("webapi")).unwrap();
        std::fs::write(dir.path().join("webapi/find"), find_json).unwrap();
        let (ca, cert, key) = localhost_tls(dir.path());
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new(tool("openssl"))
                .args(["s_server", "-WWW", "-quiet", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn openssl s_server");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // The port was taken; try another.
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        port,
                        ca,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }

    pub(crate) fn addr(&self) -> String {
        format!("localhost:{}", self.port)
    }
}

impl Drop for FindServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails if `text` holds any 16 consecutive characters of `secret` (`what` names it), so that a
/// secret leaks neither whole nor in pieces.
pub(crate) fn assert_no_secret(text: &str, secret: &str, what: &str) {
    const WINDOW: usize = 16;
    let secret: Vec<char> = secret.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(secret.len() >= WINDOW, "{what} is too short to look for");
    for window in secret.windows(WINDOW) {
        let piece: String = window.iter().collect();
        assert!(
            !text.contains(&piece),
            "{what} leaked: {piece:?} found in\n{text}"
        );
    }
}

/// Every file under `dir` (relative path, contents), sorted, but for keybound's storage lock and
/// the marker of a rejoin in doubt (which a challenge answered before a stream broke rightly
/// leaves). Staged files (`.keybound-*`) count: none may be left behind.
pub(crate) fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name != ".keybound.lock" && name != ".keybound-rejoin" {
                let rel = path.strip_prefix(dir).unwrap().to_owned();
                files.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}
