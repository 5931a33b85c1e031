//! `keybound doctor`: read-only checks of everything `keybound start` depends on, one line each.
//!
//! The checks reuse what `start` runs ([`crate::cli::Start::effective_config`], [`crate::config::Config::route`],
//! [`crate::signer::open_signer`], [`crate::transport`], [`crate::webapi::find`]), so a
//! passing doctor means `start` gets past the same steps. Nothing here joins, signs anything for
//! the cluster, writes storage or outputs, or takes the storage lock (a running agent keeps it):
//! opening a PKCS#11 key logs in once with the configured PIN, exactly as `start` would, and a
//! refused PIN is reported, never retried. A TPM checks a key's authorization value only when the
//! key is used, so a TPM key signs one fixed local message: one try, never repeated.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use keybound_signer::{ErrorKind, Signer};

use crate::cli::Start;
use crate::config::{Config, Destination, HostPort};
use crate::tls::{Trust, client_config};
use crate::transport;
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// How a check came out.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// `start` would fail here.
    Fail,
    /// Not checked, because an earlier check failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Check {
    /// The outcome.
    pub status: Status,
    /// `config`, `storage`, `signer`, `cluster` or `clock`.
    pub area: &'static str,
    /// What was found.
    pub what: String,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Check {
    fn new(status: Status, area: &'static str, what: impl Into<String>) -> Self {
        Self {
            status,
            area,
            what: what.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:<7} {}",
            self.status.label(),
            self.area,
            self.what
        )?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Prints each check as it completes, and remembers whether any failed.
struct Report<'a> {
    out: &'a mut dyn Write,
    failed: usize,
    total: usize,
}

impl Report<'_> {
    fn add(&mut self, check: Check) -> Result<(), Failure> {
        self.total += 1;
        if check.status == Status::Fail {
            self.failed += 1;
        }
        writeln!(self.out, "{check}")
            .and_then(|()| self.out.flush())
            .map_err(|e| Failure::new(ExitKind::Software, anyhow!("cannot write: {e}")))
    }
}

/// Runs every check and prints one line per check to `out`. Fails (exit 1) when any check did.
pub async fn run(args: &Start, out: &mut dyn Write) -> Result<(), Failure> {
    let mut report = Report {
        out,
        failed: 0,
        total: 0,
    };
    checks(args, &mut report).await?;
    if report.failed > 0 {
        return Err(Failure::new(
            ExitKind::General,
            anyhow!(
                "{} of {} checks failed; fix the FAIL lines above",
                report.failed,
                report.total
            ),
        ));
    }
    Ok(())
}

async fn checks(args: &Start, report: &mut Report<'_>) -> Result<(), Failure> {
    // The configuration: nothing else can be checked without it.
    let config = match args.effective_config() {
        Ok(config) => config,
        Err(failure) => {
            report.add(Check::new(Status::Fail, "config", failure.to_string()))?;
            for area in ["signer", "cluster"] {
                report.add(Check::new(
                    Status::Skip,
                    area,
                    "not checked: the configuration did not load",
                ))?;
            }
            return Ok(());
        }
    };
    let source = match &args.config {
        Some(path) => path.display().to_string(),
        None => "flags".to_owned(),
    };
    let route = config.route();
    report.add(config_check(&source, &config, route.as_ref().ok()))?;
    if !config.oneshot {
        for warning in config.lifetime_warnings() {
            report.add(
                Check::new(Status::Warn, "config", warning)
                    .fix("make credential_ttl longer than renewal_interval, and at most 24h"),
            )?;
        }
    }
    for check in destination_checks(&config) {
        report.add(check)?;
    }

    // The signer: opened as start opens it (one login, never a signature).
    let signer = open_signer(&config);
    let algorithm = signer.as_ref().ok().map(|s| s.algorithm());
    match signer {
        Ok(signer) => {
            report.add(signer_check(&config, &*signer))?;
            if signer.backend() == "tpm" {
                report.add(tpm_auth_check(&*signer))?;
            }
        }
        Err(check) => report.add(check)?,
    }

    // The cluster.
    let (proxy, direct) = match route {
        Ok(route) => route,
        Err(failure) => {
            return report.add(Check::new(Status::Fail, "cluster", failure.to_string()));
        }
    };
    let trust = config.trust();
    if trust == Trust::Insecure {
        report.add(
            Check::new(
                Status::Warn,
                "cluster",
                "TLS verification is off (insecure); anyone on the path can pose as the cluster",
            )
            .fix("remove insecure / --insecure and give the cluster's CA with --ca-path"),
        )?;
    }
    let connected = connection_checks(&proxy, direct, &trust, report).await?;
    if direct {
        report.add(Check::new(
            Status::Skip,
            "cluster",
            format!(
                "/webapi/find, suite and clock: {proxy} is Auth's own port, which serves no web API"
            ),
        ))?;
        return Ok(());
    }
    if !connected {
        report.add(Check::new(
            Status::Skip,
            "cluster",
            "/webapi/find, suite and clock: not checked, the proxy could not be reached",
        ))?;
        return Ok(());
    }
    let found = match client_config(&trust, &[b"http/1.1"]) {
        Ok(tls) => crate::webapi::find(&proxy, tls).await,
        Err(e) => Err(e),
    };
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            return report.add(
                Check::new(Status::Fail, "cluster", format!("/webapi/find: {e:#}")).fix(
                    "proxy_server must be the Teleport Proxy's web address (host:443 or host:3080)",
                ),
            );
        }
    };
    report.add(Check::new(
        Status::Ok,
        "cluster",
        format!(
            "/webapi/find: Teleport {}, signature algorithm suite {}",
            crate::untrusted::name(
                found
                    .server_version
                    .as_deref()
                    .unwrap_or("(version not given)")
            ),
            found.suite
        ),
    ))?;
    if let Some(algorithm) = algorithm {
        report.add(suite_check(found.suite, algorithm))?;
    }
    report.add(match found.date {
        Some(theirs) => clock_check(SystemTime::now(), theirs),
        None => Check::new(
            Status::Warn,
            "clock",
            "the proxy sent no HTTP Date header, so the clocks could not be compared",
        )
        .fix("keep this machine's clock synchronised (NTP, systemd-timesyncd)"),
    })
}

fn config_check(source: &str, config: &Config, route: Option<&(HostPort, bool)>) -> Check {
    let cluster = match route {
        Some((addr, false)) => format!("proxy {addr}"),
        Some((addr, true)) => format!("auth {addr}"),
        None => "no cluster address".to_owned(),
    };
    let outputs = match config.outputs.len() {
        1 => "1 identity output".to_owned(),
        n => format!("{n} identity outputs"),
    };
    Check::new(
        Status::Ok,
        "config",
        format!(
            "{source}: {cluster}, join method bound_keypair, {outputs}, credential_ttl {}, \
             renewal_interval {}",
            humantime::format_duration(config.credential_ttl),
            humantime::format_duration(config.renewal_interval)
        ),
    )
}

/// Storage and each directory output: present (or creatable by `start`) and writable. An
/// identity already in storage is described, since it decides whether the next join uses a
/// recovery.
fn destination_checks(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Destination::Directory { path, .. } = &config.storage {
        let mut check = directory_check("storage", path);
        if check.status == Status::Ok && path.is_dir() {
            check = stored_identity(path, check);
        }
        checks.push(check);
    }
    for output in &config.outputs {
        if let Destination::Directory { path, .. } = output.destination() {
            checks.push(directory_check("output", path));
        }
    }
    checks
}

fn directory_check(area: &'static str, path: &Path) -> Check {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::new(
            Status::Ok,
            area,
            format!(
                "{} does not exist yet; start creates it (mode 0700)",
                path.display()
            ),
        ),
        Err(e) => Check::new(Status::Fail, area, format!("{}: {e}", path.display()))
            .fix("make the directory readable by the user keybound runs as"),
        Ok(meta) if !meta.is_dir() => Check::new(
            Status::Fail,
            area,
            format!("{} is not a directory", path.display()),
        )
        .fix("point it at a directory"),
        // An unnamed temporary file (O_TMPFILE) proves the directory writable and leaves nothing.
        Ok(_) => match tempfile::tempfile_in(path) {
            Ok(_) => Check::new(Status::Ok, area, format!("{} is writable", path.display())),
            Err(e) => Check::new(
                Status::Fail,
                area,
                format!("{} is not writable: {e}", path.display()),
            )
            .fix(
                "give the user keybound runs as write access (under systemd: ReadWritePaths= \
                 or StateDirectory=)",
            ),
        },
    }
}

fn stored_identity(path: &Path, writable: Check) -> Check {
    let what = writable.what;
    match crate::identity::Identity::load(path) {
        Ok(None) => Check::new(
            Status::Ok,
            "storage",
            format!("{what}; no bot identity yet (the first start joins with the static key)"),
        ),
        Ok(Some(identity)) => {
            let expires = keybound_teleport::time::format_time(identity.info.not_after);
            if identity.info.not_after > SystemTime::now() {
                Check::new(
                    Status::Ok,
                    "storage",
                    format!(
                        "{what}; bot identity valid until {expires} (the next start is an \
                         authenticated rejoin)"
                    ),
                )
            } else {
                Check::new(
                    Status::Warn,
                    "storage",
                    format!(
                        "{what}; the bot identity expired at {expires}: the next start joins \
                         with the static key and uses one of the token's recoveries"
                    ),
                )
                .fix("run the agent long-lived (keybound start without --oneshot) so it renews in time")
            }
        }
        Err(e) => Check::new(
            Status::Warn,
            "storage",
            format!("{what}; its identity is unusable ({e:#}), so start joins afresh"),
        ),
    }
}

fn open_signer(config: &Config) -> Result<std::sync::Arc<dyn Signer>, Check> {
    let signer_config = config.onboarding.signer_config().map_err(|e| {
        Check::new(
            Status::Fail,
            "signer",
            format!("onboarding.bound_keypair: {e}"),
        )
    })?;
    crate::signer::open_signer(&signer_config).map_err(|e| {
        let check = Check::new(Status::Fail, "signer", e.to_string());
        match (e.kind(), e.backend()) {
            (ErrorKind::KeyNotFound, "pkcs11") => check.fix(
                "`keybound signer list --pkcs11-module MODULE --pin-source SOURCE` prints the URI \
                 of every key on the module's tokens",
            ),
            (ErrorKind::Auth, _) => check.fix(
                "correct the PIN that pin_source names; doctor tried it once, as start would, \
                 and does not retry",
            ),
            (ErrorKind::Unavailable, _) => {
                check.fix("check that the device is present and this user may open it")
            }
            _ => check,
        }
    })
}

fn signer_check(config: &Config, signer: &dyn Signer) -> Check {
    let source = config
        .onboarding
        .signer_config()
        .map(|c| crate::signer::key_source(&c, signer.backend()))
        .unwrap_or_else(|_| signer.backend().to_owned());
    Check::new(
        Status::Ok,
        "signer",
        format!(
            "{source}: {} key {}, {}",
            signer.algorithm(),
            signer.public_key().fingerprint(),
            signer.protection()
        ),
    )
}

/// What doctor signs with a TPM key. Not a JWS signing input (no `.`), so its signature answers
/// no challenge.
const TPM_AUTH_CHECK: &[u8] =
    b"keybound doctor: does the TPM accept this key's authorization value";

/// Whether the TPM accepts the key's authorization value. Opening a TPM key only hands the value
/// to the TPM library; the TPM checks it when the key is used, so a wrong value would otherwise
/// pass doctor and fail the first join. One signature of a fixed local message, checked against
/// the key's public part: one try, and the signer never repeats a refused one (each refusal
/// counts towards the TPM's dictionary-attack lockout).
fn tpm_auth_check(signer: &dyn Signer) -> Check {
    let signature = match signer.sign(TPM_AUTH_CHECK) {
        Ok(signature) => signature,
        Err(e) => {
            let check = Check::new(Status::Fail, "signer", e.to_string());
            return match e.kind() {
                // The lockout message itself says what to do (wait, or clear it).
                ErrorKind::Auth if e.message().contains("dictionary-attack lockout (") => check,
                ErrorKind::Auth => check.fix(
                    "correct the authorization value that pin_source names (or remove pin_source \
                     if the key has none); doctor tried it once, with one test signature",
                ),
                _ => check.fix("check that the TPM is present and this user may open it"),
            };
        }
    };
    match signer
        .public_key()
        .verify(TPM_AUTH_CHECK, signature.as_bytes())
    {
        Ok(()) => Check::new(
            Status::Ok,
            "signer",
            "the TPM accepts the key's authorization value (one test signature of a fixed local \
             message, verified with the key's public part)",
        ),
        Err(e) => Check::new(
            Status::Fail,
            "signer",
            format!("the TPM's test signature does not verify with the key's public part: {e}"),
        )
        .fix("the key at this handle or file is not the key keybound read; make the key again"),
    }
}

/// TCP, TLS and ALPN to the address a join dials, with the trust a join uses. Returns whether
/// the connection came up.
async fn connection_checks(
    addr: &HostPort,
    direct: bool,
    trust: &Trust,
    report: &mut Report<'_>,
) -> Result<bool, Failure> {
    let result = if direct {
        match client_config(trust, &[transport::ALPN_H2]) {
            Ok(tls) => transport::connect_with(addr, tls, transport::Dial::auth())
                .await
                .map_err(ConnectFailure::from_transport),
            Err(e) => Err(ConnectFailure::Trust(format!("{e:#}"))),
        }
    } else {
        match client_config(trust, &[transport::ALPN_PROXY_GRPC, transport::ALPN_H2]) {
            Ok(tls) => transport::connect(addr, tls)
                .await
                .map_err(ConnectFailure::from_transport),
            Err(e) => Err(ConnectFailure::Trust(format!("{e:#}"))),
        }
    };
    let trusted_by = match trust {
        Trust::System => "the system trust store".to_owned(),
        Trust::Bundle(path) => format!("CA bundle {}", path.display()),
        Trust::Insecure => "nobody: not verified (insecure)".to_owned(),
    };
    let alpn = if direct {
        "ALPN h2 (Auth's gRPC)"
    } else {
        "ALPN teleport-proxy-grpc (the Proxy's join service)"
    };
    let reached = Check::new(Status::Ok, "cluster", format!("{addr} reachable (TCP)"));
    let tls_ok = Check::new(
        Status::Ok,
        "cluster",
        format!("TLS: certificate verified by {trusted_by}"),
    );
    let checks = match result {
        Ok(_channel) => vec![
            reached,
            tls_ok,
            Check::new(Status::Ok, "cluster", format!("{alpn} accepted")),
        ],
        Err(ConnectFailure::Trust(e)) => vec![
            Check::new(Status::Fail, "cluster", format!("TLS: {e}")).fix(
                "give onboarding.ca_path / --ca-path a readable PEM bundle of the cluster's CA",
            ),
        ],
        Err(ConnectFailure::Reach(e)) => vec![
            Check::new(Status::Fail, "cluster", format!("cannot reach {addr}: {e}")).fix(
                "check proxy_server (the Proxy's web address, host:443 or host:3080), that the \
                 Proxy is up, and firewalls on the way",
            ),
        ],
        Err(ConnectFailure::Untrusted(e)) => vec![
            reached,
            Check::new(
                Status::Fail,
                "cluster",
                format!("TLS: certificate not trusted by {trusted_by}: {e}"),
            )
            .fix(match trust {
                Trust::Bundle(path) => format!(
                    "{} must hold the CA that signed the proxy's certificate (a rebuilt cluster \
                     has a new CA: fetch it again)",
                    path.display()
                ),
                _ => "pass --ca-path (onboarding.ca_path) with the CA bundle of a proxy that uses \
                      a private CA"
                    .to_owned(),
            }),
        ],
        Err(ConnectFailure::Time(e)) => vec![
            reached,
            Check::new(Status::Fail, "cluster", format!("TLS: {e}")).fix(
                "check this machine's clock (timedatectl; the certificate's validity does not \
                 include its time), or have the cluster's admin renew an expired certificate",
            ),
        ],
        Err(ConnectFailure::Tls(e)) => vec![
            reached,
            Check::new(Status::Fail, "cluster", format!("TLS: {e}"))
                .fix("check that proxy_server is a TLS endpoint of the Teleport Proxy"),
        ],
        Err(ConnectFailure::Alpn(e)) => vec![
            reached,
            tls_ok,
            Check::new(Status::Fail, "cluster", format!("ALPN: {e}")).fix(
                "point proxy_server at the Teleport Proxy itself; a load balancer in front of it \
                 must pass TLS through (no termination) so that ALPN reaches the Proxy",
            ),
        ],
    };
    let connected = checks.iter().all(|c| c.status == Status::Ok);
    for check in checks {
        report.add(check)?;
    }
    Ok(connected)
}

/// Why a connection did not come up, sorted by the step that failed.
enum ConnectFailure {
    /// The trust settings themselves (an unreadable CA bundle).
    Trust(String),
    /// TCP: refused, timed out, name not resolved.
    Reach(String),
    /// TLS: the certificate is not trusted.
    Untrusted(String),
    /// TLS: the certificate is not valid at this machine's time.
    Time(String),
    /// TLS: anything else.
    Tls(String),
    /// The server did not pick the ALPN protocol a join needs.
    Alpn(String),
}

impl ConnectFailure {
    fn from_transport(error: tonic::transport::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Self::tls(tls);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return Self::tls(tls);
                }
                let text = io.to_string();
                if text.contains("chose ALPN") {
                    return Self::Alpn(text);
                }
                return Self::Reach(text);
            }
            source = e.source();
        }
        Self::Reach(transport::describe(String::new(), &error))
    }

    fn tls(error: &rustls::Error) -> Self {
        use rustls::CertificateError as E;
        match error {
            rustls::Error::InvalidCertificate(
                E::Expired
                | E::ExpiredContext { .. }
                | E::NotValidYet
                | E::NotValidYetContext { .. },
            ) => Self::Time(error.to_string()),
            rustls::Error::InvalidCertificate(_) => Self::Untrusted(error.to_string()),
            _ => Self::Tls(error.to_string()),
        }
    }
}

/// Whether the key type is the one the cluster's suite calls for. Auth compares the bound key
/// with the token's `initial_public_key` and, in the source read for keybound, checks no key type
/// against the suite (docs/teleport-source-notes.md, Q10): a mismatch is a warning.
fn suite_check(suite: Suite, algorithm: keybound_signer::Algorithm) -> Check {
    let expected = suite.bound_key_algorithm();
    if expected == algorithm {
        Check::new(
            Status::Ok,
            "cluster",
            format!("suite {suite}: the bound key's type ({algorithm}) is the one this suite uses"),
        )
    } else {
        Check::new(
            Status::Warn,
            "cluster",
            format!(
                "suite {suite} calls for {expected} bound keys and this key is {algorithm}; the \
                 join still works when the token's initial_public_key is this key"
            ),
        )
        .fix(
            "nothing if the token names this key; if the cluster refuses it, make a key with \
             `keybound keypair create --static --proxy-server HOST:PORT`",
        )
    }
}

/// Clock skew beyond which `start` refuses to answer a challenge (the challenge's `iat` must be
/// within it).
const SKEW_FAIL: Duration = crate::join::challenge::CLOCK_SKEW;
/// Skew worth a warning: Teleport back-dates certificates by one minute, so a clock further
/// behind than that sees new certificates as not yet valid.
const SKEW_WARN: Duration = Duration::from_secs(30);

/// Compares our clock with the proxy's `Date` header (which has whole seconds).
pub fn clock_check(ours: SystemTime, theirs: SystemTime) -> Check {
    let (ahead, skew) = match ours.duration_since(theirs) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let seconds = skew.as_secs();
    let direction = if ahead { "ahead of" } else { "behind" };
    let what = format!("this machine's clock is {seconds} s {direction} the proxy's");
    let fix = "synchronise the clock (timedatectl set-ntp true, chrony or systemd-timesyncd)";
    if skew > SKEW_FAIL {
        Check::new(
            Status::Fail,
            "clock",
            format!(
                "{what}; keybound refuses challenges more than {} s off",
                SKEW_FAIL.as_secs()
            ),
        )
        .fix(fix)
    } else if skew > SKEW_WARN {
        Check::new(
            Status::Warn,
            "clock",
            format!("{what}; certificates may look not yet valid or expire early here"),
        )
        .fix(fix)
    } else {
        Check::new(
            Status::Ok,
            "clock",
            format!("{what} (within {} s)", SKEW_WARN.as_secs()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_is_sorted_by_size_and_direction() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let check = |offset: i64| {
            let theirs = if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            };
            clock_check(now, theirs)
        };
        assert_eq!(check(0).status, Status::Ok);
        assert_eq!(check(-30).status, Status::Ok);
        let warn = check(-31);
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.what.contains("31 s ahead of the proxy's"), "{warn}");
        let fail = check(301);
        assert_eq!(fail.status, Status::Fail);
        assert!(fail.what.contains("301 s behind the proxy's"), "{fail}");
        assert!(
            fail.to_string().contains(" — fix: synchronise the clock"),
            "{fail}"
        );
    }

    #[test]
    fn a_line_is_status_area_and_message() {
        let line = Check::new(Status::Fail, "cluster", "TLS: bad").fix("pass --ca-path");
        assert_eq!(
            line.to_string(),
            "FAIL cluster TLS: bad — fix: pass --ca-path"
        );
        let line = Check::new(Status::Ok, "signer", "file k.pem");
        assert_eq!(line.to_string(), "ok   signer  file k.pem");
    }

    #[test]
    fn a_key_of_another_type_than_the_suite_is_a_warning_only() {
        use keybound_signer::Algorithm;
        assert_eq!(
            suite_check(Suite::BalancedV1, Algorithm::Ed25519).status,
            Status::Ok
        );
        assert_eq!(
            suite_check(Suite::BalancedV1, Algorithm::EcdsaP256Sha256).status,
            Status::Warn
        );
        assert_eq!(
            suite_check(Suite::FipsV1, Algorithm::EcdsaP256Sha256).status,
            Status::Ok
        );
    }
}
