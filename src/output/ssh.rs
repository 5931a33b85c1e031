//! The OpenSSH files of an output: `known_hosts` with the cluster's host CAs and an
//! `ssh_config` whose `ProxyCommand` goes through the proxy, as tbot writes them
//! (`lib/tbot/ssh/ssh.go`, `lib/config/openssh/openssh.go`). Every name in them is of a
//! checked type ([`HostPort`], [`ClusterName`]; see [`crate::untrusted`]); the output directory is
//! quoted for each place it goes.

use std::path::Path;

use super::cluster::ClusterCas;
use crate::identity::files;
use crate::untrusted::{self, ClusterName};
use crate::values::HostPort;

/// `known_hosts`.
pub const KNOWN_HOSTS: &str = "known_hosts";
/// `ssh_config`.
pub const SSH_CONFIG: &str = "ssh_config";

/// `@cert-authority <proxy>,<cluster>,*.<cluster> <key> type=host`, one line per host CA key
/// (`lib/tbot/ssh/ssh.go` `GenerateKnownHosts`).
pub(super) fn known_hosts(cas: &ClusterCas, proxy: Option<&HostPort>) -> String {
    cas.host_ssh_keys
        .iter()
        .map(|(cluster, key)| match proxy {
            Some(proxy) => format!(
                "@cert-authority {},{cluster},*.{cluster} {key} type=host\n",
                proxy.host()
            ),
            None => format!("@cert-authority {cluster},*.{cluster} {key} type=host\n"),
        })
        .collect()
}

/// tbot's OpenSSH client configuration (`lib/config/openssh/openssh.go`), whose ProxyCommand is
/// tbot's `ssh-proxy-command`: it reads this very directory, which keybound writes in tbot's
/// layout. The cluster and the proxy are checked names; the directory is quoted for each place
/// it goes ([`ssh_config_path`], [`proxy_command_word`]).
pub(super) fn ssh_config_file(
    cluster: &ClusterName,
    proxy: &HostPort,
    dir: &Path,
) -> anyhow::Result<String> {
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
        kh = file(KNOWN_HOSTS),
        key = file(files::KEY),
        cert = file(files::SSH_CERT),
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
