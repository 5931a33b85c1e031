//! Who calls: the identity in the client certificate that Auth's endpoint verified against the
//! user CA (`tlsca.FromSubject`), and whether that identity may act. A caller a lock targets (its
//! user, one of its roles, or the join token it joined with) is refused with Teleport's bare
//! "access denied".

use std::time::SystemTime;

use anyhow::Context as _;
use keybound_teleport::subject::{attributes, oid};
use tonic::{Request, Status};
use x509_cert::der::Decode as _;

use crate::cluster::Cluster;
use crate::locks::LockTarget;

/// The caller of an Auth RPC, read from its verified client certificate (`tlsca.FromSubject`).
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) username: String,
    pub(crate) roles: Vec<String>,
    pub(crate) bot_name: Option<String>,
    pub(crate) bot_instance_id: Option<String>,
    pub(crate) generation: u64,
    pub(crate) impersonator: Option<String>,
    pub(crate) disallow_reissue: bool,
    pub(crate) join_token: Option<String>,
    pub(crate) not_after: SystemTime,
}

impl Caller {
    /// Reads the identity of a client certificate (already verified by the TLS layer).
    pub(crate) fn from_der(der: &[u8]) -> anyhow::Result<Self> {
        let cert = x509_cert::Certificate::from_der(der).context("not X.509")?;
        let tbs = &cert.tbs_certificate;
        let attrs = attributes(&tbs.subject);
        let one = |oid| attrs.one(oid);
        let username = one(oid::COMMON_NAME).context("no common name")?;
        let join_token = one(oid::JOIN_ATTRIBUTES)
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .and_then(|v| v["meta"]["join_token_name"].as_str().map(str::to_owned));
        Ok(Self {
            username,
            roles: attrs.all(oid::ORGANIZATION),
            bot_name: one(oid::BOT_NAME),
            bot_instance_id: one(oid::BOT_INSTANCE_ID),
            generation: one(oid::GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            impersonator: one(oid::IMPERSONATOR).filter(|i| !i.is_empty()),
            disallow_reissue: one(oid::DISALLOW_REISSUE).as_deref() == Some("true"),
            join_token,
            not_after: tbs.validity.not_after.to_system_time(),
        })
    }
}

fn access_denied() -> Status {
    Status::permission_denied("access denied")
}

impl Caller {
    /// What a lock may target in this identity (`LockTargetsFromTLSIdentity`,
    /// `lib/services/lock.go`: the user and its roles), and the join token it joined with.
    fn lock_targets(&self) -> Vec<LockTarget> {
        let mut targets = vec![LockTarget::User(self.username.clone())];
        targets.extend(self.roles.iter().cloned().map(LockTarget::Role));
        targets.extend(self.join_token.clone().map(LockTarget::JoinToken));
        targets
    }
}

impl Cluster {
    /// The caller of `request`, refused when there is none or a lock targets it.
    pub(crate) fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(access_denied)?;
        if self.check_locks(&caller.lock_targets()).is_err() {
            return Err(access_denied());
        }
        Ok(caller)
    }

    /// The refusal of a lock now in force on `caller` (`services.LockInForceAccessDenied`), for a
    /// connection that outlives the check at its start (Teleport's connection monitor).
    pub(crate) fn lock_on_caller(&self, caller: &Caller) -> Result<(), Status> {
        self.check_locks(&caller.lock_targets())
    }

    /// Whether a caller may use its identity to rejoin: not when a lock targets it (Teleport's
    /// authorizer fails, and the join server treats the stream as unauthenticated).
    pub(crate) fn authenticated_bot(&self, caller: Option<&Caller>) -> Option<Caller> {
        let caller = caller?;
        if self.check_locks(&caller.lock_targets()).is_err() {
            return None;
        }
        caller.bot_name.as_ref()?;
        // An output's (role-impersonated) certificate carries the bot's name too, but it is
        // not the bot's identity: it cannot rejoin for it.
        if caller.impersonator.is_some() {
            return None;
        }
        Some(caller.clone())
    }
}
