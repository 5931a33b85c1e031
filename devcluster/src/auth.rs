//! The dev cluster's Auth API: what a bot calls over its authenticated connection to fill its
//! identity outputs (`GenerateUserCerts`, `GetRole`, `GetClusterCACert`, `Ping`, and the trust
//! service's CA reads), with Teleport's checks and error texts (`lib/auth/auth_with_roles.go`,
//! `lib/services/role.go`; `docs/teleport-source-notes.md`, "Auth API").
//!
//! Every RPC needs a caller: the identity in the client certificate that the Auth endpoint
//! verified against the user CA ([`Caller`]). A caller whose join token is locked is refused
//! with Teleport's bare "access denied".

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use keybound_proto::proto as legacy;
use keybound_proto::teleport::trust::v1 as trust;
use keybound_proto::types;
use tonic::{Request, Response, Status};
use x509_cert::der::Decode as _;

use super::Cluster;
use super::ca::{BotFields, UserCertRequest, oid};
use super::roles::{Role, may_impersonate};
use keybound_teleport::subject::attributes;

/// `defaults.MaxRenewableCertTTL`: the cap on role-impersonated certificates.
const MAX_RENEWABLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The caller of an Auth RPC, read from its verified client certificate (`tlsca.FromSubject`).
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) username: String,
    pub(crate) roles: Vec<String>,
    pub(crate) bot_name: Option<String>,
    pub(crate) bot_instance_id: Option<String>,
    pub(crate) generation: u64,
    pub(crate) impersonator: Option<String>,
    pub(crate) disallow_reissue: bool,
    pub(crate) join_token: Option<String>,
    pub(crate) not_after: SystemTime,
}

impl Caller {
    /// Reads the identity of a client certificate (already verified by the TLS layer).
    pub(crate) fn from_der(der: &[u8]) -> anyhow::Result<Self> {
        let cert = x509_cert::Certificate::from_der(der).context("not X.509")?;
        let tbs = &cert.tbs_certificate;
        let attrs = attributes(&tbs.subject);
        let one = |oid| attrs.one(oid);
        let username = one(oid::COMMON_NAME).context("no common name")?;
        let join_token = one(oid::JOIN_ATTRIBUTES)
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .and_then(|v| v["meta"]["join_token_name"].as_str().map(str::to_owned));
        Ok(Self {
            username,
            roles: attrs.all(oid::ORGANIZATION),
            bot_name: one(oid::BOT_NAME),
            bot_instance_id: one(oid::BOT_INSTANCE_ID),
            generation: one(oid::GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            impersonator: one(oid::IMPERSONATOR).filter(|i| !i.is_empty()),
            disallow_reissue: one(oid::DISALLOW_REISSUE).as_deref() == Some("true"),
            join_token,
            not_after: tbs.validity.not_after.to_system_time(),
        })
    }
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

fn access_denied() -> Status {
    Status::permission_denied("access denied")
}

impl Cluster {
    /// The caller of `request`, refused when there is none or its join token is locked.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(access_denied)?;
        if caller
            .join_token
            .as_deref()
            .is_some_and(|t| self.lock_on(t).is_some())
        {
            return Err(access_denied());
        }
        Ok(caller)
    }

    /// Whether a caller may use its identity to rejoin: not when its join token is locked
    /// (Teleport's authorizer fails, and the join server treats the stream as unauthenticated).
    pub(crate) fn authenticated_bot(&self, caller: Option<&Caller>) -> Option<Caller> {
        let caller = caller?;
        if caller
            .join_token
            .as_deref()
            .is_some_and(|t| self.lock_on(t).is_some())
        {
            return None;
        }
        caller.bot_name.as_ref()?;
        // An output's (role-impersonated) certificate carries the bot's name too, but it is
        // not the bot's identity: it cannot rejoin for it.
        if caller.impersonator.is_some() {
            return None;
        }
        Some(caller.clone())
    }

    /// The role named `name`, if it exists: one from the resources, the role of a `kind: bot`,
    /// or the (empty) role of a bot some token names.
    pub(crate) fn role(&self, name: &str) -> Option<Role> {
        if let Some(role) = self.roles.get(name) {
            return Some(role.clone());
        }
        let tokens = self.tokens.lock().expect("token lock");
        tokens
            .values()
            .find(|e| super::ca::bot_resource_name(&e.token.bot_name) == name)
            .map(|_| Role {
                name: name.to_owned(),
                ..Role::default()
            })
    }

    fn ca_proto(&self, kind: &str) -> Result<types::CertAuthorityV2, Status> {
        let (ssh, tls) = self.ca.authority_public(kind).ok_or_else(|| {
            Status::invalid_argument(format!("{kind:?} authority type is not supported"))
        })?;
        let cluster = if self.misbehaviour() == Some(super::Misbehaviour::HostileCaClusterName) {
            self.config.hostile_text.clone()
        } else {
            self.ca.cluster_name().to_owned()
        };
        Ok(types::CertAuthorityV2 {
            kind: "cert_authority".to_owned(),
            sub_kind: String::new(),
            version: "v2".to_owned(),
            metadata: Some(types::Metadata {
                name: cluster.clone(),
                namespace: "default".to_owned(),
                ..Default::default()
            }),
            spec: Some(types::CertAuthoritySpecV2 {
                r#type: kind.to_owned(),
                cluster_name: cluster,
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
                }),
                additional_trusted_keys: Some(types::CaKeySet::default()),
            }),
        })
    }
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
            cluster_name: cluster.ca.cluster_name().to_owned(),
            server_version: cluster.config.server_version.clone(),
            proxy_public_addr: if cluster.misbehaviour()
                == Some(super::Misbehaviour::HostileProxyAddr)
            {
                cluster.config.hostile_text.clone()
            } else {
                String::new()
            },
            remote_addr: request
                .extensions()
                .get::<std::net::SocketAddr>()
                .map(ToString::to_string)
                .unwrap_or_default(),
            signature_algorithm_suite: cluster.config.suite.number(),
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
            tlsca: self.0.ca.host_ca_pem().into_bytes(),
        }))
    }

    async fn generate_user_certs(
        &self,
        request: Request<legacy::UserCertsRequest>,
    ) -> Result<Response<legacy::Certs>, Status> {
        let cluster = &self.0;
        let caller = cluster.caller(&request)?;
        if cluster.misbehaviour() == Some(super::Misbehaviour::HostileStatus) {
            return Err(Status::permission_denied(
                cluster.config.hostile_text.clone(),
            ));
        }
        let login_ip = request
            .extensions()
            .get::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string());
        let req = request.into_inner();
        if cluster.misbehaviour() == Some(super::Misbehaviour::StallUserCerts)
            && req.role_requests.iter().any(|r| r == super::STALLED_ROLE)
        {
            tracing::warn!(user = %caller.username, "misbehaving: GenerateUserCerts will never answer");
            return std::future::pending().await;
        }
        let impersonating = req.use_role_requests || !req.role_requests.is_empty();
        // The order of `generateUserCerts`' checks.
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
            let held: Vec<Role> = caller
                .roles
                .iter()
                .filter_map(|r| cluster.role(r))
                .collect();
            let held: Vec<&Role> = held.iter().collect();
            if !may_impersonate(&held, &roles) {
                tracing::info!(
                    user = %caller.username,
                    roles = %roles.join(", "),
                    "access denied to impersonate roles"
                );
                return Err(Status::permission_denied(format!(
                    "user {:?} has requested role impersonation for {}",
                    caller.username,
                    go_quoted_list(&roles)
                )));
            }
        }
        if req.ssh_public_key.is_empty() || req.tls_public_key.is_empty() {
            return Err(Status::invalid_argument(
                "the dev cluster issues SSH and TLS certificates together: send both SSHPublicKey and TLSPublicKey",
            ));
        }
        let tls_der = super::service::pem_public_key_to_spki(&req.tls_public_key)?;
        let ssh_wire =
            ssh_key::PublicKey::from_openssh(String::from_utf8_lossy(&req.ssh_public_key).trim())
                .and_then(|k| k.to_bytes())
                .map_err(|e| {
                    Status::invalid_argument(format!("ssh: failed to parse public key: {e}"))
                })?;
        let logins: Vec<String> = requested.iter().flat_map(|r| r.logins.clone()).collect();
        let bot = caller.bot_name.as_deref().map(|bot_name| BotFields {
            bot_name,
            bot_instance_id: caller.bot_instance_id.as_deref().unwrap_or(""),
            generation: if impersonating { 0 } else { caller.generation },
            join_token_name: caller.join_token.as_deref().unwrap_or(""),
        });
        let certs = cluster
            .ca
            .issue_user(&UserCertRequest {
                username: &caller.username,
                roles: &roles,
                logins: if impersonating { &logins } else { &[] },
                impersonator: impersonating.then_some(caller.username.as_str()),
                disallow_reissue: impersonating && !req.reissuable_role_impersonation,
                bot,
                login_ip: login_ip.as_deref(),
                tls_public_key_der: &tls_der,
                ssh_public_key_wire: &ssh_wire,
                not_after: expires,
                cluster_name: (cluster.misbehaviour()
                    == Some(super::Misbehaviour::HostileClusterName))
                .then_some(cluster.config.hostile_text.as_str()),
            })
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        cluster.record_user_certs();
        let ssh_line = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire)
            .and_then(|c| c.to_openssh())
            .map_err(|e| Status::internal(e.to_string()))?;
        // In this context Auth returns only the user CA, TLS and SSH (tbot adds the host CAs).
        let (user_ssh, user_tls) = cluster
            .ca
            .authority_public("user")
            .expect("the user CA exists");
        let comment = if cluster.misbehaviour() == Some(super::Misbehaviour::HostileCertComment) {
            format!(" {}", cluster.config.hostile_text)
        } else {
            String::new()
        };
        Ok(Response::new(legacy::Certs {
            ssh: format!("{}{comment}\n", ssh_line.trim()).into_bytes(),
            tls: keybound_teleport::pem::der_to_pem(&certs.tls_cert_der).into_bytes(),
            tlsca_certs: vec![user_tls.into_bytes()],
            sshca_certs: user_ssh
                .into_iter()
                .map(|l| format!("{l}\n").into_bytes())
                .collect(),
        }))
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
        if req.domain != self.0.ca.cluster_name() {
            return Err(Status::not_found(format!(
                "cert authority {}/{} is not found",
                req.r#type, req.domain
            )));
        }
        Ok(Response::new(self.0.ca_proto(&req.r#type)?))
    }

    async fn get_cert_authorities(
        &self,
        request: Request<trust::GetCertAuthoritiesRequest>,
    ) -> Result<Response<trust::GetCertAuthoritiesResponse>, Status> {
        self.0.caller(&request)?;
        let req = request.into_inner();
        no_keys(req.include_key)?;
        Ok(Response::new(trust::GetCertAuthoritiesResponse {
            cert_authorities_v2: vec![self.0.ca_proto(&req.r#type)?],
        }))
    }
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
