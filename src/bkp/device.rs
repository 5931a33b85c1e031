//! Standard bound-keypair joining with every key made inside a device: a PKCS#11 token
//! (`signer: pkcs11` and a `pkcs11_uri` that names only the token) or the TPM (`signer: tpm`
//! and no `tpm_key_handle`/`tpm_key_path`). The client state in storage holds references (URIs,
//! key file names, public keys), never key material: `bkp_device_keys.json` beside tbot's
//! `bkp_state` and `id_bkp.pub` (tbot's `id_bkp` and `bkp_key_history.json` hold private keys,
//! so they are not written in this mode).
//!
//! **TPM keys** are ECC P-256 signing keys made under the storage primary (or `tpm_parent`),
//! `fixedTPM|fixedParent|sensitiveDataOrigin`, kept as TSS2 key files in storage
//! (`bkp_tpm_<16 random hex digits>.pem`, mode 0600): the TPM-wrapped blob, usable only by this
//! TPM. A TPM makes no Ed25519 key; under a suite that asks for one the key is P-256, which
//! Teleport accepts (its rotation only parses and challenges the new key,
//! `lib/join/boundkeypair/boundkeypair.go`, `requestBoundKeypairRotation`). A retired key is
//! destroyed by removing its file. With `tpm_key_handle` (and a registration secret) the keys
//! are kept at two persistent handles instead, and retired keys are evicted ([`tpm_handles`]).
//!
//! **PKCS#11 object names.** Each key is a pair generated in the token (private: token, private,
//! sensitive, never extractable, sign only; `keybound_signer_pkcs11::generate`) with the label
//! `keybound-bkp-<16 random hex digits>` and a free two-byte `CKA_ID`. The token is searched for
//! both before the pair is made, and an object already using either stops the rotation: a key
//! of someone else's is never replaced.
//!
//! **Order of steps.** A rotation draws the new pair's label and records it as `pending` (the
//! file is written), makes the pair, then writes its reference at the head of the history (and
//! drops the pending record, in the same write), then answers the cluster; keys pushed out of
//! the history (at most 10, as tbot's) move to `retired`, still in the token. Only when a result
//! names a key (the cluster committed it) is the state written with that key active, and only
//! then are the retired keys destroyed (`C_DestroyObject`), the bound key never. A crash after
//! the pair is made and before its reference is written leaves an object the history does not
//! name, but the pending record does: after the next result, the key objects with that label
//! are destroyed (the cluster never heard of them). An object keybound did not record is never
//! destroyed, whatever its label. Every other crash leaves the key the cluster holds bound both
//! in the token and in the state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
#[cfg(feature = "pkcs11")]
use keybound_signer::config::Pkcs11Config;
#[cfg(feature = "tpm")]
use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::{Algorithm, PublicKey, Signer};
use tracing::{info, warn};

use super::record::Stored;
pub use super::record::{DEVICE_KEYS, KeyRef, KeysFile, Pending};
use super::store::StateStore;
use crate::fsutil::Symlinks;
#[cfg(feature = "tpm")]
use crate::fsutil::{self, Dir};

#[cfg(feature = "tpm")]
pub mod tpm_handles;

/// The label prefix of every key keybound makes in a token.
pub const LABEL_PREFIX: &str = "keybound-bkp-";

/// The device keys are made in, with its settings.
#[derive(Clone, Debug)]
pub enum Device {
    /// A PKCS#11 token: the URI naming it, the module and PIN source.
    #[cfg(feature = "pkcs11")]
    Pkcs11(Pkcs11Config),
    /// The TPM: its TCTI, parent and authorization settings.
    #[cfg(feature = "tpm")]
    Tpm(TpmConfig),
    /// The TPM, keys at the persistent handles [`tpm_handles`] derives from the config's
    /// `TpmKey::Handle`.
    #[cfg(feature = "tpm")]
    TpmHandles(TpmConfig),
}

/// The client state of device keys.
pub struct DeviceState {
    dir: PathBuf,
    symlinks: Symlinks,
    device: Device,
    store: StateStore,
    /// Boxed: `Keys` holds a `DeviceState` or a file state, and this is the large part.
    keys: Box<KeysFile>,
    join_state: Vec<u8>,
    active_changed: bool,
    /// The key the cluster challenged first in this join, not one made in it: the key it binds
    /// as this join began (a rotation never replaces it).
    bound_here: Option<Box<PublicKey>>,
}

impl std::fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceState")
            .field("dir", &self.dir)
            .field("store", &self.store.location())
            .field("active", &self.keys.active.as_ref().map(|k| &k.key))
            .field("history", &self.keys.history.len())
            .field("join_state", &!self.join_state.is_empty())
            .finish()
    }
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl DeviceState {
    /// An empty state (a first join with a registration secret), to be kept in `store`, keeping
    /// the record of keys whose making a crash interrupted, so that they are still destroyed.
    pub fn empty(dir: &Path, symlinks: Symlinks, device: Device, mut store: StateStore) -> Self {
        let pending = match store.load() {
            Ok(Some(stored)) => stored.keys.pending,
            _ => Vec::new(),
        };
        let keys = KeysFile {
            pending,
            ..KeysFile::default()
        };
        Self::with(dir, symlinks, device, store, keys, Vec::new())
    }

    fn with(
        dir: &Path,
        symlinks: Symlinks,
        device: Device,
        store: StateStore,
        keys: KeysFile,
        join_state: Vec<u8>,
    ) -> Self {
        Self {
            dir: dir.to_owned(),
            symlinks,
            device,
            store,
            keys: Box::new(keys),
            join_state,
            active_changed: false,
            bound_here: None,
        }
    }

    /// The state kept in `store`, `None` when it holds no key.
    pub fn load(
        dir: &Path,
        symlinks: Symlinks,
        device: Device,
        mut store: StateStore,
    ) -> anyhow::Result<Option<Self>> {
        let Some(stored) = store.load()? else {
            return Ok(None);
        };
        if stored.keys.active.is_none() && stored.keys.history.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self::with(
            dir,
            symlinks,
            device,
            store,
            stored.keys,
            stored.join_state,
        )))
    }

    /// Where the state is kept.
    pub fn state_store(&self) -> &StateStore {
        &self.store
    }

    /// The last join state (empty before the first join).
    pub fn join_state(&self) -> &[u8] {
        &self.join_state
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The active key's public half and URI.
    pub fn active(&self) -> Option<(PublicKey, &str)> {
        let key = self.keys.active.as_ref()?;
        Some((PublicKey::from_openssh(&key.public_key).ok()?, &key.key))
    }

    /// How many keys the history holds.
    pub fn history_len(&self) -> usize {
        self.keys.history.len()
    }

    /// How many keys a crash interrupted in the making (recorded as pending, named by no
    /// reference): destroyed after the next result.
    pub fn interrupted_len(&self) -> usize {
        self.keys.pending.len()
    }

    fn find(&self, wanted: &PublicKey) -> Option<&KeyRef> {
        self.keys
            .active
            .iter()
            .chain(&self.keys.history)
            .find(|k| PublicKey::from_openssh(&k.public_key).is_ok_and(|p| &p == wanted))
    }

    /// The key whose public half is `wanted` (active first, then the history), opened in the
    /// device; a key that no longer opens is reported and skipped.
    pub fn signer_for(&self, wanted: &PublicKey) -> Option<Arc<dyn Signer>> {
        let key = self.find(wanted)?;
        match self.device.open(&self.dir, &key.key) {
            Ok(signer) if signer.public_key() == wanted => Some(signer),
            Ok(_) => {
                warn!(key = %key.key, "the device's key is not the one the client state records");
                None
            }
            Err(e) => {
                warn!(key = %key.key, error = %e, "cannot open a bound key in the device");
                None
            }
        }
    }

    /// The cluster challenged `key`, which this join did not make: the key it binds now.
    pub fn note_bound(&mut self, key: &PublicKey) {
        self.bound_here.get_or_insert_with(|| Box::new(key.clone()));
    }

    /// A new key for `algorithm`'s suite, made in the device, put at the head of the history and
    /// stored before it is returned. Keys pushed out of the history are retired, not destroyed.
    pub fn add_key(&mut self, algorithm: Algorithm) -> anyhow::Result<PublicKey> {
        #[cfg(feature = "tpm")]
        if let Device::TpmHandles(config) = &self.device {
            let config = config.clone();
            return self.add_key_at_handle(&config);
        }
        let (signer, key) = self.make_recorded(algorithm)?;
        let public = signer.public_key().clone();
        self.keys.history.insert(
            0,
            KeyRef {
                time: now_text(),
                key: key.clone(),
                public_key: public.to_openssh(),
            },
        );
        while self.keys.history.len() > self.store.history_length() {
            if let Some(old) = self.keys.history.pop() {
                self.keys.retired.push(old);
            }
        }
        self.store()?;
        info!(key = %key, fingerprint = %public.fingerprint(), protection = %signer.protection(), "Generated new keypair inside the device");
        Ok(public)
    }

    /// A key made outside a join (`keypair create --storage` with a device, before the key is
    /// registered on the token): made in the device as a registration makes it, it becomes the
    /// only key, active. The keys this state recorded before are retired, and destroyed in the
    /// device only once the state naming the new key is written; no other object is touched.
    /// The join state is left as it is, as with file keys.
    pub fn reset_to_new_key(&mut self, algorithm: Algorithm) -> anyhow::Result<PublicKey> {
        let (signer, key) = self.make_recorded(algorithm)?;
        let public = signer.public_key().clone();
        let new = KeyRef {
            time: now_text(),
            key: key.clone(),
            public_key: public.to_openssh(),
        };
        let old = self
            .keys
            .active
            .take()
            .into_iter()
            .chain(self.keys.history.drain(..));
        for old in old.collect::<Vec<_>>() {
            if !self.keys.retired.iter().any(|r| r.key == old.key) {
                self.keys.retired.push(old);
            }
        }
        self.keys.active = Some(new.clone());
        self.keys.history = vec![new];
        self.active_changed = true;
        self.store()?;
        info!(key = %key, fingerprint = %public.fingerprint(), protection = %signer.protection(), "Generated new keypair inside the device");
        self.destroy_unused()?;
        Ok(public)
    }

    /// The keys the state records at persistent handles (active, history, retired).
    #[cfg(feature = "tpm")]
    fn handle_records(&self) -> Vec<tpm_handles::Recorded> {
        let active = self.keys.active.as_ref();
        active
            .iter()
            .copied()
            .chain(&self.keys.history)
            .chain(&self.keys.retired)
            .filter_map(|k| {
                Some(tpm_handles::Recorded {
                    handle: tpm_handles::parse_reference(&k.key).ok()?,
                    public: PublicKey::from_openssh(&k.public_key).ok()?,
                    active: active.is_some_and(|a| a.key == k.key && a.public_key == k.public_key),
                })
            })
            .collect()
    }

    /// A new key at a handle of the pair ([`tpm_handles`], whose module documentation gives the
    /// order): created and loaded, recorded (the key it replaces retired, still recorded) and
    /// stored, then made persistent; its public key.
    #[cfg(feature = "tpm")]
    fn add_key_at_handle(&mut self, config: &TpmConfig) -> anyhow::Result<PublicKey> {
        let bound = self.bound_here.as_deref().cloned().or_else(|| {
            let active = self.keys.active.as_ref()?;
            PublicKey::from_openssh(&active.public_key).ok()
        });
        let choice = tpm_handles::choose(config, &self.handle_records(), bound.as_ref())?;
        let (handle, replacing) = match choice {
            tpm_handles::Choice::Free(handle) => (handle, None),
            tpm_handles::Choice::Replace(handle, public) => (handle, Some(public)),
        };
        let new = keybound_signer_tpm::persist::NewKey::create(config)
            .context("making a new bound key in the TPM")?;
        let public = new.public_key().clone();
        if let Some(old) = &replacing {
            let key = tpm_handles::reference(handle);
            let line = old.to_openssh();
            let same = |k: &KeyRef| k.key == key && k.public_key == line;
            let replaced = self
                .keys
                .active
                .iter()
                .chain(&self.keys.history)
                .find(|k| same(k))
                .cloned();
            self.keys.history.retain(|k| !same(k));
            if self.keys.active.as_ref().is_some_and(same) {
                self.keys.active = None;
            }
            self.keys.retired.extend(replaced);
        }
        self.keys.history.insert(
            0,
            KeyRef {
                time: now_text(),
                key: tpm_handles::reference(handle),
                public_key: public.to_openssh(),
            },
        );
        self.store()?;
        let signer = new
            .persist(handle, replacing.as_ref())
            .context("making the new bound key persistent")?;
        info!(
            key = %tpm_handles::reference(handle),
            fingerprint = %public.fingerprint(),
            protection = %signer.protection(),
            replaced = replacing.is_some(),
            "Generated new keypair inside the TPM, at a persistent handle"
        );
        Ok(public)
    }

    /// With keys at persistent handles: what each handle of the pair holds, in words (`Err`: a
    /// handle holding what keybound did not make). `None` for other devices.
    pub fn handles(&self) -> Option<anyhow::Result<Vec<String>>> {
        match &self.device {
            #[cfg(feature = "tpm")]
            Device::TpmHandles(config) => {
                Some(tpm_handles::describe(config, &self.handle_records()))
            }
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The result: the key it names becomes active, the join state is replaced, both are
    /// stored; then the retired keys are destroyed in the token (never the bound one).
    pub fn apply_result(&mut self, bound: &PublicKey, join_state: &[u8]) -> anyhow::Result<()> {
        let key = self.find(bound).cloned().ok_or_else(|| {
            anyhow!(
                "fetching key requested by auth: no matching key found (the cluster binds {}, \
                 which is not in {}); an admin must register a key this bot holds on the token",
                bound.fingerprint(),
                self.store.location()
            )
        })?;
        #[cfg(feature = "tpm")]
        if let Device::TpmHandles(_) = self.device {
            // Handles are few: once the cluster names the bound key, every other key retires.
            let (kept, out): (Vec<_>, Vec<_>) = std::mem::take(&mut self.keys.history)
                .into_iter()
                .partition(|k| k.key == key.key && k.public_key == key.public_key);
            self.keys.history = kept;
            self.keys.retired.extend(out);
        }
        // A key at a persistent handle may reuse the reference of a key it replaced: the public
        // key tells them apart.
        let active = self.keys.active.as_ref().map(|k| (&k.key, &k.public_key));
        if active != Some((&key.key, &key.public_key)) {
            info!(key = %key.key, "Set new active keypair");
            self.keys.active = Some(key);
            self.active_changed = true;
        }
        join_state.clone_into(&mut self.join_state);
        self.store()?;
        self.destroy_unused()
    }

    /// A new key in the device, its reference recorded as pending before the device makes it
    /// (stored), and taken off the pending list (not stored: the caller stores it with the
    /// key's reference in one write).
    fn make_recorded(&mut self, algorithm: Algorithm) -> anyhow::Result<(Arc<dyn Signer>, String)> {
        // The NV record (a wiped node) keeps no pending list: its keys are at handles, recorded
        // before they are made persistent.
        let drawn = match self.store {
            StateStore::Files { .. } => self.device.draw_reference(),
            #[cfg(feature = "tpm")]
            StateStore::Nv(_) => None,
        };
        if let Some(key) = &drawn {
            self.keys.pending.push(Pending {
                time: now_text(),
                key: key.clone(),
            });
            self.store()?;
        }
        let made = self
            .device
            .make(&self.dir, self.symlinks, algorithm, drawn.as_deref())?;
        super::fault::fault_point("after-generate");
        if let Some(key) = &drawn {
            self.keys.pending.retain(|p| &p.key != key);
        }
        Ok(made)
    }

    /// Destroys the retired keys but the active one, and the keys whose making was
    /// interrupted (never named by the history, so never sent to the cluster); a failure keeps
    /// the key listed, to be tried again after the next result.
    fn destroy_unused(&mut self) -> anyhow::Result<()> {
        if self.keys.retired.is_empty() && self.keys.pending.is_empty() {
            return Ok(());
        }
        let active = self.keys.active.as_ref().map(|k| k.key.clone());
        let mut kept = Vec::new();
        for key in std::mem::take(&mut self.keys.retired) {
            if Some(&key.key) == active.as_ref()
                || self.keys.history.iter().any(|h| h.key == key.key)
            {
                continue;
            }
            match self.device.destroy(&self.dir, &key) {
                Ok(()) => info!(key = %key.key, "destroyed a key out of the history"),
                Err(e) => {
                    warn!(key = %key.key, error = %e, "cannot destroy a key out of the history; trying again after the next join");
                    kept.push(key);
                }
            }
        }
        self.keys.retired = kept;
        let mut still = Vec::new();
        for pending in std::mem::take(&mut self.keys.pending) {
            let recorded = self
                .keys
                .active
                .iter()
                .chain(&self.keys.history)
                .chain(&self.keys.retired)
                .any(|k| self.device.same_key(&pending.key, &k.key));
            if recorded {
                continue;
            }
            match self.device.destroy_unrecorded(&self.dir, &pending.key) {
                Ok(0) => {}
                Ok(_) => {
                    info!(key = %pending.key, "destroyed a key whose making a crash interrupted")
                }
                Err(e) => {
                    warn!(key = %pending.key, error = %e, "cannot destroy a key whose making a crash interrupted; trying again after the next join");
                    still.push(pending);
                }
            }
        }
        self.keys.pending = still;
        self.store()
    }

    /// Writes the state to its store (files staged and renamed into place, or the NV record).
    pub fn store(&mut self) -> anyhow::Result<()> {
        let stored = Stored {
            keys: (*self.keys).clone(),
            join_state: self.join_state.clone(),
        };
        self.store.save(&stored, self.active_changed)?;
        self.active_changed = false;
        Ok(())
    }
}

fn random_hex() -> String {
    let mut random = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
    random.iter().map(|b| format!("{b:02x}")).collect()
}

impl Device {
    /// The reference a new key will have, drawn before the device makes it, to be recorded
    /// first: for a token, its URI with a new random label (no id yet, no PIN). `None` for the
    /// TPM, whose key file reaches storage before anything names it.
    fn draw_reference(&self) -> Option<String> {
        match self {
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(device) => {
                let mut uri = keybound_signer_pkcs11::Pkcs11Uri::parse(&device.uri).ok()?;
                uri.object = Some(format!("{LABEL_PREFIX}{}", random_hex()));
                uri.id = None;
                uri.pin_source = None;
                uri.pin_value = None;
                uri.module_path = None;
                Some(uri.to_string())
            }
            // A key file's name, drawn first so that a crash between the TPM making the key and
            // its reference being stored leaves a file the next join knows to remove.
            #[cfg(feature = "tpm")]
            Self::Tpm(_) => Some(format!("{TPM_FILE_PREFIX}{}.pem", random_hex())),
            #[cfg(feature = "tpm")]
            Self::TpmHandles(_) => None,
        }
    }

    /// Whether the drawn reference `pending` names the recorded key `recorded` (a token's key:
    /// the same label).
    fn same_key(&self, pending: &str, recorded: &str) -> bool {
        match self {
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(_) => {
                let label = |uri: &str| {
                    keybound_signer_pkcs11::Pkcs11Uri::parse(uri)
                        .ok()
                        .and_then(|u| u.object)
                };
                label(pending).is_some_and(|l| Some(l) == label(recorded))
            }
            #[cfg(feature = "tpm")]
            Self::Tpm(_) | Self::TpmHandles(_) => pending == recorded,
        }
    }

    /// Destroys the key a crash left unrecorded, by the reference drawn for it: in a token,
    /// the key objects with its label (`destroy_unrecorded`); for the TPM, its key file; how
    /// many objects went.
    fn destroy_unrecorded(&self, dir: &Path, key: &str) -> anyhow::Result<usize> {
        let _ = dir;
        match self {
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(device) => Ok(keybound_signer_pkcs11::destroy_unrecorded(
                &pkcs11_config_for(device, key),
            )?),
            #[cfg(feature = "tpm")]
            // The key file, if it reached storage (removing it destroys the key: the TPM keeps
            // no copy).
            #[cfg(feature = "tpm")]
            Self::Tpm(_) => {
                let path = dir.join(tpm_file_name(key)?);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(1),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                    Err(e) => Err(anyhow!("cannot remove {}: {e}", path.display())),
                }
            }
            // Never drawn (`draw_reference`): a key at a handle is recorded before it is persistent.
            #[cfg(feature = "tpm")]
            Self::TpmHandles(_) => Ok(0),
        }
    }

    /// A new key in the device; the signer and its reference. `drawn`: the reference
    /// `draw_reference` gave, recorded as pending.
    fn make(
        &self,
        dir: &Path,
        symlinks: Symlinks,
        algorithm: Algorithm,
        drawn: Option<&str>,
    ) -> anyhow::Result<(Arc<dyn Signer>, String)> {
        let _ = (dir, symlinks, algorithm);
        let _ = drawn;
        match self {
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(device) => {
                let label = drawn
                    .and_then(|d| keybound_signer_pkcs11::Pkcs11Uri::parse(d).ok()?.object)
                    .unwrap_or_else(|| format!("{LABEL_PREFIX}{}", random_hex()));
                let mut config = device.clone();
                let base: &str = &device.uri;
                config.uri = match base.split_once('?') {
                    Some((path, query)) => format!("{path};object={label}?{query}"),
                    None => format!("{base};object={label}"),
                }
                .into();
                let signer = keybound_signer_pkcs11::generate(&config, algorithm, false)
                    .map_err(anyhow::Error::new)
                    .context("making a new bound key in the token")?;
                let key = signer.uri().to_string();
                Ok((Arc::new(signer), key))
            }
            #[cfg(feature = "tpm")]
            Self::TpmHandles(_) => Err(anyhow!(
                "keys at persistent handles are made by the client state, which picks the handle"
            )),
            #[cfg(feature = "tpm")]
            Self::Tpm(tpm) => {
                if algorithm != Algorithm::EcdsaP256Sha256 {
                    info!(asked = %algorithm, "a TPM makes no such key; the new bound key is ECDSA P-256, which the cluster accepts");
                }
                let name = match drawn {
                    Some(name) => name.to_owned(),
                    None => format!("{TPM_FILE_PREFIX}{}.pem", random_hex()),
                };
                let mut config = tpm.clone();
                config.key = TpmKey::File(dir.join(&name));
                let generated =
                    keybound_signer_tpm::generate(&config, Algorithm::EcdsaP256Sha256, false)
                        .map_err(anyhow::Error::new)
                        .context("making a new bound key in the TPM")?;
                let pem = generated
                    .pem
                    .ok_or_else(|| anyhow!("the TPM returned no key file for a new key"))?;
                // The wrapped key reaches storage before anything names it.
                let storage = Dir::open(dir, symlinks, false)?;
                storage
                    .stage(std::ffi::OsStr::new(&name), pem.as_bytes(), 0o600)?
                    .commit(fsutil::Replace::Never)?;
                storage.sync()?;
                Ok((Arc::new(generated.signer), name))
            }
        }
    }

    /// The key `key` refers to, opened.
    fn open(&self, dir: &Path, key: &str) -> anyhow::Result<Arc<dyn Signer>> {
        let _ = (dir, key);
        match self {
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(device) => Ok(Arc::new(keybound_signer_pkcs11::Pkcs11Signer::open(
                &pkcs11_config_for(device, key),
            )?)),
            #[cfg(feature = "tpm")]
            Self::Tpm(tpm) => {
                let mut config = tpm.clone();
                config.key = TpmKey::File(dir.join(tpm_file_name(key)?));
                Ok(Arc::new(keybound_signer_tpm::TpmSigner::open(&config)?))
            }
            #[cfg(feature = "tpm")]
            Self::TpmHandles(tpm) => {
                let mut config = tpm.clone();
                config.key = TpmKey::Handle(tpm_handles::parse_reference(key)?);
                Ok(Arc::new(keybound_signer_tpm::TpmSigner::open(&config)?))
            }
        }
    }

    /// Destroys the key `key` refers to: `C_DestroyObject` on both halves in a token, the key
    /// file of a TPM key (its only copy: the TPM keeps nothing), `EvictControl` of a key at a
    /// persistent handle when the handle still holds that key (else there is nothing to do).
    fn destroy(&self, dir: &Path, reference: &KeyRef) -> anyhow::Result<()> {
        let key = &reference.key;
        let _ = dir;
        match self {
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(device) => {
                keybound_signer_pkcs11::destroy(&pkcs11_config_for(device, key))?;
                Ok(())
            }
            #[cfg(feature = "tpm")]
            Self::Tpm(_) => match std::fs::remove_file(dir.join(tpm_file_name(key)?)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            #[cfg(feature = "tpm")]
            Self::TpmHandles(tpm) => {
                let handle = tpm_handles::parse_reference(key)?;
                if tpm_handles::evict(
                    tpm,
                    handle,
                    &PublicKey::from_openssh(&reference.public_key)?,
                )? {
                    info!(key = %key, "evicted a key the cluster no longer binds");
                }
                Ok(())
            }
        }
    }
}

/// The prefix of every TPM key file keybound makes in storage.
pub const TPM_FILE_PREFIX: &str = "bkp_tpm_";

/// A TPM key reference: a file name of ours in storage, never a path elsewhere.
#[cfg(feature = "tpm")]
fn tpm_file_name(key: &str) -> anyhow::Result<&str> {
    if key.starts_with(TPM_FILE_PREFIX) && !key.contains('/') && key.ends_with(".pem") {
        Ok(key)
    } else {
        Err(anyhow!(
            "{DEVICE_KEYS} names {key:?}, which is not a TPM key file keybound made"
        ))
    }
}

/// The configuration that opens the key at `uri` (which names no module and no PIN): the
/// token's module and PIN source, from its settings or its URI's query.
#[cfg(feature = "pkcs11")]
fn pkcs11_config_for(device: &Pkcs11Config, uri: &str) -> Pkcs11Config {
    let mut config = device.clone();
    if let Ok(device_uri) = keybound_signer_pkcs11::Pkcs11Uri::parse(&device.uri) {
        config.module = config.module.or(device_uri.module_path);
        config.pin = config.pin.or_else(|| {
            device_uri
                .pin_source
                .and_then(|s| keybound_signer::PinSource::parse(&s).ok())
        });
    }
    config.uri = uri.to_owned().into();
    config
}
