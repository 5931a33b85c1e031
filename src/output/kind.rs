//! What an output kind is: the [`Output`] trait, and what a kind is given ([`Issue`]).

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use super::cluster::{Lookups, Needs, Shared};
use super::lifetime::Lifetime;
use crate::Failure;
use crate::auth::AuthClient;
use crate::fsutil::Files;
use crate::identity::Identity;
use crate::values::Destination;
use keybound_teleport::suite::Suite;

/// One output kind: tbot's `type:` in `services:` (or the older `outputs:`).
pub trait Output: Sized + Sync {
    /// Its YAML, as serde reads it (strictly: unknown keys are errors).
    type Raw: DeserializeOwned;
    /// What [`issue`](Self::issue) obtains from Auth for the files.
    type Issued: Send;

    /// Checks the YAML into an output; `at` names it in errors (`services[0]`).
    fn from_raw(raw: Self::Raw, at: &str) -> Result<Self, String>;
    /// Where its files go.
    fn destination(&self) -> &Destination;
    /// Its own `credential_ttl` and `renewal_interval`, when its YAML sets them
    /// ([`Lifetime`]); the bot's apply otherwise.
    fn lifetime(&self) -> Option<&Lifetime> {
        None
    }
    /// Its `name:`, for logs and errors.
    fn name(&self) -> Option<&str>;
    /// What it uses of what the outputs share ([`Shared`]).
    fn needs(&self) -> Needs;
    /// Checks it against the effective configuration (flags included), before any join; most
    /// kinds have nothing to check there.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Asks Auth for what the output holds. It starts while the lookups the outputs share are
    /// in flight: a call that needs their answers awaits [`Issue::shared`] first, and no other
    /// call should, so that it goes out beside them.
    fn issue(&self, cx: &Issue<'_>) -> impl Future<Output = Result<Self::Issued, Failure>> + Send;
    /// The files for what was issued, to be written into `dir`, with what the outputs share
    /// (answered by then).
    fn render(
        &self,
        issued: &Self::Issued,
        cx: &Issue<'_>,
        shared: &Shared,
        dir: &Path,
    ) -> anyhow::Result<Files>;
    /// What was written, for the log and the summary.
    fn describe(&self, issued: &Self::Issued) -> Described;
}

/// What an output wrote, for the log line and the summary.
pub struct Described {
    /// The roles its certificates hold, each sanitized.
    pub roles: Vec<String>,
    /// When its certificates expire.
    pub expires: SystemTime,
}

/// What every output of one renewal is given.
pub struct Issue<'a> {
    /// The bot's authenticated connection to Auth.
    pub auth: &'a AuthClient,
    /// The bot identity the outputs are issued for.
    pub bot: &'a Identity,
    /// The cluster's signature algorithm suite (the outputs' key types).
    pub suite: Suite,
    /// The lifetime the configuration asks of certificates: the bot's `credential_ttl`, or,
    /// for an output that sets its own, that one (`OutputConfig::write`).
    pub credential_ttl: Duration,
    /// What the outputs share, fetched once, perhaps still in flight: [`Issue::shared`].
    pub lookups: &'a Lookups,
}

impl<'a> Issue<'a> {
    /// What the outputs share, once its lookups have answered. A kind awaits it only for what
    /// depends on it (the roles the bot may impersonate, when the output names none; the CAs an
    /// identity holds), so that its other calls go out beside the lookups. When the lookups
    /// fail, this fails too, and the renewal reports their failure for every output.
    pub async fn shared(&self) -> Result<&'a Shared, Failure> {
        self.lookups.get().await
    }
}

/// Visits the YAML type of every kind (for the list of configuration keys).
pub trait KindVisitor {
    /// Called once per kind with its `type:` name and its YAML type.
    fn visit<R: DeserializeOwned>(&mut self, name: &'static str);
}
