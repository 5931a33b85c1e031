//! SSH host certificates as `TrustService.GenerateHostCert` issues them: signed by the host CA's
//! SSH key, for the principals asked, with Teleport's role and authority extensions.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rand_core::{OsRng, RngCore as _};
use ssh_key::certificate::{Builder as SshCertBuilder, CertType};

use super::authority::ClusterCa;
use super::template::{BACKDATE, unix_seconds};

/// `utils.CertExtensionRole`: the system role the host holds (`Node`).
pub const EXT_ROLE: &str = "x-teleport-role";
/// `utils.CertExtensionAuthority`: the cluster whose host CA signed.
pub const EXT_AUTHORITY: &str = "x-teleport-authority";

/// What a host certificate is for (`GenerateHostCertRequest`).
pub struct HostCertRequest<'a> {
    /// The host's public key.
    pub key: &'a ssh_key::PublicKey,
    /// The names it is valid for.
    pub principals: &'a [String],
    /// The system role (`x-teleport-role`).
    pub role: &'a str,
    /// The cluster named in `x-teleport-authority`.
    pub cluster_name: &'a str,
    /// When it is issued.
    pub now: SystemTime,
    /// How long it is valid; zero for no end (as Auth's keygen does; here 2^63 − 1 seconds).
    pub ttl: Duration,
}

impl ClusterCa {
    /// A host certificate for `req` (`keygen.GenerateHostCert`, `lib/auth/keygen`): valid from a
    /// minute before `now` to `now + ttl`, key id empty, the principals as asked, and the role
    /// and authority extensions (`x-teleport-role`, `x-teleport-authority`, which Teleport's
    /// own hosts read back: `lib/auth/state.go` `ReadSSHIdentityFromKeyPair`). Returns the
    /// certificate as an OpenSSH line.
    pub fn issue_host_cert(&self, req: &HostCertRequest<'_>) -> anyhow::Result<String> {
        let mut nonce = vec![0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let now = unix_seconds(req.now)?;
        // Auth's keygen writes `ssh.CertTimeInfinity` (2^64 − 1) for no end; ssh-key holds
        // times up to 2^63 − 1 only, which is as good as never.
        let valid_before = if req.ttl.is_zero() {
            i64::MAX as u64
        } else {
            now.saturating_add(req.ttl.as_secs())
        };
        let mut builder = SshCertBuilder::new(
            nonce,
            req.key.key_data().clone(),
            now.saturating_sub(BACKDATE.as_secs()),
            valid_before,
        )?;
        builder.cert_type(CertType::Host)?.key_id("")?;
        for principal in req.principals {
            builder.valid_principal(principal.as_str())?;
        }
        builder
            .extension(EXT_AUTHORITY, req.cluster_name)?
            .extension(EXT_ROLE, req.role)?;
        let cert = builder
            .sign(&self.host.ssh)
            .context("signing the host's SSH certificate")?;
        Ok(cert.to_openssh()?)
    }
}
