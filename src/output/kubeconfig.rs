//! `kubeconfig.yaml` as tbot writes it for its Kubernetes outputs (`clientcmd.Write` of the
//! config `lib/tbot/services/k8s/output_v1.go` and `output_v2.go` build; golden files
//! `testdata/TestKubernetesOutputService_render/absolute_path/kubeconfig.yaml.golden` and
//! `TestKubernetesV2OutputService_render/relative_path/kubeconfig.yaml.golden`): clusters with
//! the root cluster's host CAs and the Proxy's Kubernetes route (`tls-server-name`
//! `kube-teleport-proxy-alpn.<proxy host>`, or `.teleport.cluster.local` for `localhost` or an
//! address: `GetKubeTLSServerName`), users that run `keybound kube credentials` (the exec
//! plugin, `tbot kube credentials` in tbot) or hold the certificate and key inline.

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::identity::Identity;
use crate::values::HostPort;

/// The file name.
pub const KUBECONFIG: &str = "kubeconfig.yaml";

/// The server-name prefix of the Proxy's Kubernetes route
/// (`lib/srv/alpnproxy/common` `KubeTeleportProxyALPNPrefix`).
const KUBE_SNI_PREFIX: &str = "kube-teleport-proxy-alpn.";

/// Where kubectl reaches the Proxy's Kubernetes route: `https://<proxy>` and its server name
/// (`selectKubeConnectionMethod` with TLS routing, the only way keybound reaches the Proxy).
pub(super) fn kube_address(proxy: Option<&HostPort>) -> anyhow::Result<(String, String)> {
    let Some(proxy) = proxy else {
        bail!(
            "unable to determine kubernetes address: Auth names no proxy; give keybound \
             proxy_server, or set the proxy's public_addr in the cluster"
        );
    };
    let host = proxy.host();
    let server_name = if host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() {
        format!("{KUBE_SNI_PREFIX}teleport.cluster.local")
    } else {
        format!("{KUBE_SNI_PREFIX}{host}")
    };
    Ok((format!("https://{proxy}"), server_name))
}

/// How a kubeconfig's user gets its credentials.
pub(super) enum Credentials<'a> {
    /// Runs `keybound kube credentials --destination-dir=<dir>` (an absolute path).
    Exec(&'a Path),
    /// The certificate and key inline (`disable_exec_plugin: true`).
    Inline(&'a Identity),
}

/// One Kubernetes cluster of a kubeconfig: its context (and cluster entry) name, server URL
/// and default namespace.
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) server: String,
    pub(super) namespace: Option<String>,
}

/// The kubeconfig: `entries` (the first is the current context), all with the user `user`,
/// the host CAs `host_cas` (PEM) and the server name `server_name`.
pub(super) fn kubeconfig(
    entries: &[Entry],
    user: &str,
    credentials: &Credentials<'_>,
    host_cas: &str,
    server_name: &str,
) -> anyhow::Result<Zeroizing<String>> {
    if host_cas.trim().is_empty() {
        bail!("TLS trusted CAs missing in provided credentials");
    }
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    let clusters: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "cluster": {
                    "certificate-authority-data": b64(host_cas),
                    "server": e.server,
                    "tls-server-name": server_name,
                },
            })
        })
        .collect();
    let contexts: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut context = json!({"cluster": e.name, "user": user});
            if let Some(ns) = &e.namespace {
                context["namespace"] = json!(ns);
            }
            json!({"name": e.name, "context": context})
        })
        .collect();
    let user_entry = match credentials {
        Credentials::Exec(dir) => {
            let command = std::env::current_exe()
                .context("cannot find keybound's own path for the kubeconfig's exec plugin")?;
            json!({"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "args": ["kube", "credentials", format!("--destination-dir={}", dir.display())],
                "command": command,
                "env": null,
                "provideClusterInfo": false,
            }})
        }
        Credentials::Inline(identity) => json!({
            "client-certificate-data": b64(&identity.tls_cert_pem),
            "client-key-data": KEY_PLACEHOLDER,
        }),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "contexts": contexts,
        "current-context": entries.first().map(|e| e.name.as_str()).unwrap_or(""),
        "preferences": {},
        "users": [{"name": user, "user": user_entry}],
    });
    let yaml = serde_yaml::to_string(&config)?;
    let Credentials::Inline(identity) = credentials else {
        return Ok(Zeroizing::new(yaml));
    };
    // The key goes in last, into a buffer of its final size, so that no copy of it is left
    // in memory that is not zeroed.
    let (before, after) = yaml
        .split_once(KEY_PLACEHOLDER)
        .context("the kubeconfig lost its key entry")?;
    let engine = base64::engine::general_purpose::STANDARD;
    let key_len = base64::encoded_len(identity.private_key_pem.len(), true).unwrap_or(0);
    let mut out = Zeroizing::new(String::with_capacity(before.len() + key_len + after.len()));
    out.push_str(before);
    engine.encode_string(identity.private_key_pem.as_bytes(), &mut out);
    out.push_str(after);
    Ok(out)
}

/// Where the inline key goes in the YAML before it is put in.
const KEY_PLACEHOLDER: &str = "keybound-private-key-goes-here";

/// tbot's `context_name_template` (a Go `text/template` over `.ClusterName` and `.KubeName`),
/// for the templates it takes: text, and those two fields in `{{ }}`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ContextTemplate(Vec<Piece>);

#[derive(Clone, Debug, Eq, PartialEq)]
enum Piece {
    Text(String),
    ClusterName,
    KubeName,
}

impl ContextTemplate {
    /// tbot's default, `{{.ClusterName}}-{{.KubeName}}` (`kubeconfig.ContextName`).
    pub fn default_template() -> Self {
        Self(vec![
            Piece::ClusterName,
            Piece::Text("-".into()),
            Piece::KubeName,
        ])
    }

    /// Reads a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| "unclosed action: {{ without }}".to_owned())?;
            pieces.push(match after[..close].trim() {
                ".ClusterName" => Piece::ClusterName,
                ".KubeName" => Piece::KubeName,
                other => {
                    return Err(format!(
                        "{{{{{other}}}}} is not one of {{{{.ClusterName}}}} and {{{{.KubeName}}}}"
                    ));
                }
            });
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err("}} without {{".to_owned());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    /// The context name for `kube` in the Teleport cluster `cluster`.
    pub fn render(&self, cluster: &str, kube: &str) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::ClusterName => cluster,
                Piece::KubeName => kube,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_addresses_follow_tbot() {
        let t = ContextTemplate::default_template();
        assert_eq!(t.render("tele.example.com", "a"), "tele.example.com-a");
        let t = ContextTemplate::parse("k8s-{{ .KubeName }}@{{.ClusterName}}").unwrap();
        assert_eq!(t.render("c", "k"), "k8s-k@c");
        assert!(ContextTemplate::parse("{{.Other}}").is_err());
        assert!(ContextTemplate::parse("{{.KubeName").is_err());
        let local = HostPort::parse("localhost:3080", 443).unwrap();
        assert_eq!(
            kube_address(Some(&local)).unwrap(),
            (
                "https://localhost:3080".to_owned(),
                "kube-teleport-proxy-alpn.teleport.cluster.local".to_owned()
            )
        );
        let named = HostPort::parse("tele.blackmesa.gov", 443).unwrap();
        assert_eq!(
            kube_address(Some(&named)).unwrap().1,
            "kube-teleport-proxy-alpn.tele.blackmesa.gov"
        );
        assert!(kube_address(None).is_err());
    }
}
