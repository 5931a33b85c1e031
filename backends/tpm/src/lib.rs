#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod keyfile;
pub mod tcti;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::refused::Fingerprint;
use keybound_signer::{
    Algorithm, Error, ErrorKind, PinSource, Protection, PublicKey, Signature, Signer,
};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, PropertyTag};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, Private,
    Public, PublicBuilder, PublicEccParametersBuilder, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, Error as TssError};
use zeroize::Zeroizing;

use keyfile::{KeyFile, OWNER};
use tcti::Tcti;

const BACKEND: &str = "tpm";
/// Attempts for a command the TPM asks to repeat (`TPM_RC_RETRY`, `YIELDED`, `TESTING`).
const ATTEMPTS: u32 = 5;
/// The first back-off; it doubles for each further attempt.
const BACKOFF: Duration = Duration::from_millis(20);
/// `TPMA_PERMANENT.inLockout`.
const IN_LOCKOUT: u32 = 1 << 9;

fn err(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, BACKEND, message)
}

fn rc_kind(e: &TssError) -> Option<Tss2ResponseCodeKind> {
    match e {
        TssError::Tss2Error(rc) => rc.kind(),
        TssError::WrapperError(_) => None,
    }
}

fn is_transient(e: &TssError) -> bool {
    matches!(
        rc_kind(e),
        Some(
            Tss2ResponseCodeKind::Retry
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Testing
        )
    )
}

fn is_auth_failure(e: &TssError) -> bool {
    matches!(
        rc_kind(e),
        Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth)
    )
}

/// Runs `op`, repeating it with bounded back-off while the TPM answers RETRY, YIELDED or TESTING.
fn retrying<T>(mut op: impl FnMut() -> Result<T, TssError>) -> Result<T, TssError> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if is_transient(&e) && attempt + 1 < ATTEMPTS => {
                debug!(error = %e, attempt, "the TPM asked to try again");
                std::thread::sleep(BACKOFF * 2u32.pow(attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
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

/// An ECC P-256 ECDSA/SHA-256 signing key: fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth, sign; not restricted, not decrypt; dictionary-attack protected.
fn signing_key_template() -> Result<Public, TssError> {
    tss_esapi::utils::create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
}

fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn untpm2b<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
            Ok(rest)
        }
        _ => Err(format!("holds a malformed {what}")),
    }
}

/// The persistent-handle range (`TPM_HT_PERSISTENT`, owner part).
fn persistent(handle: u32) -> Result<PersistentTpmHandle, Error> {
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
fn find_persistent(ctx: &mut Context, handle: u32) -> Result<Option<ObjectHandle>, Error> {
    let tpm_handle = TpmHandle::Persistent(persistent(handle)?);
    // tr_from_tpm_public must run without the password session set: with it, libtss2-esys 3.2.1
    // crashes in Esys_TR_FromTPMPublic_Finish.
    match ctx.execute_without_session(|c| c.tr_from_tpm_public(tpm_handle)) {
        Ok(object) => Ok(Some(object)),
        Err(e) if rc_kind(&e) == Some(Tss2ResponseCodeKind::Handle) => Ok(None),
        Err(e) => Err(tpm_error(&e, format!("looking up handle 0x{handle:08x}"))),
    }
}

fn tpm_error(e: &TssError, doing: String) -> Error {
    let kind = if is_transient(e) {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Sign
    };
    err(kind, format!("{doing}: {e}")).with_source(*e)
}

/// `TPMA_PERMANENT.inLockout`, the failure counter and its limit, read for an error message.
fn lockout_state(ctx: &mut Context) -> String {
    let read = |ctx: &mut Context, tag: PropertyTag| -> Option<u32> {
        // TPM2_GetCapability takes no authorization session.
        let (data, _) = ctx
            .execute_without_session(|c| {
                c.get_capability(CapabilityType::TpmProperties, tag.into(), 1)
            })
            .ok()?;
        match data {
            CapabilityData::TpmProperties(list) => list.find(tag).map(|p| p.value()),
            _ => None,
        }
    };
    let in_lockout = read(ctx, PropertyTag::Permanent).map(|p| p & IN_LOCKOUT != 0);
    let counter = read(ctx, PropertyTag::LockoutCounter);
    let max = read(ctx, PropertyTag::MaxAuthFail);
    let interval = read(ctx, PropertyTag::LockoutInterval);
    format!(
        "inLockout={}, failed authorizations {} of {}, one forgiven every {} s",
        in_lockout.map_or("?".to_owned(), |v| v.to_string()),
        counter.map_or("?".to_owned(), |v| v.to_string()),
        max.map_or("?".to_owned(), |v| v.to_string()),
        interval.map_or("?".to_owned(), |v| v.to_string()),
    )
}

/// Where the key came from, for messages and `Debug`.
#[derive(Clone, Debug)]
enum Source {
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

/// A bound keypair inside a TPM.
pub struct TpmSigner {
    /// What [`open`](Self::open) was given, to connect again after the TPM went away.
    config: TpmConfig,
    key_file: Option<(PathBuf, KeyFile)>,
    tcti: Tcti,
    source: Source,
    public: PublicKey,
    protection: Protection,
    /// TPM commands need `&mut Context`; one signature at a time.
    state: Mutex<Session>,
}

/// A connection to the TPM with the key loaded, and the fingerprint of the authorization value
/// set on the key ([`keybound_signer::refused`]): once the TPM refuses that value, it is never
/// sent again.
struct Session {
    ctx: Context,
    key: KeyHandle,
    auth: Option<Fingerprint>,
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

    fn open_inner(config: &TpmConfig, key_file: Option<(PathBuf, KeyFile)>) -> Result<Self, Error> {
        let kept = key_file.clone();
        let (tcti, mut ctx) = connect(config)?;
        let (key, source) = match (&config.key, key_file) {
            (TpmKey::Handle(handle), _) => {
                let object = find_persistent(&mut ctx, *handle)?.ok_or_else(|| {
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
                let key = load_file(&mut ctx, &tcti, path, &file)?;
                (
                    key,
                    Source::File {
                        path: path.clone(),
                        parent,
                    },
                )
            }
            (TpmKey::File(_), None) => unreachable!("read above"),
        };
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
        // Read afresh at every open: a fixed source takes effect at the next open (SIGHUP) or
        // reconnection; a value the TPM refused before is not sent again.
        let mut fingerprint = None;
        if let Some(auth_source) = &config.auth {
            let Some(presented) = auth_source.read_for(BACKEND, &device_key(&tcti, &public))?
            else {
                return Err(refused_before(auth_source, &source));
            };
            let auth = Auth::try_from(presented.value.as_bytes().to_vec()).map_err(|e| {
                err(
                    ErrorKind::Config,
                    format!("the key's authorization value is too long: {e}"),
                )
            })?;
            ctx.tr_set_auth(key.into(), auth)
                .map_err(|e| tpm_error(&e, "setting the key's authorization value".to_owned()))?;
            fingerprint = Some(presented.fingerprint);
        }
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
    fn reconnect(&self, failure: &TssError) -> Result<Session, Error> {
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

/// The name under which the refused-value memory keeps a key's authorization values: the TPM
/// and the key.
fn device_key(tcti: &Tcti, public: &PublicKey) -> String {
    format!("tpm {tcti} key {}", public.fingerprint())
}

/// The error for an authorization value the TPM refused before: it is not sent again.
fn refused_before(auth: &PinSource, key: &Source) -> Error {
    err(
        ErrorKind::Auth,
        auth.refused_before(
            "the authorization value",
            &format!("the TPM (for the key at {key})"),
            "each failure counts towards the TPM's dictionary-attack lockout",
        ),
    )
}

fn connect(config: &TpmConfig) -> Result<(Tcti, Context), Error> {
    let tcti = tcti::resolve(config.tcti.as_deref()).map_err(|e| err(ErrorKind::Config, e))?;
    let conf = tcti.to_name_conf().map_err(|e| err(ErrorKind::Config, e))?;
    let ctx = Context::new(conf).map_err(|e| unreachable(&tcti, &e))?;
    Ok((tcti, ctx))
}

/// Why the TPM could not be reached, in words. When the TCTI cannot be opened, tss-esapi only
/// says "response code not recognized" (libtss2's TCTI codes have no name there), so for a
/// device the path itself is looked at: missing, not ours to open, or busy.
fn unreachable(tcti: &Tcti, e: &TssError) -> Error {
    let cause = match rc_kind(e) {
        Some(_) => e.to_string(),
        None => "the TCTI could not be opened".to_owned(),
    };
    let message = match tcti {
        Tcti::Device(path) => match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Err(io) if io.kind() == std::io::ErrorKind::NotFound => format!(
                "no TPM device at {}: is the TPM enabled (in the firmware setup, with the kernel's tpm_tis or \
                 tpm_crb driver loaded), or is tpm2-abrmd needed (--tpm-tcti tabrmd:)? For a TPM elsewhere set \
                 --tpm-tcti (tpm_tcti), e.g. swtpm:host=127.0.0.1,port=P",
                path.display()
            ),
            Err(io) if io.kind() == std::io::ErrorKind::PermissionDenied => format!(
                "this user may not open the TPM device {}: add it to the group that owns the device (tss on \
                 Debian and Ubuntu; under systemd SupplementaryGroups=tss)",
                path.display()
            ),
            Err(io) => format!(
                "cannot open the TPM device {} ({io}); a busy /dev/tpm0 is held by another program, such as \
                 tpm2-abrmd: use /dev/tpmrm0 or --tpm-tcti tabrmd:",
                path.display()
            ),
            Ok(_) => format!(
                "cannot reach the TPM at {tcti} ({cause}); {} opens, but does not answer as a TPM 2.0",
                path.display()
            ),
        },
        Tcti::Swtpm { .. } | Tcti::Mssim { .. } => format!(
            "cannot reach the TPM at {tcti} ({cause}); check the TCTI (--tpm-tcti) and that swtpm (or the \
             simulator) listens on that port, with its control port on the next one"
        ),
        Tcti::Tabrmd(_) => format!(
            "cannot reach the TPM at {tcti} ({cause}); is the tpm2-abrmd service running, and may this user \
             talk to it on D-Bus?"
        ),
    };
    err(ErrorKind::Unavailable, message)
}

fn read_key_file(path: &Path) -> Result<KeyFile, Error> {
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
fn parent_handle(ctx: &mut Context, parent: u32) -> Result<(KeyHandle, bool), Error> {
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

/// Reads the key's public area: ECC P-256, a signing key; and what its attributes promise.
fn read_key(
    ctx: &mut Context,
    key: KeyHandle,
    source: &Source,
) -> Result<(PublicKey, Protection), Error> {
    let (public, _, _) = ctx
        .execute_without_session(|c| c.read_public(key))
        .map_err(|e| tpm_error(&e, format!("reading the public part of {source}")))?;
    let Public::Ecc {
        object_attributes: a,
        parameters,
        unique,
        ..
    } = public
    else {
        return Err(err(
            ErrorKind::InvalidKey,
            format!("{source} is not an elliptic-curve key; bound keypairs on a TPM are ECC P-256"),
        ));
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(err(
            ErrorKind::InvalidKey,
            format!(
                "{source} is on curve {:?}; bound keypairs must be P-256",
                parameters.ecc_curve()
            ),
        ));
    }
    if !a.sign_encrypt() || a.restricted() {
        return Err(err(
            ErrorKind::InvalidKey,
            format!("{source} is not an unrestricted signing key"),
        ));
    }
    let pad = |v: &[u8]| -> Vec<u8> {
        let mut out = vec![0; 32usize.saturating_sub(v.len())];
        out.extend_from_slice(v);
        out
    };
    let mut point = vec![0x04];
    point.extend(pad(unique.x().value()));
    point.extend(pad(unique.y().value()));
    let public = PublicKey::from_p256_sec1(&point)?;
    let protection = key_protection(a.fixed_tpm(), a.fixed_parent(), a.sensitive_data_origin());
    Ok((public, protection))
}

/// What a key's attributes promise. Only `TPM2_Create` (and its kin) can set `fixedTPM`:
/// `TPM2_Import` and `TPM2_LoadExternal` refuse it (`TPM_RC_ATTRIBUTES`), and `TPM2_Create`
/// refuses an ECC key without `sensitiveDataOrigin` (all three checked on swtpm/libtpms). So
/// `fixedTPM` with `fixedParent` and `sensitiveDataOrigin` means generated in this TPM and never
/// out of it. `sensitiveDataOrigin` alone proves nothing: an importer may set it.
fn key_protection(fixed_tpm: bool, fixed_parent: bool, sensitive_data_origin: bool) -> Protection {
    match (fixed_tpm && fixed_parent, sensitive_data_origin) {
        (true, true) => Protection::NonExportable(
            "fixedTPM, fixedParent, sensitiveDataOrigin: generated in this TPM".to_owned(),
        ),
        (true, false) => Protection::Imported(
            "fixedTPM, fixedParent, but not sensitiveDataOrigin: its private part came from \
             outside the TPM"
                .to_owned(),
        ),
        (false, _) if !fixed_tpm => Protection::Exportable(
            "not fixedTPM: imported from outside (an import cannot set fixedTPM), or a key the \
             TPM may duplicate"
                .to_owned(),
        ),
        (false, _) => {
            Protection::Exportable("not fixedParent: the TPM may duplicate it".to_owned())
        }
    }
}

impl Signer for TpmSigner {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn protection(&self) -> Protection {
        self.protection.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        let mut guard = self.state.lock().expect("TPM context lock poisoned");
        if let (Some(auth), Some(fingerprint)) = (&self.config.auth, guard.auth)
            && fingerprint.was_refused()
        {
            return Err(refused_before(auth, &self.source));
        }
        let Session { ctx, key, .. } = &mut *guard;
        let digest =
            Digest::try_from(Sha256::digest(message).to_vec()).expect("32 bytes fit a TPM digest");
        let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .expect("a null hashcheck ticket is valid");
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let mut signed = retrying(|| ctx.sign(*key, digest.clone(), scheme, validation.clone()));
        if let Err(e) = &signed
            && !is_auth_failure(e)
            && rc_kind(e) != Some(Tss2ResponseCodeKind::Lockout)
        {
            // Perhaps the TPM went away and came back: connect again, once, and sign again.
            // (Never after an authorization failure: each one counts towards lockout.)
            warn!(error = %e, key = %self.source, "the TPM failed to sign; connecting again");
            *guard = self.reconnect(e)?;
            let Session { ctx, key, .. } = &mut *guard;
            signed = retrying(|| ctx.sign(*key, digest.clone(), scheme, validation.clone()));
        }
        if let Err(e) = &signed
            && is_auth_failure(e)
            && let Some(fingerprint) = guard.auth
        {
            fingerprint.remember_refused();
        }
        let ctx = &mut guard.ctx;
        match signed {
            Ok(tss_esapi::structures::Signature::EcDsa(signature)) => {
                let mut bytes = Vec::with_capacity(64);
                for half in [
                    signature.signature_r().value(),
                    signature.signature_s().value(),
                ] {
                    if half.len() > 32 {
                        return Err(err(
                            ErrorKind::Sign,
                            "the TPM returned an oversized ECDSA component",
                        ));
                    }
                    bytes.extend(std::iter::repeat_n(0, 32 - half.len()));
                    bytes.extend_from_slice(half);
                }
                Signature::new(Algorithm::EcdsaP256Sha256, bytes)
            }
            Ok(_) => Err(err(
                ErrorKind::Sign,
                "the TPM returned a signature of another scheme",
            )),
            Err(e) if is_auth_failure(&e) => Err(err(
                ErrorKind::Auth,
                format!(
                    "the TPM refused the authorization value of {} ({e}); keybound does not retry (each failure counts \
                     towards the TPM's dictionary-attack lockout): fix the pin source: {}",
                    self.source,
                    self.config.auth.as_ref().map_or_else(
                        || "give one with --pin-source".to_owned(),
                        PinSource::how_to_replace
                    )
                ),
            )),
            Err(e) if rc_kind(&e) == Some(Tss2ResponseCodeKind::Lockout) => {
                let state = lockout_state(ctx);
                Err(err(
                    ErrorKind::Auth,
                    format!(
                        "the TPM is in dictionary-attack lockout ({state}); wait for it to forgive failures, or \
                         clear it with the lockout authorization (tpm2_dictionarylockout -c)"
                    ),
                ))
            }
            Err(e) => {
                warn!(error = %e, key = %self.source, "the TPM failed to sign");
                Err(tpm_error(
                    &e,
                    format!(
                        "the TPM at {} failed to sign with {}",
                        self.tcti, self.source
                    ),
                ))
            }
        }
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

// === Key creation ===

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
    let auth = config
        .auth
        .as_ref()
        .map(|pin| {
            let value = pin.read(BACKEND)?;
            Auth::try_from(value.as_bytes().to_vec()).map_err(|e| {
                err(
                    ErrorKind::Config,
                    format!("the authorization value is too long: {e}"),
                )
            })
        })
        .transpose()?;
    let parent = config.parent.unwrap_or(OWNER);
    if let TpmKey::Handle(handle) = config.key
        && let Some(existing) = find_persistent(&mut ctx, handle)?
    {
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
    }
    let (parent_key, flush) = parent_handle(&mut ctx, parent)?;
    let template = signing_key_template()
        .map_err(|e| tpm_error(&e, "building the key template".to_owned()))?;
    let created = ctx
        .execute_with_nullauth_session(|c| c.create(parent_key, template, auth, None, None, None));
    let created = match created {
        Ok(created) => created,
        Err(e) => {
            if flush {
                let _ = ctx.flush_context(parent_key.into());
            }
            return Err(tpm_error(&e, "creating the key".to_owned()));
        }
    };
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
            let loaded = ctx.execute_with_nullauth_session(|c| {
                c.load(
                    parent_key,
                    created.out_private.clone(),
                    created.out_public.clone(),
                )
            });
            let persisted = loaded.and_then(|key| {
                let result = ctx.execute_with_nullauth_session(|c| {
                    c.evict_control(
                        Provision::Owner,
                        key.into(),
                        Persistent::Persistent(persistent(handle).expect("checked")),
                    )
                });
                let _ = ctx.flush_context(key.into());
                result
            });
            if flush {
                let _ = ctx.flush_context(parent_key.into());
            }
            persisted
                .map_err(|e| tpm_error(&e, format!("persisting the key at 0x{handle:08x}")))?;
            None
        }
        TpmKey::File(_) => {
            if flush {
                let _ = ctx.flush_context(parent_key.into());
            }
            Some(Zeroizing::new(file.to_pem()))
        }
    };
    drop(ctx);
    let signer = match &config.key {
        TpmKey::Handle(_) => TpmSigner::open_inner(config, None)?,
        TpmKey::File(path) => TpmSigner::open_inner(config, Some((path.clone(), file)))?,
    };
    debug!(%tcti, key = %signer.source, "made a key in the TPM");
    Ok(Generated { signer, pem })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::constants::response_code::Tss2ResponseCode;

    fn rc(code: u32) -> TssError {
        TssError::Tss2Error(Tss2ResponseCode::from(code))
    }

    // TPM 2.0 Part 2, 6.6: warnings are 0x900 + n; TPM_RC_RETRY 0x922, YIELDED 0x908,
    // TESTING 0x90A, LOCKOUT 0x921; TPM_RC_AUTH_FAIL 0x08E (+ session in the format-one bits).
    const RETRY: u32 = 0x922;
    const YIELDED: u32 = 0x908;
    const TESTING: u32 = 0x90A;
    const LOCKOUT: u32 = 0x921;
    const AUTH_FAIL_SESSION_1: u32 = 0x98E;

    #[test]
    fn retry_yielded_and_testing_are_retried_a_bounded_number_of_times() {
        for code in [RETRY, YIELDED, TESTING] {
            let mut calls = 0;
            let result: Result<(), TssError> = retrying(|| {
                calls += 1;
                if calls < 3 { Err(rc(code)) } else { Ok(()) }
            });
            assert!(result.is_ok(), "0x{code:x}");
            assert_eq!(calls, 3);
            let mut calls = 0;
            let result: Result<(), TssError> = retrying(|| {
                calls += 1;
                Err(rc(code))
            });
            assert!(result.is_err());
            assert_eq!(calls, ATTEMPTS, "bounded");
        }
    }

    #[test]
    fn only_a_key_generated_in_the_tpm_counts_as_a_hardware_key() {
        assert!(key_protection(true, true, true).is_hardware());
        for (fixed_tpm, fixed_parent, origin) in [
            (true, true, false),
            (false, false, true),
            (false, false, false),
            (true, false, true),
            (false, true, true),
        ] {
            let protection = key_protection(fixed_tpm, fixed_parent, origin);
            assert!(!protection.is_hardware(), "{protection}");
        }
        assert!(matches!(
            key_protection(true, true, false),
            Protection::Imported(_)
        ));
    }

    #[test]
    fn authorization_failures_and_lockout_are_never_retried() {
        for code in [AUTH_FAIL_SESSION_1, LOCKOUT] {
            let mut calls = 0;
            let _: Result<(), TssError> = retrying(|| {
                calls += 1;
                Err(rc(code))
            });
            assert_eq!(calls, 1, "0x{code:x}");
        }
        assert!(is_auth_failure(&rc(AUTH_FAIL_SESSION_1)));
        assert_eq!(rc_kind(&rc(LOCKOUT)), Some(Tss2ResponseCodeKind::Lockout));
    }
}
