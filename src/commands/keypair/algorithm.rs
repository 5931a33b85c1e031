//! The key type of a new key: `--algorithm`, else the one the proxy's signature algorithm suite
//! uses; a TPM, which makes P-256 keys only, needs neither.

use anyhow::bail;
use keybound_signer::Algorithm;
use keybound_signer::config::SignerConfig;

use crate::cli::KeypairCreate;
use crate::config::HostPort;
use crate::tls::{Trust, client_config};
use crate::webapi;

/// The type of the key `create` makes.
pub(super) async fn choose(
    args: &KeypairCreate,
    signer_config: &SignerConfig,
) -> anyhow::Result<Algorithm> {
    let is_tpm = matches!(signer_config, SignerConfig::Tpm(_));
    if is_tpm && args.algorithm.is_none() && args.proxy_server.is_none() {
        // A TPM makes P-256 keys only; there is nothing to ask the cluster.
        return Ok(Algorithm::EcdsaP256Sha256);
    }
    let algorithm = requested_or_from_proxy(args).await?;
    if is_tpm && args.algorithm.is_none() && algorithm == Algorithm::Ed25519 {
        // TPMs have no Ed25519; a static P-256 bound key works whatever the cluster's suite.
        tracing::info!(
            "the cluster's suite uses Ed25519 bound keys, which TPMs cannot make: making an ECDSA P-256 key instead"
        );
        return Ok(Algorithm::EcdsaP256Sha256);
    }
    Ok(algorithm)
}

/// `--algorithm` if given; otherwise the bound-key algorithm of the proxy's suite.
async fn requested_or_from_proxy(args: &KeypairCreate) -> anyhow::Result<Algorithm> {
    if let Some(algorithm) = args.algorithm {
        return Ok(algorithm);
    }
    let Some(proxy) = &args.proxy_server else {
        bail!(
            "choose the key type: pass --proxy-server HOST:PORT so keybound asks the cluster, or \
             --algorithm ed25519|ecdsa-p256"
        );
    };
    let addr = HostPort::parse(proxy, 443).map_err(|e| anyhow::anyhow!("--proxy-server: {e}"))?;
    let found = webapi::find(&addr, client_config(&proxy_trust(args), &[b"http/1.1"])?).await?;
    let algorithm = found.suite.bound_key_algorithm();
    tracing::info!(proxy = %addr, suite = %found.suite, %algorithm, "chose key type from the cluster's signature algorithm suite");
    Ok(algorithm)
}

/// How the proxy's certificate is checked: `--insecure` (warned about), `--ca-path`, or the
/// system's trust store.
fn proxy_trust(args: &KeypairCreate) -> Trust {
    if args.insecure {
        tracing::warn!(
            "--insecure: NOT verifying the proxy's TLS certificate; anyone on the network path \
             can pick your key type. Use this only against a development cluster."
        );
        Trust::Insecure
    } else if let Some(path) = &args.ca_path {
        Trust::Bundle(path.clone())
    } else {
        Trust::System
    }
}
