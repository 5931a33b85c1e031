//! `keybound keypair attest`: evidence that the bound key lives in the TPM (the statement, the
//! TPM's EK certificates, AK and `TPM2_Certify`, written as `attest::evidence`), or, with
//! `--respond`, the TPM's answer to the admin's credential challenge. `keypair create
//! --attest-out` makes the same evidence for the key it just made.
//!
//! Only TPM keys can be attested: a PKCS#11 key and a file key are refused, saying why
//! ([`refusal`]); `doctor` reports the same ([`attestable`]).

use std::io::Write;
use std::path::Path;

use anyhow::bail;
use keybound_signer::config::{SignerConfig, TpmConfig};

use crate::cli::{AttestStatement, KeypairAttest};

/// Why a key of this configuration cannot be attested, or `None` for a TPM key.
pub(super) fn refusal(config: &SignerConfig) -> Option<String> {
    match config {
        SignerConfig::Tpm(_) => None,
        SignerConfig::Pkcs11(_) => Some(
            "a PKCS#11 key cannot be attested: PKCS#11 defines no key attestation, and SoftHSM has no device key to \
             attest with; vendor attestation (YubiHSM 2, Luna) would plug in as docs/attestation.md describes"
                .to_owned(),
        ),
        SignerConfig::File(_) | SignerConfig::Env(_) => Some(
            "a file or environment key cannot be attested: it is not hardware-bound, and nothing can prove where its \
             copies are; make the key in a TPM (keybound keypair create --static --signer tpm) to attest it"
                .to_owned(),
        ),
        other => Some(format!("a {} key cannot be attested", other.backend())),
    }
}

/// Whether the configured key can be attested, for `doctor`: `Ok(what)` or `Err(why not)`.
pub fn attestable(config: &SignerConfig) -> Result<String, String> {
    match refusal(config) {
        Some(why) => Err(why),
        None => Ok(
            "a TPM key: keybound keypair attest makes evidence for it (needs the TPM's EK certificate)".to_owned(),
        ),
    }
}

/// Runs `keypair attest`.
pub fn attest(args: &KeypairAttest, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = super::show::existing_key(
        args.config.as_deref(),
        args.static_key_path.as_deref(),
        &args.signer,
    )?;
    let tpm = tpm_config(&config)?;
    match &args.respond {
        Some(challenge) => respond(tpm, challenge, &args.out, args.overwrite, out),
        None => write_evidence(tpm, &args.statement, &args.out, args.overwrite, out),
    }
}

/// The TPM key's configuration, or the refusal for a key that cannot be attested.
pub(super) fn tpm_config(config: &SignerConfig) -> anyhow::Result<&TpmConfig> {
    match config {
        SignerConfig::Tpm(tpm) => Ok(tpm),
        other => bail!("{}", refusal(other).unwrap_or_default()),
    }
}

/// Refuses statement flags that would be ignored, and a key that cannot be attested, before
/// `keypair create` makes anything.
pub(super) fn check_create(
    config: &SignerConfig,
    attest_out: Option<&Path>,
    statement: &AttestStatement,
) -> anyhow::Result<()> {
    let given = statement.bot_name.is_some()
        || statement.token_name.is_some()
        || statement.nonce.is_some()
        || statement.ek_intermediates.is_some();
    match attest_out {
        None if given => bail!(
            "--bot-name, --token-name, --nonce and --ek-intermediates go with --attest-out FILE, the evidence they describe"
        ),
        Some(_) => match refusal(config) {
            Some(why) => bail!("--attest-out: {why}"),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

#[cfg(feature = "tpm")]
use with_tpm::respond;
#[cfg(feature = "tpm")]
pub(super) use with_tpm::write_evidence;

#[cfg(not(feature = "tpm"))]
use without_tpm::respond;
#[cfg(not(feature = "tpm"))]
pub(super) use without_tpm::write_evidence;

#[cfg(not(feature = "tpm"))]
mod without_tpm {
    use super::*;

    /// Without the TPM backend, there is no TPM to ask.
    pub(crate) fn write_evidence(
        _: &TpmConfig,
        _: &AttestStatement,
        _: &Path,
        _: bool,
        _: &mut dyn Write,
    ) -> anyhow::Result<()> {
        Err(crate::signer::not_built("tpm").into())
    }

    /// Without the TPM backend, there is no TPM to ask.
    pub(crate) fn respond(
        _: &TpmConfig,
        _: &Path,
        _: &Path,
        _: bool,
        _: &mut dyn Write,
    ) -> anyhow::Result<()> {
        Err(crate::signer::not_built("tpm").into())
    }
}

#[cfg(feature = "tpm")]
mod with_tpm {
    use anyhow::Context as _;
    use keybound_signer::Signer as _;
    use keybound_signer_tpm::TpmSigner;
    use keybound_signer_tpm::attest::{KeyAttestation, RSA_EK_CERTIFICATE_INDEX};
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    use sha2::{Digest as _, Sha256};
    use x509_cert::der::{Decode as _, Encode as _};

    use super::*;
    use crate::attest::challenge::{self, Challenge, RESPONSE_FORMAT, Response};
    use crate::attest::ekchain::read_pem_certificates;
    use crate::attest::evidence::{self, Evidence, FORMAT, Statement, encode};
    use crate::attest::tpm2::{KeyParams, PublicArea};
    use crate::fsutil::{Replace, write_atomic};

    /// Makes evidence for the TPM key `config` names and writes it to `path`.
    pub(crate) fn write_evidence(
        tpm: &TpmConfig,
        statement: &AttestStatement,
        path: &Path,
        overwrite: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let (Some(bot), Some(token)) = (&statement.bot_name, &statement.token_name) else {
            bail!(
                "--bot-name and --token-name are required: the statement names the bot and the token the admin \
                 will bind the key to"
            );
        };
        Statement::check_value("--bot-name", bot)?;
        Statement::check_value("--token-name", token)?;
        if let Some(nonce) = &statement.nonce {
            Statement::check_value("--nonce", nonce)?;
        }
        let intermediates = match &statement.ek_intermediates {
            Some(pem) => read_pem_certificates(pem)?,
            None => Vec::new(),
        };
        let signer = TpmSigner::open(tpm)?;
        let stated = Statement {
            bot: bot.clone(),
            token: token.clone(),
            public_key: signer.public_key().to_openssh(),
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            nonce: statement.nonce.clone(),
        };
        let text = stated.to_text();
        let attestation = signer.attest(&Sha256::digest(text.as_bytes()))?;
        check_ek_matches_certificate(&attestation)?;
        let evidence = Evidence {
            format: FORMAT.to_owned(),
            statement: text,
            ek_certificates: attestation
                .ek_certificates
                .iter()
                .map(|c| evidence::EkCertificate {
                    nv_index: format!("0x{:08x}", c.nv_index),
                    kind: c.kind.to_owned(),
                    der: encode(&c.der),
                })
                .collect(),
            ek_intermediates: intermediates.iter().map(|d| encode(d)).collect(),
            ak_public: encode(&attestation.ak_public),
            ak_private: encode(&attestation.ak_private),
            key_public: encode(&attestation.key_public),
            certify_attest: encode(&attestation.attest),
            certify_signature: encode(
                p256::ecdsa::Signature::from_scalars(
                    attestation.signature_r,
                    attestation.signature_s,
                )
                .context("the TPM's signature is not a valid ECDSA P-256 signature")?
                .to_der()
                .as_bytes(),
            ),
        };
        let mut json = serde_json::to_string_pretty(&evidence)?;
        json.push('\n');
        write_atomic(path, json.as_bytes(), 0o644, Replace::when(overwrite))
            .with_context(|| format!("writing evidence file {}", path.display()))?;
        writeln!(
            out,
            "evidence for key {} ({}) written to {}\ncheck it (no TPM needed): keybound attest verify {} --ek-ca \
             MANUFACTURER-ROOT.pem --token token.yaml",
            signer.public_key().fingerprint(),
            signer.location(),
            path.display(),
            path.display()
        )?;
        Ok(())
    }

    /// The RSA EK made from the TCG template must be the one its certificate names: else the
    /// challenge would be made to a key the AK is not under.
    fn check_ek_matches_certificate(attestation: &KeyAttestation) -> anyhow::Result<()> {
        let cert = attestation
            .ek_certificates
            .iter()
            .find(|c| c.nv_index == RSA_EK_CERTIFICATE_INDEX)
            .context("no RSA EK certificate")?;
        let parsed = x509_cert::Certificate::from_der(&cert.der)
            .context("the RSA EK certificate at NV index 0x01c00002 is unreadable")?;
        let spki = parsed.tbs_certificate.subject_public_key_info.to_der()?;
        let certified = rsa::RsaPublicKey::from_public_key_der(&spki)
            .context("the EK certificate at NV index 0x01c00002 holds no RSA key")?;
        let ek = PublicArea::from_tpm2b(&attestation.ek_public, "EK public area")
            .map_err(anyhow::Error::msg)?;
        let KeyParams::Rsa { modulus, .. } = &ek.key else {
            bail!("the TPM made an EK that is not RSA");
        };
        if *modulus != certified.n().to_bytes_be() {
            bail!(
                "the RSA EK made from the TCG default template is not the key of the EK certificate at NV index \
                 0x01c00002: this TPM's EK uses another template, which keybound does not support"
            );
        }
        Ok(())
    }

    /// Answers a challenge with the TPM `config` names.
    pub(crate) fn respond(
        tpm: &TpmConfig,
        challenge_path: &Path,
        path: &Path,
        overwrite: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let challenge: Challenge = challenge::load(
            challenge_path,
            "challenge",
            challenge::CHALLENGE_FORMAT,
            |c: &Challenge| &c.format,
        )?;
        let field =
            |name: &str, value: &str| evidence::decode(name, value).map_err(anyhow::Error::msg);
        let credential = keybound_signer_tpm::attest::activate_credential(
            tpm,
            (
                &field("ak_public", &challenge.ak_public)?,
                &field("ak_private", &challenge.ak_private)?,
            ),
            &field("credential_blob", &challenge.credential_blob)?,
            &field("encrypted_secret", &challenge.encrypted_secret)?,
        )
        .with_context(|| format!("answering challenge {}", challenge_path.display()))?;
        let response = Response {
            format: RESPONSE_FORMAT.to_owned(),
            ak_name: challenge.ak_name.clone(),
            credential: encode(&credential),
        };
        let mut json = serde_json::to_string_pretty(&response)?;
        json.push('\n');
        write_atomic(path, json.as_bytes(), 0o600, Replace::when(overwrite))
            .with_context(|| format!("writing response {}", path.display()))?;
        writeln!(
            out,
            "the TPM answered the challenge for attestation key {}; response written to {}",
            challenge.ak_name,
            path.display()
        )?;
        Ok(())
    }
}
