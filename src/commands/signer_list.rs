//! `keybound signer list`: the tokens of a PKCS#11 module and the keys on them.

#[cfg(feature = "pkcs11")]
use crate::cli::OutputFormat;
use crate::cli::{ListedSigner, SignerList};

/// Runs `keybound signer list` (`--signer` takes only the backends that can be listed: the
/// parser refuses the others as a usage error).
pub fn list(args: &SignerList, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let ListedSigner::Pkcs11 = args.signer;
    #[cfg(feature = "pkcs11")]
    {
        let tokens = keybound_signer_pkcs11::list(&args.pkcs11_module, args.pin_source.as_ref())?;
        match args.format {
            OutputFormat::Json => {
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
            OutputFormat::Text => {
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
        Err(crate::signer::not_built("pkcs11").into())
    }
}
