//! The two gRPC join services over the shared handler: `teleport.join.v1.JoinService/Join`
//! (`lib/join/joinv1/server.go`, `lib/join/server.go`) and the legacy
//! `proto.JoinService/RegisterUsingBoundKeypairMethod` (`lib/join/server_boundkeypair.go`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Caller;
use super::handler::{JoinInput, Peer};
use super::{Cluster, Misbehaviour};
use keybound_teleport::suite::Suite;

/// `joinRequestTimeout`.
const JOIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The unified join service.
#[derive(Clone)]
pub(crate) struct JoinV1(pub(crate) Arc<Cluster>);

/// The legacy join service.
#[derive(Clone)]
pub(crate) struct JoinLegacy(pub(crate) Arc<Cluster>);

fn remote_addr<T>(request: &Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<SocketAddr>()
        .map(|a| a.ip().to_string())
}

/// Runs `work` as the server side of one stream, bounded by the join timeout, and returns the
/// response stream.
fn spawn_stream<T, F>(work: impl FnOnce(mpsc::Sender<Result<T, Status>>) -> F) -> Outbound<T>
where
    T: Send + 'static,
    F: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let fut = work(tx.clone());
    tokio::spawn(async move {
        let result = match tokio::time::timeout(JOIN_REQUEST_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(Status::resource_exhausted(
                "join attempt timed out after 1m0s, terminating the stream on the server",
            )),
        };
        if let Err(status) = result {
            tracing::info!(code = ?status.code(), message = status.message(), "join failed");
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// What Teleport answers a `GivingUp` with, after recording it.
fn give_up_error(cluster: &Cluster, token: &str, g: &v1::GivingUp) -> Status {
    cluster.record_giving_up(
        token,
        v1::giving_up::Reason::try_from(g.reason).map_or_else(
            |_| format!("unknown reason {}", g.reason),
            |r| r.as_str_name().to_owned(),
        ),
        &g.msg,
    );
    let reason = match v1::giving_up::Reason::try_from(g.reason) {
        Ok(v1::giving_up::Reason::Unspecified) => "reason unspecified",
        Ok(v1::giving_up::Reason::UnsupportedJoinMethod) => "unsupported join method",
        Ok(v1::giving_up::Reason::UnsupportedMessageType) => "unsupported message type",
        Ok(v1::giving_up::Reason::ChallengeSolutionFailed) => "challenge solution failed",
        Err(_) => "unhandled reason",
    };
    // `ClientGaveUpError` is a plain error: UNKNOWN.
    if g.msg.is_empty() {
        Status::unknown(format!("client gave up on join attempt: {reason}"))
    } else {
        Status::unknown(format!(
            "client gave up on join attempt: {reason}: {}",
            g.msg
        ))
    }
}

fn drop_mid_join() -> Status {
    Status::unavailable("dev cluster: dropping the stream mid-join, as asked")
}

/// [`Misbehaviour::Stall`]: nothing was sent; whatever the client did next ends the stream.
fn stall<T>(received: Result<T, Status>) -> Status {
    received.err().unwrap_or_else(|| {
        Status::invalid_argument("dev cluster: stalled, and the client spoke out of turn")
    })
}

fn client_closed() -> Status {
    Status::cancelled("the client closed the join stream")
}

// === teleport.join.v1 ===

struct V1Peer {
    inbound: Streaming<v1::JoinRequest>,
    out: mpsc::Sender<Result<v1::JoinResponse, Status>>,
    cluster: Arc<Cluster>,
    /// The token `ClientInit` named, once it has arrived.
    token: String,
}

impl V1Peer {
    async fn send(&self, payload: v1::join_response::Payload) -> Result<(), Status> {
        self.out
            .send(Ok(v1::JoinResponse {
                payload: Some(payload),
            }))
            .await
            .map_err(|_| client_closed())
    }

    fn gave_up(&self, g: &v1::GivingUp) -> Status {
        give_up_error(&self.cluster, &self.token, g)
    }

    async fn receive(&mut self) -> Result<v1::join_request::Payload, Status> {
        match self.inbound.message().await? {
            Some(v1::JoinRequest { payload: Some(p) }) => Ok(p),
            Some(_) => Err(Status::invalid_argument(
                "expected client to send a message, got an empty one",
            )),
            None => Err(client_closed()),
        }
    }
}

impl Peer for V1Peer {
    fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    async fn ask(&mut self, public_key: &str, document: &str) -> Result<Vec<u8>, Status> {
        self.send(v1::join_response::Payload::Challenge(v1::Challenge {
            payload: Some(v1::challenge::Payload::BoundKeypairChallenge(
                v1::BoundKeypairChallenge {
                    public_key: public_key.as_bytes().to_vec(),
                    challenge: document.to_owned(),
                },
            )),
        }))
        .await?;
        if self.cluster.misbehaviour() == Some(Misbehaviour::DropMidJoin) {
            return Err(drop_mid_join());
        }
        use v1::challenge_solution::Payload as S;
        match self.receive().await? {
            v1::join_request::Payload::Solution(v1::ChallengeSolution {
                payload: Some(S::BoundKeypairChallengeSolution(s)),
            }) => Ok(s.solution),
            v1::join_request::Payload::GivingUp(g) => Err(self.gave_up(&g)),
            _ => Err(Status::invalid_argument(
                "expected client to send message of type *messages.BoundKeypairChallengeSolution",
            )),
        }
    }

    async fn wait_for_client(&mut self) -> Status {
        stall(self.receive().await)
    }

    async fn rotate(&mut self, suite: Suite) -> Result<String, Status> {
        self.send(v1::join_response::Payload::Challenge(v1::Challenge {
            payload: Some(v1::challenge::Payload::BoundKeypairRotationRequest(
                v1::BoundKeypairRotationRequest {
                    signature_algorithm_suite: suite_string(suite),
                },
            )),
        }))
        .await?;
        use v1::challenge_solution::Payload as S;
        match self.receive().await? {
            v1::join_request::Payload::Solution(v1::ChallengeSolution {
                payload: Some(S::BoundKeypairRotationResponse(r)),
            }) => Ok(String::from_utf8_lossy(&r.public_key).into_owned()),
            v1::join_request::Payload::GivingUp(g) => Err(self.gave_up(&g)),
            _ => Err(Status::invalid_argument(
                "expected client to send message of type *messages.BoundKeypairRotationResponse",
            )),
        }
    }
}

/// How Teleport's `SignatureAlgorithmSuiteToString` writes a suite (its `MarshalText`).
pub(crate) fn suite_string(suite: Suite) -> String {
    match suite {
        Suite::Unspecified => "SIGNATURE_ALGORITHM_SUITE_UNSPECIFIED".to_owned(),
        other => other.to_string(),
    }
}

#[tonic::async_trait]
impl v1::join_service_server::JoinService for JoinV1 {
    type JoinStream = Outbound<v1::JoinResponse>;

    async fn join(
        &self,
        request: Request<Streaming<v1::JoinRequest>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let cluster = self.0.clone();
        if cluster.config.legacy_only {
            return Err(Status::unimplemented(
                "unknown service teleport.join.v1.JoinService",
            ));
        }
        if cluster.misbehaviour() == Some(Misbehaviour::HostileStatus) {
            return Err(Status::unimplemented(cluster.config.hostile_text.clone()));
        }
        let remote = remote_addr(&request);
        // On Auth's endpoint a bot's certificate authenticates the stream (`authenticate` in
        // lib/join/server.go); the Proxy's route never carries one.
        let caller = cluster.authenticated_bot(request.extensions().get::<Caller>());
        cluster.check_client_version(request.metadata())?;
        let inbound = request.into_inner();
        Ok(Response::new(spawn_stream(move |out| async move {
            let mut peer = V1Peer {
                inbound,
                out,
                cluster: cluster.clone(),
                token: String::new(),
            };
            let v1::join_request::Payload::ClientInit(init) = peer.receive().await? else {
                return Err(Status::invalid_argument(
                    "expected client to send message of type *messages.ClientInit",
                ));
            };
            if init.token_name.is_empty() {
                return Err(Status::invalid_argument(
                    "validating ClientInit message: TokenName is required",
                ));
            }
            peer.token.clone_from(&init.token_name);
            if init.system_role.is_empty() {
                return Err(Status::invalid_argument(
                    "validating ClientInit message: SystemRole is required",
                ));
            }
            if init.proxy_supplied_parameters.is_some() {
                return Err(Status::permission_denied(
                    "client set ProxySuppliedParameters but did not authenticate as a proxy",
                ));
            }
            if init.forwarded_by_proxy {
                return Err(Status::invalid_argument(
                    "client claims to be a proxy forwarding the request but did not authenticate as a proxy (this is a bug)",
                ));
            }
            let token = cluster.check_token(
                &init.token_name,
                init.join_method.as_deref(),
                &init.system_role,
            )?;
            if token.join_method != "bound_keypair" {
                return Err(Status::unimplemented(format!(
                    "join method {} is not implemented",
                    token.join_method
                )));
            }
            let held = if cluster.misbehaviour() == Some(Misbehaviour::HoldServerInit) {
                Some(peer.receive().await?)
            } else {
                None
            };
            let server_init = v1::ServerInit {
                join_method: "bound_keypair".to_owned(),
                signature_algorithm_suite: suite_string(cluster.config.suite),
            };
            peer.send(v1::join_response::Payload::Init(server_init))
                .await?;
            if cluster.config.duplicate_server_init {
                // What builds before gravitational/teleport#60291 did: the bound-keypair handler
                // sent a second ServerInit without a suite.
                peer.send(v1::join_response::Payload::Init(v1::ServerInit {
                    join_method: "bound_keypair".to_owned(),
                    signature_algorithm_suite: String::new(),
                }))
                .await?;
            }
            if init.system_role != "Bot" {
                return Err(Status::invalid_argument(
                    "bound keypair joining is only supported for bots",
                ));
            }
            let next = match held {
                Some(message) => message,
                None => peer.receive().await?,
            };
            let bk = match next {
                v1::join_request::Payload::BoundKeypairInit(bk) => bk,
                v1::join_request::Payload::GivingUp(g) => return Err(peer.gave_up(&g)),
                _ => {
                    return Err(Status::invalid_argument(
                        "expected client to send message of type *messages.BoundKeypairInit",
                    ));
                }
            };
            let Some(v1::client_params::Payload::BotParams(bot)) =
                bk.client_params.and_then(|p| p.payload)
            else {
                return Err(Status::invalid_argument(
                    "bound keypair joining is only supported for bots",
                ));
            };
            let keys = bot.public_keys.unwrap_or_default();
            let input = JoinInput {
                remote_addr: remote,
                tls_public_key: keys.public_tls_key,
                ssh_public_key: keys.public_ssh_key,
                expires: bot.expires.and_then(|t| SystemTime::try_from(t).ok()),
                initial_join_secret: bk.initial_join_secret,
                previous_join_state: bk.previous_join_state,
                caller,
            };
            check_subject_keys(&input)?;
            let output = cluster.bound_keypair_join(&token, input, &mut peer).await?;
            peer.send(v1::join_response::Payload::Result(v1::Result {
                payload: Some(v1::result::Payload::BotResult(v1::BotResult {
                    certificates: Some(v1::Certificates {
                        tls_cert: output.tls_cert,
                        tls_ca_certs: output.tls_ca_certs,
                        ssh_cert: output.ssh_cert,
                        ssh_ca_keys: output.ssh_ca_keys,
                    }),
                    bound_keypair_result: Some(v1::BoundKeypairResult {
                        join_state: output.join_state,
                        public_key: output.bound_public_key.into_bytes(),
                    }),
                })),
            }))
            .await?;
            cluster.record_join();
            Ok(())
        })))
    }
}

/// `makeBotCertsParams`: the TLS key must be PKIX DER and the SSH key a wire blob.
fn check_subject_keys(input: &JoinInput) -> Result<(), Status> {
    spki::SubjectPublicKeyInfoRef::try_from(input.tls_public_key.as_slice())
        .map_err(|e| Status::unknown(format!("x509: failed to parse public key: {e}")))?;
    ssh_key::PublicKey::from_bytes(&input.ssh_public_key)
        .map_err(|e| Status::unknown(format!("ssh: failed to parse public key: {e}")))?;
    Ok(())
}

// === proto.JoinService (legacy) ===

struct LegacyPeer {
    inbound: Streaming<legacy::RegisterUsingBoundKeypairMethodRequest>,
    out: mpsc::Sender<Result<legacy::RegisterUsingBoundKeypairMethodResponse, Status>>,
    cluster: Arc<Cluster>,
}

impl LegacyPeer {
    async fn send(
        &self,
        response: legacy::register_using_bound_keypair_method_response::Response,
    ) -> Result<(), Status> {
        self.out
            .send(Ok(legacy::RegisterUsingBoundKeypairMethodResponse {
                response: Some(response),
            }))
            .await
            .map_err(|_| client_closed())
    }

    async fn receive(
        &mut self,
    ) -> Result<legacy::register_using_bound_keypair_method_request::Payload, Status> {
        match self.inbound.message().await? {
            Some(legacy::RegisterUsingBoundKeypairMethodRequest { payload: Some(p) }) => Ok(p),
            Some(_) => Err(Status::invalid_argument("received an empty message")),
            None => Err(client_closed()),
        }
    }
}

impl Peer for LegacyPeer {
    fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    async fn ask(&mut self, public_key: &str, document: &str) -> Result<Vec<u8>, Status> {
        use legacy::register_using_bound_keypair_method_request::Payload as P;
        use legacy::register_using_bound_keypair_method_response::Response as R;
        self.send(R::Challenge(legacy::RegisterUsingBoundKeypairChallenge {
            public_key: public_key.to_owned(),
            challenge: document.to_owned(),
        }))
        .await?;
        if self.cluster.misbehaviour() == Some(Misbehaviour::DropMidJoin) {
            return Err(drop_mid_join());
        }
        match self.receive().await? {
            P::ChallengeResponse(r) => Ok(r.solution),
            _ => Err(Status::invalid_argument("expected a challenge response")),
        }
    }

    async fn wait_for_client(&mut self) -> Status {
        stall(self.receive().await)
    }

    async fn rotate(&mut self, suite: Suite) -> Result<String, Status> {
        use legacy::register_using_bound_keypair_method_request::Payload as P;
        use legacy::register_using_bound_keypair_method_response::Response as R;
        self.send(R::Rotation(
            legacy::RegisterUsingBoundKeypairRotationRequest {
                signature_algorithm_suite: suite.number(),
            },
        ))
        .await?;
        match self.receive().await? {
            P::RotationResponse(r) => Ok(r.public_key),
            _ => Err(Status::invalid_argument("expected a rotation response")),
        }
    }
}

#[tonic::async_trait]
impl legacy::join_service_server::JoinService for JoinLegacy {
    type RegisterUsingBoundKeypairMethodStream =
        Outbound<legacy::RegisterUsingBoundKeypairMethodResponse>;

    async fn register_using_bound_keypair_method(
        &self,
        request: Request<Streaming<legacy::RegisterUsingBoundKeypairMethodRequest>>,
    ) -> Result<Response<Self::RegisterUsingBoundKeypairMethodStream>, Status> {
        use legacy::register_using_bound_keypair_method_request::Payload as P;
        use legacy::register_using_bound_keypair_method_response::Response as R;
        let cluster = self.0.clone();
        let remote = remote_addr(&request);
        // `setBotParameters`: the instance and generation come from the caller's identity.
        let caller = cluster.authenticated_bot(request.extensions().get::<Caller>());
        cluster.check_client_version(request.metadata())?;
        let inbound = request.into_inner();
        Ok(Response::new(spawn_stream(move |out| async move {
            let mut peer = LegacyPeer {
                inbound,
                out,
                cluster: cluster.clone(),
            };
            let P::Init(init) = peer.receive().await? else {
                return Err(Status::invalid_argument("expected an init message"));
            };
            let request = init.join_request.unwrap_or_default();
            if request.role != "Bot" {
                return Err(Status::invalid_argument(
                    "bound keypair joining is only supported for bots",
                ));
            }
            let token = cluster.check_token(&request.token, None, &request.role)?;
            if token.join_method != "bound_keypair" {
                return Err(Status::invalid_argument(
                    "specified join token is not for `bound_keypair` method",
                ));
            }
            // The legacy request carries PEM and authorized_keys text (`lib/auth/join/join.go`).
            let tls_public_key = pem_public_key_to_spki(&request.public_tls_key)?;
            let ssh_public_key = ssh_key::PublicKey::from_openssh(
                String::from_utf8_lossy(&request.public_ssh_key).trim(),
            )
            .and_then(|k| k.to_bytes())
            .map_err(|e| {
                Status::invalid_argument(format!("ssh: failed to parse public key: {e}"))
            })?;
            let input = JoinInput {
                remote_addr: remote,
                tls_public_key,
                ssh_public_key,
                expires: request.expires.and_then(|t| SystemTime::try_from(t).ok()),
                initial_join_secret: init.initial_join_secret,
                previous_join_state: init.previous_join_state,
                caller,
            };
            let output = cluster.bound_keypair_join(&token, input, &mut peer).await?;
            let to_line = |wire: &[u8]| -> Result<Vec<u8>, Status> {
                ssh_key::PublicKey::from_bytes(wire)
                    .and_then(|k| k.to_openssh())
                    .map(|l| format!("{}\n", l.trim()).into_bytes())
                    .map_err(|e| Status::internal(e.to_string()))
            };
            let cert_line = ssh_key::Certificate::from_bytes(&output.ssh_cert)
                .and_then(|c| c.to_openssh())
                .map(|l| format!("{}\n", l.trim()).into_bytes())
                .map_err(|e| Status::internal(e.to_string()))?;
            peer.send(R::Certs(legacy::RegisterUsingBoundKeypairCertificates {
                certs: Some(legacy::Certs {
                    ssh: cert_line,
                    tls: keybound_teleport::pem::der_to_pem(&output.tls_cert).into_bytes(),
                    tlsca_certs: output
                        .tls_ca_certs
                        .iter()
                        .map(|d| keybound_teleport::pem::der_to_pem(d).into_bytes())
                        .collect(),
                    sshca_certs: output
                        .ssh_ca_keys
                        .iter()
                        .map(|w| to_line(w))
                        .collect::<Result<_, _>>()?,
                }),
                join_state: output.join_state,
                public_key: output.bound_public_key,
            }))
            .await?;
            cluster.record_join();
            Ok(())
        })))
    }
}

/// `keys.ParsePublicKey`: PEM `PUBLIC KEY` (PKIX) or `RSA PUBLIC KEY` (PKCS#1), to PKIX DER.
pub(crate) fn pem_public_key_to_spki(pem: &[u8]) -> Result<Vec<u8>, Status> {
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::pkcs8::EncodePublicKey as _;
    let bad = |e: String| Status::invalid_argument(format!("parsing public TLS key: {e}"));
    let (label, der) = pem_rfc7468::decode_vec(pem).map_err(|e| bad(e.to_string()))?;
    match label {
        "PUBLIC KEY" => Ok(der),
        "RSA PUBLIC KEY" => rsa::RsaPublicKey::from_pkcs1_der(&der)
            .map_err(|e| bad(e.to_string()))?
            .to_public_key_der()
            .map(|d| d.into_vec())
            .map_err(|e| bad(e.to_string())),
        other => Err(bad(format!("unexpected PEM type {other:?}"))),
    }
}
