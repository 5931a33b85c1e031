//! The built-in Kubernetes API: what the Proxy port answers for a TLS connection whose server
//! name is `kube-teleport-proxy-alpn.<anything>` (Teleport's Proxy routes Kubernetes traffic by
//! that prefix, `lib/srv/alpnproxy/common` `KubeTeleportProxyALPNPrefix`). The client must show
//! a certificate from the user CA. The Kubernetes cluster is the certificate's route
//! (`KubernetesCluster`, kubernetes v1 outputs) or the path's
//! (`/v1/teleport/<base64url cluster>/<base64url kube>/...`, kubernetes/v2 outputs, where a
//! certificate routed elsewhere is refused: "existing route in identity may not be
//! overwritten"). The roles must grant the cluster (`kubernetes_labels`) and some Kubernetes
//! user or group; otherwise the answer is a Kubernetes `Status` with 403.
//!
//! Enough of the API for `kubectl version`, `kubectl get namespaces` and `kubectl get pods`:
//! `/version`, discovery (`/api`, `/api/v1`, `/apis`), the namespaces `default` and
//! `kube-system`, and in each namespace one pod, `echo-<kube cluster>`, whose annotations say
//! who asked (the user, and the Kubernetes groups and users the certificate carries).

use std::sync::Arc;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keybound_teleport::subject::{attributes, oid};
use rustls::ServerConfig;
use serde_json::{Value, json};
use x509_cert::der::Decode as _;

use super::connection::Tls;
use crate::cluster::Cluster;
use crate::labels::matches;

/// The server-name prefix of the Proxy's Kubernetes route.
pub(super) const KUBE_SNI_PREFIX: &str = "kube-teleport-proxy-alpn.";

/// When the pods started (a fixed time, so that answers are the same each time).
const STARTED: &str = "2025-01-01T00:00:00Z";

/// TLS for the Kubernetes API at `server_name`: a host certificate for it; client
/// certificates from the user CA, required.
pub(super) fn kube_tls(cluster: &Cluster, server_name: &str) -> anyhow::Result<Arc<ServerConfig>> {
    let mut users = rustls::RootCertStore::empty();
    users.add(cluster.ca().user_ca_der())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(users),
        provider.clone(),
    )
    .build()?;
    let (chain, key) = cluster.ca().server_cert(&[server_name.to_owned()])?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who asks: what the client certificate says.
#[derive(Clone)]
struct Asker {
    user: String,
    roles: Vec<String>,
    route: Option<String>,
    groups: Vec<String>,
    kube_users: Vec<String>,
}

/// Serves one connection to the Kubernetes API.
pub(super) async fn serve_kube_connection(tls: Tls, cluster: Arc<Cluster>) -> Result<(), String> {
    let asker = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| x509_cert::Certificate::from_der(der).ok())
        .map(|cert| {
            let attrs = attributes(&cert.tbs_certificate.subject);
            Asker {
                user: attrs.one(oid::COMMON_NAME).unwrap_or_default(),
                roles: attrs.all(oid::ORGANIZATION),
                route: attrs.one(oid::KUBE_CLUSTER),
                groups: attrs.all(oid::KUBE_GROUPS),
                kube_users: attrs.all(oid::KUBE_USERS),
            }
        });
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let (status, body) = match &asker {
            Some(asker) => answer(&cluster, asker, &request),
            None => status(403, "Forbidden", "access denied: no client certificate"),
        };
        let response = hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a static response is well-formed");
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| e.to_string())
}

/// A Kubernetes `Status` answer.
fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

/// The answer to one request of `asker`. Discovery (`/version`, `/api`, `/apis`, `/api/v1`)
/// is answered for any client with a certificate, so that kubectl, which discovers before it
/// asks, gets to show the refusal of the request itself (it cannot read a `Status` answered
/// to discovery).
fn answer(cluster: &Cluster, asker: &Asker, request: &hyper::Request<Incoming>) -> (u16, Value) {
    let (routed, rest) = match split_path(cluster, request.uri().path()) {
        Ok(split) => split,
        Err(refusal) => return refusal,
    };
    let table = request
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=Table"));
    let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["version"] => {
            return (
                200,
                json!({
                    "major": "1", "minor": "31", "gitVersion": "v1.31.0+keybound-dev",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": STARTED,
                    "goVersion": "", "compiler": "rustc", "platform": "linux/amd64",
                }),
            );
        }
        ["api"] => {
            return (
                200,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        ["apis"] => {
            return (
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            );
        }
        ["api", "v1"] => return (200, resource_list()),
        _ => {}
    }
    let kube = match authorize(cluster, asker, routed) {
        Ok(kube) => kube,
        Err(refusal) => return refusal,
    };
    match parts.as_slice() {
        ["api", "v1", "namespaces"] => (200, namespaces(table)),
        ["api", "v1", "namespaces", ns, "pods"] => (200, pods(asker, &kube, ns, table)),
        ["api", "v1", "namespaces", _] | ["api", "v1", "namespaces", _, "pods", _] => status(
            404,
            "NotFound",
            "the dev cluster lists namespaces and pods only",
        ),
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// A request's path: the Kubernetes cluster of a `/v1/teleport/<cluster>/<kube>` path (checked
/// to be this Teleport cluster), and the Kubernetes API path after it.
fn split_path<'a>(
    cluster: &Cluster,
    path: &'a str,
) -> Result<(Option<String>, &'a str), (u16, Value)> {
    let Some(routed) = path.strip_prefix("/v1/teleport/") else {
        return Ok((None, path));
    };
    let mut parts = routed.splitn(3, '/');
    let decode = |part: Option<&str>| {
        part.and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
    };
    let (Some(teleport), Some(kube)) = (decode(parts.next()), decode(parts.next())) else {
        return Err(status(400, "BadRequest", "malformed /v1/teleport/ path"));
    };
    if teleport != cluster.ca().cluster_name() {
        return Err(status(
            404,
            "NotFound",
            &format!("Teleport cluster {teleport:?} not found"),
        ));
    }
    let rest = parts
        .next()
        .map_or("/", |r| &path[path.len() - r.len() - 1..]);
    Ok((Some(kube), rest))
}

/// The Kubernetes cluster a request is for (the path's, else the certificate's route), once
/// the asker may use it; or the refusal.
fn authorize(
    cluster: &Cluster,
    asker: &Asker,
    routed: Option<String>,
) -> Result<String, (u16, Value)> {
    if let (Some(path), Some(route)) = (&routed, &asker.route)
        && path != route
    {
        return Err(status(
            403,
            "Forbidden",
            "existing route in identity may not be overwritten",
        ));
    }
    let kube = routed.or_else(|| asker.route.clone()).unwrap_or_default();
    let Some(found) = cluster.kube_clusters().into_iter().find(|k| k.name == kube) else {
        return Err(status(
            404,
            "NotFound",
            &format!("Kubernetes cluster {kube:?} not found"),
        ));
    };
    let granted = asker
        .roles
        .iter()
        .filter_map(|r| cluster.role(r))
        .any(|r| matches(&r.kubernetes_labels, &found.labels));
    if !granted || (asker.groups.is_empty() && asker.kube_users.is_empty()) {
        return Err(status(
            403,
            "Forbidden",
            &format!(
                "access denied: {:?} may not use Kubernetes cluster {kube:?}: no role grants it \
                 (kubernetes_labels) with a Kubernetes user or group",
                asker.user
            ),
        ));
    }
    Ok(kube)
}

fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false,
             "kind": "Namespace", "verbs": ["get", "list"], "shortNames": ["ns"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["get", "list"], "shortNames": ["po"]},
        ],
    })
}

fn namespaces(table: bool) -> Value {
    let items: Vec<Value> = ["default", "kube-system"]
        .iter()
        .map(|name| {
            json!({
                "kind": "Namespace", "apiVersion": "v1",
                "metadata": {"name": name, "creationTimestamp": STARTED},
                "status": {"phase": "Active"},
            })
        })
        .collect();
    if table {
        let rows = items
            .iter()
            .map(|n| json!({"cells": [n["metadata"]["name"], "Active", "1d"], "object": n}))
            .collect::<Vec<_>>();
        return table_of(&["Name", "Status", "Age"], rows);
    }
    json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {}, "items": items})
}

fn pods(asker: &Asker, kube: &str, namespace: &str, table: bool) -> Value {
    let pod = json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": format!("echo-{kube}"), "namespace": namespace, "creationTimestamp": STARTED,
            "annotations": {
                "keybound.dev/user": asker.user,
                "keybound.dev/kubernetes-groups": asker.groups.join(","),
                "keybound.dev/kubernetes-users": asker.kube_users.join(","),
            },
        },
        "spec": {"containers": [{"name": "echo", "image": "echo"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "echo", "ready": true, "restartCount": 0, "image": "echo",
                "imageID": "", "state": {"running": {"startedAt": STARTED}},
            }],
        },
    });
    if table {
        let row =
            json!({"cells": [pod["metadata"]["name"], "1/1", "Running", 0, "1d"], "object": pod});
        return table_of(&["Name", "Ready", "Status", "Restarts", "Age"], vec![row]);
    }
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]})
}

/// A `meta.k8s.io/v1` `Table` (what kubectl asks for to print a list).
fn table_of(columns: &[&str], rows: Vec<Value>) -> Value {
    let columns: Vec<Value> = columns
        .iter()
        .map(|c| {
            let kind = if *c == "Restarts" {
                "integer"
            } else {
                "string"
            };
            let format = if *c == "Name" { "name" } else { "" };
            json!({"name": c, "type": kind, "format": format, "description": "", "priority": 0})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": columns, "rows": rows,
    })
}
