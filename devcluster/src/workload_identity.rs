//! `teleport.workloadidentity.v1.WorkloadIdentityIssuanceService`: X.509 and JWT SVIDs from
//! the cluster's `workload_identity` resources, with the checks of
//! `lib/auth/machineid/workloadidentityv1/issuer_service.go`: by name, the caller's roles must
//! allow `read` on `workload_identity` and their `workload_identity_labels` match the resource
//! (an unknown name is NotFound first); by labels, `read` and `list`, and resources the caller
//! may not use are skipped silently, more than ten an error. The SPIFFE ID path is the
//! resource's template filled from the request's attributes; the TTL defaults to an hour and
//! is capped at 24 hours.

use std::sync::Arc;
use std::time::Duration;

use keybound_proto::teleport::workloadidentity::v1 as wi;
use rand_core::{OsRng, RngCore as _};
use tonic::{Request, Response, Status};

use crate::ca::X509SvidRequest;
use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::roles::Role;
use crate::rules;
use crate::workload_identities::{Attributes, UnixAttributes, WorkloadIdentity};

/// `defaultTTL`.
const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);
/// `defaultMaxTTL`.
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// `maxWorkloadIdentitiesIssued`.
const MAX_ISSUED: usize = 10;

/// The issuance service.
#[derive(Clone)]
pub(crate) struct IssuanceApi(pub(crate) Arc<Cluster>);

/// What is asked for, from either request.
enum Params<'a> {
    X509(&'a wi::X509svidParams),
    Jwt(&'a wi::JwtsvidParams),
}

#[tonic::async_trait]
impl wi::workload_identity_issuance_service_server::WorkloadIdentityIssuanceService
    for IssuanceApi
{
    async fn issue_workload_identity(
        &self,
        request: Request<wi::IssueWorkloadIdentityRequest>,
    ) -> Result<Response<wi::IssueWorkloadIdentityResponse>, Status> {
        let cluster = &self.0;
        let caller = cluster.caller(&request)?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name: is required"));
        }
        let params = params_of(req.credential.as_ref().map(|c| match c {
            wi::issue_workload_identity_request::Credential::X509SvidParams(p) => Params::X509(p),
            wi::issue_workload_identity_request::Credential::JwtSvidParams(p) => Params::Jwt(p),
        }))?;
        let attrs = attributes(&caller, req.workload_attrs.as_ref());
        let resource = cluster.workload_identity(&req.name).ok_or_else(|| {
            Status::not_found(format!("workload_identity {:?} not found", req.name))
        })?;
        let roles = held_roles(cluster, &caller);
        authorize(&roles, &resource, &["read"])?;
        let path = resource.render_spiffe_id(&attrs).map_err(|e| {
            Status::invalid_argument(format!("workload identity failed evaluation: {e}"))
        })?;
        let credential = issue(
            cluster,
            &resource,
            &path,
            &params,
            requested_ttl(req.requested_ttl),
        )?;
        Ok(Response::new(wi::IssueWorkloadIdentityResponse {
            credential: Some(credential),
        }))
    }

    async fn issue_workload_identities(
        &self,
        request: Request<wi::IssueWorkloadIdentitiesRequest>,
    ) -> Result<Response<wi::IssueWorkloadIdentitiesResponse>, Status> {
        let cluster = &self.0;
        let caller = cluster.caller(&request)?;
        let req = request.into_inner();
        if req.label_selectors.is_empty() {
            return Err(Status::invalid_argument(
                "label_selectors: at least one label selector must be specified",
            ));
        }
        let params = params_of(req.credential.as_ref().map(|c| match c {
            wi::issue_workload_identities_request::Credential::X509SvidParams(p) => Params::X509(p),
            wi::issue_workload_identities_request::Credential::JwtSvidParams(p) => Params::Jwt(p),
        }))?;
        let roles = held_roles(cluster, &caller);
        let (allow, deny) = rule_sets(&roles);
        if !rules::may(&allow, &deny, "workload_identity", &["read", "list"]) {
            return Err(denied("read"));
        }
        let attrs = attributes(&caller, req.workload_attrs.as_ref());
        let selectors: Vec<(String, Vec<String>)> = req
            .label_selectors
            .iter()
            .map(|s| (s.key.clone(), s.values.clone()))
            .collect();
        let mut chosen = Vec::new();
        for resource in cluster.workload_identities() {
            if !resource.selected_by(&selectors)
                || authorize(&roles, &resource, &["read", "list"]).is_err()
            {
                continue;
            }
            // A resource whose evaluation fails is not issued from (`decide`).
            let Ok(path) = resource.render_spiffe_id(&attrs) else {
                continue;
            };
            chosen.push((resource, path));
            if chosen.len() > MAX_ISSUED {
                return Err(Status::invalid_argument(format!(
                    "number of identities that would be issued exceeds maximum permitted (max = \
                     {MAX_ISSUED}), use more specific labels"
                )));
            }
        }
        let credentials = chosen
            .iter()
            .map(|(resource, path)| {
                issue(
                    cluster,
                    resource,
                    path,
                    &params,
                    requested_ttl(req.requested_ttl),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(wi::IssueWorkloadIdentitiesResponse {
            credentials,
        }))
    }
}

fn params_of(params: Option<Params<'_>>) -> Result<Params<'_>, Status> {
    params.ok_or_else(|| Status::invalid_argument("at least one credential type must be requested"))
}

/// The lifetime asked for, if any (a negative one counts as none).
fn requested_ttl<D: TryInto<Duration>>(requested: Option<D>) -> Option<Duration> {
    requested.and_then(|d| d.try_into().ok())
}

fn denied(verb: &str) -> Status {
    Status::permission_denied(format!(
        "access denied to perform action {verb:?} on \"workload_identity\""
    ))
}

fn held_roles(cluster: &Cluster, caller: &Caller) -> Vec<Role> {
    caller
        .roles
        .iter()
        .filter_map(|r| cluster.role(r))
        .collect()
}

fn rule_sets(roles: &[Role]) -> (Vec<&rules::Rule>, Vec<&rules::Rule>) {
    (
        roles.iter().flat_map(|r| &r.rules).collect(),
        roles.iter().flat_map(|r| &r.deny_rules).collect(),
    )
}

/// `authorizeIssuance`: the verbs on `workload_identity`, then a role whose
/// `workload_identity_labels` match the resource.
fn authorize(roles: &[Role], resource: &WorkloadIdentity, verbs: &[&str]) -> Result<(), Status> {
    let (allow, deny) = rule_sets(roles);
    if !rules::may(&allow, &deny, "workload_identity", verbs) {
        return Err(denied(verbs[0]));
    }
    if !roles
        .iter()
        .any(|r| resource.matches(&r.workload_identity_labels))
    {
        return Err(Status::permission_denied(format!(
            "access denied to workload_identity {:?}: no role's workload_identity_labels match \
             its labels",
            resource.name
        )));
    }
    Ok(())
}

/// `deriveAttrs`: the workload's attested attributes and the caller's.
fn attributes(caller: &Caller, workload: Option<&wi::WorkloadAttrs>) -> Attributes {
    Attributes {
        unix: workload
            .and_then(|w| w.unix.as_ref())
            .filter(|u| u.attested)
            .map(|u| UnixAttributes {
                pid: u.pid,
                uid: u.uid,
                gid: u.gid,
            }),
        user_name: caller.username.clone(),
        bot_name: caller.bot_name.clone().unwrap_or_default(),
    }
}

/// One credential from `resource`.
fn issue(
    cluster: &Cluster,
    resource: &WorkloadIdentity,
    path: &str,
    params: &Params<'_>,
    requested: Option<Duration>,
) -> Result<wi::Credential, Status> {
    let spiffe_id = format!("spiffe://{}{path}", cluster.ca().trust_domain());
    let ttl = requested
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_TTL)
        .min(MAX_TTL);
    let now = cluster.now();
    let not_after = now + ttl;
    let internal = |e: anyhow::Error| Status::internal(format!("{e:#}"));
    let credential = match params {
        Params::X509(p) => {
            if p.public_key.is_empty() {
                return Err(Status::invalid_argument(
                    "x509_svid_params.public_key: is required",
                ));
            }
            let (cert, serial) = cluster
                .ca()
                .issue_x509_svid(&X509SvidRequest {
                    spiffe_id: &spiffe_id,
                    public_key_der: &p.public_key,
                    not_before: now - Duration::from_secs(60),
                    not_after,
                })
                .map_err(|e| Status::invalid_argument(format!("issuing X509 SVID: {e:#}")))?;
            wi::credential::Credential::X509Svid(wi::X509svidCredential {
                cert,
                serial_number: serial,
                chain: Vec::new(),
            })
        }
        Params::Jwt(p) => {
            if p.audiences.is_empty() {
                return Err(Status::invalid_argument(
                    "jwt_svid_params.audiences: at least one audience should be specified",
                ));
            }
            let mut bytes = [0u8; 16];
            OsRng.fill_bytes(&mut bytes);
            let jti: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let issuer = format!("https://{}/workload-identity", cluster.public_addr());
            let jwt = cluster
                .ca()
                .sign_jwt_svid(&spiffe_id, &p.audiences, &jti, &issuer, now, not_after)
                .map_err(internal)?;
            wi::credential::Credential::JwtSvid(wi::JwtsvidCredential { jwt, jti })
        }
    };
    Ok(wi::Credential {
        ttl: ttl.try_into().ok(),
        expires_at: Some(not_after.into()),
        hint: resource.hint.clone(),
        workload_identity_name: resource.name.clone(),
        workload_identity_revision: String::new(),
        spiffe_id,
        credential: Some(credential),
    })
}
