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

use crate::config::{HostPort, Symlinks};
use crate::fsutil::{self, Replace};
use crate::identity::Identity;
use crate::untrusted::{self, ClusterName};

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

/// What an identity output needs besides the identity. Every name in it that an output writes
/// is of a checked type ([`HostPort`], [`ClusterName`]; see [`crate::untrusted`]).
pub struct OutputContext<'a> {
    /// The proxy's address (known_hosts, ssh_config); `None` when keybound reaches Auth
    /// directly and Auth names no proxy, which leaves the proxy out of known_hosts and skips
    /// ssh_config.
    pub proxy: Option<&'a HostPort>,
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
    pub host_ssh_keys: Vec<(ClusterName, String)>,
}

impl ClusterCas {
    /// Collects the CA files' contents from the trust service's answers: each certificate
    /// re-encoded from its DER, each key written anew without its comment, and each CA's
    /// cluster name checked, so that nothing but what the files' formats hold reaches them.
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
                    for pem in keybound_teleport::pem::split_pem_certs(&pair.cert)
                        .context("a CA certificate is not PEM")?
                    {
                        out.push_str(&pem);
                    }
                }
            }
            Ok(out)
        };
        let mut host_ssh_keys = Vec::new();
        for ca in host {
            let cluster = ClusterName::parse(
                ca.spec.as_ref().map_or("", |s| s.cluster_name.as_str()),
                "a host CA record (cluster_name)",
            )
            .map_err(|e| anyhow::anyhow!(e))?;
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
/// `known_hosts` and `ssh_config` (`lib/tbot/services/identity/output.go`). Fails when `dir`
/// cannot be written into `ssh_config` ([`check_ssh_config_dir`]).
pub fn identity_files(
    identity: &Identity,
    ctx: &OutputContext<'_>,
    dir: &Path,
    ssh_config: bool,
) -> anyhow::Result<Files> {
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
                ssh_config_file(&identity.info.cluster_name, proxy, dir)?.into(),
            ));
        }
    }
    Ok(files)
}

/// `@cert-authority <proxy>,<cluster>,*.<cluster> <key> type=host`, one line per host CA key
/// (`lib/tbot/ssh/ssh.go` `GenerateKnownHosts`).
fn known_hosts(ctx: &OutputContext<'_>) -> String {
    ctx.cas
        .host_ssh_keys
        .iter()
        .map(|(cluster, key)| match ctx.proxy {
            Some(proxy) => format!(
                "@cert-authority {},{cluster},*.{cluster} {key} type=host\n",
                proxy.host()
            ),
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
/// layout. The cluster and the proxy are checked names; the directory is quoted for each place
/// it goes ([`ssh_config_path`], [`proxy_command_word`]).
fn ssh_config_file(cluster: &ClusterName, proxy: &HostPort, dir: &Path) -> anyhow::Result<String> {
    let dir = ssh_config_dir(dir).map_err(|e| anyhow::anyhow!(e))?;
    let host = proxy.host();
    let file = |name: &str| ssh_config_path(&format!("{dir}/{name}"));
    Ok(format!(
        "# Begin generated Teleport configuration for {host} by keybound

# Common flags for all {cluster} hosts
Host *.{cluster} {host}
    UserKnownHostsFile {kh}
    IdentityFile {key}
    CertificateFile {cert}

# Flags for all {cluster} hosts except the proxy
Host *.{cluster} !{host}
    Port 3022
    ProxyCommand 'tbot' ssh-proxy-command --destination-dir={dir_word} --proxy-server={proxy_word} --cluster={cluster_word} --tls-routing --connection-upgrade --resume --user=%r --host=%h --port=%p

# End generated Teleport configuration
",
        kh = file(names::KNOWN_HOSTS),
        key = file(names::KEY),
        cert = file(names::SSH_CERT),
        dir_word = proxy_command_word(&dir),
        proxy_word = proxy_command_word(&proxy.to_string()),
        cluster_word = proxy_command_word(cluster.as_str()),
    ))
}

/// What keeps `dir` out of an `ssh_config`, if anything: a path that is not UTF-8, or that
/// holds `"`, `\`, `${` or a control character, which OpenSSH's `ssh_config` cannot quote for
/// every version. The error is one line naming the directory and the way out.
pub fn check_ssh_config_dir(dir: &Path) -> Result<(), String> {
    ssh_config_dir(dir).map(drop)
}

/// `dir` as `ssh_config` names it: absolute (ssh resolves a relative path from wherever it
/// runs), UTF-8, and free of what the file cannot carry. OpenSSH reads a file option such as
/// `IdentityFile` as one argument split by `argv_split` (`misc.c`): a `"` ends a quoted word in
/// the versions before 8.7 (which had no escape) and a `\` escapes in later ones only, so a path
/// with either cannot be written for every version; it expands `${VAR}` in these options
/// (OpenSSH 8.4 and later) with no way to escape it; and a line ends the option. Such a path is
/// refused with a one-line error naming it.
fn ssh_config_dir(dir: &Path) -> Result<String, String> {
    let absolute = std::path::absolute(dir)
        .map_err(|e| format!("cannot make {} absolute: {e}", dir.display()))?;
    let text = absolute.to_str().ok_or_else(|| {
        format!(
            "output directory {} is not UTF-8, which ssh_config cannot name; choose another \
             directory or set ssh_config: off",
            absolute.display()
        )
    })?;
    let refused = if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '"' | '\\') || c.is_control())
    {
        Some(format!(
            "holds the character {}",
            untrusted::quoted(c.encode_utf8(&mut [0; 4]))
        ))
    } else if text.contains("${") {
        Some("holds \"${\", which ssh would expand as an environment variable".to_owned())
    } else {
        None
    };
    match refused {
        None => Ok(text.to_owned()),
        Some(why) => Err(format!(
            "output directory {} {why}, which OpenSSH's ssh_config cannot quote (no escape \
             works in every OpenSSH version): choose a directory without '\"', '\\', \"${{\" \
             or control characters, or set ssh_config: off for this output",
            untrusted::quoted(text)
        )),
    }
}

/// A path as an `ssh_config` file option's value: in double quotes (for spaces), `%` doubled
/// (`%%` is a literal `%` in `percent_expand`, `misc.c`). The path passed [`ssh_config_dir`].
fn ssh_config_path(path: &str) -> String {
    format!("\"{}\"", path.replace('%', "%%"))
}

/// One word of `ProxyCommand`, which OpenSSH takes to the end of the line as it is, expands `%`
/// tokens in, and runs with `exec` under the user's shell (`readconf.c`, `sshconnect.c`): in
/// single quotes, which the shell reads literally, a `'` written as `'\''`, and `%` doubled.
/// The word holds no line break: it is a checked name or a path that passed
/// [`ssh_config_dir`].
fn proxy_command_word(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''")).replace('%', "%%")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_command_words_are_single_quoted_with_percent_doubled() {
        assert_eq!(proxy_command_word("/var/lib/out"), "'/var/lib/out'");
        assert_eq!(
            proxy_command_word("/tmp/it's 100% $HOME #x"),
            r"'/tmp/it'\''s 100%% $HOME #x'"
        );
    }

    #[test]
    fn ssh_config_paths_are_double_quoted_with_percent_doubled() {
        assert_eq!(ssh_config_path("/a b/%h/key"), "\"/a b/%%h/key\"");
    }

    #[test]
    fn directories_ssh_config_cannot_name_are_refused() {
        assert!(check_ssh_config_dir(Path::new("/var/lib/keybound out/it's $HOME %h")).is_ok());
        for (dir, shown) in [
            ("/tmp/a\"b", r#""/tmp/a\"b" holds the character "\"""#),
            ("/tmp/a\\b", r#""/tmp/a\\b" holds the character "\\""#),
            (
                "/tmp/a\nMatch exec x",
                r#""/tmp/a\nMatch exec x" holds the character "\n""#,
            ),
            ("/tmp/${HOME}", r#""/tmp/${HOME}" holds "${""#),
        ] {
            let error = check_ssh_config_dir(Path::new(dir)).unwrap_err();
            assert!(
                error.starts_with(&format!("output directory {shown}")),
                "{error}"
            );
            assert!(error.contains("ssh_config: off"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
        // Relative paths are written absolute.
        let relative = ssh_config_dir(Path::new("out")).unwrap();
        assert!(
            relative.starts_with('/') && relative.ends_with("/out"),
            "{relative}"
        );
    }
}
