//! PEM certificates: Teleport sends CAs as PEM bundles and DER, and tbot writes PEM.

use anyhow::{anyhow, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// DER certificate → PEM with a final newline.
pub fn der_to_pem(der: &[u8]) -> String {
    pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, der)
        .expect("PEM-encoding bytes cannot fail")
}

/// Every certificate of a PEM bundle, each as its own PEM.
pub fn split_pem_certs(pem: &[u8]) -> anyhow::Result<Vec<String>> {
    Ok(pem_certs(pem)?.iter().map(|d| der_to_pem(d)).collect())
}

/// The one certificate of a PEM text, DER.
pub fn pem_to_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut certs = pem_certs(pem)?;
    if certs.len() != 1 {
        bail!("expected one PEM certificate, found {}", certs.len());
    }
    Ok(certs.remove(0))
}

/// Every certificate of a PEM bundle, DER.
pub fn pem_certs(pem: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    CertificateDer::pem_slice_iter(pem)
        .map(|c| {
            c.map(|c| c.to_vec())
                .map_err(|e| anyhow!("not a PEM certificate: {e}"))
        })
        .collect()
}
