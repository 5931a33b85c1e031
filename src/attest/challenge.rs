//! The one interactive step: the admin makes a credential to the EK certificate's key for the
//! AK's name ([`make`]); only the TPM holding that EK, with that AK loaded, can recover it
//! (`keybound keypair attest --respond`); the admin compares the answer with the secret kept.
//! Three small JSON files: the challenge (to the host), the secret (kept by the admin, 0600), the
//! response (from the host).

use anyhow::{Context as _, bail};
use rand_core::{OsRng, RngCore as _};
use rsa::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};
use x509_cert::der::{Decode as _, Encode as _};

use super::credential;
use super::evidence::{Evidence, decode, encode, hex};
use super::tpm2::PublicArea;

pub const CHALLENGE_FORMAT: &str = "keybound-tpm-credential-challenge/v1";
pub const SECRET_FORMAT: &str = "keybound-tpm-credential-secret/v1";
pub const RESPONSE_FORMAT: &str = "keybound-tpm-credential-response/v1";

/// The NV index of the RSA 2048 EK certificate, the EK the AK is made under.
const RSA_EK_INDEX: &str = "0x01c00002";

/// What the admin sends the host.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub format: String,
    /// The AK's name, hex: the credential opens only through an object of this name.
    pub ak_name: String,
    /// The AK as the evidence gave it, for the host to load again.
    pub ak_public: String,
    pub ak_private: String,
    /// `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET` contents, base64.
    pub credential_blob: String,
    pub encrypted_secret: String,
}

/// What the admin keeps.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub format: String,
    pub ak_name: String,
    /// The credential, base64.
    pub secret: String,
}

/// What the host answers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub format: String,
    pub ak_name: String,
    /// The credential the TPM recovered, base64.
    pub credential: String,
}

/// Makes the challenge for `evidence`: a fresh 32-byte credential made to the RSA EK
/// certificate's key for the AK's name.
pub fn make(evidence: &Evidence) -> anyhow::Result<(Challenge, Secret)> {
    let cert = evidence
        .ek_certificates
        .iter()
        .find(|c| c.nv_index == RSA_EK_INDEX)
        .context("the evidence holds no RSA 2048 EK certificate (NV index 0x01c00002), the EK its AK is made under")?;
    let der = decode("ek_certificates.der", &cert.der).map_err(anyhow::Error::msg)?;
    let ek =
        x509_cert::Certificate::from_der(&der).context("the RSA EK certificate is unreadable")?;
    let spki = ek
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("the RSA EK certificate's key")?;
    let ek_key = rsa::RsaPublicKey::from_public_key_der(&spki)
        .context("the EK certificate at 0x01c00002 does not hold an RSA key")?;
    let ak = PublicArea::from_tpm2b(
        &decode("ak_public", &evidence.ak_public).map_err(anyhow::Error::msg)?,
        "AK public area",
    )
    .map_err(anyhow::Error::msg)?;
    let name = ak.name().map_err(anyhow::Error::msg)?;
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(secret.as_mut());
    let made = credential::make(&ek_key, &name, secret.as_ref()).map_err(anyhow::Error::msg)?;
    let ak_name = hex(&name);
    Ok((
        Challenge {
            format: CHALLENGE_FORMAT.to_owned(),
            ak_name: ak_name.clone(),
            ak_public: evidence.ak_public.clone(),
            ak_private: evidence.ak_private.clone(),
            credential_blob: encode(&made.credential_blob),
            encrypted_secret: encode(&made.encrypted_secret),
        },
        Secret {
            format: SECRET_FORMAT.to_owned(),
            ak_name,
            secret: encode(secret.as_ref()),
        },
    ))
}

/// Reads one of the three files, checking its format.
pub fn load<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
    format: &str,
    format_of: impl Fn(&T) -> &str,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    let value: T = serde_json::from_str(&text)
        .with_context(|| format!("{what} {} is not a keybound {what}", path.display()))?;
    if format_of(&value) != format {
        bail!(
            "{what} {} is of format {:?}, not {format:?}",
            path.display(),
            format_of(&value)
        );
    }
    Ok(value)
}
