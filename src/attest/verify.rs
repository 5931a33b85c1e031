//! `keybound attest verify`'s checks, one result each, none needing a TPM: the EK chain, the
//! AK, the AK's signature, the attestation's fields, the key's attributes, the statement, the
//! token's bound key, the nonce, and (after the challenge) the credential.

use keybound_signer::PublicKey;
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

use super::challenge::{Response, Secret};
use super::ekchain;
use super::evidence::{Evidence, Statement, decode, hex};
use super::tpm2::{
    self, ALG_ECDSA, ALG_SHA256, CertifyInfo, DECRYPT, FIXED_PARENT, FIXED_TPM, GENERATED,
    KeyParams, PublicArea, RESTRICTED, SENSITIVE_DATA_ORIGIN, SIGN, USER_WITH_AUTH,
};

/// One check's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// The check's name: `ek-certificate`, `ak`, `signature`, `attestation`, `key`,
    /// `statement`, `bound-key`, `nonce`, `credential`.
    pub check: String,
    pub ok: bool,
    /// What was found, or why it failed.
    pub detail: String,
}

/// Whose bound key the evidence must be for.
pub enum Expected {
    /// The key itself (`--public-key`).
    PublicKey(PublicKey),
    /// A token resource (`--token token.yaml`): its name, bot and bound key.
    Token(Box<keybound_devcluster::tokens::Token>),
}

/// What the admin checks the evidence against.
pub struct Against {
    /// Manufacturer roots, DER.
    pub roots: Vec<Vec<u8>>,
    pub expected: Expected,
    pub nonce: Option<String>,
    /// The host's answer to the challenge, and the secret the admin kept.
    pub response: Option<(Response, Secret)>,
}

/// Runs every check on `evidence`.
pub fn verify(evidence: &Evidence, against: &Against) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |check: &str, result: Result<String, String>| {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        checks.push(Check {
            check: check.to_owned(),
            ok,
            detail,
        });
    };
    for (name, result) in ek_chains(evidence, &against.roots) {
        push(&name, result);
    }
    let ak = PublicArea::from_tpm2b_field(&evidence.ak_public, "ak_public", "AK public area");
    push("ak", ak.clone().and_then(|ak| check_ak(&ak)));
    push(
        "signature",
        ak.and_then(|ak| check_signature(evidence, &ak)),
    );
    let key = PublicArea::from_tpm2b_field(&evidence.key_public, "key_public", "key public area");
    push(
        "attestation",
        key.clone()
            .and_then(|key| check_attestation(evidence, &key)),
    );
    push("key", key.clone().and_then(|key| check_key(&key)));
    let statement = Statement::parse(&evidence.statement);
    push(
        "statement",
        key.and_then(|key| check_statement(statement.clone()?, &key)),
    );
    push(
        "bound-key",
        statement
            .clone()
            .and_then(|s| check_bound_key(&s, &against.expected)),
    );
    if let Some(nonce) = &against.nonce {
        push("nonce", statement.and_then(|s| check_nonce(&s, nonce)));
    }
    if let Some((response, secret)) = &against.response {
        push("credential", check_credential(evidence, response, secret));
    }
    checks
}

impl PublicArea {
    fn from_tpm2b_field(value: &str, field: &str, what: &'static str) -> Result<Self, String> {
        Self::from_tpm2b(&decode(field, value)?, what)
    }
}

/// Each EK certificate's chain, one check each.
fn ek_chains(evidence: &Evidence, roots: &[Vec<u8>]) -> Vec<(String, Result<String, String>)> {
    if evidence.ek_certificates.is_empty() {
        return vec![(
            "ek-certificate".to_owned(),
            Err("the evidence holds no EK certificate".to_owned()),
        )];
    }
    let intermediates: Result<Vec<_>, _> = evidence
        .ek_intermediates
        .iter()
        .map(|i| decode("ek_intermediates", i))
        .collect();
    evidence
        .ek_certificates
        .iter()
        .map(|cert| {
            let name = format!("ek-certificate {} ({})", cert.kind, cert.nv_index);
            let result = intermediates.clone().and_then(|intermediates| {
                let der = decode("ek_certificates.der", &cert.der)?;
                ekchain::verify(&der, &intermediates, roots).map(|root| format!("chains to {root}"))
            });
            (name, result)
        })
        .collect()
}

/// The AK: an ECC P-256 ECDSA-SHA-256 restricted signing key made in a TPM.
fn check_ak(ak: &PublicArea) -> Result<String, String> {
    let name = hex(&ak.name()?);
    let wanted =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN;
    let attributes = tpm2::attribute_names(ak.attributes);
    if !ak.has(wanted) || ak.has(DECRYPT) {
        return Err(format!(
            "the AK's attributes are {attributes}; an attestation key is fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign, not decrypt"
        ));
    }
    match &ak.key {
        KeyParams::Ecc {
            scheme: (ALG_ECDSA, ALG_SHA256),
            ..
        } if ak.p256_point().is_some() => {}
        _ => return Err("the AK is not an ECC P-256 ECDSA SHA-256 key".to_owned()),
    }
    Ok(format!("name {name}, {attributes}"))
}

/// The AK's ECDSA P-256 SHA-256 signature over the attestation.
fn check_signature(evidence: &Evidence, ak: &PublicArea) -> Result<String, String> {
    let point = ak.p256_point().ok_or("the AK is not a P-256 key")?;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .map_err(|e| format!("the AK's point is not on P-256: {e}"))?;
    let signature = p256::ecdsa::Signature::from_der(&decode(
        "certify_signature",
        &evidence.certify_signature,
    )?)
    .map_err(|e| format!("the signature is not DER ECDSA: {e}"))?;
    let attest = decode("certify_attest", &evidence.certify_attest)?;
    key.verify(&attest, &signature)
        .map_err(|_| "the AK's signature does not verify over the attestation".to_owned())?;
    Ok("the AK signed the attestation (ECDSA P-256 SHA-256)".to_owned())
}

/// The attestation: TPM-made, a certify, over this statement, of this key.
fn check_attestation(evidence: &Evidence, key: &PublicArea) -> Result<String, String> {
    let info = CertifyInfo::parse(&decode("certify_attest", &evidence.certify_attest)?)?;
    if info.magic != GENERATED {
        return Err(format!(
            "magic is 0x{:08x}, not TPM_GENERATED_VALUE 0xff544347",
            info.magic
        ));
    }
    let digest = Sha256::digest(evidence.statement.as_bytes());
    if info.extra_data[..] != digest[..] {
        return Err(format!(
            "extraData is {}, not the SHA-256 of the statement ({})",
            hex(&info.extra_data),
            hex(&digest)
        ));
    }
    let name = key.name()?;
    if info.name != name {
        return Err(format!(
            "it certifies the object named {}, not the key in key_public ({})",
            hex(&info.name),
            hex(&name)
        ));
    }
    Ok(format!(
        "TPM-generated certify of {}, extraData = SHA-256(statement)",
        hex(&name)
    ))
}

/// The key: made in the TPM, never out of it.
fn check_key(key: &PublicArea) -> Result<String, String> {
    let attributes = tpm2::attribute_names(key.attributes);
    if !key.has(FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN) {
        return Err(format!(
            "the key's attributes are {attributes}: without fixedtpm|fixedparent|sensitivedataorigin it may have been \
             imported from outside the TPM or may leave it"
        ));
    }
    if !key.has(SIGN) || key.has(RESTRICTED) {
        return Err(format!(
            "the key's attributes are {attributes}: not an unrestricted signing key"
        ));
    }
    Ok(attributes)
}

/// The statement reads, and names the certified key.
fn check_statement(statement: Statement, key: &PublicArea) -> Result<String, String> {
    let point = key.p256_point().ok_or("the key is not an ECC P-256 key")?;
    let public = PublicKey::from_p256_sec1(&point).map_err(|e| e.to_string())?;
    if statement.public_key != public.to_openssh() {
        return Err(format!(
            "the statement names {}, but the certified key is {}",
            statement.public_key,
            public.to_openssh()
        ));
    }
    Ok(format!(
        "bot {:?}, token {:?}, key {}, made {}",
        statement.bot,
        statement.token,
        public.fingerprint(),
        statement.time
    ))
}

/// The statement is for the key (or token) the admin names.
fn check_bound_key(statement: &Statement, expected: &Expected) -> Result<String, String> {
    let stated = PublicKey::from_openssh(&statement.public_key).map_err(|e| e.to_string())?;
    match expected {
        Expected::PublicKey(key) => {
            if *key != stated {
                return Err(format!(
                    "the evidence is for key {}, not --public-key {}",
                    stated.fingerprint(),
                    key.fingerprint()
                ));
            }
            Ok(format!("key {} is --public-key", key.fingerprint()))
        }
        Expected::Token(token) => {
            if token.name != statement.token {
                return Err(format!(
                    "the statement is for token {:?}, not {:?}",
                    statement.token, token.name
                ));
            }
            if token.bot_name != statement.bot {
                return Err(format!(
                    "the statement is for bot {:?}, but token {:?} is bot {:?}'s",
                    statement.bot, token.name, token.bot_name
                ));
            }
            let bound = match (
                &token.status.bound_public_key,
                &token.bound_keypair.initial_public_key,
            ) {
                (Some(line), _) => PublicKey::from_openssh(line).map_err(|e| {
                    format!(
                        "token {:?}'s status.bound_keypair.bound_public_key: {e}",
                        token.name
                    )
                })?,
                (None, Some(key)) => key.clone(),
                (None, None) => {
                    return Err(format!(
                        "token {:?} binds no key (no spec.bound_keypair.onboarding.initial_public_key, no \
                         status.bound_keypair.bound_public_key)",
                        token.name
                    ));
                }
            };
            if bound != stated {
                return Err(format!(
                    "token {:?} binds key {}, not the attested {}",
                    token.name,
                    bound.fingerprint(),
                    stated.fingerprint()
                ));
            }
            Ok(format!(
                "token {:?} of bot {:?} binds key {}",
                token.name,
                token.bot_name,
                bound.fingerprint()
            ))
        }
    }
}

fn check_nonce(statement: &Statement, nonce: &str) -> Result<String, String> {
    match &statement.nonce {
        Some(n) if n == nonce => Ok("the statement carries --nonce".to_owned()),
        Some(n) => Err(format!("the statement carries nonce {n:?}, not {nonce:?}")),
        None => Err("the statement carries no nonce".to_owned()),
    }
}

/// The host's answer recovers the secret kept for this evidence's AK.
fn check_credential(
    evidence: &Evidence,
    response: &Response,
    secret: &Secret,
) -> Result<String, String> {
    use subtle::ConstantTimeEq as _;
    let ak = PublicArea::from_tpm2b_field(&evidence.ak_public, "ak_public", "AK public area")?;
    let name = hex(&ak.name()?);
    if secret.ak_name != name {
        return Err(format!(
            "the secret was kept for the challenge of AK {}, not this evidence's AK {name}",
            secret.ak_name
        ));
    }
    if response.ak_name != name {
        return Err(format!(
            "the response answers a challenge for AK {}, not this evidence's AK {name}",
            response.ak_name
        ));
    }
    let answered = decode("credential", &response.credential)?;
    let kept = decode("secret", &secret.secret)?;
    if !bool::from(answered.ct_eq(&kept)) {
        return Err("the response does not hold the credential: it was not recovered by the TPM holding the EK".to_owned());
    }
    Ok(format!(
        "the TPM holding the EK recovered the credential made for AK {name}"
    ))
}
