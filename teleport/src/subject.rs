//! How Teleport writes an identity into an X.509 certificate's subject (`Identity.Subject()` and
//! `FromSubject` in `lib/tlsca/ca.go`): X.520 attributes for the user, roles and principals, and
//! Teleport's own `1.3.9999.x.y` attribute types for the rest. String values are
//! `PrintableString` when every character allows it, `UTF8String` otherwise (Go's
//! `encoding/asn1`); a reader takes either.

use x509_cert::der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use x509_cert::name::Name;

/// The attribute types of a Teleport identity's subject.
pub mod oid {
    use x509_cert::der::asn1::ObjectIdentifier;

    /// `CN`: the Teleport user (`bot-<name>` for a bot).
    pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    /// `L`: the SSH principals.
    pub const LOCALITY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.7");
    /// `street`: the route-to cluster.
    pub const STREET_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.9");
    /// `O`: the roles (one value each, in one RDN).
    pub const ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
    /// `postalCode`: the traits, JSON.
    pub const POSTAL_CODE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.17");
    /// `TeleportClusterASN1ExtensionOID`: the cluster the identity comes from.
    pub const TELEPORT_CLUSTER: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.7");
    /// `LoginIPASN1ExtensionOID` (older name `ClientIPASN1ExtensionOID`): the client's address.
    pub const LOGIN_IP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.9");
    /// `RenewableCertificateASN1ExtensionOID`: never set for bound keypair bots.
    pub const RENEWABLE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.13");
    /// `GenerationASN1ExtensionOID`: decimal generation counter, only when > 0.
    pub const GENERATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.14");
    /// `ImpersonatorASN1ExtensionOID`: who impersonated the roles.
    pub const IMPERSONATOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.7");
    /// `DisallowReissueASN1ExtensionOID`: `"true"` when the identity may not reissue.
    pub const DISALLOW_REISSUE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.9");
    /// `BotASN1ExtensionOID`: the bot's name.
    pub const BOT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.18");
    /// `BotInstanceASN1ExtensionOID`: the bot instance UUID.
    pub const BOT_INSTANCE_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.20");
    /// `JoinAttributesASN1ExtensionOID`: protojson of `workloadidentityv1.JoinAttrs`.
    pub const JOIN_ATTRIBUTES: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.21");

    // Routes (`lib/tlsca/ca.go`, `Identity.Subject()`; ../shared/spec/more-outputs.md §11).

    /// `KubeUsersASN1ExtensionOID`: the Kubernetes users the roles grant.
    pub const KUBE_USERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.1");
    /// `KubeGroupsASN1ExtensionOID`: the Kubernetes groups the roles grant.
    pub const KUBE_GROUPS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.2");
    /// `KubeClusterASN1ExtensionOID`: the Kubernetes cluster the certificate is routed to.
    pub const KUBE_CLUSTER: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.3");
    /// `AppSessionIDASN1ExtensionOID`: the app session the certificate belongs to.
    pub const APP_SESSION_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.4");
    /// `AppClusterNameASN1ExtensionOID`: the cluster of the app it is routed to.
    pub const APP_CLUSTER_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.5");
    /// `AppPublicAddrASN1ExtensionOID`: the public address of the app it is routed to.
    pub const APP_PUBLIC_ADDR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.6");
    /// `AppNameASN1ExtensionOID`: the name of the app it is routed to.
    pub const APP_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.1.10");
    /// `DatabaseServiceNameASN1ExtensionOID`: the database it is routed to.
    pub const DB_SERVICE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.1");
    /// `DatabaseProtocolASN1ExtensionOID`: that database's protocol.
    pub const DB_PROTOCOL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.2");
    /// `DatabaseUsernameASN1ExtensionOID`: the database user to connect as.
    pub const DB_USERNAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.3");
    /// `DatabaseNameASN1ExtensionOID`: the database to connect to.
    pub const DB_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.4");
    /// `DatabaseNamesASN1ExtensionOID`: the database names the roles allow.
    pub const DB_NAMES: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.5");
    /// `DatabaseUsersASN1ExtensionOID`: the database users the roles allow.
    pub const DB_USERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.9999.2.6");
}

/// Every string attribute of a name, in order (attributes of other types are left out).
pub fn attributes(name: &Name) -> Attributes {
    let mut out = Vec::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let value = atv
                .value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    atv.value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                });
            if let Ok(value) = value {
                out.push((atv.oid, value));
            }
        }
    }
    Attributes(out)
}

/// The string attributes of a name, in order.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Attributes(pub Vec<(ObjectIdentifier, String)>);

impl Attributes {
    /// The first value of type `oid`.
    pub fn one(&self, oid: ObjectIdentifier) -> Option<String> {
        self.0
            .iter()
            .find(|(o, _)| *o == oid)
            .map(|(_, v)| v.clone())
    }

    /// Every value of type `oid`, in order.
    pub fn all(&self, oid: ObjectIdentifier) -> Vec<String> {
        self.0
            .iter()
            .filter(|(o, _)| *o == oid)
            .map(|(_, v)| v.clone())
            .collect()
    }
}
