//! Loading the key: from a persistent handle, or from a `TSS2 PRIVATE KEY` file (see
//! [`crate::keyfile`]) under its parent (the standard storage primary, made afresh, or a
//! persistent key).

use std::fmt;
use std::path::{Path, PathBuf};

use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::{Error, ErrorKind};
use tss_esapi::Context;
use tss_esapi::Error as TssError;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    EccPoint, Private, Public, PublicBuilder, PublicEccParametersBuilder, SymmetricDefinitionObject,
};
use tss_esapi::traits::UnMarshall as _;

use crate::error::{err, rc_kind, tpm_error};
use crate::keyfile::{KeyFile, OWNER};
use crate::tcti::Tcti;

/// Where the key came from, for messages and `Debug`.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    Handle(u32),
    File { path: PathBuf, parent: u32 },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handle(h) => write!(f, "persistent handle 0x{h:08x}"),
            Self::File {
                path,
                parent: OWNER,
            } => write!(f, "key file {}", path.display()),
            Self::File { path, parent } => {
                write!(f, "key file {} (parent 0x{parent:08x})", path.display())
            }
        }
    }
}

/// Loads the key `config` names: the object at its persistent handle, or the key file (already
/// read into `key_file`) under its parent, which must agree with `--tpm-parent` when both are
/// given.
pub(crate) fn load_key(
    ctx: &mut Context,
    tcti: &Tcti,
    config: &TpmConfig,
    key_file: Option<(PathBuf, KeyFile)>,
) -> Result<(KeyHandle, Source), Error> {
    Ok(match (&config.key, key_file) {
        (TpmKey::Handle(handle), _) => {
            let object = find_persistent(ctx, *handle)?.ok_or_else(|| {
                err(
                    ErrorKind::KeyNotFound,
                    format!(
                        "no key at persistent handle 0x{handle:08x} in the TPM at {tcti}; make one with \
                         `keybound keypair create --static --signer tpm --tpm-key-handle 0x{handle:08x}`"
                    ),
                )
            })?;
            (KeyHandle::from(object), Source::Handle(*handle))
        }
        (TpmKey::File(path), Some((_, file))) => {
            let parent = match config.parent {
                Some(p) if p != file.parent => {
                    return Err(err(
                        ErrorKind::Config,
                        format!(
                            "key file {} names parent 0x{:08x}, not --tpm-parent 0x{p:08x}",
                            path.display(),
                            file.parent
                        ),
                    ));
                }
                _ => file.parent,
            };
            let key = load_file(ctx, tcti, path, &file)?;
            (
                key,
                Source::File {
                    path: path.clone(),
                    parent,
                },
            )
        }
        (TpmKey::File(_), None) => unreachable!("read above"),
    })
}

/// The persistent-handle range (`TPM_HT_PERSISTENT`, owner part).
pub(crate) fn persistent(handle: u32) -> Result<PersistentTpmHandle, Error> {
    if !(0x8100_0000..=0x81FF_FFFF).contains(&handle) {
        return Err(err(
            ErrorKind::Config,
            format!("0x{handle:08x} is not a persistent handle (0x81000000 to 0x81ffffff)"),
        ));
    }
    PersistentTpmHandle::new(handle)
        .map_err(|e| err(ErrorKind::Config, format!("handle 0x{handle:08x}: {e}")))
}

/// The object at a persistent handle, or `None` when the handle is empty.
pub(crate) fn find_persistent(
    ctx: &mut Context,
    handle: u32,
) -> Result<Option<ObjectHandle>, Error> {
    let tpm_handle = TpmHandle::Persistent(persistent(handle)?);
    // tr_from_tpm_public must run without the password session set: with it, libtss2-esys 3.2.1
    // crashes in Esys_TR_FromTPMPublic_Finish.
    match ctx.execute_without_session(|c| c.tr_from_tpm_public(tpm_handle)) {
        Ok(object) => Ok(Some(object)),
        Err(e) if rc_kind(&e) == Some(Tss2ResponseCodeKind::Handle) => Ok(None),
        Err(e) => Err(tpm_error(&e, format!("looking up handle 0x{handle:08x}"))),
    }
}

/// Reads and parses a `TSS2 PRIVATE KEY` file.
pub(crate) fn read_key_file(path: &Path) -> Result<KeyFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::KeyNotFound
        } else {
            ErrorKind::Config
        };
        err(kind, format!("key file {}: {e}", path.display()))
    })?;
    KeyFile::from_pem(&text).map_err(|e| {
        err(
            ErrorKind::InvalidKey,
            format!("key file {}: {e}", path.display()),
        )
    })
}

/// The parent a key file names: the storage primary (made afresh; the same template gives the
/// same key) or a persistent key. Returns the handle and whether it must be flushed after use.
pub(crate) fn parent_handle(ctx: &mut Context, parent: u32) -> Result<(KeyHandle, bool), Error> {
    if parent == OWNER {
        let template = storage_primary_template()
            .map_err(|e| tpm_error(&e, "building the primary template".to_owned()))?;
        let primary = ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
            })
            .map_err(|e| {
                tpm_error(
                    &e,
                    "creating the storage primary under the owner hierarchy".to_owned(),
                )
            })?;
        return Ok((primary.key_handle, true));
    }
    let object = find_persistent(ctx, parent)?.ok_or_else(|| {
        err(
            ErrorKind::KeyNotFound,
            format!("no parent key at persistent handle 0x{parent:08x}"),
        )
    })?;
    Ok((KeyHandle::from(object), false))
}

/// Loads a key file's wrapped key under its parent.
fn load_file(
    ctx: &mut Context,
    tcti: &Tcti,
    path: &Path,
    file: &KeyFile,
) -> Result<KeyHandle, Error> {
    let bad = |e: String| {
        err(
            ErrorKind::InvalidKey,
            format!("key file {}: {e}", path.display()),
        )
    };
    let public = Public::unmarshall(untpm2b(&file.public, "public part").map_err(bad)?)
        .map_err(|e| bad(format!("holds an unreadable public part ({e})")))?;
    let private = Private::try_from(
        untpm2b(&file.private, "private part")
            .map_err(bad)?
            .to_vec(),
    )
    .map_err(|e| bad(format!("holds an unreadable private part ({e})")))?;
    let (parent, flush) = parent_handle(ctx, file.parent)?;
    let loaded = ctx.execute_with_nullauth_session(|c| c.load(parent, private, public));
    if flush {
        let _ = ctx.flush_context(parent.into());
    }
    loaded.map_err(|e| match rc_kind(&e) {
        Some(Tss2ResponseCodeKind::Integrity | Tss2ResponseCodeKind::Size | Tss2ResponseCodeKind::Value | Tss2ResponseCodeKind::Binding) => err(
            ErrorKind::InvalidKey,
            format!(
                "key file {} was not made under parent 0x{:08x} of the TPM at {tcti} (the TPM could not unwrap it: {e}); \
                 it belongs to another TPM or parent",
                path.display(),
                file.parent
            ),
        ),
        _ => tpm_error(&e, format!("loading key file {}", path.display())),
    })
}

/// The standard storage primary under the owner hierarchy: ECC P-256, AES-128-CFB, restricted
/// decryption, noDA, an all-zero unique (the template of `tpm2_createprimary -G
/// ecc256:null:aes128cfb` with noda, and of tpm2-openssl and tpm2-tss-engine for parent
/// 0x40000001).
fn storage_primary_template() -> Result<Public, TssError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A `TPM2B`: the bytes with their size (big-endian `u16`) in front.
pub(crate) fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a `TPM2B`, checked against its size.
fn untpm2b<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
            Ok(rest)
        }
        _ => Err(format!("holds a malformed {what}")),
    }
}
