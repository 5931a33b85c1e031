//! `keybound keypair create --storage DIR --signer pkcs11|tpm` (without `--static`): a bound
//! keypair for standard joining made inside a PKCS#11 token or the TPM, exactly as a
//! registration makes it (`bkp::device`: the `keybound-bkp-<hex>` label and a free `CKA_ID`,
//! or a `bkp_tpm_<hex>.pem` key file), its reference in `bkp_device_keys.json`, so that its
//! public key can be registered on the token as `initial_public_key` before the first join.
//!
//! As with key files: without `--overwrite` a state that already has an active key is kept and
//! its public key printed; a state with keys but none active (a registration whose result never
//! came) is refused, as its keys may be the one the cluster binds. With `--overwrite` the new key
//! replaces them, and the keys the state recorded (only those) are destroyed in the device once
//! the state naming the new key is written.

use std::io::Write;
use std::path::Path;

use anyhow::bail;
use keybound_signer::Algorithm;
use keybound_signer::config::SignerConfig;

use super::text::{token_example_in_mode, write_pin_source};
use crate::bkp::device::{DEVICE_KEYS, Device, DeviceState};
use crate::bkp::store::StateStore;
use crate::cli::{KeypairCreate, OutputFormat};
use crate::config::Onboarding;
use crate::fsutil::Symlinks;

/// Makes (or, without `--overwrite`, keeps) the key in the device and reports it.
pub(super) async fn create(args: &KeypairCreate, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(uri) = &args.storage else {
        bail!(
            "standard mode keeps the references to its keys in bot storage: add --storage DIR \
             (the directory keybound start uses), or add --static for a static key"
        );
    };
    if args.static_key_path.is_some() || args.attest_out.is_some() {
        bail!(
            "--static-key-path and --attest-out are for static keys (--static); keypair create \
             --storage with a signer makes the key inside the device and names it itself"
        );
    }
    let dir = super::storage::storage_dir(uri)?;
    crate::fsutil::Dir::open(&dir, Symlinks::default(), false)?;
    let (device, signer_config) = device_of(args)?;
    refuse_file_keys(&dir)?;
    let existing = DeviceState::load(&dir, Symlinks::default(), device.clone(), files(&dir))?;
    let kept = match (&existing, args.overwrite) {
        (Some(state), false) => match state.active() {
            Some((public, key)) => Some((public, key.to_owned())),
            None => bail!(
                "{} names keys of a registration that has not finished (no active key yet), one \
                 of which the cluster may bind: run keybound start to finish it, or pass \
                 --overwrite to replace them (destroying them in the device)",
                dir.join(DEVICE_KEYS).display()
            ),
        },
        _ => None,
    };
    let made = kept.is_none();
    let (public, key) = match kept {
        Some(kept) => {
            tracing::info!(
                storage = %dir.display(),
                "a bound keypair exists in the device and --overwrite is not set: keeping it"
            );
            kept
        }
        None => {
            let algorithm = algorithm(args, &signer_config).await?;
            let mut state = existing.unwrap_or_else(|| {
                DeviceState::empty(&dir, Symlinks::default(), device.clone(), files(&dir))
            });
            let public = state.reset_to_new_key(algorithm)?;
            let key = state
                .active()
                .map(|(_, key)| key.to_owned())
                .unwrap_or_default();
            (public, key)
        }
    };
    let line = public.to_openssh();
    match args.format {
        OutputFormat::Json => {
            let document = match &device {
                #[cfg(feature = "pkcs11")]
                Device::Pkcs11(_) => serde_json::json!({ "public_key": line, "pkcs11_uri": key }),
                #[cfg(feature = "tpm")]
                Device::Tpm(_) => serde_json::json!({
                    "public_key": line,
                    "tpm_key": dir.join(&key).display().to_string(),
                }),
                #[cfg(feature = "tpm")]
                Device::TpmHandles(_) => {
                    serde_json::json!({ "public_key": line, "tpm_key_handle": key })
                }
            };
            serde_json::to_writer(&mut *out, &document)?;
            writeln!(out)?;
        }
        OutputFormat::Text => write_text(out, &device, (&line, &key), &dir, made)?,
    }
    out.flush()?;
    Ok(())
}

/// The device the signer flags name: a token without a key, or the TPM without a key.
fn device_of(args: &KeypairCreate) -> anyhow::Result<(Device, SignerConfig)> {
    let mut onboarding = Onboarding::default();
    args.signer.apply(&mut onboarding);
    #[cfg(feature = "pkcs11")]
    if let Some(config) = onboarding.device_keys() {
        return Ok((Device::Pkcs11(config.clone()), SignerConfig::Pkcs11(config)));
    }
    #[cfg(feature = "tpm")]
    if let Some(config) = onboarding.tpm_device_keys() {
        return Ok((Device::Tpm(config.clone()), SignerConfig::Tpm(config)));
    }
    let _ = onboarding;
    bail!(
        "keypair create --storage with signer flags makes a standard-mode key inside a device, \
         named by keybound: give --signer pkcs11 with a --pkcs11-uri that names only the token \
         (pkcs11:token=NAME, no object= or id=), or --signer tpm without --tpm-key-handle or \
         --tpm-key-path{}; for a static key where you name it, add --static and drop --storage",
        if cfg!(all(feature = "pkcs11", feature = "tpm")) {
            ""
        } else {
            " (this keybound was built without the pkcs11 or the tpm feature)"
        }
    )
}

/// `keypair create --storage` keeps the client state in the storage directory's files.
fn files(dir: &Path) -> StateStore {
    StateStore::Files {
        dir: dir.to_owned(),
        symlinks: Symlinks::default(),
    }
}

/// A storage directory with a standard-mode key file (`id_bkp`) is not given device keys
/// beside it: keybound would join with one and leave the other.
fn refuse_file_keys(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join(crate::bkp::state::PRIVATE_KEY);
    if file.metadata().is_ok_and(|m| m.len() > 0) {
        bail!(
            "{} holds a standard-mode key file ({}); keys made in a device need a storage \
             directory of their own: use another --storage directory (keybound never removes a \
             key file for you)",
            dir.display(),
            file.display()
        );
    }
    Ok(())
}

/// The key type: `--algorithm` or the proxy's suite, for a token; a TPM makes P-256 keys only.
async fn algorithm(
    args: &KeypairCreate,
    signer_config: &SignerConfig,
) -> anyhow::Result<Algorithm> {
    if matches!(signer_config, SignerConfig::Tpm(_))
        && args
            .algorithm
            .is_some_and(|a| a != Algorithm::EcdsaP256Sha256)
    {
        bail!(
            "--algorithm {}: a TPM makes ECDSA P-256 keys only (which every suite's cluster \
             accepts as a bound key): drop --algorithm or pass --algorithm ecdsa-p256",
            args.algorithm.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    super::algorithm::choose(args, signer_config).await
}

/// The text report: where the key is, how to register it, and the settings that use it.
fn write_text(
    out: &mut dyn Write,
    device: &Device,
    (line, key): (&str, &str),
    dir: &Path,
    made: bool,
) -> anyhow::Result<()> {
    let (inside, location) = match device {
        #[cfg(feature = "pkcs11")]
        Device::Pkcs11(_) => ("the PKCS#11 token", key.to_owned()),
        #[cfg(feature = "tpm")]
        Device::Tpm(_) => (
            "the TPM",
            format!("its key file {}", dir.join(key).display()),
        ),
        #[cfg(feature = "tpm")]
        Device::TpmHandles(_) => ("the TPM", format!("persistent handle {key}")),
    };
    write!(
        out,
        "
{what} inside {inside} and cannot leave it: {location}
Its reference is kept in bot storage: {refs}

To register the keypair with Teleport, include this public key in the token's
'spec.bound_keypair.onboarding.initial_public_key' field:

\t{line}

Refer to this token example as a reference:

{token}
keybound start with storage {dir} and these 'tbot.yaml' fields (no key named: keybound
names its keys) joins with this key, keeps the token's join state beside it, and makes
each new key inside the device when the cluster asks for a rotation:

\tonboarding:
\t  join_method: bound_keypair
\t  bound_keypair:
",
        what = if made {
            "A new bound keypair was made"
        } else {
            "The existing bound keypair is kept (--overwrite replaces it)"
        },
        refs = dir.join(DEVICE_KEYS).display(),
        token = token_example_in_mode(line, "standard")?,
        dir = dir.display(),
    )?;
    match device {
        #[cfg(feature = "pkcs11")]
        Device::Pkcs11(config) => {
            writeln!(out, "\t    signer: pkcs11")?;
            writeln!(out, "\t    pkcs11_uri: \"{}\"", config.uri.redacted())?;
            if let Some(module) = &config.module {
                writeln!(out, "\t    pkcs11_module: {}", module.display())?;
            }
            write_pin_source(out, config.pin.as_ref())
        }
        #[cfg(feature = "tpm")]
        Device::Tpm(config) | Device::TpmHandles(config) => {
            writeln!(out, "\t    signer: tpm")?;
            if let Some(tcti) = &config.tcti {
                writeln!(out, "\t    tpm_tcti: \"{tcti}\"")?;
            }
            if let Some(parent) = config.parent {
                writeln!(out, "\t    tpm_parent: 0x{parent:08x}")?;
            }
            write_pin_source(out, config.auth.as_ref())
        }
    }
}
