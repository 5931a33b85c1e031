//! The admin listener: HTTP/1.1 over a Unix-domain socket (mode 0600), answering only its own
//! user (`SO_PEERCRED`), until dropped, when it removes its socket.

use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::socket::{clear_stale, default_socket, euid};
use super::wire::{
    self, Applied, CreateRequest, ErrorBody, MAX_BODY, SignHostAnswer, SignHostRequest,
};
use crate::cluster::{Cluster, Refusal};
use crate::front::DevCluster;
use crate::resources::{self, Kind};

/// What `GET /v1/status` tells besides the cluster's state: where it listens.
#[derive(Clone)]
struct Addresses {
    proxy_server: String,
    auth_server: Option<String>,
}

/// A dev cluster's admin side, serving until dropped.
pub struct AdminServer {
    path: PathBuf,
    /// The socket's device and inode, so that only this socket is removed at the end.
    id: (u64, u64),
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Serves `cluster`'s admin side at `path`, or at `<port>.sock` in
    /// [`default_dir`](super::default_dir) (made 0700 if missing). A socket there that nobody
    /// answers on (a cluster that was killed) is replaced; a live one is refused.
    pub fn start(cluster: &DevCluster, path: Option<&Path>) -> anyhow::Result<Self> {
        let path = match path {
            Some(path) => path.to_owned(),
            None => default_socket(cluster.addr.port())?,
        };
        clear_stale(&path)?;
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot serve the admin socket {}", path.display()))?;
        // Until this chmod the socket has the umask's mode; the peer check below refuses other
        // users all the same.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        let meta = std::fs::metadata(&path)?;
        let addresses = Addresses {
            proxy_server: cluster.proxy_addr(),
            auth_server: cluster.auth_addr.map(|a| a.to_string()),
        };
        let task = tokio::spawn(serve(listener, cluster.cluster.clone(), addresses));
        Ok(Self {
            path,
            id: (meta.dev(), meta.ino()),
            task,
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn serve(listener: UnixListener, cluster: Arc<Cluster>, addresses: Addresses) {
    let owner = euid();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "admin socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (cluster, addresses) = (cluster.clone(), addresses.clone());
        tokio::spawn(async move {
            let peer = stream.peer_cred().map(|c| c.uid()).ok();
            let result = if peer == Some(owner) {
                serve_connection(stream, move |request| {
                    let (cluster, addresses) = (cluster.clone(), addresses.clone());
                    async move { answer(&cluster, &addresses, request).await }
                })
                .await
            } else {
                warn!(uid = ?peer, "admin socket: refusing another user");
                let text = format!(
                    "the dev cluster's admin socket serves only uid {owner}, the user running it; you are uid {}",
                    peer.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                );
                serve_connection(stream, move |_| {
                    let text = text.clone();
                    async move { refusal(403, text) }
                })
                .await
            };
            if let Err(e) = result {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn serve_connection<F, Fut>(stream: UnixStream, answer: F) -> Result<(), hyper::Error>
where
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let fut = answer(request);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
}

fn json(status: u16, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("JSON values serialize");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is well-formed")
}

fn refusal(status: u16, error: String) -> Response<Full<Bytes>> {
    json(status, &ErrorBody { error })
}

fn refused(refusal_: Refusal) -> Response<Full<Bytes>> {
    let status = match refusal_ {
        Refusal::NotFound(_) => 404,
        Refusal::AlreadyExists(_) => 409,
        Refusal::Invalid(_) => 400,
    };
    refusal(status, refusal_.to_string())
}

/// One request (the table in the module's documentation).
async fn answer(
    cluster: &Cluster,
    addresses: &Addresses,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path
        .strip_prefix("/v1/")
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default();
    // A refusal before the cluster is asked: its status and text.
    let kind_of = |kind: &str| Kind::parse(kind).map_err(|e| (404, e.to_string()));
    let named = |kind: &str, name: &str| {
        let kind = kind_of(kind)?;
        let name = wire::decode(name).ok_or_else(|| (400, format!("malformed name in {path}")))?;
        Ok::<_, (u16, String)>((kind, name))
    };
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => Ok(json(200, &status(cluster, addresses))),
        (&Method::GET, ["heartbeats"]) => Ok(json(200, &cluster.heartbeats())),
        (&Method::POST, ["resources"]) => Ok(create(cluster, request).await),
        (&Method::POST, ["sign-host"]) => Ok(sign_host(cluster, request).await),
        (&Method::GET, [kind]) => kind_of(kind).map(|kind| json(200, &cluster.list(kind))),
        (&Method::GET, [kind, name]) => named(kind, name).map(|(kind, name)| {
            cluster
                .get(kind, &name)
                .map_or_else(refused, |resource| json(200, &resource))
        }),
        (&Method::POST, ["tokens", name, "request-rotation"]) => named("tokens", name).map(
            |(_, name)| {
                cluster.request_rotation(&name).map_or_else(refused, |at| {
                    json(200, &serde_json::json!({ "rotate_after": keybound_teleport::time::format_time(at) }))
                })
            },
        ),
        (&Method::DELETE, [kind, name]) => named(kind, name).map(|(kind, name)| {
            cluster
                .remove(kind, &name)
                .map_or_else(refused, |()| json(200, &serde_json::json!({})))
        }),
        _ => Err((404, format!("the admin socket has no {method} {path}"))),
    };
    result.unwrap_or_else(|(status, error)| refusal(status, error))
}

fn status(cluster: &Cluster, addresses: &Addresses) -> serde_json::Value {
    let config = cluster.config();
    serde_json::json!({
        "cluster_name": cluster.ca().cluster_name(),
        "server_version": config.server_version,
        "suite": config.suite.to_string(),
        "proxy_server": addresses.proxy_server,
        "auth_server": addresses.auth_server,
        "tokens": cluster.count(Kind::Token),
        "bots": cluster.count(Kind::Bot),
        "roles": cluster.count(Kind::Role),
        "locks": cluster.count(Kind::Lock),
        "apps": cluster.count(Kind::App),
        "dbs": cluster.count(Kind::Db),
        "kube_clusters": cluster.count(Kind::KubeCluster),
        "nodes": cluster.count(Kind::Node),
    })
}

/// `POST /v1/sign-host`: an SSH host certificate for the key, from the host CA.
async fn sign_host(cluster: &Cluster, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return refusal(413, "the request is too large".to_owned()),
    };
    let request: SignHostRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return refusal(400, format!("not a sign-host request: {e}")),
    };
    let key = match ssh_key::PublicKey::from_openssh(request.public_key.trim()) {
        Ok(key) => key,
        Err(e) => {
            return refusal(
                400,
                format!("the host key is not an OpenSSH public key ({e}); give its .pub file"),
            );
        }
    };
    if request.principals.is_empty() {
        return refusal(
            400,
            "name at least one principal (the host names clients dial)".to_owned(),
        );
    }
    let principals: Vec<&str> = request.principals.iter().map(String::as_str).collect();
    match cluster.ca().issue_host_ssh(&key, &principals) {
        Ok(certificate) => json(200, &SignHostAnswer { certificate }),
        Err(e) => refusal(400, format!("cannot sign the host key: {e:#}")),
    }
}

/// `POST /v1/resources`: reads the YAML as `--resources` files are read, then creates all of it
/// or nothing.
async fn create(cluster: &Cluster, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return refusal(
                413,
                format!(
                    "the resources exceed {} KiB; create them in parts",
                    MAX_BODY >> 10
                ),
            );
        }
    };
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return refusal(400, format!("not a create request: {e}")),
    };
    let resources = match resources::parse(&request.yaml, &request.origin) {
        Ok(resources) => resources,
        Err(e) => return refusal(400, format!("{e:#}")),
    };
    match cluster.create(resources, request.force) {
        Ok(applied) => json(
            200,
            &applied
                .into_iter()
                .map(|a| Applied {
                    kind: a.kind.name().to_owned(),
                    name: a.name,
                    replaced: a.replaced,
                    registration_secret: a.generated_secret.map(|s| s.expose().to_owned()),
                })
                .collect::<Vec<_>>(),
        ),
        Err(r) => refused(r),
    }
}
