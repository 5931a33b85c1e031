//! What a cluster says, on its way into keybound's files, command lines, logs and errors.
//!
//! A cluster (or whoever answers at its address: a wrong `proxy_server`, `--insecure`, a stolen
//! host certificate) chooses many strings that keybound repeats: its name, in its certificates
//! and its CA records; its proxy's public address, in `Ping`; the messages of the statuses it
//! ends calls with; the names in its join messages and `/webapi/find`. docs/SECURITY.md promises
//! that such a cluster can neither run code through keybound's outputs nor forge keybound's
//! logs, so every such string passes through this module, one of two ways:
//!
//! - a name that reaches a **file or a command line** is *validated* once, where it enters
//!   keybound, into a type that only validation makes: [`ClusterName`] (from the certificates
//!   and the CA records), and [`HostPort`](crate::values::HostPort) for a `host:port` (from the
//!   configuration and from `Ping`; its host passes [`check_host`]). The output code takes
//!   these types only, so every output kind, today's and the ones to come, writes checked names.
//!   An invalid one refuses the outputs with an error naming it;
//! - text that reaches a **log line or an error** is *sanitized* by [`Sanitized`] ([`message`],
//!   [`name`], [`quoted`]): control characters, Unicode line separators and invisible or
//!   bidirectional formatting characters are escaped (`\n`, `\u{1b}`, `\u{202e}`), so a server
//!   can neither start a log line of its own nor reach the terminal with escape sequences; and
//!   the length is bounded, the rest counted.

use std::fmt;

pub use keybound_teleport::text::{
    MAX_MESSAGE, MAX_NAME, Sanitized, bounded, message, name, one_line, quoted,
};

/// The longest DNS name (RFC 1035, 253 characters in text form without the final dot).
const MAX_DNS_NAME: usize = 253;

// === Names that reach files and command lines ===

/// What is wrong with `name` as a DNS-style name: ASCII letters, digits, `-` and `_` in labels
/// separated by dots, no empty label, no label starting with `-` (which a command line would
/// take for an option), at most 253 characters. `None` when it is fine.
fn dns_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_owned());
    }
    if let Some((at, c)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "character {} at byte {at} is not a letter, a digit, '-', '_' or '.'",
            quoted(c.encode_utf8(&mut [0; 4]))
        ));
    }
    if name.len() > MAX_DNS_NAME {
        return Some(format!(
            "it is {} bytes long, more than the {MAX_DNS_NAME} of a DNS name",
            name.len()
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Some("it has an empty label (a leading, trailing or doubled dot)".to_owned());
    }
    if name.split('.').any(|label| label.starts_with('-')) {
        return Some("a label starts with '-'".to_owned());
    }
    None
}

/// Checks a host as keybound writes it into `ssh_config` and `known_hosts` and passes it on
/// command lines: an IPv4 or IPv6 address (without brackets or zone), or a DNS-style name (see
/// `dns_name_problem`; one final dot allowed). Teleport's own parser (`ParseAddr`,
/// `lib/utils/addr.go`, on Go's `net/url`) refuses control characters and spaces but lets
/// quotes, `*`, `,` and more through, which `ssh_config` and `known_hosts` read as syntax.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(drop)
            .map_err(|_| "it is not an IPv6 address (nor a host name, which has no ':')".into());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    match dns_name_problem(name) {
        None => Ok(()),
        Some(problem) => Err(problem),
    }
}

/// A Kubernetes cluster's name from the cluster (`ListResources`), checked: only
/// [`KubeName::parse`] makes one. It reaches `kubeconfig.yaml` (cluster, context and user names,
/// the v2 server path); keybound takes DNS-style names only, as for [`ClusterName`].
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct KubeName(String);

impl KubeName {
    /// Checks `text`, a Kubernetes cluster's name as the cluster listed it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match dns_name_problem(text) {
            None => Ok(Self(text.to_owned())),
            Some(problem) => Err(format!(
                "the cluster lists a Kubernetes cluster named {}, which keybound refuses: \
                 {problem}; keybound writes these names into kubeconfig.yaml and accepts \
                 DNS-style names only (letters, digits, '-', '_' and '.')",
                quoted(text)
            )),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A cluster's name, checked: only [`ClusterName::parse`] makes one, where a name enters
/// keybound (the certificates' `TeleportCluster` attribute, a CA record's `cluster_name`).
///
/// Teleport itself asks only that a cluster name be non-empty (`ClusterNameV2.CheckAndSetDefaults`
/// in `api/types/clustername.go`), but tbot and tsh write it unquoted into `ssh_config`
/// (`Host *.<cluster>`, `lib/config/openssh/openssh.go`) and `known_hosts`
/// (`@cert-authority <proxy>,<cluster>,*.<cluster>`, `lib/tbot/ssh/ssh.go`), which work only
/// for a DNS-style name; a name with a newline would start a directive of its own (`Match exec
/// "..."` runs a command for anyone who runs `ssh -F ssh_config`). keybound accepts the names
/// those files can hold and refuses the rest.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct ClusterName(String);

impl ClusterName {
    /// Checks `text`, a cluster name `source` gave (e.g. "the TLS certificate"). The error is one
    /// line naming the value (escaped) and what to do.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        match dns_name_problem(text) {
            None => Ok(Self(text.to_owned())),
            Some(problem) => Err(format!(
                "{source} names the cluster {}, which keybound refuses: {problem}. keybound \
                 writes cluster names into ssh_config, known_hosts and identity files and \
                 accepts DNS-style names only (letters, digits, '-', '_' and '.'); check that \
                 proxy_server or auth_server is the Teleport cluster you expect",
                quoted(text)
            )),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ClusterName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ClusterName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_dns_style() {
        for good in [
            "example.com",
            "teleport.example.com",
            "Teleport-Staging",
            "tenant.teleport.sh",
            "my_cluster",
            "localhost",
            "10.0.0.1",
        ] {
            assert_eq!(ClusterName::parse(good, "test").unwrap(), good);
        }
        for (bad, why) in [
            ("", "it is empty"),
            (
                "evil\nMatch exec \"touch x\"",
                "character \"\\n\" at byte 4",
            ),
            ("a b", "character \" \" at byte 1"),
            ("a'b", "character \"'\""),
            ("a\"b", "character \"\\\"\""),
            ("a,b", "character \",\""),
            ("*.example.com", "character \"*\""),
            ("a\u{1b}[31m", "character \"\\u{1b}\""),
            ("a/../b", "character \"/\""),
            ("exämple.com", "character \"ä\""),
            ("example.com.", "empty label"),
            (".example.com", "empty label"),
            ("a..b", "empty label"),
            ("-oProxyCommand=x", "character \"=\""),
            ("-cluster", "a label starts with '-'"),
            ("a.-b", "a label starts with '-'"),
        ] {
            let error = ClusterName::parse(bad, "the TLS certificate").unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
            assert!(
                error.starts_with("the TLS certificate names the cluster \""),
                "{error}"
            );
            assert!(
                !error.contains('\n') && !error.contains('\u{1b}'),
                "{error}"
            );
            assert!(error.contains("check that proxy_server"), "{error}");
        }
        let long = format!("{}.com", "a".repeat(250));
        assert!(
            ClusterName::parse(&long, "t")
                .unwrap_err()
                .contains("254 bytes long")
        );
    }

    #[test]
    fn hosts_are_names_or_addresses() {
        for good in [
            "example.com",
            "example.com.",
            "localhost",
            "127.0.0.1",
            "::1",
            "2001:db8::1",
            "proxy_1.example.com",
        ] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "evil\nMatch exec x",
            "a b",
            "a\"b",
            "*",
            "a,b",
            "fe80::1%eth0",
            ":::",
            "-x",
            "example..com",
        ] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
    }
}
