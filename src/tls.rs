//! TLS client configuration: how keybound decides to trust a cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What verifies the cluster's certificate.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Trust {
    /// The operating system's trust store.
    System,
    /// A PEM bundle of CA certificates (`--ca-path`, `onboarding.ca_path`).
    Bundle(PathBuf),
    /// No verification at all (`--insecure`, `insecure: true`): development only.
    Insecure,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `trust` and offering `alpn`, in order.
pub fn client_config(trust: &Trust, alpn: &[&[u8]]) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("no TLS protocol versions")?;
    let mut config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        Trust::System => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
        Trust::Bundle(path) => builder
            .with_root_certificates(bundle_roots(path)?)
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The system's trust store, read once per process (as Go's `x509.SystemCertPool`, which tbot
/// uses, does): reading and parsing it costs milliseconds, and every join and renewal needs it.
fn system_roots() -> anyhow::Result<Arc<RootCertStore>> {
    static ROOTS: std::sync::OnceLock<Result<Arc<RootCertStore>, String>> =
        std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            load_system_roots()
                .map(Arc::new)
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn load_system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!(
            "no CA certificates in the system trust store; install the ca-certificates package, \
             or pass --ca-path with the cluster's CA bundle"
        );
    }
    Ok(roots)
}

fn bundle_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("CA bundle {}: cannot read PEM certificates", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!(
            "CA bundle {}: holds no usable CA certificate (expected PEM \"CERTIFICATE\" blocks)",
            path.display()
        );
    }
    Ok(roots)
}

/// The verifier of [`Trust::Insecure`], for a configuration built elsewhere (one that presents
/// a client certificate).
pub fn no_verification() -> Arc<dyn ServerCertVerifier> {
    Arc::new(NoVerification(provider().signature_verification_algorithms))
}

/// Accepts any certificate but still checks the handshake signatures, so the session is at least
/// bound to the key the server showed.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
