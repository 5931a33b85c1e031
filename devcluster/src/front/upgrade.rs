//! `/webapi/connectionupgrade` on the Proxy's web port, for clients behind a TLS-terminating
//! load balancer (`lib/web/conn_upgrade.go`): a WebSocket upgrade with subprotocol `alpn`,
//! after which the binary frames carry a TLS connection for the Proxy's ALPN router.
//!
//! Teleport hands the upgraded stream to the same ALPN router in process
//! (`alpnHandlerForWeb.HandleConnection`, `lib/service/service.go`); the dev cluster reaches its
//! router by connecting to its own web port, so every route (`teleport-auth@` included) works
//! through an upgrade, and the router sees the connection come from loopback.

use std::net::SocketAddr;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tracing::debug;

/// The subprotocol the dev cluster serves. Teleport also serves `alpn-ping` (its server pings
/// every 30 s); keybound asks only for `alpn`.
const SUBPROTOCOL: &str = "alpn";

/// Answers the upgrade request, and once the connection has switched, pumps it to `web_port`.
pub(super) fn connection_upgrade(
    mut request: hyper::Request<Incoming>,
    web_port: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let headers = request.headers();
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let websocket = values("upgrade").iter().any(|v| v == "websocket");
    let subprotocol = values("sec-websocket-protocol").contains(&SUBPROTOCOL.to_owned());
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (true, true, Some(key)) = (websocket, subprotocol, key) else {
        // Teleport answers an upgrade type it does not know with NotFound.
        return hyper::Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"error":{"message":"unsupported connection upgrade"}}"#,
            )))
            .expect("a static response is well-formed");
    };
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{}", keybound_teleport::wsframe::ACCEPT_GUID).as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let result = async {
            let upgraded = upgraded.await.map_err(std::io::Error::other)?;
            let router = tokio::net::TcpStream::connect(web_port).await?;
            router.set_nodelay(true)?;
            keybound_teleport::wsframe::pump(TokioIo::new(upgraded), router, false).await
        };
        if let Err(e) = result.await {
            debug!(error = %e, "upgraded connection ended with an error");
        }
    });
    hyper::Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", SUBPROTOCOL)
        .body(Full::new(Bytes::new()))
        .expect("a static response is well-formed")
}
