//! Keys keybound keeps at persistent handles it manages (standard bound-keypair mode with
//! `tpm_key_handle`): what a handle holds, a new key made and made persistent at a handle only
//! when the handle is free or holds the key the caller names, and a key evicted only when it is
//! the one the caller names. A key of anyone else's is never touched: every `EvictControl` here
//! is preceded, on the same connection, by reading the handle's public key.
//!
//! The order is the caller's: [`NewKey::create`] makes the key (loaded, not yet persistent) and
//! gives its public key, which the caller records, and only then [`NewKey::persist`] puts it at
//! the handle. A crash between the two leaves nothing in the TPM (the loaded copy dies with the
//! connection) and a record naming a handle that does not hold the key: harmless, as the cluster
//! has not heard of the key yet.

use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::{Error, ErrorKind, PublicKey};
use tracing::debug;
use tss_esapi::Context;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::structures::CreateKeyResult;

use crate::TpmSigner;
use crate::attributes::parse_key;
use crate::auth::new_key_auth;
use crate::connect::connect;
use crate::error::{err, tpm_error};
use crate::keyfile::OWNER;
use crate::load::{find_persistent, parent_handle, persistent};
use crate::tcti::Tcti;

/// What a persistent handle holds.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Occupant {
    /// Nothing.
    Empty,
    /// An ECC P-256 signing key, with its public half.
    Key(PublicKey),
    /// Another object (a storage key, an RSA key, ...), described.
    Other(String),
}

/// What `handle` holds in the TPM `config` names.
pub fn occupant(config: &TpmConfig, handle: u32) -> Result<Occupant, Error> {
    let (_, mut ctx) = connect(config)?;
    read_occupant(&mut ctx, handle).map(|(occupant, _)| occupant)
}

/// What `handle` holds, and its object when it holds one.
fn read_occupant(
    ctx: &mut Context,
    handle: u32,
) -> Result<(Occupant, Option<ObjectHandle>), Error> {
    let Some(object) = find_persistent(ctx, handle)? else {
        return Ok((Occupant::Empty, None));
    };
    let (public, _, _) = ctx
        .execute_without_session(|c| c.read_public(KeyHandle::from(object)))
        .map_err(|e| tpm_error(&e, format!("reading the public part of 0x{handle:08x}")))?;
    let source = format!("persistent handle 0x{handle:08x}");
    let occupant = match parse_key(public, &source) {
        Ok((key, _)) => Occupant::Key(key),
        Err(e) => Occupant::Other(e.message().to_owned()),
    };
    Ok((occupant, Some(object)))
}

/// A signing key just created under its parent and loaded, not yet persistent; dropped, it
/// leaves nothing in the TPM.
pub struct NewKey {
    ctx: Context,
    tcti: Tcti,
    config: TpmConfig,
    loaded: KeyHandle,
    public: PublicKey,
}

impl NewKey {
    /// Creates an ECC P-256 signing key under the storage primary (or `config.parent`), with the
    /// attributes of every key keybound makes (`fixedTPM|fixedParent|sensitiveDataOrigin`, the
    /// authorization value from `config.auth`), and loads it.
    pub fn create(config: &TpmConfig) -> Result<Self, Error> {
        let (tcti, mut ctx) = connect(config)?;
        let auth = new_key_auth(config)?;
        let (parent_key, flush) = parent_handle(&mut ctx, config.parent.unwrap_or(OWNER))?;
        let made = create_and_load(&mut ctx, parent_key, auth);
        if flush {
            let _ = ctx.flush_context(parent_key.into());
        }
        let (loaded, public) = made?;
        Ok(Self {
            ctx,
            tcti,
            config: config.clone(),
            loaded,
            public,
        })
    }

    /// The new key's public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Makes the key persistent at `handle`, which must be empty or hold `replacing` (evicted
    /// first); anything else there is left alone and refused. Returns the key opened.
    pub fn persist(
        mut self,
        handle: u32,
        replacing: Option<&PublicKey>,
    ) -> Result<TpmSigner, Error> {
        let target = persistent(handle)?;
        match read_occupant(&mut self.ctx, handle)? {
            (Occupant::Empty, _) => {}
            (Occupant::Key(key), Some(object)) if Some(&key) == replacing => {
                evict(&mut self.ctx, object, handle)?;
                debug!(
                    handle = format!("0x{handle:08x}"),
                    "evicted the key a new one replaces"
                );
            }
            (occupant, _) => return Err(foreign(handle, &occupant, &self.tcti)),
        }
        let loaded = self.loaded;
        self.ctx
            .execute_with_nullauth_session(|c| {
                c.evict_control(
                    Provision::Owner,
                    loaded.into(),
                    Persistent::Persistent(target),
                )
            })
            .map_err(|e| {
                tpm_error(
                    &e,
                    format!("making the new key persistent at 0x{handle:08x}"),
                )
            })?;
        let mut config = self.config.clone();
        config.key = TpmKey::Handle(handle);
        let public = self.public.clone();
        drop(self);
        let signer = TpmSigner::open(&config)?;
        if signer.public != public {
            return Err(err(
                ErrorKind::KeyNotFound,
                format!("0x{handle:08x} does not hold the key just made persistent there"),
            ));
        }
        Ok(signer)
    }
}

impl Drop for NewKey {
    fn drop(&mut self) {
        let _ = self.ctx.flush_context(self.loaded.into());
    }
}

/// Evicts the key at `handle` if it is `expected`. `Ok(true)`: evicted; `Ok(false)`: the handle
/// is empty or holds something else, which is left alone.
pub fn evict_if(config: &TpmConfig, handle: u32, expected: &PublicKey) -> Result<bool, Error> {
    let (_, mut ctx) = connect(config)?;
    match read_occupant(&mut ctx, handle)? {
        (Occupant::Key(key), Some(object)) if key == *expected => {
            evict(&mut ctx, object, handle)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The error for a handle that holds what keybound did not make: it names the handle, what is
/// there, and the fix.
pub fn foreign(handle: u32, occupant: &Occupant, tcti: &dyn std::fmt::Display) -> Error {
    let what = match occupant {
        Occupant::Key(key) => format!("a key keybound did not make ({})", key.fingerprint()),
        Occupant::Other(what) => format!("an object keybound did not make ({what})"),
        Occupant::Empty => "nothing".to_owned(),
    };
    err(
        ErrorKind::Config,
        format!(
            "persistent handle 0x{handle:08x} in the TPM at {tcti} holds {what}, and keybound never \
             replaces a key it does not own: set tpm_key_handle to a pair of free handles \
             (tpm2_getcap handles-persistent lists those in use), or, if nothing needs that key, \
             remove it with tpm2_evictcontrol -C o -c 0x{handle:08x}"
        ),
    )
}

/// Removes the persistent object at `handle` (`TPM2_EvictControl` with the owner hierarchy).
fn evict(ctx: &mut Context, object: ObjectHandle, handle: u32) -> Result<(), Error> {
    let target = persistent(handle)?;
    ctx.execute_with_nullauth_session(|c| {
        c.evict_control(Provision::Owner, object, Persistent::Persistent(target))
    })
    .map_err(|e| tpm_error(&e, format!("evicting the key at 0x{handle:08x}")))?;
    Ok(())
}

/// `TPM2_Create` of a signing key under `parent`, then `TPM2_Load`; its handle and public half.
fn create_and_load(
    ctx: &mut Context,
    parent: KeyHandle,
    auth: Option<tss_esapi::structures::Auth>,
) -> Result<(KeyHandle, PublicKey), Error> {
    let template = crate::generate::signing_key_template()
        .map_err(|e| tpm_error(&e, "building the key template".to_owned()))?;
    let created: CreateKeyResult = ctx
        .execute_with_nullauth_session(|c| c.create(parent, template, auth, None, None, None))
        .map_err(|e| tpm_error(&e, "creating the key".to_owned()))?;
    let (public, _) = parse_key(created.out_public.clone(), &"the new key")?;
    let loaded = ctx
        .execute_with_nullauth_session(|c| {
            c.load(
                parent,
                created.out_private.clone(),
                created.out_public.clone(),
            )
        })
        .map_err(|e| tpm_error(&e, "loading the new key".to_owned()))?;
    Ok((loaded, public))
}
