//! The Workload API's listener: a unix socket made with care, or a TCP port; the gRPC server on
//! it, until the agent stops.
//!
//! The unix socket's mode is 0660 (owner and group may connect; `connect(2)` needs write
//! permission on the socket): a workload of another user is let in through the socket's group
//! or its directory, never by default, because a `workload_identity` without a
//! `{{ workload.unix.uid }}` template would hand every local user the same identity. The socket
//! is bound under a temporary name and renamed into place once its mode is set, so it is never
//! reachable at its configured path with a wider mode. A socket left by an earlier run is
//! replaced when nothing answers on it; anything else at the path is refused, never removed.
//! On shutdown the socket is removed if it is still the one this process bound.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keybound_proto::spiffe_workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::sync::watch;
use tower::Service as _;
use tracing::warn;

use super::workload_api::{Listen, PeerCred, Shared, WorkloadApi};

/// The unix socket's mode.
pub(super) const SOCKET_MODE: u32 = 0o660;

/// A bound listener.
pub(super) enum Bound {
    Unix {
        listener: tokio::net::UnixListener,
        path: PathBuf,
        /// The socket's (device, inode), to remove only our own at shutdown.
        id: (u64, u64),
    },
    Tcp(tokio::net::TcpListener),
}

impl Bound {
    /// Binds `listen`.
    pub(super) fn bind(listen: &Listen) -> anyhow::Result<Self> {
        match listen {
            Listen::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("listening on tcp://{addr}"))?;
                listener.set_nonblocking(true)?;
                Ok(Self::Tcp(tokio::net::TcpListener::from_std(listener)?))
            }
            Listen::Unix(path) => bind_unix(path),
        }
    }
}

fn bind_unix(path: &Path) -> anyhow::Result<Bound> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(anyhow!(
                    "{shown} is a socket another process is serving; stop it or choose another path"
                ));
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {shown}"))?;
        }
        Ok(_) => {
            return Err(anyhow!(
                "{shown} exists and is not a socket; keybound does not remove it: choose another path"
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!(e).context(format!("reading {shown}"))),
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{shown} names no file"))?;
    let mut temporary = name.to_owned();
    temporary.push(format!(".keybound-{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = std::os::unix::net::UnixListener::bind(&temporary)
        .with_context(|| format!("binding the socket {shown}"))?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(anyhow!(e).context(format!("placing the socket {shown}")));
    }
    let meta = std::fs::symlink_metadata(path)?;
    listener.set_nonblocking(true)?;
    Ok(Bound::Unix {
        listener: tokio::net::UnixListener::from_std(listener)?,
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    })
}

/// Serves the Workload API on `bound` until `stop`, each connection over HTTP/2 with the caller's
/// credentials (unix sockets) in the request's extensions; then the open connections are dropped
/// and the unix socket is removed.
pub(super) async fn serve(bound: Bound, api: Arc<WorkloadApi>, mut stop: watch::Receiver<bool>) {
    let label = api.config.label();
    let grpc = SpiffeWorkloadApiServer::new(Shared(api));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = bound.accept() => accepted,
        };
        match accepted {
            Ok((io, peer)) => {
                let grpc = grpc.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                            if let Some(peer) = peer {
                                request.extensions_mut().insert(peer);
                            }
                            let mut grpc = grpc.clone();
                            async move { grpc.call(request).await }
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                });
            }
            Err(e) => {
                warn!(service = %label, error = %e, "the Workload API could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    if let Bound::Unix { path, id, .. } = &bound {
        let ours = std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == *id);
        if ours && let Err(e) = std::fs::remove_file(path) {
            warn!(service = %label, socket = %path.display(), error = %e, "could not remove the socket");
        }
    }
}

/// An accepted connection: its stream, and the caller's credentials when on a unix socket.
type Accepted = (TokioIo<Box<dyn Io>>, Option<PeerCred>);

/// A connection's stream.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

impl Bound {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                Ok((TokioIo::new(Box::new(stream)), None))
            }
            Self::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                // SO_PEERCRED: who connected, as the kernel says.
                let peer = stream.peer_cred().ok().map(|c| PeerCred {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                });
                // The client's bytes through the `:authority` fix (`authority.rs`).
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                let (client_read, mut client_write) = stream.into_split();
                let (server_read, server_write) = tokio::io::split(ours);
                tokio::spawn(async move {
                    let mut server_write = server_write;
                    let _ = super::authority::relay(client_read, &mut server_write).await;
                    // The client is gone: hyper sees the end of its stream.
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut server_write).await;
                });
                tokio::spawn(async move {
                    let mut server_read = server_read;
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                Ok((TokioIo::new(Box::new(theirs)), peer))
            }
        }
    }
}
