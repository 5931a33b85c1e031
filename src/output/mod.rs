//! Outputs: what the bot writes, after each renewal, for the tools its users run, in tbot's
//! file layout (`lib/tbot/services/*`, files 0600, directories 0700).
//!
//! One file per kind, each implementing [`Output`]: how it reads and checks its part of
//! `tbot.yaml`, what it asks Auth for, and what files it renders from the answer. The table
//! `kinds!` at the bottom of this file maps tbot's `type:` names to the kinds; it makes
//! [`OutputConfig`] (a configured output of any kind) and the YAML dispatch. Adding a kind is a
//! new file and one line in that table.
//!
//! [`write_outputs`] runs them for one renewal: what the outputs share from Auth is fetched once
//! ([`Shared`], its lookups at once), and beside it every output issues, renders and writes on
//! its own, all of them at once on the one connection, each awaiting the lookups only where it
//! needs their answers ([`Lookups`]), so that one failing output leaves the others
//! written and its own previous files as they were. Every file of a
//! destination is staged before any is renamed into place ([`fsutil::write_all`]).

pub mod application;
mod cluster;
pub mod database;
mod gate;
pub mod identity;
mod impersonate;
mod kind;
pub mod kubeconfig;
pub mod kubernetes;
pub mod kubernetes_v2;
pub mod lifetime;
mod routed;
pub mod ssh;
pub mod ssh_host;
pub(crate) mod workload_identity;
pub mod workload_identity_jwt;
pub mod workload_identity_x509;

use std::time::Duration;

use anyhow::anyhow;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::value::MapAccessDeserializer};
use tracing::info;

pub use cluster::{ClusterCas, Lookups, Needs, Shared};
pub use gate::{GateKeeper, WriteGate};
pub use identity::IdentityOutput;
pub use kind::{Described, Issue, KindVisitor, Output};
pub use ssh::check_ssh_config_dir;

use crate::auth::{AuthClient, AuthRoute};
use crate::fsutil;
use crate::identity::Identity;
use crate::values::{Destination, checked_str};
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// The outputs that write files: those with a directory destination (a `memory` one holds
/// nothing keybound could hand on).
pub fn written(outputs: &[OutputConfig]) -> Vec<&OutputConfig> {
    outputs
        .iter()
        .filter(|o| matches!(o.destination(), Destination::Directory { .. }))
        .collect()
}

/// Writes `outputs` (see [`written`]) for `bot`: the shared facts and every output at once,
/// each output on its own, so that one output's failure does not stop the others. Each output's
/// result, in order: its summary line, or why it failed ([`combine`] puts them together); `Err`
/// when the shared facts could not be had, and no output was written.
pub async fn write_outputs(
    outputs: &[&OutputConfig],
    auth: &AuthClient,
    route: &AuthRoute,
    bot: &Identity,
    suite: Suite,
    credential_ttl: Duration,
) -> Result<Vec<Result<String, Failure>>, Failure> {
    write_outputs_sharing(
        outputs,
        auth,
        route,
        bot,
        suite,
        credential_ttl,
        None,
        &WriteGate::open(),
    )
    .await
}

/// What `outputs` use, together, of what outputs share.
pub fn needs(outputs: &[&OutputConfig]) -> Needs {
    outputs
        .iter()
        .fold(Needs::default(), |n, o| n.union(o.needs()))
}

/// [`write_outputs`], with the shared facts already fetched (for [`needs`]`(outputs)`) when
/// `shared` holds them; each output writes its files once `gate` lets it (having issued before).
#[allow(clippy::too_many_arguments)]
pub async fn write_outputs_sharing(
    outputs: &[&OutputConfig],
    auth: &AuthClient,
    route: &AuthRoute,
    bot: &Identity,
    suite: Suite,
    credential_ttl: Duration,
    shared: Option<Shared>,
    gate: &WriteGate,
) -> Result<Vec<Result<String, Failure>>, Failure> {
    let (lookups, fetch) = match shared {
        Some(shared) => (Lookups::ready(shared), None),
        None => (
            Lookups::pending(),
            Some(Shared::fetch(auth, route, bot, needs(outputs))),
        ),
    };
    let lookups_answered = async {
        match fetch {
            Some(fetch) => lookups.settle(fetch.await),
            None => Ok(()),
        }
    };
    let cx = Issue {
        auth,
        bot,
        suite,
        credential_ttl,
        lookups: &lookups,
    };
    // The lookups and every output at once, on the one connection: an output's calls wait only
    // for the answers they need (`Issue::shared`), so an output that names its roles asks for
    // its certificates beside the lookups, and N outputs cost the round trips of one. Each
    // output still fails alone, and the results keep the outputs' order. No output writes a
    // file before the lookups have answered (`write_one`); when they fail, their failure is
    // every output's, as when they went first.
    let (answered, results) = tokio::join!(
        lookups_answered,
        futures_util::future::join_all(outputs.iter().map(|output| output.write(&cx, gate)))
    );
    answered?;
    Ok(results)
}

/// The results of [`write_outputs`] together: every summary line, or every failure reported
/// once, in one error, whose exit kind is the first of: the cluster out of reach, a refusal, a
/// local failure (`first_kind`).
pub fn combine(
    outputs: &[&OutputConfig],
    results: Vec<Result<String, Failure>>,
) -> Result<Vec<String>, Failure> {
    let mut written = Vec::new();
    let mut failures = Vec::new();
    let mut kinds = Vec::new();
    for (output, result) in outputs.iter().zip(results) {
        match result {
            Ok(line) => written.push(line),
            Err(f) => {
                kinds.push(f.kind);
                failures.push(format!("output {}: {:#}", output.label(), f.error));
            }
        }
    }
    match first_kind(&kinds) {
        None => Ok(written),
        Some(kind) => Err(Failure::new(kind, anyhow!(failures.join("; ")))),
    }
}

/// The exit kind of a renewal whose outputs failed with `kinds`: the cluster out of reach (69:
/// retry soon) before a refusal by the cluster (77: the roles an output asks for, say), before a
/// local failure (78: a directory that cannot be written), before anything else. A refusal
/// is never hidden behind another output's local failure.
fn first_kind(kinds: &[ExitKind]) -> Option<ExitKind> {
    let rank = |kind: &ExitKind| match kind {
        ExitKind::Unreachable => 0,
        ExitKind::Rejected => 1,
        ExitKind::Config => 2,
        _ => 3,
    };
    kinds.iter().copied().min_by_key(rank)
}

/// One output, of any kind: issue, render, write (once `gate` lets it). A failure to write is
/// local (exit 78).
async fn write_one<O: Output>(
    output: &O,
    kind: &str,
    label: &str,
    cx: &Issue<'_>,
    gate: &WriteGate,
) -> Result<String, Failure> {
    let Destination::Directory { path, symlinks } = output.destination() else {
        return Ok(String::new());
    };
    let issued = output.issue(cx).await?;
    // Every kind's files wait for the lookups, even a kind that uses none of their answers:
    // when they fail, nothing is written.
    let shared = cx.shared().await?;
    if !gate.passable().await {
        return Err(Failure::new(
            ExitKind::Config,
            anyhow!("not written: the bot identity it was issued with could not be stored"),
        ));
    }
    let files = output
        .render(&issued, cx, shared, path)
        .map_err(|e| Failure::new(ExitKind::Config, e))?;
    // Staging, fsyncing and renaming them waits on the disk for milliseconds: on a thread of its
    // own, not the runtime's one, so that the other outputs' calls and files go on meanwhile.
    let (dir, symlinks) = (path.clone(), *symlinks);
    tokio::task::spawn_blocking(move || write_files(&dir, symlinks, files))
        .await
        .unwrap_or_else(|e| {
            Err(anyhow!(
                "writing the files in {} failed: {e}",
                path.display()
            ))
        })
        .map_err(|e| Failure::new(ExitKind::Config, e))?;
    let described = output.describe(&issued);
    info!(
        output = %label,
        roles = %described.roles.join(","),
        expires = %keybound_teleport::time::format_time(described.expires),
        "wrote {kind} output"
    );
    Ok(format!(
        "{} ({kind}: {})",
        path.display(),
        described.roles.join(", ")
    ))
}

/// Writes `files` into the destination `path`; a name `sub/name` goes into the subdirectory
/// `sub` (made if missing, under the same symlinks policy), written before the top directory.
fn write_files(
    path: &std::path::Path,
    symlinks: fsutil::Symlinks,
    files: fsutil::Files,
) -> anyhow::Result<()> {
    let (nested, top): (fsutil::Files, fsutil::Files) =
        files.into_iter().partition(|(name, _)| name.contains('/'));
    let dir = fsutil::Dir::open(path, symlinks, true)?;
    let mut subdirectories: Vec<(&'static str, fsutil::Files)> = Vec::new();
    for (name, content) in nested {
        let (sub, file) = name.split_once('/').expect("partitioned on '/'");
        match subdirectories.iter_mut().find(|(s, _)| *s == sub) {
            Some((_, files)) => files.push((file, content)),
            None => subdirectories.push((sub, vec![(file, content)])),
        }
    }
    for (sub, files) in subdirectories {
        let subdirectory = fsutil::Dir::open(&path.join(sub), symlinks, true)?;
        fsutil::write_all(&subdirectory, &files)?;
    }
    fsutil::write_all(&dir, &top)?;
    Ok(())
}

// === The kinds ===

/// The table of kinds: each line is a kind's `OutputConfig` variant, its type (implementing
/// [`Output`]) and tbot's `type:` name.
macro_rules! kinds {
    ($($(#[doc = $doc:literal])+ $variant:ident($ty:ty) = $name:literal,)+) => {
        /// An output from the configuration, of one of the kinds keybound writes.
        #[derive(Clone, Debug, Eq, PartialEq)]
        pub enum OutputConfig {
            $($(#[doc = $doc])+ $variant($ty),)+
        }

        /// tbot's `type:` names of the kinds keybound writes.
        pub const KINDS: &[&str] = &[$($name),+];

        impl OutputConfig {
            /// tbot's `type:` name of its kind.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)+
                }
            }

            /// Where its files go.
            pub fn destination(&self) -> &Destination {
                match self {
                    $(Self::$variant(o) => o.destination(),)+
                }
            }

            /// Its `name:`, if it has one.
            pub fn name(&self) -> Option<&str> {
                match self {
                    $(Self::$variant(o) => o.name(),)+
                }
            }

            /// Its own `credential_ttl` and `renewal_interval`, when set.
            pub fn lifetime(&self) -> Option<&lifetime::Lifetime> {
                match self {
                    $(Self::$variant(o) => o.lifetime(),)+
                }
            }

            /// What it uses of what the outputs share.
            pub fn needs(&self) -> Needs {
                match self {
                    $(Self::$variant(o) => o.needs(),)+
                }
            }

            /// Checks it against the effective configuration.
            pub fn validate(&self) -> Result<(), String> {
                match self {
                    $(Self::$variant(o) => o.validate(),)+
                }
            }

            /// Issues, renders and writes it (once `gate` lets it); an output with its own `credential_ttl` asks
            /// for that lifetime instead of the bot's (tbot's `cmp.Or(cfg.CredentialLifetime,
            /// defaultCredentialLifetime)`, `lib/tbot/services/*/output_service.go`).
            async fn write(&self, cx: &Issue<'_>, gate: &WriteGate) -> Result<String, Failure> {
                let cx = &Issue {
                    credential_ttl: self.lifetime().map_or(cx.credential_ttl, |l| l.ttl),
                    ..*cx
                };
                match self {
                    $(Self::$variant(o) => write_one(o, $name, &self.label(), cx, gate).await,)+
                }
            }
        }

        /// An output's YAML, by kind, before its check.
        pub(crate) enum RawOutput {
            $($variant(<$ty as Output>::Raw),)+
        }

        impl RawOutput {
            /// Checks the YAML into an output; `at` names it in errors (`services[0]`).
            pub(crate) fn check(self, at: &str) -> Result<OutputConfig, String> {
                match self {
                    $(Self::$variant(raw) => <$ty>::from_raw(raw, at).map(OutputConfig::$variant),)+
                }
            }
        }

        /// An output of kind `kind` from the rest of its YAML (also for `services:` items,
        /// `service::RawEntry`).
        pub(crate) fn deserialize_kind<'de, D: Deserializer<'de>>(
            kind: &str,
            d: D,
        ) -> Result<RawOutput, D::Error> {
            match kind {
                $($name => <$ty as Output>::Raw::deserialize(d).map(RawOutput::$variant),)+
                other => Err(de::Error::custom(unsupported(other))),
            }
        }

        /// Visits every kind's YAML type.
        pub fn visit_kinds(v: &mut impl KindVisitor) {
            $(v.visit::<<$ty as Output>::Raw>($name);)+
        }
    };
}

kinds! {
    /// `type: identity`: the bot's role-impersonated certificates in tbot's file layout, with
    /// `known_hosts` and `ssh_config` ([`identity`]).
    Identity(IdentityOutput) = "identity",
    /// `type: application`: certificates routed to one app ([`application`]).
    Application(application::ApplicationOutput) = "application",
    /// `type: database`: certificates routed to one database ([`database`]).
    Database(database::DatabaseOutput) = "database",
    /// `type: kubernetes`: certificates routed to one Kubernetes cluster and a kubeconfig
    /// ([`kubernetes`]).
    Kubernetes(kubernetes::KubernetesOutput) = "kubernetes",
    /// `type: kubernetes/v2`: a kubeconfig with a context per selected Kubernetes cluster
    /// ([`kubernetes_v2`]).
    KubernetesV2(kubernetes_v2::KubernetesV2Output) = "kubernetes/v2",
    /// `type: ssh_host`: an SSH host key, its host certificate and the user CA keys, for an
    /// OpenSSH server ([`ssh_host`]).
    SshHost(ssh_host::SshHostOutput) = "ssh_host",
    /// `type: workload-identity-x509`: an X.509 SVID, its key and the trust bundle
    /// ([`workload_identity_x509`]).
    WorkloadIdentityX509(workload_identity_x509::WorkloadIdentityX509Output) = "workload-identity-x509",
    /// `type: workload-identity-jwt`: a JWT SVID ([`workload_identity_jwt`]).
    WorkloadIdentityJwt(workload_identity_jwt::WorkloadIdentityJwtOutput) = "workload-identity-jwt",
}

impl OutputConfig {
    /// How logs and errors name it: its `name:`, else its directory.
    pub fn label(&self) -> String {
        match (self.name(), self.destination()) {
            (Some(name), _) => name.to_owned(),
            (None, Destination::Directory { path, .. }) => path.display().to_string(),
            (None, Destination::Memory) => "(memory)".to_owned(),
        }
    }

    /// Its name as a service of tbot's (`/readyz/{service}`, heartbeats): its `name:`, else
    /// `<type>-output (<destination>)`, as tbot's output services name themselves
    /// (`OutputService.String()` in `lib/tbot/services/identity/output.go`: `cmp.Or(cfg.Name,
    /// "identity-output (" + destination + ")")`, a directory being `directory: <path>`,
    /// `lib/tbot/bot/destination/directory.go`).
    pub fn service_name(&self) -> String {
        if let Some(name) = self.name() {
            return name.to_owned();
        }
        let destination = match self.destination() {
            Destination::Directory { path, .. } => format!("directory: {}", path.display()),
            Destination::Memory => "memory".to_owned(),
        };
        format!("{}-output ({destination})", self.kind())
    }
}

/// tbot's service types (`lib/tbot/config`) that keybound does not write yet.
const TBOT_SERVICE_TYPES: &[&str] = &[
    "application-tunnel",
    "database-tunnel",
    "kubernetes/argo-cd",
    "ssh-multiplexer",
    "spiffe-svid",
    "spiffe-workload-api",
    "workload-identity-aws-roles-anywhere",
    "application-proxy",
    "example",
];

/// Why `kind` is refused: a tbot kind keybound lacks, or no kind at all.
pub(crate) fn unsupported(kind: &str) -> String {
    let ours = KINDS
        .iter()
        .map(|k| format!("`type: {k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if kind == "workload-identity-api" {
        format!("{kind:?} is a service: list it under services:, not outputs:")
    } else if TBOT_SERVICE_TYPES.contains(&kind) {
        format!(
            "tbot service type {kind:?} is not supported by keybound yet; keybound writes {ours} outputs"
        )
    } else {
        format!("unknown service type {kind:?}; keybound writes {ours} outputs")
    }
}

/// A `type:` value: one of [`KINDS`].
struct KindName(&'static str);

impl<'de> Deserialize<'de> for KindName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| {
            KINDS
                .iter()
                .find(|k| **k == v)
                .map(|k| Self(k))
                .ok_or_else(|| unsupported(v))
        })
    }
}

/// An output's YAML is read by its kind: with `type:` first (as tbot's examples write it), the
/// rest of the mapping goes straight to the kind's own YAML type, so errors keep their line and
/// column; otherwise the mapping is read whole first, and errors name the output.
impl<'de> Deserialize<'de> for RawOutput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawOutput;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an output: a mapping with `type:`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawOutput, A::Error> {
                let Some(first) = map.next_key::<String>()? else {
                    return Err(de::Error::missing_field("type"));
                };
                if first == "type" {
                    let KindName(kind) = map.next_value()?;
                    return deserialize_kind(kind, MapAccessDeserializer::new(map));
                }
                let mut whole = serde_yaml::Mapping::new();
                whole.insert(first.into(), map.next_value()?);
                while let Some((key, value)) = map.next_entry()? {
                    whole.insert(key, value);
                }
                let kind = whole
                    .get("type")
                    .cloned()
                    .ok_or_else(|| de::Error::missing_field("type"))?;
                let KindName(kind) = KindName::deserialize(kind).map_err(de::Error::custom)?;
                deserialize_kind(kind, serde_yaml::Value::Mapping(whole)).map_err(de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}
