//! TLS for the endpoints: the Proxy's (a host certificate for the names clients dial; ALPN
//! `teleport-proxy-grpc`, `h2`, `http/1.1`), the Proxy's SSH route (the same certificate;
//! client certificates from the user CA if given; ALPN `teleport-proxy-ssh-grpc`, `h2`) and
//! Auth's (its own host certificate; client certificates from the user CA if given; `h2` only).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::ca::ClusterCa;

/// The ALPN protocol of the Proxy's gRPC route.
pub(super) const ALPN_GRPC: &[u8] = b"teleport-proxy-grpc";
/// The ALPN protocol of the Proxy's SSH route (`ProtocolProxySSHGRPC`,
/// `lib/srv/alpnproxy/common/protocols.go`).
pub(super) const ALPN_SSH_GRPC: &[u8] = b"teleport-proxy-ssh-grpc";

/// TLS for the two endpoints.
#[derive(Clone)]
pub(super) struct Endpoints {
    pub(super) proxy: Arc<ServerConfig>,
    pub(super) proxy_ssh: Arc<ServerConfig>,
    pub(super) auth: Arc<ServerConfig>,
}

impl Endpoints {
    /// The endpoints of a cluster whose Proxy listens on `addr`.
    pub(super) fn new(ca: &ClusterCa, addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            proxy: Arc::new(proxy(ca, addr)?),
            proxy_ssh: Arc::new(proxy_ssh(ca, addr)?),
            auth: Arc::new(auth(ca)?),
        })
    }
}

/// The names of the Proxy's certificate: `localhost`, the address it listens on and the
/// cluster's name.
fn proxy_names(ca: &ClusterCa, addr: SocketAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        addr.ip().to_string(),
        ca.cluster_name().to_owned(),
    ];
    names.dedup();
    names
}

/// The Proxy: its host certificate; no client certificates.
fn proxy(ca: &ClusterCa, addr: SocketAddr) -> anyhow::Result<ServerConfig> {
    let (chain, key) = ca.server_cert(&proxy_names(ca, addr))?;
    let mut proxy = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // `teleport-reversetunnel` is chosen when it is all a client offers, as Teleport's router
    // does: that is the test handshake by which clients decide whether they need the
    // connection upgrade (`IsALPNConnUpgradeRequired`, `api/client/alpn_conn_upgrade.go`).
    proxy.alpn_protocols = vec![
        ALPN_GRPC.to_vec(),
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        b"teleport-reversetunnel".to_vec(),
    ];
    Ok(proxy)
}

/// The Proxy's SSH route (`lib/service/service.go`, the SSH-gRPC server): its host certificate,
/// client certificates verified against the user CA if given (one without a certificate is
/// refused by the service with Teleport's "client is not authenticated").
fn proxy_ssh(ca: &ClusterCa, addr: SocketAddr) -> anyhow::Result<ServerConfig> {
    let mut users = rustls::RootCertStore::empty();
    users.add(ca.user_ca_der())?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(users), provider())
            .allow_unauthenticated()
            .build()?;
    let (chain, key) = ca.server_cert(&proxy_names(ca, addr))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_SSH_GRPC.to_vec(), b"h2".to_vec()];
    Ok(config)
}

/// Auth: client certificates from the user CA if given (`VerifyClientCertIfGiven`; a join
/// needs none), HTTP/2 only.
fn auth(ca: &ClusterCa) -> anyhow::Result<ServerConfig> {
    let mut users = rustls::RootCertStore::empty();
    users.add(ca.user_ca_der())?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(users), provider())
            .allow_unauthenticated()
            .build()?;
    let (chain, key) = ca.auth_cert()?;
    let mut auth = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    auth.alpn_protocols = vec![b"h2".to_vec()];
    Ok(auth)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
