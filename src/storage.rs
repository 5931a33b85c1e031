//! The bot's own storage (tbot's `storage:`): the newest bot identity, kept between runs in
//! tbot's file layout, and the lock one process holds on it.
//!
//! Only the newest identity may ever be used: Auth locks a bot that rejoins with an older
//! certificate generation. So the identity is written as soon as a join returns it
//! ([`persist`]), an older one is removed when that write fails, a rejoin in flight is marked
//! (`marker::REJOIN`) so that a crash leaves no doubt unnoticed, and one process at a time
//! holds the directory ([`Held`]).

use std::path::Path;
use std::time::SystemTime;

use anyhow::anyhow;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::fsutil::{self, Files};
use crate::identity::{Identity, files};
use crate::untrusted;
use crate::values::Destination;
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// Storage only: hex SHA-256 of the onboarding token, to notice a changed token.
pub const TOKEN_HASH: &str = "tokenhash";

/// Storage files of keybound's own, beside tbot's: the lock one process holds on the
/// directory, and the marker of a rejoin in flight.
pub(crate) mod marker {
    /// Held locked (`flock`) by the process using the storage, for its whole life.
    pub(crate) const LOCK: &str = ".keybound.lock";
    /// Written before an authenticated rejoin, removed once its result is stored (or once the
    /// rejoin failed before the challenge answer went out). Found at start, it means the stored
    /// identity may be a generation behind the cluster's record.
    pub(crate) const REJOIN: &str = ".keybound-rejoin";
}

/// The bot identity keybound holds between renewals: the newest one, always (Auth locks a bot
/// that rejoins with an older generation). With directory storage it also holds the lock on
/// that directory, so no second keybound renews the same bot behind its back.
#[derive(Default)]
pub struct Held {
    state: tokio::sync::Mutex<HeldState>,
    _lock: Option<std::fs::File>,
}

/// A connection to Auth with the held identity, kept between the agent's renewals.
pub(crate) struct KeptAuth {
    /// The certificate it presents.
    pub(crate) cert_pem: String,
    pub(crate) client: crate::auth::AuthClient,
}

#[derive(Default)]
pub(crate) struct HeldState {
    pub(crate) identity: Option<Identity>,
    /// The suite the identity was issued under, when keybound joined for it.
    pub(crate) suite: Option<Suite>,
    /// When this process last renewed the identity, and whether the outputs were written since.
    pub(crate) renewed_at: Option<std::time::Instant>,
    pub(crate) outputs_written: bool,
    /// The identity came from a join with the static key made because the cluster did not know
    /// the one before, and has not reached Auth since (a rejoin, or the outputs' connection).
    pub(crate) after_fallback: bool,
    /// The last connection to Auth made with `identity`, which the agent's next rejoin reuses.
    pub(crate) auth: Option<KeptAuth>,
    /// The cluster said it does not know the identity, and the join with the static key that
    /// followed failed: it is no longer used to rejoin.
    pub(crate) unknown_to_cluster: bool,
}

impl Held {
    /// Locks the storage directory and starts from the identity in it, if there is a usable one
    /// for this token: a bot identity (not an output's), whose key matches its certificates, and
    /// no rejoin left in doubt.
    pub fn open(storage: &Destination, token: &str) -> Result<Self, Failure> {
        let Destination::Directory { path, symlinks } = storage else {
            return Ok(Self::default());
        };
        fsutil::Dir::open(path, *symlinks, true).map_err(Failure::config)?;
        let lock = lock_storage(path)?;
        let identity = Self::stored(path, token);
        Ok(Self {
            state: tokio::sync::Mutex::new(HeldState {
                identity,
                ..HeldState::default()
            }),
            _lock: Some(lock),
        })
    }

    fn stored(path: &Path, token: &str) -> Option<Identity> {
        if path.join(marker::REJOIN).exists() {
            warn!(
                storage = %path.display(),
                "a rejoin was interrupted after answering the challenge: the cluster may have moved \
                 on to a newer certificate, so the stored one is not used; joining afresh with the \
                 static key"
            );
            return None;
        }
        let stored_hash = std::fs::read_to_string(path.join(TOKEN_HASH)).ok();
        let ours = token_hash(token);
        match Identity::load(path) {
            Ok(Some(_)) if stored_hash.as_deref().map(str::trim) != Some(ours.as_str()) => {
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

    /// Until when the held identity can be used: its expiry, unless the cluster said it does
    /// not know it (`None` then, as without one).
    pub async fn valid_until(&self) -> Option<SystemTime> {
        let state = self.state.lock().await;
        if state.unknown_to_cluster {
            return None;
        }
        state.identity.as_ref().map(|i| i.info.not_after)
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

    /// The held identity and the connection to Auth made with it, if one is kept (the last
    /// cycle's outputs made it).
    pub(crate) async fn identity_and_connection(
        &self,
    ) -> (Option<Identity>, Option<crate::auth::AuthClient>) {
        let state = self.state.lock().await;
        let identity = state.identity.clone();
        let connection = state
            .auth
            .as_ref()
            .filter(|kept| {
                identity
                    .as_ref()
                    .is_some_and(|i| i.tls_cert_pem == kept.cert_pem)
            })
            .map(|kept| kept.client.clone());
        (identity, connection)
    }

    /// The state, locked for one renewal cycle.
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, HeldState> {
        self.state.lock().await
    }
}

/// Takes the storage directory's lock, or says which process holds it.
fn lock_storage(dir: &Path) -> Result<std::fs::File, Failure> {
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

/// The files of the bot's internal storage.
pub fn storage_files(identity: &Identity, token: &str) -> Files {
    let all_tls: Vec<&str> = identity
        .user_ca_pems
        .iter()
        .chain(&identity.host_ca_pems)
        .map(String::as_str)
        .collect();
    let all_ssh: Vec<&str> = identity
        .ssh_user_ca_keys
        .iter()
        .chain(&identity.ssh_host_ca_keys)
        .map(String::as_str)
        .collect();
    vec![
        (files::KEY, identity.private_key_pem.clone()),
        (
            files::PUBLIC_KEY,
            format!("{}\n", identity.ssh_public_key).into(),
        ),
        (files::SSH_CERT, format!("{}\n", identity.ssh_cert).into()),
        (files::TLS_CERT, identity.tls_cert_pem.clone().into()),
        (files::TLS_CA_CERTS, all_tls.join("$").into()),
        (
            files::SSH_CA_CERTS,
            all_ssh
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<Vec<_>>()
                .join("$")
                .into(),
        ),
        (TOKEN_HASH, token_hash(token).into()),
    ]
}

/// What storage keeps of the onboarding token: hex SHA-256, to notice a changed token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Writes the bot identity to storage at once. If that fails, the stored identity (now an older
/// generation) is removed, so that no later run rejoins with it and gets the token locked.
pub fn persist(
    storage: &Destination,
    identity: &Identity,
    token: &str,
) -> anyhow::Result<Option<String>> {
    let Destination::Directory { path, symlinks } = storage else {
        return Ok(None);
    };
    let written = fsutil::Dir::open(path, *symlinks, true)
        .and_then(|dir| fsutil::write_all(&dir, &storage_files(identity, token)));
    match written {
        Ok(_) => Ok(Some(format!("{} (storage)", path.display()))),
        Err(e) => {
            let removed = std::fs::remove_file(path.join(files::TLS_CERT));
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

/// Marks a rejoin in flight in the storage directory (see [`marker::REJOIN`]).
pub(crate) fn mark_rejoin(dir: &Path) -> Result<(), Failure> {
    fsutil::write_atomic(
        &dir.join(marker::REJOIN),
        b"",
        0o600,
        fsutil::Replace::Allow,
    )
    .map_err(|e| Failure::new(ExitKind::Config, e))
}

/// Removes the mark of a rejoin in flight, if any.
pub(crate) fn clear_rejoin(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(marker::REJOIN));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
