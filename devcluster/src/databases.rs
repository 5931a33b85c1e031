//! Databases (`kind: db`, `version: v3`, the `tctl create` format): what a Database Service
//! would serve, and how `ListResources` shows it (a `db_server` holding the database). The dev
//! cluster issues certificates routed to them; it proxies no database.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use keybound_proto::types;
use serde::Deserialize;

use crate::apps::Metadata;

/// A database.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Database {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.protocol`: `postgres`, `mysql`, `mongodb`, `cockroachdb`, `redis`, ...
    pub protocol: String,
    /// `spec.uri`.
    pub uri: String,
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
#[serde(deny_unknown_fields)]
struct Spec {
    protocol: String,
    uri: String,
}

/// Reads one `kind: db` document.
pub fn from_value(value: serde_yaml::Value) -> anyhow::Result<Database> {
    let resource: Resource =
        serde_yaml::from_value(value).context("not a Teleport database resource")?;
    let name = resource.metadata.name;
    ensure!(resource.kind == "db", "kind {:?} is not db", resource.kind);
    if resource.version != "v3" {
        bail!("db {name}: version {:?} is not v3", resource.version);
    }
    ensure!(
        !resource.spec.protocol.is_empty(),
        "db {name}: spec.protocol is empty; name the database's protocol (postgres, mysql, ...)"
    );
    Ok(Database {
        name,
        labels: resource.metadata.labels,
        protocol: resource.spec.protocol,
        uri: resource.spec.uri,
    })
}

impl Database {
    /// The database as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "db",
            "version": "v3",
            "metadata": { "name": self.name, "labels": self.labels },
            "spec": { "protocol": self.protocol, "uri": self.uri },
        })
    }

    /// The database as `ListResources` returns it: a database server (named after the
    /// database) holding the database.
    pub fn to_server(&self, hostname: &str) -> types::DatabaseServerV3 {
        let metadata = types::Metadata {
            name: self.name.clone(),
            namespace: "default".to_owned(),
            labels: self.labels.clone().into_iter().collect(),
            ..Default::default()
        };
        types::DatabaseServerV3 {
            kind: "db_server".to_owned(),
            sub_kind: String::new(),
            version: "v3".to_owned(),
            metadata: Some(metadata.clone()),
            spec: Some(types::DatabaseServerSpecV3 {
                version: String::new(),
                hostname: hostname.to_owned(),
                host_id: String::new(),
                database: Some(types::DatabaseV3 {
                    kind: "db".to_owned(),
                    sub_kind: String::new(),
                    version: "v3".to_owned(),
                    metadata: Some(metadata),
                    spec: Some(types::DatabaseSpecV3 {
                        protocol: self.protocol.clone(),
                        uri: self.uri.clone(),
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
    fn reads_databases_in_the_tctl_format_and_shows_them_back() {
        let parse = |y: &str| from_value(serde_yaml::from_str(y).unwrap());
        let db = parse(
            "kind: db\nversion: v3\nmetadata: {name: pg, labels: {env: dev}}\nspec: {protocol: postgres, uri: 'localhost:5432'}\n",
        )
        .unwrap();
        assert_eq!(db.protocol, "postgres");
        let back = from_value(serde_yaml::to_value(db.to_resource()).unwrap()).unwrap();
        assert_eq!(back, db);
        assert!(
            parse(
                "kind: db\nversion: v2\nmetadata: {name: pg}\nspec: {protocol: postgres, uri: x}\n"
            )
            .is_err()
        );
    }
}
