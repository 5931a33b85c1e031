//! `kind: spiffe_federation` resources: a trust domain the cluster federates with, named by
//! the resource, and the SPIFFE bundle Auth last fetched for it (`status.current_bundle`,
//! Teleport's `api/proto/teleport/machineid/v1/federation.proto`). Teleport fills the status
//! itself from `spec.bundle_source`; the dev cluster fetches nothing, so the YAML gives the
//! status and `spec` is kept only as it was written.

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// One SPIFFE federation.
#[derive(Clone, Debug)]
pub struct SpiffeFederation {
    /// `metadata.name`: the federated trust domain's name (`example.com`).
    pub name: String,
    /// `status.current_bundle`: a SPIFFE bundle, a JWKS document.
    pub current_bundle: String,
    spec: serde_json::Value,
}

impl SpiffeFederation {
    /// The resource as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "spiffe_federation",
            "version": "v1",
            "metadata": { "name": self.name },
            "spec": self.spec,
            "status": { "current_bundle": self.current_bundle },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    kind: String,
    version: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Value,
    status: Status,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Status {
    current_bundle: String,
}

/// Reads one `kind: spiffe_federation` (v1) document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<SpiffeFederation> {
    let resource: Resource = serde_yaml::from_value(value).context(
        "not a spiffe_federation the dev cluster reads (metadata.name, spec, and \
         status.current_bundle holding the bundle)",
    )?;
    let name = resource.metadata.name;
    if resource.kind != "spiffe_federation" {
        bail!("kind is {:?}, not spiffe_federation", resource.kind);
    }
    if resource.version != "v1" {
        bail!(
            "spiffe_federation {name}: version {:?} is not v1",
            resource.version
        );
    }
    let valid_domain = !name.is_empty()
        && (name.bytes())
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if !valid_domain {
        bail!(
            "spiffe_federation {name:?}: metadata.name must be a trust domain name \
             (lowercase letters, digits, '-', '.', '_'; no spiffe:// prefix)"
        );
    }
    let bundle: serde_json::Value = serde_json::from_str(&resource.status.current_bundle)
        .with_context(|| {
            format!("spiffe_federation {name}: status.current_bundle is not a JSON SPIFFE bundle")
        })?;
    if !bundle.get("keys").is_some_and(serde_json::Value::is_array) {
        bail!("spiffe_federation {name}: status.current_bundle has no \"keys\" array");
    }
    Ok(SpiffeFederation {
        name,
        current_bundle: resource.status.current_bundle,
        spec: resource.spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<SpiffeFederation> {
        from_value(serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn reads_the_status_bundle() {
        let f = parse(
            "kind: spiffe_federation\nversion: v1\nmetadata: {name: example.com}\nstatus: {current_bundle: '{\"keys\": []}'}\n",
        )
        .unwrap();
        assert_eq!(f.name, "example.com");
        assert_eq!(
            f.to_resource()["status"]["current_bundle"],
            "{\"keys\": []}"
        );
    }

    #[test]
    fn refuses_bad_names_and_bundles() {
        let doc = |name: &str, bundle: &str| {
            format!(
                "kind: spiffe_federation\nversion: v1\nmetadata: {{name: '{name}'}}\nstatus: {{current_bundle: '{bundle}'}}\n"
            )
        };
        let err = parse(&doc("spiffe://x", "{\"keys\": []}")).unwrap_err();
        assert!(err.to_string().contains("trust domain name"), "{err}");
        let err = parse(&doc("x.org", "nope")).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a JSON SPIFFE bundle"),
            "{err:#}"
        );
        let err = parse(&doc("x.org", "{}")).unwrap_err();
        assert!(err.to_string().contains("no \"keys\" array"), "{err}");
    }
}
