//! An EK certificate's chain to the manufacturer roots the admin trusts, with rustls-webpki.
//!
//! EK certificates carry what a TLS verifier would refuse (TCG EK Credential Profile 2.3, §3.2;
//! the same quirks Teleport handles in `lib/tpm/validate.go`, which strips the SAN from Go's
//! unhandled critical extensions and accepts any EKU): an empty or placeholder subject, a
//! critical subjectAltName holding only a directoryName (TPM manufacturer, model, version), and
//! the EKU `tcg-kp-EKCertificate` (2.23.133.8.1), or none. webpki checks no name here (none is
//! asked for), knows the SAN extension, and is told the EK EKU is the usage wanted when the
//! certificate lists EKUs.

use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

/// `tcg-kp-EKCertificate`, 2.23.133.8.1, as the OID's DER value.
const EK_CERTIFICATE_EKU: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x01];

/// Loads PEM CA certificates (any number per file) as DER.
pub fn read_pem_certificates(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading CA file {}", path.display()))?;
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let end = rest[start..]
            .find(end_marker)
            .map(|e| start + e + end_marker.len())
            .with_context(|| {
                format!(
                    "CA file {} has a certificate without its end line",
                    path.display()
                )
            })?;
        let (label, der) =
            pem_rfc7468::decode_vec(&rest.as_bytes()[start..end]).with_context(|| {
                format!("CA file {} holds an unreadable certificate", path.display())
            })?;
        debug_assert_eq!(label, "CERTIFICATE");
        found.push(der);
        rest = &rest[end..];
    }
    if found.is_empty() {
        anyhow::bail!(
            "CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(found)
}

/// Checks that `ek` chains through `intermediates` to one of `roots` (all DER), valid now.
/// Returns the subject of the root reached, for the report.
pub fn verify(ek: &[u8], intermediates: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<String, String> {
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors: Vec<TrustAnchor<'_>> = root_ders
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .map_err(|e| format!("an --ek-ca certificate is unreadable: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|i| CertificateDer::from(i.as_slice()))
        .collect();
    let ek_der = CertificateDer::from(ek);
    let cert = EndEntityCert::try_from(&ek_der)
        .map_err(|e| format!("the EK certificate is unreadable: {e}"))?;
    let path = cert
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            KeyUsage::required_if_present(EK_CERTIFICATE_EKU),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => {
                "it does not chain to any --ek-ca root (UnknownIssuer): the TPM's \
                manufacturer root, or an intermediate, is missing"
                    .to_owned()
            }
            webpki::Error::InvalidSignatureForPublicKey => {
                "it does not chain to any --ek-ca root: a CA of the \
                right name did not sign it (InvalidSignatureForPublicKey)"
                    .to_owned()
            }
            other => format!("it does not verify against the --ek-ca roots: {other:?}"),
        })?;
    Ok(subject_of(path.anchor().subject.as_ref()))
}

/// A subject DN's common name(s), or the hex of its DER when it has none.
fn subject_of(subject_der: &[u8]) -> String {
    use x509_cert::der::Decode as _;
    // The anchor's subject is the DN's contents, without the SEQUENCE header.
    let mut full = vec![0x30];
    let len = subject_der.len();
    if len < 0x80 {
        full.push(len as u8);
    } else if len < 0x100 {
        full.extend([0x81, len as u8]);
    } else {
        full.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    full.extend_from_slice(subject_der);
    match x509_cert::name::Name::from_der(&full) {
        Ok(name) => name.to_string(),
        Err(_) => "an unreadable subject".to_owned(),
    }
}
