//! The signer: a key in the TPM, opened once (connect, load, check, authorize) and kept with its
//! context, which is opened afresh when the TPM went away and came back.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::refused::Fingerprint;
use keybound_signer::{Error, ErrorKind, Protection, PublicKey};
use tracing::debug;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::{Context, Error as TssError};

use crate::attributes::read_key;
use crate::auth::set_key_auth;
use crate::connect::connect;
use crate::error::err;
use crate::keyfile::KeyFile;
use crate::load::{Source, load_key, read_key_file};
use crate::tcti::Tcti;

/// A bound keypair inside a TPM.
pub struct TpmSigner {
    /// What [`open`](Self::open) was given, to connect again after the TPM went away.
    pub(crate) config: TpmConfig,
    key_file: Option<(PathBuf, KeyFile)>,
    pub(crate) tcti: Tcti,
    pub(crate) source: Source,
    pub(crate) public: PublicKey,
    pub(crate) protection: Protection,
    /// TPM commands need `&mut Context`; one signature at a time.
    pub(crate) state: Mutex<Session>,
}

/// A connection to the TPM with the key loaded, and the fingerprint of the authorization value
/// set on the key ([`keybound_signer::refused`]): once the TPM refuses that value, it is never
/// sent again.
pub(crate) struct Session {
    pub(crate) ctx: Context,
    pub(crate) key: KeyHandle,
    pub(crate) auth: Option<Fingerprint>,
}

impl TpmSigner {
    /// Opens the key `config` names and reads its public half and attributes.
    pub fn open(config: &TpmConfig) -> Result<Self, Error> {
        let key_file = match &config.key {
            TpmKey::File(path) => Some((path.clone(), read_key_file(path)?)),
            TpmKey::Handle(_) => None,
        };
        Self::open_inner(config, key_file)
    }

    /// Connects, loads the key (`key_file` holds a key file already read), checks it, and sets
    /// its authorization value.
    pub(crate) fn open_inner(
        config: &TpmConfig,
        key_file: Option<(PathBuf, KeyFile)>,
    ) -> Result<Self, Error> {
        let kept = key_file.clone();
        let (tcti, mut ctx) = connect(config)?;
        let (key, source) = load_key(&mut ctx, &tcti, config, key_file)?;
        let (public, protection) = read_key(&mut ctx, key, &source)?;
        if config.require_hardware_key && !protection.is_hardware() {
            return Err(err(
                ErrorKind::Config,
                format!(
                    "the key at {source} is {protection}, and --require-hardware-key asks for a key \
                     generated in the TPM that never left it: make one with `keybound keypair \
                     create --static --signer tpm`"
                ),
            ));
        }
        let fingerprint = set_key_auth(
            &mut ctx,
            key,
            config.auth.as_ref(),
            (&tcti, &public),
            &source,
        )?;
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        debug!(%tcti, key = %source, %protection, "opened TPM key");
        Ok(Self {
            config: config.clone(),
            key_file: kept,
            tcti,
            source,
            public,
            protection,
            state: Mutex::new(Session {
                ctx,
                key,
                auth: fingerprint,
            }),
        })
    }

    /// Connects to the TPM again and loads the same key, after a command failed with `failure`:
    /// a TPM that restarted (swtpm, a resource manager, a reset) leaves the old context dead.
    pub(crate) fn reconnect(&self, failure: &TssError) -> Result<Session, Error> {
        let fresh = Self::open_inner(&self.config, self.key_file.clone()).map_err(|e| {
            err(
                e.kind(),
                format!(
                    "the TPM at {} failed to sign with {} ({failure}), and connecting again failed: {}",
                    self.tcti,
                    self.source,
                    e.message()
                ),
            )
        })?;
        if fresh.public != self.public {
            return Err(err(
                ErrorKind::KeyNotFound,
                format!(
                    "after connecting again, {} in the TPM at {} is another key ({}, not {})",
                    self.source,
                    self.tcti,
                    fresh.public.fingerprint(),
                    self.public.fingerprint()
                ),
            ));
        }
        Ok(fresh
            .state
            .into_inner()
            .expect("a fresh TPM context lock is not poisoned"))
    }

    /// Where the key is, for messages: `persistent handle 0x...` or `key file ...`.
    pub fn location(&self) -> String {
        self.source.to_string()
    }

    /// The TCTI in use.
    pub fn tcti(&self) -> String {
        self.tcti.to_string()
    }
}

impl fmt::Debug for TpmSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmSigner")
            .field("tcti", &self.tcti.to_string())
            .field("key", &self.source.to_string())
            .field("fingerprint", &self.public.fingerprint())
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}
