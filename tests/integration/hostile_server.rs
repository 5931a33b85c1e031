//! A join server on localhost that follows a script, for what a well-meaning cluster cannot
//! say: messages out of order or oversized, a stall, a hang, a dropped connection, bad TLS
//! (`hostile.rs` runs keybound against it). It records what the client sent.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybound::config::HostPort;
use keybound::join::JoinParams;
use keybound::tls::Trust;
use keybound_devcluster::ca::ClusterCa;
use keybound_proto::teleport::join::v1;
use keybound_signer::{PublicKey, Signer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// The join timeout the hostile tests give keybound (here in [`Scripted::params`]), where a
/// server stalls.
pub(crate) const SHORT: Duration = Duration::from_secs(3);

/// What the scripted server does after reading the client's first message.
#[derive(Clone)]
pub(crate) enum Step {
    /// Send this message.
    Send(v1::JoinResponse),
    /// Wait for the client's next message.
    Receive,
    /// Send nothing more, and keep the connection open until the client leaves.
    Stall,
    /// Send nothing more and never end the stream, even after the client closes its side.
    Hang,
    /// Close the TCP connection, with no gRPC status.
    Drop,
}

/// How the scripted server does TLS.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tls {
    /// A certificate for `localhost` from the CA the client trusts; ALPN `teleport-proxy-grpc`.
    Good,
    /// A certificate for another name.
    WrongName,
    /// A certificate from a CA the client does not trust.
    UntrustedCa,
    /// No ALPN at all.
    NoAlpn,
    /// ALPN `http/1.1` only: nothing the client offers.
    WrongAlpn,
    /// No TLS: accept TCP connections and say nothing.
    Silent,
}

/// The join service of the scripted server.
#[derive(Clone)]
struct Script {
    steps: Arc<Vec<Step>>,
    /// Every message the client sent, in order.
    received: Arc<std::sync::Mutex<Vec<v1::JoinRequest>>>,
    /// Tells the connection to close (`Step::Drop`).
    drop: Arc<Notify>,
}

type Outbound =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::JoinResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl v1::join_service_server::JoinService for Script {
    type JoinStream = Outbound;

    async fn join(
        &self,
        request: tonic::Request<tonic::Streaming<v1::JoinRequest>>,
    ) -> Result<tonic::Response<Outbound>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let (steps, drop, received) =
            (self.steps.clone(), self.drop.clone(), self.received.clone());
        tokio::spawn(async move {
            // Read whatever the client sends, until it leaves.
            let (seen_tx, mut seen) = mpsc::channel(16);
            let client = tokio::spawn(async move {
                while let Ok(Some(message)) = inbound.message().await {
                    received.lock().unwrap().push(message.clone());
                    let _ = seen_tx.try_send(message);
                }
            });
            for step in steps.iter() {
                match step {
                    Step::Send(message) => {
                        if tx.send(Ok(message.clone())).await.is_err() {
                            return;
                        }
                    }
                    Step::Receive => {
                        if seen.recv().await.is_none() {
                            return;
                        }
                    }
                    Step::Stall => break,
                    Step::Hang => {
                        let _ = client.await;
                        // `tx` stays open: the stream never ends.
                        return std::future::pending().await;
                    }
                    Step::Drop => return drop.notify_one(),
                }
            }
            let _ = client.await;
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A join server on localhost that follows a script.
pub(crate) struct Scripted {
    port: u16,
    ca: PathBuf,
    received: Arc<std::sync::Mutex<Vec<v1::JoinRequest>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub(crate) async fn start(tls: Tls, steps: Vec<Step>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let trusted = ClusterCa::generate("hostile.test").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, trusted.host_ca_pem()).unwrap();
        let names = |n: &str| vec![n.to_owned()];
        let (chain, key) = match tls {
            Tls::WrongName => trusted.server_cert(&names("wrong.example")),
            Tls::UntrustedCa => ClusterCa::generate("other.test")
                .unwrap()
                .server_cert(&names("localhost")),
            _ => trusted.server_cert(&names("localhost")),
        }
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = match tls {
            Tls::NoAlpn => Vec::new(),
            Tls::WrongAlpn => vec![b"http/1.1".to_vec()],
            // A Teleport proxy also takes `teleport-reversetunnel`, the only protocol of the
            // connection-upgrade test handshake.
            _ => vec![
                b"teleport-proxy-grpc".to_vec(),
                b"h2".to_vec(),
                b"teleport-reversetunnel".to_vec(),
            ],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let steps = Arc::new(steps);
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = received.clone();
        let task = tokio::spawn(async move {
            let mut silent = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if matches!(tls, Tls::Silent) {
                    silent.push(tcp);
                    continue;
                }
                let (acceptor, steps, received) =
                    (acceptor.clone(), steps.clone(), received.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let drop = Arc::new(Notify::new());
                    let service = v1::join_service_server::JoinServiceServer::new(Script {
                        steps,
                        received,
                        drop: drop.clone(),
                    });
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let mut service = service.clone();
                            async move { tower::Service::call(&mut service, request).await }
                        },
                    );
                    let connection = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    // Dropping the connection closes the socket.
                    tokio::select! {
                        _ = connection => {}
                        _ = drop.notified() => {}
                    }
                });
            }
        });
        Self {
            port,
            ca,
            received: kept,
            task,
            _dir: dir,
        }
    }

    /// The `GivingUp` messages the server received: (reason, message).
    pub(crate) fn givings_up(&self) -> Vec<(i32, String)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match &m.payload {
                Some(v1::join_request::Payload::GivingUp(g)) => Some((g.reason, g.msg.clone())),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn params(&self, signer: Arc<dyn Signer>) -> JoinParams {
        JoinParams {
            proxy: HostPort::parse(&format!("localhost:{}", self.port), 443).unwrap(),
            direct: false,
            trust: Trust::Bundle(self.ca.clone()),
            token: "t".to_owned(),
            cluster: None,
            credential_ttl: Duration::from_secs(3600),
            signer: Some(signer),
            standard: None,
            timeout: SHORT,
        }
    }
}

pub(crate) fn send(payload: v1::join_response::Payload) -> Step {
    Step::Send(v1::JoinResponse {
        payload: Some(payload),
    })
}

pub(crate) fn server_init(suite: &str) -> Step {
    send(v1::join_response::Payload::Init(v1::ServerInit {
        join_method: "bound_keypair".to_owned(),
        signature_algorithm_suite: suite.to_owned(),
    }))
}

pub(crate) fn challenge(public_key: &str, document: &str) -> Step {
    send(v1::join_response::Payload::Challenge(v1::Challenge {
        payload: Some(v1::challenge::Payload::BoundKeypairChallenge(
            v1::BoundKeypairChallenge {
                public_key: public_key.as_bytes().to_vec(),
                challenge: document.to_owned(),
            },
        )),
    }))
}

/// A fresh, well-formed Teleport challenge document for `key`.
pub(crate) fn document(key: &PublicKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        r#"{{"iss":"hostile.test","sub":"{}","aud":"hostile.test","exp":{},"nbf":{},"iat":{now},"nonce":"{}"}}"#,
        key.key_id(),
        now + 60,
        now - 10,
        "ab".repeat(16)
    )
}

pub(crate) fn bot_result() -> Step {
    send(v1::join_response::Payload::Result(v1::Result {
        payload: Some(v1::result::Payload::BotResult(v1::BotResult::default())),
    }))
}
