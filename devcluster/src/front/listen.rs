//! The listeners: the Proxy's port, where every connection is routed by the ALPN of its
//! ClientHello (as a Teleport Proxy with TLS routing), and Auth's own port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::app::{app_named, app_tls, serve_app_connection};
use super::connection::{Tls, serve_auth_connection, serve_proxy_connection, serve_ssh_connection};
use super::kube::{KUBE_SNI_PREFIX, kube_tls, serve_kube_connection};
use super::services::Services;
use super::tls::{ALPN_SSH_GRPC, Endpoints};
use crate::cluster::Cluster;

/// The ALPN prefix of the Proxy's pass-through route to Auth (`ProtocolAuth`,
/// `lib/srv/alpnproxy/common/protocols.go`), followed by the encoded cluster name.
const ALPN_AUTH_PREFIX: &[u8] = b"teleport-auth@";
/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // gRPC writes small frames; without this, Nagle's algorithm and the peer's
                // delayed ACKs add 40 ms to every exchange.
                let _ = tcp.set_nodelay(true);
                return (tcp, peer);
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The Proxy's web port: every connection is routed by the ALPN of its ClientHello.
pub(super) async fn serve_proxy_port(
    listener: TcpListener,
    endpoints: Endpoints,
    services: Services,
    cluster: Arc<Cluster>,
) {
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    // The connections end with the port's task: a stopped cluster serves nobody any more, as
    // a Teleport process that is gone.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = accept(&listener).await;
        while connections.try_join_next().is_some() {}
        let (endpoints, services, cluster) = (endpoints.clone(), services.clone(), cluster.clone());
        connections.spawn(async move {
            let routed =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, route(tcp, &endpoints, &cluster)).await;
            let route = match routed {
                Ok(Ok(route)) => route,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let result = match route {
                Route::Auth(tls) => serve_auth_connection(tls, peer, services).await,
                Route::ProxySsh(tls) => serve_ssh_connection(tls, peer, services).await,
                Route::Proxy(tls) => {
                    serve_proxy_connection(tls, peer, local, services, cluster).await
                }
                Route::App(tls, app) => serve_app_connection(tls, app, cluster).await,
                Route::Kube(tls) => serve_kube_connection(tls, cluster).await,
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

enum Route {
    Auth(Tls),
    Proxy(Tls),
    /// An app, by the server name (its public address).
    App(Tls, crate::apps::App),
    /// The Kubernetes API, by the server name's prefix.
    Kube(Tls),
    /// The Proxy's SSH route (`teleport-proxy-ssh-grpc`).
    ProxySsh(Tls),
}

/// Reads the ClientHello and finishes the handshake as the endpoint its first ALPN value picks:
/// `teleport-auth@<hex cluster_name>.teleport.cluster.local` passes through to Auth,
/// `teleport-proxy-ssh-grpc` goes to the Proxy's SSH route (with client certificates), anything
/// else stays with the Proxy; but a server name that is an app's public address goes to the
/// echo app, and one starting `kube-teleport-proxy-alpn.` to the Kubernetes API.
async fn route(tcp: TcpStream, endpoints: &Endpoints, cluster: &Cluster) -> std::io::Result<Route> {
    let cluster_name = cluster.ca().cluster_name();
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let server_name = start.client_hello().server_name().map(str::to_owned);
    if let Some(name) = server_name
        .as_deref()
        .filter(|n| n.starts_with(KUBE_SNI_PREFIX))
    {
        let tls = kube_tls(cluster, name).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        return Ok(Route::Kube(start.into_stream(tls).await?));
    }
    let app = server_name.and_then(|name| app_named(cluster, &name));
    if let Some(app) = app {
        let tls = app_tls(cluster, &app).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        return Ok(Route::App(start.into_stream(tls).await?, app));
    }
    let first = start
        .client_hello()
        .alpn()
        .and_then(|mut protocols| protocols.next())
        .map(<[u8]>::to_vec);
    match first
        .as_deref()
        .and_then(|p| p.strip_prefix(ALPN_AUTH_PREFIX))
    {
        Some(encoded) => {
            let wanted = decode_cluster_name(encoded);
            if wanted.as_deref() != Some(cluster_name) {
                // Teleport would dial a leaf cluster's Auth here; the dev cluster has none.
                return Err(std::io::Error::other(format!(
                    "no route to the Auth of cluster {wanted:?}"
                )));
            }
            Ok(Route::Auth(
                start.into_stream(endpoints.auth.clone()).await?,
            ))
        }
        None if first.as_deref() == Some(ALPN_SSH_GRPC) => Ok(Route::ProxySsh(
            start.into_stream(endpoints.proxy_ssh.clone()).await?,
        )),
        None => Ok(Route::Proxy(
            start.into_stream(endpoints.proxy.clone()).await?,
        )),
    }
}

/// `apiutils.DecodeClusterName`: `<hex>.teleport.cluster.local` → the cluster's name.
fn decode_cluster_name(encoded: &[u8]) -> Option<String> {
    let hex = std::str::from_utf8(encoded)
        .ok()?
        .strip_suffix(".teleport.cluster.local")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Auth's own port.
pub(super) async fn serve_auth_port(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    services: Services,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = accept(&listener).await;
        while connections.try_join_next().is_some() {}
        let (acceptor, services) = (acceptor.clone(), services.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            if let Err(e) = serve_auth_connection(tls, peer, services).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
