//! The bound-keypair client state in bot storage, in tbot's files and formats
//! (`lib/auth/join/boundkeypair/boundkeypair.go`, `FSClientState`), written atomically.
//!
//! | file | content |
//! |---|---|
//! | `id_bkp` | the active private key, PEM `PRIVATE KEY` (PKCS#8) with a final newline |
//! | `id_bkp.pub` | its public key, `<type> <base64>\n` (tbot never reads it) |
//! | `bkp_state` | the last join state, the cluster's JWT as sent, no newline |
//! | `bkp_key_history.json` | `{"entries":[{"time":…,"private_key":<PEM>},…]}`, newest first, at most 10, the active key included |
//!
//! tbot writes each file in place (`O_TRUNC`, one write) and its reads create missing files
//! empty; an empty file therefore means "absent" here too. keybound stages every file, fsyncs
//! it and renames it into place, so a crash leaves the old file or the new one, never a torn
//! one. Unlike tbot, it also loads the history when `id_bkp` is empty or missing: the history is
//! what holds a key made for a registration whose result never arrived.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use keybound_signer::{Algorithm, PublicKey, Signer as _};
use keybound_signer_soft::{SoftSigner, Source};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::fsutil::{self, Dir, Symlinks};

/// The active private key.
pub const PRIVATE_KEY: &str = "id_bkp";
/// The active public key.
pub const PUBLIC_KEY: &str = "id_bkp.pub";
/// The last join state.
pub const JOIN_STATE: &str = "bkp_state";
/// The key history.
pub const KEY_HISTORY: &str = "bkp_key_history.json";
/// tbot's `KeyHistoryLength`.
pub const HISTORY_LENGTH: usize = 10;

/// One key of the history.
#[derive(Clone)]
struct Entry {
    /// When it was added, as tbot writes Go's `time.Time` (RFC 3339 with nanoseconds).
    time: String,
    key: Arc<SoftSigner>,
}

/// The client state: the active key, the history (newest first, the active key in it) and the
/// last join state.
pub struct ClientState {
    dir: PathBuf,
    symlinks: Symlinks,
    active: Option<Arc<SoftSigner>>,
    history: Vec<Entry>,
    join_state: Vec<u8>,
    /// The active key changed since loading: `id_bkp.pub` is written with it.
    active_changed: bool,
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientState")
            .field("dir", &self.dir)
            .field(
                "active",
                &self.active.as_ref().map(|k| k.public_key().fingerprint()),
            )
            .field("history", &self.history.len())
            .field("join_state", &!self.join_state.is_empty())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct HistoryFile {
    #[serde(default)]
    entries: Vec<HistoryEntry>,
}

#[derive(Serialize, Deserialize)]
struct HistoryEntry {
    time: String,
    #[serde(serialize_with = "write_secret", deserialize_with = "read_secret")]
    private_key: Zeroizing<String>,
}

fn write_secret<S: serde::Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn read_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// A file's bytes; a missing file reads as empty, as tbot's reads create it empty.
fn read_or_empty(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Zeroizing::new(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Zeroizing::new(Vec::new())),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn now_text() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl ClientState {
    /// An empty state for `dir` (a first join with a registration secret).
    pub fn empty(dir: &Path, symlinks: Symlinks) -> Self {
        Self {
            dir: dir.to_owned(),
            symlinks,
            active: None,
            history: Vec::new(),
            join_state: Vec::new(),
            active_changed: false,
        }
    }

    /// Loads the state from `dir`; `None` when it holds no key at all (no `id_bkp` and no
    /// history). A key file that does not parse is an error naming it.
    pub fn load(dir: &Path, symlinks: Symlinks) -> anyhow::Result<Option<Self>> {
        let mut state = Self::empty(dir, symlinks);
        let pem = read_or_empty(&dir.join(PRIVATE_KEY))?;
        if !pem.iter().all(u8::is_ascii_whitespace) {
            let path = dir.join(PRIVATE_KEY);
            let key = SoftSigner::from_pem(&pem, Source::File(path.clone())).with_context(|| {
                format!(
                    "the bound keypair in {} does not load; restore it from a backup, or make a \
                     new one with keybound keypair create --storage {} --overwrite and register \
                     its public key on the token",
                    path.display(),
                    dir.display()
                )
            })?;
            state.active = Some(Arc::new(key));
        }
        state.join_state = read_or_empty(&dir.join(JOIN_STATE))?.to_vec();
        state.history = load_history(&dir.join(KEY_HISTORY));
        match (&state.active, state.history.is_empty()) {
            (None, true) => return Ok(None),
            // tbot: an empty history becomes [{now, id_bkp}] in memory.
            (Some(active), true) => state.history.push(Entry {
                time: now_text(),
                key: active.clone(),
            }),
            _ => {}
        }
        Ok(Some(state))
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last join state (empty before the first join).
    pub fn join_state(&self) -> &[u8] {
        &self.join_state
    }

    /// The active key's public half, if there is an active key.
    pub fn active_public_key(&self) -> Option<&PublicKey> {
        self.active.as_ref().map(|k| k.public_key())
    }

    /// How many keys the history holds.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// The key whose public half is `wanted`, compared as parsed keys: the active key first,
    /// then the history from newest to oldest (tbot's `SignerForPublicKey`).
    pub fn signer_for(&self, wanted: &PublicKey) -> Option<Arc<SoftSigner>> {
        self.active
            .iter()
            .chain(self.history.iter().map(|e| &e.key))
            .find(|k| k.public_key() == wanted)
            .cloned()
    }

    /// A new key of `algorithm`, put at the head of the history and stored before it is
    /// returned: once the cluster is told of it, the key is on disk.
    pub fn add_key(&mut self, algorithm: Algorithm) -> anyhow::Result<PublicKey> {
        let key = Arc::new(SoftSigner::generate(algorithm).map_err(anyhow::Error::new)?);
        let public = key.public_key().clone();
        self.history.insert(
            0,
            Entry {
                time: now_text(),
                key,
            },
        );
        self.history.truncate(HISTORY_LENGTH);
        self.store()?;
        info!(fingerprint = %public.fingerprint(), "Generated new keypair");
        Ok(public)
    }

    /// A new key made outside (`keypair create`): the only key, active, and stored. The join
    /// state is left as it is, as tbot leaves it.
    pub fn reset_to_new_key(&mut self, algorithm: Algorithm) -> anyhow::Result<PublicKey> {
        let key = Arc::new(SoftSigner::generate(algorithm).map_err(anyhow::Error::new)?);
        let public = key.public_key().clone();
        self.history = vec![Entry {
            time: now_text(),
            key: key.clone(),
        }];
        self.active = Some(key);
        self.active_changed = true;
        self.store()?;
        Ok(public)
    }

    /// tbot's `UpdateFromRegisterResult`, then `Store`: the key the cluster now binds becomes
    /// active (it must be one of ours), and the join state is replaced.
    pub fn apply_result(&mut self, bound: &PublicKey, join_state: &[u8]) -> anyhow::Result<()> {
        let key = self.signer_for(bound).ok_or_else(|| {
            anyhow!(
                "fetching key requested by auth: no matching key found (the cluster binds {}, \
                 which is not in {}); an admin must register a key this bot holds on the token",
                bound.fingerprint(),
                self.dir.display()
            )
        })?;
        if self.active_public_key() != Some(bound) {
            info!(fingerprint = %bound.fingerprint(), "Set new active keypair");
            self.active = Some(key);
            self.active_changed = true;
        }
        join_state.clone_into(&mut self.join_state);
        self.store()
    }

    /// Writes the state (tbot's `Store`): the history, the join state when there is one, then
    /// `id_bkp` (and `id_bkp.pub` when the active key changed), each staged and renamed into
    /// place, in that order, so that every key named by a newer file is already on disk.
    pub fn store(&mut self) -> anyhow::Result<()> {
        let dir = Dir::open(&self.dir, self.symlinks, false)?;
        let mut files: Vec<(&str, Zeroizing<String>)> = Vec::new();
        if !self.history.is_empty() {
            let file = HistoryFile {
                entries: self
                    .history
                    .iter()
                    .map(|e| HistoryEntry {
                        time: e.time.clone(),
                        private_key: e.key.to_pkcs8_pem(),
                    })
                    .collect(),
            };
            let json = Zeroizing::new(serde_json::to_string(&file)?);
            files.push((KEY_HISTORY, json));
        }
        if !self.join_state.is_empty() {
            let text = String::from_utf8(self.join_state.clone())
                .map_err(|_| anyhow!("the cluster's join state is not text"))?;
            files.push((JOIN_STATE, Zeroizing::new(text)));
        }
        if let Some(active) = &self.active {
            files.push((PRIVATE_KEY, active.to_pkcs8_pem()));
            if self.active_changed {
                let line = format!("{}\n", active.public_key().to_openssh());
                files.push((PUBLIC_KEY, Zeroizing::new(line)));
            }
        }
        for (name, content) in &files {
            dir.stage(std::ffi::OsStr::new(name), content.as_bytes(), 0o600)?
                .commit(fsutil::Replace::Allow)?;
        }
        dir.sync()?;
        self.active_changed = false;
        Ok(())
    }
}

/// The history file's keys; a file that does not read or parse only warns, as in tbot.
fn load_history(path: &Path) -> Vec<Entry> {
    let bytes = match read_or_empty(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => return Vec::new(),
        Ok(bytes) => bytes,
        Err(e) => {
            warn!(error = %e, "cannot read the bound keypair history; keybound may be unable to recover in the event of a cluster rollback");
            return Vec::new();
        }
    };
    let file: HistoryFile = match serde_json::from_slice(&bytes) {
        Ok(file) => file,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "the bound keypair history does not parse; keybound may be unable to recover in the event of a cluster rollback");
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    for (i, entry) in file.entries.into_iter().enumerate() {
        match SoftSigner::from_pem(entry.private_key.as_bytes(), Source::File(path.to_owned())) {
            Ok(key) => entries.push(Entry {
                time: entry.time,
                key: Arc::new(key),
            }),
            Err(e) => {
                warn!(file = %path.display(), entry = i, error = %e, "a key in the bound keypair history does not load; it is skipped");
            }
        }
    }
    entries.truncate(HISTORY_LENGTH);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn nothing_and_empty_files_are_no_state() {
        let d = dir();
        assert!(
            ClientState::load(d.path(), Symlinks::Insecure)
                .unwrap()
                .is_none()
        );
        for name in [PRIVATE_KEY, JOIN_STATE, KEY_HISTORY] {
            std::fs::write(d.path().join(name), b"").unwrap();
        }
        assert!(
            ClientState::load(d.path(), Symlinks::Insecure)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn keys_rotate_newest_first_and_the_history_is_capped() {
        let d = dir();
        let mut state = ClientState::empty(d.path(), Symlinks::Insecure);
        let first = state.reset_to_new_key(Algorithm::Ed25519).unwrap();
        let mut made = vec![first.clone()];
        for _ in 0..11 {
            made.push(state.add_key(Algorithm::EcdsaP256Sha256).unwrap());
        }
        // The active key stays until a result names another.
        let loaded = ClientState::load(d.path(), Symlinks::Insecure)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.active_public_key(), Some(&first));
        assert_eq!(loaded.history_len(), HISTORY_LENGTH);
        let newest = made.last().unwrap();
        assert!(loaded.signer_for(newest).is_some());
        // Still found: it is active, though it fell out of the history.
        assert!(loaded.signer_for(&first).is_some());
        assert!(loaded.signer_for(&made[1]).is_none(), "fell out");
        let text = std::fs::read_to_string(d.path().join(KEY_HISTORY)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let entries = json["entries"].as_array().unwrap();
        assert_eq!(entries.len(), HISTORY_LENGTH);
        assert!(
            entries[0]["private_key"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(!text.ends_with('\n'), "compact, as json.Marshal writes");
    }

    #[test]
    fn a_result_makes_its_key_active_and_replaces_the_join_state() {
        let d = dir();
        let mut state = ClientState::empty(d.path(), Symlinks::Insecure);
        let old = state.reset_to_new_key(Algorithm::Ed25519).unwrap();
        let new = state.add_key(Algorithm::Ed25519).unwrap();
        state.apply_result(&new, b"a.b.c").unwrap();
        let loaded = ClientState::load(d.path(), Symlinks::Insecure)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.active_public_key(), Some(&new));
        assert!(loaded.signer_for(&old).is_some(), "the old key stays");
        assert_eq!(loaded.join_state(), b"a.b.c");
        assert_eq!(
            std::fs::read_to_string(d.path().join(PUBLIC_KEY)).unwrap(),
            format!("{}\n", new.to_openssh())
        );
        let pem = std::fs::read_to_string(d.path().join(PRIVATE_KEY)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n") && pem.ends_with('\n'));
        // A key the state does not hold is refused, and nothing changes.
        let stranger = SoftSigner::generate(Algorithm::Ed25519).unwrap();
        let mut again = loaded;
        let err = again
            .apply_result(stranger.public_key(), b"x.y.z")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("fetching key requested by auth: no matching key found"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(d.path().join(JOIN_STATE)).unwrap(),
            b"a.b.c".to_vec()
        );
    }

    #[test]
    fn the_history_alone_is_a_state() {
        // A registration whose result never arrived: the new key is in the history only.
        let d = dir();
        let mut state = ClientState::empty(d.path(), Symlinks::Insecure);
        let key = state.add_key(Algorithm::Ed25519).unwrap();
        assert!(!d.path().join(PRIVATE_KEY).exists());
        let loaded = ClientState::load(d.path(), Symlinks::Insecure)
            .unwrap()
            .unwrap();
        assert!(loaded.active_public_key().is_none());
        assert!(loaded.signer_for(&key).is_some());
    }
}
