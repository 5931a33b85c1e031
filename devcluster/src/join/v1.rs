//! `teleport.join.v1.JoinService/Join` (`lib/join/joinv1/server.go`, `lib/join/server.go`):
//! the unified join RPC, here for the bound-keypair method only.

use std::sync::Arc;
use std::time::SystemTime;

use keybound_proto::teleport::join::v1;
use keybound_teleport::suite::Suite;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::peer::{JoinInput, JoinOutput, Peer};
use super::server::{Outbound, client_closed, drop_mid_join, remote_addr, spawn_stream, stall};
use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::misbehave::Misbehaviour;
use crate::subject_keys::check_der_and_wire;

/// The unified join service.
#[derive(Clone)]
pub(crate) struct JoinV1(pub(crate) Arc<Cluster>);

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
fn suite_string(suite: Suite) -> String {
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
        if cluster.config().legacy_only {
            return Err(Status::unimplemented(
                "unknown service teleport.join.v1.JoinService",
            ));
        }
        if cluster.misbehaviour() == Some(Misbehaviour::HostileStatus) {
            return Err(Status::unimplemented(cluster.config().hostile_text.clone()));
        }
        let remote = remote_addr(&request);
        // On Auth's endpoint a bot's certificate authenticates the stream (`authenticate` in
        // lib/join/server.go); the Proxy's route never carries one.
        let caller = cluster.authenticated_bot(request.extensions().get::<Caller>());
        cluster.check_client_version(request.metadata())?;
        let inbound = request.into_inner();
        Ok(Response::new(spawn_stream(move |out| async move {
            let peer = V1Peer {
                inbound,
                out,
                cluster,
                token: String::new(),
            };
            join(peer, remote, caller).await
        })))
    }
}

/// `Server.Join` once the stream is open: `ClientInit`, the token, `ServerInit`, then the
/// bound-keypair handler, and its result.
async fn join(
    mut peer: V1Peer,
    remote: Option<String>,
    caller: Option<Caller>,
) -> Result<(), Status> {
    let cluster = peer.cluster.clone();
    let init = peer.client_init().await?;
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
    peer.send_server_init().await?;
    let input = peer
        .bound_keypair_init(&init.system_role, held, remote, caller)
        .await?;
    let output = cluster.bound_keypair_join(&token, input, &mut peer).await?;
    peer.send(bot_result(output)).await?;
    cluster.record_join();
    Ok(())
}

impl V1Peer {
    /// Receives `ClientInit` and checks it (`ClientInit.Check`, and what only a proxy may set).
    async fn client_init(&mut self) -> Result<v1::ClientInit, Status> {
        let v1::join_request::Payload::ClientInit(init) = self.receive().await? else {
            return Err(Status::invalid_argument(
                "expected client to send message of type *messages.ClientInit",
            ));
        };
        if init.token_name.is_empty() {
            return Err(Status::invalid_argument(
                "validating ClientInit message: TokenName is required",
            ));
        }
        self.token.clone_from(&init.token_name);
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
        Ok(init)
    }

    /// `ServerInit`: the join method and the cluster's suite.
    async fn send_server_init(&self) -> Result<(), Status> {
        let server_init = v1::ServerInit {
            join_method: "bound_keypair".to_owned(),
            signature_algorithm_suite: suite_string(self.cluster.config().suite),
        };
        self.send(v1::join_response::Payload::Init(server_init))
            .await?;
        if self.cluster.config().duplicate_server_init {
            // What builds before gravitational/teleport#60291 did: the bound-keypair handler
            // sent a second ServerInit without a suite.
            self.send(v1::join_response::Payload::Init(v1::ServerInit {
                join_method: "bound_keypair".to_owned(),
                signature_algorithm_suite: String::new(),
            }))
            .await?;
        }
        Ok(())
    }

    /// The bound-keypair handler's first message: a bot's `BoundKeypairInit` (already received,
    /// `held`, under [`Misbehaviour::HoldServerInit`]), with its subject keys checked.
    async fn bound_keypair_init(
        &mut self,
        system_role: &str,
        held: Option<v1::join_request::Payload>,
        remote: Option<String>,
        caller: Option<Caller>,
    ) -> Result<JoinInput, Status> {
        if system_role != "Bot" {
            return Err(Status::invalid_argument(
                "bound keypair joining is only supported for bots",
            ));
        }
        let next = match held {
            Some(message) => message,
            None => self.receive().await?,
        };
        let bk = match next {
            v1::join_request::Payload::BoundKeypairInit(bk) => bk,
            v1::join_request::Payload::GivingUp(g) => return Err(self.gave_up(&g)),
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
            initial_join_secret: zeroize::Zeroizing::new(bk.initial_join_secret),
            previous_join_state: bk.previous_join_state,
            caller,
        };
        check_der_and_wire(&input.tls_public_key, &input.ssh_public_key)?;
        Ok(input)
    }
}

/// A successful join's `Result`: the bot's certificates and the bound-keypair result.
fn bot_result(output: JoinOutput) -> v1::join_response::Payload {
    v1::join_response::Payload::Result(v1::Result {
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
    })
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
