//! The signer: a key in a token, opened once and kept with its session, which is rebuilt (found
//! again, logged in again) when the token loses it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::Pkcs11;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use keybound_signer::config::Pkcs11Config;
use keybound_signer::{Error, ErrorKind, PinSource, Protection, PublicKey};
use tracing::debug;

use crate::Pkcs11Uri;
use crate::error::{err, kind_of};
use crate::find;
use crate::login::{log_in, pin_source, require_pin_source};
use crate::module::{load_module, module_path};
use crate::token::find_token;
use crate::{key, sign};

/// A bound keypair in a PKCS#11 token.
pub struct Pkcs11Signer {
    ctx: Pkcs11,
    module: PathBuf,
    pub(crate) token: String,
    serial: String,
    label: Option<String>,
    id: Vec<u8>,
    /// Where the PIN comes from; read again at each login.
    pin: Option<PinSource>,
    pub(crate) public: PublicKey,
    pub(crate) protection: Protection,
    /// Whether the token signs with `CKM_ECDSA_SHA256` (hashing itself) rather than raw ECDSA.
    pub(crate) mechanism_ecdsa_sha256: bool,
    pub(crate) state: Mutex<State>,
}

/// The open session and key handle, rebuilt when the token loses them.
pub(crate) struct State {
    slot: Slot,
    pub(crate) session: Option<(Session, ObjectHandle)>,
}

impl Pkcs11Signer {
    /// Opens the key `config` names: loads the module, finds the token, logs in, finds exactly one
    /// private key, and reads its public key and protection attributes.
    pub fn open(config: &Pkcs11Config) -> Result<Self, Error> {
        let uri = Pkcs11Uri::parse(&config.uri).map_err(|e| err(ErrorKind::Config, e))?;
        let module = module_path(config, &uri)?;
        let pin = pin_source(config, &uri)?;
        let ctx = load_module(&module)?;
        let (slot, token, serial) = find_token(&ctx, &uri, &module)?;
        require_pin_source(&ctx, slot, &token, pin.as_ref())?;
        let session = ctx.open_ro_session(slot).map_err(|e| {
            err(kind_of(&e), format!("opening a session on token {token:?}")).with_source(e)
        })?;
        log_in(
            &ctx,
            slot,
            &session,
            pin.as_ref(),
            (&module, &token, &serial),
        )?;
        let handle = find::find_private(&session, &uri, &token, &serial)?;
        let key = key::read(&session, handle, &token)?;
        let protection = key.protection();
        if config.require_hardware_key && !protection.is_hardware() {
            return Err(err(
                ErrorKind::Config,
                format!(
                    "the key {} is {protection}, and --require-hardware-key asks for a key generated \
                     in the token that never left it: make one with `keybound keypair create \
                     --static --signer pkcs11`",
                    Pkcs11Uri::for_key(&token, &serial, key.label.as_deref(), &key.id)
                ),
            ));
        }
        let mechanisms = ctx.get_mechanism_list(slot).unwrap_or_default();
        sign::check_mechanisms(&mechanisms, key.public.algorithm(), &token)?;
        debug!(token, key = ?key.label, algorithm = %key.public.algorithm(), %protection, "opened PKCS#11 key");
        Ok(Self {
            module,
            token,
            serial,
            label: key.label,
            id: key.id,
            pin,
            public: key.public,
            protection,
            mechanism_ecdsa_sha256: sign::has_ecdsa_sha256(&mechanisms),
            state: Mutex::new(State {
                slot,
                session: Some((session, handle)),
            }),
            ctx,
        })
    }

    /// The key's URI, ready to paste.
    pub fn uri(&self) -> Pkcs11Uri {
        Pkcs11Uri::for_key(&self.token, &self.serial, self.label.as_deref(), &self.id)
    }

    /// Reopens the session, logs in again and finds the key again (after the token lost them).
    pub(crate) fn reopen(&self, state: &mut State) -> Result<(), Error> {
        state.session = None;
        // The slot may have changed if the token was removed and inserted again.
        let uri = Pkcs11Uri {
            token: Some(self.token.clone()),
            serial: Some(self.serial.clone()).filter(|s| !s.is_empty()),
            ..Default::default()
        };
        let (slot, _, _) = find_token(&self.ctx, &uri, &self.module).map_err(|e| {
            err(
                ErrorKind::Unavailable,
                format!("token {:?} is gone: {}", self.token, e.message()),
            )
        })?;
        let session = self
            .ctx
            .open_ro_session(slot)
            .map_err(|e| err(kind_of(&e), "reopening a session").with_source(e))?;
        log_in(
            &self.ctx,
            slot,
            &session,
            self.pin.as_ref(),
            (&self.module, &self.token, &self.serial),
        )?;
        let mut template = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(self.id.clone()),
        ];
        if let Some(label) = &self.label {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        let found = session
            .find_objects(&template)
            .map_err(|e| err(kind_of(&e), "finding the key again").with_source(e))?;
        let [handle] = found.as_slice() else {
            return Err(err(
                ErrorKind::KeyNotFound,
                format!("the key {} is no longer on the token", self.uri()),
            ));
        };
        state.slot = slot;
        state.session = Some((session, *handle));
        Ok(())
    }

    /// Drops the open session, as a token that lost it would (tests of the reopen path).
    #[cfg(feature = "testing")]
    pub fn close_session_for_test(&self) {
        let mut state = self.state.lock().expect("session lock poisoned");
        if let Some((session, _)) = state.session.take() {
            let _ = session.close();
        }
    }
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("module", &self.module)
            .field("key", &self.uri().to_string())
            .field("algorithm", &self.public.algorithm())
            .field("fingerprint", &self.public.fingerprint())
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}
