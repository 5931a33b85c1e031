//! `teleport.transport.v1.TransportService.ProxySSH` on the Proxy's `teleport-proxy-ssh-grpc`
//! route: an SSH connection's bytes, carried as frames, to a node the Proxy dials
//! (`lib/srv/transport/transportv1/transport.go`, `lib/proxy/router.go`).
//!
//! The caller is the identity in its client certificate, verified against the user CA by the
//! TLS layer; a lock on it refuses the stream. The first message names the target; the node is
//! resolved as the router does (`nodes.rs`), the caller's roles must grant it (`node_labels`,
//! and the login when the client names one: the dev cluster's nodes are plain OpenSSH servers,
//! which cannot check labels, so the Proxy does, as Teleport's does for agentless nodes), then
//! the Proxy dials the node's address and answers with `ClusterDetails`, which tells the client
//! the node is connected. SSH bytes then flow both ways, at most 16 KiB a frame
//! (`api/utils/grpc/stream` `MaxChunkSize`), each direction waiting for the other side to take
//! what it was given (a bounded channel one way, the TCP send buffer the other). The stream
//! ends when the node closes the connection; the connection closes when the client ends its
//! side.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keybound_proto::teleport::transport::v1::{
    self as transport, ClusterDetails, Frame, ProxySshRequest, ProxySshResponse, proxy_ssh_request,
    proxy_ssh_response,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::nodes::{self, Node, Target};
use crate::roles;

/// The most a frame carries (`MaxChunkSize`, 16 KiB).
pub(crate) const MAX_CHUNK: usize = 16 * 1024;
/// How long the Proxy tries to reach a node.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a target's name may take to resolve (the weaker, address match).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a connection's caller is checked against the locks (Teleport's connection monitor
/// watches lock events; polling is the dev cluster's way).
const LOCK_CHECK: Duration = Duration::from_millis(500);
/// What an SSH client's first bytes must be (`lib/proxy/router.go`, `newCheckedPrefixWriter`).
const SSH_PREFIX: &[u8] = b"SSH-2.0";

/// The transport service.
pub(crate) struct TransportApi(pub(crate) Arc<Cluster>);

type Frames = Pin<Box<dyn Stream<Item = Result<ProxySshResponse, Status>> + Send>>;

#[tonic::async_trait]
impl transport::transport_service_server::TransportService for TransportApi {
    type ProxySSHStream = Frames;

    async fn proxy_ssh(
        &self,
        request: Request<Streaming<ProxySshRequest>>,
    ) -> Result<Response<Frames>, Status> {
        let cluster = &self.0;
        if request.extensions().get::<Caller>().is_none() {
            return Err(Status::permission_denied("client is not authenticated"));
        }
        let caller = cluster.caller(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("first frame must contain a dial target"))?;
        let target = first
            .dial_target
            .ok_or_else(|| Status::invalid_argument("first frame must contain a dial target"))?;
        let node = authorize(cluster, &caller, &target).await?;
        let tcp = dial(&node).await?;
        info!(
            user = %caller.username,
            node = %node.name,
            addr = %node.addr,
            "ProxySSH: connected"
        );
        let (read, write) = tcp.into_split();
        let (tx, rx) = mpsc::channel(4);
        let details = ProxySshResponse {
            details: Some(ClusterDetails {
                fips_enabled: false,
            }),
            frame: None,
        };
        tx.send(Ok(details))
            .await
            .map_err(|_| Status::cancelled("the client went away"))?;
        let to_node = tokio::spawn(client_to_node(inbound, write, tx.clone()));
        let cluster = cluster.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = node_to_client(read, tx.clone()) => {}
                refusal = locked(&cluster, &caller) => {
                    info!(user = %caller.username, "ProxySSH: a lock ends the connection");
                    let _ = tx.send(Err(refusal)).await;
                }
            }
            // The node closed, or a lock ended the connection: the client's side has nothing
            // left to go to.
            to_node.abort();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The node `target` names, if the caller may reach it.
async fn authorize(
    cluster: &Cluster,
    caller: &Caller,
    target: &transport::TargetHost,
) -> Result<Node, Status> {
    let (host, port) = split_host_port(&target.host_port)
        .ok_or_else(|| Status::invalid_argument("dial target contains an invalid hostport"))?;
    let ours = cluster.ca().cluster_name();
    if !target.cluster.is_empty() && target.cluster != ours {
        // The dev cluster has no leaf clusters; Teleport answers an opaque AccessDenied
        // (`getRemoteCluster`, `utils.OpaqueAccessDenied`).
        return Err(Status::permission_denied(format!(
            "looking up remote cluster {:?}: access denied",
            target.cluster
        )));
    }
    let nodes = cluster.nodes();
    let mut wanted = Target {
        host,
        port,
        ips: Vec::new(),
    };
    if !nodes::any_direct_match(&nodes, &wanted) {
        wanted.ips = lookup(host).await;
    }
    let node = nodes::resolve(&nodes, &wanted)?.clone();
    let held: Vec<_> = caller
        .roles
        .iter()
        .filter_map(|name| cluster.role(name))
        .collect();
    let held: Vec<&_> = held.iter().collect();
    let login = Some(target.login_name.as_str()).filter(|l| !l.is_empty());
    if !roles::may_access_node(&held, &node.labels, login) {
        // `evaluateSSHAccess` (`lib/srv/authhandlers.go`) around `RoleSet.checkAccess`
        // (`lib/services/role.go`).
        debug!(user = %caller.username, node = %node.name, "ProxySSH: access to node denied");
        return Err(Status::permission_denied(format!(
            "user {user}@{ours} is not authorized to login as {login}@{ours}: access to node \
             denied. User does not have permissions.",
            user = caller.username,
            login = login.unwrap_or("-"),
        )));
    }
    Ok(node)
}

/// `net.SplitHostPort`, the port possibly empty.
fn split_host_port(host_port: &str) -> Option<(&str, &str)> {
    let (host, port) = host_port.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some((host, port))
}

/// The addresses `host` resolves to, or none (`SSHRouteMatcher` ignores lookup errors).
async fn lookup(host: &str) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse() {
        return vec![ip];
    }
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    }
}

/// Connects to the node (a ConnectionProblem, i.e. `Unavailable`, when it cannot).
async fn dial(node: &Node) -> Result<TcpStream, Status> {
    let failed = |why: String| {
        Status::unavailable(format!(
            "failed to dial target host: connecting to node {} at {}: {why}",
            node.hostname, node.addr
        ))
    };
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&node.addr))
        .await
        .map_err(|_| failed("timed out".to_owned()))?
        .map_err(|e| failed(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The client's `ssh` frames to the node, the first bytes checked to be SSH's; its agent frames
/// are dropped (the dev cluster never asks for the agent). At the client's end of stream, the
/// node's side is shut for writing.
async fn client_to_node(
    mut inbound: Streaming<ProxySshRequest>,
    mut write: OwnedWriteHalf,
    tx: mpsc::Sender<Result<ProxySshResponse, Status>>,
) {
    let mut checked = 0;
    loop {
        let payload = match inbound.message().await {
            Ok(Some(ProxySshRequest {
                frame: Some(proxy_ssh_request::Frame::Ssh(Frame { payload })),
                ..
            })) => payload,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        };
        if checked < SSH_PREFIX.len() {
            let n = payload.len().min(SSH_PREFIX.len() - checked);
            if payload[..n] != SSH_PREFIX[checked..checked + n] {
                let _ = tx
                    .send(Err(Status::permission_denied(format!(
                        "required prefix {:?} was not found",
                        String::from_utf8_lossy(SSH_PREFIX)
                    ))))
                    .await;
                return;
            }
            checked += n;
        }
        if write.write_all(&payload).await.is_err() {
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// Returns once a lock targets the caller (`lib/srv/monitor.go`: a lock in force ends the
/// connections of the identity it targets).
async fn locked(cluster: &Cluster, caller: &Caller) -> Status {
    let mut tick = tokio::time::interval(LOCK_CHECK);
    loop {
        tick.tick().await;
        if let Err(refusal) = cluster.lock_on_caller(caller) {
            return refusal;
        }
    }
}

/// The node's bytes to the client, at most [`MAX_CHUNK`] a frame, until the node closes.
async fn node_to_client(
    mut read: OwnedReadHalf,
    tx: mpsc::Sender<Result<ProxySshResponse, Status>>,
) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let frame = ProxySshResponse {
            details: None,
            frame: Some(proxy_ssh_response::Frame::Ssh(Frame {
                payload: buf[..n].to_vec(),
            })),
        };
        if tx.send(Ok(frame)).await.is_err() {
            return;
        }
    }
}
