//! Standard-mode keys at TPM persistent handles (`signer: tpm` with `tpm_key_handle` and a
//! registration secret): no file in storage is needed to find a key, only its handle and public
//! key, which `bkp_device_keys.json` records as `tpm-handle:0x81xxxxxx`.
//!
//! **Two handles**: `tpm_key_handle` (H) and H+1. The cluster binds one key at a time and commits
//! a rotation only with the join's result (`lib/join/boundkeypair/boundkeypair.go`,
//! `HandleBoundKeypairJoin`: the stream's status changes are mutators applied in one `PatchToken`
//! after the last challenge; a rotation request follows the bound key's challenge, or comes first
//! on a registration), so at a rotation request the keys it may bind are the key it binds now
//! (the one it challenged in this join, or, on a registration, none) and the key being made. Every other key of ours is one it cannot bind: the key a crashed or refused
//! rotation made (never committed), the intermediate key of two rotations in one stream, or an
//! active key whose successor's result was lost (the challenge named the successor). So two
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
//! **Order**: the key is created and loaded (not persistent); its reference goes to the head of
//! the history, the key it replaces (if any) moves to `retired` (still recorded, so the handle
//! stays recognisably ours whatever happens next), and the state is written; then the replaced
//! key is evicted (only if the handle still holds exactly that key) and the new one made
//! persistent; then the cluster hears of it. After a result names the bound key, every other key
//! retires and is evicted, after the state is written. A crash at any point leaves the bound key
//! at its handle and in the state.

use anyhow::{Context as _, anyhow};
use keybound_signer::PublicKey;
use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer_tpm::persist::{NewKey, Occupant, evict_if, foreign, occupant};
use tracing::info;

use super::{DEVICE_KEYS, DeviceState, KeyRef, now_text};

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
        .ok_or_else(|| anyhow!("{DEVICE_KEYS} names {key:?}, which is not a persistent handle"))
}

/// The recorded key at `handle` whose public key is `public`, if any (active, history, retired).
fn recorded<'a>(state: &'a DeviceState, handle: u32, public: &PublicKey) -> Option<&'a KeyRef> {
    let wanted = reference(handle);
    state
        .keys
        .active
        .iter()
        .chain(&state.keys.history)
        .chain(&state.keys.retired)
        .find(|k| {
            k.key == wanted && PublicKey::from_openssh(&k.public_key).is_ok_and(|p| &p == public)
        })
}

/// A new key at a handle of the pair, recorded before it is persistent (see the module's
/// order); its public key.
pub(super) fn add_key(state: &mut DeviceState, config: &TpmConfig) -> anyhow::Result<PublicKey> {
    let pair = pair(config)?;
    let bound = state.bound_here.as_deref().cloned().or_else(|| {
        let active = state.keys.active.as_ref()?;
        PublicKey::from_openssh(&active.public_key).ok()
    });
    // (handle, the key of ours it holds and the new key replaces)
    let mut choice: Option<(u32, Option<KeyRef>)> = None;
    for handle in pair {
        match occupant(config, handle)? {
            Occupant::Empty => {
                if !matches!(choice, Some((_, None))) {
                    choice = Some((handle, None));
                }
            }
            Occupant::Key(key) => {
                let Some(ours) = recorded(state, handle, &key) else {
                    return Err(foreign(handle, &Occupant::Key(key), &tcti(config)).into());
                };
                if Some(&key) != bound.as_ref() && choice.is_none() {
                    choice = Some((handle, Some(ours.clone())));
                }
            }
            other => return Err(foreign(handle, &other, &tcti(config)).into()),
        }
    }
    let (handle, replacing) = choice.ok_or_else(|| {
        anyhow!(
            "both persistent handles 0x{:08x} and 0x{:08x} hold the key the cluster binds; \
             keybound has no free handle for a new key",
            pair[0],
            pair[1]
        )
    })?;

    let new = NewKey::create(config).context("making a new bound key in the TPM")?;
    let public = new.public_key().clone();
    let new_ref = KeyRef {
        time: now_text(),
        key: reference(handle),
        public_key: public.to_openssh(),
    };
    let replaced_public = match &replacing {
        Some(old) => {
            let same = |k: &KeyRef| k.key == old.key && k.public_key == old.public_key;
            state.keys.history.retain(|k| !same(k));
            if state.keys.active.as_ref().is_some_and(same) {
                state.keys.active = None;
            }
            state.keys.retired.push(old.clone());
            Some(PublicKey::from_openssh(&old.public_key)?)
        }
        None => None,
    };
    state.keys.history.insert(0, new_ref);
    state.store()?;
    let signer = new
        .persist(handle, replaced_public.as_ref())
        .context("making the new bound key persistent")?;
    info!(
        key = %reference(handle),
        fingerprint = %public.fingerprint(),
        protection = %keybound_signer::Signer::protection(&signer),
        replaced = replacing.is_some(),
        "Generated new keypair inside the TPM, at a persistent handle"
    );
    Ok(public)
}

/// Evicts a retired key if its handle still holds it; a handle that holds another key (the one
/// that replaced it) or nothing is left as it is.
pub(super) fn evict(config: &TpmConfig, key: &KeyRef) -> anyhow::Result<()> {
    let handle = parse_reference(&key.key)?;
    let public = PublicKey::from_openssh(&key.public_key)?;
    if evict_if(config, handle, &public)? {
        info!(key = %key.key, "evicted a key the cluster no longer binds");
    }
    Ok(())
}

/// Each handle of the pair and what it holds, in words, for `doctor`; `Err` for a handle that
/// holds what keybound did not make (the text names the fix).
pub fn describe(state: &DeviceState, config: &TpmConfig) -> anyhow::Result<Vec<String>> {
    let active = state.keys.active.as_ref();
    let mut lines = Vec::new();
    for handle in pair(config)? {
        let text = match occupant(config, handle)? {
            Occupant::Empty => format!("0x{handle:08x} free"),
            Occupant::Key(key) => match recorded(state, handle, &key) {
                Some(k)
                    if active.is_some_and(|a| a.key == k.key && a.public_key == k.public_key) =>
                {
                    format!("0x{handle:08x} the active key {}", key.fingerprint())
                }
                Some(_) => format!("0x{handle:08x} a key of the history {}", key.fingerprint()),
                None => {
                    return Err(foreign(handle, &Occupant::Key(key), &tcti(config)).into());
                }
            },
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
