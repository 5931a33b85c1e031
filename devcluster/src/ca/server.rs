//! TLS server certificates for the Proxy and Auth, signed by the host CA, shaped like a Teleport
//! host identity's.

use std::time::SystemTime;

use anyhow::{Context as _, ensure};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_cert::spki::ObjectIdentifier;

use super::authority::ClusterCa;
use super::template::{
    BACKDATE, SERVER_CERT_TTL, datetime, go_string, random_serial, unix_seconds,
};
use keybound_teleport::subject::oid;

/// DNS names every Teleport proxy/auth certificate carries (`constants.APIDomain` and its
/// wildcard); clients dial Auth through the proxy with this server name.
pub const CLUSTER_LOCAL_NAMES: [&str; 2] = ["teleport.cluster.local", "*.teleport.cluster.local"];

/// `id-ce-basicConstraints`, written by hand for leaf certificates (see [`not_ca_extension`]).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

impl ClusterCa {
    /// A TLS server certificate chain + key for the dev proxy listener, signed by the host CA,
    /// with SANs = `names` (DNS names or IP addresses) plus `teleport.cluster.local` and
    /// `*.teleport.cluster.local`. The chain holds the leaf only (clients trust the host CA).
    pub fn server_cert(
        &self,
        names: &[String],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        self.host_cert("Proxy", names)
    }

    /// Auth's TLS certificate, signed by the host CA: `O=Auth`, SANs `teleport.cluster.local`
    /// and `*.teleport.cluster.local` (which covers the `<hex cluster>.teleport.cluster.local`
    /// server name clients use).
    pub fn auth_cert(
        &self,
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        self.host_cert("Auth", &[])
    }

    fn host_cert(
        &self,
        role: &str,
        names: &[String],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let mut sans: Vec<String> = Vec::with_capacity(names.len() + CLUSTER_LOCAL_NAMES.len());
        for name in names.iter().map(String::as_str).chain(CLUSTER_LOCAL_NAMES) {
            ensure!(!name.is_empty(), "empty server name");
            if !sans.iter().any(|n| n == name) {
                sans.push(name.to_owned());
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .with_context(|| format!("generating the {role} TLS key"))?;

        // Like a Teleport host identity: CN = <host UUID>.<cluster>, O = the system role.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, go_string(role));
        dn.push(
            DnType::CommonName,
            go_string(&format!("{}.{}", uuid::Uuid::new_v4(), self.cluster_name)),
        );
        push_oid(&mut dn, oid::TELEPORT_CLUSTER, &self.cluster_name)?;

        let now = unix_seconds(SystemTime::now())?;
        let mut params = leaf_params(
            dn,
            now.saturating_sub(BACKDATE.as_secs()),
            now + SERVER_CERT_TTL.as_secs(),
        )?;
        params.subject_alt_names = CertificateParams::new(sans)
            .context("invalid server name")?
            .subject_alt_names;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // GenerateCertificate puts both on every certificate, host ones included.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &*self.host.tls)
            .with_context(|| format!("signing the {role} TLS certificate"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }
}

/// Parameters shared by leaf certificates (`GenerateCertificate`): random serial below 2^128,
/// the validity window, `BasicConstraintsValid` with `IsCA=false`, and an authority key
/// identifier (Go copies the issuer's subject key identifier).
pub(super) fn leaf_params(
    dn: DistinguishedName,
    not_before: u64,
    not_after: u64,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.not_before = datetime(not_before)?;
    params.not_after = datetime(not_after)?;
    params.is_ca = IsCa::NoCa;
    params.custom_extensions = vec![not_ca_extension()];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Critical basicConstraints with an empty SEQUENCE, which is how Go (and DER, where `cA`
/// defaults to FALSE) writes `IsCA=false`. rcgen's `IsCa::ExplicitNoCa` writes an explicit
/// `BOOLEAN FALSE` instead, which strict DER readers may refuse.
fn not_ca_extension() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

/// Appends a Teleport ExtraName (`pkix.AttributeTypeAndValue{Type: oid, Value: value}`).
fn push_oid(dn: &mut DistinguishedName, oid: ObjectIdentifier, value: &str) -> anyhow::Result<()> {
    let arcs = oid.arcs().map(u64::from).collect();
    dn.push(DnType::CustomDnType(arcs), go_string(value));
    Ok(())
}
