//! `keybound keypair show`: opens a key as `start` would and prints its public half.

use std::io::Write;

use crate::cli::{KeypairShow, OutputFormat};
use crate::config::{Config, Onboarding};
use crate::signer::SignerKind;

/// Runs `keypair show`: opens the key and prints its public half.
pub fn show(args: &KeypairShow, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut onboarding = match &args.config {
        Some(path) => Config::load(path)?.onboarding,
        None => Onboarding::default(),
    };
    if let Some(path) = &args.static_key_path {
        onboarding.static_private_key_path = Some(path.clone());
        onboarding.signer.get_or_insert(SignerKind::File);
    }
    args.signer.apply(&mut onboarding);
    let config = onboarding.signer_config().map_err(|e| anyhow::anyhow!(e))?;
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
