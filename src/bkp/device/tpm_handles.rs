//! Standard-mode keys at TPM persistent handles (`signer: tpm` with `tpm_key_handle` and a
//! registration secret): no file in storage is needed to find a key, only its handle and public
//! key, which `bkp_device_keys.json` records as `tpm-handle:0x81xxxxxx`.
//!
//! **Two handles**: `tpm_key_handle` (H) and H+1. The cluster binds one key at a time and commits
//! a rotation only with the join's result (`lib/join/boundkeypair/boundkeypair.go`,
//! `HandleBoundKeypairJoin`: the stream's status changes are mutators applied in one `PatchToken`
//! after the last challenge; a rotation request follows the bound key's challenge, or comes first
//! on a registration), so at a rotation request the keys it may bind are the key it binds now
//! (the one it challenged in this join, or, on a registration, none) and the key being made.
//! Every other key of ours is one it cannot bind: the key a crashed or refused rotation made
//! (never committed), the intermediate key of two rotations in one stream, or an active key
//! whose successor's result was lost (the challenge named the successor). So two
//! handles always suffice, and persistent handles, of which a TPM has few (7 on an Infineon
//! SLB9670), are not spent on a history of ten as key files are. What is given up: answering for
//! an older key after the cluster's backend is rolled back.
//!
//! **Choosing the handle** for a new key: the other handle's state decides. An empty handle is
//! taken first; else one holding a key of ours (recorded in the state at that handle with that
//! public key) that is not the bound key: that key is replaced. A handle of the pair holding
//! anything else (a key keybound did not make, the storage primary, ...) stops the rotation,
//! even when the other handle is free: the pair is keybound's, and a foreign object in it is a
//! configuration mistake best found at registration, not at the first rotation months later.
//!
//! **Order** (`DeviceState::add_key_at_handle` and `apply_result`, in the parent module, which
//! uses this one): the key is created and loaded (not persistent); its reference goes to the
//! head of the history, the key it replaces (if any) moves to `retired` (still recorded, so the handle
//! stays recognisably ours whatever happens next), and the state is written; then the replaced
//! key is evicted (only if the handle still holds exactly that key) and the new one made
//! persistent; then the cluster hears of it. After a result names the bound key, every other key
//! retires and is evicted, after the state is written. A crash at any point leaves the bound key
//! at its handle and in the state.

use anyhow::anyhow;
use keybound_signer::PublicKey;
use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer_tpm::persist::{Occupant, evict_if, foreign, occupant};

/// The prefix of a handle reference in `bkp_device_keys.json`.
pub const REFERENCE_PREFIX: &str = "tpm-handle:";

/// The handles keys are kept at: `tpm_key_handle` and the next.
pub fn pair(config: &TpmConfig) -> anyhow::Result<[u32; 2]> {
    let TpmKey::Handle(base) = config.key else {
        return Err(anyhow!("keys at persistent handles need tpm_key_handle"));
    };
    if !(0x8100_0000..0x81FF_FFFF).contains(&base) {
        return Err(anyhow!(
            "tpm_key_handle 0x{base:08x}: standard mode keeps keys at it and the next handle, so \
             it must be from 0x81000000 to 0x81fffffe"
        ));
    }
    Ok([base, base + 1])
}

/// The reference recorded for `handle`.
pub fn reference(handle: u32) -> String {
    format!("{REFERENCE_PREFIX}0x{handle:08x}")
}

/// The handle a reference names.
pub fn parse_reference(key: &str) -> anyhow::Result<u32> {
    key.strip_prefix(REFERENCE_PREFIX)
        .and_then(|h| h.strip_prefix("0x"))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| anyhow!("the client state names {key:?}, which is not a persistent handle"))
}

/// A key the client state records at a handle (active, history or retired).
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Its handle.
    pub handle: u32,
    /// Its public key.
    pub public: PublicKey,
    /// Whether it is the active key.
    pub active: bool,
}

/// Where a new key goes: a free handle, or one whose recorded key it replaces.
#[derive(Debug)]
pub enum Choice {
    /// An empty handle.
    Free(u32),
    /// A handle holding a key of ours the cluster cannot bind: replaced.
    Replace(u32, PublicKey),
}

/// The handle of the pair for a new key (see the module's rules): `records` are the keys the
/// client state names, `bound` the key the cluster binds as far as this join knows.
pub fn choose(
    config: &TpmConfig,
    records: &[Recorded],
    bound: Option<&PublicKey>,
) -> anyhow::Result<Choice> {
    let pair = pair(config)?;
    let mut choice = None;
    for handle in pair {
        match occupant(config, handle)? {
            Occupant::Empty => {
                if !matches!(choice, Some(Choice::Free(_))) {
                    choice = Some(Choice::Free(handle));
                }
            }
            Occupant::Key(key) => {
                if !records
                    .iter()
                    .any(|r| r.handle == handle && r.public == key)
                {
                    return Err(foreign(handle, &Occupant::Key(key), &tcti(config)).into());
                }
                if Some(&key) != bound && choice.is_none() {
                    choice = Some(Choice::Replace(handle, key));
                }
            }
            other => return Err(foreign(handle, &other, &tcti(config)).into()),
        }
    }
    choice.ok_or_else(|| {
        anyhow!(
            "both persistent handles 0x{:08x} and 0x{:08x} hold the key the cluster binds; \
             keybound has no free handle for a new key",
            pair[0],
            pair[1]
        )
    })
}

/// Evicts the key at `handle` if it is `public`; a handle that holds another key (the one that
/// replaced it) or nothing is left as it is. Whether it evicted.
pub fn evict(config: &TpmConfig, handle: u32, public: &PublicKey) -> anyhow::Result<bool> {
    Ok(evict_if(config, handle, public)?)
}

/// Each handle of the pair and what it holds, in words, for `doctor`; `Err` for a handle that
/// holds what keybound did not make (the text names the fix).
pub fn describe(config: &TpmConfig, records: &[Recorded]) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for handle in pair(config)? {
        let text = match occupant(config, handle)? {
            Occupant::Empty => format!("0x{handle:08x} free"),
            Occupant::Key(key) => {
                match records
                    .iter()
                    .find(|r| r.handle == handle && r.public == key)
                {
                    Some(r) if r.active => {
                        format!("0x{handle:08x} the active key {}", key.fingerprint())
                    }
                    Some(_) => {
                        format!("0x{handle:08x} a key of the history {}", key.fingerprint())
                    }
                    None => {
                        return Err(foreign(handle, &Occupant::Key(key), &tcti(config)).into());
                    }
                }
            }
            other => return Err(foreign(handle, &other, &tcti(config)).into()),
        };
        lines.push(text);
    }
    Ok(lines)
}

/// The TPM `config` reaches, for messages.
fn tcti(config: &TpmConfig) -> String {
    keybound_signer_tpm::tcti::resolve(config.tcti.as_deref())
        .map_or_else(|_| "the configured TCTI".to_owned(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_names_its_handle_and_the_pair_stays_in_the_persistent_range() {
        assert_eq!(reference(0x8100_0100), "tpm-handle:0x81000100");
        assert_eq!(
            parse_reference("tpm-handle:0x81000101").unwrap(),
            0x8100_0101
        );
        for bad in [
            "bkp_tpm_00.pem",
            "tpm-handle:81000100",
            "tpm-handle:0xzz",
            "pkcs11:id=%01",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        let config = |handle| TpmConfig::new(TpmKey::Handle(handle));
        assert_eq!(
            pair(&config(0x8100_0100)).unwrap(),
            [0x8100_0100, 0x8100_0101]
        );
        for bad in [0x81FF_FFFF, 0x8000_0000, 0x0180_0000] {
            let e = pair(&config(bad)).unwrap_err().to_string();
            assert!(e.contains("from 0x81000000 to 0x81fffffe"), "{e}");
        }
    }
}
