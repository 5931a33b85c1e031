//! `keybound keypair show`: opens a key as `start` would and prints its public half.

use std::io::Write;

use std::path::Path;

use keybound_signer::config::SignerConfig;

use crate::cli::{KeypairShow, OutputFormat, SignerArgs};
use crate::config::{Config, Onboarding};
use crate::signer::SignerKind;

/// Where an existing key is: the config's, then `--static-key-path`, then the signer flags over
/// both (what `keypair show` and `keypair attest` open).
pub(super) fn existing_key(
    config: Option<&Path>,
    static_key_path: Option<&Path>,
    signer: &SignerArgs,
) -> anyhow::Result<SignerConfig> {
    let mut onboarding = match config {
        Some(path) => Config::load(path)?.onboarding,
        None => Onboarding::default(),
    };
    if let Some(path) = static_key_path {
        onboarding.static_private_key_path = Some(path.to_owned());
        onboarding.signer.get_or_insert(SignerKind::File);
    }
    signer.apply(&mut onboarding);
    onboarding.signer_config().map_err(|e| anyhow::anyhow!(e))
}

/// Runs `keypair show`: opens the key and prints its public half.
pub fn show(args: &KeypairShow, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = existing_key(
        args.config.as_deref(),
        args.static_key_path.as_deref(),
        &args.signer,
    )?;
    let signer = crate::signer::open_signer(&config)?;
    let key = signer.public_key();
    match args.format {
        OutputFormat::Json => {
            let document = serde_json::json!({
                "public_key": key.to_openssh(),
                "algorithm": key.algorithm().as_str(),
                "fingerprint": key.fingerprint(),
                "key_id": key.key_id(),
                "signer": signer.backend(),
                "protection": signer.protection().to_string(),
            });
            serde_json::to_writer(&mut *out, &document)?;
            writeln!(out)?;
        }
        OutputFormat::Text => writeln!(
            out,
            "public key:  {}\nalgorithm:   {}\nfingerprint: {}\nkey id:      {}\nsigner:      {}\nprotection:  {}",
            key.to_openssh(),
            key.algorithm(),
            key.fingerprint(),
            key.key_id(),
            signer.backend(),
            signer.protection(),
        )?,
    }
    out.flush()?;
    Ok(())
}
