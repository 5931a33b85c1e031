//! The bot identity a join returns: the subject key, the certificates, the cluster's CAs, and
//! what keybound reads out of them.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use keybound_teleport::pem::{der_to_pem, pem_certs, pem_to_der};
use keybound_teleport::subject::{attributes, oid};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_cert::der::Decode as _;
use zeroize::Zeroizing;

use crate::untrusted::ClusterName;

/// The files of an identity, as tbot names them in its storage and in an identity output
/// (`lib/tbot/identity/identity.go`).
pub mod files {
    /// The subject private key.
    pub const KEY: &str = "key";
    /// The subject public key, `authorized_keys`.
    pub const PUBLIC_KEY: &str = "key.pub";
    /// The SSH certificate.
    pub const SSH_CERT: &str = "key-cert.pub";
    /// The TLS certificate.
    pub const TLS_CERT: &str = "tlscert";
    /// Storage only: every TLS CA, `$`-joined.
    pub const TLS_CA_CERTS: &str = "tlscacerts";
    /// Storage only: every SSH CA key, `$`-joined.
    pub const SSH_CA_CERTS: &str = "sshcacerts";
}

/// A bot identity: everything tbot keeps in its storage and writes to its outputs. Also the
/// role-impersonated identity an output holds.
#[derive(Clone)]
pub struct Identity {
    /// The subject private key, PEM (PKCS#8, or PKCS#1 for RSA).
    pub private_key_pem: Zeroizing<String>,
    /// The subject public key, `authorized_keys` line.
    pub ssh_public_key: String,
    /// The SSH user certificate, `authorized_keys` line.
    pub ssh_cert: String,
    /// The X.509 client certificate, PEM.
    pub tls_cert_pem: String,
    /// The user CA's TLS certificates (the issuer of `tls_cert_pem`), PEM.
    pub user_ca_pems: Vec<String>,
    /// The other CA TLS certificates the cluster returned (its host CA), PEM.
    pub host_ca_pems: Vec<String>,
    /// The user CA's SSH keys (the signer of `ssh_cert`), `authorized_keys` lines.
    pub ssh_user_ca_keys: Vec<String>,
    /// The host CA's SSH keys, `authorized_keys` lines.
    pub ssh_host_ca_keys: Vec<String>,
    /// What the certificates say.
    pub info: IdentityInfo,
}

/// Facts read from the certificates.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct IdentityInfo {
    /// The Teleport user (`bot-<name>`).
    pub username: String,
    /// The bot's name.
    pub bot_name: String,
    /// The bot instance this join created or continued, when the cluster says.
    pub bot_instance_id: Option<String>,
    /// The certificate generation, when the cluster says.
    pub generation: Option<u64>,
    /// Who impersonated the roles, for a role-impersonated (output) identity.
    pub impersonator: Option<String>,
    /// The cluster's name, checked ([`ClusterName`]): it reaches `ssh_config`, `known_hosts` and
    /// the identity file.
    pub cluster_name: ClusterName,
    /// When the TLS certificate expires.
    pub not_after: SystemTime,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from what a join returned: the TLS certificate and CAs as DER, the SSH
    /// certificate and CA keys as SSH wire blobs (the new RPC's encodings).
    pub fn from_wire(
        private_key_pem: Zeroizing<String>,
        ssh_public_key: String,
        tls_cert_der: &[u8],
        tls_ca_ders: &[Vec<u8>],
        ssh_cert_wire: &[u8],
        ssh_ca_wires: &[Vec<u8>],
    ) -> anyhow::Result<Self> {
        let ssh_cert = ssh_key::Certificate::from_bytes(ssh_cert_wire)
            .context("the SSH certificate is not an OpenSSH certificate")?;
        let ssh_cas = ssh_ca_wires
            .iter()
            .map(|w| ssh_key::PublicKey::from_bytes(w))
            .collect::<Result<Vec<_>, _>>()
            .context("an SSH CA key is not an SSH public key")?;
        Self::assemble(
            private_key_pem,
            ssh_public_key,
            tls_cert_der.to_vec(),
            tls_ca_ders.to_vec(),
            ssh_cert,
            ssh_cas,
        )
    }

    /// Builds an identity from the legacy RPC's text encodings: PEM certificates and
    /// `authorized_keys` lines (`proto.Certs`).
    pub fn from_text(
        private_key_pem: Zeroizing<String>,
        ssh_public_key: String,
        tls_cert_pem: &[u8],
        tls_ca_pems: &[Vec<u8>],
        ssh_cert_line: &[u8],
        ssh_ca_lines: &[Vec<u8>],
    ) -> anyhow::Result<Self> {
        let tls_cert = pem_to_der(tls_cert_pem).context("the TLS certificate")?;
        let mut tls_cas = Vec::new();
        for pem in tls_ca_pems {
            tls_cas.extend(pem_certs(pem).context("a TLS CA certificate")?);
        }
        let ssh_cert = ssh_cert_from_line(ssh_cert_line)?;
        let ssh_cas = ssh_ca_lines
            .iter()
            .map(|l| {
                std::str::from_utf8(l)
                    .map_err(|_| anyhow!("an SSH CA key is not text"))
                    .and_then(|l| {
                        ssh_key::PublicKey::from_openssh(l.trim())
                            .context("an SSH CA key is not an SSH public key")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::assemble(
            private_key_pem,
            ssh_public_key,
            tls_cert,
            tls_cas,
            ssh_cert,
            ssh_cas,
        )
    }

    /// Builds the role-impersonated identity of an output from what `GenerateUserCerts`
    /// returned for `key` (`lib/tbot/identity/generator.go`): its TLS CAs are the user CA it
    /// returned plus `host_ca_pems` (from `GetClusterCACert`), and its SSH CAs are replaced by
    /// the bot's host CA keys, since Auth returns only the user CA here.
    pub fn from_user_certs(
        private_key_pem: Zeroizing<String>,
        ssh_public_key: String,
        spki_der: &[u8],
        certs: &keybound_proto::proto::Certs,
        host_ca_pems: Vec<String>,
        ssh_host_ca_keys: Vec<String>,
    ) -> anyhow::Result<Self> {
        let tls_cert = pem_to_der(&certs.tls).context("the TLS certificate")?;
        let cert = x509_cert::Certificate::from_der(&tls_cert)
            .context("the TLS certificate is not X.509")?;
        let issued_for =
            x509_cert::der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)?;
        if issued_for != spki_der {
            bail!("the TLS certificate is for another key than the one sent");
        }
        let ssh_cert = ssh_cert_from_line(&certs.ssh)?;
        let ours = ssh_key::PublicKey::from_openssh(&ssh_public_key)
            .context("the output's SSH public key")?;
        if ssh_cert.public_key() != ours.key_data() {
            bail!("the SSH certificate is for another key than the one sent");
        }
        let mut user_ca_pems = Vec::new();
        for pem in &certs.tlsca_certs {
            for der in pem_certs(pem).context("a TLS CA certificate")? {
                user_ca_pems.push(der_to_pem(&der));
            }
        }
        Ok(Self {
            private_key_pem,
            ssh_public_key,
            ssh_cert: ssh_cert.to_openssh()?.trim().to_owned(),
            tls_cert_pem: der_to_pem(&tls_cert),
            user_ca_pems,
            host_ca_pems,
            ssh_user_ca_keys: Vec::new(),
            ssh_host_ca_keys,
            info: read_info(&tls_cert)?,
        })
    }

    /// Reads the identity tbot's storage layout holds in `dir` (`key`, `key.pub`,
    /// `key-cert.pub`, `tlscert`, and the `$`-joined `tlscacerts` and `sshcacerts`). `Ok(None)`
    /// when there is none; an error when it is there but unusable (a key that does not match its
    /// certificate, say).
    pub fn load(dir: &std::path::Path) -> anyhow::Result<Option<Self>> {
        let read = |name: &str| -> anyhow::Result<Option<String>> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow!("cannot read {}: {e}", dir.join(name).display())),
            }
        };
        let Some(tls_cert) = read(files::TLS_CERT)? else {
            return Ok(None);
        };
        let missing = |name: &str| anyhow!("{} is missing", dir.join(name).display());
        let key = Zeroizing::new(read(files::KEY)?.ok_or_else(|| missing(files::KEY))?);
        let ssh_public = read(files::PUBLIC_KEY)?.ok_or_else(|| missing(files::PUBLIC_KEY))?;
        let ssh_cert = read(files::SSH_CERT)?.ok_or_else(|| missing(files::SSH_CERT))?;
        let tls_cas = read(files::TLS_CA_CERTS)?.ok_or_else(|| missing(files::TLS_CA_CERTS))?;
        let ssh_cas = read(files::SSH_CA_CERTS)?.ok_or_else(|| missing(files::SSH_CA_CERTS))?;
        let split = |text: &str| -> Vec<Vec<u8>> {
            text.split('$')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| p.as_bytes().to_vec())
                .collect()
        };
        let identity = Self::from_text(
            key,
            ssh_public.trim().to_owned(),
            tls_cert.as_bytes(),
            &split(&tls_cas),
            ssh_cert.as_bytes(),
            &split(&ssh_cas),
        )?;
        identity.check_key()?;
        Ok(Some(identity))
    }

    /// Checks that the private key is the key of both certificates (a storage directory caught
    /// between two writes could hold a new key and an old certificate).
    pub fn check_key(&self) -> anyhow::Result<()> {
        let spki = public_spki_of(&self.private_key_pem)?;
        let cert = x509_cert::Certificate::from_der(&pem_to_der(self.tls_cert_pem.as_bytes())?)
            .context("the TLS certificate is not X.509")?;
        let certified =
            x509_cert::der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)?;
        if certified != spki {
            bail!("the private key is not the TLS certificate's key");
        }
        let ssh = ssh_key::Certificate::from_openssh(&self.ssh_cert)?;
        let public = keybound_signer::PublicKey::from_spki_der(&spki)
            .map(|k| k.ssh_wire())
            .or_else(|_| rsa_ssh_wire(&spki))?;
        if ssh_key::PublicKey::from(ssh.public_key().clone()).to_bytes()? != public {
            bail!("the private key is not the SSH certificate's key");
        }
        Ok(())
    }

    fn assemble(
        private_key_pem: Zeroizing<String>,
        ssh_public_key: String,
        tls_cert: Vec<u8>,
        tls_cas: Vec<Vec<u8>>,
        ssh_cert: ssh_key::Certificate,
        ssh_cas: Vec<ssh_key::PublicKey>,
    ) -> anyhow::Result<Self> {
        let info = read_info(&tls_cert)?;
        // The user CA is whichever CA the client certificate chains to (Teleport sends the user
        // CA first and then the host CA, but both carry the cluster's name as their subject).
        let (user_cas, host_cas): (Vec<_>, Vec<_>) =
            tls_cas.into_iter().partition(|ca| issued_by(&tls_cert, ca));
        if user_cas.is_empty() {
            bail!("the cluster returned no CA that issued the bot's TLS certificate");
        }
        let signer = ssh_cert.signature_key();
        let (ssh_user, ssh_host): (Vec<_>, Vec<_>) =
            ssh_cas.into_iter().partition(|ca| ca.key_data() == signer);
        if ssh_user.is_empty() {
            bail!("the cluster returned no SSH CA key that signed the bot's SSH certificate");
        }
        let line = |k: &ssh_key::PublicKey| -> anyhow::Result<String> {
            Ok(ssh_key::PublicKey::from(k.key_data().clone())
                .to_openssh()?
                .trim()
                .to_owned())
        };
        Ok(Self {
            private_key_pem,
            ssh_public_key,
            ssh_cert: ssh_cert.to_openssh()?.trim().to_owned(),
            tls_cert_pem: der_to_pem(&tls_cert),
            user_ca_pems: user_cas.iter().map(|d| der_to_pem(d)).collect(),
            host_ca_pems: host_cas.iter().map(|d| der_to_pem(d)).collect(),
            ssh_user_ca_keys: ssh_user.iter().map(line).collect::<anyhow::Result<_>>()?,
            ssh_host_ca_keys: ssh_host.iter().map(line).collect::<anyhow::Result<_>>()?,
            info,
        })
    }
}

/// Whether `ca` issued `cert`, checked by verifying the chain (as a client-certificate verifier
/// would), not by comparing names. The check runs at the certificate's own start of validity,
/// so an identity that has since expired (one loaded from storage) still finds its CA.
fn issued_by(cert: &[u8], ca: &[u8]) -> bool {
    let Ok(parsed) = x509_cert::Certificate::from_der(cert) else {
        return false;
    };
    let start = parsed
        .tbs_certificate
        .validity
        .not_before
        .to_unix_duration();
    // The cluster chose the date: checked, as every computation on a server's time is
    // (`crate::servertime`), though X.509 dates end in 9999.
    let Some(at) = start.checked_add(std::time::Duration::from_secs(1)) else {
        return false;
    };
    let at = UnixTime::since_unix_epoch(at);
    let mut roots = RootCertStore::empty();
    if roots.add(CertificateDer::from(ca.to_vec())).is_err() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()
    else {
        return false;
    };
    verifier
        .verify_client_cert(&CertificateDer::from(cert.to_vec()), &[], at)
        .is_ok()
}

fn read_info(der: &[u8]) -> anyhow::Result<IdentityInfo> {
    let cert = x509_cert::Certificate::from_der(der).context("the TLS certificate is not X.509")?;
    let tbs = &cert.tbs_certificate;
    let subject = attributes(&tbs.subject);
    let issuer = attributes(&tbs.issuer);
    let username = subject
        .one(oid::COMMON_NAME)
        .context("the TLS certificate has no common name")?;
    let bot_name = subject
        .one(oid::BOT_NAME)
        .or_else(|| username.strip_prefix("bot-").map(str::to_owned))
        .unwrap_or_else(|| username.clone());
    let cluster_name = subject
        .one(oid::TELEPORT_CLUSTER)
        .or_else(|| issuer.one(oid::ORGANIZATION))
        .context("the TLS certificate names no cluster")?;
    let cluster_name =
        ClusterName::parse(&cluster_name, "the TLS certificate").map_err(|e| anyhow!(e))?;
    Ok(IdentityInfo {
        username,
        bot_name,
        bot_instance_id: subject.one(oid::BOT_INSTANCE_ID),
        generation: subject.one(oid::GENERATION).and_then(|g| g.parse().ok()),
        impersonator: subject.one(oid::IMPERSONATOR).filter(|i| !i.is_empty()),
        cluster_name,
        not_after: tbs.validity.not_after.to_system_time(),
    })
}

/// An OpenSSH certificate from its `authorized_keys`-style line, without the line's comment:
/// the comment is text the cluster chose (up to the end of the line, newlines included) that
/// would otherwise be written back into `key-cert.pub` and the identity file, where a line of
/// its own could add, say, an `@cert-authority *` entry.
fn ssh_cert_from_line(line: &[u8]) -> anyhow::Result<ssh_key::Certificate> {
    let cert = ssh_key::Certificate::from_openssh(
        std::str::from_utf8(line)
            .context("the SSH certificate is not text")?
            .trim(),
    )
    .context("the SSH certificate is not an OpenSSH certificate")?;
    // The wire form has no comment; reading it back drops the comment.
    Ok(ssh_key::Certificate::from_bytes(&cert.to_bytes()?)?)
}

/// The PKIX public key of a PEM private key: PKCS#8 (ECDSA P-256) or PKCS#1 (RSA), as
/// Teleport writes the subject keys.
fn public_spki_of(private_pem: &str) -> anyhow::Result<Vec<u8>> {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    // ring first: it checks the key pair with its fast P-256 (the keys keybound writes include
    // their public key); RustCrypto for a PKCS#8 key written without one.
    if let Ok((label, der)) = pem_rfc7468::decode_vec(private_pem.as_bytes()) {
        let der = Zeroizing::new(der);
        if label == "PRIVATE KEY"
            && let Ok(key) = crate::subject_key::p256_public_of_pkcs8(&der)
        {
            return Ok(key.to_public_key_der()?.into_vec());
        }
    }
    if let Ok(key) = p256::SecretKey::from_pkcs8_pem(private_pem) {
        return Ok(key.public_key().to_public_key_der()?.into_vec());
    }
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs1_pem(private_pem) {
        return Ok(key.to_public_key().to_public_key_der()?.into_vec());
    }
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem) {
        return Ok(key.to_public_key().to_public_key_der()?.into_vec());
    }
    bail!("the private key is not a PKCS#8 P-256 or a PKCS#1 RSA key")
}

/// The SSH wire blob of an RSA PKIX public key.
fn rsa_ssh_wire(spki: &[u8]) -> anyhow::Result<Vec<u8>> {
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    let key = rsa::RsaPublicKey::from_public_key_der(spki).context("not an RSA public key")?;
    let data = ssh_key::public::KeyData::Rsa(ssh_key::public::RsaPublicKey {
        e: ssh_key::Mpint::from_positive_bytes(&key.e().to_bytes_be())?,
        n: ssh_key::Mpint::from_positive_bytes(&key.n().to_bytes_be())?,
    });
    Ok(ssh_key::PublicKey::from(data).to_bytes()?)
}
