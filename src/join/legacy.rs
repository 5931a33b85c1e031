//! The legacy `/proto.JoinService/RegisterUsingBoundKeypairMethod`, for clusters that do not
//! serve `JoinService.Join`. It has no `ServerInit` (the caller learns the suite first) and no
//! `GivingUp`: ending the stream is how a client gives up.

use std::sync::atomic::AtomicBool;

use keybound_proto::proto::{
    self as legacy, register_using_bound_keypair_method_request as req,
    register_using_bound_keypair_method_response as resp,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info};

use super::error::{JoinError, closed_reason, status_error};
use super::exchange::generate_subject;
use super::exchange::{self, Issued, Message, Step};
use super::types::{JoinParams, Joined, MAX_MESSAGE, Rpc, expires};
use crate::identity::Identity;
use crate::subject_key::SubjectKey;
use keybound_teleport::suite::Suite;

/// The legacy RPC, under `suite` (learned beforehand).
pub(super) async fn join_legacy(
    channel: tonic::transport::Channel,
    params: &JoinParams,
    suite: Suite,
    answered: &AtomicBool,
) -> Result<Joined, JoinError> {
    let subject = generate_subject(suite).await?;
    info!(%suite, subject_key = subject.kind, "joining with the legacy RegisterUsingBoundKeypairMethod");
    let (tx, rx) = mpsc::channel::<legacy::RegisterUsingBoundKeypairMethodRequest>(4);
    send(&tx, init(params, &subject)).await?;
    let mut client = legacy::join_service_client::JoinServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE);
    let mut inbound = client
        .register_using_bound_keypair_method(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    loop {
        let message = match inbound.message().await.map_err(|s| status_error(&s))? {
            None => {
                return Err(JoinError::Unreachable(
                    "the cluster closed the join stream before sending certificates".to_owned(),
                ));
            }
            Some(legacy::RegisterUsingBoundKeypairMethodResponse { response: None }) => {
                Message::Empty
            }
            Some(legacy::RegisterUsingBoundKeypairMethodResponse {
                response: Some(response),
            }) => message_of(response),
        };
        match exchange::decide(params, answered, message).await {
            Step::Ignore => {}
            Step::Solution(solution) => {
                let response = req::Payload::ChallengeResponse(
                    legacy::RegisterUsingBoundKeypairChallengeResponse {
                        solution: solution.into_bytes(),
                    },
                );
                if send(&tx, response).await.is_err() {
                    return Err(closed_reason(&mut inbound).await);
                }
            }
            Step::RotationResponse(line) => {
                let response = req::Payload::RotationResponse(
                    legacy::RegisterUsingBoundKeypairRotationResponse { public_key: line },
                );
                if send(&tx, response).await.is_err() {
                    return Err(closed_reason(&mut inbound).await);
                }
            }
            Step::GiveUp(why) => {
                // The error returned says why, once (the legacy RPC has no GivingUp message).
                debug!(reason = %why.message(), "giving up on the join");
                return Err(why.error);
            }
            Step::Done(issued) => return issued.joined(params, subject, Rpc::Legacy, suite),
        }
    }
}

async fn send(
    tx: &mpsc::Sender<legacy::RegisterUsingBoundKeypairMethodRequest>,
    payload: req::Payload,
) -> Result<(), JoinError> {
    tx.send(legacy::RegisterUsingBoundKeypairMethodRequest {
        payload: Some(payload),
    })
    .await
    .map_err(|_| JoinError::Unreachable("the join stream closed while sending".to_owned()))
}

/// The first message: the token, the subject key's public halves and the requested expiry.
fn init(params: &JoinParams, subject: &SubjectKey) -> req::Payload {
    let (secret, join_state) = params
        .standard
        .as_ref()
        .map(crate::bkp::Standard::init_params)
        .unwrap_or_default();
    req::Payload::Init(legacy::RegisterUsingBoundKeypairInitialRequest {
        join_request: Some(keybound_proto::types::RegisterUsingTokenRequest {
            token: params.token.clone(),
            role: "Bot".to_owned(),
            // keys.MarshalPublicKey (PEM) and ssh.MarshalAuthorizedKey (with its newline), as
            // lib/auth/join/join.go sends them.
            public_tls_key: subject.public_pem.clone().into_bytes(),
            public_ssh_key: format!("{}\n", subject.ssh_authorized).into_bytes(),
            expires: Some(expires(params.credential_ttl)),
            ..Default::default()
        }),
        initial_join_secret: secret.as_str().to_owned(),
        previous_join_state: join_state,
    })
}

/// A message of the stream, as the exchange reads it.
fn message_of(response: resp::Response) -> Message {
    match response {
        resp::Response::Challenge(c) => Message::Challenge {
            public_key: c.public_key,
            document: c.challenge,
        },
        resp::Response::Rotation(r) => Message::Rotation {
            suite: Suite::from_number(r.signature_algorithm_suite)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        },
        resp::Response::Certs(result) => Message::Certificates(Issued {
            join_state: result.join_state,
            bound_public_key: Some(result.public_key),
            identity: result.certs.map(|certs| {
                Box::new(move |subject: SubjectKey| {
                    Identity::from_text(
                        subject.private_pem,
                        subject.ssh_authorized,
                        &certs.tls,
                        &certs.tlsca_certs,
                        &certs.ssh,
                        &certs.sshca_certs,
                    )
                }) as Box<_>
            }),
        }),
    }
}
