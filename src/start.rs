//! `keybound start`: join the cluster with the static key and write the bot's identity where
//! tbot writes it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow};
use keybound_signer::ErrorKind;
use keybound_signer::config::{FileConfig, SignerConfig};
use tracing::{info, warn};

use crate::cli::Start;
use crate::config::{
    ClusterAddr, Config, Destination, HostPort, IdentityOutput, Onboarding, Symlinks,
};
use crate::join::{self, JoinError, JoinParams};
use crate::output::{self, OutputContext};
use crate::tls::{Trust, client_config};
use crate::{ExitKind, Failure, webapi};

impl Failure {
    fn config(error: impl Into<anyhow::Error>) -> Self {
        Self::new(ExitKind::Config, error.into())
    }
}

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
    /// The proxy to join through.
    pub proxy: HostPort,
    /// How the proxy is verified.
    pub trust: Trust,
    /// Where the key lives.
    pub signer_config: SignerConfig,
    /// The open key.
    pub signer: Arc<dyn keybound_signer::Signer>,
}

/// One join and the files it wrote.
pub struct Cycle {
    /// The join's result.
    pub joined: join::Joined,
    /// What was written, for the summary.
    pub written: Vec<String>,
}

/// Builds the effective configuration and opens the signer.
pub fn prepare(args: &Start) -> Result<Prepared, Failure> {
    let config = effective_config(args)?;
    let proxy = match &config.cluster {
        Some(ClusterAddr::Proxy(p)) => p.clone(),
        // tbot treats an auth_server on the web ports as a Proxy first (lib/join/joinclient).
        Some(ClusterAddr::Auth(a)) if a.port == 443 || a.port == 3080 => {
            info!(addr = %a, "auth_server is on a web port; joining through it as a Proxy, as tbot does");
            a.clone()
        }
        Some(ClusterAddr::Auth(a)) => {
            return Err(Failure::config(anyhow!(
                "auth_server {a}: joining straight to the Auth Service is not supported by keybound \
                 yet; set proxy_server to the cluster's Proxy address instead"
            )));
        }
        None => {
            return Err(Failure::config(anyhow!(
                "no cluster address: set proxy_server in the config or pass --proxy-server HOST:PORT"
            )));
        }
    };
    if config.oneshot {
        if let Some(addr) = &config.diag_addr {
            warn!(%addr, "diag_addr is served by the long-running agent; --oneshot runs without it");
        }
    } else {
        // As tbot warns (lib/tbot/bot/credential_lifetime.go).
        if config.credential_ttl < config.renewal_interval {
            warn!(
                credential_ttl = %humantime::format_duration(config.credential_ttl),
                renewal_interval = %humantime::format_duration(config.renewal_interval),
                "credential_ttl is shorter than renewal_interval: the certificates will expire between renewals"
            );
        }
        if config.credential_ttl > Duration::from_secs(24 * 60 * 60) {
            warn!(
                credential_ttl = %humantime::format_duration(config.credential_ttl),
                "credential_ttl is over 24h, the most Teleport issues; the certificates will be shorter"
            );
        }
    }
    let trust = if config.insecure {
        warn!(
            "insecure: NOT verifying the proxy's TLS certificate; anyone on the network path can \
             impersonate the cluster. Use this only against a development cluster."
        );
        Trust::Insecure
    } else if let Some(path) = &config.onboarding.ca_path {
        Trust::Bundle(path.clone())
    } else {
        Trust::System
    };
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
        trust,
        signer_config,
        signer,
    })
}

/// Joins once and writes storage and outputs. Nothing is written unless the join succeeded and
/// the outputs' inputs are all in hand; each destination is written all or nothing.
pub async fn cycle(p: &Prepared) -> Result<Cycle, Failure> {
    let (config, proxy, trust) = (&p.config, &p.proxy, &p.trust);
    let params = JoinParams {
        proxy: proxy.clone(),
        trust: trust.clone(),
        token: config.onboarding.token.clone(),
        credential_ttl: config.credential_ttl,
        signer: p.signer.clone(),
        timeout: join::JOIN_TIMEOUT,
    };
    let joined = join::join(&params).await.map_err(|e| {
        let kind = match &e {
            JoinError::Rejected { .. } | JoinError::Refused(_) => ExitKind::Rejected,
            JoinError::Unreachable(_) | JoinError::TimedOut(_) => ExitKind::Unreachable,
            JoinError::Config(_) => ExitKind::Config,
            JoinError::Signer(s) if s.is_transient() => ExitKind::Unreachable,
            JoinError::Signer(_) => ExitKind::Config,
        };
        Failure::new(kind, anyhow::Error::new(e))
    })?;
    let identity = &joined.identity;
    info!(
        bot = %identity.info.bot_name,
        instance = identity.info.bot_instance_id.as_deref().unwrap_or("?"),
        rpc = %joined.rpc,
        "joined the cluster"
    );

    let local = |e: anyhow::Error| Failure::new(ExitKind::Config, e);
    let directories: Vec<_> = config
        .outputs
        .iter()
        .filter_map(|o| match &o.destination {
            Destination::Directory { path, symlinks } => Some((o, path, *symlinks)),
            Destination::Memory => None,
        })
        .collect();
    // Fetch everything the outputs need before writing anything.
    let database_ca = if directories.is_empty() {
        String::new()
    } else {
        let web_tls = client_config(trust, &[b"http/1.1"]).map_err(local)?;
        webapi::export_authority(proxy, web_tls, "db")
            .await
            .context("fetching the database CA for the identity outputs")
            .map_err(|e| Failure::new(ExitKind::Unreachable, e))?
    };
    let mut written = Vec::new();
    if let Destination::Directory { path, symlinks } = &config.storage {
        output::prepare_dir(path, *symlinks).map_err(local)?;
        output::write_all(
            path,
            &output::storage_files(identity, &config.onboarding.token),
        )
        .with_context(|| format!("writing the bot identity to storage {}", path.display()))
        .map_err(local)?;
        written.push(format!("{} (storage)", path.display()));
    }
    let ctx = OutputContext {
        proxy_host: &proxy.host,
        proxy_port: proxy.port,
        database_ca_pem: &database_ca,
    };
    let mut failures = Vec::new();
    for (output, dir, symlinks) in directories {
        let files = output::identity_files(identity, &ctx, dir, output.ssh_config);
        match output::prepare_dir(dir, symlinks).and_then(|()| output::write_all(dir, &files)) {
            Ok(_) => written.push(format!("{} (identity)", dir.display())),
            Err(e) => failures.push(format!("output {}: {e:#}", dir.display())),
        }
    }
    if !failures.is_empty() {
        return Err(local(anyhow!(failures.join("; "))));
    }
    Ok(Cycle { joined, written })
}

/// Runs `keybound start`: one cycle with `--oneshot`, else the long-running agent.
pub async fn start(args: &Start, out: &mut dyn Write) -> Result<(), Failure> {
    let prepared = prepare(args)?;
    if !prepared.config.oneshot {
        return crate::agent::run(prepared).await;
    }
    let Cycle { joined, written } = cycle(&prepared).await?;
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
    let key_source = match signer_config {
        SignerConfig::File(FileConfig { path, .. }) => format!("file {}", path.display()),
        SignerConfig::Env(env) => format!("env ${}", env.variable),
        SignerConfig::Pkcs11(p) => format!("pkcs11 {}", p.uri),
        SignerConfig::Tpm(t) => match &t.key {
            keybound_signer::config::TpmKey::Handle(h) => {
                format!("tpm persistent handle 0x{h:08x}")
            }
            keybound_signer::config::TpmKey::File(path) => {
                format!("tpm key file {}", path.display())
            }
        },
        _ => signer.backend().to_owned(),
    };
    writeln!(
        out,
        "Joined cluster {} as bot {:?}",
        info.cluster_name, info.bot_name
    )?;
    writeln!(
        out,
        "  bot instance:  {}",
        info.bot_instance_id.as_deref().unwrap_or("(not reported)")
    )?;
    writeln!(
        out,
        "  expires:       {} (in {})",
        crate::devcluster::tokens::format_time(info.not_after),
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
        "  join:          {} (suite {})",
        joined.rpc, joined.suite
    )?;
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
