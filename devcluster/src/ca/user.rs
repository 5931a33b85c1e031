//! A user's certificates, X.509 and SSH, as Auth issues them to a bot after its join
//! (`generateUserCert` in `lib/auth/auth.go`) or to its outputs (role impersonation).

use std::time::SystemTime;

use anyhow::{Context as _, ensure};

use super::authority::ClusterCa;
use super::keys::{SshSubject, TlsSubject};
use super::request::{
    BotCertRequest, BotCerts, BotFields, EMPTY_TRAITS_JSON, UserCertRequest, bot_resource_name,
};
use super::template::{BACKDATE, unix_seconds, unix_seconds_ceil};
use super::x509;
use keybound_teleport::subject::oid;

/// The SSH principal Teleport always appends to a user certificate
/// (`teleport.SSHSessionJoinPrincipal`); it is also the X.509 `L` (principals) attribute.
pub const JOIN_PRINCIPAL: &str = "-teleport-internal-join";

/// The value `join_method` takes in the join attributes of a bound keypair join.
pub const JOIN_METHOD_BOUND_KEYPAIR: &str = "bound_keypair";

impl ClusterCa {
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
            extra: &[],
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
        for (attribute, value) in req.extra {
            dn.push_one(*attribute, value)?;
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
