//! Opens the configured backend: the registry of signers.

use std::sync::Arc;

use clap::ValueEnum;
use keybound_signer::config::SignerConfig;
use keybound_signer::{Error, ErrorKind, Signer};
use keybound_signer_soft::SoftSigner;

/// The backends, as `--signer` and `onboarding.bound_keypair.signer` name them.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum SignerKind {
    /// Base64 PEM in TBOT_BOUND_KEYPAIR_STATIC_KEY.
    Env,
    /// A PEM file.
    File,
    /// A PKCS#11 token (HSM, smart card, SoftHSM).
    Pkcs11,
    /// A TPM 2.0.
    Tpm,
}

impl SignerKind {
    /// Parses the config value.
    pub fn parse(text: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(text, false)
            .map_err(|_| format!("unknown signer {text:?}; use file, env, pkcs11 or tpm"))
    }

    /// The name, as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::File => "file",
            Self::Pkcs11 => "pkcs11",
            Self::Tpm => "tpm",
        }
    }
}

/// Opens the signer `config` names, reading and checking its key once.
pub fn open_signer(config: &SignerConfig) -> Result<Arc<dyn Signer>, Error> {
    let signer: Arc<dyn Signer> = match config {
        SignerConfig::File(file) => Arc::new(SoftSigner::open_file(file)?),
        SignerConfig::Env(env) => Arc::new(SoftSigner::open_env(env)?),
        #[cfg(feature = "pkcs11")]
        SignerConfig::Pkcs11(pkcs11) => {
            Arc::new(keybound_signer_pkcs11::Pkcs11Signer::open(pkcs11)?)
        }
        #[cfg(feature = "tpm")]
        SignerConfig::Tpm(tpm) => Arc::new(keybound_signer_tpm::TpmSigner::open(tpm)?),
        other => return Err(not_built(other.backend())),
    };
    tracing::debug!(
        backend = signer.backend(),
        algorithm = %signer.algorithm(),
        fingerprint = %signer.public_key().fingerprint(),
        protection = %signer.protection(),
        "opened signer"
    );
    Ok(signer)
}

/// The error for a backend this binary was built without.
pub fn not_built(backend: &'static str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        backend,
        format!(
            "this keybound was built without the \"{backend}\" feature; rebuild with --features {backend}"
        ),
    )
}

/// Runs `keybound signer list`.
pub fn list(args: &crate::cli::SignerList, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    if args.signer != SignerKind::Pkcs11 {
        anyhow::bail!("signer list lists PKCS#11 tokens: use --signer pkcs11");
    }
    #[cfg(feature = "pkcs11")]
    {
        let tokens = keybound_signer_pkcs11::list(&args.pkcs11_module, args.pin_source.as_ref())?;
        match args.format {
            crate::cli::OutputFormat::Json => {
                let document: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "token": t.uri.to_string(),
                            "description": t.description,
                            "login_required": t.login_required,
                            "error": t.error,
                            "keys": t.keys.iter().map(|k| serde_json::json!({
                                "uri": k.uri.to_string(), "kind": k.kind, "public_key": k.public_key,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                serde_json::to_writer(&mut *out, &document)?;
                writeln!(out)?;
            }
            crate::cli::OutputFormat::Text => {
                if tokens.is_empty() {
                    writeln!(
                        out,
                        "no initialised tokens in {}",
                        args.pkcs11_module.display()
                    )?;
                }
                for token in &tokens {
                    writeln!(out, "{}  ({})", token.uri, token.description)?;
                    if let Some(error) = &token.error {
                        writeln!(out, "    cannot list keys: {error}")?;
                    } else if token.keys.is_empty() {
                        let hint = if token.login_required && args.pin_source.is_none() {
                            " (private keys show after login: add --pin-source)"
                        } else {
                            ""
                        };
                        writeln!(out, "    no keys{hint}")?;
                    }
                    for key in &token.keys {
                        writeln!(out, "    {}  {}", key.uri, key.kind)?;
                    }
                }
            }
        }
        Ok(())
    }
    #[cfg(not(feature = "pkcs11"))]
    {
        let _ = out;
        Err(not_built("pkcs11").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_left_out_of_the_build_says_how_to_get_it() {
        let error = not_built("tpm");
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert_eq!(
            error.to_string(),
            "tpm: this keybound was built without the \"tpm\" feature; rebuild with --features tpm"
        );
        #[cfg(not(feature = "tpm"))]
        {
            let config = SignerConfig::Tpm(keybound_signer::config::TpmConfig::new(
                keybound_signer::config::TpmKey::Handle(0x8100_0001),
            ));
            assert_eq!(
                open_signer(&config).unwrap_err().to_string(),
                error.to_string()
            );
        }
    }
}
