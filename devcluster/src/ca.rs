//! The in-memory certificate authorities of keybound's dev cluster.
//!
//! The dev cluster stands in for a Teleport cluster in tests and the quickstart, so the
//! certificates made here follow what Teleport's Auth service issues to a Machine ID bot after a
//! `bound_keypair` join (see `docs/teleport-source-notes.md` Q6 and the protocol spec §8.1):
//!
//! * two authorities, the **user CA** and the **host CA**, each with a TLS part (ECDSA P-256,
//!   self-signed, subject `O=<cluster>, CN=<cluster>, serialNumber=<serial>` as made by
//!   `tlsca.GenerateSelfSignedCAWithConfig` in `lib/tlsca/parsegen.go`) and an SSH part (Ed25519);
//! * the bot's X.509 certificate, signed by the user CA, whose subject carries the identity the way
//!   `Identity.Subject()` in `lib/tlsca/ca.go` encodes it (CN, O, L, street, postalCode, then
//!   Teleport's custom `1.3.9999.x.y` attributes), with the template of
//!   `CertAuthority.GenerateCertificate` (same file);
//! * the bot's SSH user certificate, signed by the user CA's SSH key, with the key id, principals
//!   and extensions of `Identity.Encode` in `lib/sshca/identity.go`;
//! * a TLS server certificate for the dev proxy, signed by the host CA.
//!
//! String attributes are encoded as Go's `encoding/asn1` does for `pkix.AttributeTypeAndValue`
//! values: `PrintableString` when every character allows it, `UTF8String` otherwise. A client
//! must therefore accept both string types (Go's `FromSubject` reads either as a string).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use rand_core::{OsRng, RngCore};
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
    SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ssh_key::certificate::{Builder as SshCertBuilder, CertType};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use time::OffsetDateTime;
use x509_cert::der::Decode;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

use super::x509;

/// The SSH principal Teleport always appends to a user certificate
/// (`teleport.SSHSessionJoinPrincipal`); it is also the X.509 `L` (principals) attribute.
pub const JOIN_PRINCIPAL: &str = "-teleport-internal-join";

/// The value `join_method` takes in the join attributes of a bound keypair join.
pub const JOIN_METHOD_BOUND_KEYPAIR: &str = "bound_keypair";

/// DNS names every Teleport proxy/auth certificate carries (`constants.APIDomain` and its
/// wildcard); clients dial Auth through the proxy with this server name.
pub const CLUSTER_LOCAL_NAMES: [&str; 2] = ["teleport.cluster.local", "*.teleport.cluster.local"];

/// Teleport's X.509 subject attribute types, shared with the agent.
pub use keybound_teleport::subject::oid;

/// SSH certificate extension names (`api/constants`, `constants.go`) used on bot certificates.
pub mod ssh_ext {
    /// `teleport.CertExtensionPermitPTY`, set on every user certificate.
    pub const PERMIT_PTY: &str = "permit-pty";
    /// `teleport.CertExtensionTeleportRoles`: `{"roles":[...]}`.
    pub const TELEPORT_ROLES: &str = "teleport-roles";
    /// `teleport.CertExtensionTeleportRouteToCluster`.
    pub const TELEPORT_ROUTE_TO_CLUSTER: &str = "teleport-route-to-cluster";
    /// `teleport.CertExtensionTeleportTraits`: traits JSON.
    pub const TELEPORT_TRAITS: &str = "teleport-traits";
    /// `teleport.CertExtensionBotName`.
    pub const BOT_NAME: &str = "bot-name@goteleport.com";
    /// `teleport.CertExtensionBotInstanceID`.
    pub const BOT_INSTANCE_ID: &str = "bot-instance-id@goteleport.com";
    /// `teleport.CertExtensionGeneration`: decimal, only when > 0.
    pub const GENERATION: &str = "generation";
    /// `teleport.CertExtensionLoginIP`.
    pub const LOGIN_IP: &str = "login-ip";
    /// `teleport.CertExtensionImpersonator`: who impersonated the roles.
    pub const IMPERSONATOR: &str = "impersonator";
    /// `teleport.CertExtensionDisallowReissue`: present (empty) when the identity may not
    /// reissue.
    pub const DISALLOW_REISSUE: &str = "disallow-reissue";
}

const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// `id-ce-basicConstraints`, written by hand for leaf certificates (see [`not_ca_extension`]).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// Subject public key algorithms accepted in a request.
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Teleport's `defaults.CATTL` is ten years.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Lifetime of the dev proxy's TLS certificate.
const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Teleport back-dates certificates by one minute against clock skew.
const BACKDATE: Duration = Duration::from_secs(60);
/// The traits of a dev-cluster bot: none.
const EMPTY_TRAITS_JSON: &str = "{}";

/// The user, host and database CAs of one dev cluster (no OpenSSH, JWT or SPIFFE CAs).
pub struct ClusterCa {
    cluster_name: String,
    user: Authority,
    host: Authority,
    /// The database CA: only its TLS half is used (`types.DatabaseCA`).
    database: Authority,
}

/// One Teleport certificate authority: a TLS CA certificate with its key, and an SSH key.
struct Authority {
    tls: CertifiedIssuer<'static, KeyPair>,
    ssh: ssh_key::PrivateKey,
    ssh_public_wire: Vec<u8>,
    /// `ssh-ed25519 AAAA...` (no comment).
    ssh_public_openssh: String,
}

/// What the dev Auth knows about a bot when it issues its certificates.
#[derive(Debug, Clone)]
pub struct BotCertRequest<'a> {
    /// The bot's name; the username and role become `bot-` + name with spaces replaced by `-`.
    pub bot_name: &'a str,
    /// The bot instance UUID.
    pub bot_instance_id: &'a str,
    /// 1 on a new instance, bumped on each authenticated rejoin; 0 leaves it out.
    pub generation: u64,
    /// PKIX SubjectPublicKeyInfo DER of the subject key: RSA, ECDSA P-256 or Ed25519.
    pub tls_public_key_der: &'a [u8],
    /// SSH wire blob of the same key (`ssh-rsa`, `ecdsa-sha2-nistp256` or `ssh-ed25519`).
    pub ssh_public_key_wire: &'a [u8],
    /// End of validity of both certificates (already capped by the caller).
    pub not_after: SystemTime,
    /// The client's address as Auth saw it.
    pub login_ip: Option<&'a str>,
    /// The name of the join token used; goes into the join attributes.
    pub join_token_name: &'a str,
}

/// What the dev Auth puts into a user's certificates: a bot's own, or role-impersonated ones.
#[derive(Debug, Clone)]
pub struct UserCertRequest<'a> {
    /// The Teleport user (`bot-<name>` for a bot and its impersonated certificates).
    pub username: &'a str,
    /// The roles the certificates carry (`O`, `teleport-roles`).
    pub roles: &'a [String],
    /// The SSH logins the roles allow.
    pub logins: &'a [String],
    /// Who impersonated these roles, for role-impersonated certificates.
    pub impersonator: Option<&'a str>,
    /// Whether the certificates may not request further certificates.
    pub disallow_reissue: bool,
    /// The bot the certificates belong to, if any.
    pub bot: Option<BotFields<'a>>,
    /// The client's address as Auth saw it.
    pub login_ip: Option<&'a str>,
    /// PKIX SubjectPublicKeyInfo DER of the subject key.
    pub tls_public_key_der: &'a [u8],
    /// SSH wire blob of the same key.
    pub ssh_public_key_wire: &'a [u8],
    /// End of validity of both certificates (already capped by the caller).
    pub not_after: SystemTime,
    /// The cluster the certificates name (`TeleportCluster`), when not this CA's: a hostile
    /// cluster's certificates (`--misbehave hostile-cluster-name`).
    pub cluster_name: Option<&'a str>,
}

/// The bot facts a bot's certificates carry (and role-impersonated ones copy).
#[derive(Debug, Clone)]
pub struct BotFields<'a> {
    /// The bot's name.
    pub bot_name: &'a str,
    /// The bot instance UUID.
    pub bot_instance_id: &'a str,
    /// The certificate generation; 0 leaves it out.
    pub generation: u64,
    /// The join token the bot joined with.
    pub join_token_name: &'a str,
}

/// A user's certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct BotCerts {
    /// DER of the X.509 client certificate.
    pub tls_cert_der: Vec<u8>,
    /// SSH wire encoding of the OpenSSH user certificate.
    pub ssh_cert_wire: Vec<u8>,
}

impl fmt::Debug for BotCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotCerts")
            .field(
                "tls_cert_der",
                &format_args!("{} bytes", self.tls_cert_der.len()),
            )
            .field(
                "ssh_cert_wire",
                &format_args!("{} bytes", self.ssh_cert_wire.len()),
            )
            .finish()
    }
}

impl fmt::Debug for ClusterCa {
    /// Names the cluster only: no key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

/// `machineidv1.BotResourceName`: the username and role name of a bot.
pub fn bot_resource_name(bot_name: &str) -> String {
    format!("bot-{}", bot_name.replace(' ', "-"))
}

impl ClusterCa {
    /// Makes fresh user and host authorities for `cluster_name`.
    pub fn generate(cluster_name: &str) -> anyhow::Result<Self> {
        ensure!(!cluster_name.is_empty(), "the cluster name is empty");
        Ok(Self {
            cluster_name: cluster_name.to_owned(),
            user: Authority::generate(cluster_name).context("generating the user CA")?,
            host: Authority::generate(cluster_name).context("generating the host CA")?,
            database: Authority::generate(cluster_name).context("generating the database CA")?,
        })
    }

    /// The cluster name (the CA certificates' O and CN).
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// PEM of the host CA's TLS certificate: the bundle a client trusts to reach the proxy.
    pub fn host_ca_pem(&self) -> String {
        self.host.tls.pem()
    }

    /// PEM of the user CA's TLS certificate: what the dev server trusts for bot client certs.
    pub fn user_ca_pem(&self) -> String {
        self.user.tls.pem()
    }

    /// DER of the host CA's TLS certificate.
    pub fn host_ca_der(&self) -> CertificateDer<'static> {
        self.host.tls.der().clone()
    }

    /// DER of the user CA's TLS certificate.
    pub fn user_ca_der(&self) -> CertificateDer<'static> {
        self.user.tls.der().clone()
    }

    /// DER of the TLS CA certs a join returns: user CA first, then host CA (Teleport's order,
    /// `cas = [UserCA, HostCA]` in `generateUserCert`).
    pub fn tls_ca_ders(&self) -> Vec<Vec<u8>> {
        vec![self.user.tls.der().to_vec(), self.host.tls.der().to_vec()]
    }

    /// SSH wire blobs of the CA public keys a join returns: user CA first, then host CA.
    pub fn ssh_ca_wires(&self) -> Vec<Vec<u8>> {
        vec![
            self.user.ssh_public_wire.clone(),
            self.host.ssh_public_wire.clone(),
        ]
    }

    /// The public CA export of `GET /webapi/auth/export?type=<kind>` (`exportAuth` in
    /// `lib/client/ca_export.go`), or `None` for a type the dev cluster does not have:
    /// * `tls` / `tls-host`: the host CA's TLS certificate (PEM); `tls-user`: the user CA's;
    /// * `user`: the user CA's SSH key as an authorized_keys line,
    ///   `cert-authority <key> clustername=<cluster>&type=user`
    ///   (`sshutils.MarshalAuthorizedKeysFormat`);
    /// * `host`: the host CA's SSH key as a known_hosts line,
    ///   `@cert-authority <cluster>,*.<cluster> <key> type=host`
    ///   (`sshutils.MarshalAuthorizedHostsFormat`, no allowed logins);
    /// * `db`: the database CA's TLS certificate (PEM), as `tctl auth export --type=db`;
    /// * empty: the `host` line, then the `user` line.
    pub fn export(&self, kind: &str) -> Option<String> {
        match kind {
            "db" => Some(self.database.tls.pem()),
            "tls" | "tls-host" => Some(self.host_ca_pem()),
            "tls-user" => Some(self.user_ca_pem()),
            "user" => Some(self.user_ca_authorized_keys_line()),
            "host" => Some(self.host_ca_known_hosts_line()),
            "" => Some(self.host_ca_known_hosts_line() + &self.user_ca_authorized_keys_line()),
            _ => None,
        }
    }

    /// A CA's public parts as the trust service returns them: its SSH keys as authorized_keys
    /// lines (none for the database CA) and its TLS certificate as PEM. `None` for a type the
    /// dev cluster does not have (`host`, `user` and `db` only).
    pub fn authority_public(&self, kind: &str) -> Option<(Vec<String>, String)> {
        let line = |a: &Authority| a.ssh_public_openssh.trim().to_owned();
        match kind {
            "host" => Some((vec![line(&self.host)], self.host.tls.pem())),
            "user" => Some((vec![line(&self.user)], self.user.tls.pem())),
            "db" => Some((Vec::new(), self.database.tls.pem())),
            _ => None,
        }
    }

    /// An SSH host certificate for `key`, signed by the host CA, valid for `principals` (the
    /// names clients dial), as Auth issues to the hosts of a cluster: what a client's
    /// `known_hosts` from an identity output must accept. Returns the certificate as an
    /// OpenSSH line.
    pub fn issue_host_ssh(
        &self,
        key: &ssh_key::PublicKey,
        principals: &[&str],
    ) -> anyhow::Result<String> {
        let mut nonce = vec![0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let now = unix_seconds(SystemTime::now())?;
        let mut builder = SshCertBuilder::new(
            nonce,
            key.key_data().clone(),
            now.saturating_sub(BACKDATE.as_secs()),
            now + SERVER_CERT_TTL.as_secs(),
        )?;
        builder.cert_type(CertType::Host)?.key_id(format!(
            "{}.{}",
            uuid::Uuid::new_v4(),
            self.cluster_name
        ))?;
        for principal in principals {
            builder.valid_principal(*principal)?;
        }
        let cert = builder
            .sign(&self.host.ssh)
            .context("signing the host's SSH certificate")?;
        Ok(cert.to_openssh()?)
    }

    fn user_ca_authorized_keys_line(&self) -> String {
        // url.Values.Encode sorts the keys: clustername, then type.
        format!(
            "cert-authority {} clustername={}&type=user\n",
            self.user.ssh_public_openssh,
            go_query_escape(&self.cluster_name)
        )
    }

    fn host_ca_known_hosts_line(&self) -> String {
        let cluster = &self.cluster_name;
        format!(
            "@cert-authority {cluster},*.{cluster} {} type=host\n",
            self.host.ssh_public_openssh
        )
    }

    /// Issues the bot's X.509 and SSH user certificates.
    ///
    /// Fails when the TLS and SSH public keys of the request are not the same key, when the key
    /// type is not RSA, ECDSA P-256 or Ed25519, or when `not_after` is not in the future.
    pub fn issue_bot(&self, req: &BotCertRequest<'_>) -> anyhow::Result<BotCerts> {
        ensure!(!req.bot_name.is_empty(), "the bot name is empty");
        ensure!(
            !req.bot_instance_id.is_empty(),
            "the bot instance ID is empty"
        );
        let username = bot_resource_name(req.bot_name);
        self.issue_user(&UserCertRequest {
            username: &username,
            roles: std::slice::from_ref(&username),
            logins: &[],
            impersonator: None,
            disallow_reissue: false,
            bot: Some(BotFields {
                bot_name: req.bot_name,
                bot_instance_id: req.bot_instance_id,
                generation: req.generation,
                join_token_name: req.join_token_name,
            }),
            login_ip: req.login_ip,
            tls_public_key_der: req.tls_public_key_der,
            ssh_public_key_wire: req.ssh_public_key_wire,
            not_after: req.not_after,
            cluster_name: None,
        })
    }

    /// Issues a user's X.509 and SSH certificates: a bot's own, or the role-impersonated ones
    /// `GenerateUserCerts` makes for its outputs.
    ///
    /// Fails when the TLS and SSH public keys of the request are not the same key, when the key
    /// type is not RSA, ECDSA P-256 or Ed25519, or when `not_after` is not in the future.
    pub fn issue_user(&self, req: &UserCertRequest<'_>) -> anyhow::Result<BotCerts> {
        ensure!(!req.username.is_empty(), "the username is empty");
        let tls_key = TlsSubject::from_spki(req.tls_public_key_der)
            .context("the TLS public key is not a usable SubjectPublicKeyInfo")?;
        let ssh_key = SshSubject::from_wire(req.ssh_public_key_wire)
            .context("the SSH public key is not a usable SSH public key blob")?;
        ensure!(
            tls_key.parsed == ssh_key.parsed,
            "the TLS public key ({}) and the SSH public key ({}) are not the same key",
            tls_key.parsed.kind(),
            ssh_key.parsed.kind()
        );

        // Compare at full precision: certificates carry whole seconds, and a one-second TTL
        // truncated to seconds may land on the current second while still being in the future.
        let clock = SystemTime::now();
        ensure!(
            req.not_after > clock,
            "the requested expiry is not in the future ({} <= {} seconds since the epoch)",
            unix_seconds(req.not_after)?,
            unix_seconds(clock)?
        );
        let now = unix_seconds(clock)?;
        let not_before = now.saturating_sub(BACKDATE.as_secs());
        // X.509 `notAfter` is inclusive of its last second; round a fractional expiry up so the
        // certificate never ends before the requested instant.
        let not_after = unix_seconds_ceil(req.not_after)?;

        // `RoleSet.CheckLoginDuration`: the roles' logins, or one unusable login when there are
        // none; Auth then appends the session-join principal (`generateUserCert`).
        let mut principals: Vec<String> = Vec::new();
        for login in req.logins {
            if !principals.contains(login) {
                principals.push(login.clone());
            }
        }
        if principals.is_empty() && req.bot.is_none() {
            principals.push(format!("-teleport-nologin-{}", uuid::Uuid::new_v4()));
        }
        principals.push(JOIN_PRINCIPAL.to_owned());

        let tls_cert_der = self.issue_user_tls(req, &principals, not_before, not_after)?;
        let ssh_cert_wire =
            self.issue_user_ssh(req, &ssh_key, &principals, not_before, not_after)?;
        Ok(BotCerts {
            tls_cert_der,
            ssh_cert_wire,
        })
    }

    /// The X.509 half of [`Self::issue_user`]: `Identity.Subject()` + `GenerateCertificate`
    /// (`lib/tlsca/ca.go`).
    fn issue_user_tls(
        &self,
        req: &UserCertRequest<'_>,
        principals: &[String],
        not_before: u64,
        not_after: u64,
    ) -> anyhow::Result<Vec<u8>> {
        // Go's pkix.Name.ToRDNSequence order: (C, ST,) L, street, postalCode, O, (OU,) CN,
        // (serialNumber,) then ExtraNames in the order Identity.Subject() appends them. A
        // multi-valued attribute (logins, roles) is one RDN with several values.
        let mut dn = x509::Subject::default();
        // L = Principals.
        dn.push(oid::LOCALITY, principals)?;
        // street = [RouteToCluster], postalCode = [traits JSON].
        dn.push_one(oid::STREET_ADDRESS, &self.cluster_name)?;
        dn.push_one(oid::POSTAL_CODE, EMPTY_TRAITS_JSON)?;
        // O = Groups (the roles), CN = Username.
        dn.push(oid::ORGANIZATION, req.roles)?;
        dn.push_one(oid::COMMON_NAME, req.username)?;
        // ExtraNames. No Renewable (1.3.9999.1.13): bound keypair bots are not renewable, and
        // role-impersonated certificates never are.
        dn.push_one(
            oid::TELEPORT_CLUSTER,
            req.cluster_name.unwrap_or(&self.cluster_name),
        )?;
        if let Some(ip) = req.login_ip.filter(|ip| !ip.is_empty()) {
            dn.push_one(oid::LOGIN_IP, ip)?;
        }
        if let Some(impersonator) = req.impersonator {
            dn.push_one(oid::IMPERSONATOR, impersonator)?;
        }
        if req.disallow_reissue {
            dn.push_one(oid::DISALLOW_REISSUE, "true")?;
        }
        if let Some(bot) = &req.bot {
            if bot.generation > 0 {
                dn.push_one(oid::GENERATION, &bot.generation.to_string())?;
            }
            dn.push_one(oid::BOT_NAME, bot.bot_name)?;
            dn.push_one(oid::BOT_INSTANCE_ID, bot.bot_instance_id)?;
            dn.push_one(
                oid::JOIN_ATTRIBUTES,
                &join_attributes_json(bot.join_token_name)?,
            )?;
        }
        x509::Leaf {
            issuer_der: self.user.tls.der(),
            issuer_key: self.user.tls.key(),
            subject: dn,
            spki_der: req.tls_public_key_der,
            not_before,
            not_after,
        }
        .sign()
        .context("signing the user's X.509 certificate")
    }

    /// The SSH half of [`Self::issue_user`]: `Identity.Encode` (`lib/sshca/identity.go`).
    fn issue_user_ssh(
        &self,
        req: &UserCertRequest<'_>,
        key: &SshSubject,
        principals: &[String],
        valid_after: u64,
        valid_before: u64,
    ) -> anyhow::Result<Vec<u8>> {
        // x/crypto/ssh's SignCert uses a 32-byte random nonce; Teleport leaves the serial at 0.
        let mut nonce = vec![0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let mut builder = SshCertBuilder::new(nonce, key.key.clone(), valid_after, valid_before)
            .context("starting the user's SSH certificate")?;
        let roles = serde_json::to_string(req.roles)?;
        builder.cert_type(CertType::User)?.key_id(req.username)?;
        for principal in principals {
            builder.valid_principal(principal.as_str())?;
        }
        // The extensions are kept in a sorted map, the order OpenSSH requires.
        builder
            .extension(ssh_ext::PERMIT_PTY, "")?
            .extension(ssh_ext::TELEPORT_ROLES, format!(r#"{{"roles":{roles}}}"#))?
            .extension(
                ssh_ext::TELEPORT_ROUTE_TO_CLUSTER,
                self.cluster_name.as_str(),
            )?
            .extension(ssh_ext::TELEPORT_TRAITS, EMPTY_TRAITS_JSON)?;
        if let Some(impersonator) = req.impersonator {
            builder.extension(ssh_ext::IMPERSONATOR, impersonator)?;
        }
        if req.disallow_reissue {
            builder.extension(ssh_ext::DISALLOW_REISSUE, "")?;
        }
        if let Some(bot) = &req.bot {
            builder
                .extension(ssh_ext::BOT_NAME, bot.bot_name)?
                .extension(ssh_ext::BOT_INSTANCE_ID, bot.bot_instance_id)?;
            if bot.generation > 0 && req.impersonator.is_none() {
                builder.extension(ssh_ext::GENERATION, bot.generation.to_string())?;
            }
        }
        if let Some(ip) = req.login_ip.filter(|ip| !ip.is_empty()) {
            builder.extension(ssh_ext::LOGIN_IP, ip)?;
        }
        let cert = builder
            .sign(&self.user.ssh)
            .context("signing the user's SSH certificate")?;
        Ok(cert.to_bytes()?)
    }

    /// A TLS server certificate chain + key for the dev proxy listener, signed by the host CA,
    /// with SANs = `names` (DNS names or IP addresses) plus `teleport.cluster.local` and
    /// `*.teleport.cluster.local`. The chain holds the leaf only (clients trust the host CA).
    pub fn server_cert(
        &self,
        names: &[String],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        self.host_cert("Proxy", names)
    }

    /// Auth's TLS certificate, signed by the host CA: `O=Auth`, SANs `teleport.cluster.local`
    /// and `*.teleport.cluster.local` (which covers the `<hex cluster>.teleport.cluster.local`
    /// server name clients use).
    pub fn auth_cert(
        &self,
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        self.host_cert("Auth", &[])
    }

    fn host_cert(
        &self,
        role: &str,
        names: &[String],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let mut sans: Vec<String> = Vec::with_capacity(names.len() + CLUSTER_LOCAL_NAMES.len());
        for name in names.iter().map(String::as_str).chain(CLUSTER_LOCAL_NAMES) {
            ensure!(!name.is_empty(), "empty server name");
            if !sans.iter().any(|n| n == name) {
                sans.push(name.to_owned());
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .with_context(|| format!("generating the {role} TLS key"))?;

        // Like a Teleport host identity: CN = <host UUID>.<cluster>, O = the system role.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, go_string(role));
        dn.push(
            DnType::CommonName,
            go_string(&format!("{}.{}", uuid::Uuid::new_v4(), self.cluster_name)),
        );
        push_oid(&mut dn, oid::TELEPORT_CLUSTER, &self.cluster_name)?;

        let now = unix_seconds(SystemTime::now())?;
        let mut params = leaf_params(
            dn,
            now.saturating_sub(BACKDATE.as_secs()),
            now + SERVER_CERT_TTL.as_secs(),
        )?;
        params.subject_alt_names = CertificateParams::new(sans)
            .context("invalid server name")?
            .subject_alt_names;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // GenerateCertificate puts both on every certificate, host ones included.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &*self.host.tls)
            .with_context(|| format!("signing the {role} TLS certificate"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }
}

impl Authority {
    /// `GenerateSelfSignedCAWithConfig` (`lib/tlsca/parsegen.go`) for the TLS part, a fresh
    /// Ed25519 key for the SSH part.
    fn generate(cluster_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let serial = random_serial();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, go_string(cluster_name));
        dn.push(DnType::CommonName, go_string(cluster_name));
        // "this is important, otherwise go will accept certificate authorities signed by the
        // same private key and having the same subject": the subject carries the serial, which
        // also tells the user CA and host CA (same O and CN) apart.
        dn.push(
            DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
            go_string(&u128::from_be_bytes(serial).to_string()),
        );

        let now = unix_seconds(SystemTime::now())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = datetime(now.saturating_sub(BACKDATE.as_secs()))?;
        params.not_after = datetime(now + CA_TTL.as_secs())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Teleport: KeyEncipherment | DigitalSignature | CertSign.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        let tls = CertifiedIssuer::self_signed(params, key)?;

        let ssh = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from(
            ed25519_dalek::SigningKey::generate(&mut OsRng),
        ));
        let ssh_public_wire = ssh.public_key().to_bytes()?;
        let ssh_public_openssh = ssh.public_key().to_openssh()?;
        Ok(Self {
            tls,
            ssh,
            ssh_public_wire,
            ssh_public_openssh,
        })
    }
}

/// Parameters shared by leaf certificates (`GenerateCertificate`): random serial below 2^128,
/// the validity window, `BasicConstraintsValid` with `IsCA=false`, and an authority key
/// identifier (Go copies the issuer's subject key identifier).
fn leaf_params(
    dn: DistinguishedName,
    not_before: u64,
    not_after: u64,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.not_before = datetime(not_before)?;
    params.not_after = datetime(not_after)?;
    params.is_ca = IsCa::NoCa;
    params.custom_extensions = vec![not_ca_extension()];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Critical basicConstraints with an empty SEQUENCE, which is how Go (and DER, where `cA`
/// defaults to FALSE) writes `IsCA=false`. rcgen's `IsCa::ExplicitNoCa` writes an explicit
/// `BOOLEAN FALSE` instead, which strict DER readers may refuse.
fn not_ca_extension() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

/// Appends a Teleport ExtraName (`pkix.AttributeTypeAndValue{Type: oid, Value: value}`).
fn push_oid(dn: &mut DistinguishedName, oid: ObjectIdentifier, value: &str) -> anyhow::Result<()> {
    let arcs = oid.arcs().map(u64::from).collect();
    dn.push(DnType::CustomDnType(arcs), go_string(value));
    Ok(())
}

/// How Go's `encoding/asn1` marshals a `string` with no explicit type: `PrintableString` when
/// every character is in its set, else `UTF8String`.
fn go_string(value: &str) -> DnValue {
    match PrintableString::try_from(value) {
        Ok(printable) => DnValue::PrintableString(printable),
        Err(_) => DnValue::Utf8String(value.to_owned()),
    }
}

/// Go's `url.QueryEscape`: unreserved characters as they are, space as `+`, the rest `%XX`.
fn go_query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The protojson of `workloadidentityv1.JoinAttrs` for a bound keypair join, with proto field
/// names (`UseProtoNames`): only the `meta` message (`join_token_name` = field 1,
/// `join_method` = field 2).
fn join_attributes_json(join_token_name: &str) -> anyhow::Result<String> {
    let token = serde_json::to_string(join_token_name)?;
    let method = serde_json::to_string(JOIN_METHOD_BOUND_KEYPAIR)?;
    Ok(format!(
        r#"{{"meta":{{"join_token_name":{token},"join_method":{method}}}}}"#
    ))
}

/// A random serial number below 2^128, as `GenerateCertificate` draws it.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    serial
}

fn unix_seconds(time: SystemTime) -> anyhow::Result<u64> {
    Ok(time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("time before 1970"))?
        .as_secs())
}

/// Whole seconds since the epoch, rounded up.
fn unix_seconds_ceil(time: SystemTime) -> anyhow::Result<u64> {
    unix_seconds(time + Duration::from_nanos(999_999_999))
}

fn datetime(unix_seconds: u64) -> anyhow::Result<OffsetDateTime> {
    let seconds = i64::try_from(unix_seconds).context("time out of range")?;
    OffsetDateTime::from_unix_timestamp(seconds).context("time out of range")
}

/// The subject key of the X.509 certificate, as the bot sent it.
struct TlsSubject {
    parsed: ParsedKey,
}

/// The subject key of the SSH certificate, as the bot sent it.
struct SshSubject {
    key: KeyData,
    parsed: ParsedKey,
}

/// A parsed public key, to check that the TLS and SSH keys of a request are the same key.
#[derive(PartialEq, Eq)]
enum ParsedKey {
    /// Modulus and public exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    EcdsaP256(p256::PublicKey),
    Ed25519([u8; 32]),
}

impl ParsedKey {
    fn kind(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "RSA",
            Self::EcdsaP256(_) => "ECDSA P-256",
            Self::Ed25519(_) => "Ed25519",
        }
    }
}

/// A SubjectPublicKeyInfo as rcgen rebuilds one from an algorithm and key bits, to check that a
/// client's key is in canonical DER form (RSA parameters NULL, no other EC parameters...).
struct SubjectSpki {
    algorithm: &'static SignatureAlgorithm,
    bits: Vec<u8>,
}

impl PublicKeyData for SubjectSpki {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl TlsSubject {
    fn from_spki(der: &[u8]) -> anyhow::Result<Self> {
        let info = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|err| anyhow!("not a DER SubjectPublicKeyInfo: {err}"))?;
        let bits = info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| anyhow!("the public key BIT STRING has unused bits"))?
            .to_vec();
        let alg = info.algorithm.oid;
        let (algorithm, parsed): (&'static SignatureAlgorithm, ParsedKey) =
            if alg == OID_RSA_ENCRYPTION {
                use rsa::pkcs1::DecodeRsaPublicKey;
                use rsa::traits::PublicKeyParts;
                let key = rsa::RsaPublicKey::from_pkcs1_der(&bits)
                    .map_err(|err| anyhow!("bad RSA public key: {err}"))?;
                let parsed = ParsedKey::Rsa {
                    n: key.n().to_bytes_be(),
                    e: key.e().to_bytes_be(),
                };
                (&rcgen::PKCS_RSA_SHA256, parsed)
            } else if alg == OID_EC_PUBLIC_KEY {
                let curve = info
                    .algorithm
                    .parameters
                    .map(|p| p.decode_as::<ObjectIdentifier>())
                    .transpose()
                    .map_err(|err| anyhow!("bad EC parameters: {err}"))?;
                ensure!(
                    curve == Some(OID_SECP256R1),
                    "unsupported elliptic curve (only P-256 is accepted)"
                );
                let key = p256::PublicKey::from_sec1_bytes(&bits)
                    .map_err(|_| anyhow!("bad P-256 public key point"))?;
                (&rcgen::PKCS_ECDSA_P256_SHA256, ParsedKey::EcdsaP256(key))
            } else if alg == OID_ED25519 {
                let key: [u8; 32] = bits.as_slice().try_into().map_err(|_| {
                    anyhow!("an Ed25519 public key is 32 bytes, not {}", bits.len())
                })?;
                (&rcgen::PKCS_ED25519, ParsedKey::Ed25519(key))
            } else {
                bail!("unsupported public key algorithm {alg} (RSA, ECDSA P-256 or Ed25519)");
            };
        let spki = SubjectSpki { algorithm, bits };
        // rcgen rebuilds the SPKI from the algorithm and the key bits: make sure it comes out
        // as the very bytes the client sent (RSA parameters NULL, no other EC parameters...).
        ensure!(
            spki.subject_public_key_info() == der,
            "the SubjectPublicKeyInfo is not in canonical DER form"
        );
        Ok(Self { parsed })
    }
}

impl SshSubject {
    fn from_wire(wire: &[u8]) -> anyhow::Result<Self> {
        let public = ssh_key::PublicKey::from_bytes(wire)
            .map_err(|err| anyhow!("not an SSH public key blob: {err}"))?;
        let parsed = match public.key_data() {
            KeyData::Rsa(key) => ParsedKey::Rsa {
                n: positive(&key.n)?,
                e: positive(&key.e)?,
            },
            KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)) => ParsedKey::EcdsaP256(
                p256::PublicKey::from_sec1_bytes(point.as_bytes())
                    .map_err(|_| anyhow!("bad P-256 public key point"))?,
            ),
            KeyData::Ed25519(key) => ParsedKey::Ed25519(key.0),
            other => bail!(
                "unsupported SSH key type {} (ssh-rsa, ecdsa-sha2-nistp256 or ssh-ed25519)",
                other.algorithm()
            ),
        };
        Ok(Self {
            key: public.key_data().clone(),
            parsed,
        })
    }
}

/// The magnitude of a non-negative SSH mpint, big-endian without leading zeros.
fn positive(mpint: &ssh_key::Mpint) -> anyhow::Result<Vec<u8>> {
    let bytes = mpint
        .as_positive_bytes()
        .ok_or_else(|| anyhow!("negative RSA parameter"))?;
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    Ok(bytes[start..].to_vec())
}

#[cfg(test)]
mod tests {
    //! Checked with tools keybound did not write: `openssl` (verify, x509), `ssh-keygen -L`
    //! (which also checks the CA signature while parsing), rustls/webpki, and `x509-cert`.

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    use rustls::pki_types::ServerName;
    use x509_cert::der::{Tag, Tagged as _};

    use super::*;

    const CLUSTER: &str = "dev.example.test";
    const INSTANCE: &str = "3c6a8a1e-9d0e-4d1e-8a47-1b0c1f3c2d4e";
    const TOKEN: &str = "bot-token";

    /// A subject key as the client would send it.
    struct Subject {
        spki: Vec<u8>,
        wire: Vec<u8>,
    }

    fn ssh_wire(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    fn p256_subject() -> (p256::SecretKey, Subject) {
        let secret = p256::SecretKey::random(&mut OsRng);
        let spki = secret.public_key().to_public_key_der().unwrap().into_vec();
        let point = p256::EncodedPoint::from(secret.public_key());
        let wire = ssh_wire(&[b"ecdsa-sha2-nistp256", b"nistp256", point.as_bytes()]);
        (secret, Subject { spki, wire })
    }

    fn ed25519_subject() -> Subject {
        let key = ed25519_dalek::SigningKey::generate(&mut OsRng).verifying_key();
        Subject {
            spki: key.to_public_key_der().unwrap().into_vec(),
            wire: ssh_wire(&[b"ssh-ed25519", key.as_bytes()]),
        }
    }

    /// An RSA-2048 key made and exported by openssl and ssh-keygen.
    fn rsa_subject(dir: &Path) -> Subject {
        use std::os::unix::fs::PermissionsExt as _;
        let key = dir.join("rsa.pem");
        let der = dir.join("rsa.pub.der");
        run_ok(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                s(&key),
            ],
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        run_ok(
            "openssl",
            &[
                "pkey",
                "-in",
                s(&key),
                "-pubout",
                "-outform",
                "DER",
                "-out",
                s(&der),
            ],
        );
        let line = run_ok("ssh-keygen", &["-y", "-f", s(&key)]);
        let mut fields = line.split_whitespace();
        assert_eq!(fields.next(), Some("ssh-rsa"));
        Subject {
            spki: std::fs::read(&der).unwrap(),
            wire: B64.decode(fields.next().unwrap()).unwrap(),
        }
    }

    fn request<'a>(subject: &'a Subject, not_after: SystemTime) -> BotCertRequest<'a> {
        BotCertRequest {
            bot_name: "my bot",
            bot_instance_id: INSTANCE,
            generation: 1,
            tls_public_key_der: &subject.spki,
            ssh_public_key_wire: &subject.wire,
            not_after,
            login_ip: Some("192.0.2.10"),
            join_token_name: TOKEN,
        }
    }

    fn in_one_hour() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    fn s(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// Runs a tool with TZ=UTC; returns (success, stdout + stderr).
    fn run(program: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(program)
            .args(args)
            .env("TZ", "UTC")
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn run_ok(program: &str, args: &[&str]) -> String {
        let (ok, text) = run(program, args);
        assert!(ok, "{program} {args:?} failed:\n{text}");
        text
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = B64.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// `date -u` rendering of a Unix time, as ssh-keygen -L prints validity under TZ=UTC.
    fn utc(unix: u64) -> String {
        run_ok(
            "date",
            &["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%S"],
        )
        .trim()
        .to_owned()
    }

    /// Hex of an SSH string, as ssh-keygen -L dumps extension data it does not know.
    fn ssh_string_hex(value: &str) -> String {
        ssh_wire(&[value.as_bytes()])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The fingerprint `ssh-keygen -l` gives for an SSH public key blob.
    fn ssh_fingerprint(dir: &Path, name: &str, wire: &[u8]) -> String {
        let key = ssh_key::PublicKey::from_bytes(wire).unwrap();
        let path = write(
            dir,
            name,
            format!("{} {}\n", key.algorithm().as_str(), B64.encode(wire)),
        );
        let out = run_ok("ssh-keygen", &["-l", "-f", s(&path)]);
        out.split_whitespace().nth(1).unwrap().to_owned()
    }

    /// The subject attributes as (dotted OID, string), read back with x509-cert, the way the
    /// client reads them: Go writes PrintableString or UTF8String, both must be accepted.
    fn name_attributes(name: &x509_cert::name::Name) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for rdn in name.0.iter() {
            for atv in rdn.0.iter() {
                let tag = atv.value.tag();
                assert!(
                    matches!(tag, Tag::PrintableString | Tag::Utf8String),
                    "{} has string type {tag:?}",
                    atv.oid
                );
                let value = std::str::from_utf8(atv.value.value()).unwrap().to_owned();
                out.push((atv.oid.to_string(), value));
            }
        }
        out
    }

    #[test]
    fn bot_resource_name_is_teleports() {
        assert_eq!(bot_resource_name("my bot"), "bot-my-bot");
        assert_eq!(bot_resource_name("ci"), "bot-ci");
    }

    #[test]
    fn bot_tls_cert_verifies_with_openssl_and_carries_the_teleport_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        assert_eq!(ca.cluster_name(), CLUSTER);
        let (_, subject) = p256_subject();
        let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();

        // The join's first TLS CA is the user CA, and it signed the bot certificate.
        let cas = ca.tls_ca_ders();
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[0], ca.user_ca_der().to_vec());
        assert_eq!(cas[1], ca.host_ca_der().to_vec());
        assert_eq!(pem("CERTIFICATE", &cas[1]), ca.host_ca_pem());
        let user_ca = write(dir.path(), "user.pem", pem("CERTIFICATE", &cas[0]));
        let host_ca = write(dir.path(), "host.pem", ca.host_ca_pem());
        let bot = write(
            dir.path(),
            "bot.pem",
            pem("CERTIFICATE", &certs.tls_cert_der),
        );
        let out = run_ok(
            "openssl",
            &[
                "verify",
                "-CAfile",
                s(&user_ca),
                "-purpose",
                "sslclient",
                s(&bot),
            ],
        );
        assert!(out.contains(": OK"), "{out}");
        let (ok, out) = run("openssl", &["verify", "-CAfile", s(&host_ca), s(&bot)]);
        assert!(!ok, "the host CA must not verify a bot certificate:\n{out}");

        // Subject, in Go's RDN order, values as Teleport writes them.
        let subject_lines = run_ok(
            "openssl",
            &[
                "x509",
                "-in",
                s(&bot),
                "-noout",
                "-subject",
                "-nameopt",
                "sep_multiline,oid,utf8",
            ],
        );
        let lines: Vec<&str> = subject_lines.lines().skip(1).map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "2.5.4.7=-teleport-internal-join",
                "2.5.4.9=dev.example.test",
                "2.5.4.17={}",
                "2.5.4.10=bot-my-bot",
                "2.5.4.3=bot-my-bot",
                "1.3.9999.1.7=dev.example.test",
                "1.3.9999.1.9=192.0.2.10",
                "1.3.9999.1.14=1",
                "1.3.9999.2.18=my bot",
                &format!("1.3.9999.2.20={INSTANCE}"),
                r#"1.3.9999.2.21={"meta":{"join_token_name":"bot-token","join_method":"bound_keypair"}}"#,
            ]
        );

        let text = run_ok("openssl", &["x509", "-in", s(&bot), "-noout", "-text"]);
        for expected in [
            "Signature Algorithm: ecdsa-with-SHA256",
            "Issuer: O = dev.example.test, CN = dev.example.test, serialNumber = ",
            "Digital Signature, Key Encipherment",
            "TLS Web Server Authentication, TLS Web Client Authentication",
            "CA:FALSE",
            "X509v3 Authority Key Identifier",
            "NIST CURVE: P-256",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        for absent in ["Subject Alternative Name", "1.3.9999.1.13", "CA:TRUE"] {
            assert!(!text.contains(absent), "unexpected {absent:?} in:\n{text}");
        }

        // The CA certificate itself: self-signed CA, O = CN = cluster name.
        let ca_text = run_ok("openssl", &["x509", "-in", s(&user_ca), "-noout", "-text"]);
        for expected in [
            "Subject: O = dev.example.test, CN = dev.example.test, serialNumber = ",
            "CA:TRUE",
            "Certificate Sign",
            "X509v3 Subject Key Identifier",
        ] {
            assert!(
                ca_text.contains(expected),
                "missing {expected:?} in:\n{ca_text}"
            );
        }
        let out = run_ok("openssl", &["verify", "-CAfile", s(&user_ca), s(&user_ca)]);
        assert!(out.contains(": OK"), "{out}");
    }

    #[test]
    fn x509_cert_parse_back_reads_the_teleport_oids() {
        use x509_cert::der::Decode as _;
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        let (_, subject) = p256_subject();
        let not_after = in_one_hour();
        let before = unix_seconds(SystemTime::now()).unwrap();
        let certs = ca.issue_bot(&request(&subject, not_after)).unwrap();
        let cert = x509_cert::Certificate::from_der(&certs.tls_cert_der).unwrap();
        let tbs = &cert.tbs_certificate;

        let attrs: BTreeMap<String, String> = name_attributes(&tbs.subject).into_iter().collect();
        assert_eq!(attrs["2.5.4.3"], "bot-my-bot");
        assert_eq!(attrs["2.5.4.10"], "bot-my-bot");
        assert_eq!(attrs[&oid::TELEPORT_CLUSTER.to_string()], CLUSTER);
        assert_eq!(attrs[&oid::LOGIN_IP.to_string()], "192.0.2.10");
        assert_eq!(attrs[&oid::GENERATION.to_string()], "1");
        assert_eq!(attrs[&oid::BOT_NAME.to_string()], "my bot");
        assert_eq!(attrs[&oid::BOT_INSTANCE_ID.to_string()], INSTANCE);
        let join: serde_json::Value =
            serde_json::from_str(&attrs[&oid::JOIN_ATTRIBUTES.to_string()]).unwrap();
        assert_eq!(join["meta"]["join_token_name"], TOKEN);
        assert_eq!(join["meta"]["join_method"], "bound_keypair");
        assert!(!attrs.contains_key(&oid::RENEWABLE.to_string()));

        // tbot takes the cluster name from the issuer's O.
        let issuer = name_attributes(&tbs.issuer);
        assert!(issuer.contains(&("2.5.4.10".to_owned(), CLUSTER.to_owned())));

        // The subject key is the one sent, byte for byte.
        let spki = x509_cert::der::Encode::to_der(&tbs.subject_public_key_info).unwrap();
        assert_eq!(spki, subject.spki);

        // Validity: NotBefore = now - 1 min, NotAfter = the request.
        let nb = tbs.validity.not_before.to_unix_duration().as_secs();
        let na = tbs.validity.not_after.to_unix_duration().as_secs();
        assert!(
            nb + 60 >= before && nb + 60 <= before + 5,
            "not_before {nb}, now {before}"
        );
        assert_eq!(na, unix_seconds_ceil(not_after).unwrap());
        // Random positive serial of at most 128 bits (plus DER's sign byte).
        let serial = tbs.serial_number.as_bytes();
        assert!(serial.len() <= 17 && serial[0] & 0x80 == 0);

        // Generation 0 and no login IP leave their attributes out.
        let mut req = request(&subject, not_after);
        req.generation = 0;
        req.login_ip = None;
        let certs = ca.issue_bot(&req).unwrap();
        let cert = x509_cert::Certificate::from_der(&certs.tls_cert_der).unwrap();
        let oids_present: Vec<String> = name_attributes(&cert.tbs_certificate.subject)
            .into_iter()
            .map(|(oid, _)| oid)
            .collect();
        assert!(
            !oids_present
                .iter()
                .any(|o| *o == oid::GENERATION.to_string() || *o == oid::LOGIN_IP.to_string())
        );
        assert!(
            oids_present
                .iter()
                .any(|o| *o == oid::BOT_INSTANCE_ID.to_string())
        );
    }

    #[test]
    fn bot_ssh_cert_reads_back_with_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        let (_, subject) = p256_subject();
        let not_after = in_one_hour();
        let certs = ca.issue_bot(&request(&subject, not_after)).unwrap();
        let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
        let path = write(dir.path(), "bot-cert.pub", cert.to_openssh().unwrap());

        // ssh-keygen verifies the CA signature while loading the certificate.
        let out = run_ok("ssh-keygen", &["-L", "-f", s(&path)]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let after = unix_seconds(SystemTime::now()).unwrap() - 60;
        let valid_after = cert.valid_after();
        assert!(valid_after <= after && valid_after + 5 >= after);
        let user_ca_fp = ssh_fingerprint(dir.path(), "user_ca.pub", &ca.ssh_ca_wires()[0]);
        let subject_fp = ssh_fingerprint(dir.path(), "subject.pub", &subject.wire);
        for expected in [
            "Type: ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate".to_owned(),
            format!("Public key: ECDSA-CERT {subject_fp}"),
            format!("Signing CA: ED25519 {user_ca_fp} (using ssh-ed25519)"),
            r#"Key ID: "bot-my-bot""#.to_owned(),
            format!(
                "Valid: from {} to {}",
                utc(valid_after),
                utc(unix_seconds_ceil(not_after).unwrap())
            ),
            "Critical Options: (none)".to_owned(),
        ] {
            assert!(
                lines.contains(&expected.as_str()),
                "missing {expected:?} in:\n{out}"
            );
        }
        let principals = lines.iter().position(|l| *l == "Principals:").unwrap();
        assert_eq!(lines[principals + 1], "-teleport-internal-join");
        assert_eq!(lines[principals + 2], "Critical Options: (none)");

        // Extensions, sorted by name as OpenSSH requires; values are SSH strings.
        let ext_start = lines.iter().position(|l| *l == "Extensions:").unwrap();
        let extensions: Vec<String> = lines[ext_start + 1..]
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| l.to_string())
            .collect();
        let with_value = |name: &str, value: &str| {
            let hex = ssh_string_hex(value);
            format!("{name} UNKNOWN OPTION: {hex} (len {})", hex.len() / 2)
        };
        assert_eq!(
            extensions,
            [
                with_value("bot-instance-id@goteleport.com", INSTANCE),
                with_value("bot-name@goteleport.com", "my bot"),
                with_value("generation", "1"),
                with_value("login-ip", "192.0.2.10"),
                "permit-pty".to_owned(),
                with_value("teleport-roles", r#"{"roles":["bot-my-bot"]}"#),
                with_value("teleport-route-to-cluster", CLUSTER),
                with_value("teleport-traits", "{}"),
            ]
        );

        // A certificate whose signature is damaged is refused by ssh-keygen.
        let mut damaged = certs.ssh_cert_wire;
        let last = damaged.len() - 1;
        damaged[last] ^= 0x01;
        let damaged_path = write(
            dir.path(),
            "damaged-cert.pub",
            format!(
                "ecdsa-sha2-nistp256-cert-v01@openssh.com {}\n",
                B64.encode(&damaged)
            ),
        );
        let (ok, out) = run("ssh-keygen", &["-L", "-f", s(&damaged_path)]);
        assert!(!ok, "a damaged certificate was accepted:\n{out}");

        // Generation 0 and no login IP leave those extensions out.
        let mut req = request(&subject, not_after);
        req.generation = 0;
        req.login_ip = None;
        let certs = ca.issue_bot(&req).unwrap();
        let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
        let names: Vec<&str> = cert.extensions().keys().map(String::as_str).collect();
        assert!(
            !names.contains(&"generation") && !names.contains(&"login-ip"),
            "{names:?}"
        );
        assert!(cert.critical_options().is_empty());
    }

    #[test]
    fn ssh_ca_wires_are_user_then_host() {
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        let (_, subject) = p256_subject();
        let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();
        let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
        let wires = ca.ssh_ca_wires();
        assert_eq!(wires.len(), 2);
        assert_ne!(wires[0], wires[1]);
        let signer = ssh_key::PublicKey::from(cert.signature_key().clone());
        assert_eq!(signer.to_bytes().unwrap(), wires[0]);
        assert!(wires[0].starts_with(&ssh_wire(&[b"ssh-ed25519"])));
    }

    #[test]
    fn export_serves_the_public_authorities() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        assert_eq!(ca.export("tls").unwrap(), ca.host_ca_pem());
        assert_eq!(ca.export("tls-host").unwrap(), ca.host_ca_pem());
        assert_eq!(ca.export("tls-user").unwrap(), ca.user_ca_pem());
        assert_eq!(ca.export("windows"), None);

        let wires = ca.ssh_ca_wires();
        let user = ca.export("user").unwrap();
        assert_eq!(
            user,
            format!(
                "cert-authority ssh-ed25519 {} clustername={CLUSTER}&type=user\n",
                B64.encode(&wires[0])
            )
        );
        let host = ca.export("host").unwrap();
        assert_eq!(
            host,
            format!(
                "@cert-authority {CLUSTER},*.{CLUSTER} ssh-ed25519 {} type=host\n",
                B64.encode(&wires[1])
            )
        );
        assert_eq!(ca.export("").unwrap(), format!("{host}{user}"));
        // OpenSSH reads both lines (authorized_keys options, known_hosts marker).
        let path = write(dir.path(), "authorized_keys", &user);
        let out = run_ok("ssh-keygen", &["-l", "-f", s(&path)]);
        let user_fp = ssh_fingerprint(dir.path(), "user_ca.pub", &wires[0]);
        assert!(out.contains(&user_fp), "{out}");
        let path = write(dir.path(), "known_hosts", &host);
        let out = run_ok("ssh-keygen", &["-F", CLUSTER, "-f", s(&path)]);
        assert!(out.contains("@cert-authority"), "{out}");
        assert_eq!(go_query_escape("a b/c.d-e_f~"), "a+b%2Fc.d-e_f~");
    }

    #[test]
    fn ed25519_and_rsa_subject_keys_are_certified() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        let user_ca = write(dir.path(), "user.pem", ca.user_ca_pem());
        let cases = [
            (
                "ed25519",
                ed25519_subject(),
                "ssh-ed25519-cert-v01@openssh.com",
                "ED25519-CERT",
            ),
            (
                "rsa",
                rsa_subject(dir.path()),
                "ssh-rsa-cert-v01@openssh.com",
                "RSA-CERT",
            ),
        ];
        for (name, subject, cert_type, fp_kind) in cases {
            let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();
            let bot = write(
                dir.path(),
                &format!("{name}.pem"),
                pem("CERTIFICATE", &certs.tls_cert_der),
            );
            let out = run_ok("openssl", &["verify", "-CAfile", s(&user_ca), s(&bot)]);
            assert!(out.contains(": OK"), "{name}: {out}");
            let pubkey = run_ok("openssl", &["x509", "-in", s(&bot), "-noout", "-pubkey"]);
            assert_eq!(pubkey, pem("PUBLIC KEY", &subject.spki), "{name}");

            let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
            let path = write(
                dir.path(),
                &format!("{name}-cert.pub"),
                cert.to_openssh().unwrap(),
            );
            let out = run_ok("ssh-keygen", &["-L", "-f", s(&path)]);
            let fp = ssh_fingerprint(dir.path(), &format!("{name}.pub"), &subject.wire);
            assert!(
                out.contains(&format!("Type: {cert_type} user certificate")),
                "{out}"
            );
            assert!(
                out.contains(&format!("Public key: {fp_kind} {fp}")),
                "{out}"
            );
        }
    }

    #[test]
    fn mismatched_or_unusable_keys_are_refused() {
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        let (_, p256_a) = p256_subject();
        let (_, p256_b) = p256_subject();
        let ed = ed25519_subject();
        let refused = |spki: &[u8], wire: &[u8]| {
            let subject = Subject {
                spki: spki.to_vec(),
                wire: wire.to_vec(),
            };
            format!(
                "{:#}",
                ca.issue_bot(&request(&subject, in_one_hour())).unwrap_err()
            )
        };
        let err = refused(&p256_a.spki, &ed.wire);
        assert!(err.contains("not the same key"), "{err}");
        assert!(
            err.contains("ECDSA P-256") && err.contains("Ed25519"),
            "{err}"
        );
        let err = refused(&p256_a.spki, &p256_b.wire);
        assert!(err.contains("not the same key"), "{err}");
        let err = refused(&ed.spki, &p256_a.wire);
        assert!(err.contains("not the same key"), "{err}");
        let err = refused(b"not DER", &p256_a.wire);
        assert!(err.contains("SubjectPublicKeyInfo"), "{err}");
        let err = refused(&p256_a.spki, b"not SSH");
        assert!(err.contains("SSH public key"), "{err}");

        // An expiry in the past is refused too.
        let err = ca
            .issue_bot(&request(
                &p256_a,
                SystemTime::now() - Duration::from_secs(5),
            ))
            .unwrap_err();
        assert!(format!("{err:#}").contains("not in the future"), "{err:#}");
    }

    #[test]
    fn server_cert_verifies_against_the_host_ca_with_the_sans() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        let names = [
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let (chain, key) = ca.server_cert(&names).unwrap();
        assert_eq!(chain.len(), 1);
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        let host_ca = write(dir.path(), "host.pem", ca.host_ca_pem());
        let user_ca = write(dir.path(), "user.pem", ca.user_ca_pem());
        let server = write(dir.path(), "server.pem", pem("CERTIFICATE", &chain[0]));
        let out = run_ok(
            "openssl",
            &[
                "verify",
                "-CAfile",
                s(&host_ca),
                "-purpose",
                "sslserver",
                s(&server),
            ],
        );
        assert!(out.contains(": OK"), "{out}");
        let (ok, out) = run("openssl", &["verify", "-CAfile", s(&user_ca), s(&server)]);
        assert!(
            !ok,
            "the user CA must not verify the proxy certificate:\n{out}"
        );
        let sans = run_ok(
            "openssl",
            &[
                "x509",
                "-in",
                s(&server),
                "-noout",
                "-ext",
                "subjectAltName",
            ],
        );
        assert!(
            sans.contains(
                "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, \
                 DNS:teleport.cluster.local, DNS:*.teleport.cluster.local"
            ),
            "{sans}"
        );
        let (key_ok, out) = {
            let key_path = write(
                dir.path(),
                "server.key",
                pem("PRIVATE KEY", key.secret_der()),
            );
            let cert_pub = run_ok("openssl", &["x509", "-in", s(&server), "-noout", "-pubkey"]);
            let key_pub = run_ok("openssl", &["pkey", "-in", s(&key_path), "-pubout"]);
            (cert_pub == key_pub, format!("{cert_pub}\n{key_pub}"))
        };
        assert!(key_ok, "the key does not match the certificate:\n{out}");

        // Names already in the fixed set are not repeated.
        let (chain, _) = ca
            .server_cert(&["teleport.cluster.local".to_owned()])
            .unwrap();
        let server = write(dir.path(), "server2.pem", pem("CERTIFICATE", &chain[0]));
        let sans = run_ok(
            "openssl",
            &[
                "x509",
                "-in",
                s(&server),
                "-noout",
                "-ext",
                "subjectAltName",
            ],
        );
        assert_eq!(
            sans.matches("DNS:teleport.cluster.local").count(),
            1,
            "{sans}"
        );
    }

    /// Drives a TLS handshake between in-memory rustls endpoints.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..20 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            let mut input = to_server.as_slice();
            while !input.is_empty() {
                server.read_tls(&mut input).unwrap();
                server.process_new_packets()?;
            }
            let mut to_client = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            let mut input = to_client.as_slice();
            while !input.is_empty() {
                client.read_tls(&mut input).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn rustls_mutual_tls_with_the_proxy_and_bot_certificates() {
        let ca = ClusterCa::generate(CLUSTER).unwrap();
        let (secret, subject) = p256_subject();
        let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();
        let (chain, key) = ca.server_cert(&["localhost".to_owned()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let roots = |der: CertificateDer<'static>| {
            let mut store = rustls::RootCertStore::empty();
            store.add(der).unwrap();
            Arc::new(store)
        };
        let server_config = || {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots(ca.user_ca_der()),
                provider.clone(),
            )
            .build()
            .unwrap();
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .unwrap()
        };
        let client_config = |trusted: CertificateDer<'static>| {
            let bot_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                secret.to_pkcs8_der().unwrap().as_bytes().to_vec(),
            ));
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(trusted))
                .with_client_auth_cert(
                    vec![CertificateDer::from(certs.tls_cert_der.clone())],
                    bot_key,
                )
                .unwrap()
        };

        for name in [
            "localhost",
            "teleport.cluster.local",
            "auth.teleport.cluster.local",
        ] {
            handshake(client_config(ca.host_ca_der()), server_config(), name)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        // Trusting the user CA for the server, or asking for a name not in the SANs, fails.
        assert!(
            handshake(
                client_config(ca.user_ca_der()),
                server_config(),
                "localhost"
            )
            .is_err()
        );
        assert!(
            handshake(
                client_config(ca.host_ca_der()),
                server_config(),
                "example.com"
            )
            .is_err()
        );
    }
}
