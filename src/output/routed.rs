//! What the access outputs (application, database, Kubernetes) share: tbot's routed identity
//! (`lib/tbot/services/*/output_service.go`). A role-impersonated identity first; a second
//! connection to Auth that presents it, on which the output looks its resource up with
//! `ListResources` (so the roles' own RBAC decides what it finds); then a second
//! `GenerateUserCerts`, on the bot's connection, routed to what was found.

use std::collections::HashMap;

use anyhow::anyhow;
use keybound_proto::proto as legacy;

use super::kind::Issue;
use crate::auth::{self, AuthClient};
use crate::identity::Identity;
use crate::untrusted;
use crate::{ExitKind, Failure};

/// What a routed output is issued: its identity, and its roles (sanitized, for the log).
pub struct Routed {
    pub(super) identity: Identity,
    pub(super) roles: Vec<String>,
}

impl Routed {
    /// The identity issued for `roles`.
    pub(super) fn new(identity: Identity, roles: &[String]) -> Self {
        Self {
            identity,
            roles: roles
                .iter()
                .map(|r| untrusted::name(r).to_string())
                .collect(),
        }
    }

    /// What was written, for the log and the summary.
    pub(super) fn described(&self) -> super::kind::Described {
        super::kind::Described {
            roles: self.roles.clone(),
            expires: self.identity.info.not_after,
        }
    }
}

/// Teleport's label for the name a discovered resource had before Discovery renamed it
/// (`types.DiscoveredNameLabel`, `api/types/constants.go`).
pub(super) const DISCOVERED_NAME_LABEL: &str = "teleport.internal/discovered-name";

/// `defaults.DefaultChunkSize`: the page size of tbot's lookups.
const PAGE: i32 = 1000;

/// Opens a connection to Auth that presents `identity` (the output's role-impersonated one),
/// by the bot's route and with its deadline.
pub(super) async fn connect_as(cx: &Issue<'_>, identity: &Identity) -> Result<AuthClient, Failure> {
    AuthClient::connect(cx.auth.route(), identity)
        .await
        .map(|c| c.with_deadline(cx.auth.deadline()))
        .map_err(Failure::from)
}

/// Every resource of `resource_type` the connection's roles may see that satisfies
/// `predicate` and `labels`, page after page (`apiclient.GetAllResources`); `limit` bounds the
/// first page (tbot asks for one app only).
pub(super) async fn list_all(
    client: &AuthClient,
    resource_type: &str,
    predicate: String,
    labels: HashMap<String, String>,
    limit: i32,
) -> Result<Vec<legacy::paginated_resource::Resource>, Failure> {
    let mut out = Vec::new();
    let mut start_key = String::new();
    loop {
        let page = client
            .list_resources(legacy::ListResourcesRequest {
                resource_type: resource_type.to_owned(),
                namespace: "default".to_owned(),
                limit,
                start_key: start_key.clone(),
                labels: labels.clone(),
                predicate_expression: predicate.clone(),
            })
            .await
            .map_err(|s| {
                auth::status_failure(&format!("listing the cluster's {resource_type}s"), &s, "")
            })?;
        out.extend(page.resources.into_iter().filter_map(|r| r.resource));
        if page.next_key.is_empty() || limit == 1 {
            return Ok(out);
        }
        if page.next_key == start_key {
            return Err(Failure::new(
                ExitKind::Rejected,
                anyhow!(
                    "listing the cluster's {resource_type}s: the cluster sent the same page twice"
                ),
            ));
        }
        start_key = page.next_key;
    }
}

/// The page size of a lookup that may match several resources.
pub(super) fn page() -> i32 {
    PAGE
}

/// Go's `%q` of a name, as tbot writes it into a predicate expression.
pub(super) fn quoted(name: &str) -> String {
    serde_json::to_string(name).unwrap_or_default()
}

/// `MakeNameOrDiscoveredNamePredicate`: the resource named `name`, or one Discovery renamed
/// from it.
pub(super) fn name_or_discovered(name: &str) -> String {
    format!(
        "(name == {q}) || (labels[{label}] == {q})",
        q = quoted(name),
        label = quoted(DISCOVERED_NAME_LABEL)
    )
}

/// `ChooseOneResource`: of `found` (name, labels, resource), the one named `name`, else the
/// only one Discovery renamed from it; `what` names the kind in errors ("database").
pub(super) fn choose_one<T>(
    found: Vec<(String, HashMap<String, String>, T)>,
    name: &str,
    what: &str,
    hint: &str,
) -> Result<T, Failure> {
    let mut discovered = Vec::new();
    for (n, labels, item) in found {
        if n == name {
            return Ok(item);
        }
        if labels.get(DISCOVERED_NAME_LABEL).map(String::as_str) == Some(name) {
            discovered.push((n, item));
        }
    }
    match discovered.len() {
        1 => Ok(discovered.pop().expect("one").1),
        0 => Err(Failure::new(
            ExitKind::Rejected,
            anyhow!(
                "{what} {} not found (the cluster lists none of that name the output's roles \
                 may see); {hint}",
                untrusted::quoted(name)
            ),
        )),
        _ => {
            let names: Vec<String> = discovered
                .iter()
                .map(|(n, _)| untrusted::name(n).to_string())
                .collect();
            Err(Failure::new(
                ExitKind::Config,
                anyhow!(
                    "{} matches multiple auto-discovered {what}s ({}); use the full resource name \
                     that was generated by the Teleport Discovery service",
                    untrusted::quoted(name),
                    names.join(", ")
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_and_choices_follow_tbot() {
        assert_eq!(
            name_or_discovered("pg"),
            r#"(name == "pg") || (labels["teleport.internal/discovered-name"] == "pg")"#
        );
        let label = |v: &str| {
            [(DISCOVERED_NAME_LABEL.to_owned(), v.to_owned())]
                .into_iter()
                .collect::<HashMap<_, _>>()
        };
        let found = vec![
            ("pg-east".to_owned(), label("pg"), 1),
            ("pg".to_owned(), HashMap::new(), 2),
        ];
        assert_eq!(choose_one(found, "pg", "database", "").ok(), Some(2));
        let found = vec![("pg-east".to_owned(), label("pg"), 1)];
        assert_eq!(choose_one(found, "pg", "database", "").ok(), Some(1));
        let two = vec![
            ("pg-east".to_owned(), label("pg"), 1),
            ("pg-west".to_owned(), label("pg"), 2),
        ];
        let err = choose_one(two, "pg", "database", "").err().unwrap();
        assert!(format!("{:#}", err.error).contains("matches multiple auto-discovered databases"));
        let err = choose_one(Vec::<(String, _, u8)>::new(), "pg", "database", "check it")
            .err()
            .unwrap();
        assert!(format!("{:#}", err.error).starts_with("database \"pg\" not found"));
    }
}
