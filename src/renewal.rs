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

use crate::auth::{AuthClient, AuthRoute, ConnectError};
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
use crate::bkp::device::{Device, DeviceState};
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
use crate::bkp::store::StateStore;
use crate::bkp::{ClientState, Keys, RegistrationSecret, Standard};
use crate::config::Config;
use crate::config::KeyMode;
use crate::identity::Identity;
use crate::join::{self, JoinError, JoinParams};
use crate::output;
use crate::storage::{self, Held, HeldState, KeptAuth};
use crate::tls::Trust;
use crate::transport::Preconnect;
use crate::untrusted;
use crate::values::{Destination, HostPort};
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;
use keybound_teleport::text::one_line;

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
    /// The open static key; `None` in standard mode.
    pub signer: Option<Arc<dyn keybound_signer::Signer>>,
    /// Standard mode: where the client state lives and the registration secret; `None` with a
    /// static key.
    pub standard: Option<StandardSetup>,
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
        let (signer, standard) = match config.onboarding.key_mode() {
            KeyMode::Static => {
                let signer = crate::signer::open_signer(&signer_config).map_err(|e| {
                    let kind = if e.kind() == ErrorKind::Unavailable {
                        ExitKind::Unreachable
                    } else {
                        ExitKind::Config
                    };
                    Failure::new(kind, anyhow::Error::new(e))
                })?;
                (Some(signer), None)
            }
            KeyMode::Standard => {
                let tpm_keys = config.onboarding.tpm_device_keys().map(|c| c.key);
                if let Some(keybound_signer::config::TpmKey::Handle(handle)) = tpm_keys {
                    info!(
                        "signer tpm with tpm_key_handle and a registration secret: standard bound \
                         keypair joining, every key made inside the TPM, kept at persistent \
                         handle 0x{handle:08x} or the next"
                    );
                } else if tpm_keys.is_some() {
                    info!(
                        "signer tpm without a key: standard bound keypair joining, every key made \
                         inside the TPM (key files in storage)"
                    );
                } else if config.onboarding.device_keys().is_some() {
                    info!(
                        "signer pkcs11 with a URI naming only the token: standard bound keypair \
                         joining, every key made inside the token"
                    );
                } else {
                    info!(
                        "no static key configured: standard bound keypair joining, with the keys in storage"
                    );
                }
                (None, Some(StandardSetup::new(&config)?))
            }
        };
        Ok(Self {
            config,
            proxy,
            direct,
            auth_route,
            trust,
            signer_config,
            signer,
            standard,
            rpc_timeout,
        })
    }
}

/// Standard bound-keypair joining's settings ([`crate::bkp`]).
#[derive(Clone, Debug)]
pub struct StandardSetup {
    /// The storage directory, where the client state lives beside the identity.
    pub dir: std::path::PathBuf,
    /// Its symlinks policy.
    pub symlinks: crate::fsutil::Symlinks,
    /// The registration secret, if one is configured.
    pub secret: Option<RegistrationSecret>,
    /// The PKCS#11 token keys are made in (`bkp::device`); `None`: key files in storage.
    pub device: Option<keybound_signer::config::Pkcs11Config>,
    /// The TPM keys are made in, as key files in storage (`bkp::device`).
    pub tpm_device: Option<keybound_signer::config::TpmConfig>,
    /// The TPM NV index the client state lives in instead of storage (`bkp::store`).
    pub tpm_state_nv_index: Option<u32>,
}

impl StandardSetup {
    /// The settings of `config`, checked: the storage must be a directory.
    pub fn new(config: &Config) -> Result<Self, Failure> {
        let secret = config
            .onboarding
            .registration_secret()
            .map_err(|e| Failure::config(anyhow!(e)))?;
        let Destination::Directory { path, symlinks } = &config.storage else {
            return Err(Failure::config(anyhow!(
                "no static key is configured, so keybound joins in standard mode, which keeps \
                 its keys and join state in storage: set storage to a directory (memory storage \
                 is lost at exit, and the registration secret works once), or configure a static \
                 key (static_private_key_path, a signer)"
            )));
        };
        let device = config.onboarding.device_keys();
        if device.is_some() && !cfg!(feature = "pkcs11") {
            return Err(Failure::config(anyhow!(
                "signer: pkcs11 with a URI naming only a token makes keys in the token, and this \
                 keybound was built without the pkcs11 feature"
            )));
        }
        let tpm_device = config.onboarding.tpm_device_keys();
        if tpm_device.is_some() && !cfg!(feature = "tpm") {
            return Err(Failure::config(anyhow!(
                "signer: tpm without a key makes keys in the TPM, and this keybound was built \
                 without the tpm feature"
            )));
        }
        let tpm_state_nv_index = config.onboarding.tpm_state_nv().map(|(tpm, index)| {
            if let keybound_signer::config::TpmKey::File(_) = tpm.key {
                warn!(
                    "tpm_state_nv_index keeps the client state in the TPM, but the keys are TSS2 key \
                     files in storage, which a wiped disk loses with them; keep the keys at \
                     persistent handles (tpm_key_handle) for a stateless node"
                );
            }
            index
        });
        Ok(Self {
            dir: path.clone(),
            symlinks: *symlinks,
            secret,
            device,
            tpm_device,
            tpm_state_nv_index,
        })
    }

    /// The stored client state: key files, or references to keys in the token.
    pub fn load_keys(&self) -> anyhow::Result<Option<Keys>> {
        #[cfg(any(feature = "pkcs11", feature = "tpm"))]
        if let Some(device) = self.device_of_keys() {
            return Ok(
                DeviceState::load(&self.dir, self.symlinks, device, self.state_store())?
                    .map(|state| Keys::Device(Box::new(state))),
            );
        }
        Ok(ClientState::load(&self.dir, self.symlinks)?.map(Keys::Files))
    }

    fn empty_keys(&self) -> Keys {
        #[cfg(any(feature = "pkcs11", feature = "tpm"))]
        if let Some(device) = self.device_of_keys() {
            return Keys::Device(Box::new(DeviceState::empty(
                &self.dir,
                self.symlinks,
                device,
                self.state_store(),
            )));
        }
        Keys::Files(ClientState::empty(&self.dir, self.symlinks))
    }

    /// Where the client state of device keys is kept: the TPM NV index, or storage.
    #[cfg(any(feature = "pkcs11", feature = "tpm"))]
    pub fn state_store(&self) -> StateStore {
        #[cfg(feature = "tpm")]
        if let (Some(tpm), Some(index)) = (&self.tpm_device, self.tpm_state_nv_index) {
            return StateStore::nv(tpm.clone(), index);
        }
        StateStore::Files {
            dir: self.dir.clone(),
            symlinks: self.symlinks,
        }
    }

    /// The device keys are made in, if any.
    #[cfg(any(feature = "pkcs11", feature = "tpm"))]
    fn device_of_keys(&self) -> Option<Device> {
        #[cfg(feature = "pkcs11")]
        if let Some(device) = &self.device {
            return Some(Device::Pkcs11(device.clone()));
        }
        #[cfg(feature = "tpm")]
        if let Some(tpm) = &self.tpm_device {
            return Some(match tpm.key {
                keybound_signer::config::TpmKey::Handle(_) => Device::TpmHandles(tpm.clone()),
                keybound_signer::config::TpmKey::File(_) => Device::Tpm(tpm.clone()),
            });
        }
        None
    }

    /// The client state for one join, read afresh as tbot reads it at every join: the stored
    /// one, or an empty one when a registration secret is configured.
    pub fn load(&self) -> Result<Standard, Failure> {
        let loaded = self
            .load_keys()
            .map_err(|e| Failure::config(e.context("loading bound keypair client state")))?;
        let state = match (loaded, &self.secret) {
            (Some(state), _) => state,
            (None, Some(_)) => self.empty_keys(),
            (None, None) => {
                return Err(Failure::config(anyhow!(
                    "loading bound keypair client state: {} holds no bound keypair and no \
                     registration secret is configured: run keybound keypair create --storage {} \
                     and register its public key on the token, or give the token's registration \
                     secret (--registration-secret, registration_secret_path or {})",
                    self.dir.display(),
                    self.dir.display(),
                    crate::bkp::REGISTRATION_SECRET_ENV
                )));
            }
        };
        Ok(Standard::new(state, self.secret.clone()))
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

/// What a cycle tells whoever runs it, part by part, as tbot's services report to its status
/// registry (`lib/tbot/readyz`): the long-running agent's `/readyz`. `()` hears nothing.
pub trait Report {
    /// The bot identity was renewed and stored (`Ok`), or renewing it failed.
    fn identity(&self, result: Result<(), &Failure>);
    /// The output tbot would call `service` was written, or failed.
    fn output(&self, service: &str, result: Result<(), &Failure>);
    /// What to send on the outputs' connection to Auth (open, with the new identity `bot`)
    /// beside the outputs, as more streams in their flight: a oneshot's heartbeat. Nothing by
    /// default.
    fn beside_outputs<'a>(
        &'a self,
        _auth: &'a AuthClient,
        _bot: &'a Identity,
    ) -> Option<Beside<'a>> {
        None
    }
}

/// A call sent beside the outputs ([`Report::beside_outputs`]); it reports its own failures.
pub type Beside<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl Report for () {
    fn identity(&self, _: Result<(), &Failure>) {}
    fn output(&self, _: &str, _: Result<(), &Failure>) {}
}

/// Renews the bot identity, stores it, then writes every output. When the previous renewal's
/// outputs failed and its identity is still fresh, only the outputs are retried: another rejoin
/// would sign again for nothing.
pub async fn cycle(p: &Prepared, held: &Held) -> Result<Cycle, Failure> {
    cycle_reporting(p, held, &()).await
}

/// [`cycle`], telling `report` how each part went.
pub async fn cycle_reporting<R: Report + ?Sized>(
    p: &Prepared,
    held: &Held,
    report: &R,
) -> Result<Cycle, Failure> {
    let mut state = held.lock().await;
    if let Some((identity, suite)) = outputs_to_retry(p, &state) {
        info!("retrying the identity outputs with the identity renewed at the last attempt");
        let written = write_outputs(
            p,
            &identity,
            suite,
            report,
            &mut state,
            Connection::default(),
        )
        .await?;
        state.outputs_written = true;
        return Ok(Cycle {
            joined: None,
            written,
        });
    }
    // The outputs' connection to Auth can only present the new identity once the join has
    // returned it, but its TCP handshake needs no identity: it goes now, and its round trip
    // overlaps the join's.
    let ahead = (!output::written(&p.config.outputs).is_empty())
        .then(|| Preconnect::start(p.auth_route.addr()));
    let mut prefetched = None;
    let (joined, token) = match renew_identity(p, &mut state, &mut prefetched).await {
        Ok(renewed) => renewed,
        Err(failure) => {
            report.identity(Err(&failure));
            return Err(failure);
        }
    };
    // The new identity is stored (staged, fsynced, renamed: milliseconds) while the outputs
    // already use it: their TLS handshake with it and their certificates, round trips that do
    // not wait for the disk. Their files wait for it: they are written only once the identity is
    // stored, and not at all when storing it fails, which then ends the cycle as it did before
    // the outputs began. tbot too hands a renewed identity to its services before saving it
    // (`renew` in `lib/tbot/internal/identity/service.go`: `s.facade.Set`, then
    // `identity.SaveIdentity`); there the services go on with it even when the save fails.
    let (keeper, gate) = output::WriteGate::shut();
    let (mut written, issued) = {
        let mut storing = std::pin::pin!(async {
            let stored = store(p, &joined.identity, &token).await;
            keeper.decide(stored.is_ok());
            stored
        });
        let connection = Connection { ahead, prefetched };
        let mut outputs = std::pin::pin!(issue_outputs(
            p,
            &joined.identity,
            joined.suite,
            report,
            connection,
            gate
        ));
        let (stored, issued) = tokio::select! {
            biased;
            stored = &mut storing => (stored, None),
            // Only when every output failed before reaching the gate (no connection, say).
            issued = &mut outputs => (storing.await, Some(issued)),
        };
        report.identity(stored.as_ref().map(|_| ()));
        // A failure to store drops the outputs where they are: nothing of theirs is written.
        let written: Vec<String> = stored?.into_iter().collect();
        match issued {
            Some(issued) => (written, issued),
            None => (written, outputs.await),
        }
    };
    written.extend(settle_outputs(
        p,
        &joined.identity,
        report,
        &mut state,
        issued,
    )?);
    state.outputs_written = true;
    Ok(Cycle {
        joined: Some(joined),
        written,
    })
}

/// Writes `p`'s outputs with the bot identity held, without renewing it: the long-running
/// agent's outputs that fall due between renewals of the bot identity, each output on its own
/// `renewal_interval` (`crate::agent`). Fails, writing nothing, when no valid identity is held.
pub async fn outputs_only<R: Report + ?Sized>(
    p: &Prepared,
    held: &Held,
    report: &R,
) -> Result<Vec<String>, Failure> {
    let mut state = held.lock().await;
    let held_now = state
        .identity
        .clone()
        .filter(|i| i.info.not_after > SystemTime::now())
        .zip(state.suite);
    let Some((identity, suite)) = held_now else {
        return Err(Failure::new(
            ExitKind::Unreachable,
            anyhow!("no valid bot identity is held to write the outputs with; renewing it first"),
        ));
    };
    write_outputs(
        p,
        &identity,
        suite,
        report,
        &mut state,
        Connection::default(),
    )
    .await
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

/// The identity part of a cycle: the token read (it may be a file), the bot identity renewed
/// and held (not yet stored: [`store`]); with the token.
async fn renew_identity(
    p: &Prepared,
    state: &mut HeldState,
    prefetched: &mut Option<Prefetch>,
) -> Result<(join::Joined, String), Failure> {
    let token = p.token()?;
    let joined = join_or_rejoin(p, state, &token, prefetched).await?;
    Ok((joined, token))
}

impl Prepared {
    /// The join token's name, read afresh (from its file, when the configuration names one).
    pub fn token(&self) -> Result<String, Failure> {
        let configured = &self.config.onboarding.token;
        crate::config::token::read(configured).map_err(|e| Failure::config(anyhow!(e)))
    }
}

/// Renews the bot identity ([`renew`]) and holds the new one at once. A rejoin is marked in
/// storage while in flight: if it fails after the challenge answer went out, the cluster may
/// hold a newer generation than ours, so the held identity is dropped and the mark stays.
async fn join_or_rejoin(
    p: &Prepared,
    state: &mut HeldState,
    token: &str,
    prefetched: &mut Option<Prefetch>,
) -> Result<join::Joined, Failure> {
    let current = state.identity.clone();
    // The agent's connection with the current identity, kept from the last renewal.
    let kept = state.auth.take().filter(|kept| {
        current
            .as_ref()
            .is_some_and(|i| i.tls_cert_pem == kept.cert_pem)
    });
    let outputs = output::written(&p.config.outputs);
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
    let mut renewing = Renewing {
        token,
        current: current.as_ref(),
        unknown: state.unknown_to_cluster,
        fallback_allowed: !state.after_fallback,
        fell_back: false,
        kept: kept.map(|k| k.client),
        needs: (!outputs.is_empty()).then(|| output::needs(&outputs)),
        prefetched: None,
    };
    let result = renew(p, &mut renewing).await;
    let fell_back = renewing.fell_back;
    *prefetched = renewing.prefetched.take();
    match result {
        Ok(joined) => {
            state.identity = Some(joined.identity.clone());
            state.suite = Some(joined.suite);
            state.renewed_at = Some(std::time::Instant::now());
            state.outputs_written = false;
            state.after_fallback = fell_back;
            state.unknown_to_cluster = false;
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
            if fell_back {
                // The cluster does not know it: the next attempt joins with the static key
                // again. It is kept for the name of its cluster, which alone may challenge the
                // key (`join::challenge`), as an expired identity is.
                state.unknown_to_cluster = true;
                state.renewed_at = None;
            }
            Err(failure)
        }
    }
}

/// Writes the new identity to storage, on a thread of its own (its fsyncs would hold up the
/// connections in flight on the runtime's one thread); a rejoin's mark (this one's, or one left
/// in doubt by an earlier run) goes once a new identity is stored, or failed to be.
async fn store(p: &Prepared, identity: &Identity, token: &str) -> Result<Option<String>, Failure> {
    let Destination::Directory { path, .. } = &p.config.storage else {
        return Ok(None);
    };
    let (storage, path) = (p.config.storage.clone(), path.clone());
    let (identity, token) = (identity.clone(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        let stored = storage::persist(&storage, &identity, &token);
        storage::clear_rejoin(&path);
        stored.map_err(|e| Failure::new(ExitKind::Config, e))
    })
    .await
    .unwrap_or_else(|e| {
        Err(Failure::new(
            ExitKind::Software,
            anyhow!("storing the bot identity failed: {e}"),
        ))
    })
}

/// Writes the outputs for `bot` (stored already) over its authenticated connection, telling
/// `report` how each went; no connection is made when no output writes files. A connection that
/// works confirms that the cluster knows the held identity.
async fn write_outputs<R: Report + ?Sized>(
    p: &Prepared,
    bot: &Identity,
    suite: Suite,
    report: &R,
    state: &mut HeldState,
    connection: Connection,
) -> Result<Vec<String>, Failure> {
    let issued = issue_outputs(p, bot, suite, report, connection, output::WriteGate::open()).await;
    settle_outputs(p, bot, report, state, issued)
}

/// What the outputs of a cycle came to: the connection to Auth they used, if it opened, and
/// each output's result ([`output::write_outputs_sharing`]).
struct Issued {
    auth: Option<AuthClient>,
    results: Result<Vec<Result<String, Failure>>, Failure>,
}

/// Connects to Auth with `bot` and has every output issue, then write its files once `gate`
/// lets it; nothing is reported or held yet ([`settle_outputs`]).
async fn issue_outputs<R: Report + ?Sized>(
    p: &Prepared,
    bot: &Identity,
    suite: Suite,
    report: &R,
    connection: Connection,
    gate: output::WriteGate,
) -> Issued {
    let outputs = output::written(&p.config.outputs);
    if outputs.is_empty() {
        return Issued {
            auth: None,
            results: Ok(Vec::new()),
        };
    }
    let auth = match connect_to_auth(p, bot, connection.ahead).await {
        Ok(auth) => auth,
        Err(failure) => {
            return Issued {
                auth: None,
                results: Err(failure),
            };
        }
    };
    let written = async {
        let shared = match connection.prefetched {
            Some(prefetched) => prefetched.take().await,
            None => Ok(None),
        };
        match shared {
            Ok(shared) => {
                output::write_outputs_sharing(
                    &outputs,
                    &auth,
                    &p.auth_route,
                    bot,
                    suite,
                    p.config.credential_ttl,
                    shared,
                    &gate,
                )
                .await
            }
            Err(failure) => Err(failure),
        }
    };
    let results = match report.beside_outputs(&auth, bot) {
        Some(beside) => tokio::join!(written, beside).0,
        None => written.await,
    };
    Issued {
        auth: Some(auth),
        results,
    }
}

/// The outputs' results told to `report` and put together; the connection they used held for
/// the agent's next rejoin.
fn settle_outputs<R: Report + ?Sized>(
    p: &Prepared,
    bot: &Identity,
    report: &R,
    state: &mut HeldState,
    issued: Issued,
) -> Result<Vec<String>, Failure> {
    let outputs = output::written(&p.config.outputs);
    if let Some(auth) = issued.auth {
        state.after_fallback = false;
        // The agent keeps the connection for the next renewal's rejoin, as tbot keeps its bot
        // client until the identity is renewed (`lib/tbot/client/builder.go`).
        state.auth = Some(KeptAuth {
            cert_pem: bot.tls_cert_pem.clone(),
            client: auth,
        });
    }
    match issued.results {
        Ok(results) => {
            for (output, result) in outputs.iter().zip(&results) {
                report.output(&output.service_name(), result.as_ref().map(|_| ()));
            }
            output::combine(&outputs, results)
        }
        Err(failure) => {
            for output in &outputs {
                report.output(&output.service_name(), Err(&failure));
            }
            Err(failure)
        }
    }
}

/// The bot's authenticated connection to Auth, each RPC on it bounded by `p.rpc_timeout`; over
/// the TCP connection opened `ahead` when there is one.
async fn connect_to_auth(
    p: &Prepared,
    identity: &Identity,
    ahead: Option<Preconnect>,
) -> Result<AuthClient, Failure> {
    Ok(AuthClient::connect_over(&p.auth_route, identity, ahead)
        .await?
        .with_deadline(p.rpc_timeout))
}

/// How the outputs' connection to Auth starts: over a TCP connection opened ahead, with the
/// shared facts already asked for on the rejoin's connection.
#[derive(Default)]
struct Connection {
    ahead: Option<Preconnect>,
    prefetched: Option<Prefetch>,
}

/// The shared facts of a renewal's outputs ([`output::Shared`]), asked for on the rejoin's
/// connection while the rejoin runs: the identity being renewed reads them as the new one would
/// (the same bot and role, the same cluster), and the outputs' own connection then has only
/// their certificates to ask for. A lookup the cluster refused is asked again there, so that a
/// refusal reads as it does without this; one that was not answered in time fails the outputs
/// as it would have there.
pub(crate) struct Prefetch(tokio::task::JoinHandle<Result<output::Shared, Failure>>);

impl Prefetch {
    fn start(auth: &AuthClient, route: &AuthRoute, bot: &Identity, needs: output::Needs) -> Self {
        let (auth, route, bot) = (auth.clone(), route.clone(), bot.clone());
        Self(tokio::spawn(async move {
            output::Shared::fetch(&auth, &route, &bot, needs).await
        }))
    }

    /// The shared facts; `None` to ask again with the new identity (after a refusal); the
    /// failure itself when the cluster did not answer in time or could not be reached, which
    /// asking again would only repeat, doubling the wait.
    async fn take(mut self) -> Result<Option<output::Shared>, Failure> {
        match (&mut self.0).await {
            Ok(Ok(shared)) => Ok(Some(shared)),
            Ok(Err(failure)) if failure.kind == ExitKind::Unreachable => Err(failure),
            Ok(Err(failure)) => {
                debug!(error = %one_line(&format!("{:#}", failure.error)), "the lookups made during the rejoin failed; asking again with the new identity");
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one renewal works with, and what it did.
struct Renewing<'a> {
    /// The join token's name.
    token: &'a str,
    /// The held identity.
    current: Option<&'a Identity>,
    /// The cluster said it does not know `current`: join with the static key, as once it expires.
    unknown: bool,
    /// Whether a rejoin the cluster refuses as unknown may fall back to the static key: not when
    /// `current` itself came from such a fallback and has not reached Auth since (then the
    /// cause is on the path to Auth, and each fallback would spend a recovery for nothing).
    fallback_allowed: bool,
    /// Set when the cluster did not know `current` and the static key joined instead.
    fell_back: bool,
    /// A connection with `current`, kept by the agent from the last renewal.
    kept: Option<AuthClient>,
    /// What the outputs share, when there are outputs: asked for during a rejoin.
    needs: Option<output::Needs>,
    /// Those lookups, in flight.
    prefetched: Option<Prefetch>,
}

/// Renews the bot identity, as tbot's identity service does (`renewIdentity`,
/// `lib/tbot/internal/identity/service.go`): while the held identity is valid, a soft rejoin over
/// the authenticated connection (same bot instance, no recovery used); without one, or once it
/// has expired, an unauthenticated join through the Proxy (a recovery: a new bot instance).
async fn renew(p: &Prepared, r: &mut Renewing<'_>) -> Result<join::Joined, (Failure, bool)> {
    let params = JoinParams {
        proxy: p.proxy.clone(),
        direct: p.direct,
        trust: p.trust.clone(),
        token: r.token.to_owned(),
        // A held identity, even an expired one, says which cluster may challenge the key.
        cluster: r.current.map(|i| i.info.cluster_name.as_str().to_owned()),
        credential_ttl: p.config.credential_ttl,
        signer: p.signer.clone(),
        standard: match &p.standard {
            Some(setup) => Some(setup.load().map_err(|f| (f, false))?),
            None => None,
        },
        timeout: join::JOIN_TIMEOUT,
    };
    let configured = &p.config.onboarding.token;
    let with = key_phrase(p);
    let joined = match r.current {
        Some(_) if r.unknown => {
            info!("the cluster does not know the bot identity; joining with {with}");
            r.fell_back = true;
            join_with_static_key(&params, configured).await?
        }
        Some(identity) if identity.info.not_after > SystemTime::now() => {
            rejoin_or_fall_back(p, r, identity, params).await?
        }
        Some(identity) => {
            warn!(
                expired = %keybound_teleport::time::format_time(identity.info.not_after),
                "the bot identity expired before it could be renewed; joining without it, which \
                 uses a recovery and starts a new bot instance"
            );
            join_with_static_key(&params, configured).await?
        }
        None => {
            info!("no bot identity yet; joining with {with}");
            join_with_static_key(&params, configured).await?
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

/// What a join proves possession of, for the log: the static key, or (standard mode) the bound
/// keypair kept in storage.
fn key_phrase(p: &Prepared) -> &'static str {
    if p.standard.is_some() {
        "the bound keypair in storage"
    } else {
        "the static key"
    }
}

/// The soft rejoin with `identity`; when the cluster says it does not know the identity (see
/// [`Unknown`]), a join with the static key at once, as after an expiry, instead of retrying a
/// rejoin that cannot work until the identity expires.
async fn rejoin_or_fall_back(
    p: &Prepared,
    r: &mut Renewing<'_>,
    identity: &Identity,
    params: JoinParams,
) -> Result<join::Joined, (Failure, bool)> {
    let configured = &p.config.onboarding.token;
    debug!(route = %p.auth_route, generation = identity.info.generation.unwrap_or(0), "rejoining with the current identity");
    let unknown = match rejoin(p, identity, &params, configured, r).await {
        Ok(joined) => return Ok(joined),
        Err(Rejoined::Unknown(unknown)) if r.fallback_allowed => unknown,
        Err(Rejoined::Unknown(unknown)) => return Err((unknown.failure, false)),
        Err(Rejoined::Failed(failure, in_doubt)) => return Err((failure, in_doubt)),
    };
    warn!(
        reason = %one_line(&format!("{:#}", unknown.failure.error)),
        "the cluster no longer knows the bot identity ({}); joining with {} at once, which \
         uses a recovery and starts a new bot instance",
        unknown.why,
        key_phrase(p)
    );
    r.fell_back = true;
    // What was looked up beside the rejoin was read with an identity the cluster disowns.
    r.prefetched = None;
    // `params.cluster` is still the identity's: only that cluster may challenge the key, so a
    // cluster of another name cannot get it signed by posing as a rebuilt one.
    join_with_static_key(&params, configured).await
}

/// Why the cluster does not know an identity: the evidence, and what it means.
struct Unknown {
    failure: Failure,
    why: &'static str,
}

/// How a rejoin ended, when it did not work.
enum Rejoined {
    /// The cluster does not know the identity.
    Unknown(Unknown),
    /// Any other failure, and whether the challenge answer had gone out.
    Failed(Failure, bool),
}

/// The soft rejoin over the authenticated connection: the identity's certificate to Auth, then
/// the join over that connection. Two answers mean the cluster does not know the identity (read
/// in Teleport's source, `docs/teleport-source-notes.md`, "Health endpoints and start-up"):
/// Auth's certificate is from CAs the identity does not hold (a rebuilt cluster, or CAs rotated
/// while keybound was away), or the join refuses the identity's credentials as the token's
/// binding is gone (the token made again).
async fn rejoin(
    p: &Prepared,
    identity: &Identity,
    params: &JoinParams,
    configured: &str,
    r: &mut Renewing<'_>,
) -> Result<join::Joined, Rejoined> {
    if let Some(kept) = r.kept.take() {
        let prefetched = r
            .needs
            .map(|needs| Prefetch::start(&kept, &p.auth_route, identity, needs));
        match join::rejoin(params, &kept).await {
            // The kept connection closed (Auth restarted, or dropped it while idle) before the
            // challenge was answered: once more on a new one, which also tells a cluster that
            // no longer knows the identity from one that went away.
            Err(e) if !e.in_doubt && matches!(e.error, JoinError::Unreachable(_)) => {
                debug!(error = %e.error, "the kept connection to Auth failed; rejoining on a new one");
            }
            result => {
                r.prefetched = prefetched;
                return rejoined(result, identity, configured);
            }
        }
    }
    let auth = match AuthClient::connect(&p.auth_route, identity).await {
        Ok(auth) => auth.with_deadline(p.rpc_timeout),
        Err(e @ ConnectError::UnknownAuthority(_)) => {
            return Err(Rejoined::Unknown(Unknown {
                failure: Failure::from(e),
                why: "Auth's certificate is from other CAs: the cluster was rebuilt or changed \
                      its CAs",
            }));
        }
        Err(e) => return Err(Rejoined::Failed(Failure::from(e), false)),
    };
    r.prefetched = r
        .needs
        .map(|needs| Prefetch::start(&auth, &p.auth_route, identity, needs));
    rejoined(join::rejoin(params, &auth).await, identity, configured)
}

/// How a rejoin's result reads (see [`rejoin`]).
fn rejoined(
    result: Result<join::Joined, join::RejoinError>,
    identity: &Identity,
    configured: &str,
) -> Result<join::Joined, Rejoined> {
    let mut joined = match result {
        Ok(joined) => joined,
        Err(e) if e.error.identity_unknown() => {
            return Err(Rejoined::Unknown(Unknown {
                failure: join_failure(e.error, "rejoining with", configured),
                why: "the token no longer binds it: the token was made again",
            }));
        }
        Err(e) => {
            let failure = join_failure(e.error, "rejoining with", configured);
            return Err(Rejoined::Failed(failure, e.in_doubt));
        }
    };
    if joined.identity.info.bot_instance_id != identity.info.bot_instance_id {
        // The cluster did not take the certificate (a failed authorization makes the stream
        // unauthenticated): this was a recovery.
        warn!(
            "the cluster treated the rejoin as unauthenticated: a recovery was used and a new bot instance started"
        );
        joined.authenticated = false;
    }
    Ok(joined)
}

/// The unauthenticated join through the Proxy, with the static key.
async fn join_with_static_key(
    params: &JoinParams,
    configured: &str,
) -> Result<join::Joined, (Failure, bool)> {
    join::join(params)
        .await
        .map_err(|e| (join_failure(e, "joining with", configured), false))
}

/// A failed join as a run's failure; the cluster's refusal names the token tried (by the file
/// holding it, when it came from one: never its contents).
fn join_failure(e: JoinError, doing: &str, configured: &str) -> Failure {
    let kind = match &e {
        JoinError::Rejected { .. } | JoinError::Refused(_) => ExitKind::Rejected,
        JoinError::Unreachable(_) | JoinError::TimedOut(_) => ExitKind::Unreachable,
        JoinError::Config(_) => ExitKind::Config,
        JoinError::Signer(s) if s.is_transient() => ExitKind::Unreachable,
        JoinError::Signer(_) => ExitKind::Config,
    };
    let refused = matches!(e, JoinError::Rejected { .. });
    let error = anyhow::Error::new(e);
    let error = if refused {
        error.context(format!(
            "{doing} {}",
            crate::config::token::describe(configured)
        ))
    } else {
        error
    };
    Failure::new(kind, error)
}
