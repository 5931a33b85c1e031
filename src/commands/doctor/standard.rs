//! Standard mode (no static key): the client state in storage, read as a join reads it, and
//! whether a first join could make one. Nothing is written and no key signs anything.

use base64::Engine as _;

use super::report::{Check, Report, Status};
use crate::Failure;
use crate::bkp::{ClientState, Keys};
use crate::config::Config;
use crate::renewal::StandardSetup;

/// The client-state line: the keys and join state in storage, or what the first join needs.
pub(super) fn checks(config: &Config, report: &mut Report<'_>) -> Result<(), Failure> {
    let setup = match StandardSetup::new(config) {
        Ok(setup) => setup,
        Err(failure) => {
            return report.add(Check::new(Status::Fail, "keys", failure.to_string()));
        }
    };
    #[cfg(feature = "tpm")]
    if let Some(check) = super::nv::check(&setup) {
        report.add(check)?;
    }
    let dir = setup.dir.display();
    let check = match setup.load_keys() {
        Err(e) => Check::new(Status::Fail, "keys", format!("standard mode: {e:#}")),
        Ok(Some(Keys::Files(state))) => Check::new(Status::Ok, "keys", describe(&state)),
        #[cfg(any(feature = "pkcs11", feature = "tpm"))]
        Ok(Some(Keys::Device(state))) => Check::new(Status::Ok, "keys", describe_device(&state)),
        Ok(None) if setup.secret.is_some() => Check::new(
            Status::Ok,
            "keys",
            format!(
                "standard mode: {dir} holds no bound keypair yet; the first join makes one with \
                 the registration secret configured"
            ),
        ),
        Ok(None) => Check::new(
            Status::Fail,
            "keys",
            format!(
                "standard mode (no static key configured): {dir} holds no bound keypair and no \
                 registration secret is configured"
            ),
        )
        .fix(format!(
            "run keybound keypair create --storage {dir} and register its public key on the \
             token, or give the token's registration secret (--registration-secret-path, \
             registration_secret_path or {})",
            crate::bkp::REGISTRATION_SECRET_ENV
        )),
    };
    report.add(check)?;
    #[cfg(feature = "tpm")]
    handles(&setup, report)?;
    Ok(())
}

/// With keys at persistent handles: what each handle of the pair holds, read in the TPM; a
/// handle holding what keybound did not make fails (a rotation would stop there).
#[cfg(feature = "tpm")]
fn handles(setup: &StandardSetup, report: &mut Report<'_>) -> Result<(), Failure> {
    use crate::bkp::device::{Device, DeviceState};
    let Some(config) = setup
        .tpm_device
        .as_ref()
        .filter(|c| matches!(c.key, keybound_signer::config::TpmKey::Handle(_)))
    else {
        return Ok(());
    };
    let device = Device::TpmHandles(config.clone());
    let state = match DeviceState::load(
        &setup.dir,
        setup.symlinks,
        device.clone(),
        setup.state_store(),
    ) {
        Ok(Some(state)) => state,
        Ok(None) => DeviceState::empty(&setup.dir, setup.symlinks, device, setup.state_store()),
        // The keys line says why; without the state, keybound's keys would look foreign.
        Err(_) => return Ok(()),
    };
    let check = match state.handles() {
        None => return Ok(()),
        Some(Ok(lines)) => Check::new(
            Status::Ok,
            "handles",
            format!("keys at persistent handles: {}", lines.join("; ")),
        ),
        Some(Err(e)) => Check::new(Status::Fail, "handles", format!("{e:#}")),
    };
    report.add(check)
}

/// `standard mode: <dir>: active <type> key <fingerprint>, N keys in the history, join state
/// (recovery R, instance I)`.
fn describe(state: &ClientState) -> String {
    let active = match state.active_public_key() {
        Some(key) => format!("active {} key {}", key.algorithm(), key.fingerprint()),
        None => "no active key (a registration's key waits in the history)".to_owned(),
    };
    format!(
        "standard mode: {}: {active}, {} keys in the history, {}",
        state.dir().display(),
        state.history_len(),
        join_state_text(state.join_state())
    )
}

/// `standard mode, keys in the device: <dir>: active <type> key <fingerprint> (<uri>), N keys in
/// the history, join state ...`.
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
fn describe_device(state: &crate::bkp::device::DeviceState) -> String {
    let active = match state.active() {
        Some((key, uri)) => format!(
            "active {} key {} ({uri})",
            key.algorithm(),
            key.fingerprint()
        ),
        None => "no active key (a registration's key waits in the history)".to_owned(),
    };
    let interrupted = match state.interrupted_len() {
        0 => String::new(),
        n => format!(
            ", {n} key(s) whose making a crash interrupted (keybound destroys them after the next join)"
        ),
    };
    format!(
        "standard mode, keys in the device: {}: {active}, {} keys in the history{interrupted}, {}",
        state.state_store().location(),
        state.history_len(),
        join_state_text(state.join_state())
    )
}

fn join_state_text(join_state: &[u8]) -> String {
    match claims(join_state) {
        _ if join_state.is_empty() => "no join state yet".to_owned(),
        Some((sequence, instance)) => format!(
            "a join state (recovery {sequence}, bot instance {instance}; as stored, the cluster \
             verifies it)"
        ),
        None => "a join state that is not a JWT (the cluster will refuse it and lock the token)"
            .to_owned(),
    }
}

/// A join state's `recovery_sequence` and `bot_instance_id`, read without verifying.
fn claims(jwt: &[u8]) -> Option<(u64, String)> {
    let payload = std::str::from_utf8(jwt).ok()?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let instance = crate::untrusted::name(claims["bot_instance_id"].as_str()?).to_string();
    Some((claims["recovery_sequence"].as_u64()?, instance))
}
