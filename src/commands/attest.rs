//! `keybound attest verify` and `keybound attest challenge`: the admin's side of key
//! attestation, with no TPM (see `crate::attest`).

use std::io::Write;

use anyhow::{Context as _, anyhow};
use keybound_signer::PublicKey;

use crate::attest::challenge::{self, RESPONSE_FORMAT, Response, SECRET_FORMAT, Secret};
use crate::attest::ekchain::read_pem_certificates;
use crate::attest::evidence::Evidence;
use crate::attest::verify::{Against, Expected, verify as run_checks};
use crate::cli::{AttestChallenge, AttestVerify, OutputFormat};
use crate::fsutil::{Replace, write_atomic};
use crate::{ExitKind, Failure};

/// Runs `attest verify`: one line per check; fails (exit 1) unless every check passed. Input
/// that cannot be read at all (the evidence, a CA file, the token) is a configuration error
/// (exit 78).
pub fn verify(args: &AttestVerify, out: &mut dyn Write) -> Result<(), Failure> {
    let evidence = Evidence::load(&args.evidence).map_err(Failure::config)?;
    let against = against(args).map_err(Failure::config)?;
    let checks = run_checks(&evidence, &against);
    let failed = checks.iter().filter(|c| !c.ok).count();
    match args.format {
        OutputFormat::Json => {
            let document = serde_json::json!({ "ok": failed == 0, "checks": checks });
            serde_json::to_writer(&mut *out, &document).map_err(anyhow::Error::from)?;
            writeln!(out).map_err(anyhow::Error::from)?;
        }
        OutputFormat::Text => {
            for check in &checks {
                let status = if check.ok { "ok  " } else { "FAIL" };
                writeln!(out, "{status} {}: {}", check.check, check.detail)
                    .map_err(anyhow::Error::from)?;
            }
        }
    }
    out.flush().map_err(anyhow::Error::from)?;
    if failed > 0 {
        return Err(Failure::new(
            ExitKind::General,
            anyhow!(
                "{failed} of {} checks failed: the evidence does not show that key is in a TPM you trust",
                checks.len()
            ),
        ));
    }
    Ok(())
}

/// What the flags ask the evidence to be checked against.
fn against(args: &AttestVerify) -> anyhow::Result<Against> {
    let mut roots = Vec::new();
    for path in &args.ek_ca {
        roots.extend(read_pem_certificates(path)?);
    }
    let expected = match (&args.public_key, &args.token) {
        (Some(line), _) => Expected::PublicKey(
            PublicKey::from_openssh(line).map_err(|e| anyhow!("--public-key: {e}"))?,
        ),
        (None, Some(path)) => {
            let mut tokens = keybound_devcluster::tokens::load(path)?;
            if tokens.len() != 1 {
                anyhow::bail!(
                    "--token {} holds {} tokens; give a file with the one token the key is bound to",
                    path.display(),
                    tokens.len()
                );
            }
            Expected::Token(Box::new(tokens.remove(0)))
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let response = match (&args.response, &args.secret) {
        (Some(response), Some(secret)) => Some((
            challenge::load(response, "response", RESPONSE_FORMAT, |r: &Response| {
                &r.format
            })?,
            challenge::load(secret, "secret", SECRET_FORMAT, |s: &Secret| &s.format)?,
        )),
        _ => None,
    };
    Ok(Against {
        roots,
        expected,
        nonce: args.nonce.clone(),
        response,
    })
}

/// Runs `attest challenge`: the challenge to `--out`, the secret to `--secret-out` (0600).
pub fn challenge(args: &AttestChallenge, out: &mut dyn Write) -> Result<(), Failure> {
    let evidence = Evidence::load(&args.evidence).map_err(Failure::config)?;
    let (challenge, secret) = challenge::make(&evidence).map_err(Failure::config)?;
    let mut secret_json = zeroize::Zeroizing::new(
        serde_json::to_string_pretty(&secret).map_err(anyhow::Error::from)?,
    );
    secret_json.push('\n');
    write_atomic(
        &args.secret_out,
        secret_json.as_bytes(),
        0o600,
        Replace::Never,
    )
    .with_context(|| format!("writing the secret to {}", args.secret_out.display()))?;
    let mut json = serde_json::to_string_pretty(&challenge).map_err(anyhow::Error::from)?;
    json.push('\n');
    write_atomic(&args.out, json.as_bytes(), 0o644, Replace::Never)
        .with_context(|| format!("writing the challenge to {}", args.out.display()))?;
    writeln!(
        out,
        "challenge for attestation key {} written to {}; keep {} and send the challenge to the host:\n  keybound keypair \
         attest --signer tpm ... --respond {} --out response.json\nthen: keybound attest verify {} --ek-ca ... \
         --response response.json --secret {}",
        challenge.ak_name,
        args.out.display(),
        args.secret_out.display(),
        args.out.display(),
        args.evidence.display(),
        args.secret_out.display()
    )
    .map_err(anyhow::Error::from)?;
    Ok(())
}
