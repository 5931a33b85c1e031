//! `TrustService.GenerateHostCert`: an SSH host certificate for a caller whose roles allow
//! `create` on `host_cert` for the principals asked (`lib/auth/trust/trustv1/service.go`), with
//! the checks of `HostCertParams.Check` (`lib/services/authority.go`) and Auth's signing
//! (`lib/auth/auth.go` `GenerateHostCert`).

use std::time::Duration;

use keybound_proto::teleport::trust::v1 as trust;
use tonic::Status;

use crate::auth::go_quoted_list;
use crate::ca::HostCertRequest;
use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::roles::Role;
use crate::rules::{HostCertContext, may_create_host_cert};

/// The one system role the dev cluster issues host certificates for (tbot's `ssh_host` asks
/// for it: `types.RoleNode`).
const NODE: &str = "Node";

/// Checks and signs a `GenerateHostCert` request from `caller`.
pub(crate) fn generate_host_cert(
    cluster: &Cluster,
    caller: &Caller,
    req: &trust::GenerateHostCertRequest,
) -> Result<trust::GenerateHostCertResponse, Status> {
    let held: Vec<Role> = caller
        .roles
        .iter()
        .filter_map(|r| cluster.role(r))
        .collect();
    let allow: Vec<_> = held.iter().flat_map(|r| &r.rules).collect();
    let deny: Vec<_> = held.iter().flat_map(|r| &r.deny_rules).collect();
    let cx = HostCertContext {
        principals: &req.principals,
    };
    if !may_create_host_cert(&allow, &deny, &cx) {
        tracing::info!(
            user = %caller.username,
            principals = %req.principals.join(", "),
            "access denied to create a host certificate"
        );
        return Err(Status::permission_denied(
            "access denied to perform action \"create\" on \"host_cert\"",
        ));
    }
    // HostCertParams.Check, in its order.
    if req.host_id.is_empty() && req.principals.is_empty() {
        return Err(Status::invalid_argument(format!(
            "HostID [{:?}] or Principals [{}] are required",
            req.host_id,
            go_quoted_list(&req.principals)
        )));
    }
    if req.cluster_name.is_empty() {
        return Err(Status::invalid_argument("ClusterName [\"\"] is required"));
    }
    if req.role != NODE {
        return Err(Status::invalid_argument(format!(
            "the dev cluster issues host certificates for role {NODE} only, not {:?}",
            req.role
        )));
    }
    let line = String::from_utf8_lossy(&req.key);
    let key = ssh_key::PublicKey::from_openssh(line.trim())
        .map_err(|e| Status::invalid_argument(format!("ssh: failed to parse public key: {e}")))?;
    let ttl = match req.ttl {
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            return Err(Status::invalid_argument("ttl: negative"));
        }
        Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
        None => Duration::ZERO,
    };
    let cert = cluster
        .ca()
        .issue_host_cert(&HostCertRequest {
            key: &key,
            principals: &req.principals,
            role: &req.role,
            cluster_name: &req.cluster_name,
            now: cluster.now(),
            ttl,
        })
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    Ok(trust::GenerateHostCertResponse {
        ssh_certificate: format!("{}\n", cert.trim()).into_bytes(),
    })
}
