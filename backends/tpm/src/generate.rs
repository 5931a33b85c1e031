//! Making a key inside the TPM (`keybound keypair create --signer tpm`): an ECC P-256 signing
//! key created under its parent, then persisted at a handle or wrapped into a key file.

use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::{Algorithm, Error, ErrorKind};
use tracing::debug;
use tss_esapi::Context;
use tss_esapi::Error as TssError;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::structures::{Auth, CreateKeyResult, EccScheme, HashScheme, Public};
use tss_esapi::traits::Marshall as _;
use zeroize::Zeroizing;

use crate::TpmSigner;
use crate::auth::new_key_auth;
use crate::connect::connect;
use crate::error::{err, tpm_error};
use crate::keyfile::{KeyFile, OWNER};
use crate::load::{find_persistent, parent_handle, persistent, tpm2b};

/// A key made by [`generate`]: the signer, and for a key file the PEM to write (the caller writes
/// it, atomically and 0600).
pub struct Generated {
    /// The new key, open.
    pub signer: TpmSigner,
    /// `TSS2 PRIVATE KEY` PEM for [`TpmKey::File`] keys.
    pub pem: Option<Zeroizing<String>>,
}

/// Makes an ECC P-256 signing key inside the TPM, persisted at the handle or wrapped for the
/// file `config` names. An occupied handle is reused only with `overwrite` (the caller checks the
/// file).
pub fn generate(
    config: &TpmConfig,
    algorithm: Algorithm,
    overwrite: bool,
) -> Result<Generated, Error> {
    if algorithm != Algorithm::EcdsaP256Sha256 {
        return Err(err(
            ErrorKind::Unsupported,
            "TPMs do not make Ed25519 keys; use --algorithm ecdsa-p256: a static P-256 bound key works with every \
             cluster suite (Teleport does not require the suite's algorithm for bound keys)",
        ));
    }
    let (tcti, mut ctx) = connect(config)?;
    let auth = new_key_auth(config)?;
    let parent = config.parent.unwrap_or(OWNER);
    if let TpmKey::Handle(handle) = config.key {
        clear_handle(&mut ctx, handle, overwrite)?;
    }
    let (parent_key, flush) = parent_handle(&mut ctx, parent)?;
    let made = make_under(&mut ctx, (parent_key, parent), config, auth);
    if flush {
        let _ = ctx.flush_context(parent_key.into());
    }
    let (file, pem) = made?;
    drop(ctx);
    let signer = match &config.key {
        TpmKey::Handle(_) => TpmSigner::open_inner(config, None)?,
        TpmKey::File(path) => TpmSigner::open_inner(config, Some((path.clone(), file)))?,
    };
    debug!(%tcti, key = %signer.source, "made a key in the TPM");
    Ok(Generated { signer, pem })
}

/// Empties the persistent handle for the new key: a key there is evicted only with `overwrite`.
fn clear_handle(ctx: &mut Context, handle: u32, overwrite: bool) -> Result<(), Error> {
    let Some(existing) = find_persistent(ctx, handle)? else {
        return Ok(());
    };
    if !overwrite {
        return Err(err(
            ErrorKind::Config,
            format!(
                "persistent handle 0x{handle:08x} already holds a key; keybound never replaces one without --overwrite"
            ),
        ));
    }
    ctx.execute_with_nullauth_session(|c| {
        c.evict_control(
            Provision::Owner,
            existing,
            Persistent::Persistent(persistent(handle).expect("checked")),
        )
    })
    .map_err(|e| tpm_error(&e, format!("removing the old key at 0x{handle:08x}")))?;
    Ok(())
}

/// Creates the key under `parent_key` (the `parent` the key file names), then persists it at
/// the configured handle, or encodes the key file's PEM. Returns the key file either way.
fn make_under(
    ctx: &mut Context,
    (parent_key, parent): (KeyHandle, u32),
    config: &TpmConfig,
    auth: Option<Auth>,
) -> Result<(KeyFile, Option<Zeroizing<String>>), Error> {
    let template = signing_key_template()
        .map_err(|e| tpm_error(&e, "building the key template".to_owned()))?;
    let created = ctx
        .execute_with_nullauth_session(|c| c.create(parent_key, template, auth, None, None, None))
        .map_err(|e| tpm_error(&e, "creating the key".to_owned()))?;
    let public_bytes = created
        .out_public
        .marshall()
        .map_err(|e| tpm_error(&e, "encoding the public part".to_owned()))?;
    let file = KeyFile {
        empty_auth: config.auth.is_none(),
        parent,
        public: tpm2b(&public_bytes),
        private: tpm2b(created.out_private.value()),
    };
    let pem = match config.key {
        TpmKey::Handle(handle) => {
            persist(ctx, parent_key, &created, handle)
                .map_err(|e| tpm_error(&e, format!("persisting the key at 0x{handle:08x}")))?;
            None
        }
        TpmKey::File(_) => Some(Zeroizing::new(file.to_pem())),
    };
    Ok((file, pem))
}

/// Loads the new key and makes it persistent at `handle`; the loaded copy is flushed.
fn persist(
    ctx: &mut Context,
    parent_key: KeyHandle,
    created: &CreateKeyResult,
    handle: u32,
) -> Result<(), TssError> {
    let key = ctx.execute_with_nullauth_session(|c| {
        c.load(
            parent_key,
            created.out_private.clone(),
            created.out_public.clone(),
        )
    })?;
    let result = ctx.execute_with_nullauth_session(|c| {
        c.evict_control(
            Provision::Owner,
            key.into(),
            Persistent::Persistent(persistent(handle).expect("checked")),
        )
    });
    let _ = ctx.flush_context(key.into());
    result.map(drop)
}

/// An ECC P-256 ECDSA/SHA-256 signing key: fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth, sign; not restricted, not decrypt; dictionary-attack protected.
pub(crate) fn signing_key_template() -> Result<Public, TssError> {
    tss_esapi::utils::create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
}
