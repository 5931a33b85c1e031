//! The connection a join runs over: TLS to the Proxy with SNI and ALPN `teleport-proxy-grpc`
//! then `h2` (`lib/client/proxy/insecure/insecure.go`), and HTTP/2 gRPC inside it.
//!
//! The Proxy's ALPN router sends `teleport-proxy-grpc` to its public gRPC server; offering only
//! `h2` (tonic's default) would land on the web handler instead.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::HostPort;

/// ALPN value of the Proxy's unauthenticated gRPC server (`ProtocolProxyGRPCInsecure`,
/// `lib/srv/alpnproxy/common/protocols.go`).
pub const ALPN_PROXY_GRPC: &[u8] = b"teleport-proxy-grpc";
/// Plain HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// How long to wait for TCP and TLS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens TLS to `addr` offering `teleport-proxy-grpc, h2` and returns a gRPC channel over it.
/// Fails (as [`std::io::Error`] inside tonic's error) when the server does not pick one of them.
pub async fn connect(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let addr = addr.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (addr, tls) = (addr.clone(), tls.clone());
        async move { tls_stream(&addr, tls).await.map(TokioIo::new) }
    });
    // The URI only feeds the :authority header; the connector above chooses where to dial.
    Endpoint::from_static("http://teleport.cluster.local")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(connector)
        .await
}

async fn tls_stream(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use std::io::{Error, ErrorKind};
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((addr.host.as_str(), addr.port)),
    )
    .await
    .map_err(|_| {
        Error::new(
            ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        )
    })??;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(addr.host.clone())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{:?}: {e}", addr.host)))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::TimedOut,
                format!("TLS handshake with {addr} timed out"),
            )
        })??;
    match stream.get_ref().1.alpn_protocol() {
        Some(p) if p == ALPN_PROXY_GRPC || p == ALPN_H2 => Ok(stream),
        other => Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "{addr} chose ALPN {:?} instead of teleport-proxy-grpc; is it a Teleport proxy?",
                other.map(String::from_utf8_lossy)
            ),
        )),
    }
}
