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

use crate::values::HostPort;

/// `constants.APIDomain`: the name Auth's certificate carries and the gRPC `:authority`.
pub const API_DOMAIN: &str = "teleport.cluster.local";

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
    connect_with(
        addr,
        tls,
        Dial {
            server_name: None,
            accept: &[ALPN_PROXY_GRPC, ALPN_H2],
            expected: "teleport-proxy-grpc; is it a Teleport proxy?",
        },
    )
    .await
}

/// How [`connect_with`] talks TLS.
#[derive(Clone)]
pub struct Dial {
    /// The server name to send and verify; `None` uses the address's host.
    pub server_name: Option<ServerName<'static>>,
    /// The ALPN protocols the server may pick (the client config offers them).
    pub accept: &'static [&'static [u8]],
    /// What to say the server should have picked, when it picked something else.
    pub expected: &'static str,
}

impl Dial {
    /// Straight to Auth's own port (`auth_server`): ALPN `h2` and Auth's API server name, which
    /// its certificate carries whatever address it is reached by.
    pub fn auth() -> Self {
        Self {
            server_name: Some(
                ServerName::try_from(API_DOMAIN).expect("the API domain is a valid server name"),
            ),
            accept: &[ALPN_H2],
            expected: "h2; is it Teleport's Auth Service?",
        }
    }
}

/// Opens TLS to `addr` as `dial` says and returns a gRPC channel over it.
pub async fn connect_with(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
    dial: Dial,
) -> Result<Channel, tonic::transport::Error> {
    let addr = addr.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (addr, tls, dial) = (addr.clone(), tls.clone(), dial.clone());
        async move { tls_stream(&addr, tls, &dial).await.map(TokioIo::new) }
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
    dial: &Dial,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use std::io::{Error, ErrorKind};
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((addr.host(), addr.port())),
    )
    .await
    .map_err(|_| {
        Error::new(
            ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        )
    })??;
    tcp.set_nodelay(true)?;
    let name = match &dial.server_name {
        Some(name) => name.clone(),
        None => ServerName::try_from(addr.host().to_owned())
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{:?}: {e}", addr.host())))?,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::TimedOut,
                format!("TLS handshake with {addr} timed out"),
            )
        })??;
    match stream.get_ref().1.alpn_protocol() {
        Some(p) if dial.accept.contains(&p) => Ok(stream),
        other => Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "{addr} chose ALPN {} instead of {}",
                match other {
                    Some(p) => crate::untrusted::quoted(&String::from_utf8_lossy(p)).to_string(),
                    None => "None".to_owned(),
                },
                dial.expected
            ),
        )),
    }
}

/// `prefix`, then each distinct message of `error`'s chain (tonic wraps the interesting ones in
/// a bare "transport error").
pub fn describe(prefix: String, error: &dyn std::error::Error) -> String {
    let mut message = prefix;
    let mut source = Some(error);
    while let Some(e) = source {
        let text = e.to_string();
        if !message.ends_with(&text) && text != "transport error" {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}
