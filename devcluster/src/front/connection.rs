//! One TLS connection, once routed: gRPC to Auth (with the caller's identity), the Proxy's
//! SSH route (with the caller's identity), or the Proxy's gRPC join route or web API.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tracing::debug;

use super::services::Services;
use super::tls::ALPN_GRPC;
use super::web;
use crate::caller::Caller;
use crate::cluster::Cluster;

/// A TLS connection the server accepted.
pub(super) type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// One connection to Auth: gRPC with the caller's identity (if it showed a certificate) in
/// every request's extensions.
pub(super) async fn serve_auth_connection(
    tls: Tls,
    peer: SocketAddr,
    services: Services,
) -> Result<(), String> {
    serve_with_caller(tls, peer, services, false).await
}

/// One connection to the Proxy's SSH route: `TransportService` with the caller's identity (if
/// it showed a certificate) in every request's extensions.
pub(super) async fn serve_ssh_connection(
    tls: Tls,
    peer: SocketAddr,
    services: Services,
) -> Result<(), String> {
    serve_with_caller(tls, peer, services, true).await
}

async fn serve_with_caller(
    tls: Tls,
    peer: SocketAddr,
    services: Services,
    ssh: bool,
) -> Result<(), String> {
    let caller = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| match Caller::from_der(cert) {
            Ok(caller) => Some(caller),
            Err(e) => {
                debug!(%peer, error = %e, "unreadable client certificate");
                None
            }
        });
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(peer);
        if let Some(caller) = &caller {
            request.extensions_mut().insert(caller.clone());
        }
        let services = services.clone();
        async move {
            if ssh {
                services.route_ssh(request).await
            } else {
                services.route(request, true).await
            }
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| e.to_string())
}

/// One connection to the Proxy: the unauthenticated join services, or the web API.
pub(super) async fn serve_proxy_connection(
    tls: Tls,
    peer: SocketAddr,
    local: SocketAddr,
    services: Services,
    cluster: Arc<Cluster>,
) -> Result<(), String> {
    let grpc = tls.get_ref().1.alpn_protocol() == Some(ALPN_GRPC);
    let io = TokioIo::new(tls);
    if grpc {
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer);
            services.clone().route(request, false)
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string())
    } else {
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let cluster = cluster.clone();
            async move {
                Ok::<_, std::convert::Infallible>(
                    if request.uri().path() == "/webapi/connectionupgrade" {
                        super::upgrade::connection_upgrade(request, local)
                    } else {
                        web::web(&cluster, local, &request)
                    },
                )
            }
        });
        auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(io, service)
            .await
            .map_err(|e| e.to_string())
    }
}
