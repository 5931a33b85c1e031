//! The web API subset on the Proxy's port: `/webapi/find` (`/webapi/ping`) and the public CA
//! export.

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use keybound_teleport::suite::Suite;

use crate::cluster::Cluster;

/// The web API subset: `/webapi/find` and the public CA export.
pub(super) fn web(
    cluster: &Cluster,
    local: SocketAddr,
    request: &hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let respond = |status: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is well-formed")
    };
    match request.uri().path() {
        "/webapi/find" | "/webapi/ping" => respond(
            200,
            "application/json",
            find_document(cluster, local).to_string(),
        ),
        "/webapi/auth/export" => {
            let kind = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("type=")))
                .unwrap_or("");
            match cluster.ca().export(kind) {
                Some(pem) => respond(200, "text/plain", pem),
                None => respond(
                    400,
                    "text/plain",
                    format!("unsupported authority type {kind:?}\n"),
                ),
            }
        }
        path => respond(
            404,
            "application/json",
            format!(r#"{{"error":{{"message":"not found: {path}"}}}}"#),
        ),
    }
}

/// What `/webapi/find` (and `/webapi/ping`) answers: the Proxy at `local` and the cluster.
fn find_document(cluster: &Cluster, local: SocketAddr) -> serde_json::Value {
    let web = format!("{}:{}", "localhost", local.port());
    let mut auth = serde_json::json!({
        "type": "local", "private_key_policy": "none", "piv_slot": "", "piv_pin_cache_duration": 0,
        "device_trust": {}, "has_motd": false, "default_session_ttl": "12h0m0s",
    });
    if cluster.config().suite != Suite::Unspecified {
        auth["signature_algorithm_suite"] =
            serde_json::Value::String(cluster.config().suite.to_string());
    }
    serde_json::json!({
        "auth": auth,
        "proxy": {
            "kube": {},
            "ssh": {"listen_addr": web, "web_listen_addr": web, "public_addr": web},
            "db": {},
            "tls_routing_enabled": true,
        },
        "server_version": cluster.config().server_version,
        "min_client_version": format!("{}.0.0-aa", semver::Version::parse(&cluster.config().server_version).map(|v| v.major.saturating_sub(1)).unwrap_or(17)),
        "cluster_name": cluster.ca().cluster_name(),
        "automatic_upgrades": false,
        "edition": "community",
        "fips": false,
    })
}
