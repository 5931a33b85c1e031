//! The evidence file (docs/attestation.md describes every field): one JSON object naming its
//! format, holding the statement as text and the TPM's structures as base64, so that each part
//! can be taken out and checked with other tools.

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// The `format` of an evidence file, and the first line of its statement.
pub const FORMAT: &str = "keybound-tpm-key-attestation/v1";

/// An evidence file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// [`FORMAT`].
    pub format: String,
    /// What the host states, as text; its SHA-256 is the attestation's `extraData`.
    pub statement: String,
    /// The EK certificates from the TPM's NV indices.
    pub ek_certificates: Vec<EkCertificate>,
    /// CA certificates between the EK certificates and their root, DER in base64 (given by the
    /// host with --ek-intermediates; a manufacturer's root is the admin's to give).
    #[serde(default)]
    pub ek_intermediates: Vec<String>,
    /// The AK's `TPM2B_PUBLIC`, base64.
    pub ak_public: String,
    /// The AK's `TPM2B_PRIVATE`, wrapped by the EK: only that TPM can load it (for the
    /// challenge). Base64.
    pub ak_private: String,
    /// The bound key's `TPM2B_PUBLIC`, base64.
    pub key_public: String,
    /// `TPMS_ATTEST` of `TPM2_Certify` of the key by the AK, base64.
    pub certify_attest: String,
    /// The AK's ECDSA P-256 SHA-256 signature over `certify_attest`, DER, base64.
    pub certify_signature: String,
}

/// One EK certificate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EkCertificate {
    /// Where it was read: `0x01c00002`, ...
    pub nv_index: String,
    /// The key the TCG assigns that index: `rsa2048`, `ecc-nist-p384`, ...
    pub kind: String,
    /// The certificate, DER, base64.
    pub der: String,
}

impl Evidence {
    /// Reads an evidence file, checking its format.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading evidence file {}", path.display()))?;
        let evidence: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "evidence file {} is not keybound attestation evidence",
                path.display()
            )
        })?;
        if evidence.format != FORMAT {
            bail!(
                "evidence file {} is of format {:?}; this keybound reads {FORMAT:?}",
                path.display(),
                evidence.format
            );
        }
        Ok(evidence)
    }
}

/// Decodes one base64 field, naming it in the error.
pub fn decode(field: &str, value: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(value)
        .map_err(|e| format!("field {field} is not base64: {e}"))
}

/// Lower-case hex, as names are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes bytes for a field.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// What the host states. Its text, one `key: value` per line after the format line, is what
/// the TPM's attestation carries the SHA-256 of.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Statement {
    pub bot: String,
    pub token: String,
    /// The bound key, one `authorized_keys` line without a comment.
    pub public_key: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub nonce: Option<String>,
}

impl Statement {
    /// The statement's text.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{FORMAT}\nbot: {}\ntoken: {}\npublic_key: {}\ntime: {}\n",
            self.bot, self.token, self.public_key, self.time
        );
        if let Some(nonce) = &self.nonce {
            text.push_str(&format!("nonce: {nonce}\n"));
        }
        text
    }

    /// Reads a statement's text: the format line, then bot, token, public_key, time and an
    /// optional nonce, in that order, nothing else.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.strip_suffix('\n').unwrap_or(text).split('\n');
        if lines.next() != Some(FORMAT) {
            return Err(format!("the statement does not start with {FORMAT:?}"));
        }
        let mut field = |key: &str| -> Result<String, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key)?.strip_prefix(": "))
                .map(str::to_owned)
                .ok_or_else(|| format!("the statement has no {key:?} line where expected"))
        };
        let statement = Self {
            bot: field("bot")?,
            token: field("token")?,
            public_key: field("public_key")?,
            time: field("time")?,
            nonce: None,
        };
        let nonce = field("nonce").ok();
        let statement = Self { nonce, ..statement };
        if statement.to_text() != text {
            return Err("the statement has lines keybound does not write".to_owned());
        }
        Ok(statement)
    }

    /// Checks a name given for the statement: one line, no control characters.
    pub fn check_value(flag: &str, value: &str) -> anyhow::Result<()> {
        if value.is_empty() || value.chars().any(char::is_control) {
            bail!("{flag} must be a non-empty name on one line, without control characters");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_reads_back_as_written_and_nothing_else_reads() {
        let statement = Statement {
            bot: "example".into(),
            token: "example-token".into(),
            public_key: "ecdsa-sha2-nistp256 AAAA".into(),
            time: "2026-12-05T07:00:00Z".into(),
            nonce: None,
        };
        assert_eq!(Statement::parse(&statement.to_text()).unwrap(), statement);
        let with_nonce = Statement {
            nonce: Some("n1".into()),
            ..statement.clone()
        };
        assert_eq!(Statement::parse(&with_nonce.to_text()).unwrap(), with_nonce);
        let extra = format!("{}extra: 1\n", statement.to_text());
        assert!(Statement::parse(&extra).is_err());
        let reordered = statement.to_text().replace(
            "bot: example\ntoken: example-token",
            "token: example-token\nbot: example",
        );
        assert!(Statement::parse(&reordered).is_err());
        assert!(Statement::parse("").is_err());
    }
}
