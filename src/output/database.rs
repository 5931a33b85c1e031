//! `type: database`: certificates routed to one database, for clients that reach it through the
//! Proxy (`lib/tbot/services/database/output_config.go`, `output_service.go`). The database is
//! looked up by name or by the name Discovery gave it (`ListResources`, `db_server`, tbot's
//! ambiguity error), then certificates for an RSA-2048 key (tbot's `cryptosuites.DatabaseClient`
//! purpose: "We still used RSA for all database clients") are issued with
//! `RouteToDatabase{service, protocol, username, database}`; the files are the identity
//! output's without `known_hosts` and `ssh_config`, plus the files of the `format`
//! (`lib/client/identityfile/identity.go`).

use std::collections::HashMap;
use std::path::Path;

use keybound_proto::proto as legacy;
use serde::Deserialize;
use tracing::warn;

use super::application::{check_destination, check_roles, tls_files};
use super::cluster::{Needs, Shared};
use super::identity::{OutputContext, identity_files};
use super::impersonate::{Impersonation, impersonate, impersonate_routed, roles_for};
use super::kind::{Described, Issue, Output};
use super::lifetime::Lifetime;
use super::routed::{Routed, choose_one, connect_as, list_all, name_or_discovered, page};
use crate::fsutil::Files;
use crate::identity::Identity;
use crate::values::{Destination, GoDuration, RawDestination};
use crate::{Failure, untrusted};
use keybound_teleport::suite::Suite;

/// `mongo.crt`: the certificate, then the key (MongoDB's `tlsCertificateKeyFile`).
pub const MONGO_CERT: &str = "mongo.crt";
/// `mongo.cas`: the database CAs' certificates.
pub const MONGO_CAS: &str = "mongo.cas";
/// `cockroach/node.crt`: the certificate.
pub const COCKROACH_CERT: &str = "cockroach/node.crt";
/// `cockroach/node.key`: the key.
pub const COCKROACH_KEY: &str = "cockroach/node.key";
/// `cockroach/ca.crt`: empty, as tbot writes it (see [`Format::Cockroach`]).
pub const COCKROACH_CA: &str = "cockroach/ca.crt";
/// `cockroach/ca-client.crt`: the database CAs' certificates.
pub const COCKROACH_CLIENT_CA: &str = "cockroach/ca-client.crt";

/// The files a database output adds for its clients (`format:`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Format {
    /// `""`: the identity files only.
    Plain,
    /// `tls`: `tls.crt`, `tls.key`, `tls.cas`.
    Tls,
    /// `mongo`: `mongo.crt`, `mongo.cas`.
    Mongo,
    /// `cockroach`: `cockroach/node.crt`, `node.key`, `ca.crt` and `ca-client.crt`
    /// (`lib/client/identityfile/identity.go`, `FormatCockroach`, read id 93005846: `ca.crt`
    /// holds the write config's `AdditionalCACerts`, which tbot never sets, so it is empty as
    /// tbot 18.x writes it; `ca-client.crt` holds the key ring's trusted CAs, the database CAs).
    Cockroach,
}

/// A `type: database` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DatabaseOutput {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// An optional name for logs.
    pub name: Option<String>,
    /// The database, by name or by the name Discovery found it under (`service`).
    pub service: String,
    /// The database to connect to (`database`).
    pub database: String,
    /// The database user to connect as (`username`).
    pub username: String,
    /// The extra files (`format`).
    pub format: Format,
    /// The roles to impersonate; empty means every role the bot may impersonate.
    pub roles: Vec<String>,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabaseOutput {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    service: Option<String>,
    #[serde(default)]
    database: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    roles: Vec<String>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

impl Output for DatabaseOutput {
    type Raw = RawDatabaseOutput;
    type Issued = Routed;

    fn from_raw(raw: RawDatabaseOutput, at: &str) -> Result<Self, String> {
        let destination = check_destination(raw.destination, at)?;
        let service = raw.service.unwrap_or_default();
        if service.trim().is_empty() {
            return Err(format!(
                "{at}.service: missing; name the database to issue certificates for (service must not be empty)"
            ));
        }
        let format = match raw.format.as_str() {
            "" => Format::Plain,
            "tls" => Format::Tls,
            "mongo" => Format::Mongo,
            "cockroach" => Format::Cockroach,
            other => {
                return Err(format!(
                    "{at}.format: unrecognized format ({other}); use tls, mongo, cockroach, or no \
                     format"
                ));
            }
        };
        check_roles(&raw.roles, at)?;
        Ok(Self {
            lifetime: Lifetime::of(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            name: raw.name,
            service,
            database: raw.database,
            username: raw.username,
            format,
            roles: raw.roles,
        })
    }

    fn lifetime(&self) -> Option<&Lifetime> {
        self.lifetime.as_ref()
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn needs(&self) -> Needs {
        Needs {
            default_roles: self.roles.is_empty(),
        }
    }

    async fn issue(&self, cx: &Issue<'_>) -> Result<Routed, Failure> {
        let roles = roles_for(cx, &self.roles).await?;
        let what = Impersonation {
            roles,
            allow_reissue: false,
        };
        let impersonated = impersonate(cx, &what).await?;
        let (service, protocol) = self.find_database(cx, &impersonated).await?;
        let mut username = self.username.clone();
        match protocol.as_str() {
            // `defaults.DefaultRedisUsername`.
            "redis" if username.is_empty() => username = "default".to_owned(),
            "mongodb" if username.is_empty() => warn!(
                database = %untrusted::name(&service),
                "a MongoDB database needs a username; set the output's username"
            ),
            _ => {}
        }
        let route = legacy::RouteToDatabase {
            service_name: service,
            protocol,
            username,
            database: self.database.clone(),
        };
        // RSA-2048 whatever the suite: tbot's DatabaseClient key purpose.
        let identity = impersonate_routed(cx, &what, Suite::Legacy, move |r| {
            r.route_to_database = Some(route);
        })
        .await?;
        Ok(Routed::new(identity, roles))
    }

    fn render(
        &self,
        issued: &Routed,
        _: &Issue<'_>,
        shared: &Shared,
        dir: &Path,
    ) -> anyhow::Result<Files> {
        let ctx = OutputContext::of(shared);
        let mut out = identity_files(&issued.identity, &ctx, dir, false)?;
        let identity = &issued.identity;
        match self.format {
            Format::Plain => {}
            Format::Tls => out.extend(tls_files(identity, shared.cas.host_tls_pem.clone())),
            Format::Mongo => {
                let mut both = zeroize::Zeroizing::new(String::with_capacity(
                    identity.tls_cert_pem.len() + identity.private_key_pem.len(),
                ));
                both.push_str(&identity.tls_cert_pem);
                both.push_str(&identity.private_key_pem);
                out.push((MONGO_CERT, both));
                out.push((MONGO_CAS, shared.cas.db_tls_pem.clone().into()));
            }
            Format::Cockroach => {
                out.push((COCKROACH_CERT, identity.tls_cert_pem.clone().into()));
                out.push((COCKROACH_KEY, identity.private_key_pem.clone()));
                out.push((COCKROACH_CA, String::new().into()));
                out.push((COCKROACH_CLIENT_CA, shared.cas.db_tls_pem.clone().into()));
            }
        }
        Ok(out)
    }

    fn describe(&self, issued: &Routed) -> Described {
        issued.described()
    }
}

impl DatabaseOutput {
    /// The database `service` names, as the impersonated roles see it: its name and protocol.
    async fn find_database(
        &self,
        cx: &Issue<'_>,
        impersonated: &Identity,
    ) -> Result<(String, String), Failure> {
        let client = connect_as(cx, impersonated).await?;
        let found = list_all(
            &client,
            "db_server",
            name_or_discovered(&self.service),
            HashMap::new(),
            page(),
        )
        .await?;
        let candidates = found
            .into_iter()
            .filter_map(|r| match r {
                legacy::paginated_resource::Resource::DatabaseServer(server) => {
                    server.spec.and_then(|s| s.database)
                }
                _ => None,
            })
            .filter_map(|db| {
                let meta = db.metadata?;
                let protocol = db.spec.map(|s| s.protocol).unwrap_or_default();
                Some((meta.name.clone(), meta.labels, (meta.name, protocol)))
            })
            .collect();
        choose_one(
            candidates,
            &self.service,
            "database",
            "check service, and that the roles' db_labels grant it",
        )
    }
}
