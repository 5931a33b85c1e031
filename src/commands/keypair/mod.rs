//! `keybound keypair create`: makes a bound keypair and says how to register and use it,
//! following `tbot keypair create` (`tool/tbot/keypair.go`); `keybound keypair show` prints the
//! public half of a key keybound can open.
//!
//! Without `--static`, `create` makes a standard-mode key in bot storage (`storage`), or with
//! signer flags inside the token or TPM they name, referenced in bot storage (`device`).
//!
//! With `--static`, `create` runs in this order: refuse what keybound does not make (a key file
//! that exists without `--overwrite`), choose the key type (`algorithm`), make the key where it
//! is kept (`make`), then write the report as text (`text`) or JSON (`json`), and with
//! `--attest-out` the key's attestation evidence (`attest`, which is also `keypair attest`).

mod algorithm;
mod attest;
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
mod device;
mod json;
mod show;
mod storage;
mod text;

use std::io::Write;

use anyhow::bail;
use keybound_signer::config::{SignerConfig, TpmConfig, TpmKey};

use crate::cli::{KeypairCreate, OutputFormat};
use crate::config::Onboarding;

pub use attest::{attest, attestable};
pub use show::show;

/// Runs `keypair create`, writing its report to `out`.
pub async fn create(args: &KeypairCreate, out: &mut dyn Write) -> anyhow::Result<()> {
    if !args.static_key {
        if has_signer_flags(args) {
            // Standard mode with the key made inside a token or the TPM.
            #[cfg(any(feature = "pkcs11", feature = "tpm"))]
            return device::create(args, out).await;
            #[cfg(not(any(feature = "pkcs11", feature = "tpm")))]
            bail!(
                "keypair create --storage with signer flags makes the key inside a PKCS#11 token \
                 or the TPM, and this keybound was built without the pkcs11 and tpm features"
            );
        }
        // Standard mode: the key in bot storage; its type from --algorithm or the proxy's suite
        // (asked only when a key is to be made).
        let keep = args.storage.is_some() && !args.overwrite;
        let algorithm = if keep && storage_holds_key(args) {
            None
        } else if args.storage.is_some() {
            Some(algorithm::choose(args, &SignerConfig::Env(Default::default())).await?)
        } else {
            None
        };
        return storage::create(args, algorithm, out).await;
    }
    refuse_non_static(args)?;
    let signer_config = signer_config(args)?;
    refuse_to_replace(args, &signer_config)?;
    attest::check_create(&signer_config, args.attest_out.as_deref(), &args.attest)?;
    let algorithm = algorithm::choose(args, &signer_config).await?;
    let (public_key, handoff) =
        crate::signer::make_key(&signer_config, algorithm, args.overwrite).await?;
    match args.format {
        OutputFormat::Json => json::write(out, &public_key, &handoff)?,
        OutputFormat::Text => text::write(out, &public_key, &handoff)?,
    }
    if let Some(path) = &args.attest_out {
        // The key exists now: evidence that fails says so, and the key stays.
        let mut said = Vec::new();
        attest::write_evidence(
            attest::tpm_config(&signer_config)?,
            &args.attest,
            path,
            args.overwrite,
            &mut said,
        )
        .map_err(|e| {
            e.context(
                "the key was made, but its evidence was not: run keybound keypair attest for it",
            )
        })?;
        if args.format == OutputFormat::Text {
            out.write_all(&said)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Whether `--storage` already holds an active key (kept without `--overwrite`).
fn storage_holds_key(args: &KeypairCreate) -> bool {
    let Some(uri) = &args.storage else {
        return false;
    };
    let path = std::path::Path::new(uri.strip_prefix("file://").unwrap_or(uri));
    path.join(crate::bkp::state::PRIVATE_KEY)
        .metadata()
        .is_ok_and(|m| m.len() > 0)
}

/// Whether signer flags are given: without `--static`, they ask for the key inside a device.
fn has_signer_flags(args: &KeypairCreate) -> bool {
    let s = &args.signer;
    s.signer.is_some()
        || s.pkcs11_uri.is_some()
        || s.tpm_key_handle.is_some()
        || s.tpm_key_path.is_some()
}

/// A static key lives where its flags say, never in bot storage.
fn refuse_non_static(args: &KeypairCreate) -> anyhow::Result<()> {
    if args.storage.is_some() {
        bail!(
            "--storage is for keys kept in bot storage (standard mode); a static key lives where \
             --static-key-path or the signer flags say: drop --storage, or drop --static"
        );
    }
    Ok(())
}

/// Where the new key goes, from `--static-key-path` and the signer flags; an error names the
/// flag, not the config key.
fn signer_config(args: &KeypairCreate) -> anyhow::Result<SignerConfig> {
    let mut onboarding = Onboarding {
        static_private_key_path: args.static_key_path.clone(),
        ..Onboarding::default()
    };
    args.signer.apply(&mut onboarding);
    onboarding.signer_config().map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.replace(
                "static_private_key_path (or --static-key-path)",
                "--static-key-path PATH"
            )
        )
    })
}

/// A key file that exists is replaced only with `--overwrite`.
fn refuse_to_replace(args: &KeypairCreate, signer_config: &SignerConfig) -> anyhow::Result<()> {
    let new_file = match signer_config {
        SignerConfig::File(file) => Some(&file.path),
        SignerConfig::Tpm(TpmConfig {
            key: TpmKey::File(path),
            ..
        }) => Some(path),
        _ => None,
    };
    if let Some(path) = new_file
        && path.exists()
        && !args.overwrite
    {
        bail!(
            "key file {path} already exists; keybound never replaces a key without \
                 --overwrite (to print its public key: keybound keypair show --static-key-path \
                 {path})",
            path = path.display()
        );
    }
    Ok(())
}
