//! The JSON report of `keypair create`: tbot's document, plus where a key made in a token or TPM
//! is.

use std::io::Write;

use serde::Serialize;

use crate::signer::Handoff;

/// tbot's JSON document (`KeypairDocument` in `tool/tbot/keypair.go`).
#[derive(Serialize)]
struct KeypairDocument<'a> {
    public_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key: Option<&'a str>,
    /// keybound: where a key made in a token is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pkcs11_uri: Option<&'a str>,
    /// keybound: where a key made in a TPM is.
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm_key: Option<&'a str>,
}

/// Writes the document on one line.
pub(super) fn write(
    out: &mut dyn Write,
    public_key: &str,
    handoff: &Handoff<'_>,
) -> anyhow::Result<()> {
    let document = KeypairDocument {
        public_key,
        private_key: match handoff {
            Handoff::Env(value) => Some(value.as_str()),
            _ => None,
        },
        pkcs11_uri: match handoff {
            Handoff::Pkcs11 { uri, .. } => Some(uri.as_str()),
            _ => None,
        },
        tpm_key: match handoff {
            Handoff::Tpm { location, .. } => Some(location.as_str()),
            _ => None,
        },
    };
    serde_json::to_writer(&mut *out, &document)?;
    writeln!(out)?;
    Ok(())
}
