//! `keybound doctor` as a user runs it, against a dev cluster: a good setup passes without a
//! signature, a join or a file written; each broken part is one FAIL line naming the fix. The
//! PKCS#11 cases (a missing key, a wrong PIN) are in `pkcs11.rs`, beside the SoftHSM helper.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;

use crate::cluster::{ca_file, cluster_for};
use crate::support::{free_port, keybound, stdout, tool};

/// A key file, a dev cluster for it, and a tbot.yaml with directory storage and one output.
struct Setup {
    dir: tempfile::TempDir,
    cluster: keybound_devcluster::DevCluster,
    key: PathBuf,
    ca: PathBuf,
    cfg: PathBuf,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = crate::cluster::key_file(dir.path(), &signer);
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    static_private_key_path: {}\nstorage:\n  type: directory\n  path: {}\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy_addr(),
            ca.display(),
            key.display(),
            dir.path().join("storage").display(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    Setup {
        dir,
        cluster,
        key,
        ca,
        cfg,
    }
}

/// Runs a blocking command off the runtime that serves the dev cluster.
pub(crate) async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The one FAIL line of a doctor run that failed (exit 1), and everything the run printed on
/// stdout and stderr (to look for secrets in).
pub(crate) fn single_failure(output: &Output) -> (String, String) {
    let text = stdout(output);
    let printed = format!("{text}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{printed}");
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{printed}");
    (fails[0].to_owned(), printed)
}

/// Makes `cmd` (a keybound command) `keybound doctor` with flags only, no config file: token `t`
/// at `proxy`, memory storage.
pub(crate) fn doctor_on(mut cmd: Command, proxy: &str) -> Command {
    cmd.args(["doctor", "--join-method", "bound_keypair", "--token", "t"])
        .args(["--storage", "memory://", "--proxy-server", proxy]);
    cmd
}

/// `keybound doctor` with flags only, on `proxy`, with the key file `key`.
fn doctor_flags(proxy: &str, key: &Path) -> Command {
    let mut cmd = doctor_on(keybound(), proxy);
    cmd.arg("--static-key-path").arg(key);
    cmd
}

/// The report's lines, after checking that nothing panicked and the exit code matches the FAIL
/// lines (1 with any, else 0).
fn lines(output: &Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let text = stdout(output);
    let failed = text.lines().filter(|l| l.starts_with("FAIL ")).count();
    if failed == 0 {
        assert!(output.status.success(), "{text}\n{stderr}");
    } else {
        assert_eq!(output.status.code(), Some(1), "{text}\n{stderr}");
        assert!(stderr.contains(&format!("error: {failed} of ")), "{stderr}");
    }
    text.lines().map(str::to_owned).collect()
}

fn line<'a>(lines: &'a [String], start: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{}", lines.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_setup_passes_every_check_without_signing_joining_or_writing() {
    let s = setup().await;
    let mut cmd = keybound();
    cmd.args(["doctor", "-c"]).arg(&s.cfg);
    let report = lines(&run(cmd).await);
    assert!(
        report.iter().all(|l| l.starts_with("ok   ")),
        "{}",
        report.join("\n")
    );
    for expected in [
        "ok   config  ",
        "ok   storage ",
        "ok   output  ",
        "ok   signer  file ",
        "ok   signer  not attestable: a file or environment key cannot be attested",
        "ok   cluster TLS: certificate verified by CA bundle ",
        "ok   cluster ALPN teleport-proxy-grpc",
        "ok   cluster /webapi/find: Teleport 18.2.10, signature algorithm suite balanced-v1",
        "ok   cluster suite balanced-v1: the bound key's type (ed25519)",
        "ok   clock   this machine's clock is ",
    ] {
        line(&report, expected);
    }
    // Read-only: no challenge answered, no join, no storage or output directory made.
    assert_eq!(s.cluster.cluster.solutions_received(), 0);
    assert_eq!(s.cluster.cluster.joins_completed(), 0);
    assert!(!s.dir.path().join("storage").exists());
    assert!(!s.dir.path().join("out").exists());

    // After a join, doctor sees the stored identity and still changes nothing.
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&s.cfg);
    let started = run(cmd).await;
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let mut cmd = keybound();
    cmd.args(["doctor", "-c"]).arg(&s.cfg);
    let report = lines(&run(cmd).await);
    let storage = line(&report, "ok   storage ");
    assert!(
        storage.contains("bot identity valid until") && storage.contains("authenticated rejoin"),
        "{storage}"
    );
    assert_eq!(s.cluster.cluster.solutions_received(), 1);
    assert_eq!(s.cluster.cluster.joins_completed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_proxy_is_one_fail_line_and_the_web_checks_are_skipped() {
    let s = setup().await;
    let proxy = format!("127.0.0.1:{}", free_port());
    let mut cmd = keybound();
    cmd.args(["doctor", "-c"])
        .arg(&s.cfg)
        .args(["--proxy-server", &proxy]);
    let report = lines(&run(cmd).await);
    let fail = line(&report, "FAIL cluster ");
    assert!(
        fail.contains(&format!("cannot reach {proxy}: Connection refused"))
            && fail.contains(" — fix: check proxy_server"),
        "{fail}"
    );
    line(&report, "ok   signer  ");
    line(&report, "skip cluster /webapi/find, suite and clock");
}

/// Lifetimes that do not fit are warnings (as tbot warns), not failures, each with its own fix:
/// shorter than the renewal interval (the long-running agent only: tbot skips that check for
/// `--oneshot`), or over Teleport's 24 h (`--oneshot` too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_that_do_not_fit_are_warnings_each_with_its_fix() {
    let s = setup().await;
    for (ttl, oneshot, expected) in [
        (
            "10m",
            false,
            Some((
                "credential_ttl 10m is shorter than renewal_interval 20m",
                "fix: make credential_ttl longer than renewal_interval, or renewal_interval shorter",
            )),
        ),
        ("10m", true, None),
        (
            "30h",
            false,
            Some((
                "credential_ttl 1day 6h is over 24h",
                "fix: set credential_ttl (or --certificate-ttl) to 24h or less",
            )),
        ),
        (
            "30h",
            true,
            Some((
                "credential_ttl 1day 6h is over 24h",
                "fix: set credential_ttl (or --certificate-ttl) to 24h or less",
            )),
        ),
    ] {
        let mut cmd = keybound();
        cmd.args(["doctor", "-c"]).arg(&s.cfg);
        cmd.args(["--certificate-ttl", ttl, "--renewal-interval", "20m"]);
        if oneshot {
            cmd.arg("--oneshot");
        }
        let report = lines(&run(cmd).await);
        let warns: Vec<&String> = report.iter().filter(|l| l.starts_with("warn ")).collect();
        match expected {
            None => assert!(warns.is_empty(), "{ttl} {oneshot}: {report:?}"),
            Some((problem, fix)) => {
                assert_eq!(warns.len(), 1, "{ttl} {oneshot}: {report:?}");
                assert!(warns[0].starts_with("warn config  "), "{}", warns[0]);
                assert!(
                    warns[0].contains(problem) && warns[0].ends_with(fix),
                    "{ttl} {oneshot}: {}",
                    warns[0]
                );
            }
        }
    }
}

/// `start --oneshot` with a lifetime over 24 h warns (tbot does, `--oneshot` or not), and gets
/// the 24 h the cluster issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_over_24h_is_a_warning_in_oneshot_too() {
    let s = setup().await;
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(&s.cfg).args([
        "--certificate-ttl",
        "30h",
        "--renewal-interval",
        "20m",
    ]);
    let output = run(cmd).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("credential_ttl 1day 6h is over 24h")
            && warnings[0]
                .contains("fix: set credential_ttl (or --certificate-ttl) to 24h or less"),
        "{stderr}"
    );
    let summary = stdout(&output);
    assert!(
        summary.contains("(in 1day)") || summary.contains("(in 23h 59m"),
        "24 h, not 30: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_says_which_trust_failed_and_what_to_pass() {
    let s = setup().await;
    // The system store does not know the dev cluster's CA.
    let report = lines(&run(doctor_flags(&s.cluster.proxy_addr(), &s.key)).await);
    line(
        &report,
        &format!("ok   cluster {} reachable", s.cluster.proxy_addr()),
    );
    let fail = line(&report, "FAIL cluster TLS: ");
    assert!(
        fail.contains("not trusted by the system trust store")
            && fail.contains("fix: pass --ca-path"),
        "{fail}"
    );
    line(&report, "skip cluster ");

    // Another cluster's CA bundle: the fix names the bundle.
    let other_dir = tempfile::tempdir().unwrap();
    let other = cluster_for(
        SoftSigner::generate(Algorithm::Ed25519)
            .unwrap()
            .public_key(),
        |_| {},
    )
    .await;
    let other_ca = ca_file(&other, other_dir.path());
    let mut cmd = doctor_flags(&s.cluster.proxy_addr(), &s.key);
    cmd.arg("--ca-path").arg(&other_ca);
    let report = lines(&run(cmd).await);
    let fail = line(&report, "FAIL cluster TLS: ");
    assert!(
        fail.contains(&format!("not trusted by CA bundle {}", other_ca.display()))
            && fail.contains("must hold the CA that signed the proxy's certificate"),
        "{fail}"
    );

    // With the right bundle, the same flags pass.
    let mut cmd = doctor_flags(&s.cluster.proxy_addr(), &s.key);
    cmd.arg("--ca-path").arg(&s.ca);
    let report = lines(&run(cmd).await);
    assert!(report.iter().all(|l| l.starts_with("ok   ")), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_fails_the_signer_check_and_the_cluster_is_still_checked() {
    let s = setup().await;
    let missing = s.dir.path().join("no-such-key.pem");
    let mut cmd = doctor_flags(&s.cluster.proxy_addr(), &missing);
    cmd.arg("--ca-path").arg(&s.ca);
    let report = lines(&run(cmd).await);
    let fail = line(&report, "FAIL signer  ");
    assert!(
        fail.contains(&missing.display().to_string()) && fail.contains("No such file"),
        "{fail}"
    );
    line(&report, "ok   cluster /webapi/find: ");
    line(&report, "ok   clock   ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_named_and_nothing_else_is_tried() {
    let s = setup().await;
    std::fs::write(
        &s.cfg,
        "version: v2\nproxy_server: example.com:443\nonboarding:\n  join_method: bound_keypair\n  token: t\n  tokne: typo\n",
    )
    .unwrap();
    let mut cmd = keybound();
    cmd.args(["doctor", "-c"]).arg(&s.cfg);
    let report = lines(&run(cmd).await);
    let fail = line(&report, "FAIL config  ");
    assert!(fail.contains("unknown field `tokne`"), "{fail}");
    // The file is named once, after the area: "config" is not said twice.
    assert!(
        fail.starts_with(&format!("FAIL config  {}:", s.cfg.display())),
        "{fail}"
    );
    line(&report, "skip signer  ");
    line(&report, "skip cluster ");
}

/// A real clock offset, made with libfaketime: the proxy's HTTP Date header shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_measured_against_the_proxy() {
    let s = setup().await;
    let doctor = |offset: &str| {
        let mut cmd = Command::new(tool("faketime"));
        cmd.args(["-f", offset])
            .arg(env!("CARGO_BIN_EXE_keybound"))
            .args(["doctor", "-c"])
            .arg(&s.cfg)
            .env_remove("TBOT_BOUND_KEYPAIR_STATIC_KEY")
            .env_remove("RUST_LOG");
        cmd
    };
    let report = lines(&run(doctor("+10m")).await);
    let fail = line(&report, "FAIL clock   ");
    assert!(
        fail.contains("s ahead of the proxy's; keybound refuses challenges more than 300 s off")
            && fail.contains("fix: synchronise the clock"),
        "{fail}"
    );
    let report = lines(&run(doctor("+2m")).await);
    let warn = line(&report, "warn clock   ");
    assert!(warn.contains("s ahead of the proxy's"), "{warn}");
}

/// A TLS server that is not a Teleport Proxy (openssl s_server, no ALPN): TCP and TLS pass, ALPN
/// fails with the fix, and the web checks are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_that_is_not_a_proxy_fails_the_alpn_check() {
    let s = setup().await;
    let other = crate::support::FindServer::start("{}");
    let mut cmd = doctor_flags(&other.addr(), &s.key);
    cmd.arg("--ca-path").arg(&other.ca);
    let report = lines(&run(cmd).await);
    line(&report, &format!("ok   cluster {} reachable", other.addr()));
    line(
        &report,
        "ok   cluster TLS: certificate verified by CA bundle ",
    );
    let fail = line(&report, "FAIL cluster ALPN: ");
    assert!(
        fail.contains("instead of teleport-proxy-grpc")
            && fail.contains("fix: point proxy_server at the Teleport Proxy itself"),
        "{fail}"
    );
    line(&report, "skip cluster /webapi/find");
}

/// `auth_server` on Auth's own port: TLS to Auth with ALPN h2; Auth serves no web API, so the
/// web checks are skipped with the reason, and the report passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_server_is_checked_over_auths_own_tls() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = crate::cluster::key_file(dir.path(), &signer);
    let auth_port = free_port();
    let cluster = cluster_for(signer.public_key(), |c| {
        c.auth_listen = Some(([127, 0, 0, 1], auth_port).into());
    })
    .await;
    let ca = ca_file(&cluster, dir.path());
    let mut cmd = keybound();
    cmd.args(["doctor", "--join-method", "bound_keypair", "--token", "t"])
        .args([
            "--storage",
            "memory://",
            "-a",
            &format!("127.0.0.1:{auth_port}"),
        ])
        .arg("--static-key-path")
        .arg(&key)
        .arg("--ca-path")
        .arg(&ca);
    let report = lines(&run(cmd).await);
    line(
        &report,
        &format!("ok   config  flags: auth 127.0.0.1:{auth_port}"),
    );
    line(&report, "ok   cluster ALPN h2 (Auth's gRPC) accepted");
    line(
        &report,
        "skip cluster /webapi/find, suite and clock: 127.0.0.1:",
    );
    assert_eq!(cluster.cluster.solutions_received(), 0);
}
