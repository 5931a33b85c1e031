//! `keybound kube credentials --destination-dir DIR`: the exec plugin of the kubeconfig a
//! Kubernetes output writes (tbot's `tbot kube credentials`, `tool/tbot/kube.go`). It reads
//! DIR's `identity` file and prints a `client.authentication.k8s.io/v1beta1` ExecCredential
//! holding its TLS certificate and key, expiring a minute before the certificate does (when
//! more than a minute is left), so that kubectl asks again in time.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use x509_cert::der::Decode as _;
use zeroize::Zeroizing;

/// How much earlier than the certificate the credential expires.
const EARLY: Duration = Duration::from_secs(60);

/// Prints the ExecCredential for the identity in `dir`.
pub fn credentials(dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let path = dir.join(crate::output::identity::IDENTITY);
    let text = Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: --destination-dir must be a Kubernetes output's directory",
            path.display()
        )
    })?);
    let (key, cert) = key_and_cert(&text)
        .with_context(|| format!("{} is not an identity file", path.display()))?;
    let (_, der) = pem_rfc7468::decode_vec(cert.as_bytes())
        .with_context(|| format!("{}: the TLS certificate is not PEM", path.display()))?;
    let not_after = x509_cert::Certificate::from_der(&der)
        .with_context(|| format!("{}: the TLS certificate is not X.509", path.display()))?
        .tbs_certificate
        .validity
        .not_after
        .to_system_time();
    let expires = match not_after.duration_since(SystemTime::now()) {
        Ok(left) if left > EARLY => not_after - EARLY,
        _ => not_after,
    };
    let credential = Zeroizing::new(
        serde_json::json!({
            "kind": "ExecCredential",
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "spec": {"interactive": false},
            "status": {
                "expirationTimestamp": humantime::format_rfc3339_seconds(expires).to_string(),
                "clientCertificateData": cert,
                "clientKeyData": &*key,
            },
        })
        .to_string(),
    );
    writeln!(out, "{}", &*credential)?;
    Ok(())
}

/// The private key (the first PEM block) and the TLS certificate (the second) of a tsh
/// identity file (`api/identityfile` `decodeIdentityFile`).
fn key_and_cert(text: &str) -> anyhow::Result<(Zeroizing<String>, String)> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let from = &rest[start..];
        let label_end = from[11..]
            .find("-----")
            .context("a PEM header is not closed")?
            + 11;
        let label = &from[11..label_end];
        let footer = format!("-----END {label}-----");
        let end = from.find(&footer).context("a PEM block is not closed")? + footer.len();
        blocks.push((label.to_owned(), &from[..end]));
        rest = &from[end..];
        if blocks.len() == 2 {
            break;
        }
    }
    match blocks.as_slice() {
        [(key_label, key), (cert_label, cert)]
            if key_label.ends_with("PRIVATE KEY") && cert_label == "CERTIFICATE" =>
        {
            Ok((Zeroizing::new(format!("{key}\n")), format!("{cert}\n")))
        }
        _ => bail!("it does not begin with a private key and a TLS certificate"),
    }
}
