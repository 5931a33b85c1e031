//! `teleport.machineid.v1.SPIFFEFederationService.ListSPIFFEFederations`: the cluster's
//! `spiffe_federation` resources, a page at a time, with the check of Teleport's
//! `lib/machineid/machineidv1/spiffe_federation_service.go`: the caller's roles must allow
//! `read` and `list` on `spiffe_federation` (`CheckAccessToKind`). Every role set holds
//! Teleport's implicit role, whose rules grant both (`DefaultImplicitRules` in
//! `lib/services/role.go`), so only a deny rule refuses the call.

use std::sync::Arc;

use keybound_proto::teleport::header::v1 as header;
use keybound_proto::teleport::machineid::v1 as machineid;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::rules;

/// The most a page holds, and what an unset `page_size` gets.
const MAX_PAGE: usize = 1000;

/// The federation service.
#[derive(Clone)]
pub(crate) struct FederationApi(pub(crate) Arc<Cluster>);

#[tonic::async_trait]
impl machineid::spiffe_federation_service_server::SpiffeFederationService for FederationApi {
    async fn list_spiffe_federations(
        &self,
        request: Request<machineid::ListSpiffeFederationsRequest>,
    ) -> Result<Response<machineid::ListSpiffeFederationsResponse>, Status> {
        let cluster = &self.0;
        let caller = cluster.caller(&request)?;
        let roles: Vec<_> = (caller.roles.iter())
            .filter_map(|r| cluster.role(r))
            .collect();
        let implicit = rules::Rule::new(&["spiffe_federation"], &["read", "list"], "")
            .map_err(|e| Status::internal(format!("the implicit rule: {e:#}")))?;
        let allow: Vec<_> = (roles.iter().flat_map(|r| &r.rules))
            .chain([&implicit])
            .collect();
        let deny: Vec<_> = roles.iter().flat_map(|r| &r.deny_rules).collect();
        for verb in ["read", "list"] {
            if !rules::may(&allow, &deny, "spiffe_federation", &[verb]) {
                return Err(Status::permission_denied(format!(
                    "access denied to perform action {verb:?} on \"spiffe_federation\""
                )));
            }
        }
        let req = request.into_inner();
        let size = usize::try_from(req.page_size)
            .ok()
            .filter(|&n| n > 0)
            .map_or(MAX_PAGE, |n| n.min(MAX_PAGE));
        // Sorted by name; a page token is the name the next page starts at.
        let mut all = cluster.spiffe_federations();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let mut rest = all.into_iter().filter(|f| f.name >= req.page_token);
        let page: Vec<_> = rest.by_ref().take(size).collect();
        let next_page_token = rest.next().map(|f| f.name).unwrap_or_default();
        Ok(Response::new(machineid::ListSpiffeFederationsResponse {
            spiffe_federations: page
                .into_iter()
                .map(|f| machineid::SpiffeFederation {
                    kind: "spiffe_federation".to_owned(),
                    sub_kind: String::new(),
                    version: "v1".to_owned(),
                    metadata: Some(header::Metadata { name: f.name }),
                    status: Some(machineid::SpiffeFederationStatus {
                        current_bundle: f.current_bundle,
                    }),
                })
                .collect(),
            next_page_token,
        }))
    }
}
