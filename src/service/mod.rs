//! Long-running services: what the agent serves between renewals, beside the outputs it
//! writes. One kind so far, tbot's `workload-identity-api` ([`workload_api`]).
//!
//! A service sits in `services:` with the outputs (`RawEntry` tells them apart by `type:`).
//! The agent starts the services before its first renewal ([`Services::start`]: the listeners are
//! bound then, so a bad socket path ends the agent at once) and hands them the bot identity after
//! each renewal ([`Services::follow`]); from it they make their own role-impersonated connection
//! and read the trust bundle (`workload_api::Live`). They stop, and remove their sockets, when the agent
//! stops (SIGTERM, SIGINT). `start --oneshot` runs no service: as tbot, which skips in one-shot
//! mode every service without a one-shot form (`lib/tbot/tbot.go`, "Service does not support
//! oneshot mode, ignoring"), and the Workload API has none.

mod authority;
pub mod bundle;
mod listen;
pub mod workload_api;

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use tokio::sync::watch;
use tracing::info;

use crate::auth::{self, AuthClient, AuthRoute};
use crate::identity::Identity;
use crate::output::workload_identity::Session;
use crate::output::{Issue, Lookups, Needs, RawOutput, Shared};
use crate::storage::Held;
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;
use workload_api::Live;

/// tbot's `type:` names of the services keybound runs.
pub const SERVICE_KINDS: &[&str] = &["workload-identity-api"];

/// A configured service.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ServiceConfig {
    /// `type: workload-identity-api`: the SPIFFE Workload API.
    WorkloadApi(workload_api::WorkloadApiConfig),
}

/// One item of `services:`: an output, or a service.
pub(crate) enum RawEntry {
    /// An output (written at each renewal).
    Output(RawOutput),
    /// The Workload API.
    WorkloadApi(workload_api::RawWorkloadApi),
}

/// A service's YAML is read as an output's (`output::RawOutput`): straight from the mapping when
/// `type:` comes first, so that errors keep their line and column.
impl<'de> Deserialize<'de> for RawEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntry;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a service: a mapping with `type:`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry, A::Error> {
                let Some(first) = map.next_key::<String>()? else {
                    return Err(de::Error::missing_field("type"));
                };
                if first == "type" {
                    let EntryKind(kind) = map.next_value()?;
                    return entry(kind, MapAccessDeserializer::new(map));
                }
                let mut whole = serde_yaml::Mapping::new();
                whole.insert(first.into(), map.next_value()?);
                while let Some((key, value)) = map.next_entry()? {
                    whole.insert(key, value);
                }
                let kind = whole
                    .get("type")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| de::Error::missing_field("type"))?
                    .to_owned();
                entry(&kind, serde_yaml::Value::Mapping(whole)).map_err(de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

/// A `type:` value: a service's or an output's kind, checked as it is read, so that the error
/// carries the value's line and column.
struct EntryKind(&'static str);

impl<'de> Deserialize<'de> for EntryKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::values::checked_str(d, |v| {
            SERVICE_KINDS
                .iter()
                .chain(crate::output::KINDS)
                .find(|k| **k == v)
                .map(|k| Self(k))
                .ok_or_else(|| crate::output::unsupported(v))
        })
    }
}

/// The entry of kind `kind` from the rest of its YAML.
fn entry<'de, D: Deserializer<'de>>(kind: &str, d: D) -> Result<RawEntry, D::Error> {
    match kind {
        "workload-identity-api" => {
            workload_api::RawWorkloadApi::deserialize(d).map(RawEntry::WorkloadApi)
        }
        output => crate::output::deserialize_kind(output, d).map(RawEntry::Output),
    }
}

impl ServiceConfig {
    /// How logs name it.
    pub fn label(&self) -> String {
        match self {
            Self::WorkloadApi(c) => c.label(),
        }
    }
}

/// What the agent hands its services after a renewal.
pub struct Renewed {
    /// The bot identity.
    pub bot: Identity,
    /// The suite it was issued under, when keybound joined for it (else the key's own type).
    pub suite: Option<Suite>,
}

/// How the services reach the cluster.
pub struct Context {
    /// How the bot reaches Auth.
    pub route: AuthRoute,
    /// Each RPC's deadline.
    pub rpc_timeout: Duration,
    /// The top-level `credential_ttl` (the impersonated connection's, and SVIDs' by default).
    pub credential_ttl: Duration,
    /// The top-level `renewal_interval` (the X.509 stream's by default).
    pub renewal_interval: Duration,
}

/// How often the SPIFFE CA is read again between renewals, so that a CA change reaches the
/// streams without waiting for the next renewal.
const CA_POLL: Duration = Duration::from_secs(60);

/// The running services.
pub struct Services {
    renewed: watch::Sender<Option<Arc<Renewed>>>,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Whether any service runs.
    any: bool,
}

impl Services {
    /// Binds each service's listener and starts serving (requests wait for the first identity).
    pub async fn start(configs: &[ServiceConfig], cx: Context) -> Result<Self, Failure> {
        let (renewed, renewed_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let (live_tx, live_rx) = watch::channel(None);
        let mut tasks = Vec::new();
        for config in configs {
            let ServiceConfig::WorkloadApi(config) = config;
            let bound = listen::Bound::bind(&config.listen)
                .map_err(|e| Failure::config(anyhow!("service {}: {e:#}", config.label())))?;
            info!(service = %config.label(), listen = %config.listen, "serving the SPIFFE Workload API");
            let api = Arc::new(workload_api::WorkloadApi {
                config: Arc::new(config.clone()),
                ttl: config.credential_ttl.unwrap_or(cx.credential_ttl),
                interval: config.renewal_interval.unwrap_or(cx.renewal_interval),
                live: live_rx.clone(),
            });
            tasks.push(tokio::spawn(listen::serve(bound, api, stop_rx.clone())));
        }
        if !configs.is_empty() {
            let labels: Vec<String> = configs.iter().map(ServiceConfig::label).collect();
            tasks.push(tokio::spawn(keep(
                cx,
                renewed_rx,
                live_tx,
                labels.join(", "),
                stop_rx,
            )));
        }
        Ok(Self {
            renewed,
            stop,
            any: !tasks.is_empty(),
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Hands the services the held bot identity, when it is new to them.
    pub async fn follow(&self, held: &Held) {
        if !self.any {
            return;
        }
        let state = held.lock().await;
        let Some(bot) = state
            .identity
            .as_ref()
            .filter(|_| !state.unknown_to_cluster)
        else {
            return;
        };
        let new =
            self.renewed.borrow().as_ref().map(|r| &r.bot.tls_cert_pem) != Some(&bot.tls_cert_pem);
        if new {
            let renewed = Renewed {
                bot: bot.clone(),
                suite: state.suite,
            };
            self.renewed.send_replace(Some(Arc::new(renewed)));
        }
    }

    /// Stops serving; each unix socket is removed.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Keeps [`Live`] current: made anew after each renewal, its bundle read again every
/// [`CA_POLL`]. A failure keeps the last good one.
async fn keep(
    cx: Context,
    mut renewed: watch::Receiver<Option<Arc<Renewed>>>,
    live: watch::Sender<Option<Arc<Live>>>,
    label: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopped = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::select! {
            changed = renewed.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(now) = renewed.borrow_and_update().clone() else {
                    continue;
                };
                match make_live(&cx, &now).await {
                    Ok(made) => {
                        live.send_replace(Some(Arc::new(made)));
                    }
                    Err(f) => workload_api::refresh_failed(&label, &f),
                }
            }
            () = tokio::time::sleep(CA_POLL) => {
                let current = live.borrow().clone();
                if let Some(current) = current {
                    match read_bundle(&current.auth, &current.session).await {
                        Ok(bundle) if bundle != *current.bundle => {
                            info!(service = %label, "the SPIFFE CA changed: sending the new bundle and SVIDs");
                            live.send_replace(Some(Arc::new(Live {
                                session: current.session.clone(),
                                bundle: Arc::new(bundle),
                                suite: current.suite,
                                auth: current.auth.clone(),
                            })));
                        }
                        Ok(_) => {}
                        Err(f) => workload_api::refresh_failed(&label, &f),
                    }
                }
            }
            () = stopped => return,
        }
    }
}

/// The impersonated connection and the bundle for a renewed bot identity.
async fn make_live(cx: &Context, renewed: &Renewed) -> Result<Live, Failure> {
    let auth = AuthClient::connect(&cx.route, &renewed.bot)
        .await?
        .with_deadline(cx.rpc_timeout);
    let suite = renewed.suite.unwrap_or_else(|| auth.subject_suite());
    let shared = Shared::fetch(
        &auth,
        &cx.route,
        &renewed.bot,
        Needs {
            default_roles: true,
        },
    )
    .await?;
    let issue = Issue {
        auth: &auth,
        bot: &renewed.bot,
        suite,
        credential_ttl: cx.credential_ttl,
        lookups: &Lookups::ready(shared),
    };
    let session = Session::open(&issue).await?;
    let bundle = read_bundle(&auth, &session).await?;
    Ok(Live {
        session: Arc::new(session),
        bundle: Arc::new(bundle),
        suite,
        auth: Arc::new(auth),
    })
}

/// The SPIFFE CA of the session's cluster, as served.
async fn read_bundle(auth: &AuthClient, session: &Session) -> Result<bundle::Bundle, Failure> {
    let domain = session.cluster.as_str();
    let ca = auth
        .cert_authority("spiffe", domain)
        .await
        .map_err(|s| auth::status_failure("reading the SPIFFE CA for the Workload API", &s, ""))?;
    bundle::Bundle::from_ca(&ca, domain).map_err(|e| Failure::new(ExitKind::Rejected, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const HEAD: &str = "version: v2\nproxy_server: example.teleport.sh:443\nonboarding:\n  join_method: bound_keypair\n  token: example-token\n";

    fn parse(tail: &str) -> Result<Config, String> {
        Config::parse(&format!("{HEAD}{tail}"), "tbot.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn services_hold_outputs_and_the_workload_api_in_any_key_order() {
        let config = parse(
            "services:\n  - type: identity\n    destination: {type: directory, path: /tmp/kb-out}\n  \
             - type: workload-identity-api\n    listen: unix:///run/kb/w.sock\n    selector: {name: a}\n  \
             - listen: tcp://127.0.0.1:9000\n    selector: {labels: {env: [dev]}}\n    type: workload-identity-api\n",
        )
        .unwrap();
        assert_eq!(config.outputs.len(), 1);
        let labels: Vec<String> = config.services.iter().map(ServiceConfig::label).collect();
        assert_eq!(
            labels,
            [
                "workload-identity-api (unix:///run/kb/w.sock)",
                "workload-identity-api (tcp://127.0.0.1:9000)"
            ]
        );
    }

    #[test]
    fn a_bad_service_is_one_line_naming_it_and_outputs_do_not_take_services() {
        let err = parse(
            "services:\n  - type: identity\n    destination: {type: memory}\n  - type: workload-identity-api\n    listen: http://x:1\n    selector: {name: a}\n",
        )
        .unwrap_err();
        assert!(
            err.contains("services[1].listen: unsupported scheme in \"http://x:1\""),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err = parse("services:\n  - type: workload-identity-api\n    selector: {name: a}\n")
            .unwrap_err();
        assert!(
            err.contains("services[0].listen: should not be empty"),
            "{err}"
        );
        let err = parse(
            "outputs:\n  - type: workload-identity-api\n    listen: unix:///run/w.sock\n    selector: {name: a}\n",
        )
        .unwrap_err();
        assert!(
            err.contains("\"workload-identity-api\" is a service: list it under services:"),
            "{err}"
        );
    }
}
