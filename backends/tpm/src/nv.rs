//! A small record kept in the TPM's NV memory, for a node whose disk is wiped on every boot: one
//! ordinary owner-range index (0x01800000..=0x01BFFFFF) split into two slots, each a header (a
//! sequence number, the payload's length and a SHA-256 over both and the payload) and the
//! payload. A read takes the slot with the highest sequence number whose hash checks; a write
//! goes to the other slot, so a write torn by a crash or a power loss leaves the previous record
//! readable. A write whose payload equals the newest record's is skipped (NV wears out).
//!
//! The index is `authread|authwrite|noda`, not orderly: only its authorization value reads or
//! writes it (not the owner: owner authorization is usually empty on Linux), a wrong value does
//! not count towards the dictionary-attack lockout (so it needs a high-entropy value), and the
//! data survives a power loss (an orderly index is RAM-backed until an orderly shutdown). The
//! value comes from the configured `pin_source`, is read afresh at each open, zeroed when
//! dropped, never logged, and never presented again once the TPM refused it.
//!
//! Measured on swtpm 0.7.1 (`/work/shared/notes/hardware-state.md`): NV_INDEX_MAX 2048 B,
//! NV_BUFFER_MAX 1024 B (768 B on some Infineon parts); one NV_Write or NV_Read of more than the
//! buffer fails, so every transfer is cut into chunks of at most 512 B and the TPM's buffer.

use std::fmt;

use keybound_signer::config::TpmConfig;
use keybound_signer::refused::Fingerprint;
use keybound_signer::{Error, ErrorKind, PinSource};
use sha2::{Digest as _, Sha256};
use tracing::debug;
use tss_esapi::Context;
use tss_esapi::Error as TssError;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::{CapabilityType, NvIndexType, PropertyTag};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, CapabilityData, MaxNvBuffer, NvPublicBuilder};

use crate::connect::connect;
use crate::error::{BACKEND, err, is_auth_failure, rc_kind, retrying, tpm_error};
use crate::tcti::Tcti;

/// The owner range of NV indices (TCG handle registry).
pub const OWNER_RANGE: std::ops::RangeInclusive<u32> = 0x0180_0000..=0x01BF_FFFF;
/// The size keybound defines an index with, unless the TPM's NV_INDEX_MAX is smaller.
pub const DEFAULT_SIZE: usize = 2048;
/// The smallest index keybound uses (two slots of 128 B).
pub const MIN_SIZE: usize = 256;
/// A slot's header: magic, sequence number, payload length, SHA-256.
pub const HEADER: usize = 4 + 8 + 4 + 32;
/// The most keybound moves in one NV_Read or NV_Write.
const MAX_CHUNK: usize = 512;
/// A slot's magic (and the format's version).
const MAGIC: &[u8; 4] = b"KBN1";

/// The record read: its sequence number and payload.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct NvRecord {
    /// Written with every record, one more than the previous.
    pub seq: u64,
    /// What the caller stored.
    pub payload: Vec<u8>,
}

/// What `NV_ReadPublic` says of the index.
#[derive(Clone, Debug)]
pub struct NvInfo {
    /// The index.
    pub index: u32,
    /// Its size in bytes.
    pub size: usize,
    /// Its attributes, as `tpm2_nvreadpublic` names them (`authread|authwrite|noda`).
    pub attributes: String,
    /// Whether it was ever written.
    pub written: bool,
}

impl NvInfo {
    /// The most payload one record can hold.
    pub fn capacity(&self) -> usize {
        (self.size / 2).saturating_sub(HEADER)
    }
}

/// Both slots' records, `None` for a slot that does not check.
type Slots = (Option<NvRecord>, Option<NvRecord>);

/// An open NV record store.
pub struct NvStore {
    ctx: Context,
    tcti: Tcti,
    handle: NvIndexHandle,
    info: NvInfo,
    chunk: usize,
    /// The fingerprint of the authorization value set, to remember a refusal by.
    fingerprint: Fingerprint,
    auth_source: PinSource,
}

impl fmt::Debug for NvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvStore")
            .field("tcti", &self.tcti)
            .field("index", &format_args!("0x{:08x}", self.info.index))
            .field("size", &self.info.size)
            .finish_non_exhaustive()
    }
}

/// Checks that `index` is in the owner range.
pub fn check_index(index: u32) -> Result<(), String> {
    if OWNER_RANGE.contains(&index) {
        Ok(())
    } else {
        Err(format!(
            "0x{index:08x} is not an owner-range NV index: use one in 0x01800000..0x01bfffff (e.g. 0x01800100; \
             0x01000000..0x017fffff belongs to the TPM and platform manufacturers, 0x01c00000 and up to the TCG)"
        ))
    }
}

fn nv_handle(index: u32) -> Result<NvIndexTpmHandle, Error> {
    check_index(index).map_err(|e| err(ErrorKind::Config, e))?;
    NvIndexTpmHandle::new(index).map_err(|e| err(ErrorKind::Config, format!("0x{index:08x}: {e}")))
}

fn auth_source(config: &TpmConfig, index: u32) -> Result<&PinSource, Error> {
    config.auth.as_ref().ok_or_else(|| {
        err(
            ErrorKind::Config,
            format!(
                "NV index 0x{index:08x} needs an authorization value: set pin_source (e.g. file:/etc/keybound/tpm-auth, \
                 32 random bytes from the read-only image or a boot credential)"
            ),
        )
    })
}

/// The name under which refused values are remembered: the TPM and the index.
fn device_name(tcti: &Tcti, index: u32) -> String {
    format!("tpm {tcti} nv 0x{index:08x}")
}

/// Whether `index` is defined, without touching it.
fn is_defined(ctx: &mut Context, index: u32) -> Result<bool, Error> {
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, index, 1))
        .map_err(|e| tpm_error(&e, "listing NV indices".to_owned()))?;
    Ok(match data {
        CapabilityData::Handles(list) => list
            .into_inner()
            .first()
            .is_some_and(|h| u32::from(*h) == index),
        _ => false,
    })
}

fn property(ctx: &mut Context, tag: PropertyTag) -> Option<usize> {
    ctx.execute_without_session(|c| c.get_tpm_property(tag))
        .ok()
        .flatten()
        .and_then(|v| usize::try_from(v).ok())
}

/// `tpm2_nvreadpublic`'s names for the attributes keybound looks at.
fn describe(a: tss_esapi::attributes::NvIndexAttributes) -> String {
    let flags = [
        (a.pp_write(), "ppwrite"),
        (a.owner_write(), "ownerwrite"),
        (a.auth_write(), "authwrite"),
        (a.policy_write(), "policywrite"),
        (a.pp_read(), "ppread"),
        (a.owner_read(), "ownerread"),
        (a.auth_read(), "authread"),
        (a.policy_read(), "policyread"),
        (a.no_da(), "no_da"),
        (a.orderly(), "orderly"),
        (a.written(), "written"),
    ];
    flags
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join("|")
}

/// Refuses an index whose attributes do not protect the record as keybound defines it.
fn check_public(info: &NvInfo, a: tss_esapi::attributes::NvIndexAttributes) -> Result<(), Error> {
    let ordinary = a.index_type().is_ok_and(|t| t == NvIndexType::Ordinary);
    let others = a.pp_write()
        || a.owner_write()
        || a.policy_write()
        || a.pp_read()
        || a.owner_read()
        || a.policy_read();
    let problem = if !ordinary {
        Some("is not an ordinary index")
    } else if !(a.auth_read() && a.auth_write()) {
        Some("is not read and written with its own authorization value (authread|authwrite)")
    } else if others {
        Some(
            "can also be read or written without its authorization value (owner, platform or policy)",
        )
    } else if !a.no_da() {
        Some("is not no_da (each wrong value would count towards the TPM's lockout)")
    } else if a.orderly() {
        Some("is orderly (its data would be lost at a power loss)")
    } else if info.size < MIN_SIZE || !info.size.is_multiple_of(2) {
        Some("is smaller than 256 bytes or of an odd size")
    } else if a.write_locked() || a.read_locked() {
        Some("is read- or write-locked")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(err(
            ErrorKind::Config,
            format!(
                "NV index 0x{:08x} ({} bytes, {}) {problem}: choose another tpm_state_nv_index, or remove it \
                 (tpm2_nvundefine 0x{:08x} -C o) and keybound defines it as {}",
                info.index, info.size, info.attributes, info.index, "authread|authwrite|no_da"
            ),
        )),
    }
}

impl NvStore {
    /// Opens the store at `index` on the TPM `config` names, with `config.auth` as the index's
    /// authorization value; `Ok(None)` when the index is not defined.
    pub fn open(config: &TpmConfig, index: u32) -> Result<Option<Self>, Error> {
        let handle = nv_handle(index)?;
        let source = auth_source(config, index)?;
        let (tcti, mut ctx) = connect(config)?;
        if !is_defined(&mut ctx, index)? {
            return Ok(None);
        }
        Self::attach(ctx, tcti, handle, source).map(Some)
    }

    /// Opens the store at `index`, defining the index first when it is missing: `size` bytes (at
    /// most the TPM's NV_INDEX_MAX), `authread|authwrite|noda`, with the empty owner
    /// authorization (an owner with a password defines it with tpm2_nvdefine; the error says
    /// how).
    pub fn open_or_define(config: &TpmConfig, index: u32, size: usize) -> Result<Self, Error> {
        let handle = nv_handle(index)?;
        let source = auth_source(config, index)?;
        let (tcti, mut ctx) = connect(config)?;
        if !is_defined(&mut ctx, index)? {
            define(&mut ctx, &tcti, handle, source, size)?;
        }
        Self::attach(ctx, tcti, handle, source)
    }

    fn attach(
        mut ctx: Context,
        tcti: Tcti,
        handle: NvIndexTpmHandle,
        source: &PinSource,
    ) -> Result<Self, Error> {
        let index = u32::from(handle);
        // tr_from_tpm_public must run without the password session (see load.rs).
        let object = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(handle)))
            .map_err(|e| tpm_error(&e, format!("opening NV index 0x{index:08x}")))?;
        let nv = NvIndexHandle::from(object);
        let (public, _) = ctx
            .execute_without_session(|c| c.nv_read_public(nv))
            .map_err(|e| tpm_error(&e, format!("reading NV index 0x{index:08x}'s public area")))?;
        let attributes = public.attributes();
        let info = NvInfo {
            index,
            size: public.data_size(),
            attributes: describe(attributes),
            written: attributes.written(),
        };
        check_public(&info, attributes)?;
        let Some(presented) = source.read_for(BACKEND, &device_name(&tcti, index))? else {
            return Err(err(
                ErrorKind::Auth,
                source.refused_before(
                    "the authorization value",
                    &format!("the TPM (for NV index 0x{index:08x})"),
                    "it would only be refused again",
                ),
            ));
        };
        let auth = auth_value(presented.value.as_bytes(), index)?;
        ctx.tr_set_auth(ObjectHandle::from(nv), auth)
            .map_err(|e| tpm_error(&e, "setting the NV index's authorization value".to_owned()))?;
        let buffer = property(&mut ctx, PropertyTag::NvBufferMax).unwrap_or(MAX_CHUNK);
        Ok(Self {
            ctx,
            tcti,
            handle: nv,
            info,
            chunk: buffer.clamp(64, MAX_CHUNK),
            fingerprint: presented.fingerprint,
            auth_source: source.clone(),
        })
    }

    /// What the TPM says of the index.
    pub fn info(&self) -> &NvInfo {
        &self.info
    }

    /// The newest record whose hash checks; `None` when the index was never written. An index
    /// written but with no valid slot is an error.
    pub fn read(&mut self) -> Result<Option<NvRecord>, Error> {
        Ok(self
            .slots()?
            .and_then(|(a, b)| newest(a.as_ref(), b.as_ref()).cloned()))
    }

    /// Both slots, parsed (`None` each that does not check); `None` when never written.
    fn slots(&mut self) -> Result<Option<Slots>, Error> {
        let bytes = match self.read_bytes(0, self.info.size) {
            Ok(bytes) => bytes,
            Err(e) if rc_kind(&e) == Some(Tss2ResponseCodeKind::NvUninitialized) => {
                return Ok(None);
            }
            Err(e) => return Err(self.failed(&e, "reading")),
        };
        let half = self.info.size / 2;
        let a = parse_slot(&bytes[..half]);
        let b = parse_slot(&bytes[half..]);
        if a.is_none() && b.is_none() {
            return Err(err(
                ErrorKind::Config,
                format!(
                    "NV index 0x{:08x} holds no valid record (both slots fail their hash): it was written by \
                     something else, or both writes were torn; remove it (tpm2_nvundefine 0x{:08x} -C o) and \
                     register the bot again",
                    self.info.index, self.info.index
                ),
            ));
        }
        Ok(Some((a, b)))
    }

    /// Stores `payload` as the next record, in the slot that does not hold the newest one;
    /// returns its sequence number. A payload equal to the newest record's is not written
    /// again (its sequence number is returned).
    pub fn write(&mut self, payload: &[u8]) -> Result<u64, Error> {
        if payload.len() > self.info.capacity() {
            return Err(err(
                ErrorKind::Config,
                format!(
                    "the record ({} bytes) does not fit a slot of NV index 0x{:08x} ({} bytes each, {} for the record)",
                    payload.len(),
                    self.info.index,
                    self.info.size / 2,
                    self.info.capacity()
                ),
            ));
        }
        let (a, b) = match self.slots() {
            Ok(Some(slots)) => slots,
            Ok(None) => (None, None),
            // No valid slot: writing a new record is how it is repaired.
            Err(e) if e.kind() == ErrorKind::Config => (None, None),
            Err(e) => return Err(e),
        };
        let newest_seq = newest(a.as_ref(), b.as_ref()).map(|r| r.seq);
        if let Some(current) = newest(a.as_ref(), b.as_ref())
            && current.payload == payload
        {
            return Ok(current.seq);
        }
        // The target is the slot that does not hold the newest valid record.
        let target = match (&a, &b) {
            (Some(a), Some(b)) if a.seq >= b.seq => 1,
            (Some(_), None) => 1,
            _ => 0,
        };
        let seq = newest_seq.map_or(1, |s| s + 1);
        let slot = slot_bytes(seq, payload);
        let offset = target * self.info.size / 2;
        self.write_bytes(offset, &slot)
            .map_err(|e| self.failed(&e, "writing"))?;
        debug!(
            index = format_args!("0x{:08x}", self.info.index),
            seq,
            slot = target,
            bytes = payload.len(),
            "stored a record in TPM NV"
        );
        Ok(seq)
    }

    fn read_bytes(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, TssError> {
        let mut out = Vec::with_capacity(len);
        let nv = self.handle;
        while out.len() < len {
            let n = (len - out.len()).min(self.chunk);
            let at = offset + out.len();
            let data = retrying(|| {
                self.ctx
                    .execute_with_session(Some(AuthSession::Password), |c| {
                        c.nv_read(NvAuth::NvIndex(nv), nv, n as u16, at as u16)
                    })
            })?;
            out.extend_from_slice(data.as_slice());
        }
        Ok(out)
    }

    /// Writes `bytes` at `offset`, the last chunk first: until the first chunk (the header)
    /// lands, the slot does not check.
    fn write_bytes(&mut self, offset: usize, bytes: &[u8]) -> Result<(), TssError> {
        let nv = self.handle;
        let chunks: Vec<(usize, &[u8])> = bytes
            .chunks(self.chunk)
            .enumerate()
            .map(|(i, c)| (offset + i * self.chunk, c))
            .collect();
        for (at, chunk) in chunks.into_iter().rev() {
            let data = MaxNvBuffer::try_from(chunk.to_vec())?;
            retrying(|| {
                self.ctx
                    .execute_with_session(Some(AuthSession::Password), |c| {
                        c.nv_write(NvAuth::NvIndex(nv), nv, data.clone(), at as u16)
                    })
            })?;
        }
        Ok(())
    }

    /// The error for a failed NV command; a refused authorization value is remembered and
    /// never presented again in this process.
    fn failed(&self, e: &TssError, doing: &str) -> Error {
        let index = self.info.index;
        if is_auth_failure(e) {
            self.fingerprint.remember_refused();
            return err(
                ErrorKind::Auth,
                format!(
                    "the TPM refused the authorization value of NV index 0x{index:08x} ({e}); keybound does not retry: \
                     fix pin_source: {}",
                    self.auth_source.how_to_replace()
                ),
            );
        }
        if rc_kind(e) == Some(Tss2ResponseCodeKind::Lockout) {
            return err(
                ErrorKind::Auth,
                format!(
                    "{doing} NV index 0x{index:08x}: the TPM is in dictionary-attack lockout ({e})"
                ),
            );
        }
        tpm_error(
            e,
            format!("{doing} NV index 0x{index:08x} at {}", self.tcti),
        )
    }
}

fn auth_value(value: &[u8], index: u32) -> Result<Auth, Error> {
    if value.len() > 32 {
        return Err(err(
            ErrorKind::Config,
            format!(
                "the authorization value for NV index 0x{index:08x} is {} bytes; a SHA-256 index takes at most 32",
                value.len()
            ),
        ));
    }
    Auth::try_from(value.to_vec()).map_err(|e| {
        err(
            ErrorKind::Config,
            format!("the authorization value for NV index 0x{index:08x} does not fit: {e}"),
        )
    })
}

/// NV_DefineSpace with the empty owner authorization.
fn define(
    ctx: &mut Context,
    tcti: &Tcti,
    handle: NvIndexTpmHandle,
    source: &PinSource,
    size: usize,
) -> Result<(), Error> {
    let index = u32::from(handle);
    let max = property(ctx, PropertyTag::NvIndexMax).unwrap_or(DEFAULT_SIZE);
    let size = size.min(max) & !1;
    if size < MIN_SIZE {
        return Err(err(
            ErrorKind::Config,
            format!(
                "the TPM at {tcti} takes NV indices of at most {max} bytes; keybound needs {MIN_SIZE}"
            ),
        ));
    }
    let value = source.read(BACKEND)?;
    let auth = auth_value(value.as_bytes(), index)?;
    drop(value);
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Ordinary)
        .with_auth_read(true)
        .with_auth_write(true)
        .with_no_da(true)
        .build()
        .map_err(|e| err(ErrorKind::Config, format!("NV attributes: {e}")))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(handle)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(size)
        .build()
        .map_err(|e| err(ErrorKind::Config, format!("NV public area: {e}")))?;
    let defined = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_define_space(Provision::Owner, Some(auth), public)
    });
    match defined {
        Ok(nv) => {
            // The caller opens it again by its TPM handle.
            let _ = ctx.tr_close(&mut ObjectHandle::from(nv));
            debug!(
                index = format_args!("0x{index:08x}"),
                size, "defined an NV index"
            );
            Ok(())
        }
        Err(e) if is_auth_failure(&e) => Err(err(
            ErrorKind::Auth,
            format!(
                "defining NV index 0x{index:08x}: the TPM refused the empty owner authorization ({e}); define the \
                 index with the owner's: tpm2_nvdefine 0x{index:08x} -C o -P <owner auth> -s {size} \
                 -a 'authread|authwrite|no_da' -p \"$(head -n1 <the pin_source file>)\""
            ),
        )),
        Err(e) if rc_kind(&e) == Some(Tss2ResponseCodeKind::NvSpace) => Err(err(
            ErrorKind::Config,
            format!(
                "defining NV index 0x{index:08x}: the TPM at {tcti} has no room for {size} more bytes of NV ({e})"
            ),
        )),
        Err(e) => Err(tpm_error(&e, format!("defining NV index 0x{index:08x}"))),
    }
}

fn newest<'a>(a: Option<&'a NvRecord>, b: Option<&'a NvRecord>) -> Option<&'a NvRecord> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn digest(head: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(head);
    hash.update(payload);
    hash.finalize().into()
}

/// A slot's bytes: magic, seq, length, SHA-256 over those and the payload, then the payload.
fn slot_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let hash = digest(&out, payload);
    out.extend_from_slice(&hash);
    out.extend_from_slice(payload);
    out
}

/// The record in a slot, if its magic, length and hash check.
fn parse_slot(slot: &[u8]) -> Option<NvRecord> {
    let head = slot.get(..16)?;
    if &head[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(head[4..12].try_into().ok()?);
    let len = u32::from_be_bytes(head[12..16].try_into().ok()?) as usize;
    let hash = slot.get(16..HEADER)?;
    let payload = slot.get(HEADER..HEADER.checked_add(len)?)?;
    (digest(head, payload) == hash).then(|| NvRecord {
        seq,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_checks_only_whole() {
        let slot = slot_bytes(7, b"payload");
        assert_eq!(
            parse_slot(&slot),
            Some(NvRecord {
                seq: 7,
                payload: b"payload".to_vec()
            })
        );
        // Padded as in the index: still the record.
        let mut padded = slot.clone();
        padded.resize(1024, 0xff);
        assert_eq!(parse_slot(&padded).unwrap().seq, 7);
        for i in 0..slot.len() {
            let mut torn = slot.clone();
            torn[i] ^= 0x01;
            assert_eq!(parse_slot(&torn), None, "byte {i} flipped");
        }
        assert_eq!(parse_slot(&slot[..slot.len() - 1]), None, "cut short");
        assert_eq!(parse_slot(&[0xff; 1024]), None, "never written");
    }

    #[test]
    fn the_newest_valid_slot_wins() {
        let r = |seq| NvRecord {
            seq,
            payload: vec![],
        };
        assert_eq!(newest(Some(&r(3)), Some(&r(4))).unwrap().seq, 4);
        assert_eq!(newest(Some(&r(5)), Some(&r(4))).unwrap().seq, 5);
        assert_eq!(newest(None, Some(&r(4))).unwrap().seq, 4);
        assert!(newest(None, None).is_none());
    }

    #[test]
    fn only_owner_range_indices() {
        assert!(check_index(0x0180_0100).is_ok());
        assert!(check_index(0x01BF_FFFF).is_ok());
        for bad in [0x0100_0000, 0x017F_FFFF, 0x01C0_0002, 0x8100_0001] {
            assert!(
                check_index(bad).unwrap_err().contains("owner-range"),
                "{bad:x}"
            );
        }
    }
}
