//! The routes `GenerateUserCerts` writes into a certificate for the access outputs: an app
//! (`RouteToApp`), a database (`RouteToDatabase`) and the roles' database names and users, as
//! Teleport's `tlsca.Identity` carries them in the subject (`lib/tlsca/ca.go`,
//! `Identity.Subject()`; the attribute types are in `keybound_teleport::subject::oid`).
//!
//! Auth does not refuse an app or database route the roles do not grant
//! (`lib/auth/auth_with_roles.go`, `lib/auth/auth.go`): that shows where the certificate is
//! used (the echo app, `front/app.rs`) and at lookup (`ListResources` hides the resource).

use keybound_proto::proto as legacy;
use keybound_teleport::subject::oid;
use tonic::Status;
use x509_cert::der::asn1::ObjectIdentifier;

use crate::roles::Role;

/// Subject attributes (in order) for the routes of `req`, whose certificates carry `roles`;
/// `cluster` is this cluster's name, `kube_clusters` the Kubernetes clusters it has.
pub(crate) fn route_attributes(
    req: &legacy::UserCertsRequest,
    roles: &[Role],
    cluster: &str,
    kube_clusters: &[String],
) -> Result<Vec<(ObjectIdentifier, String)>, Status> {
    let mut out = Vec::new();
    // `CheckKubeGroupsAndUsers`: the Kubernetes users and groups the roles grant, on every
    // certificate whose roles grant any.
    for (attribute, pick) in [
        (
            oid::KUBE_USERS,
            (|r: &Role| &r.kubernetes_users) as fn(&Role) -> &Vec<String>,
        ),
        (oid::KUBE_GROUPS, |r: &Role| &r.kubernetes_groups),
    ] {
        let mut values: Vec<&String> = roles.iter().flat_map(pick).collect();
        values.sort();
        values.dedup();
        out.extend(values.into_iter().map(|v| (attribute, v.clone())));
    }
    if !req.kubernetes_cluster.is_empty() {
        // `lib/auth/auth.go` generateUserCerts: an unknown cluster is a bad parameter
        // (kubeutils.CheckOrSetKubeCluster's text).
        if !kube_clusters.contains(&req.kubernetes_cluster) {
            return Err(Status::invalid_argument(format!(
                "kubernetes cluster {:?} is not registered in this teleport cluster; you can \
                 list registered kubernetes clusters using 'tsh kube ls'",
                req.kubernetes_cluster
            )));
        }
        out.push((oid::KUBE_CLUSTER, req.kubernetes_cluster.clone()));
    }
    if let Some(app) = req.route_to_app.as_ref().filter(|a| !a.name.is_empty()) {
        if !app.cluster_name.is_empty() && app.cluster_name != cluster {
            return Err(Status::not_found(format!(
                "cluster {:?} is not found",
                app.cluster_name
            )));
        }
        // Auth opens an app session for the route and writes its ID
        // (`lib/auth/auth.go`, generateUserCerts with RouteToApp.Name set).
        out.push((oid::APP_SESSION_ID, uuid::Uuid::new_v4().to_string()));
        out.push((oid::APP_PUBLIC_ADDR, app.public_addr.clone()));
        out.push((
            oid::APP_CLUSTER_NAME,
            if app.cluster_name.is_empty() {
                cluster.to_owned()
            } else {
                app.cluster_name.clone()
            },
        ));
        out.push((oid::APP_NAME, app.name.clone()));
    }
    if let Some(db) = req
        .route_to_database
        .as_ref()
        .filter(|d| !d.service_name.is_empty())
    {
        out.push((oid::DB_SERVICE, db.service_name.clone()));
        out.push((oid::DB_PROTOCOL, db.protocol.clone()));
        if !db.username.is_empty() {
            out.push((oid::DB_USERNAME, db.username.clone()));
        }
        if !db.database.is_empty() {
            out.push((oid::DB_NAME, db.database.clone()));
        }
    }
    // `CheckDatabaseNamesAndUsers`: the names and users the roles allow, on every certificate
    // whose roles allow any.
    for (attribute, pick) in [
        (
            oid::DB_NAMES,
            (|r: &Role| &r.db_names) as fn(&Role) -> &Vec<String>,
        ),
        (oid::DB_USERS, |r: &Role| &r.db_users),
    ] {
        let mut values: Vec<&String> = roles.iter().flat_map(pick).collect();
        values.sort();
        values.dedup();
        out.extend(values.into_iter().map(|v| (attribute, v.clone())));
    }
    Ok(out)
}
