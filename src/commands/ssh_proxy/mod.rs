//! `keybound ssh-proxy-command`: tbot's `ssh-proxy-command` (`lib/tbot/cli/ssh_proxy.go`,
//! `lib/tbot/services/ssh/ssh_proxy.go`), the `ProxyCommand` of an identity output's
//! `ssh_config`. OpenSSH runs it once per connection and speaks SSH over its standard input and
//! output; it carries those bytes through the Proxy to the node over
//! `teleport.transport.v1.TransportService.ProxySSH`, with the identity output's certificate.
//! It needs no SSH library: OpenSSH does SSH, with the output's `key`, `key-cert.pub` and
//! `known_hosts`.
//!
//! * `identity_file`: the output's `identity` file, the only one it reads;
//! * `connect`: TLS to the Proxy and the ProxySSH stream;
//! * `pump`: the bytes both ways.

mod connect;
mod identity_file;
mod pump;

use std::time::SystemTime;

use keybound_proto::teleport::transport::v1::TargetHost;

use crate::cli::SshProxyArgs;
use crate::values::HostPort;
use crate::{ExitKind, Failure};
use identity_file::IdentityFile;
use pump::Ended;

/// Runs the command: one SSH connection, standard input and output to the node.
pub async fn run(args: &SshProxyArgs) -> Result<(), Failure> {
    let config = |message: String| Failure::new(ExitKind::Config, anyhow::anyhow!(message));
    if args.proxy_templates.is_some() {
        return Err(config(
            "--proxy-templates is not supported by keybound; name the node in the ssh command \
             (user@node.cluster) instead"
                .to_owned(),
        ));
    }
    if args.fips {
        return Err(config(
            "--fips is not supported: keybound is not built with a FIPS-validated \
             cryptographic module; use tbot for FIPS clusters"
                .to_owned(),
        ));
    }
    let proxy = HostPort::parse(&args.proxy_server, 443)
        .map_err(|e| config(format!("--proxy-server {:?}: {e}", args.proxy_server)))?;
    let identity =
        IdentityFile::read(&args.destination_dir).map_err(|e| Failure::new(ExitKind::Config, e))?;
    if identity.not_after <= SystemTime::now() {
        return Err(Failure::new(
            ExitKind::Rejected,
            anyhow::anyhow!(
                "the identity in {} expired at {}: keybound start must be running (or run \
                 again) to renew it",
                args.destination_dir.display(),
                httpdate::fmt_http_date(identity.not_after)
            ),
        ));
    }
    let cluster = match &args.cluster {
        Some(cluster) if !cluster.is_empty() => cluster.clone(),
        _ => identity.cluster.clone(),
    };
    let target = TargetHost {
        host_port: format!(
            "{}:{}",
            target_host(&args.host, proxy.host(), &cluster),
            args.port
                .as_deref()
                .filter(|p| !p.is_empty())
                .unwrap_or("0")
        ),
        cluster,
        login_name: args.user.clone(),
    };
    let tls = connect::tls_config(&identity, args.insecure)
        .map_err(|e| Failure::new(ExitKind::Config, e))?;
    let stream = connect::open(&proxy, tls, target)
        .await
        .map_err(|connect::Refused(message, kind)| Failure::new(kind, anyhow::anyhow!(message)))?;
    match pump::pump(stream, tokio::io::stdin(), tokio::io::stdout()).await {
        Ended::Local | Ended::Remote => Ok(()),
        Ended::Failed(message) => Err(Failure::new(
            ExitKind::Unreachable,
            anyhow::anyhow!("the connection through the proxy failed: {message}"),
        )),
    }
}

/// The host as the Proxy resolves it: without a `.<proxy host>` suffix, then without a
/// `.<cluster>` suffix (tbot's `cleanTargetHost`), so `node1.example.com` reaches `node1`.
fn target_host<'a>(host: &'a str, proxy_host: &str, cluster: &str) -> &'a str {
    let host = host.strip_suffix(&format!(".{proxy_host}")).unwrap_or(host);
    host.strip_suffix(&format!(".{cluster}")).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_host_loses_the_proxy_and_cluster_suffixes() {
        assert_eq!(
            target_host("node1.dev.test", "proxy.dev.test", "dev.test"),
            "node1"
        );
        assert_eq!(
            target_host("node1.proxy.example.com", "proxy.example.com", "c"),
            "node1"
        );
        assert_eq!(target_host("node1", "localhost", "dev.test"), "node1");
        assert_eq!(target_host("a.b.dev.test", "localhost", "dev.test"), "a.b");
    }
}
