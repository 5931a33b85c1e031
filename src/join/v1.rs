//! `/teleport.join.v1.JoinService/Join`: the stream, its first messages, and `GivingUp`.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use keybound_proto::teleport::join::v1::{
    self, challenge as ch, challenge_solution as sol, join_request, join_response, result as res,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tracing::{debug, info};

use super::error::{JoinError, closed_reason, code_name, status_error};
use super::exchange::generate_subject;
use super::exchange::{self, GiveUp, Issued, Message, Step};
use super::types::{JoinParams, Joined, MAX_MESSAGE, Rpc, expires};
use crate::identity::Identity;
use crate::subject_key::SubjectKey;
use crate::untrusted;
use keybound_teleport::suite::Suite;

/// How long keybound waits, after `GivingUp`, for the cluster to end the stream. The wait puts
/// the message on the wire before keybound goes on (or exits): Teleport records the reason in its
/// log and audit event. Teleport ends the stream as soon as it reads the message, so the wait is
/// one round trip; a cluster that never answers costs no more than this.
pub const GIVE_UP_WAIT: Duration = Duration::from_secs(2);

/// The request side of a `JoinService.Join` stream. Each send takes a sender of its own, so
/// taking the one kept here closes the side once in-flight sends are done.
struct Outbound(std::sync::Mutex<Option<mpsc::Sender<v1::JoinRequest>>>);

impl Outbound {
    fn sender(&self) -> Option<mpsc::Sender<v1::JoinRequest>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn close(&self) -> Option<mpsc::Sender<v1::JoinRequest>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// How an attempt with `JoinService.Join` ended, when not with a join.
/// How an attempt with `JoinService.Join` ended, when not with a join.
pub(super) enum Attempt {
    /// Try the legacy RPC (the reason is logged).
    Fallback(String),
    /// Stop with this error.
    Final(JoinError),
}

impl From<JoinError> for Attempt {
    fn from(error: JoinError) -> Self {
        Self::Final(error)
    }
}

/// `JoinService.Join`. With `pipelined`, the subject key is made for that suite before the
/// stream opens and `BoundKeypairInit` goes out right behind `ClientInit`, saving a round trip:
/// Teleport's server reads it after sending `ServerInit` whenever it arrives
/// (`lib/join/server.go`, docs/teleport-source-notes.md Q5). It would not refuse a key of
/// another type either (Q10), but keybound makes the key the cluster's suite asks for, as tbot
/// does: when `ServerInit` names a suite that calls for another key type, the stream is dropped
/// before any challenge is answered and a second one sends the right key, still pipelined.
pub(super) async fn join_new(
    channel: tonic::transport::Channel,
    params: &JoinParams,
    pipelined: Option<Suite>,
    answered: &AtomicBool,
) -> Result<Joined, Attempt> {
    let mut stream = match Stream::open(channel.clone(), params, pipelined).await? {
        Opened::Ready(stream) => stream,
        Opened::OtherSuite(suite) => {
            info!(%suite, subject_key = SubjectKey::kind_for(suite), "the cluster's suite calls for another subject key type; joining again with one");
            match Stream::open(channel, params, Some(suite)).await? {
                Opened::Ready(stream) => stream,
                Opened::OtherSuite(again) => {
                    return Err(JoinError::Refused(format!(
                        "the cluster named the suite {suite}, then {again}, in two joins in a row"
                    ))
                    .into());
                }
            }
        }
    };
    loop {
        let message = stream.next().await?;
        match exchange::decide(params, answered, message).await {
            Step::Ignore => {}
            Step::Solution(solution) => stream.send_solution(solution).await?,
            Step::RotationResponse(line) => stream.send_rotation_response(line).await?,
            Step::GiveUp(why) => return Err(stream.give_up(why).await),
            Step::Done(issued) => {
                return Ok(issued.joined(params, stream.subject, Rpc::Join, stream.suite)?);
            }
        }
    }
}

/// What opening a stream gave.
enum Opened {
    /// The stream, past `ServerInit` and `BoundKeypairInit`.
    Ready(Box<Stream>),
    /// `BoundKeypairInit` went out with a key of another type than this suite's: the stream is
    /// dropped, unanswered.
    OtherSuite(Suite),
}

/// An open `JoinService.Join` stream, past `ServerInit` and `BoundKeypairInit`.
struct Stream {
    outbound: Outbound,
    inbound: tonic::Streaming<v1::JoinResponse>,
    /// The subject key the certificates will be for.
    subject: SubjectKey,
    /// The cluster's suite, from `ServerInit`.
    suite: Suite,
}

impl Stream {
    /// Sends `ClientInit` (and, pipelined, `BoundKeypairInit`), reads `ServerInit`, then sends
    /// `BoundKeypairInit` if it did not go out already.
    async fn open(
        channel: tonic::transport::Channel,
        params: &JoinParams,
        pipelined: Option<Suite>,
    ) -> Result<Opened, Attempt> {
        let (tx, rx) = mpsc::channel::<v1::JoinRequest>(4);
        let outbound = Outbound(std::sync::Mutex::new(Some(tx)));
        let early = match pipelined {
            Some(suite) => Some(generate_subject(suite).await?),
            None => None,
        };
        outbound
            .send(join_request::Payload::ClientInit(v1::ClientInit {
                join_method: Some("bound_keypair".to_owned()),
                token_name: params.token.clone(),
                system_role: "Bot".to_owned(),
                ..Default::default()
            }))
            .await?;
        if let Some(subject) = &early {
            outbound.send(bound_init(params, subject)).await?;
        }
        let mut client = v1::join_service_client::JoinServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE);
        let mut inbound = client
            .join(ReceiverStream::new(rx))
            .await
            .map_err(first_failure)?
            .into_inner();
        let suite = server_init(&mut inbound).await?;
        let subject = match early {
            Some(subject) if subject.kind != SubjectKey::kind_for(suite) => {
                return Ok(Opened::OtherSuite(suite));
            }
            Some(subject) => {
                info!(%suite, subject_key = subject.kind, "joining with JoinService.Join (BoundKeypairInit sent with ClientInit)");
                subject
            }
            None => {
                let subject = generate_subject(suite).await?;
                info!(%suite, subject_key = subject.kind, "joining with JoinService.Join");
                if outbound.send(bound_init(params, &subject)).await.is_err() {
                    return Err(closed_reason(&mut inbound).await.into());
                }
                subject
            }
        };
        Ok(Opened::Ready(Box::new(Self {
            outbound,
            inbound,
            subject,
            suite,
        })))
    }

    /// The cluster's next message; the end of the stream or a status is an error.
    async fn next(&mut self) -> Result<Message, Attempt> {
        let message = self
            .inbound
            .message()
            .await
            .map_err(|s| Attempt::Final(status_error(&s)))?;
        match message {
            None => Err(JoinError::Unreachable(
                "the cluster closed the join stream before sending certificates".to_owned(),
            )
            .into()),
            Some(v1::JoinResponse { payload: None }) => Ok(Message::Empty),
            Some(v1::JoinResponse {
                payload: Some(payload),
            }) => Ok(message_of(payload)),
        }
    }

    /// Sends a challenge solution.
    async fn send_solution(&mut self, solution: String) -> Result<(), Attempt> {
        let sent = self
            .outbound
            .send(join_request::Payload::Solution(v1::ChallengeSolution {
                payload: Some(sol::Payload::BoundKeypairChallengeSolution(
                    v1::BoundKeypairChallengeSolution {
                        solution: solution.into_bytes(),
                    },
                )),
            }))
            .await;
        match sent {
            Ok(()) => Ok(()),
            Err(_) => Err(closed_reason(&mut self.inbound).await.into()),
        }
    }

    /// Sends a rotation response: the new key's `authorized_keys` line.
    async fn send_rotation_response(&mut self, line: String) -> Result<(), Attempt> {
        let sent = self
            .outbound
            .send(join_request::Payload::Solution(v1::ChallengeSolution {
                payload: Some(sol::Payload::BoundKeypairRotationResponse(
                    v1::BoundKeypairRotationResponse {
                        public_key: line.into_bytes(),
                    },
                )),
            }))
            .await;
        match sent {
            Ok(()) => Ok(()),
            Err(_) => Err(closed_reason(&mut self.inbound).await.into()),
        }
    }

    /// Tells the cluster why keybound stops this join: sends `GivingUp`, closes the request
    /// side, and waits (at most [`GIVE_UP_WAIT`]) for the cluster to end the stream, so that the
    /// message is delivered before the stream is dropped. Returns the error for the user.
    async fn give_up(&mut self, why: GiveUp) -> Attempt {
        let msg = why.message();
        // The error returned says why, once; the log only records that the cluster was told.
        debug!(reason = %msg, "sending GivingUp to the cluster");
        if let Some(tx) = self.outbound.close() {
            let giving_up = v1::JoinRequest {
                payload: Some(join_request::Payload::GivingUp(v1::GivingUp {
                    reason: v1::giving_up::Reason::ChallengeSolutionFailed as i32,
                    msg,
                })),
            };
            if tx.send(giving_up).await.is_ok() {
                drop(tx);
                let inbound = &mut self.inbound;
                let ended = tokio::time::timeout(GIVE_UP_WAIT, async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
                if ended.is_err() {
                    debug!(
                        wait_ms = GIVE_UP_WAIT.as_millis() as u64,
                        "the cluster did not end the join stream after GivingUp"
                    );
                }
            }
        }
        Attempt::Final(why.error)
    }
}

impl Outbound {
    /// Sends one message on the stream.
    async fn send(&self, payload: join_request::Payload) -> Result<(), JoinError> {
        let closed = || JoinError::Unreachable("the join stream closed while sending".to_owned());
        self.sender()
            .ok_or_else(closed)?
            .send(v1::JoinRequest {
                payload: Some(payload),
            })
            .await
            .map_err(|_| closed())
    }
}

/// `BoundKeypairInit` for `subject`: its PKIX DER and SSH wire public keys and the requested
/// expiry; in standard mode the last join state, and the registration secret while no join state
/// is held (static keys send neither).
fn bound_init(params: &JoinParams, subject: &SubjectKey) -> join_request::Payload {
    let (secret, join_state) = params
        .standard
        .as_ref()
        .map(crate::bkp::Standard::init_params)
        .unwrap_or_default();
    join_request::Payload::BoundKeypairInit(v1::BoundKeypairInit {
        client_params: Some(v1::ClientParams {
            payload: Some(v1::client_params::Payload::BotParams(v1::BotParams {
                public_keys: Some(v1::PublicKeys {
                    public_tls_key: subject.spki_der.clone(),
                    public_ssh_key: subject.ssh_wire.clone(),
                }),
                expires: Some(expires(params.credential_ttl)),
            })),
        }),
        initial_join_secret: secret.as_str().to_owned(),
        previous_join_state: join_state,
    })
}

/// How a failure before `ServerInit` ends the attempt: a refusal is final; anything else (an
/// UNIMPLEMENTED, a connection-level failure) falls back to the legacy RPC.
fn first_failure(status: Status) -> Attempt {
    match status.code() {
        Code::PermissionDenied | Code::InvalidArgument => Attempt::Final(status_error(&status)),
        _ => Attempt::Fallback(format!(
            "{}: {}",
            code_name(status.code()),
            untrusted::message(status.message())
        )),
    }
}

/// Reads `ServerInit` and the suite it names.
async fn server_init(inbound: &mut tonic::Streaming<v1::JoinResponse>) -> Result<Suite, Attempt> {
    match inbound.message().await.map_err(first_failure)? {
        Some(v1::JoinResponse {
            payload: Some(join_response::Payload::Init(init)),
        }) => {
            debug!(
                join_method = %untrusted::name(&init.join_method),
                suite = %untrusted::name(&init.signature_algorithm_suite),
                "received ServerInit"
            );
            Suite::parse(&init.signature_algorithm_suite).map_err(|_| {
                JoinError::Refused(format!(
                    "the cluster's ServerInit names an unknown signature algorithm suite {}",
                    untrusted::quoted(&init.signature_algorithm_suite)
                ))
                .into()
            })
        }
        Some(other) => Err(JoinError::Refused(format!(
            "the cluster's first join message is not ServerInit ({:?})",
            other.payload.map(|p| payload_name(&p))
        ))
        .into()),
        None => Err(Attempt::Fallback(
            "the stream ended before ServerInit".to_owned(),
        )),
    }
}

/// A message of the stream, as the exchange reads it.
fn message_of(payload: join_response::Payload) -> Message {
    match payload {
        join_response::Payload::Init(init) => Message::ServerInit {
            suite: init.signature_algorithm_suite,
        },
        join_response::Payload::Challenge(v1::Challenge {
            payload: Some(ch::Payload::BoundKeypairChallenge(c)),
        }) => Message::Challenge {
            public_key: String::from_utf8_lossy(&c.public_key).into_owned(),
            document: c.challenge,
        },
        join_response::Payload::Challenge(v1::Challenge {
            payload: Some(ch::Payload::BoundKeypairRotationRequest(r)),
        }) => Message::Rotation {
            suite: r.signature_algorithm_suite,
        },
        join_response::Payload::Result(v1::Result {
            payload: Some(res::Payload::BotResult(result)),
        }) => Message::Certificates(Issued {
            join_state: result
                .bound_keypair_result
                .as_ref()
                .map(|b| b.join_state.clone())
                .unwrap_or_default(),
            bound_public_key: result
                .bound_keypair_result
                .map(|b| String::from_utf8_lossy(&b.public_key).into_owned()),
            identity: result.certificates.map(|certs| {
                Box::new(move |subject: SubjectKey| {
                    Identity::from_wire(
                        subject.private_pem,
                        subject.ssh_authorized,
                        &certs.tls_cert,
                        &certs.tls_ca_certs,
                        &certs.ssh_cert,
                        &certs.ssh_ca_keys,
                    )
                }) as Box<_>
            }),
        }),
        other @ join_response::Payload::Result(_) => Message::OtherResult(payload_name(&other)),
        other => Message::Unexpected(payload_name(&other)),
    }
}

fn payload_name(payload: &join_response::Payload) -> &'static str {
    use v1::join_response::Payload;
    match payload {
        Payload::Init(_) => "ServerInit",
        Payload::Challenge(c) => match c.payload {
            Some(v1::challenge::Payload::BoundKeypairChallenge(_)) => "BoundKeypairChallenge",
            Some(v1::challenge::Payload::BoundKeypairRotationRequest(_)) => {
                "BoundKeypairRotationRequest"
            }
            _ => "a challenge for another join method",
        },
        Payload::Result(r) => match r.payload {
            Some(v1::result::Payload::BotResult(_)) => "BotResult",
            _ => "a result for a host",
        },
    }
}
