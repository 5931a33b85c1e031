//! The dev cluster's Auth API: what a bot calls over its authenticated connection to fill its
//! identity outputs (`GenerateUserCerts`, `GetRole`, `GetClusterCACert`, `Ping`), with
//! Teleport's checks and error texts (`lib/auth/auth_with_roles.go`, `lib/services/role.go`;
//! `docs/teleport-source-notes.md`, "Auth API"). The trust service's CA reads are in
//! `trust.rs`.
//!
//! Every RPC needs a caller: the identity in the client certificate that the Auth endpoint
//! verified against the user CA (`caller.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keybound_proto::proto as legacy;
use keybound_proto::types;
use tonic::{Request, Response, Status};

use crate::ca::{BotCerts, BotFields, UserCertRequest};
use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::misbehave::{Misbehaviour, STALLED_ROLE};
use crate::roles::{Role, may_impersonate};
use crate::routes::route_attributes;
use crate::subject_keys::{authorized_key_to_wire, pem_public_key_to_spki};

/// `defaults.MaxRenewableCertTTL`: the cap on role-impersonated certificates.
const MAX_RENEWABLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub(crate) fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// `proto.AuthService`, the parts a bot's identity output calls.
#[derive(Clone)]
pub(crate) struct AuthApi(pub(crate) Arc<Cluster>);

#[tonic::async_trait]
impl legacy::auth_service_server::AuthService for AuthApi {
    async fn ping(
        &self,
        request: Request<legacy::PingRequest>,
    ) -> Result<Response<legacy::PingResponse>, Status> {
        let cluster = &self.0;
        cluster.caller(&request)?;
        Ok(Response::new(legacy::PingResponse {
            cluster_name: cluster.ca().cluster_name().to_owned(),
            server_version: cluster.config().server_version.clone(),
            proxy_public_addr: if cluster.misbehaviour() == Some(Misbehaviour::HostileProxyAddr) {
                cluster.config().hostile_text.clone()
            } else {
                String::new()
            },
            remote_addr: request
                .extensions()
                .get::<SocketAddr>()
                .map(ToString::to_string)
                .unwrap_or_default(),
            signature_algorithm_suite: cluster.config().suite.number(),
        }))
    }

    async fn get_role(
        &self,
        request: Request<legacy::GetRoleRequest>,
    ) -> Result<Response<types::RoleV6>, Status> {
        let caller = self.0.caller(&request)?;
        let name = &request.get_ref().name;
        // "Current-user exception": a user may always read the roles it holds; the dev cluster
        // grants no other role reads.
        if !caller.roles.contains(name) {
            return Err(Status::permission_denied(
                "access denied to perform action \"read\" on \"role\"",
            ));
        }
        let role = self
            .0
            .role(name)
            .ok_or_else(|| Status::not_found(format!("role {name} is not found")))?;
        Ok(Response::new(role.to_proto()))
    }

    async fn get_cluster_ca_cert(
        &self,
        request: Request<()>,
    ) -> Result<Response<legacy::GetClusterCaCertResponse>, Status> {
        self.0.caller(&request)?;
        Ok(Response::new(legacy::GetClusterCaCertResponse {
            tlsca: self.0.ca().host_ca_pem().into_bytes(),
        }))
    }

    async fn generate_user_certs(
        &self,
        request: Request<legacy::UserCertsRequest>,
    ) -> Result<Response<legacy::Certs>, Status> {
        let cluster = &self.0;
        let caller = cluster.caller(&request)?;
        if cluster.misbehaviour() == Some(Misbehaviour::HostileStatus) {
            return Err(Status::permission_denied(
                cluster.config().hostile_text.clone(),
            ));
        }
        let login_ip = request
            .extensions()
            .get::<SocketAddr>()
            .map(|a| a.ip().to_string());
        let req = request.into_inner();
        if cluster.misbehaviour() == Some(Misbehaviour::StallUserCerts)
            && req.role_requests.iter().any(|r| r == STALLED_ROLE)
        {
            tracing::warn!(user = %caller.username, "misbehaving: GenerateUserCerts will never answer");
            return std::future::pending().await;
        }
        let grant = grant(cluster, &caller, &req)?;
        let (tls_der, ssh_wire) = subject_keys(&req)?;
        let held: Vec<Role> = grant.roles.iter().filter_map(|r| cluster.role(r)).collect();
        let kubes: Vec<String> = cluster
            .kube_clusters()
            .into_iter()
            .map(|k| k.name)
            .collect();
        let routes = route_attributes(&req, &held, cluster.ca().cluster_name(), &kubes)?;
        let certs = issue(
            cluster,
            &caller,
            &grant,
            login_ip.as_deref(),
            (&tls_der, &ssh_wire),
            &routes,
        )?;
        cluster.record_user_certs();
        Ok(Response::new(certs_response(cluster, &certs)?))
    }

    async fn list_resources(
        &self,
        request: Request<legacy::ListResourcesRequest>,
    ) -> Result<Response<legacy::ListResourcesResponse>, Status> {
        let caller = self.0.caller(&request)?;
        crate::listing::list_resources(&self.0, &caller, request.get_ref()).map(Response::new)
    }
}

/// What a `GenerateUserCerts` call is granted once its checks pass.
struct Grant {
    /// Whether the certificates impersonate roles (for an output) rather than reissue the
    /// caller's own.
    impersonating: bool,
    /// Whether they may not request further certificates.
    disallow_reissue: bool,
    /// The roles they carry.
    roles: Vec<String>,
    /// The SSH logins of those roles.
    logins: Vec<String>,
    /// Their expiry.
    expires: SystemTime,
}

/// `generateUserCerts`' checks, in its order: who asks, whether it may reissue, for how long,
/// and for which roles.
fn grant(
    cluster: &Cluster,
    caller: &Caller,
    req: &legacy::UserCertsRequest,
) -> Result<Grant, Status> {
    let impersonating = req.use_role_requests || !req.role_requests.is_empty();
    if req.username != caller.username {
        return Err(Status::permission_denied(
            "access denied: impersonation is not allowed",
        ));
    }
    if caller.disallow_reissue {
        return Err(Status::permission_denied(
            "access denied: identity is not allowed to reissue certificates",
        ));
    }
    if caller.impersonator.is_some() && impersonating {
        return Err(Status::permission_denied(
            "access denied: impersonated roles can not request other roles",
        ));
    }
    let now = cluster.now();
    let expires = req
        .expires
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(now);
    if expires < now {
        return Err(Status::permission_denied(
            "access denied: client credentials have expired, please relogin.",
        ));
    }
    let (roles, expires) = if impersonating {
        if req.role_requests.is_empty() {
            return Err(Status::invalid_argument(
                "at least one role request is required",
            ));
        }
        (
            req.role_requests.clone(),
            expires.min(now + MAX_RENEWABLE_TTL),
        )
    } else {
        // A plain reissue of a non-renewable identity ends with it.
        (caller.roles.clone(), expires.min(caller.not_after))
    };
    let requested: Vec<Role> = roles
        .iter()
        .map(|name| {
            cluster
                .role(name)
                .ok_or_else(|| Status::not_found(format!("role {name} is not found")))
        })
        .collect::<Result<_, _>>()?;
    if impersonating {
        check_impersonation(cluster, caller, &roles)?;
    }
    // `generateUserCert`: no certificates for a locked user, nor for a locked role.
    cluster.check_user_locks(&caller.username, &roles)?;
    Ok(Grant {
        impersonating,
        disallow_reissue: impersonating && !req.reissuable_role_impersonation,
        logins: requested.iter().flat_map(|r| r.logins.clone()).collect(),
        roles,
        expires,
    })
}

/// `CheckImpersonateRoles`: the roles the caller holds must allow it to impersonate `roles`.
fn check_impersonation(cluster: &Cluster, caller: &Caller, roles: &[String]) -> Result<(), Status> {
    let held: Vec<Role> = caller
        .roles
        .iter()
        .filter_map(|r| cluster.role(r))
        .collect();
    let held: Vec<&Role> = held.iter().collect();
    if may_impersonate(&held, roles) {
        return Ok(());
    }
    tracing::info!(
        user = %caller.username,
        roles = %roles.join(", "),
        "access denied to impersonate roles"
    );
    Err(Status::permission_denied(format!(
        "user {:?} has requested role impersonation for {}",
        caller.username,
        go_quoted_list(roles)
    )))
}

/// The subject keys of the request, both required: PKIX DER of the TLS key, the SSH key's wire
/// blob.
fn subject_keys(req: &legacy::UserCertsRequest) -> Result<(Vec<u8>, Vec<u8>), Status> {
    if req.ssh_public_key.is_empty() || req.tls_public_key.is_empty() {
        return Err(Status::invalid_argument(
            "the dev cluster issues SSH and TLS certificates together: send both SSHPublicKey and TLSPublicKey",
        ));
    }
    let tls_der = pem_public_key_to_spki(&req.tls_public_key)?;
    let ssh_wire = authorized_key_to_wire(&req.ssh_public_key)?;
    Ok((tls_der, ssh_wire))
}

/// `generateUserCert`: the certificates the grant allows, carrying the caller's bot facts
/// (without the generation, on role-impersonated ones).
fn issue(
    cluster: &Cluster,
    caller: &Caller,
    grant: &Grant,
    login_ip: Option<&str>,
    (tls_der, ssh_wire): (&[u8], &[u8]),
    routes: &[(x509_cert::der::asn1::ObjectIdentifier, String)],
) -> Result<BotCerts, Status> {
    let bot = caller.bot_name.as_deref().map(|bot_name| BotFields {
        bot_name,
        bot_instance_id: caller.bot_instance_id.as_deref().unwrap_or(""),
        generation: if grant.impersonating {
            0
        } else {
            caller.generation
        },
        join_token_name: caller.join_token.as_deref().unwrap_or(""),
    });
    cluster
        .ca()
        .issue_user(&UserCertRequest {
            username: &caller.username,
            roles: &grant.roles,
            logins: if grant.impersonating {
                &grant.logins
            } else {
                &[]
            },
            impersonator: grant.impersonating.then_some(caller.username.as_str()),
            disallow_reissue: grant.disallow_reissue,
            bot,
            login_ip,
            tls_public_key_der: tls_der,
            ssh_public_key_wire: ssh_wire,
            not_after: grant.expires,
            cluster_name: (cluster.misbehaviour() == Some(Misbehaviour::HostileClusterName))
                .then_some(cluster.config().hostile_text.as_str()),
            extra: routes,
        })
        .map_err(|e| Status::invalid_argument(format!("{e:#}")))
}

/// The certificates as `GenerateUserCerts` returns them: an OpenSSH certificate line, a PEM
/// certificate, and the user CA's TLS certificate and SSH key.
fn certs_response(cluster: &Cluster, certs: &BotCerts) -> Result<legacy::Certs, Status> {
    let ssh_line = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire)
        .and_then(|c| c.to_openssh())
        .map_err(|e| Status::internal(e.to_string()))?;
    // In this context Auth returns only the user CA, TLS and SSH (tbot adds the host CAs).
    let (user_ssh, user_tls) = cluster
        .ca()
        .authority_public("user")
        .expect("the user CA exists");
    let comment = if cluster.misbehaviour() == Some(Misbehaviour::HostileCertComment) {
        format!(" {}", cluster.config().hostile_text)
    } else {
        String::new()
    };
    Ok(legacy::Certs {
        ssh: format!("{}{comment}\n", ssh_line.trim()).into_bytes(),
        tls: keybound_teleport::pem::der_to_pem(&certs.tls_cert_der).into_bytes(),
        tlsca_certs: vec![user_tls.into_bytes()],
        sshca_certs: user_ssh
            .into_iter()
            .map(|l| format!("{l}\n").into_bytes())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_quotes_lists_like_go() {
        assert_eq!(
            go_quoted_list(&["a".into(), "b c".into()]),
            r#"["a" "b c"]"#
        );
    }
}
