//! X.509 user certificates laid out as Go's `crypto/x509` writes Teleport's: a subject whose
//! attributes may hold several values in one RDN (a user's roles in `O`, its logins in `L`),
//! which rcgen's `DistinguishedName` cannot express (it keeps one value per attribute type).
//!
//! The TBSCertificate is assembled with `x509-cert`'s types and signed with the CA's rcgen key,
//! so the issuing key stays where the rest of the dev cluster keeps it.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use rcgen::{KeyPair, SigningKey as _};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::der::asn1::{
    Any, BitString, OctetString, PrintableStringRef, SetOfVec, UtcTime, Utf8StringRef,
};
use x509_cert::der::{Decode as _, Encode as _};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{AsExtension as _, Extension};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};

/// `ecdsa-with-SHA256`: the dev CAs' keys are ECDSA P-256.
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// `id-kp-serverAuth`, `id-kp-clientAuth`.
const KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
const KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// A subject under construction, one RDN per call, in the order Go writes them.
#[derive(Default)]
pub(crate) struct Subject(Vec<RelativeDistinguishedName>);

impl Subject {
    /// Appends one RDN holding every value of `values` for the attribute `oid` (nothing when
    /// `values` is empty, as Go's `appendRDNs` does). Values are strings typed as Go types them.
    pub(crate) fn push<S: AsRef<str>>(
        &mut self,
        oid: ObjectIdentifier,
        values: &[S],
    ) -> anyhow::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let atvs = values
            .iter()
            .map(|v| {
                Ok(AttributeTypeAndValue {
                    oid,
                    value: go_string(v.as_ref())?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // DER (and Go since 1.15) sorts the members of a SET OF.
        let set = SetOfVec::try_from(atvs).context("an RDN's values")?;
        self.0.push(RelativeDistinguishedName(set));
        Ok(())
    }

    /// Appends a single-valued RDN.
    pub(crate) fn push_one(&mut self, oid: ObjectIdentifier, value: &str) -> anyhow::Result<()> {
        self.push(oid, &[value])
    }
}

/// How Go's `encoding/asn1` marshals a `string` with no explicit type: `PrintableString` when
/// every character is in its set, else `UTF8String`.
fn go_string(value: &str) -> anyhow::Result<Any> {
    let any = match PrintableStringRef::new(value) {
        Ok(printable) => Any::from(printable),
        Err(_) => Any::from(Utf8StringRef::new(value).context("a subject attribute")?),
    };
    Ok(any)
}

/// What `CertAuthority.GenerateCertificate` (`lib/tlsca/ca.go`) puts around a user subject:
/// a random serial below 2^128, `notBefore`/`notAfter` as given, key usage digital signature and
/// key encipherment, extended key usage server and client auth, `IsCA=false`, and the issuer's
/// key identifier.
pub(crate) struct Leaf<'a> {
    /// The issuing CA's certificate, DER.
    pub(crate) issuer_der: &'a [u8],
    /// The issuing CA's key.
    pub(crate) issuer_key: &'a KeyPair,
    /// The subject, built with [`Subject`].
    pub(crate) subject: Subject,
    /// The subject's key, as the client sent it (PKIX DER).
    pub(crate) spki_der: &'a [u8],
    /// Seconds since the epoch.
    pub(crate) not_before: u64,
    /// Seconds since the epoch.
    pub(crate) not_after: u64,
}

impl Leaf<'_> {
    /// Signs the certificate; returns its DER.
    pub(crate) fn sign(self) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            self.issuer_key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256,
            "the dev cluster's CAs sign with ECDSA P-256 and SHA-256 only"
        );
        let issuer = Certificate::from_der(self.issuer_der).context("the CA certificate")?;
        let spki = SubjectPublicKeyInfoOwned::from_der(self.spki_der).context("the subject key")?;
        let subject = RdnSequence(self.subject.0);
        let algorithm = AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        };
        let mut serial = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
        serial[0] &= 0x7f;
        serial[0] |= 0x01;

        let issuer_name: &Name = &issuer.tbs_certificate.subject;
        let mut extensions: Vec<Extension> = vec![
            KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment)
                .to_extension(&subject, &[])?,
            ExtendedKeyUsage(vec![KP_SERVER_AUTH, KP_CLIENT_AUTH]).to_extension(&subject, &[])?,
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            }
            .to_extension(&subject, &[])?,
        ];
        if let Some((_, ski)) = issuer
            .tbs_certificate
            .get::<SubjectKeyIdentifier>()
            .context("the CA's subject key identifier")?
        {
            extensions.push(
                AuthorityKeyIdentifier {
                    key_identifier: Some(OctetString::new(ski.0.as_bytes())?),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                }
                .to_extension(&subject, &[])?,
            );
        }
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: SerialNumber::new(&serial)?,
            signature: algorithm.clone(),
            issuer: issuer_name.clone(),
            validity: Validity {
                not_before: utc(self.not_before)?,
                not_after: utc(self.not_after)?,
            },
            subject,
            subject_public_key_info: spki,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let signature = self
            .issuer_key
            .sign(&tbs.to_der()?)
            .map_err(|e| anyhow!("signing the certificate: {e}"))?;
        let cert = Certificate {
            tbs_certificate: tbs,
            signature_algorithm: algorithm,
            signature: BitString::from_bytes(&signature)?,
        };
        Ok(cert.to_der()?)
    }
}

/// UTCTime, as RFC 5280 asks for dates before 2050 (and Go writes).
fn utc(unix_seconds: u64) -> anyhow::Result<Time> {
    let time = UNIX_EPOCH + Duration::from_secs(unix_seconds);
    Ok(Time::UtcTime(UtcTime::from_system_time(time).map_err(
        |e| {
            anyhow!(
                "{} is not a UTCTime: {e}",
                keybound_teleport::time::format_time(time)
            )
        },
    )?))
}
