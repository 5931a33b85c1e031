//! `keybound keypair create --static`: makes a bound keypair and says how to register and use it,
//! following `tbot keypair create` (`tool/tbot/keypair.go`); `keybound keypair show` prints the
//! public half of a key keybound can open.
//!
//! `create` runs in this order: refuse what keybound does not make (non-static keys, a key file
//! that exists without `--overwrite`), choose the key type (`algorithm`), make the key where it
//! is kept (`make`), then write the report as text (`text`) or JSON (`json`), and with
//! `--attest-out` the key's attestation evidence (`attest`, which is also `keypair attest`).

mod algorithm;
mod attest;
mod json;
mod show;
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

/// keybound makes static keys only; tbot's other keys live in its storage.
fn refuse_non_static(args: &KeypairCreate) -> anyhow::Result<()> {
    if args.storage.is_some() || !args.static_key {
        bail!(
            "keybound makes static keys only: add --static (tbot's non-static keys, kept in \
             --storage, are not supported)"
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
