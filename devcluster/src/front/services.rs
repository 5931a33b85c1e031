//! The gRPC services and where each is served: the one place an RPC service is registered.
//!
//! The Proxy's `teleport-proxy-grpc` route serves the join services, which need no identity;
//! Auth's endpoint serves those and the Auth API (`proto.AuthService`,
//! `teleport.trust.v1.TrustService`), whose callers show a client certificate.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use keybound_proto::teleport::machineid::v1 as machineid;
use keybound_proto::teleport::trust::v1 as trust;
use keybound_proto::teleport::workloadidentity::v1 as wi;
use tonic::Status;
use tower::Service as _;

use crate::auth::AuthApi;
use crate::cluster::Cluster;
use crate::federation::FederationApi;
use crate::join::{JoinLegacy, JoinV1};
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
        } else if auth && path.starts_with("/teleport.machineid.v1.SPIFFEFederationService/") {
            self.federation.clone().call(request).await
        } else {
            Ok(Status::unimplemented(format!("unknown method {path}")).into_http())
        }
    }
}
