//! What the `workload-identity-x509` and `workload-identity-jwt` outputs share: the selector
//! of `workload_identity` resources (`bot.WorkloadIdentitySelector`), and the issuance as tbot
//! makes it (`lib/tbot/workloadidentity/issue.go`): a role-impersonated identity, a second Auth
//! connection presenting it, then `IssueWorkloadIdentity` (by name) or
//! `IssueWorkloadIdentities` (by labels) on that connection.

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::anyhow;
use keybound_proto::teleport::workloadidentity::v1 as wi;
use serde::Deserialize;

use super::impersonate::{Impersonation, impersonate, role_list, roles_for};
use super::kind::Issue;
use crate::auth::{self, AuthClient};
use crate::untrusted;
use crate::{ExitKind, Failure};

/// Which `workload_identity` resources to issue from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Selector {
    /// The resource of this name.
    Name(String),
    /// The resources carrying each key with one of its values.
    Labels(BTreeMap<String, Vec<String>>),
}

/// The selector's YAML: exactly one of `name` and `labels`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    name: Option<String>,
    labels: Option<BTreeMap<String, Vec<String>>>,
}

impl Selector {
    /// Checks `selector:`; `at` names the output (`services[0]`). tbot's texts
    /// (`WorkloadIdentitySelector.CheckAndSetDefaults`).
    pub fn from_raw(raw: Option<RawSelector>, at: &str) -> Result<Self, String> {
        let raw = raw.ok_or_else(|| {
            format!("{at}.selector: missing; one of ['name', 'labels'] must be set")
        })?;
        let name = raw.name.filter(|n| !n.is_empty());
        let labels = raw.labels.filter(|l| !l.is_empty());
        match (name, labels) {
            (Some(_), Some(_)) => Err(format!(
                "{at}.selector: at most one of ['name', 'labels'] can be set"
            )),
            (None, None) => Err(format!(
                "{at}.selector: one of ['name', 'labels'] must be set"
            )),
            (Some(name), None) => Ok(Self::Name(name)),
            (None, Some(labels)) => {
                if let Some((key, _)) = labels.iter().find(|(_, v)| v.is_empty()) {
                    return Err(format!(
                        "{at}.selector.labels[{key}]: must have at least one value"
                    ));
                }
                Ok(Self::Labels(labels))
            }
        }
    }

    /// The selector for logs and errors.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Name(name) => format!("name {}", untrusted::quoted(name)),
            Self::Labels(labels) => {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.join("|")))
                    .collect();
                format!("labels {}", untrusted::quoted(&pairs.join(",")))
            }
        }
    }
}

/// What to issue.
pub(crate) enum Params {
    /// X.509 SVIDs for this public key (PKIX DER).
    X509(Vec<u8>),
    /// JWT SVIDs for these audiences.
    Jwt(Vec<String>),
}

/// What an issuance gave: the credentials and the roles impersonated (sanitized, for the log).
pub(super) struct Issued {
    pub(super) credentials: Vec<wi::Credential>,
    pub(super) roles: Vec<String>,
    /// The cluster's name: the SPIFFE trust domain.
    pub(super) cluster: untrusted::ClusterName,
}

/// Issues credentials for `selector`, as tbot does: every role the bot may impersonate, then the
/// issuance RPC on a connection presenting them, asking for the configured lifetime.
pub(super) async fn issue(
    cx: &Issue<'_>,
    selector: &Selector,
    params: Params,
) -> Result<Issued, Failure> {
    let session = Session::open(cx).await?;
    let credentials = session
        .issue(selector, params, None, cx.credential_ttl)
        .await?;
    Ok(Issued {
        credentials,
        roles: session.roles,
        cluster: session.cluster,
    })
}

/// A connection presenting every role the bot may impersonate, on which workload identities are
/// issued: once per output, or once per renewal for the Workload API's many requests.
pub(crate) struct Session {
    as_roles: AuthClient,
    /// The roles impersonated, as given (for the refusal's hint).
    impersonated: Vec<String>,
    /// The roles impersonated, sanitized for the log.
    pub(crate) roles: Vec<String>,
    /// The cluster's name: the SPIFFE trust domain.
    pub(crate) cluster: untrusted::ClusterName,
}

impl Session {
    /// Impersonates every role the bot may (tbot's default), and connects as them.
    pub(crate) async fn open(cx: &Issue<'_>) -> Result<Self, Failure> {
        let roles = roles_for(cx, &[]).await?;
        let identity = impersonate(
            cx,
            &Impersonation {
                roles,
                allow_reissue: false,
            },
        )
        .await?;
        let as_roles = AuthClient::connect(cx.auth.route(), &identity)
            .await?
            .with_deadline(cx.auth.deadline());
        Ok(Self {
            as_roles,
            impersonated: roles.to_vec(),
            roles: roles
                .iter()
                .map(|r| untrusted::name(r).to_string())
                .collect(),
            cluster: identity.info.cluster_name.clone(),
        })
    }

    /// The issuance RPC for `selector` (`IssueWorkloadIdentity` by name,
    /// `IssueWorkloadIdentities` by labels), with the workload's attributes when known, asking
    /// for `ttl`.
    pub(crate) async fn issue(
        &self,
        selector: &Selector,
        params: Params,
        workload_attrs: Option<wi::WorkloadAttrs>,
        ttl: std::time::Duration,
    ) -> Result<Vec<wi::Credential>, Failure> {
        let ttl = prost_types::Duration {
            seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        };
        let refused = |s: tonic::Status| {
            let hint = if s.code() == tonic::Code::PermissionDenied {
                format!(
                    "; the roles [{}] need a rule allowing read (and list, for labels) on \
                     workload_identity, and workload_identity_labels matching the resource",
                    role_list(&self.impersonated, ", ")
                )
            } else {
                String::new()
            };
            auth::status_failure(
                &format!(
                    "the cluster refused workload identities for {}",
                    selector.describe()
                ),
                &s,
                &hint,
            )
        };
        let credentials = match selector {
            Selector::Name(name) => {
                use wi::issue_workload_identity_request::Credential as C;
                let credential = match params {
                    Params::X509(public_key) => C::X509SvidParams(wi::X509svidParams {
                        public_key,
                        use_issuer_overrides: true,
                    }),
                    Params::Jwt(audiences) => C::JwtSvidParams(wi::JwtsvidParams { audiences }),
                };
                let answer = self
                    .as_roles
                    .issue_workload_identity(wi::IssueWorkloadIdentityRequest {
                        name: name.clone(),
                        credential: Some(credential),
                        workload_attrs,
                        requested_ttl: Some(ttl),
                    })
                    .await
                    .map_err(refused)?;
                answer.credential.into_iter().collect()
            }
            Selector::Labels(labels) => {
                use wi::issue_workload_identities_request::Credential as C;
                let credential = match params {
                    Params::X509(public_key) => C::X509SvidParams(wi::X509svidParams {
                        public_key,
                        use_issuer_overrides: true,
                    }),
                    Params::Jwt(audiences) => C::JwtSvidParams(wi::JwtsvidParams { audiences }),
                };
                let answer = self
                    .as_roles
                    .issue_workload_identities(wi::IssueWorkloadIdentitiesRequest {
                        label_selectors: labels
                            .iter()
                            .map(|(key, values)| wi::LabelSelector {
                                key: key.clone(),
                                values: values.clone(),
                            })
                            .collect(),
                        credential: Some(credential),
                        workload_attrs,
                        requested_ttl: Some(ttl),
                    })
                    .await
                    .map_err(refused)?;
                answer.credentials
            }
        };
        Ok(credentials)
    }
}

/// Which kind of SVID an output writes.
#[derive(Clone, Copy)]
pub(super) enum SvidKind {
    X509,
    Jwt,
}

/// The one credential an output writes: tbot refuses none (`no X509 SVIDs returned`) and
/// several (`multiple X509 SVIDs received: [name:spiffe_id ...]`), and the same for JWTs.
pub(super) fn exactly_one(
    credentials: Vec<wi::Credential>,
    kind: SvidKind,
) -> Result<wi::Credential, Failure> {
    let refused = |m: String| Failure::new(ExitKind::Rejected, anyhow!(m));
    let (none, several) = match kind {
        SvidKind::X509 => ("no X509 SVIDs returned", "multiple X509 SVIDs received"),
        SvidKind::Jwt => ("no JWT SVIDs returned", "multiple JWT SVIDs received"),
    };
    match credentials.len() {
        0 => Err(refused(none.to_owned())),
        1 => Ok(credentials.into_iter().next().expect("one")),
        _ => {
            let names: Vec<String> = credentials
                .iter()
                .map(|c| {
                    format!(
                        "{}:{}",
                        untrusted::name(&c.workload_identity_name),
                        untrusted::name(&c.spiffe_id)
                    )
                })
                .collect();
            Err(refused(format!("{several}: [{}]", names.join(" "))))
        }
    }
}

/// When a credential expires (`expires_at`, to the second); an answer without one is refused.
pub(crate) fn expiry(credential: &wi::Credential) -> Result<SystemTime, Failure> {
    credential
        .expires_at
        .and_then(|t| u64::try_from(t.seconds).ok())
        .map(super::ssh_host::unix_time)
        .ok_or_else(|| {
            Failure::new(
                ExitKind::Rejected,
                anyhow!("the cluster's SVID has no expiry"),
            )
        })
}

/// The SPIFFE ID the cluster names, checked: `spiffe://<trust domain>/<path>` in the cluster's
/// trust domain, printable, so that it may reach a log line.
pub(crate) fn checked_spiffe_id(
    credential: &wi::Credential,
    cluster: &untrusted::ClusterName,
) -> Result<String, Failure> {
    let id = &credential.spiffe_id;
    let prefix = format!("spiffe://{cluster}/");
    let ok = id.starts_with(&prefix) && id.chars().all(|c| c.is_ascii_graphic());
    if !ok {
        return Err(Failure::new(
            ExitKind::Rejected,
            anyhow!(
                "the cluster's SVID names the SPIFFE ID {}, which is not in its trust domain {cluster}",
                untrusted::quoted(id)
            ),
        ));
    }
    Ok(id.clone())
}

#[cfg(test)]
mod tests {
    use super::super::kind::Output;
    use super::super::workload_identity_jwt::WorkloadIdentityJwtOutput;
    use super::super::workload_identity_x509::WorkloadIdentityX509Output;

    const DEST: &str = "destination: {type: directory, path: /tmp/x}\n";

    fn x509(yaml: &str) -> Result<WorkloadIdentityX509Output, String> {
        let raw = serde_yaml::from_str(&format!("{DEST}{yaml}")).map_err(|e| e.to_string())?;
        WorkloadIdentityX509Output::from_raw(raw, "services[1]")
    }

    fn jwt(yaml: &str) -> Result<WorkloadIdentityJwtOutput, String> {
        let raw = serde_yaml::from_str(&format!("{DEST}{yaml}")).map_err(|e| e.to_string())?;
        WorkloadIdentityJwtOutput::from_raw(raw, "services[2]")
    }

    #[test]
    fn bad_selectors_and_audiences_are_one_line_naming_the_output_and_key() {
        for (result, starts) in [
            (
                x509("selector: {name: a, labels: {env: [dev]}}\n").map(drop),
                "services[1].selector: at most one of ['name', 'labels'] can be set",
            ),
            (
                x509("selector: {}\n").map(drop),
                "services[1].selector: one of ['name', 'labels'] must be set",
            ),
            (
                x509("").map(drop),
                "services[1].selector: missing; one of ['name', 'labels'] must be set",
            ),
            (
                x509("selector: {labels: {env: []}}\n").map(drop),
                "services[1].selector.labels[env]: must have at least one value",
            ),
            (
                jwt("selector: {name: a}\n").map(drop),
                "services[2].audiences: must have at least one value",
            ),
            (
                jwt("selector: {name: a}\naudiences: []\n").map(drop),
                "services[2].audiences: must have at least one value",
            ),
            (
                jwt("selector: {name: a}\naudiences: [x, '']\n").map(drop),
                "services[2].audiences[1]: empty",
            ),
        ] {
            let err = result.unwrap_err();
            assert!(err.starts_with(starts), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let on = x509("selector: {name: a}\ninclude_federated_trust_bundles: true\n").unwrap();
        assert!(on.include_federated_trust_bundles);
        let off = x509("selector: {name: a}\ninclude_federated_trust_bundles: false\n").unwrap();
        assert!(!off.include_federated_trust_bundles);
        let ok = jwt("selector: {labels: {env: [dev, ci]}}\naudiences: [a]\n").unwrap();
        assert_eq!(ok.audiences, ["a"]);
    }
}
