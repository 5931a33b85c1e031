//! The one file `ssh-proxy-command` reads: the tsh identity file an identity output writes
//! (`identity`; `lib/client/identityfile`, read by tbot's `KeyRingFromIdentityFile`): the private
//! key, the SSH certificate, the TLS certificate and the host CAs' TLS certificates, in that
//! order. The `@cert-authority` lines are OpenSSH's business (`known_hosts`).

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode as _;
use zeroize::Zeroizing;

use crate::output::identity::IDENTITY;

/// What the identity file holds that the connection to the Proxy needs.
pub(super) struct IdentityFile {
    /// The private key, DER (PKCS#8, PKCS#1 or SEC1).
    pub(super) key: PrivateKeyDer<'static>,
    /// The client certificate, DER.
    pub(super) tls_cert: CertificateDer<'static>,
    /// The CAs the Proxy's certificate must chain to (the identity's TLS CAs), DER.
    pub(super) tls_cas: Vec<CertificateDer<'static>>,
    /// The cluster the certificate was issued by (its issuer's `O`, Teleport's cluster name).
    pub(super) cluster: String,
    /// When the client certificate expires.
    pub(super) not_after: SystemTime,
}

impl IdentityFile {
    /// Reads `<dir>/identity`; the errors name the file and the fix.
    pub(super) fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(IDENTITY);
        let text = Zeroizing::new(std::fs::read(&path).map_err(|e| {
            anyhow!(
                "cannot read the identity file {}: {e}; --destination-dir must be an identity \
                 output's directory, written by keybound start (or tbot)",
                path.display()
            )
        })?);
        Self::parse(&text).with_context(|| {
            format!(
                "{} is not an identity file (key, SSH certificate, TLS certificate, CAs); \
                 --destination-dir must be an identity output's directory",
                path.display()
            )
        })
    }

    fn parse(text: &[u8]) -> anyhow::Result<Self> {
        let key = PrivateKeyDer::from_pem_slice(text).map_err(|_| anyhow!("no private key"))?;
        let mut certs = CertificateDer::pem_slice_iter(text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| anyhow!("a certificate block is not PEM"))?
            .into_iter();
        let tls_cert = certs.next().context("no TLS certificate")?;
        let tls_cas: Vec<_> = certs.collect();
        if tls_cas.is_empty() {
            bail!("no CA certificate after the TLS certificate");
        }
        let cert = x509_cert::Certificate::from_der(&tls_cert)
            .context("the TLS certificate is not X.509")?;
        let cluster = keybound_teleport::subject::attributes(&cert.tbs_certificate.issuer)
            .one(keybound_teleport::subject::oid::ORGANIZATION)
            .unwrap_or_default();
        Ok(Self {
            key,
            tls_cert,
            tls_cas,
            cluster,
            not_after: cert.tbs_certificate.validity.not_after.to_system_time(),
        })
    }
}
