//! `keybound start`: join the cluster with the static key and write the bot's identity where
//! tbot writes it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use keybound_signer::ErrorKind;
use keybound_signer::config::{FileConfig, SignerConfig};
use tracing::{debug, error, info, warn};

use crate::auth::{AuthClient, AuthRoute, ConnectError};
use crate::cli::Start;
use crate::config::{
    ClusterAddr, Config, Destination, HostPort, IdentityOutput, Onboarding, Symlinks,
};
use crate::identity::Identity;
use crate::join::{self, JoinError, JoinParams};
use crate::output::{self, OutputContext};
use crate::subject_key::SubjectKey;
use crate::tls::Trust;
use crate::untrusted;
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// Builds the effective configuration: the file (if any), then the flags over it, as tbot's
/// `LoadConfigWithMutators` does.
pub fn effective_config(args: &Start) -> Result<Config, Failure> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(Failure::config)?,
        None => {
            let token = args.token.clone().ok_or_else(|| {
                Failure::config(anyhow!(
                    "no configuration: pass -c tbot.yaml, or at least --proxy-server, --token and \
                     --join-method bound_keypair"
                ))
            })?;
            Config {
                cluster: None,
                onboarding: Onboarding {
                    token,
                    ..Onboarding::default()
                },
                storage: Destination::Directory {
                    path: crate::config::DEFAULT_STORAGE_PATH.into(),
                    symlinks: Symlinks::default(),
                },
                credential_ttl: crate::config::DEFAULT_CREDENTIAL_TTL,
                renewal_interval: crate::config::DEFAULT_RENEWAL_INTERVAL,
                oneshot: false,
                debug: false,
                insecure: false,
                diag_addr: None,
                outputs: Vec::new(),
            }
        }
    };
    if let Some(method) = &args.join_method {
        if method != "bound_keypair" {
            return Err(Failure::config(anyhow!(
                "--join-method {method}: keybound joins only with bound_keypair"
            )));
        }
    } else if args.config.is_none() {
        return Err(Failure::config(anyhow!(
            "--join-method bound_keypair is required without -c"
        )));
    }
    if !args.ca_pin.is_empty() {
        return Err(Failure::config(anyhow!(
            "--ca-pin is not supported by keybound yet; give the cluster's CA bundle with --ca-path"
        )));
    }
    let parse = |flag: &str, value: &str, port| {
        HostPort::parse(value, port).map_err(|e| Failure::config(anyhow!("--{flag}: {e}")))
    };
    match (&args.proxy_server, &args.auth_server) {
        (Some(_), Some(_)) => {
            return Err(Failure::config(anyhow!(
                "--proxy-server and --auth-server are both set; give one"
            )));
        }
        (Some(p), None) => {
            config.cluster = Some(ClusterAddr::Proxy(parse("proxy-server", p, 443)?))
        }
        (None, Some(a)) => config.cluster = Some(ClusterAddr::Auth(parse("auth-server", a, 3025)?)),
        (None, None) => {}
    }
    if let Some(token) = &args.token {
        config.onboarding.token.clone_from(token);
    }
    if let Some(path) = &args.static_key_path {
        config.onboarding.static_private_key_path = Some(path.clone());
        if args.signer.signer.is_none() {
            config.onboarding.signer = Some(crate::signer::SignerKind::File);
        }
    }
    args.signer.apply(&mut config.onboarding);
    config
        .onboarding
        .signer_config()
        .map_err(|e| Failure::config(anyhow!("onboarding.bound_keypair: {e}")))?;
    if let Some(dir) = &args.data_dir {
        config.storage = Destination::Directory {
            path: dir.clone(),
            symlinks: Symlinks::default(),
        };
    }
    if let Some(uri) = &args.storage {
        config.storage = storage_uri(uri).map_err(Failure::config)?;
    }
    if let Some(dir) = &args.destination_dir {
        config.outputs = vec![IdentityOutput {
            destination: Destination::Directory {
                path: dir.clone(),
                symlinks: Symlinks::default(),
            },
            ssh_config: true,
            name: None,
            roles: Vec::new(),
            allow_reissue: false,
        }];
    }
    if let Some(ttl) = args.certificate_ttl {
        config.credential_ttl = ttl;
    }
    if let Some(interval) = args.renewal_interval {
        config.renewal_interval = interval;
    }
    if let Some(addr) = &args.diag_addr {
        config.diag_addr = Some(addr.clone());
    }
    if args.oneshot {
        config.oneshot = true;
    }
    if args.insecure {
        config.insecure = true;
    }
    if let Some(path) = &args.ca_path {
        config.onboarding.ca_path = Some(path.clone());
    }
    config
        .check_destinations()
        .map_err(|e| Failure::config(anyhow!(e)))?;
    Ok(config)
}

/// tbot's storage URIs: `file:///dir`, a bare path, or `memory://`.
fn storage_uri(uri: &str) -> anyhow::Result<Destination> {
    if uri == "memory://" {
        return Ok(Destination::Memory);
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() || path.contains("://") {
        anyhow::bail!("--storage {uri:?}: use file:///DIR, a directory path, or memory://");
    }
    Ok(Destination::Directory {
        path: PathBuf::from(path),
        symlinks: Symlinks::default(),
    })
}

/// Everything a join needs, checked once: the configuration, the cluster, trust, and the open
/// signer.
#[derive(Clone)]
pub struct Prepared {
    /// The effective configuration.
    pub config: Config,
    /// Where an unauthenticated join goes: the Proxy, or Auth itself when `direct`.
    pub proxy: HostPort,
    /// `proxy` is Auth's own address (`auth_server` on a non-web port).
    pub direct: bool,
    /// How the bot reaches Auth with its identity.
    pub auth_route: AuthRoute,
    /// How the proxy is verified.
    pub trust: Trust,
    /// Where the key lives.
    pub signer_config: SignerConfig,
    /// The open key.
    pub signer: Arc<dyn keybound_signer::Signer>,
    /// The deadline of each RPC on the authenticated connection to Auth
    /// ([`crate::auth::RPC_TIMEOUT`], or `KEYBOUND_RPC_TIMEOUT`).
    pub rpc_timeout: Duration,
}

/// Storage files of keybound's own, beside tbot's: the lock one process holds on the
/// directory, and the marker of a rejoin in flight.
mod marker {
    /// Held locked (`flock`) by the process using the storage, for its whole life.
    pub(super) const LOCK: &str = ".keybound.lock";
    /// Written before an authenticated rejoin, removed once its result is stored (or once the
    /// rejoin failed before the challenge answer went out). Found at start, it means the stored
    /// identity may be a generation behind the cluster's record.
    pub(super) const REJOIN: &str = ".keybound-rejoin";
}

/// The bot identity keybound holds between renewals: the newest one, always (Auth locks a bot
/// that rejoins with an older generation). With directory storage it also holds the lock on
/// that directory, so no second keybound renews the same bot behind its back.
#[derive(Default)]
pub struct Held {
    state: tokio::sync::Mutex<HeldState>,
    _lock: Option<std::fs::File>,
}

#[derive(Default)]
struct HeldState {
    identity: Option<Identity>,
    /// The suite the identity was issued under, when keybound joined for it.
    suite: Option<Suite>,
    /// When this process last renewed the identity, and whether the outputs were written since.
    renewed_at: Option<std::time::Instant>,
    outputs_written: bool,
}

impl Held {
    /// Locks the storage directory and starts from the identity in it, if there is a usable one
    /// for this token: a bot identity (not an output's), whose key matches its certificates, and
    /// no rejoin left in doubt.
    pub fn open(p: &Prepared) -> Result<Self, Failure> {
        let Destination::Directory { path, symlinks } = &p.config.storage else {
            return Ok(Self::default());
        };
        output::prepare_dir(path, *symlinks).map_err(Failure::config)?;
        let lock = lock_storage(path)?;
        let identity = Self::stored(p, path);
        Ok(Self {
            state: tokio::sync::Mutex::new(HeldState {
                identity,
                ..HeldState::default()
            }),
            _lock: Some(lock),
        })
    }

    fn stored(p: &Prepared, path: &std::path::Path) -> Option<Identity> {
        if path.join(marker::REJOIN).exists() {
            warn!(
                storage = %path.display(),
                "a rejoin was interrupted after answering the challenge: the cluster may have moved \
                 on to a newer certificate, so the stored one is not used; joining afresh with the \
                 static key"
            );
            return None;
        }
        let token_hash = std::fs::read_to_string(path.join(output::names::TOKEN_HASH)).ok();
        let ours = output::token_hash(&p.config.onboarding.token);
        match Identity::load(path) {
            Ok(Some(_)) if token_hash.as_deref().map(str::trim) != Some(ours.as_str()) => {
                info!(storage = %path.display(), "the stored identity was made with another token; joining afresh");
                None
            }
            Ok(Some(identity))
                if identity.info.bot_instance_id.is_none()
                    || identity.info.impersonator.is_some() =>
            {
                warn!(
                    storage = %path.display(),
                    "the storage holds an identity that is not a bot's own (an output written into \
                     the storage directory?); it is not used: joining afresh"
                );
                None
            }
            Ok(Some(identity)) => {
                info!(
                    storage = %path.display(),
                    instance = %untrusted::name(identity.info.bot_instance_id.as_deref().unwrap_or("?")),
                    generation = identity.info.generation.unwrap_or(0),
                    expires = %keybound_teleport::time::format_time(identity.info.not_after),
                    "loaded the bot identity from storage"
                );
                Some(identity)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(storage = %path.display(), error = %format!("{e:#}"), "the stored identity is unusable; joining afresh");
                None
            }
        }
    }

    /// When the held identity expires.
    pub async fn expiry(&self) -> Option<SystemTime> {
        self.state
            .lock()
            .await
            .identity
            .as_ref()
            .map(|i| i.info.not_after)
    }
}

/// Takes the storage directory's lock, or says which process holds it.
fn lock_storage(dir: &std::path::Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(marker::LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Failure::config(anyhow!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Failure::config(anyhow!(
            "storage {} is in use by another keybound process; two processes renewing one bot \
             would get it locked by the cluster: stop the other one, or give each bot its own \
             storage",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Failure::config(anyhow!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// One renewal (or, when the last renewal's outputs failed, a retry of the outputs) and the
/// files it wrote.
pub struct Cycle {
    /// The join's result; `None` for an outputs-only retry.
    pub joined: Option<join::Joined>,
    /// What was written, for the summary.
    pub written: Vec<String>,
}

/// Builds the effective configuration and opens the signer.
pub fn prepare(args: &Start) -> Result<Prepared, Failure> {
    let config = effective_config(args)?;
    let rpc_timeout =
        crate::auth::rpc_timeout_from_env().map_err(|e| Failure::config(anyhow!(e)))?;
    let (proxy, direct) = route(&config)?;
    let auth_route = if direct {
        AuthRoute::Direct(proxy.clone())
    } else {
        AuthRoute::Proxy(proxy.clone())
    };
    if config.oneshot {
        if let Some(addr) = &config.diag_addr {
            warn!(%addr, "diag_addr is served by the long-running agent; --oneshot runs without it");
        }
    } else {
        for warning in lifetime_warnings(&config) {
            warn!("{warning}");
        }
    }
    let trust = trust(&config);
    if trust == Trust::Insecure {
        warn!(
            "insecure: NOT verifying the proxy's TLS certificate; anyone on the network path can \
             impersonate the cluster. Use this only against a development cluster."
        );
    }
    let signer_config = config
        .onboarding
        .signer_config()
        .map_err(|e| Failure::config(anyhow!(e)))?;
    let signer = crate::signer::open_signer(&signer_config).map_err(|e| {
        let kind = if e.kind() == ErrorKind::Unavailable {
            ExitKind::Unreachable
        } else {
            ExitKind::Config
        };
        Failure::new(kind, anyhow::Error::new(e))
    })?;
    Ok(Prepared {
        config,
        proxy,
        direct,
        auth_route,
        trust,
        signer_config,
        signer,
        rpc_timeout,
    })
}

/// Where a join goes: the Proxy, or Auth itself (`true`) when `auth_server` is not on a web
/// port.
pub fn route(config: &Config) -> Result<(HostPort, bool), Failure> {
    match &config.cluster {
        Some(ClusterAddr::Proxy(p)) => Ok((p.clone(), false)),
        // tbot treats an auth_server on the web ports as a Proxy first (lib/join/joinclient).
        Some(ClusterAddr::Auth(a)) if a.port() == 443 || a.port() == 3080 => {
            info!(addr = %a, "auth_server is on a web port; joining through it as a Proxy, as tbot does");
            Ok((a.clone(), false))
        }
        Some(ClusterAddr::Auth(a)) => Ok((a.clone(), true)),
        None => Err(Failure::config(anyhow!(
            "no cluster address: set proxy_server in the config or pass --proxy-server HOST:PORT"
        ))),
    }
}

/// What is wrong with the long-running agent's certificate lifetime and renewal interval, as tbot
/// warns (`lib/tbot/bot/credential_lifetime.go`).
pub fn lifetime_warnings(config: &Config) -> Vec<String> {
    let (ttl, interval) = (
        humantime::format_duration(config.credential_ttl),
        humantime::format_duration(config.renewal_interval),
    );
    let mut warnings = Vec::new();
    if config.credential_ttl < config.renewal_interval {
        warnings.push(format!(
            "credential_ttl {ttl} is shorter than renewal_interval {interval}: the certificates \
             will expire between renewals"
        ));
    }
    if config.credential_ttl > Duration::from_secs(24 * 60 * 60) {
        warnings.push(format!(
            "credential_ttl {ttl} is over 24h, the most Teleport issues; the certificates will be \
             shorter"
        ));
    }
    warnings
}

/// How the cluster's TLS certificate is verified under `config`.
pub fn trust(config: &Config) -> Trust {
    if config.insecure {
        Trust::Insecure
    } else if let Some(path) = &config.onboarding.ca_path {
        Trust::Bundle(path.clone())
    } else {
        Trust::System
    }
}

/// Where the key lives, for people: `file /etc/keybound/bound-key.pem`, `pkcs11 pkcs11:...`.
pub fn key_source(signer_config: &SignerConfig, backend: &str) -> String {
    match signer_config {
        SignerConfig::File(FileConfig { path, .. }) => format!("file {}", path.display()),
        SignerConfig::Env(env) => format!("env ${}", env.variable),
        SignerConfig::Pkcs11(p) => format!("pkcs11 {}", p.uri.redacted()),
        SignerConfig::Tpm(t) => match &t.key {
            keybound_signer::config::TpmKey::Handle(h) => {
                format!("tpm persistent handle 0x{h:08x}")
            }
            keybound_signer::config::TpmKey::File(path) => {
                format!("tpm key file {}", path.display())
            }
        },
        _ => backend.to_owned(),
    }
}

fn join_failure(e: JoinError) -> Failure {
    let kind = match &e {
        JoinError::Rejected { .. } | JoinError::Refused(_) => ExitKind::Rejected,
        JoinError::Unreachable(_) | JoinError::TimedOut(_) => ExitKind::Unreachable,
        JoinError::Config(_) => ExitKind::Config,
        JoinError::Signer(s) if s.is_transient() => ExitKind::Unreachable,
        JoinError::Signer(_) => ExitKind::Config,
    };
    Failure::new(kind, anyhow::Error::new(e))
}

fn connect_failure(e: ConnectError) -> Failure {
    let kind = match &e {
        ConnectError::Unreachable(_) => ExitKind::Unreachable,
        // Not this cluster's Auth: retrying soon will not change that.
        ConnectError::Untrusted(_) => ExitKind::Rejected,
        ConnectError::Identity(_) => ExitKind::Software,
    };
    Failure::new(kind, anyhow::Error::new(e))
}

/// The bot's authenticated connection to Auth, each RPC on it bounded by `p.rpc_timeout`.
async fn auth_client(p: &Prepared, identity: &Identity) -> Result<AuthClient, Failure> {
    AuthClient::connect(&p.auth_route, identity)
        .await
        .map(|auth| auth.with_deadline(p.rpc_timeout))
        .map_err(connect_failure)
}

/// Renews the bot identity, as tbot's identity service does (`renewIdentity`,
/// `lib/tbot/internal/identity/service.go`): while `current` is valid, a soft rejoin over the
/// authenticated connection (same bot instance, no recovery used); without one, or once it has
/// expired, an unauthenticated join through the Proxy (a recovery: a new bot instance).
async fn renew(p: &Prepared, current: Option<&Identity>) -> Result<join::Joined, (Failure, bool)> {
    let params = JoinParams {
        proxy: p.proxy.clone(),
        direct: p.direct,
        trust: p.trust.clone(),
        token: p.config.onboarding.token.clone(),
        // A held identity, even an expired one, says which cluster may challenge the key.
        cluster: current.map(|i| i.info.cluster_name.as_str().to_owned()),
        credential_ttl: p.config.credential_ttl,
        signer: p.signer.clone(),
        timeout: join::JOIN_TIMEOUT,
    };
    let now = SystemTime::now();
    let joined = match current {
        Some(identity) if identity.info.not_after > now => {
            debug!(route = %p.auth_route, generation = identity.info.generation.unwrap_or(0), "rejoining with the current identity");
            let auth = auth_client(p, identity).await.map_err(|f| (f, false))?;
            let mut joined = join::rejoin(&params, &auth)
                .await
                .map_err(|e| (join_failure(e.error), e.in_doubt))?;
            if joined.identity.info.bot_instance_id != identity.info.bot_instance_id {
                // The cluster did not take the certificate (a failed authorization makes the
                // stream unauthenticated): this was a recovery.
                warn!(
                    "the cluster treated the rejoin as unauthenticated: a recovery was used and a new bot instance started"
                );
                joined.authenticated = false;
            }
            joined
        }
        Some(identity) => {
            warn!(
                expired = %keybound_teleport::time::format_time(identity.info.not_after),
                "the bot identity expired before it could be renewed; joining without it, which \
                 uses a recovery and starts a new bot instance"
            );
            join::join(&params)
                .await
                .map_err(|e| (join_failure(e), false))?
        }
        None => {
            info!("no bot identity yet; joining with the static key");
            join::join(&params)
                .await
                .map_err(|e| (join_failure(e), false))?
        }
    };
    let identity = &joined.identity;
    info!(
        bot = %untrusted::name(&identity.info.bot_name),
        instance = %untrusted::name(identity.info.bot_instance_id.as_deref().unwrap_or("?")),
        generation = identity.info.generation.unwrap_or(0),
        rpc = %joined.rpc,
        authenticated = joined.authenticated,
        "joined the cluster"
    );
    Ok(joined)
}

/// Writes the bot identity to storage at once. If that fails, the stored identity (now an older
/// generation) is removed, so that no later run rejoins with it and gets the token locked.
fn persist(p: &Prepared, identity: &Identity) -> anyhow::Result<Option<String>> {
    let Destination::Directory { path, symlinks } = &p.config.storage else {
        return Ok(None);
    };
    let written = output::prepare_dir(path, *symlinks).and_then(|dir| {
        output::write_all(
            &dir,
            &output::storage_files(identity, &p.config.onboarding.token),
        )
    });
    match written {
        Ok(_) => Ok(Some(format!("{} (storage)", path.display()))),
        Err(e) => {
            let removed = std::fs::remove_file(path.join(output::names::TLS_CERT));
            let note = match removed {
                Ok(()) => "the older identity there was removed, so the next start joins afresh",
                Err(ref r) if r.kind() == std::io::ErrorKind::NotFound => "there was none before",
                Err(_) => {
                    "the older identity there could not be removed either: delete the directory \
                     before the next start, or the cluster will lock the bot for rejoining with \
                     an old certificate"
                }
            };
            Err(e.context(format!(
                "writing the new bot identity to storage {} failed; {note}",
                path.display()
            )))
        }
    }
}

/// Renews the bot identity, stores it, then writes every output. The held identity is replaced
/// as soon as the join succeeds, and stored under the same lock, whatever happens after. When
/// the previous renewal's outputs failed and its identity is still fresh, only the outputs are
/// retried: another rejoin would sign again for nothing.
pub async fn cycle(p: &Prepared, held: &Held) -> Result<Cycle, Failure> {
    let mut state = held.state.lock().await;
    let fresh = state
        .renewed_at
        .is_some_and(|at| at.elapsed() < p.config.renewal_interval)
        && state
            .identity
            .as_ref()
            .is_some_and(|i| i.info.not_after > SystemTime::now());
    if fresh
        && !state.outputs_written
        && let (Some(identity), Some(suite)) = (state.identity.clone(), state.suite)
    {
        info!("retrying the identity outputs with the identity renewed at the last attempt");
        let written = write_outputs(p, &identity, suite).await?;
        state.outputs_written = true;
        return Ok(Cycle {
            joined: None,
            written,
        });
    }

    let storage = match &p.config.storage {
        Destination::Directory { path, .. } => Some(path.clone()),
        Destination::Memory => None,
    };
    let current = state.identity.clone();
    let rejoining = current
        .as_ref()
        .is_some_and(|i| i.info.not_after > SystemTime::now());
    // A marker left by an earlier rejoin in doubt stays until a new identity is stored.
    let wrote_marker = rejoining && storage.is_some();
    if let (true, Some(dir)) = (rejoining, &storage) {
        crate::fsutil::write_atomic(
            &dir.join(marker::REJOIN),
            b"",
            0o600,
            crate::fsutil::Replace::Allow,
        )
        .map_err(|e| Failure::new(ExitKind::Config, e))?;
    }
    let clear_marker = || {
        if let Some(dir) = &storage {
            let _ = std::fs::remove_file(dir.join(marker::REJOIN));
        }
    };
    let joined = match renew(p, current.as_ref()).await {
        Ok(joined) => joined,
        Err((failure, in_doubt)) => {
            if in_doubt {
                // The cluster may hold a newer generation than ours: never rejoin with this one.
                // The marker stays, so the stored copy is not used either.
                warn!(
                    "the rejoin failed after the challenge was answered: the cluster may have issued \
                     certificates keybound did not receive, so the held identity is dropped and \
                     the next attempt joins afresh with the static key"
                );
                state.identity = None;
                state.renewed_at = None;
            } else if wrote_marker {
                clear_marker();
            }
            return Err(failure);
        }
    };
    state.identity = Some(joined.identity.clone());
    state.suite = Some(joined.suite);
    state.renewed_at = Some(std::time::Instant::now());
    state.outputs_written = false;
    let mut written = Vec::new();
    match persist(p, &joined.identity) {
        Ok(Some(w)) => written.push(w),
        Ok(None) => {}
        Err(e) => {
            clear_marker();
            return Err(Failure::new(ExitKind::Config, e));
        }
    }
    clear_marker();
    written.extend(write_outputs(p, &joined.identity, joined.suite).await?);
    state.outputs_written = true;
    Ok(Cycle {
        joined: Some(joined),
        written,
    })
}

/// Writes every directory output: role-impersonated certificates for each, from
/// `GenerateUserCerts` over the bot's authenticated connection (`lib/tbot/services/identity/
/// output.go`). One output's failure does not stop the others; all failures are reported.
async fn write_outputs(p: &Prepared, bot: &Identity, suite: Suite) -> Result<Vec<String>, Failure> {
    let directories: Vec<_> = p
        .config
        .outputs
        .iter()
        .filter_map(|o| match &o.destination {
            Destination::Directory { path, symlinks } => Some((o, path, *symlinks)),
            Destination::Memory => None,
        })
        .collect();
    if directories.is_empty() {
        return Ok(Vec::new());
    }
    let auth = auth_client(p, bot).await?;
    let rpc = |what: &'static str| {
        move |s: tonic::Status| auth_failure(&format!("{what} for the identity outputs"), &s, "")
    };
    // What every output shares: the CAs, and the roles the bot may impersonate.
    let host = auth
        .cert_authorities("host")
        .await
        .map_err(rpc("reading the host CAs"))?;
    let user = auth
        .cert_authorities("user")
        .await
        .map_err(rpc("reading the user CAs"))?;
    let db = auth
        .cert_authorities("db")
        .await
        .map_err(rpc("reading the database CAs"))?;
    let cas = output::ClusterCas::from_authorities(&host, &user, &db).map_err(|e| {
        Failure::new(
            ExitKind::Rejected,
            e.context("the cluster's CAs for the identity outputs are unusable"),
        )
    })?;
    let cluster_ca = auth
        .cluster_ca_cert()
        .await
        .map_err(rpc("reading the cluster's host CA"))?;
    let host_ca_pems = keybound_teleport::pem::split_pem_certs(&cluster_ca)
        .map_err(|e| Failure::new(ExitKind::Rejected, e))?;
    let default_roles = if directories.iter().any(|(o, ..)| o.roles.is_empty()) {
        let role = auth
            .get_role(&bot.info.username)
            .await
            .map_err(rpc("reading the bot's role"))?;
        role.spec
            .and_then(|s| s.allow)
            .and_then(|a| a.impersonate)
            .map(|i| i.roles)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let proxy = match &p.auth_route {
        AuthRoute::Proxy(proxy) => Some(proxy.clone()),
        AuthRoute::Direct(_) => {
            let ping = auth
                .ping()
                .await
                .map_err(rpc("asking Auth for the proxy"))?;
            if ping.proxy_public_addr.is_empty() {
                warn!(
                    "Auth names no proxy: known_hosts leaves the proxy out and ssh_config is not written"
                );
                None
            } else {
                // The same check as proxy_server's: the address reaches known_hosts and
                // ssh_config.
                Some(HostPort::parse(&ping.proxy_public_addr, 443).map_err(|e| {
                    Failure::new(
                        ExitKind::Rejected,
                        anyhow!(
                            "Auth's Ping names the proxy public address {e}; the identity outputs \
                             were not written: check the proxy's public_addr in the cluster's \
                             configuration, and that auth_server is the Teleport cluster you \
                             expect"
                        ),
                    )
                })?)
            }
        }
    };
    let ctx = OutputContext {
        proxy: proxy.as_ref(),
        cas: &cas,
    };

    let mut written = Vec::new();
    let mut failures = Vec::new();
    // The failure kind that retries soonest wins: unreachable, then local, then rejected.
    let mut worst = ExitKind::Rejected;
    for (out, dir, symlinks) in directories {
        let roles = if out.roles.is_empty() {
            &default_roles
        } else {
            &out.roles
        };
        let label = out
            .name
            .clone()
            .unwrap_or_else(|| dir.display().to_string());
        match impersonate(
            p,
            &auth,
            bot,
            suite,
            roles,
            out.allow_reissue,
            &host_ca_pems,
            &cas,
        )
        .await
        {
            Ok(identity) => {
                match output::identity_files(&identity, &ctx, dir, out.ssh_config).and_then(
                    |files| {
                        let open = output::prepare_dir(dir, symlinks)?;
                        output::write_all(&open, &files)
                    },
                ) {
                    Ok(_) => {
                        info!(output = %label, roles = %role_list(roles, ","), expires = %keybound_teleport::time::format_time(identity.info.not_after), "wrote identity output");
                        written.push(format!(
                            "{} (identity: {})",
                            dir.display(),
                            role_list(roles, ", ")
                        ));
                    }
                    Err(e) => {
                        if worst != ExitKind::Unreachable {
                            worst = ExitKind::Config;
                        }
                        failures.push(format!("output {label}: {e:#}"));
                    }
                }
            }
            Err(f) => {
                if f.kind == ExitKind::Unreachable {
                    worst = ExitKind::Unreachable;
                } else if f.kind == ExitKind::Config && worst == ExitKind::Rejected {
                    worst = ExitKind::Config;
                }
                failures.push(format!("output {label}: {:#}", f.error));
            }
        }
    }
    if failures.is_empty() {
        Ok(written)
    } else {
        for f in &failures {
            error!(error = %f, "an identity output was not updated; its previous files are untouched");
        }
        Err(Failure::new(worst, anyhow!(failures.join("; "))))
    }
}

/// One output's role-impersonated identity: a fresh key for the suite, `GenerateUserCerts` for
/// `roles` (`lib/tbot/identity/generator.go` `Generate`).
#[allow(clippy::too_many_arguments)]
async fn impersonate(
    p: &Prepared,
    auth: &AuthClient,
    bot: &Identity,
    suite: Suite,
    roles: &[String],
    allow_reissue: bool,
    host_ca_pems: &[String],
    cas: &output::ClusterCas,
) -> Result<Identity, Failure> {
    if roles.is_empty() {
        return Err(Failure::new(
            ExitKind::Rejected,
            anyhow!(
                "the bot's role {} may impersonate no role; give the output `roles:`, or give \
                 the bot roles (tctl bots update {} --add-roles ROLE)",
                untrusted::name(&bot.info.username),
                untrusted::name(&bot.info.bot_name)
            ),
        ));
    }
    let key = tokio::task::spawn_blocking(move || SubjectKey::generate(suite))
        .await
        .map_err(|e| Failure::new(ExitKind::Software, anyhow!("key generation failed: {e}")))?
        .map_err(|e| Failure::new(ExitKind::Software, e.context("key generation failed")))?;
    // An output never outlives the bot identity that asked for it (Auth caps impersonated
    // certificates at 24 h; a non-renewable bot's own expiry is the tighter bound).
    let expires = output_expiry(p.config.credential_ttl, bot.info.not_after);
    let request = keybound_proto::proto::UserCertsRequest {
        username: bot.info.username.clone(),
        expires: Some(prost_types::Timestamp::from(expires)),
        route_to_cluster: bot.info.cluster_name.as_str().to_owned(),
        role_requests: roles.to_vec(),
        use_role_requests: true,
        // ssh.MarshalAuthorizedKey (with its newline) and keys.MarshalPublicKey, as tbot sends.
        ssh_public_key: format!("{}\n", key.ssh_authorized).into_bytes(),
        tls_public_key: key.public_pem.clone().into_bytes(),
        reissuable_role_impersonation: allow_reissue,
    };
    let certs = auth.generate_user_certs(request).await.map_err(|s| {
        let hint = if s.message().contains("has requested role impersonation") {
            format!(
                "; the bot's role {} does not allow impersonating [{}]: add them to the bot \
                 (tctl bots update {} --add-roles ...) or change the output's roles",
                untrusted::name(&bot.info.username),
                role_list(roles, ", "),
                untrusted::name(&bot.info.bot_name)
            )
        } else {
            String::new()
        };
        let what = if s.code() == tonic::Code::DeadlineExceeded {
            "no certificates came for roles"
        } else {
            "the cluster refused certificates for roles"
        };
        auth_failure(&format!("{what} [{}]", role_list(roles, ", ")), &s, &hint)
    })?;
    let host_ssh: Vec<String> = cas.host_ssh_keys.iter().map(|(_, k)| k.clone()).collect();
    Identity::from_user_certs(
        key.private_pem,
        key.ssh_authorized,
        &key.spki_der,
        &certs,
        host_ca_pems.to_vec(),
        host_ssh,
    )
    .map_err(|e| {
        Failure::new(
            ExitKind::Rejected,
            e.context("the cluster's certificates for the output are unusable"),
        )
    })
}

/// A failed Auth call made for the outputs: `what`, the cluster's message (sanitized), `hint`.
/// A call that could not reach Auth is worth retrying soon; any other is a refusal.
fn auth_failure(what: &str, status: &tonic::Status, hint: &str) -> Failure {
    let kind = match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            ExitKind::Unreachable
        }
        _ => ExitKind::Rejected,
    };
    Failure::new(
        kind,
        anyhow!("{what}: {}{hint}", untrusted::message(status.message())),
    )
}

/// Role names for a log line or a message: from the configuration, or from the bot's role as
/// the cluster returned it, so each is sanitized.
fn role_list(roles: &[String], separator: &str) -> String {
    roles
        .iter()
        .map(|r| untrusted::name(r).to_string())
        .collect::<Vec<_>>()
        .join(separator)
}

/// When an output's certificates should end: `credential_ttl` from now, but never after the bot
/// identity that asks for them.
fn output_expiry(ttl: Duration, bot_not_after: SystemTime) -> SystemTime {
    join::expiry_after(ttl).min(bot_not_after)
}

/// Runs `keybound start`: one cycle with `--oneshot`, else the long-running agent.
pub async fn start(args: &Start, out: &mut dyn Write) -> Result<(), Failure> {
    let prepared = prepare(args)?;
    let held = Held::open(&prepared)?;
    if !prepared.config.oneshot {
        return crate::agent::run(prepared, held).await;
    }
    let Cycle { joined, written } = cycle(&prepared, &held).await?;
    let joined = joined.ok_or_else(|| {
        Failure::new(
            ExitKind::Software,
            anyhow!("a oneshot run always renews the bot identity"),
        )
    })?;
    write_summary(
        out,
        &joined,
        &*prepared.signer,
        &prepared.signer_config,
        &written,
    )
    .map_err(|e| Failure::new(ExitKind::Software, e))?;
    Ok(())
}

fn write_summary(
    out: &mut dyn Write,
    joined: &join::Joined,
    signer: &dyn keybound_signer::Signer,
    signer_config: &SignerConfig,
    written: &[String],
) -> anyhow::Result<()> {
    let info = &joined.identity.info;
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let key_source = key_source(signer_config, signer.backend());
    writeln!(
        out,
        "Joined cluster {} as bot {}",
        info.cluster_name,
        untrusted::quoted(&info.bot_name)
    )?;
    writeln!(
        out,
        "  bot instance:  {}",
        untrusted::name(info.bot_instance_id.as_deref().unwrap_or("(not reported)"))
    )?;
    writeln!(
        out,
        "  expires:       {} (in {})",
        keybound_teleport::time::format_time(info.not_after),
        humantime::format_duration(Duration::from_secs(left.as_secs()))
    )?;
    writeln!(
        out,
        "  bound key:     {} ({}, signer {key_source})",
        signer.public_key().fingerprint(),
        signer.algorithm()
    )?;
    writeln!(out, "  key storage:   {}", signer.protection())?;
    writeln!(
        out,
        "  join:          {} (suite {}, {})",
        joined.rpc,
        joined.suite,
        if joined.authenticated {
            "authenticated rejoin: same bot instance, no recovery used"
        } else {
            "with the static key"
        }
    )?;
    if let Some(generation) = info.generation {
        writeln!(out, "  generation:    {generation}")?;
    }
    if written.is_empty() {
        writeln!(
            out,
            "  written:       nothing (memory storage, no directory outputs)"
        )?;
    }
    for (i, w) in written.iter().enumerate() {
        writeln!(
            out,
            "  {}{w}",
            if i == 0 {
                "written:       "
            } else {
                "               "
            }
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_never_outlive_the_bot_identity() {
        let hour = Duration::from_secs(3600);
        let soon = SystemTime::now() + Duration::from_secs(600);
        assert_eq!(output_expiry(hour, soon), soon);
        let later = SystemTime::now() + 2 * hour;
        let end = output_expiry(hour, later);
        assert!(end < later && end > SystemTime::now() + hour - Duration::from_secs(5));
        // An absurd lifetime saturates instead of overflowing.
        assert_eq!(output_expiry(Duration::MAX, soon), soon);
    }
}
