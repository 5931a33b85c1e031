//! The built-in echo app: what the Proxy port answers for a TLS connection whose server name
//! is an app's `public_addr` (Teleport's Proxy routes app traffic by that name; the App Service
//! behind it would forward to the app). The client must show a certificate from the user CA
//! (TLS refuses a connection without one) routed to this app; the answer is JSON of what the
//! certificate says: the user, its roles, and the app route. A certificate routed to another
//! app, or to none, or whose roles' `app_labels` do not grant the app, gets a 403.

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keybound_teleport::subject::{attributes, oid};
use rustls::ServerConfig;
use x509_cert::der::Decode as _;

use super::connection::Tls;
use crate::apps::App;
use crate::cluster::Cluster;
use crate::labels::matches;

/// TLS for `app`: a host certificate for its public address; client certificates from the
/// user CA, required.
pub(super) fn app_tls(cluster: &Cluster, app: &App) -> anyhow::Result<Arc<ServerConfig>> {
    let mut users = rustls::RootCertStore::empty();
    users.add(cluster.ca().user_ca_der())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(users),
        provider.clone(),
    )
    .build()?;
    let (chain, key) = cluster
        .ca()
        .server_cert(std::slice::from_ref(&app.public_addr))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The app among `cluster`'s whose public address is `server_name`.
pub(super) fn app_named(cluster: &Cluster, server_name: &str) -> Option<App> {
    cluster
        .apps()
        .into_iter()
        .find(|a| a.public_addr.eq_ignore_ascii_case(server_name))
}

/// Serves one connection to `app`: every request gets the echo of the client's certificate,
/// or a 403.
pub(super) async fn serve_app_connection(
    tls: Tls,
    app: App,
    cluster: Arc<Cluster>,
) -> Result<(), String> {
    let answer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| echo(&cluster, &app, cert))
        .unwrap_or_else(|| Err("access denied: no client certificate".to_owned()));
    let service = hyper::service::service_fn(move |_request: hyper::Request<Incoming>| {
        let (status, body) = match &answer {
            Ok(json) => (200, json.to_string()),
            Err(message) => (
                403,
                serde_json::json!({ "error": { "message": message } }).to_string(),
            ),
        };
        let response = hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is well-formed");
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| e.to_string())
}

/// What the echo app answers for a verified client certificate `der`: its identity and route
/// as JSON, or why it is refused.
fn echo(cluster: &Cluster, app: &App, der: &[u8]) -> Result<serde_json::Value, String> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
    let attrs = attributes(&cert.tbs_certificate.subject);
    let user = attrs.one(oid::COMMON_NAME).unwrap_or_default();
    let roles = attrs.all(oid::ORGANIZATION);
    let Some(routed) = attrs.one(oid::APP_NAME) else {
        return Err(format!(
            "access denied: the certificate of {user:?} is not routed to an app; ask for one \
             routed to {:?}",
            app.name
        ));
    };
    let public_addr = attrs.one(oid::APP_PUBLIC_ADDR).unwrap_or_default();
    if routed != app.name || !public_addr.eq_ignore_ascii_case(&app.public_addr) {
        return Err(format!(
            "access denied: the certificate is routed to app {routed:?} ({public_addr}), not \
             to {:?} ({})",
            app.name, app.public_addr
        ));
    }
    let granted = roles
        .iter()
        .filter_map(|r| cluster.role(r))
        .any(|r| matches(&r.app_labels, &app.labels));
    if !granted {
        return Err(format!(
            "access denied to {user:?} connecting to app {:?}: no role grants it (app_labels)",
            app.name
        ));
    }
    Ok(serde_json::json!({
        "user": user,
        "roles": roles,
        "app": {
            "name": routed,
            "public_addr": public_addr,
            "cluster_name": attrs.one(oid::APP_CLUSTER_NAME).unwrap_or_default(),
            "session_id": attrs.one(oid::APP_SESSION_ID).unwrap_or_default(),
        },
    }))
}
