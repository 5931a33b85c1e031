//! The gRPC services and where each is served: the one place an RPC service is registered.
//!
//! The Proxy's `teleport-proxy-grpc` route serves the join services, which need no identity;
//! Auth's endpoint serves those and the Auth API (`proto.AuthService`,
//! `teleport.trust.v1.TrustService`), whose callers show a client certificate. The Proxy's
//! `teleport-proxy-ssh-grpc` route serves `teleport.transport.v1.TransportService` alone.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use keybound_proto::teleport::machineid::v1 as machineid;
use keybound_proto::teleport::transport::v1 as transport;
use keybound_proto::teleport::trust::v1 as trust;
use keybound_proto::teleport::workloadidentity::v1 as wi;
use tonic::Status;
use tower::Service as _;

use crate::auth::AuthApi;
use crate::bot_instances::BotInstanceApi;
use crate::cluster::Cluster;
use crate::federation::FederationApi;
use crate::join::{JoinLegacy, JoinV1};
use crate::transport::TransportApi;
use crate::trust::TrustApi;
use crate::workload_identity::IssuanceApi;

/// The gRPC services, made once and cloned per connection.
#[derive(Clone)]
pub(super) struct Services {
    join_v1: v1::join_service_server::JoinServiceServer<JoinV1>,
    join_legacy: legacy::join_service_server::JoinServiceServer<JoinLegacy>,
    auth: legacy::auth_service_server::AuthServiceServer<AuthApi>,
    trust: trust::trust_service_server::TrustServiceServer<TrustApi>,
    issuance: wi::workload_identity_issuance_service_server::WorkloadIdentityIssuanceServiceServer<
        IssuanceApi,
    >,
    bot_instances: machineid::bot_instance_service_server::BotInstanceServiceServer<BotInstanceApi>,
    transport: transport::transport_service_server::TransportServiceServer<TransportApi>,
    federation:
        machineid::spiffe_federation_service_server::SpiffeFederationServiceServer<FederationApi>,
}

impl Services {
    pub(super) fn new(cluster: &Arc<Cluster>) -> Self {
        Self {
            join_v1: v1::join_service_server::JoinServiceServer::new(JoinV1(cluster.clone())),
            join_legacy: legacy::join_service_server::JoinServiceServer::new(JoinLegacy(
                cluster.clone(),
            )),
            auth: legacy::auth_service_server::AuthServiceServer::new(AuthApi(cluster.clone())),
            trust: trust::trust_service_server::TrustServiceServer::new(TrustApi(cluster.clone())),
            issuance:
                wi::workload_identity_issuance_service_server::WorkloadIdentityIssuanceServiceServer::new(
                    IssuanceApi(cluster.clone()),
                ),
            bot_instances: machineid::bot_instance_service_server::BotInstanceServiceServer::new(
                BotInstanceApi(cluster.clone()),
            ),
            transport: transport::transport_service_server::TransportServiceServer::new(
                TransportApi(cluster.clone()),
            ),
            federation: machineid::spiffe_federation_service_server::SpiffeFederationServiceServer::new(
                FederationApi(cluster.clone()),
            ),
        }
    }

    /// Sends a gRPC request to its service: the join services everywhere, the Auth API only on
    /// Auth's endpoint (`auth`).
    pub(super) async fn route(
        self,
        request: hyper::Request<Incoming>,
        auth: bool,
    ) -> Result<hyper::Response<tonic::body::Body>, Infallible> {
        let path = request.uri().path();
        if path.starts_with("/teleport.join.v1.JoinService/") {
            self.join_v1.clone().call(request).await
        } else if path.starts_with("/proto.JoinService/") {
            self.join_legacy.clone().call(request).await
        } else if auth && path.starts_with("/proto.AuthService/") {
            self.auth.clone().call(request).await
        } else if auth && path.starts_with("/teleport.trust.v1.TrustService/") {
            self.trust.clone().call(request).await
        } else if auth
            && path.starts_with("/teleport.workloadidentity.v1.WorkloadIdentityIssuanceService/")
        {
            self.issuance.clone().call(request).await
        } else if auth && path.starts_with("/teleport.machineid.v1.BotInstanceService/") {
            self.bot_instances.clone().call(request).await
        } else if auth && path.starts_with("/teleport.machineid.v1.SPIFFEFederationService/") {
            self.federation.clone().call(request).await
        } else {
            Ok(Status::unimplemented(format!("unknown method {path}")).into_http())
        }
    }

    /// Sends a gRPC request on the Proxy's SSH route (`teleport-proxy-ssh-grpc`) to its one
    /// service.
    pub(super) async fn route_ssh(
        self,
        request: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<tonic::body::Body>, Infallible> {
        let path = request.uri().path();
        if path.starts_with("/teleport.transport.v1.TransportService/") {
            self.transport.clone().call(request).await
        } else {
            Ok(Status::unimplemented(format!("unknown method {path}")).into_http())
        }
    }
}
