//! Applications (`kind: app`, `version: v3`, the `tctl create` format): what an App Service
//! would serve, and how `ListResources` shows it (an `app_server` holding the app). The dev
//! cluster answers for every app itself, on its Proxy port, with a built-in echo app
//! (`front/app.rs`).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use keybound_proto::types;
use serde::Deserialize;

/// An application.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct App {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.uri`: where the app itself is (the echo app answers in its place).
    pub uri: String,
    /// `spec.public_addr`: the name clients reach it by through the Proxy (the TLS server name).
    pub public_addr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    kind: String,
    version: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
pub(crate) struct Metadata {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code, reason = "accepted as tctl's format has it")]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    uri: String,
    #[serde(default)]
    public_addr: String,
}

/// Reads one `kind: app` document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<App> {
    let resource: Resource =
        serde_yaml::from_value(value).context("not a Teleport app resource")?;
    let name = resource.metadata.name;
    ensure!(
        resource.kind == "app",
        "kind {:?} is not app",
        resource.kind
    );
    if resource.version != "v3" {
        bail!("app {name}: version {:?} is not v3", resource.version);
    }
    ensure!(
        !resource.spec.public_addr.is_empty(),
        "app {name}: spec.public_addr is empty; the dev cluster serves each app at its public \
         address (e.g. {name}.localhost)"
    );
    ensure!(
        !resource.spec.public_addr.contains(':') && !resource.spec.public_addr.contains('/'),
        "app {name}: spec.public_addr {:?} is not a host name; give it without port or scheme",
        resource.spec.public_addr
    );
    Ok(App {
        name,
        labels: resource.metadata.labels,
        uri: resource.spec.uri,
        public_addr: resource.spec.public_addr,
    })
}

impl App {
    /// The app as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "app",
            "version": "v3",
            "metadata": { "name": self.name, "labels": self.labels },
            "spec": { "uri": self.uri, "public_addr": self.public_addr },
        })
    }

    /// The app as `ListResources` returns it: an app server (named after the app, as App
    /// Service heartbeats are) holding the app.
    pub fn to_server(&self, hostname: &str) -> types::AppServerV3 {
        let metadata = types::Metadata {
            name: self.name.clone(),
            namespace: "default".to_owned(),
            labels: self.labels.clone().into_iter().collect(),
            ..Default::default()
        };
        types::AppServerV3 {
            kind: "app_server".to_owned(),
            sub_kind: String::new(),
            version: "v3".to_owned(),
            metadata: Some(metadata.clone()),
            spec: Some(types::AppServerSpecV3 {
                version: String::new(),
                hostname: hostname.to_owned(),
                host_id: String::new(),
                app: Some(types::AppV3 {
                    kind: "app".to_owned(),
                    sub_kind: String::new(),
                    version: "v3".to_owned(),
                    metadata: Some(metadata),
                    spec: Some(types::AppSpecV3 {
                        uri: self.uri.clone(),
                        public_addr: self.public_addr.clone(),
                    }),
                }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_apps_in_the_tctl_format_and_shows_them_back() {
        let parse = |y: &str| from_value(serde_yaml::from_str(y).unwrap());
        let app = parse(
            "kind: app\nversion: v3\nmetadata: {name: echo, labels: {env: dev}}\nspec: {uri: 'http://localhost:8080', public_addr: echo.localhost}\n",
        )
        .unwrap();
        assert_eq!(app.public_addr, "echo.localhost");
        assert_eq!(app.labels["env"], "dev");
        let back = from_value(serde_yaml::to_value(app.to_resource()).unwrap()).unwrap();
        assert_eq!(back, app);
        let err = parse("kind: app\nversion: v3\nmetadata: {name: a}\nspec: {uri: 'http://x'}\n")
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("public_addr is empty"),
            "{err:#}"
        );
        let err = parse(
            "kind: app\nversion: v3\nmetadata: {name: a}\nspec: {uri: 'http://x', public_addr: 'a.localhost:443'}\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("not a host name"), "{err:#}");
    }
}
