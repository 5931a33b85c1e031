//! What a hostile cluster says, on its way into keybound's files and logs (issue 24, items 1 and
//! 6): a cluster name or a proxy address that would inject `ssh_config` directives, and status
//! messages that would forge log lines, reach the terminal with escape sequences, or fill an
//! error with kilobytes. The dev cluster presents them (`--misbehave hostile-*`, the text of
//! [`default_hostile_text`]); OpenSSH's own parser (`ssh -G`) and a real `ssh` judge the files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keybound_devcluster::{DevCluster, Misbehaviour, default_hostile_text};
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{ca_file, cluster_for, key_file};
use crate::support::{free_port, keybound, snapshot, tool};

/// The file the hostile text's `Match exec` would create, in the directory `ssh` runs in.
const PWNED: &str = "keybound-pwned";

/// A scratch directory, a static key, a dev cluster (with Auth on a port of its own when
/// `auth_port` is given) and its CA bundle.
struct Env {
    dir: tempfile::TempDir,
    key: PathBuf,
    cluster: DevCluster,
    ca: PathBuf,
}

async fn env(auth_port: Option<u16>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = key_file(dir.path(), &signer);
    let cluster = cluster_for(signer.public_key(), |c| {
        c.auth_listen = auth_port.map(|p| ([127, 0, 0, 1], p).into());
    })
    .await;
    let ca = ca_file(&cluster, dir.path());
    Env {
        dir,
        key,
        cluster,
        ca,
    }
}

/// A YAML single-quoted scalar.
fn yaml(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A tbot.yaml with `cluster` (`proxy_server: ...` or `auth_server: ...`), storage in
    /// `storage/` and one identity output in `out` (`extra` lines added to it).
    fn config(&self, cluster: &str, out: &Path, extra: &str) -> PathBuf {
        let path = self.path("tbot.yaml");
        std::fs::write(
            &path,
            format!(
                "version: v2\n{cluster}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    static_private_key_path: {}\nstorage:\n  type: directory\n  path: {}\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n{extra}",
                yaml(&self.ca.display().to_string()),
                yaml(&self.key.display().to_string()),
                yaml(&self.path("storage").display().to_string()),
                yaml(&out.display().to_string()),
            ),
        )
        .unwrap();
        path
    }

    fn proxy_config(&self, out: &Path) -> PathBuf {
        self.config(
            &format!("proxy_server: {}", self.cluster.proxy_addr()),
            out,
            "",
        )
    }
}

/// `keybound start --oneshot -c cfg`, off the runtime serving the dev cluster.
async fn oneshot(cfg: &Path) -> Output {
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(cfg);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: &Output) {
    assert!(output.status.success(), "{}", stderr(output));
}

/// The one `error:` line of a run that failed with `code`, checked to be short and escaped,
/// after checking that no line of stderr is the server's.
fn refused(output: &Output, code: i32) -> String {
    let stderr = stderr(output);
    no_forged_lines(&stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert!(
        errors[0].len() < 1024,
        "an error of {} bytes: {:.300}",
        errors[0].len(),
        errors[0]
    );
    errors[0].to_owned()
}

/// The hostile text's log line never starts a line of its own, and its escape sequences never
/// reach the terminal as they are.
fn no_forged_lines(stderr: &str) {
    assert!(
        !stderr.lines().any(|l| l.starts_with("FORGED")),
        "a forged log line: {stderr:.2000}"
    );
    assert!(
        !stderr.contains("\u{1b}[31m'single'"),
        "the server's escape sequence reached the terminal: {stderr:.2000}"
    );
}

/// `ssh -G -F config host`, run in `cwd` (where the hostile `Match exec` would create its
/// file): OpenSSH's own reading of the configuration, as `name value` lines.
fn ssh_g(config: &Path, host: &str, cwd: &Path) -> Output {
    Command::new(tool("ssh"))
        .arg("-G")
        .arg("-F")
        .arg(config)
        .arg(host)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Whatever keybound wrote, OpenSSH runs nothing reading it: `ssh -G` on the `ssh_config` in
/// `out`, if there is one, creates no [`PWNED`] in `cwd`. Returns what `ssh -G` said.
fn ssh_runs_nothing(out: &Path, cwd: &Path) -> Option<Output> {
    let config = out.join("ssh_config");
    let read = config
        .exists()
        .then(|| ssh_g(&config, "node.dev.keybound.test", cwd));
    assert!(
        !cwd.join(PWNED).exists(),
        "ssh -G ran the cluster's command; ssh_config:\n{:.1500}",
        std::fs::read_to_string(&config).unwrap_or_default()
    );
    read
}

/// The value of `key` in `ssh -G` output.
fn ssh_option<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key} in {output}"))
}

/// The start of the hostile text as a quoted name shows it (`"` escaped too)...
const ESCAPED: &str = r#"evil.example\nMatch exec \"touch keybound-pwned\"\nFORGED  INFO"#;
/// ... and as a message shows it.
const ESCAPED_MESSAGE: &str = r#"evil.example\nMatch exec "touch keybound-pwned"\nFORGED  INFO"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_cluster_name_refuses_the_outputs_and_ssh_runs_nothing() {
    let env = env(None).await;
    let out = env.path("out");
    let cfg = env.proxy_config(&out);
    ok(&oneshot(&cfg).await);
    let before = snapshot(&out);
    let known_hosts = std::fs::read_to_string(out.join("known_hosts")).unwrap();
    let ssh_dir = env.path("ssh-cwd");
    std::fs::create_dir(&ssh_dir).unwrap();

    for (misbehaviour, source) in [
        (
            Misbehaviour::HostileClusterName,
            "the TLS certificate names the cluster \"",
        ),
        (
            Misbehaviour::HostileCaClusterName,
            "a host CA record (cluster_name) names the cluster \"",
        ),
    ] {
        env.cluster.cluster.set_misbehaviour(Some(misbehaviour));
        let output = oneshot(&cfg).await;
        let read = ssh_runs_nothing(&out, &ssh_dir).expect("the previous ssh_config");
        assert!(
            read.status.success(),
            "{misbehaviour:?}: {}",
            String::from_utf8_lossy(&read.stderr)
        );
        let error = refused(&output, 77);
        assert!(error.contains(source), "{misbehaviour:?}: {error}");
        assert!(error.contains(ESCAPED), "{misbehaviour:?}: {error}");
        assert!(
            error.contains("check that proxy_server or auth_server is the Teleport cluster"),
            "{misbehaviour:?}: {error}"
        );
        assert_eq!(
            snapshot(&out),
            before,
            "{misbehaviour:?}: the output changed"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("known_hosts")).unwrap(),
        known_hosts
    );
    // The same cluster, behaving again: the outputs are written again.
    env.cluster.cluster.set_misbehaviour(None);
    ok(&oneshot(&cfg).await);
    assert_ne!(snapshot(&out), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_on_the_clusters_ssh_certificate_is_not_written_back() {
    let env = env(None).await;
    env.cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::HostileCertComment));
    let out = env.path("out");
    ok(&oneshot(&env.proxy_config(&out)).await);
    // The certificate arrived as `type base64 <comment>`; what keybound writes is the
    // certificate alone.
    let cert = std::fs::read_to_string(out.join("key-cert.pub")).unwrap();
    assert_eq!(cert.lines().count(), 1, "{cert:.500}");
    assert_eq!(cert.split_whitespace().count(), 2, "{cert:.500}");
    let identity = std::fs::read_to_string(out.join("identity")).unwrap();
    for line in identity.lines() {
        assert!(
            !line.starts_with("Match") && !line.starts_with("FORGED") && !line.contains("XXXX"),
            "the comment reached the identity file: {line:.200}"
        );
    }
    assert!(identity.contains(cert.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_proxy_address_from_ping_refuses_the_outputs() {
    // Taken whole by a host:port parser, it reaches ssh_config unless refused.
    assert!(!default_hostile_text().contains([':', '/']));
    let auth_port = free_port();
    let env = env(Some(auth_port)).await;
    let out = env.path("out");
    let cfg = env.config(&format!("auth_server: 127.0.0.1:{auth_port}"), &out, "");
    // Auth names no proxy at first: no ssh_config.
    ok(&oneshot(&cfg).await);
    let before = snapshot(&out);
    assert!(!out.join("ssh_config").exists());

    env.cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::HostileProxyAddr));
    let output = oneshot(&cfg).await;
    let ssh_dir = env.path("ssh-cwd");
    std::fs::create_dir(&ssh_dir).unwrap();
    ssh_runs_nothing(&out, &ssh_dir);
    let error = refused(&output, 77);
    assert!(
        error.contains(&format!(
            "Auth's Ping names the proxy public address \"{ESCAPED}"
        )),
        "{error}"
    );
    assert!(error.contains("is not a host:port address"), "{error}");
    assert!(
        error.contains("the identity outputs were not written"),
        "{error}"
    );
    assert_eq!(snapshot(&out), before, "the output changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_config_quotes_the_output_directory_for_openssh_and_the_shell() {
    let env = env(None).await;
    // Spaces, a single quote, a shell variable, an ssh `%` token, a comment sign.
    let out = env.path("out dir 'q' $HOME %h #x");
    // The ProxyCommand's program (`ssh_proxy_command_binary`), as tricky: a stand-in `tbot`
    // that records the words it receives (keybound's own path is the default).
    let bin = env.path("bin it's %p $PATH");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("tbot");
    let cfg = env.config(
        &format!("proxy_server: {}", env.cluster.proxy_addr()),
        &out,
        &format!(
            "    ssh_proxy_command_binary: {}\n",
            yaml(&script.display().to_string())
        ),
    );
    ok(&oneshot(&cfg).await);
    let dir = out.display().to_string();

    let ssh_dir = env.path("ssh-cwd");
    std::fs::create_dir(&ssh_dir).unwrap();
    let read = ssh_g(&out.join("ssh_config"), "node.dev.keybound.test", &ssh_dir);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let read = String::from_utf8(read.stdout).unwrap();
    assert_eq!(
        ssh_option(&read, "userknownhostsfile"),
        format!("{dir}/known_hosts")
    );
    // `ssh -G` shows these two before ssh expands their `%` tokens (`%%` is a literal `%`); the
    // connection below shows them expanded.
    let in_config = dir.replace('%', "%%");
    assert_eq!(
        ssh_option(&read, "identityfile"),
        format!("{in_config}/key")
    );
    assert_eq!(
        ssh_option(&read, "certificatefile"),
        format!("{in_config}/key-cert.pub")
    );
    assert_eq!(ssh_option(&read, "port"), "3022");

    // The ProxyCommand as ssh runs it (through `exec` under the shell).
    let words = env.path("tbot-words");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor w in \"$@\"; do printf '%s\\n' \"$w\"; done > '{}'\n",
            words.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let connect = Command::new(tool("ssh"))
        .arg("-F")
        .arg(out.join("ssh_config"))
        .args(["-v", "-o", "BatchMode=yes", "-l", "someone"])
        .args(["node.dev.keybound.test", "true"])
        .current_dir(&ssh_dir)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&connect.stderr);
    assert!(
        !connect.status.success(),
        "the stand-in tbot connects nothing"
    );
    for line in [
        format!("identity file {dir}/key type"),
        format!("certificate file {dir}/key-cert.pub type"),
    ] {
        assert!(log.contains(&line), "{line}: {log}");
    }
    let words = std::fs::read_to_string(&words).unwrap_or_else(|e| {
        panic!(
            "the ProxyCommand did not run tbot ({e}): {}",
            String::from_utf8_lossy(&connect.stderr)
        )
    });
    assert_eq!(
        words.lines().collect::<Vec<_>>(),
        [
            "ssh-proxy-command".to_owned(),
            format!("--destination-dir={dir}"),
            format!("--proxy-server={}", env.cluster.proxy_addr()),
            "--cluster=dev.keybound.test".to_owned(),
            "--tls-routing".to_owned(),
            "--connection-upgrade".to_owned(),
            "--resume".to_owned(),
            "--user=someone".to_owned(),
            "--host=node.dev.keybound.test".to_owned(),
            "--port=3022".to_owned(),
        ]
    );
    assert!(!ssh_dir.join(PWNED).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_directory_ssh_config_cannot_name_is_refused_before_joining() {
    let env = env(None).await;
    let out = env.path("a\"b");
    let cfg = env.proxy_config(&out);
    let error = refused(&oneshot(&cfg).await, 78);
    assert!(
        error.contains(r#"holds the character "\"", which OpenSSH's ssh_config cannot quote"#),
        "{error}"
    );
    assert!(error.contains("ssh_config: off"), "{error}");
    assert_eq!(env.cluster.cluster.solutions_received(), 0);
    assert!(!out.exists());
    // The fix the error names.
    let cfg = env.config(
        &format!("proxy_server: {}", env.cluster.proxy_addr()),
        &out,
        "    ssh_config: off\n",
    );
    ok(&oneshot(&cfg).await);
    assert!(out.join("tlscert").exists() && !out.join("ssh_config").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_text_reaches_logs_and_errors_escaped_and_bounded() {
    let hostile = default_hostile_text();
    assert!(hostile.len() > 6 * 1024);
    let auth_port = free_port();
    let env = env(Some(auth_port)).await;
    env.cluster
        .cluster
        .set_misbehaviour(Some(Misbehaviour::HostileStatus));

    // Through the proxy: JoinService.Join's refusal is the fallback reason, logged; the join
    // goes on with the legacy RPC, and GenerateUserCerts' refusal ends the run.
    let out = env.path("out");
    let output = oneshot(&env.proxy_config(&out)).await;
    let stderr = stderr(&output);
    let error = refused(&output, 77);
    let fallback = stderr
        .lines()
        .find(|l| l.contains("falling back to the legacy RPC"))
        .unwrap_or_else(|| panic!("no fallback line: {stderr:.2000}"));
    for line in [fallback, error.as_str()] {
        assert!(line.contains(ESCAPED_MESSAGE), "{line:.600}");
        assert!(line.contains(r"\u{1b}[31m'single'"), "{line:.600}");
        assert!(line.contains("more bytes)"), "{line:.600}");
        assert!(line.len() < 1024, "a line of {} bytes", line.len());
    }
    assert!(
        error.contains("the cluster refused certificates for roles [access]: evil.example"),
        "{error}"
    );
    assert!(
        stderr.len() < 4 * 1024,
        "{} bytes of stderr for a {} byte message",
        stderr.len(),
        hostile.len()
    );
    assert!(!out.join("tlscert").exists());

    // Straight to Auth, without an identity (so no authenticated rejoin): the fallback reason is
    // the error.
    std::fs::remove_dir_all(env.path("storage")).unwrap();
    let cfg = env.config(&format!("auth_server: 127.0.0.1:{auth_port}"), &out, "");
    let output = oneshot(&cfg).await;
    let error = refused(&output, 77);
    assert!(
        error.contains(&format!(
            "does not serve JoinService.Join (UNIMPLEMENTED: {ESCAPED_MESSAGE}"
        )),
        "{error}"
    );
    assert!(error.contains("more bytes)"), "{error}");
    assert_eq!(env.cluster.cluster.solutions_received(), 1);
}
