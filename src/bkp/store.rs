//! Where the client state of device keys is kept: files in bot storage (`bkp_device_keys.json`,
//! `bkp_state`, `id_bkp.pub`), or one record in a TPM NV index (`tpm_state_nv_index`) for a node
//! whose disk is wiped at every boot. [`super::device::DeviceState`] runs the same join logic
//! over either.
//!
//! **NV writes only when the cluster would see a difference.** Teleport verifies a presented
//! join state's signature (`kid` and the bound-keypair CA's key of that ID), `iss`/`aud`/`sub`,
//! and its `recovery_sequence` and `bot_instance_id` against the token's status, never its age:
//! there is no `exp`, and `iat`/`nbf` are only checked not to be in the future
//! (`lib/boundkeypair/join_state.go`, `verifyJoinStateInner`). A plain renewal (an authenticated
//! rejoin) returns a join state that differs only in `iat`/`nbf`, so the one in NV stays as good
//! and is not rewritten; a recovery (new count and instance), a rotation (the key references
//! change) or a CA rotation (a new `kid`) writes. NV cells wear out (see docs/standard-mode.md
//! for writes per year).

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
#[cfg(feature = "tpm")]
use tracing::{debug, info};

use super::record::{DEVICE_KEYS, KeysFile, Stored};
use super::state::{HISTORY_LENGTH, JOIN_STATE, PUBLIC_KEY};
use crate::fsutil::{self, Dir, Symlinks};

/// Keys an NV record holds: the active one, the one before it and a new one in a rotation
/// (tbot keeps [`HISTORY_LENGTH`]; a 1 KiB slot holds about four with the join state).
pub const NV_HISTORY_LENGTH: usize = 3;

/// Where the client state lives.
#[derive(Debug)]
pub enum StateStore {
    /// Files in bot storage.
    Files {
        /// The storage directory.
        dir: PathBuf,
        /// Its symlinks policy.
        symlinks: Symlinks,
    },
    /// A record in a TPM NV index.
    #[cfg(feature = "tpm")]
    Nv(Box<NvState>),
}

/// A TPM NV index and what it held when last read or written.
#[cfg(feature = "tpm")]
#[derive(Debug)]
pub struct NvState {
    config: keybound_signer::config::TpmConfig,
    index: u32,
    last: Option<(u64, Stored)>,
}

impl StateStore {
    /// The store in the NV index `index` of the TPM `config` names.
    #[cfg(feature = "tpm")]
    pub fn nv(config: keybound_signer::config::TpmConfig, index: u32) -> Self {
        Self::Nv(Box::new(NvState {
            config,
            index,
            last: None,
        }))
    }

    /// How many keys the history keeps.
    pub fn history_length(&self) -> usize {
        match self {
            Self::Files { .. } => HISTORY_LENGTH,
            #[cfg(feature = "tpm")]
            Self::Nv(_) => NV_HISTORY_LENGTH,
        }
    }

    /// Where the state is, for messages.
    pub fn location(&self) -> String {
        match self {
            Self::Files { dir, .. } => dir.join(DEVICE_KEYS).display().to_string(),
            #[cfg(feature = "tpm")]
            Self::Nv(nv) => format!("TPM NV index 0x{:08x}", nv.index),
        }
    }

    /// The NV record's sequence number, when the state was read from or written to NV.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Self::Files { .. } => None,
            #[cfg(feature = "tpm")]
            Self::Nv(nv) => nv.last.as_ref().map(|(seq, _)| *seq),
        }
    }

    /// The stored state; `Ok(None)` when nothing was stored yet.
    pub fn load(&mut self) -> anyhow::Result<Option<Stored>> {
        match self {
            Self::Files { dir, .. } => load_files(dir),
            #[cfg(feature = "tpm")]
            Self::Nv(nv) => nv.load(),
        }
    }

    /// Stores `stored`; `active_changed` says the active key is new (`id_bkp.pub` is written).
    pub fn save(&mut self, stored: &Stored, active_changed: bool) -> anyhow::Result<()> {
        match self {
            Self::Files { dir, symlinks } => save_files(dir, *symlinks, stored, active_changed),
            #[cfg(feature = "tpm")]
            Self::Nv(nv) => nv.save(stored),
        }
    }
}

fn load_files(dir: &std::path::Path) -> anyhow::Result<Option<Stored>> {
    let path = dir.join(DEVICE_KEYS);
    let keys = match std::fs::read(&path) {
        Ok(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => serde_json::from_slice(&bytes)
            .with_context(|| {
            format!(
                "{} does not parse; restore it from a backup (the keys it names are in the token)",
                path.display()
            )
        })?,
        Ok(_) => KeysFile::default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeysFile::default(),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
    };
    let join_state = match std::fs::read(dir.join(JOIN_STATE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(anyhow!(
                "cannot read {}: {e}",
                dir.join(JOIN_STATE).display()
            ));
        }
    };
    Ok(Some(Stored { keys, join_state }))
}

/// `bkp_device_keys.json`, `bkp_state` (when held) and `id_bkp.pub` (when the active key
/// changed), each staged and renamed into place.
fn save_files(
    dir: &std::path::Path,
    symlinks: Symlinks,
    stored: &Stored,
    active_changed: bool,
) -> anyhow::Result<()> {
    let dir = Dir::open(dir, symlinks, false)?;
    let mut files: Vec<(&str, Vec<u8>)> = vec![(DEVICE_KEYS, serde_json::to_vec(&stored.keys)?)];
    if !stored.join_state.is_empty() {
        files.push((JOIN_STATE, stored.join_state.clone()));
    }
    if let (true, Some(active)) = (active_changed, &stored.keys.active) {
        files.push((PUBLIC_KEY, format!("{}\n", active.public_key).into_bytes()));
    }
    for (name, content) in &files {
        dir.stage(std::ffi::OsStr::new(name), content, 0o600)?
            .commit(fsutil::Replace::Allow)?;
    }
    dir.sync()?;
    Ok(())
}

#[cfg(feature = "tpm")]
impl NvState {
    fn load(&mut self) -> anyhow::Result<Option<Stored>> {
        use keybound_signer_tpm::nv::NvStore;
        let Some(mut nv) = NvStore::open(&self.config, self.index)? else {
            return Ok(None);
        };
        let Some(record) = nv.read()? else {
            return Ok(None);
        };
        let stored = super::record::decode(&record.payload).with_context(|| {
            format!(
                "the client state in TPM NV index 0x{:08x} (record {}) does not decode",
                self.index, record.seq
            )
        })?;
        self.last = Some((record.seq, stored.clone()));
        Ok(Some(stored))
    }

    fn save(&mut self, stored: &Stored) -> anyhow::Result<()> {
        use keybound_signer_tpm::nv::{DEFAULT_SIZE, NvStore};
        if let Some((seq, last)) = &self.last
            && last.keys == stored.keys
            && same_for_the_cluster(&last.join_state, &stored.join_state)
        {
            debug!(
                index = format_args!("0x{:08x}", self.index),
                seq, "the cluster would check nothing new: TPM NV not written"
            );
            return Ok(());
        }
        let payload = super::record::encode(stored)?;
        let mut nv = NvStore::open_or_define(&self.config, self.index, DEFAULT_SIZE)?;
        let seq = nv.write(&payload)?;
        info!(
            index = format_args!("0x{:08x}", self.index),
            seq,
            bytes = payload.len(),
            "stored the bound keypair client state in TPM NV"
        );
        self.last = Some((seq, stored.clone()));
        Ok(())
    }
}

/// Whether two join states verify alike: the same signing key (`kid`), issuer, audience,
/// subject, recovery sequence, bot instance and host (all that `verifyJoinStateInner` checks);
/// texts that do not parse as JWTs are compared whole.
pub fn same_for_the_cluster(a: &[u8], b: &[u8]) -> bool {
    match (checked_claims(a), checked_claims(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// The header's `kid` and the claims the cluster checks, read without verifying.
fn checked_claims(jwt: &[u8]) -> Option<Vec<serde_json::Value>> {
    let text = std::str::from_utf8(jwt).ok()?;
    let mut parts = text.split('.');
    let json = |part: Option<&str>| -> Option<serde_json::Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let header = json(parts.next())?;
    let claims = json(parts.next())?;
    let mut checked = vec![header["kid"].clone()];
    for name in [
        "iss",
        "aud",
        "sub",
        "recovery_sequence",
        "bot_instance_id",
        "host_id",
    ] {
        checked.push(claims[name].clone());
    }
    Some(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(kid: &str, claims: serde_json::Value) -> Vec<u8> {
        let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode([1u8; 64])
        )
        .into_bytes()
    }

    fn claims(iat: u64, sequence: u64, instance: &str) -> serde_json::Value {
        serde_json::json!({
            "iss": "c", "aud": ["c"], "sub": "bot", "iat": iat, "nbf": iat - 10,
            "bot_instance_id": instance, "recovery_sequence": sequence,
            "recovery_limit": 1, "recovery_mode": "relaxed",
        })
    }

    #[test]
    fn only_what_the_cluster_checks_makes_a_join_state_new() {
        let old = jwt("k1", claims(1000, 2, "i-1"));
        // A renewal's: another iat and nbf (and signature), the same count and instance.
        assert!(same_for_the_cluster(
            &old,
            &jwt("k1", claims(5000, 2, "i-1"))
        ));
        // A recovery's, a CA rotation's.
        assert!(!same_for_the_cluster(
            &old,
            &jwt("k1", claims(5000, 3, "i-2"))
        ));
        assert!(!same_for_the_cluster(
            &old,
            &jwt("k2", claims(1000, 2, "i-1"))
        ));
        // The informational claims do not count.
        let mut limit = claims(1000, 2, "i-1");
        limit["recovery_limit"] = 5.into();
        assert!(same_for_the_cluster(&old, &jwt("k1", limit)));
        // None yet, and something that is not a JWT.
        assert!(!same_for_the_cluster(b"", &old));
        assert!(same_for_the_cluster(b"x", b"x"));
        assert!(!same_for_the_cluster(b"x", b"y"));
    }
}
