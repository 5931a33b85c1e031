//! `teleport.trust.v1.TrustService`, the parts a bot's outputs call: the cluster's CA records,
//! never their keys (`lib/auth/trust/trustv1/service.go`), and `GenerateHostCert`
//! (`host_certs.rs`).

use std::sync::Arc;

use keybound_proto::teleport::trust::v1 as trust;
use keybound_proto::types;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::misbehave::Misbehaviour;

/// `teleport.trust.v1.TrustService`, the reading parts.
#[derive(Clone)]
pub(crate) struct TrustApi(pub(crate) Arc<Cluster>);

#[tonic::async_trait]
impl trust::trust_service_server::TrustService for TrustApi {
    async fn get_cert_authority(
        &self,
        request: Request<trust::GetCertAuthorityRequest>,
    ) -> Result<Response<types::CertAuthorityV2>, Status> {
        self.0.caller(&request)?;
        let req = request.into_inner();
        no_keys(req.include_key)?;
        if req.domain != self.0.ca().cluster_name() {
            return Err(Status::not_found(format!(
                "cert authority {}/{} is not found",
                req.r#type, req.domain
            )));
        }
        Ok(Response::new(ca_proto(&self.0, &req.r#type)?))
    }

    async fn get_cert_authorities(
        &self,
        request: Request<trust::GetCertAuthoritiesRequest>,
    ) -> Result<Response<trust::GetCertAuthoritiesResponse>, Status> {
        self.0.caller(&request)?;
        let req = request.into_inner();
        no_keys(req.include_key)?;
        Ok(Response::new(trust::GetCertAuthoritiesResponse {
            cert_authorities_v2: vec![ca_proto(&self.0, &req.r#type)?],
        }))
    }

    async fn generate_host_cert(
        &self,
        request: Request<trust::GenerateHostCertRequest>,
    ) -> Result<Response<trust::GenerateHostCertResponse>, Status> {
        let caller = self.0.caller(&request)?;
        crate::host_certs::generate_host_cert(&self.0, &caller, request.get_ref())
            .map(Response::new)
    }
}

/// A bot may read CAs, never their keys.
fn no_keys(include_key: bool) -> Result<(), Status> {
    if include_key {
        return Err(Status::permission_denied(
            "access denied to perform action \"read\" on \"cert_authority\"",
        ));
    }
    Ok(())
}

/// The JWT keys of a CA's record: the SPIFFE CA's (which signs JWT SVIDs), none for others.
fn jwt_keys(cluster: &Cluster, kind: &str) -> Result<Vec<types::JwtKeyPair>, Status> {
    if kind != "spiffe" {
        return Ok(Vec::new());
    }
    let pem = cluster
        .ca()
        .spiffe_jwt_public_pem()
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    Ok(vec![types::JwtKeyPair {
        public_key: pem.into_bytes(),
    }])
}

/// A CA's record (`types.CertAuthorityV2`) with its public parts only.
fn ca_proto(cluster: &Cluster, kind: &str) -> Result<types::CertAuthorityV2, Status> {
    let (ssh, tls) = cluster.ca().authority_public(kind).ok_or_else(|| {
        Status::invalid_argument(format!("{kind:?} authority type is not supported"))
    })?;
    let name = if cluster.misbehaviour() == Some(Misbehaviour::HostileCaClusterName) {
        cluster.config().hostile_text.clone()
    } else {
        cluster.ca().cluster_name().to_owned()
    };
    Ok(types::CertAuthorityV2 {
        kind: "cert_authority".to_owned(),
        sub_kind: String::new(),
        version: "v2".to_owned(),
        metadata: Some(types::Metadata {
            name: name.clone(),
            namespace: "default".to_owned(),
            ..Default::default()
        }),
        spec: Some(types::CertAuthoritySpecV2 {
            r#type: kind.to_owned(),
            cluster_name: name,
            active_keys: Some(types::CaKeySet {
                ssh: ssh
                    .into_iter()
                    .map(|line| types::SshKeyPair {
                        public_key: line.into_bytes(),
                    })
                    .collect(),
                tls: vec![types::TlsKeyPair {
                    cert: tls.into_bytes(),
                }],
                jwt: jwt_keys(cluster, kind)?,
            }),
            additional_trusted_keys: Some(types::CaKeySet::default()),
        }),
    })
}
