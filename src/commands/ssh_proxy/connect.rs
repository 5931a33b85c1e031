//! The connection to the node: TLS to the Proxy with the identity's client certificate,
//! verified against the identity's TLS CAs only, ALPN `teleport-proxy-ssh-grpc` first (tbot's
//! `Facade.TLSConfig()` with `proxyclient`'s ALPN, `api/client/proxy/client.go`), then the
//! `TransportService.ProxySSH` stream, opened with the dial target; the Proxy's first answer
//! (`ClusterDetails`) says the node is connected
//! (`api/client/proxy/transport/transportv1/client.go`).

use std::sync::Arc;

use anyhow::Context as _;
use keybound_proto::teleport::transport::v1::{
    ProxySshRequest, ProxySshResponse, TargetHost, transport_service_client::TransportServiceClient,
};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::identity_file::IdentityFile;
use crate::transport::{self, ALPN_H2, Dial};
use crate::values::HostPort;

/// ALPN of the Proxy's SSH gRPC server (`ProtocolProxySSHGRPC`,
/// `lib/srv/alpnproxy/common/protocols.go`).
pub(super) const ALPN_PROXY_SSH_GRPC: &[u8] = b"teleport-proxy-ssh-grpc";

/// An open ProxySSH stream: what to send, and what comes back.
pub(super) struct Stream {
    pub(super) send: mpsc::Sender<ProxySshRequest>,
    pub(super) receive: Streaming<ProxySshResponse>,
}

/// Why the connection failed, as one line naming the fix.
pub(super) struct Refused(pub(super) String, pub(super) crate::ExitKind);

/// TLS presenting the identity's certificate, trusting only its TLS CAs (`--insecure`: none).
pub(super) fn tls_config(
    identity: &IdentityFile,
    insecure: bool,
) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol versions")?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(crate::tls::no_verification())
    } else {
        let mut roots = RootCertStore::empty();
        for ca in &identity.tls_cas {
            roots
                .add(ca.clone())
                .context("a CA certificate of the identity file")?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = builder
        .with_client_auth_cert(vec![identity.tls_cert.clone()], identity.key.clone_key())
        .context("the identity's certificate and key do not go together")?;
    config.alpn_protocols = vec![ALPN_PROXY_SSH_GRPC.to_vec(), ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Connects to the Proxy and opens ProxySSH to `target`; returns once the node is connected.
pub(super) async fn open(
    proxy: &HostPort,
    tls: Arc<ClientConfig>,
    target: TargetHost,
) -> Result<Stream, Refused> {
    let dial = Dial {
        server_name: None,
        accept: &[ALPN_PROXY_SSH_GRPC, ALPN_H2],
        expected: "teleport-proxy-ssh-grpc; is --proxy-server a Teleport proxy?",
        proxy: true,
    };
    let channel = transport::connect_with(proxy, tls, dial)
        .await
        .map_err(|e| unreachable(proxy, &e))?;
    let mut client = TransportServiceClient::new(channel);
    let (send, rx) = mpsc::channel(4);
    let where_to = target.host_port.clone();
    send.send(ProxySshRequest {
        dial_target: Some(target),
        frame: None,
    })
    .await
    .expect("the receiver is held below");
    let failed = |status: &Status| refused(&where_to, status);
    let mut receive = client
        .proxy_ssh(ReceiverStream::new(rx))
        .await
        .map_err(|s| failed(&s))?
        .into_inner();
    match receive.message().await {
        Ok(Some(_details)) => Ok(Stream { send, receive }),
        Ok(None) => Err(failed(&Status::unavailable(
            "the proxy closed the stream before the node was connected",
        ))),
        Err(status) => Err(failed(&status)),
    }
}

/// The Proxy could not be reached or did not take the identity.
fn unreachable(proxy: &HostPort, error: &tonic::transport::Error) -> Refused {
    let message = transport::describe(format!("cannot reach the proxy {proxy}"), error);
    let hint = if message.contains("UnknownIssuer") || message.contains("invalid peer certificate")
    {
        "; the proxy's certificate was not issued by the cluster CAs in the identity file: check \
         --proxy-server, and that nothing between here and the proxy terminates TLS"
    } else if message.contains("CertificateExpired") || message.contains("certificate expired") {
        "; the proxy refused the identity's certificate as expired: renew it (keybound start)"
    } else if message.contains("chose ALPN") {
        ""
    } else {
        "; check --proxy-server (the proxy_server keybound joined through) and that the proxy \
         is up"
    };
    Refused(format!("{message}{hint}"), crate::ExitKind::Unreachable)
}

/// The Proxy refused the stream: its message (sanitized), wrapped as tbot's client wraps it
/// (`failed connecting to host <target>`), and the fix.
fn refused(target: &str, status: &Status) -> Refused {
    let said = crate::untrusted::message(status.message()).to_string();
    let (hint, kind) = match status.code() {
        Code::NotFound if said.contains("ambiguous host") => (
            "; several nodes answer to this name: connect by the node's UUID \
             (user@<uuid>.<cluster>, keybound dev-cluster ls nodes or tsh ls shows it)",
            crate::ExitKind::Rejected,
        ),
        Code::NotFound | Code::Unavailable
            if said.contains("offline or does not exist")
                || said.contains("unable to locate node") =>
        {
            (
                "; check the host name and port (ssh -p) against the cluster's nodes",
                crate::ExitKind::Unreachable,
            )
        }
        Code::PermissionDenied => (
            "; the identity's roles do not grant this node or login: check the roles' \
             node_labels and logins, and for locks on the bot",
            crate::ExitKind::Rejected,
        ),
        Code::Unauthenticated => (
            "; the proxy did not take the identity's certificate: renew it (keybound start)",
            crate::ExitKind::Rejected,
        ),
        _ => ("", crate::ExitKind::Unreachable),
    };
    // Teleport's sentences end with a full stop; the hint follows after a semicolon.
    let said = if hint.is_empty() {
        said.as_str()
    } else {
        said.trim_end_matches('.')
    };
    Refused(
        format!("failed connecting to host {target}: {said}{hint}"),
        kind,
    )
}
