//! `kind: workload_identity` resources (`api/proto/teleport/workloadidentity/v1/resource.proto`):
//! a name, labels, and `spec.spiffe.id`, the SPIFFE ID path an SVID issued from it holds, a
//! template over the attributes of who asks (`{{ workload.unix.uid }}`, `{{ user.bot_name }}`),
//! with an optional `spec.spiffe.hint`; and the label matching of a role's
//! `workload_identity_labels`.
//!
//! The dev cluster keeps what the issuance RPCs need: `spec.rules`, `spec.spiffe.x509` and
//! `spec.spiffe.jwt` (DNS SANs, subject templates, maximum TTLs, extra claims) are refused when
//! a resource is loaded, as are template attributes it does not know, so that nothing is
//! issued more widely than the resource was written.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// A workload identity.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WorkloadIdentity {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.spiffe.id`: the path, as written (a template).
    pub spiffe_id: String,
    /// `spec.spiffe.hint`.
    pub hint: String,
}

/// The attributes a template may read (`Attrs` in `attrs.proto`): the workload's, when the
/// Workload API attested them, and the caller's.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    /// `workload.unix.{pid, uid, gid}`, when the workload passed Unix attestation.
    pub unix: Option<UnixAttributes>,
    /// `user.name`.
    pub user_name: String,
    /// `user.bot_name`.
    pub bot_name: String,
}

/// A process attested over a Unix socket.
#[derive(Clone, Copy, Debug)]
pub struct UnixAttributes {
    /// Its process ID.
    pub pid: i32,
    /// Its user ID.
    pub uid: u32,
    /// Its group ID.
    pub gid: u32,
}

/// The attributes a template may name.
const KNOWN: [&str; 5] = [
    "workload.unix.pid",
    "workload.unix.uid",
    "workload.unix.gid",
    "user.name",
    "user.bot_name",
];

impl WorkloadIdentity {
    /// The SPIFFE ID path with its template filled from `attrs`; an attribute that is not set
    /// is an error (`expression/template.go`: templating fails, and nothing is issued).
    pub fn render_spiffe_id(&self, attrs: &Attributes) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = self.spiffe_id.as_str();
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let close = rest[open..]
                .find("}}")
                .ok_or_else(|| "spec.spiffe.id: unclosed {{".to_owned())?;
            let name = rest[open + 2..open + close].trim();
            out.push_str(&value(name, attrs).ok_or_else(|| {
                format!(
                    "templating spec.spiffe.id failed: attribute {name:?} is not set for this \
                     request"
                )
            })?);
            rest = &rest[open + close + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The resource as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        let mut spiffe = serde_json::json!({ "id": self.spiffe_id });
        if !self.hint.is_empty() {
            spiffe["hint"] = self.hint.clone().into();
        }
        serde_json::json!({
            "kind": "workload_identity",
            "version": "v1",
            "metadata": { "name": self.name, "labels": self.labels },
            "spec": { "spiffe": spiffe },
        })
    }

    /// Whether a role's `workload_identity_labels` match it (`MatchLabels`,
    /// `lib/services/role.go`): every key of the role's map must be a label of the resource with
    /// one of the listed values; `'*': '*'` matches every resource, a `*` value any value.
    pub fn matches(&self, role_labels: &BTreeMap<String, Vec<String>>) -> bool {
        if role_labels.is_empty() {
            return false;
        }
        role_labels.iter().all(|(key, values)| {
            if key == "*" {
                return values.iter().any(|v| v == "*");
            }
            self.labels
                .get(key)
                .is_some_and(|have| values.iter().any(|v| v == "*" || v == have))
        })
    }

    /// Whether it carries every selector's key with one of its values (`MatchLabelGetter`).
    pub fn selected_by(&self, selectors: &[(String, Vec<String>)]) -> bool {
        selectors.iter().all(|(key, values)| {
            self.labels
                .get(key)
                .is_some_and(|have| values.iter().any(|v| v == "*" || v == have))
        })
    }
}

fn value(name: &str, attrs: &Attributes) -> Option<String> {
    let unix = attrs.unix;
    match name {
        "workload.unix.pid" => unix.map(|u| u.pid.to_string()),
        "workload.unix.uid" => unix.map(|u| u.uid.to_string()),
        "workload.unix.gid" => unix.map(|u| u.gid.to_string()),
        "user.name" => Some(attrs.user_name.clone()).filter(|v| !v.is_empty()),
        "user.bot_name" => Some(attrs.bot_name.clone()).filter(|v| !v.is_empty()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Resource {
    kind: String,
    version: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    spiffe: Spiffe,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spiffe {
    id: String,
    #[serde(default)]
    hint: String,
}

/// Reads one `kind: workload_identity` (v1) document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<WorkloadIdentity> {
    let resource: Resource = serde_yaml::from_value(value).context(
        "not a workload_identity the dev cluster reads (spec.spiffe.id and spec.spiffe.hint \
         only: spec.rules, spec.spiffe.x509 and spec.spiffe.jwt are not supported)",
    )?;
    let name = resource.metadata.name;
    if resource.kind != "workload_identity" {
        bail!("kind is {:?}, not workload_identity", resource.kind);
    }
    if resource.version != "v1" {
        bail!(
            "workload_identity {name}: version {:?} is not v1",
            resource.version
        );
    }
    let id = resource.spec.spiffe.id;
    if !id.starts_with('/') {
        bail!("workload_identity {name}: spec.spiffe.id {id:?} must start with /");
    }
    let mut rest = id.as_str();
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}") else {
            bail!("workload_identity {name}: spec.spiffe.id {id:?} has an unclosed {{{{");
        };
        let attr = rest[open + 2..open + close].trim();
        if !KNOWN.contains(&attr) {
            bail!(
                "workload_identity {name}: spec.spiffe.id names {attr:?}; the dev cluster \
                 templates {}",
                KNOWN.join(", ")
            );
        }
        rest = &rest[open + close + 2..];
    }
    Ok(WorkloadIdentity {
        name,
        labels: resource.metadata.labels,
        spiffe_id: id,
        hint: resource.spec.spiffe.hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<WorkloadIdentity> {
        from_value(serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn templates_fill_from_the_attributes_and_refuse_unset_ones() {
        let wi = parse(
            "kind: workload_identity\nversion: v1\nmetadata: {name: w, labels: {env: dev}}\nspec:\n  spiffe: {id: '/svc/{{ user.bot_name }}/uid/{{workload.unix.uid}}'}\n",
        )
        .unwrap();
        let mut attrs = Attributes {
            bot_name: "robot".into(),
            ..Attributes::default()
        };
        let err = wi.render_spiffe_id(&attrs).unwrap_err();
        assert!(err.contains("workload.unix.uid"), "{err}");
        attrs.unix = Some(UnixAttributes {
            pid: 7,
            uid: 1000,
            gid: 100,
        });
        assert_eq!(wi.render_spiffe_id(&attrs).unwrap(), "/svc/robot/uid/1000");
        let back = from_value(serde_yaml::to_value(wi.to_resource()).unwrap()).unwrap();
        assert_eq!(back, wi);
    }

    #[test]
    fn what_the_dev_cluster_cannot_honour_is_refused() {
        for (spec, says) in [
            (
                "spiffe: {id: '/a/{{ workload.kubernetes.namespace }}'}",
                "templates",
            ),
            ("spiffe: {id: 'a'}", "must start with /"),
            ("spiffe: {id: '/a'}\nrules: {allow: []}", "spec.rules"),
            ("spiffe: {id: '/a', x509: {dns_sans: [a]}}", "spec.rules"),
        ] {
            let yaml = format!(
                "kind: workload_identity\nversion: v1\nmetadata: {{name: w}}\nspec:\n  {}\n",
                spec.replace('\n', "\n  ")
            );
            let err = format!("{:#}", parse(&yaml).unwrap_err());
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    #[test]
    fn role_labels_and_selectors_match_as_teleport_does() {
        let wi = parse("kind: workload_identity\nversion: v1\nmetadata: {name: w, labels: {env: dev, team: a}}\nspec: {spiffe: {id: /a}}\n").unwrap();
        let labels = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        assert!(wi.matches(&labels(&[("*", &["*"])])));
        assert!(wi.matches(&labels(&[("env", &["dev", "prod"])])));
        assert!(wi.matches(&labels(&[("env", &["*"]), ("team", &["a"])])));
        assert!(!wi.matches(&labels(&[("env", &["prod"])])));
        assert!(!wi.matches(&labels(&[("owner", &["*"])])));
        assert!(!wi.matches(&labels(&[])));
        let sel =
            |k: &str, v: &[&str]| vec![(k.to_owned(), v.iter().map(|s| s.to_string()).collect())];
        assert!(wi.selected_by(&sel("env", &["dev"])));
        assert!(!wi.selected_by(&sel("env", &["prod"])));
    }
}
