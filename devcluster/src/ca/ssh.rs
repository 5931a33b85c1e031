//! SSH certificates: a user's (the SSH half of [`ClusterCa::issue_user`]), signed by the user
//! CA's SSH key, and a host's, signed by the host CA's.

use std::time::SystemTime;

use anyhow::Context as _;
use rand_core::{OsRng, RngCore as _};
use ssh_key::certificate::{Builder as SshCertBuilder, CertType};

use super::authority::ClusterCa;
use super::keys::SshSubject;
use super::request::{EMPTY_TRAITS_JSON, UserCertRequest};
use super::template::{BACKDATE, SERVER_CERT_TTL, unix_seconds};

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

impl ClusterCa {
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

    /// The SSH half of [`Self::issue_user`]: `Identity.Encode` (`lib/sshca/identity.go`).
    pub(super) fn issue_user_ssh(
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
}
