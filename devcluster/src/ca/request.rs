//! What the dev Auth asks its CAs for (a user's or a bot's certificates) and what it gets.

use std::fmt;
use std::time::SystemTime;

/// The traits of a dev-cluster bot: none.
pub(super) const EMPTY_TRAITS_JSON: &str = "{}";

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
    /// More subject attributes, each its own RDN, after the others: the routes of an access
    /// output's certificate (an app, a database, a Kubernetes cluster).
    pub extra: &'a [(x509_cert::der::asn1::ObjectIdentifier, String)],
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

/// `machineidv1.BotResourceName`: the username and role name of a bot.
pub fn bot_resource_name(bot_name: &str) -> String {
    format!("bot-{}", bot_name.replace(' ', "-"))
}
