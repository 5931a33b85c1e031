//! Writing a bot identity where tbot writes it: the internal `storage` and `type: identity`
//! outputs, with tbot's file names and modes (files 0600, directories 0700; `lib/tbot/botfs`,
//! `lib/tbot/identity/identity.go`, `lib/tbot/config/output_identity.go`).
//!
//! Every file is written atomically (temporary file, fsync, rename). All files of a destination
//! are prepared before any is renamed into place, so a failure while preparing leaves the
//! previous identity untouched.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::config::Symlinks;
use crate::fsutil::{self, Replace};
use crate::identity::Identity;

/// File names (`lib/tbot/identity/identity.go`, `lib/tbot/config/output_identity.go`).
pub mod names {
    /// Subject private key.
    pub const KEY: &str = "key";
    /// Subject public key, `authorized_keys`.
    pub const PUBLIC_KEY: &str = "key.pub";
    /// SSH certificate.
    pub const SSH_CERT: &str = "key-cert.pub";
    /// TLS certificate.
    pub const TLS_CERT: &str = "tlscert";
    /// Storage only: every TLS CA, `$`-joined.
    pub const TLS_CA_CERTS: &str = "tlscacerts";
    /// Storage only: every SSH CA key, `$`-joined.
    pub const SSH_CA_CERTS: &str = "sshcacerts";
    /// Storage only: hex SHA-256 of the onboarding token.
    pub const TOKEN_HASH: &str = "tokenhash";
    /// Identity output: host CA TLS certificates.
    pub const HOST_CA: &str = "teleport-host-ca.crt";
    /// Identity output: user CA TLS certificates.
    pub const USER_CA: &str = "teleport-user-ca.crt";
    /// Identity output: database CA TLS certificates.
    pub const DATABASE_CA: &str = "teleport-database-ca.crt";
    /// Identity output: `@cert-authority` lines.
    pub const KNOWN_HOSTS: &str = "known_hosts";
    /// Identity output: the tsh-style identity file.
    pub const IDENTITY: &str = "identity";
    /// Identity output: OpenSSH client configuration.
    pub const SSH_CONFIG: &str = "ssh_config";
}

/// What an identity output needs besides the identity.
pub struct OutputContext<'a> {
    /// The proxy's host and port (known_hosts, ssh_config); `None` when keybound reaches Auth
    /// directly and Auth names no proxy, which leaves the proxy out of known_hosts and skips
    /// ssh_config.
    pub proxy: Option<(&'a str, u16)>,
    /// The cluster's CAs.
    pub cas: &'a ClusterCas,
}

/// The cluster's certificate authorities as the outputs write them, read with the trust
/// service (`GetCertAuthorities` for `host`, `user` and `db`): local and trusted clusters',
/// active keys and those trusted during a rotation.
#[derive(Clone, Debug, Default)]
pub struct ClusterCas {
    /// Every host CA TLS certificate, PEM, concatenated.
    pub host_tls_pem: String,
    /// Every user CA TLS certificate, PEM, concatenated.
    pub user_tls_pem: String,
    /// Every database CA TLS certificate, PEM, concatenated.
    pub db_tls_pem: String,
    /// Every host CA SSH key: (cluster name, `authorized_keys` key without comment).
    pub host_ssh_keys: Vec<(String, String)>,
}

impl ClusterCas {
    /// Collects the CA files' contents from the trust service's answers.
    pub fn from_authorities(
        host: &[keybound_proto::types::CertAuthorityV2],
        user: &[keybound_proto::types::CertAuthorityV2],
        db: &[keybound_proto::types::CertAuthorityV2],
    ) -> anyhow::Result<Self> {
        fn key_sets(
            ca: &keybound_proto::types::CertAuthorityV2,
        ) -> impl Iterator<Item = &keybound_proto::types::CaKeySet> {
            ca.spec
                .iter()
                .flat_map(|s| s.active_keys.iter().chain(&s.additional_trusted_keys))
        }
        let tls = |cas: &[keybound_proto::types::CertAuthorityV2]| -> anyhow::Result<String> {
            let mut out = String::new();
            for ca in cas {
                for pair in key_sets(ca).flat_map(|k| &k.tls) {
                    let pem = std::str::from_utf8(&pair.cert)
                        .context("a CA certificate is not PEM text")?;
                    out.push_str(pem.trim_end());
                    out.push('\n');
                }
            }
            Ok(out)
        };
        let mut host_ssh_keys = Vec::new();
        for ca in host {
            let cluster = ca
                .spec
                .as_ref()
                .map(|s| s.cluster_name.clone())
                .unwrap_or_default();
            for pair in key_sets(ca).flat_map(|k| &k.ssh) {
                let line = std::str::from_utf8(&pair.public_key)
                    .context("a host CA SSH key is not text")?;
                let key = ssh_key::PublicKey::from_openssh(line.trim())
                    .context("a host CA SSH key is not an SSH public key")?;
                let bare = ssh_key::PublicKey::from(key.key_data().clone()).to_openssh()?;
                host_ssh_keys.push((cluster.clone(), bare.trim().to_owned()));
            }
        }
        if host_ssh_keys.is_empty() {
            bail!("the cluster returned no host CA SSH key");
        }
        Ok(Self {
            host_tls_pem: tls(host)?,
            user_tls_pem: tls(user)?,
            db_tls_pem: tls(db)?,
            host_ssh_keys,
        })
    }
}

/// Opens the destination directory `dir` under its symlink policy, creating it (and its
/// parents) mode 0700 if needed; files are then written relative to it ([`fsutil::Dir`]).
pub fn prepare_dir(dir: &Path, symlinks: Symlinks) -> anyhow::Result<fsutil::Dir> {
    fsutil::Dir::open(dir, symlinks, true)
}

/// A destination's files: (name, contents). The contents are zeroized when dropped, as they
/// hold the subject private key.
pub type Files = Vec<(&'static str, Zeroizing<String>)>;

/// The files of the bot's internal storage.
pub fn storage_files(identity: &Identity, token: &str) -> Files {
    let all_tls: Vec<&str> = identity
        .user_ca_pems
        .iter()
        .chain(&identity.host_ca_pems)
        .map(String::as_str)
        .collect();
    let all_ssh: Vec<&str> = identity
        .ssh_user_ca_keys
        .iter()
        .chain(&identity.ssh_host_ca_keys)
        .map(String::as_str)
        .collect();
    vec![
        (names::KEY, identity.private_key_pem.clone()),
        (
            names::PUBLIC_KEY,
            format!("{}\n", identity.ssh_public_key).into(),
        ),
        (names::SSH_CERT, format!("{}\n", identity.ssh_cert).into()),
        (names::TLS_CERT, identity.tls_cert_pem.clone().into()),
        (names::TLS_CA_CERTS, all_tls.join("$").into()),
        (
            names::SSH_CA_CERTS,
            all_ssh
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<Vec<_>>()
                .join("$")
                .into(),
        ),
        (names::TOKEN_HASH, token_hash(token).into()),
    ]
}

/// What storage keeps of the onboarding token: hex SHA-256, to notice a changed token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The files of a `type: identity` output holding `identity` (role-impersonated by then), in
/// the order tbot writes them: the CA files, `identity`, the identity's own files, then
/// `known_hosts` and `ssh_config` (`lib/tbot/services/identity/output.go`).
pub fn identity_files(
    identity: &Identity,
    ctx: &OutputContext<'_>,
    dir: &Path,
    ssh_config: bool,
) -> Files {
    let cluster = &identity.info.cluster_name;
    let mut files = vec![
        (names::HOST_CA, ctx.cas.host_tls_pem.clone().into()),
        (names::USER_CA, ctx.cas.user_tls_pem.clone().into()),
        (names::DATABASE_CA, ctx.cas.db_tls_pem.clone().into()),
        (names::IDENTITY, identity_file(identity, ctx.cas)),
        (names::KEY, identity.private_key_pem.clone()),
        (
            names::PUBLIC_KEY,
            format!("{}\n", identity.ssh_public_key).into(),
        ),
        (names::SSH_CERT, format!("{}\n", identity.ssh_cert).into()),
        (names::TLS_CERT, identity.tls_cert_pem.clone().into()),
    ];
    if ssh_config {
        files.push((names::KNOWN_HOSTS, known_hosts(ctx).into()));
        if let Some(proxy) = ctx.proxy {
            files.push((
                names::SSH_CONFIG,
                ssh_config_file(cluster, proxy, dir).into(),
            ));
        }
    }
    files
}

/// `@cert-authority <proxy>,<cluster>,*.<cluster> <key> type=host`, one line per host CA key
/// (`lib/tbot/ssh/ssh.go` `GenerateKnownHosts`).
fn known_hosts(ctx: &OutputContext<'_>) -> String {
    ctx.cas
        .host_ssh_keys
        .iter()
        .map(|(cluster, key)| match ctx.proxy {
            Some((proxy, _)) => {
                format!("@cert-authority {proxy},{cluster},*.{cluster} {key} type=host\n")
            }
            None => format!("@cert-authority {cluster},*.{cluster} {key} type=host\n"),
        })
        .collect()
}

/// The tsh identity file (`api/identityfile`, `lib/client/identityfile` `FormatFile`): private
/// key, SSH certificate, TLS certificate, the host CAs' `@cert-authority` lines (no proxy host:
/// tbot's key ring has none), the host CAs' TLS certificates; each part ends with a newline.
///
/// It holds the private key, so it is built in a zeroizing buffer of its final size: a growing
/// `String` would leave copies of the key behind in the allocations it outgrew.
fn identity_file(identity: &Identity, cas: &ClusterCas) -> Zeroizing<String> {
    let lines: Vec<String> = cas
        .host_ssh_keys
        .iter()
        .map(|(cluster, key)| format!("@cert-authority {cluster},*.{cluster} {key} type=host"))
        .collect();
    let mut parts: Vec<&str> = vec![
        &identity.private_key_pem,
        &identity.ssh_cert,
        &identity.tls_cert_pem,
    ];
    parts.extend(lines.iter().map(String::as_str));
    if !cas.host_tls_pem.is_empty() {
        parts.push(&cas.host_tls_pem);
    }
    let size = parts.iter().map(|p| p.len() + 1).sum();
    let mut out = Zeroizing::new(String::with_capacity(size));
    for part in parts {
        out.push_str(part);
        if !part.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// tbot's OpenSSH client configuration (`lib/config/openssh/openssh.go`), whose ProxyCommand is
/// tbot's `ssh-proxy-command`: it reads this very directory, which keybound writes in tbot's
/// layout.
fn ssh_config_file(cluster: &str, (proxy, port): (&str, u16), dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "# Begin generated Teleport configuration for {proxy} by keybound

# Common flags for all {cluster} hosts
Host *.{cluster} {proxy}
    UserKnownHostsFile \"{dir}/{kh}\"
    IdentityFile \"{dir}/{key}\"
    CertificateFile \"{dir}/{cert}\"

# Flags for all {cluster} hosts except the proxy
Host *.{cluster} !{proxy}
    Port 3022
    ProxyCommand 'tbot' ssh-proxy-command --destination-dir='{dir}' --proxy-server='{proxy}:{port}' --cluster='{cluster}' --tls-routing --connection-upgrade --resume --user=%r --host=%h --port=%p

# End generated Teleport configuration
",
        kh = names::KNOWN_HOSTS,
        key = names::KEY,
        cert = names::SSH_CERT,
    )
}

/// Writes `files` into `dir`: every one staged (written and fsynced under a temporary name)
/// before any is renamed into place.
///
/// The files are staged on threads of their own, all at once: each fsync waits for a journal
/// commit, and filesystems that group commits (ext4, xfs) then make one commit serve them all,
/// where one after another cost a commit each (a dozen for an identity output; see
/// docs/PERFORMANCE.md).
pub fn write_all(dir: &fsutil::Dir, files: &Files) -> anyhow::Result<Vec<PathBuf>> {
    let staged = std::thread::scope(|scope| {
        let staging: Vec<_> = files
            .iter()
            .map(|(name, content)| {
                scope.spawn(move || dir.stage(name.as_ref(), content.as_bytes(), 0o600))
            })
            .collect();
        staging
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "writing a file in {} failed",
                        dir.path().display()
                    ))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let written = staged
        .into_iter()
        .map(|file| file.commit(Replace::Allow))
        .collect::<anyhow::Result<Vec<_>>>()?;
    dir.sync()?;
    Ok(written)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
