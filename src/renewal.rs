//! One renewal cycle: connect, join or rejoin, persist, then for each output issue and write.
//!
//! tbot's identity service renews the bot identity (`renewIdentity`,
//! `lib/tbot/internal/identity/service.go`) and its output services each ask Auth for their
//! certificates; keybound does both in one cycle, so that a `--oneshot` run is one cycle and the
//! agent ([`crate::agent`]) runs cycles on a schedule. The held identity ([`Held`]) is replaced as
//! soon as a join returns a new one, and stored at once: the cluster locks a bot that rejoins
//! with an older certificate generation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use keybound_signer::ErrorKind;
use keybound_signer::config::SignerConfig;
use tracing::{debug, info, warn};

use crate::auth::{AuthClient, AuthRoute};
use crate::config::Config;
use crate::identity::Identity;
use crate::join::{self, JoinError, JoinParams};
use crate::output;
use crate::storage::{self, Held, HeldState};
use crate::tls::Trust;
use crate::untrusted;
use crate::values::{Destination, HostPort};
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

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

impl Prepared {
    /// Checks the effective configuration once more for a run and opens the signer.
    pub fn new(config: Config) -> Result<Self, Failure> {
        let rpc_timeout =
            crate::auth::rpc_timeout_from_env().map_err(|e| Failure::config(anyhow!(e)))?;
        let (proxy, direct) = config.route()?;
        let auth_route = if direct {
            AuthRoute::Direct(proxy.clone())
        } else {
            AuthRoute::Proxy(proxy.clone())
        };
        if config.oneshot
            && let Some(addr) = &config.diag_addr
        {
            warn!(%addr, "diag_addr is served by the long-running agent; --oneshot runs without it");
        }
        for warning in config.lifetime_warnings() {
            warn!("{warning}");
        }
        let trust = config.trust();
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
        Ok(Self {
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
}

/// One renewal (or, when the last renewal's outputs failed, a retry of the outputs) and the
/// files it wrote.
pub struct Cycle {
    /// The join's result; `None` for an outputs-only retry.
    pub joined: Option<join::Joined>,
    /// What was written, for the summary.
    pub written: Vec<String>,
}

/// Renews the bot identity, stores it, then writes every output. When the previous renewal's
/// outputs failed and its identity is still fresh, only the outputs are retried: another rejoin
/// would sign again for nothing.
pub async fn cycle(p: &Prepared, held: &Held) -> Result<Cycle, Failure> {
    let mut state = held.lock().await;
    if let Some((identity, suite)) = outputs_to_retry(p, &state) {
        info!("retrying the identity outputs with the identity renewed at the last attempt");
        let written = write_outputs(p, &identity, suite).await?;
        state.outputs_written = true;
        return Ok(Cycle {
            joined: None,
            written,
        });
    }
    let joined = join_or_rejoin(p, &mut state).await?;
    let mut written: Vec<String> = store(p, &joined.identity)?.into_iter().collect();
    written.extend(write_outputs(p, &joined.identity, joined.suite).await?);
    state.outputs_written = true;
    Ok(Cycle {
        joined: Some(joined),
        written,
    })
}

/// The identity whose outputs the last cycle failed to write, while it is still fresh (renewed
/// within the interval, not expired).
fn outputs_to_retry(p: &Prepared, state: &HeldState) -> Option<(Identity, Suite)> {
    let fresh = state
        .renewed_at
        .is_some_and(|at| at.elapsed() < p.config.renewal_interval);
    if !fresh || state.outputs_written {
        return None;
    }
    let identity = state
        .identity
        .as_ref()
        .filter(|i| i.info.not_after > SystemTime::now())?;
    Some((identity.clone(), state.suite?))
}

/// Renews the bot identity ([`renew`]) and holds the new one at once. A rejoin is marked in
/// storage while in flight: if it fails after the challenge answer went out, the cluster may
/// hold a newer generation than ours, so the held identity is dropped and the mark stays.
async fn join_or_rejoin(p: &Prepared, state: &mut HeldState) -> Result<join::Joined, Failure> {
    let current = state.identity.clone();
    let rejoining = current
        .as_ref()
        .is_some_and(|i| i.info.not_after > SystemTime::now());
    let marked = match (rejoining, &p.config.storage) {
        (true, Destination::Directory { path, .. }) => {
            storage::mark_rejoin(path)?;
            Some(path)
        }
        _ => None,
    };
    match renew(p, current.as_ref()).await {
        Ok(joined) => {
            state.identity = Some(joined.identity.clone());
            state.suite = Some(joined.suite);
            state.renewed_at = Some(std::time::Instant::now());
            state.outputs_written = false;
            Ok(joined)
        }
        Err((failure, true)) => {
            warn!(
                "the rejoin failed after the challenge was answered: the cluster may have issued \
                 certificates keybound did not receive, so the held identity is dropped and the \
                 next attempt joins afresh with the static key"
            );
            state.identity = None;
            state.renewed_at = None;
            Err(failure)
        }
        Err((failure, false)) => {
            if let Some(dir) = marked {
                storage::clear_rejoin(dir);
            }
            Err(failure)
        }
    }
}

/// Writes the new identity to storage; a rejoin's mark (this one's, or one left in doubt by an
/// earlier run) goes once a new identity is stored, or failed to be.
fn store(p: &Prepared, identity: &Identity) -> Result<Option<String>, Failure> {
    let stored = storage::persist(&p.config.storage, identity, &p.config.onboarding.token);
    if let Destination::Directory { path, .. } = &p.config.storage {
        storage::clear_rejoin(path);
    }
    stored.map_err(|e| Failure::new(ExitKind::Config, e))
}

/// Writes the outputs for `bot` over its authenticated connection; no connection is made when
/// no output writes files.
async fn write_outputs(p: &Prepared, bot: &Identity, suite: Suite) -> Result<Vec<String>, Failure> {
    let outputs = output::written(&p.config.outputs);
    if outputs.is_empty() {
        return Ok(Vec::new());
    }
    let auth = connect_to_auth(p, bot).await?;
    output::write_outputs(
        &outputs,
        &auth,
        &p.auth_route,
        bot,
        suite,
        p.config.credential_ttl,
    )
    .await
}

/// The bot's authenticated connection to Auth, each RPC on it bounded by `p.rpc_timeout`.
async fn connect_to_auth(p: &Prepared, identity: &Identity) -> Result<AuthClient, Failure> {
    Ok(AuthClient::connect(&p.auth_route, identity)
        .await?
        .with_deadline(p.rpc_timeout))
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
            let auth = connect_to_auth(p, identity).await.map_err(|f| (f, false))?;
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
