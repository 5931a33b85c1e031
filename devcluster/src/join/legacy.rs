//! `proto.JoinService/RegisterUsingBoundKeypairMethod` (`lib/join/server_boundkeypair.go`,
//! `lib/auth/join_bound_keypair.go`): the legacy bound-keypair join RPC, which carries keys and
//! certificates as PEM and OpenSSH text.

use std::sync::Arc;
use std::time::SystemTime;

use keybound_proto::proto as legacy;
use keybound_teleport::suite::Suite;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::peer::{JoinInput, JoinOutput, Peer};
use super::server::{Outbound, client_closed, drop_mid_join, remote_addr, spawn_stream, stall};
use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::misbehave::Misbehaviour;
use crate::subject_keys::{authorized_key_to_wire, pem_public_key_to_spki};

use legacy::register_using_bound_keypair_method_request::Payload as P;
use legacy::register_using_bound_keypair_method_response::Response as R;

/// The legacy join service.
#[derive(Clone)]
pub(crate) struct JoinLegacy(pub(crate) Arc<Cluster>);

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
        let cluster = self.0.clone();
        let remote = remote_addr(&request);
        // `setBotParameters`: the instance and generation come from the caller's identity.
        let caller = cluster.authenticated_bot(request.extensions().get::<Caller>());
        cluster.check_client_version(request.metadata())?;
        let inbound = request.into_inner();
        Ok(Response::new(spawn_stream(move |out| async move {
            let peer = LegacyPeer {
                inbound,
                out,
                cluster,
            };
            register(peer, remote, caller).await
        })))
    }
}

/// `RegisterUsingBoundKeypairMethod` once the stream is open: the init message, the token, the
/// bound-keypair handler, and the certificates as text.
async fn register(
    mut peer: LegacyPeer,
    remote: Option<String>,
    caller: Option<Caller>,
) -> Result<(), Status> {
    let cluster = peer.cluster.clone();
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
    let input = JoinInput {
        remote_addr: remote,
        tls_public_key: pem_public_key_to_spki(&request.public_tls_key)?,
        ssh_public_key: authorized_key_to_wire(&request.public_ssh_key)?,
        expires: request.expires.and_then(|t| SystemTime::try_from(t).ok()),
        initial_join_secret: zeroize::Zeroizing::new(init.initial_join_secret),
        previous_join_state: init.previous_join_state,
        caller,
    };
    let output = cluster.bound_keypair_join(&token, input, &mut peer).await?;
    peer.send(R::Certs(registration_certs(output)?)).await?;
    cluster.record_join();
    Ok(())
}

/// A successful join's certificates as the legacy RPC sends them: PEM certificates, an OpenSSH
/// certificate line and `authorized_keys` lines for the SSH CAs.
fn registration_certs(
    output: JoinOutput,
) -> Result<legacy::RegisterUsingBoundKeypairCertificates, Status> {
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
    Ok(legacy::RegisterUsingBoundKeypairCertificates {
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
    })
}
