//! Writing a bot identity where tbot writes it: the internal `storage` and `type: identity`
//! outputs, with tbot's file names and modes (files 0600, directories 0700; `lib/tbot/botfs`,
//! `lib/tbot/identity/identity.go`, `lib/tbot/config/output_identity.go`).
//!
//! Every file is written atomically (temporary file, fsync, rename). All files of a destination
//! are prepared before any is renamed into place, so a failure while preparing leaves the
//! previous identity untouched.

use std::fs;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

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
    /// The proxy's host name (known_hosts, ssh_config).
    pub proxy_host: &'a str,
    /// The proxy's port (ssh_config).
    pub proxy_port: u16,
    /// The database CA's TLS certificates, PEM.
    pub database_ca_pem: &'a str,
}

/// Creates `dir` (and its parents) if needed, mode 0700, and checks the symlink policy.
pub fn prepare_dir(dir: &Path, symlinks: Symlinks) -> anyhow::Result<()> {
    if symlinks != Symlinks::Insecure {
        if let Ok(meta) = fs::symlink_metadata(dir) {
            if meta.file_type().is_symlink() {
                bail!(
                    "destination {} is a symbolic link, which the symlinks policy refuses; point \
                     the path at the real directory or set symlinks: insecure",
                    dir.display()
                );
            }
        }
    }
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create destination directory {}", dir.display()))?;
    } else if !dir.is_dir() {
        bail!("destination {} is not a directory", dir.display());
    }
    Ok(())
}

/// The files of the bot's internal storage.
pub fn storage_files(identity: &Identity, token: &str) -> Vec<(&'static str, String)> {
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
        (names::KEY, identity.private_key_pem.to_string()),
        (names::PUBLIC_KEY, format!("{}\n", identity.ssh_public_key)),
        (names::SSH_CERT, format!("{}\n", identity.ssh_cert)),
        (names::TLS_CERT, identity.tls_cert_pem.clone()),
        (names::TLS_CA_CERTS, all_tls.join("$")),
        (
            names::SSH_CA_CERTS,
            all_ssh
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<Vec<_>>()
                .join("$"),
        ),
        (names::TOKEN_HASH, hex(&Sha256::digest(token.as_bytes()))),
    ]
}

/// The files of a `type: identity` output.
pub fn identity_files(
    identity: &Identity,
    ctx: &OutputContext<'_>,
    dir: &Path,
    ssh_config: bool,
) -> Vec<(&'static str, String)> {
    let cluster = &identity.info.cluster_name;
    let mut files = vec![
        (names::KEY, identity.private_key_pem.to_string()),
        (names::PUBLIC_KEY, format!("{}\n", identity.ssh_public_key)),
        (names::SSH_CERT, format!("{}\n", identity.ssh_cert)),
        (names::TLS_CERT, identity.tls_cert_pem.clone()),
        (names::HOST_CA, identity.host_ca_pems.concat()),
        (names::USER_CA, identity.user_ca_pems.concat()),
        (names::DATABASE_CA, ctx.database_ca_pem.to_owned()),
        (names::IDENTITY, identity_file(identity, ctx.proxy_host)),
    ];
    if ssh_config {
        files.push((names::KNOWN_HOSTS, known_hosts(identity, ctx.proxy_host)));
        files.push((names::SSH_CONFIG, ssh_config_file(cluster, ctx, dir)));
    }
    files
}

/// `@cert-authority <proxy>,<cluster>,*.<cluster> <key> type=host`, one line per host CA key
/// (`lib/tbot/ssh/ssh.go`).
fn known_hosts(identity: &Identity, proxy_host: &str) -> String {
    let cluster = &identity.info.cluster_name;
    identity
        .ssh_host_ca_keys
        .iter()
        .map(|key| format!("@cert-authority {proxy_host},{cluster},*.{cluster} {key} type=host\n"))
        .collect()
}

/// The tsh identity file (`api/identityfile`, `lib/client/identityfile` `FormatFile`): private
/// key, SSH certificate, TLS certificate, the host CAs' `@cert-authority` lines, the host CAs'
/// TLS certificates; each part ends with a newline.
fn identity_file(identity: &Identity, proxy_host: &str) -> String {
    let mut out = String::new();
    let mut part = |text: &str| {
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    };
    part(&identity.private_key_pem);
    part(&identity.ssh_cert);
    part(&identity.tls_cert_pem);
    part(&known_hosts(identity, proxy_host));
    for ca in &identity.host_ca_pems {
        part(ca);
    }
    out
}

/// tbot's OpenSSH client configuration (`lib/config/openssh/openssh.go`), whose ProxyCommand is
/// tbot's `ssh-proxy-command`: it reads this very directory, which keybound writes in tbot's
/// layout.
fn ssh_config_file(cluster: &str, ctx: &OutputContext<'_>, dir: &Path) -> String {
    let dir = dir.display();
    let proxy = ctx.proxy_host;
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
        port = ctx.proxy_port,
    )
}

/// Writes `files` into `dir`: every one staged (written and fsynced under a temporary name)
/// before any is renamed into place.
pub fn write_all(dir: &Path, files: &[(&'static str, String)]) -> anyhow::Result<Vec<PathBuf>> {
    let staged = files
        .iter()
        .map(|(name, content)| fsutil::stage(&dir.join(name), content.as_bytes(), 0o600))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let written = staged
        .into_iter()
        .map(|file| file.commit(Replace::Allow))
        .collect::<anyhow::Result<Vec<_>>>()?;
    fsutil::sync_dir(dir)?;
    Ok(written)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
