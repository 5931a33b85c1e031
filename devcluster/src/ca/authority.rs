//! The dev cluster's certificate authorities: the user, host and database CAs, each a TLS CA
//! certificate with its key and an SSH key, and what they show of themselves.

use std::fmt;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, ensure};
use rand_core::OsRng;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use super::template::{BACKDATE, datetime, go_string, random_serial, unix_seconds};

const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// Teleport's `defaults.CATTL` is ten years.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The user, host, database and SPIFFE CAs of one dev cluster (no OpenSSH or JWT CAs).
pub struct ClusterCa {
    pub(super) cluster_name: String,
    pub(super) user: Authority,
    pub(super) host: Authority,
    /// The database CA: only its TLS half is used (`types.DatabaseCA`).
    pub(super) database: Authority,
    /// The SPIFFE CA's X.509 half (`types.SPIFFECA`; `spiffe.rs`).
    pub(super) spiffe: Authority,
    /// The SPIFFE CA's JWT key, made when first needed.
    pub(super) spiffe_jwt: std::sync::OnceLock<JwtKey>,
}

/// The SPIFFE CA's JWT key, RSA-2048, as ring signs with it (made in `spiffe.rs`).
pub(super) struct JwtKey {
    pub(super) pair: ring::signature::RsaKeyPair,
    /// PKIX PEM of the public key.
    pub(super) public_pem: String,
    /// `jwt.KeyID`: base64url (no padding) of the SHA-256 of the PKCS#1 public key.
    pub(super) kid: String,
}

/// One Teleport certificate authority: a TLS CA certificate with its key, and an SSH key.
pub(super) struct Authority {
    pub(super) tls: CertifiedIssuer<'static, KeyPair>,
    pub(super) ssh: ssh_key::PrivateKey,
    pub(super) ssh_public_wire: Vec<u8>,
    /// `ssh-ed25519 AAAA...` (no comment).
    pub(super) ssh_public_openssh: String,
}

impl fmt::Debug for ClusterCa {
    /// Names the cluster only: no key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Makes fresh user and host authorities for `cluster_name`.
    pub fn generate(cluster_name: &str) -> anyhow::Result<Self> {
        ensure!(!cluster_name.is_empty(), "the cluster name is empty");
        Ok(Self {
            cluster_name: cluster_name.to_owned(),
            user: Authority::generate(cluster_name).context("generating the user CA")?,
            host: Authority::generate(cluster_name).context("generating the host CA")?,
            database: Authority::generate(cluster_name).context("generating the database CA")?,
            spiffe: Authority::generate(cluster_name).context("generating the SPIFFE CA")?,
            spiffe_jwt: std::sync::OnceLock::new(),
        })
    }

    /// The cluster name (the CA certificates' O and CN).
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// PEM of the host CA's TLS certificate: the bundle a client trusts to reach the proxy.
    pub fn host_ca_pem(&self) -> String {
        self.host.tls.pem()
    }

    /// PEM of the user CA's TLS certificate: what the dev server trusts for bot client certs.
    pub fn user_ca_pem(&self) -> String {
        self.user.tls.pem()
    }

    /// DER of the host CA's TLS certificate.
    pub fn host_ca_der(&self) -> CertificateDer<'static> {
        self.host.tls.der().clone()
    }

    /// DER of the user CA's TLS certificate.
    pub fn user_ca_der(&self) -> CertificateDer<'static> {
        self.user.tls.der().clone()
    }

    /// DER of the TLS CA certs a join returns: user CA first, then host CA (Teleport's order,
    /// `cas = [UserCA, HostCA]` in `generateUserCert`).
    pub fn tls_ca_ders(&self) -> Vec<Vec<u8>> {
        vec![self.user.tls.der().to_vec(), self.host.tls.der().to_vec()]
    }

    /// SSH wire blobs of the CA public keys a join returns: user CA first, then host CA.
    pub fn ssh_ca_wires(&self) -> Vec<Vec<u8>> {
        vec![
            self.user.ssh_public_wire.clone(),
            self.host.ssh_public_wire.clone(),
        ]
    }
}

impl Authority {
    /// `GenerateSelfSignedCAWithConfig` (`lib/tlsca/parsegen.go`) for the TLS part, a fresh
    /// Ed25519 key for the SSH part.
    fn generate(cluster_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let serial = random_serial();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, go_string(cluster_name));
        dn.push(DnType::CommonName, go_string(cluster_name));
        // "this is important, otherwise go will accept certificate authorities signed by the
        // same private key and having the same subject": the subject carries the serial, which
        // also tells the user CA and host CA (same O and CN) apart.
        dn.push(
            DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
            go_string(&u128::from_be_bytes(serial).to_string()),
        );

        let now = unix_seconds(SystemTime::now())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = datetime(now.saturating_sub(BACKDATE.as_secs()))?;
        params.not_after = datetime(now + CA_TTL.as_secs())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Teleport: KeyEncipherment | DigitalSignature | CertSign.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        let tls = CertifiedIssuer::self_signed(params, key)?;

        let ssh = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from(
            ed25519_dalek::SigningKey::generate(&mut OsRng),
        ));
        let ssh_public_wire = ssh.public_key().to_bytes()?;
        let ssh_public_openssh = ssh.public_key().to_openssh()?;
        Ok(Self {
            tls,
            ssh,
            ssh_public_wire,
            ssh_public_openssh,
        })
    }
}
