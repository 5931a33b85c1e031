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
            proxy: true,
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
    /// Whether `addr` is a Proxy's, which may sit behind an L7 load balancer and then needs
    /// the ALPN connection upgrade ([`crate::upgrade`]).
    pub proxy: bool,
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
            proxy: false,
        }
    }
}

/// Opens TLS to `addr` as `dial` says and returns a gRPC channel over it.
pub async fn connect_with(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
    dial: Dial,
) -> Result<Channel, tonic::transport::Error> {
    connect_over(addr, tls, dial, None).await
}

/// How long a TCP connection opened ahead ([`Preconnect`]) may wait for its TLS handshake
/// before keybound dials afresh instead: below the five seconds Teleport's ALPN router gave the
/// ClientHello in older releases (`defaults.HandshakeReadDeadline`, `lib/defaults/defaults.go`,
/// 15 s today; `readHelloMessageWithoutTLSTermination` in `lib/srv/alpnproxy/proxy.go` closes
/// a connection whose hello comes later).
pub const PRECONNECT_MAX_IDLE: Duration = Duration::from_secs(4);

/// A TCP connection opened ahead of the TLS session that will use it, so that its handshake
/// round trip overlaps other work (the join, while the outputs' connection to Auth waits for the
/// identity it presents). Used at most once; a connection that failed, or waited longer than
/// [`PRECONNECT_MAX_IDLE`], is dropped and a fresh one dialled, so opening ahead never fails
/// where dialling then would not.
pub struct Preconnect {
    addr: HostPort,
    opened: std::time::Instant,
    task: tokio::task::JoinHandle<std::io::Result<TcpStream>>,
}

impl Preconnect {
    /// Starts opening TCP to `addr`.
    pub fn start(addr: &HostPort) -> Self {
        let target = addr.clone();
        Self {
            addr: addr.clone(),
            opened: std::time::Instant::now(),
            task: tokio::spawn(async move {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TcpStream::connect((target.host(), target.port())),
                )
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            }),
        }
    }

    /// The open connection to `addr`, if it is one, it opened, and it is fresh enough.
    async fn take(mut self, addr: &HostPort) -> Option<TcpStream> {
        if &self.addr != addr || self.opened.elapsed() > PRECONNECT_MAX_IDLE {
            return None;
        }
        match (&mut self.task).await {
            Ok(Ok(tcp)) if self.opened.elapsed() <= PRECONNECT_MAX_IDLE => Some(tcp),
            _ => None,
        }
    }
}

impl Drop for Preconnect {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// [`connect_with`], over the TCP connection `ahead` opened when it is usable.
pub async fn connect_over(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
    dial: Dial,
    ahead: Option<Preconnect>,
) -> Result<Channel, tonic::transport::Error> {
    let addr = addr.clone();
    // The channel calls its connector again when its connection has closed. It does not get
    // another: a connection is one TLS session, and whoever holds it (the agent keeps its
    // connection to Auth between renewals) opens a new one, with the identity and trust of the
    // moment, when it fails.
    let first = Arc::new(std::sync::Mutex::new(Some(ahead)));
    let connector = tower::service_fn(move |_: Uri| {
        let (addr, tls, dial) = (addr.clone(), tls.clone(), dial.clone());
        let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        async move {
            let Some(ahead) = first else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("the connection to {addr} closed"),
                ));
            };
            tls_stream(&addr, tls, &dial, ahead).await.map(TokioIo::new)
        }
    });
    // The URI only feeds the :authority header; the connector above chooses where to dial.
    Endpoint::from_static("http://teleport.cluster.local")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(connector)
        .await
}

/// What the inner TLS runs over: TCP, or the upgraded connection through a load balancer.
trait Carrier: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Carrier for T {}
type TlsStream = tokio_rustls::client::TlsStream<Box<dyn Carrier>>;

async fn tls_stream(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
    dial: &Dial,
    mut ahead: Option<Preconnect>,
) -> std::io::Result<TlsStream> {
    if !dial.proxy {
        return direct_tls_stream(addr, tls, dial, ahead).await;
    }
    let (required, direct) = match crate::upgrade::settled(addr) {
        Some(required) => (required, None),
        // Not known yet (the first dial there in this process): the upgrade test and the direct
        // handshake at once, as neither answer depends on the other, instead of the test's TCP
        // and TLS round trips before the direct ones. The direct connection carries nothing
        // before the test has said no upgrade is needed (only its TLS handshake has run), and is
        // dropped unused when one is.
        // An upgrade needed ends the direct attempt where it is: a handshake a load balancer
        // stalls is not waited for.
        None => {
            let mut direct =
                std::pin::pin!(direct_tls_stream(addr, tls.clone(), dial, ahead.take()));
            let mut test = std::pin::pin!(crate::upgrade::required(addr));
            let mut early = None;
            let required = loop {
                tokio::select! {
                    required = &mut test => break required,
                    done = &mut direct, if early.is_none() => early = Some(done),
                }
            };
            match (required, early) {
                (true, _) => (true, None),
                (false, Some(done)) => (false, Some(done)),
                (false, None) => (false, Some(direct.await)),
            }
        }
    };
    let result = if required {
        match crate::upgrade::dial(addr).await {
            Ok(upgraded) => tls_handshake(addr, tls, dial, Box::new(upgraded)).await,
            Err(e) => Err(e),
        }
    } else {
        match direct {
            Some(direct) => direct,
            None => direct_tls_stream(addr, tls, dial, ahead).await,
        }
        .map_err(|e| crate::upgrade::explain(addr, e))
    };
    if result.is_err() {
        crate::upgrade::forget(addr);
    }
    result
}

async fn direct_tls_stream(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
    dial: &Dial,
    ahead: Option<Preconnect>,
) -> std::io::Result<TlsStream> {
    use std::io::ErrorKind;
    let ahead = match ahead {
        Some(ahead) => ahead.take(addr).await,
        None => None,
    };
    let Some(tcp) = ahead else {
        return tls_handshake(addr, tls, dial, Box::new(tcp_dial(addr).await?)).await;
    };
    tcp.set_nodelay(true)?;
    match tls_handshake(addr, tls.clone(), dial, Box::new(tcp)).await {
        // The server closed the connection opened ahead before its hello came (it waited
        // too long, or the server restarted): once more on a fresh one, as without it.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ) =>
        {
            tls_handshake(addr, tls, dial, Box::new(tcp_dial(addr).await?)).await
        }
        other => other,
    }
}

async fn tcp_dial(addr: &HostPort) -> std::io::Result<TcpStream> {
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
    Ok(tcp)
}

async fn tls_handshake(
    addr: &HostPort,
    tls: Arc<ClientConfig>,
    dial: &Dial,
    carrier: Box<dyn Carrier>,
) -> std::io::Result<TlsStream> {
    use std::io::{Error, ErrorKind};
    let name = match &dial.server_name {
        Some(name) => name.clone(),
        None => ServerName::try_from(addr.host().to_owned())
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{:?}: {e}", addr.host())))?,
    };
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(tls).connect(name, carrier),
    )
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
