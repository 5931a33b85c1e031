//! `type: ssh_host`: an SSH host key and its host certificate for an OpenSSH server, and the
//! user CA keys that server trusts, as tbot writes them (`lib/tbot/services/ssh/host_output.go`,
//! `host_output_config.go`).
//!
//! The certificate comes from `TrustService.GenerateHostCert`, asked on a connection that
//! presents the output's role-impersonated certificate, so the roles' `host_cert` rule decides
//! which principals it may hold; the user CAs come from the bot's own connection.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use keybound_proto::teleport::trust::v1 as trust;
use keybound_proto::types::CertAuthorityV2;
use rand_core::OsRng;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::cluster::{Needs, Shared};
use super::impersonate::{Impersonation, impersonate, role_list, roles_for};
use super::kind::{Described, Issue, Output};
use super::lifetime::Lifetime;
use crate::auth::{self, AuthClient};
use crate::fsutil::Files;
use crate::subject_key::SubjectKey;
use crate::untrusted::ClusterName;
use crate::values::{Destination, GoDuration, RawDestination};
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// The host's private key (`identityfile.FormatOpenSSH` with tbot's path `ssh_host`).
pub const HOST_KEY: &str = "ssh_host";
/// The host certificate.
pub const HOST_CERT: &str = "ssh_host-cert.pub";
/// The user CA keys, for sshd's `TrustedUserCAKeys`.
pub const USER_CA: &str = "ssh_host-user-ca.pub";

/// The system role of the certificate (`types.RoleNode`).
const NODE: &str = "Node";

/// Which CA's keys `ssh_host-user-ca.pub` holds (`ca_type`).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum CaType {
    /// `user`: Teleport's user CA (the default).
    #[default]
    User,
    /// `openssh`: the CA Teleport signs certificates for agentless OpenSSH nodes with.
    OpenSsh,
}

impl CaType {
    /// The CA type as `GetCertAuthorities` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::OpenSsh => "openssh",
        }
    }
}

/// A `type: ssh_host` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SshHostOutput {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// An optional name for logs.
    pub name: Option<String>,
    /// The names the host certificate is valid for (never empty).
    pub principals: Vec<String>,
    /// Whose keys `ssh_host-user-ca.pub` holds.
    pub ca_type: CaType,
    /// The roles to impersonate; empty means every role the bot may impersonate.
    pub roles: Vec<String>,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSshHostOutput {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    #[serde(default)]
    principals: Vec<String>,
    ca_type: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

impl Output for SshHostOutput {
    type Raw = RawSshHostOutput;
    type Issued = Issued;

    fn from_raw(raw: RawSshHostOutput, at: &str) -> Result<Self, String> {
        let destination = raw
            .destination
            .ok_or_else(|| format!("{at}.destination: missing"))?
            .check(&format!("{at}.destination"))?;
        if raw.principals.is_empty() {
            return Err(format!(
                "{at}.principals: at least one principal must be specified (the host names \
                 clients dial, e.g. [node1.example.com])"
            ));
        }
        if let Some(i) = raw.principals.iter().position(|p| p.trim().is_empty()) {
            return Err(format!("{at}.principals[{i}]: empty; name the host"));
        }
        if let Some(i) = raw.roles.iter().position(|r| r.trim().is_empty()) {
            return Err(format!(
                "{at}.roles[{i}]: empty; name a role, or remove `roles` to impersonate every \
                 role the bot may"
            ));
        }
        let ca_type = match raw.ca_type.as_deref() {
            None | Some("") | Some("user") => CaType::User,
            Some("openssh") => CaType::OpenSsh,
            Some(other) => {
                return Err(format!(
                    "{at}.ca_type: ca_type ({}) is unsupported; use user or openssh",
                    crate::untrusted::quoted(other)
                ));
            }
        };
        Ok(Self {
            lifetime: Lifetime::of(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            name: raw.name,
            principals: raw.principals,
            ca_type,
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

    async fn issue(&self, cx: &Issue<'_>) -> Result<Issued, Failure> {
        let roles = roles_for(cx, &self.roles).await?;
        let identity = impersonate(
            cx,
            &Impersonation {
                roles,
                allow_reissue: false,
            },
        )
        .await?;
        // tbot asks on a client of the impersonated identity (`clientBuilder.Build`), so that
        // the output's roles, not the bot's, decide.
        let as_roles = AuthClient::connect(cx.auth.route(), &identity)
            .await?
            .with_deadline(cx.auth.deadline());
        let suite = cx.suite;
        let key = tokio::task::spawn_blocking(move || HostKey::generate(suite))
            .await
            .map_err(|e| Failure::new(ExitKind::Software, anyhow!("key generation failed: {e}")))?
            .map_err(|e| Failure::new(ExitKind::Software, e.context("key generation failed")))?;
        let cluster = identity.info.cluster_name.clone();
        let request = trust::GenerateHostCertRequest {
            // MarshalSSHPublicKey: the authorized_keys line with its newline.
            key: format!("{}\n", key.authorized).into_bytes(),
            host_id: String::new(),
            node_name: String::new(),
            principals: self.principals.clone(),
            cluster_name: cluster.as_str().to_owned(),
            role: NODE.to_owned(),
            ttl: Some(proto_duration(cx.credential_ttl)),
        };
        let answer = as_roles
            .generate_host_cert(request)
            .await
            .map_err(|s| self.refused(roles, &s))?;
        let cert = HostCert::check(&answer.ssh_certificate, &key.authorized)
            .map_err(|e| Failure::new(ExitKind::Rejected, e))?;
        let cas = cx
            .auth
            .cert_authorities(self.ca_type.as_str())
            .await
            .map_err(|s| {
                auth::status_failure(
                    &format!(
                        "reading the {} CAs for the ssh_host output",
                        self.ca_type.as_str()
                    ),
                    &s,
                    "",
                )
            })?;
        let user_ca = user_ca_lines(&cas, &cluster).map_err(|e| {
            Failure::new(
                ExitKind::Rejected,
                e.context("the cluster's CA keys for the ssh_host output are unusable"),
            )
        })?;
        Ok(Issued {
            key: key.private_pem,
            cert,
            user_ca,
            roles: roles
                .iter()
                .map(|r| crate::untrusted::name(r).to_string())
                .collect(),
        })
    }

    fn render(
        &self,
        issued: &Issued,
        _: &Issue<'_>,
        _: &Shared,
        _: &Path,
    ) -> anyhow::Result<Files> {
        Ok(vec![
            (HOST_KEY, issued.key.clone()),
            (HOST_CERT, format!("{}\n", issued.cert.line).into()),
            (USER_CA, issued.user_ca.clone().into()),
        ])
    }

    fn describe(&self, issued: &Issued) -> Described {
        Described {
            roles: issued.roles.clone(),
            expires: issued.cert.not_after,
        }
    }
}

impl SshHostOutput {
    /// `GenerateHostCert` refused or failed, with what to do when the roles lack the rule.
    fn refused(&self, roles: &[String], s: &tonic::Status) -> Failure {
        let hint = if s.code() == tonic::Code::PermissionDenied {
            format!(
                "; the roles [{}] must allow creating host certificates for these principals: \
                 a rule with resources [host_cert] and verbs [create] (its `where` sees \
                 host_cert.principals)",
                role_list(roles, ", ")
            )
        } else {
            String::new()
        };
        auth::status_failure(
            &format!(
                "the cluster refused a host certificate for principals [{}]",
                role_list(&self.principals, ", ")
            ),
            s,
            &hint,
        )
    }
}

/// What an `ssh_host` output is issued.
pub struct Issued {
    /// The host's private key, in the file's format.
    key: Zeroizing<String>,
    /// The host certificate.
    cert: HostCert,
    /// `ssh_host-user-ca.pub`'s lines.
    user_ca: String,
    /// The roles, sanitized.
    roles: Vec<String>,
}

/// A host key of the type the suite calls for (purpose `HostSSH`, `lib/cryptosuites/suites.go`
/// at 02cdf32d: RSA-2048 on `legacy`, Ed25519 on `balanced-v1` and `hsm-v1`, ECDSA P-256 on
/// `fips-v1`), in the format tbot writes it (`keys.MarshalSSHPrivateKey`): an OpenSSH private
/// key (empty comment) for Ed25519 and ECDSA, a PKCS#1 `RSA PRIVATE KEY` for RSA.
struct HostKey {
    private_pem: Zeroizing<String>,
    /// The public key, an `authorized_keys` line without a comment or newline.
    authorized: String,
}

impl HostKey {
    fn generate(suite: Suite) -> anyhow::Result<Self> {
        let key = match suite {
            Suite::Unspecified | Suite::Legacy => {
                let rsa = SubjectKey::generate(Suite::Legacy)?;
                return Ok(Self {
                    private_pem: rsa.private_pem,
                    authorized: rsa.ssh_authorized,
                });
            }
            Suite::FipsV1 => ssh_key::PrivateKey::from(ssh_key::private::EcdsaKeypair::random(
                &mut OsRng,
                ssh_key::EcdsaCurve::NistP256,
            )?),
            Suite::BalancedV1 | Suite::HsmV1 => {
                ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::random(&mut OsRng))
            }
        };
        Ok(Self {
            private_pem: key.to_openssh(ssh_key::LineEnding::LF)?,
            authorized: key.public_key().to_openssh()?,
        })
    }
}

/// The host certificate the cluster returned, checked: an SSH host certificate for the key
/// keybound sent. It is written re-encoded, so that nothing but the certificate (no comment)
/// reaches the file.
struct HostCert {
    line: String,
    not_after: SystemTime,
}

impl HostCert {
    fn check(answer: &[u8], authorized: &str) -> anyhow::Result<Self> {
        let text = std::str::from_utf8(answer)
            .map_err(|_| anyhow!("the cluster's host certificate is not text"))?;
        let cert = ssh_key::Certificate::from_openssh(text.trim()).map_err(|e| {
            anyhow!("the cluster's host certificate is not an SSH certificate: {e}")
        })?;
        if cert.cert_type() != ssh_key::certificate::CertType::Host {
            return Err(anyhow!(
                "the cluster returned a user certificate, not a host certificate"
            ));
        }
        let ours = ssh_key::PublicKey::from_openssh(authorized)?;
        if cert.public_key() != ours.key_data() {
            return Err(anyhow!(
                "the cluster's host certificate is for another key than the one keybound sent"
            ));
        }
        let line = cert.to_openssh()?.trim().to_owned();
        Ok(Self {
            line,
            not_after: unix_time(cert.valid_before()),
        })
    }
}

/// `ssh_host-user-ca.pub` (`exportSSHUserCAs` in `host_output.go`): for each CA of the local
/// cluster (trusted clusters' are skipped), each SSH key it trusts (active and additional) as
/// `<key> clustername=<cluster>&type=user`, the line `sshutils.MarshalAuthorizedKeysFormat`
/// makes without its `cert-authority ` prefix. The cluster name is a checked DNS-style name,
/// which Go's `url.QueryEscape` leaves as it is; each key is parsed and written anew, without a
/// comment.
fn user_ca_lines(cas: &[CertAuthorityV2], cluster: &ClusterName) -> anyhow::Result<String> {
    let mut out = String::new();
    for spec in cas.iter().filter_map(|ca| ca.spec.as_ref()) {
        if spec.cluster_name != cluster.as_str() {
            continue;
        }
        let sets = spec.active_keys.iter().chain(&spec.additional_trusted_keys);
        for pair in sets.flat_map(|k| &k.ssh) {
            let line = std::str::from_utf8(&pair.public_key)
                .map_err(|_| anyhow!("a CA SSH key is not text"))?;
            let key = ssh_key::PublicKey::from_openssh(line.trim())
                .map_err(|e| anyhow!("a CA SSH key is not an SSH public key: {e}"))?;
            let bare = ssh_key::PublicKey::from(key.key_data().clone()).to_openssh()?;
            out.push_str(&format!("{bare} clustername={cluster}&type=user\n"));
        }
    }
    Ok(out)
}

/// The last second of year 9999, where keybound's times end.
const LATEST: u64 = 253_402_300_799;

/// A certificate's time, in Unix seconds, as a `SystemTime`: a time past year 9999 (a
/// certificate meant to have no end) counts as the end of year 9999, which every time keybound
/// prints or compares can hold.
pub(super) fn unix_time(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.min(LATEST))
}

/// A lifetime as `google.protobuf.Duration` (`durationpb.New`), saturating.
fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_certificate_without_an_end_is_read_without_overflow() {
        use ssh_key::certificate::{Builder, CertType};
        let key = HostKey::generate(Suite::BalancedV1).unwrap();
        let public = ssh_key::PublicKey::from_openssh(&key.authorized).unwrap();
        let ca = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::random(&mut OsRng));
        let mut builder =
            Builder::new(vec![0; 32], public.key_data().clone(), 0, i64::MAX as u64).unwrap();
        builder.cert_type(CertType::Host).unwrap();
        builder.key_id("").unwrap();
        builder.valid_principal("node1.example.com").unwrap();
        let cert = builder.sign(&ca).unwrap().to_openssh().unwrap();
        let checked = HostCert::check(cert.as_bytes(), &key.authorized).unwrap();
        assert_eq!(
            keybound_teleport::time::format_time(checked.not_after),
            "9999-12-31T23:59:59Z"
        );
        // A certificate for another key is refused.
        let other = HostKey::generate(Suite::BalancedV1).unwrap();
        let err = HostCert::check(cert.as_bytes(), &other.authorized)
            .err()
            .unwrap();
        assert!(err.to_string().contains("another key"), "{err}");
    }

    #[test]
    fn host_keys_follow_the_suite() {
        for (suite, public, private) in [
            (Suite::Legacy, "ssh-rsa ", "-----BEGIN RSA PRIVATE KEY-----"),
            (
                Suite::BalancedV1,
                "ssh-ed25519 ",
                "-----BEGIN OPENSSH PRIVATE KEY-----",
            ),
            (
                Suite::HsmV1,
                "ssh-ed25519 ",
                "-----BEGIN OPENSSH PRIVATE KEY-----",
            ),
            (
                Suite::FipsV1,
                "ecdsa-sha2-nistp256 ",
                "-----BEGIN OPENSSH PRIVATE KEY-----",
            ),
        ] {
            let key = HostKey::generate(suite).unwrap();
            assert!(
                key.authorized.starts_with(public),
                "{suite}: {}",
                key.authorized
            );
            assert!(key.private_pem.starts_with(private), "{suite}");
            assert!(!key.authorized.ends_with('\n'));
        }
    }

    #[test]
    fn bad_config_is_one_line_naming_the_key() {
        let parse = |yaml: &str| {
            let raw: RawSshHostOutput = serde_yaml::from_str(yaml).unwrap();
            SshHostOutput::from_raw(raw, "services[0]")
        };
        let dest = "destination: {type: directory, path: /tmp/x}\n";
        for (yaml, starts) in [
            (
                dest.to_owned(),
                "services[0].principals: at least one principal",
            ),
            (
                format!("{dest}principals: [a, '']\n"),
                "services[0].principals[1]: empty",
            ),
            (
                format!("{dest}principals: [a]\nca_type: host\n"),
                "services[0].ca_type: ca_type (\"host\") is unsupported",
            ),
            (
                "principals: [a]\n".to_owned(),
                "services[0].destination: missing",
            ),
        ] {
            let err = parse(&yaml).unwrap_err();
            assert!(err.starts_with(starts), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let ok = parse(&format!("{dest}principals: [a]\nca_type: openssh\n")).unwrap();
        assert_eq!(ok.ca_type, CaType::OpenSsh);
        assert_eq!(
            parse(&format!("{dest}principals: [a]\n")).unwrap().ca_type,
            CaType::User
        );
    }
}
