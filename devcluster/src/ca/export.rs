//! The CAs' public parts as Teleport shows them: the web API's export (`GET
//! /webapi/auth/export`) and the trust service's CA records.

use super::authority::{Authority, ClusterCa};

impl ClusterCa {
    /// The public CA export of `GET /webapi/auth/export?type=<kind>` (`exportAuth` in
    /// `lib/client/ca_export.go`), or `None` for a type the dev cluster does not have:
    /// * `tls` / `tls-host`: the host CA's TLS certificate (PEM); `tls-user`: the user CA's;
    /// * `user`: the user CA's SSH key as an authorized_keys line,
    ///   `cert-authority <key> clustername=<cluster>&type=user`
    ///   (`sshutils.MarshalAuthorizedKeysFormat`);
    /// * `host`: the host CA's SSH key as a known_hosts line,
    ///   `@cert-authority <cluster>,*.<cluster> <key> type=host`
    ///   (`sshutils.MarshalAuthorizedHostsFormat`, no allowed logins);
    /// * `db`: the database CA's TLS certificate (PEM), as `tctl auth export --type=db`;
    /// * empty: the `host` line, then the `user` line.
    pub fn export(&self, kind: &str) -> Option<String> {
        match kind {
            "db" => Some(self.database.tls.pem()),
            "tls" | "tls-host" => Some(self.host_ca_pem()),
            "tls-user" => Some(self.user_ca_pem()),
            "user" => Some(self.user_ca_authorized_keys_line()),
            "host" => Some(self.host_ca_known_hosts_line()),
            "" => Some(self.host_ca_known_hosts_line() + &self.user_ca_authorized_keys_line()),
            _ => None,
        }
    }

    /// A CA's public parts as the trust service returns them: its SSH keys as authorized_keys
    /// lines (none for the database CA) and its TLS certificate as PEM. `None` for a type the
    /// dev cluster does not have (`host`, `user` and `db` only).
    pub fn authority_public(&self, kind: &str) -> Option<(Vec<String>, String)> {
        let line = |a: &Authority| a.ssh_public_openssh.trim().to_owned();
        match kind {
            "host" => Some((vec![line(&self.host)], self.host.tls.pem())),
            "user" => Some((vec![line(&self.user)], self.user.tls.pem())),
            "db" => Some((Vec::new(), self.database.tls.pem())),
            "spiffe" => Some((Vec::new(), self.spiffe.tls.pem())),
            _ => None,
        }
    }

    fn user_ca_authorized_keys_line(&self) -> String {
        // url.Values.Encode sorts the keys: clustername, then type.
        format!(
            "cert-authority {} clustername={}&type=user\n",
            self.user.ssh_public_openssh,
            go_query_escape(&self.cluster_name)
        )
    }

    fn host_ca_known_hosts_line(&self) -> String {
        let cluster = &self.cluster_name;
        format!(
            "@cert-authority {cluster},*.{cluster} {} type=host\n",
            self.host.ssh_public_openssh
        )
    }
}

/// Go's `url.QueryEscape`: unreserved characters as they are, space as `+`, the rest `%XX`.
pub(super) fn go_query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
