//! Teleport's ALPN connection upgrade, for a Proxy behind a TLS-terminating (L7) load balancer
//! that never passes the client's ALPN on (`api/client/alpn_conn_upgrade.go`): TLS to the load
//! balancer, `GET /webapi/connectionupgrade` asking for a WebSocket with subprotocol `alpn`, and
//! after the `101` the usual TLS, with its original ALPN and server name, inside binary frames
//! ([`keybound_teleport::wsframe`]).
//!
//! Whether to upgrade is decided as Teleport's `IsALPNConnUpgradeRequired` does, on every dial:
//! `TELEPORT_TLS_ROUTING_CONN_UPGRADE` when set, else one test handshake offering only
//! `teleport-reversetunnel`. The load balancer's own TLS is verified against the system trust
//! store (`SSL_CERT_FILE`, `SSL_CERT_DIR`), as Teleport's client does; the inner TLS is verified
//! exactly as without an upgrade.

use std::io::{Error, ErrorKind};
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{Trust, client_config};
use crate::values::HostPort;

/// The environment variable that overrides detection (`api/defaults`, read by
/// `IsALPNConnUpgradeRequired`): `true`/`false`, or `<host:port>=<bool>` conditions separated by
/// `,` or `;`.
pub const ENV: &str = "TELEPORT_TLS_ROUTING_CONN_UPGRADE";
/// The one protocol the test handshake offers (`constants.ALPNSNIProtocolReverseTunnel`).
const PROBE_ALPN: &[u8] = b"teleport-reversetunnel";
/// Teleport's dial timeout for the test handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole upgrade (TCP, TLS, request and response) is bounded: Teleport's had no bound and
/// hung for minutes when a proxy died (gravitational/teleport#68396).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `101` response head read.
const MAX_RESPONSE: usize = 16 * 1024;

/// What `TELEPORT_TLS_ROUTING_CONN_UPGRADE` says for `addr` (`host:port` as dialled), if
/// anything: the last condition that applies wins, as in `isALPNConnUpgradeRequiredByEnv`
/// (a bare value applies to every address; `addr=value` to that one).
pub fn forced(addr: &HostPort) -> Option<bool> {
    forced_by(&std::env::var(ENV).ok()?, addr)
}

fn forced_by(value: &str, addr: &HostPort) -> Option<bool> {
    let addr = addr.to_string();
    let mut result = None;
    for token in value.split([',', ';']).map(str::trim) {
        let wanted = match token.split_once(&format!("{addr}=")) {
            Some((_, v)) => v,
            None if !token.contains('=') => token,
            None => continue,
        };
        if let Some(b) = parse_bool(wanted) {
            result = Some(b);
        }
    }
    result
}

/// Go's `strconv.ParseBool` plus `yes`/`no`, as `utils.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" => Some(true),
        "0" | "f" | "false" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Whether dialling `addr` needs the upgrade: the environment's answer, else the test
/// handshake's (`IsALPNConnUpgradeRequired`). Teleport's client probes on every dial; keybound
/// keeps the answer per address until a dial there fails ([`forget`]), so that a renewal opens
/// one connection, not two.
pub async fn required(addr: &HostPort) -> bool {
    if let Some(answer) = forced(addr) {
        return answer;
    }
    let key = addr.to_string();
    if let Some(&answer) = known().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return answer;
    }
    let answer = probe(addr).await;
    known()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, answer);
    answer
}

/// What is known for `addr` without a test handshake: the environment's answer, or the one
/// kept from an earlier test ([`required`]).
pub fn settled(addr: &HostPort) -> Option<bool> {
    forced(addr).or_else(|| {
        known()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr.to_string())
            .copied()
    })
}

/// Drops the kept answer for `addr`: the next dial tests again.
pub fn forget(addr: &HostPort) {
    known()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&addr.to_string());
}

fn known() -> &'static std::sync::Mutex<std::collections::HashMap<String, bool>> {
    static KNOWN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, bool>>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// One TLS handshake offering only `teleport-reversetunnel`: no protocol chosen, a
/// `no_application_protocol` alert, or a protocol that was not offered mean something between
/// keybound and the Proxy terminates TLS; any other failure means no upgrade (as Teleport, which
/// logs it and dials as usual).
async fn probe(addr: &HostPort) -> bool {
    let attempt = async {
        let tls = client_config(&Trust::System, &[PROBE_ALPN]).map_err(Error::other)?;
        let tcp = TcpStream::connect((addr.host(), addr.port())).await?;
        let stream = TlsConnector::from(tls)
            .connect(server_name(addr)?, tcp)
            .await?;
        Ok::<_, Error>(stream.get_ref().1.alpn_protocol().is_none())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok(needed)) => needed,
        Ok(Err(e)) => {
            let needed = e
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some_and(|e| {
                    matches!(
                        e,
                        rustls::Error::AlertReceived(
                            rustls::AlertDescription::NoApplicationProtocol
                        ) | rustls::Error::PeerMisbehaved(
                            rustls::PeerMisbehaved::SelectedUnofferedApplicationProtocol
                        )
                    )
                });
            if !needed {
                tracing::debug!(%addr, error = %e, "ALPN connection upgrade test failed");
            }
            needed
        }
        Err(_) => false,
    }
}

fn server_name(addr: &HostPort) -> std::io::Result<ServerName<'static>> {
    ServerName::try_from(addr.host().to_owned())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{:?}: {e}", addr.host())))
}

/// `error`, from a direct handshake with the Proxy at `addr`, with a word on the connection
/// upgrade when a TLS-terminating load balancer would explain it: the server chose no protocol,
/// or refused the ones offered.
pub fn explain(addr: &HostPort, error: Error) -> Error {
    let text = error.to_string();
    if !text.contains("NoApplicationProtocol") && !text.contains("chose ALPN None") {
        return error;
    }
    let hint = match forced(addr) {
        Some(false) => format!(
            "if a TLS-terminating load balancer is in front of the proxy, keybound needs the \
             ALPN connection upgrade, which {ENV} turns off for {addr}"
        ),
        _ => format!("if a TLS-terminating load balancer is in front of the proxy, set {ENV}=true"),
    };
    Error::new(error.kind(), format!("{text}; {hint}"))
}

/// Opens the upgraded connection to `addr`: the returned stream carries the inner TLS.
pub async fn dial(addr: &HostPort) -> std::io::Result<DuplexStream> {
    tokio::time::timeout(UPGRADE_TIMEOUT, upgrade(addr))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::TimedOut,
                format!("the connection upgrade through {addr} timed out"),
            )
        })?
}

async fn upgrade(addr: &HostPort) -> std::io::Result<DuplexStream> {
    // No ALPN on the outer TLS: offering h2 would have the load balancer speak HTTP/2, which
    // carries no HTTP/1.1 Upgrade.
    let tls = client_config(&Trust::System, &[]).map_err(Error::other)?;
    let tcp = TcpStream::connect((addr.host(), addr.port())).await?;
    tcp.set_nodelay(true)?;
    let mut outer = TlsConnector::from(tls)
        .connect(server_name(addr)?, tcp)
        .await
        .map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "TLS to the load balancer at {addr} (for the connection upgrade, verified \
                     against the system trust store or SSL_CERT_FILE): {e}"
                ),
            )
        })?;
    let mut nonce = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| Error::other("no randomness for the WebSocket key"))?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let request = format!(
        "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: keybound/{}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: alpn\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    outer.write_all(request.as_bytes()).await?;
    outer.flush().await?;
    let head = read_head(&mut outer).await?;
    check_response(addr, &head, &key)?;
    let (inner, plain) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Err(e) = keybound_teleport::wsframe::pump(outer, plain, true).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
    Ok(inner)
}

/// The response head, byte by byte so that nothing after it is consumed.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "the upgrade response is too long",
            ));
        }
        head.push(s.read_u8().await?);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The `101` checks of `upgradeConnThroughWebAPI`: status, `Upgrade: websocket`, the
/// subprotocol asked for, and `Sec-WebSocket-Accept`.
fn check_response(addr: &HostPort, head: &str, key: &str) -> std::io::Result<()> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let fail = |what: String| Err(Error::new(ErrorKind::InvalidData, what));
    if status.split_whitespace().nth(1) != Some("101") {
        return fail(format!(
            "{addr} answered the connection upgrade with {}; the load balancer must pass \
             /webapi/connectionupgrade with its Upgrade and Connection headers to the Teleport proxy",
            crate::untrusted::quoted(status)
        ));
    }
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        || header("sec-websocket-protocol").as_deref() != Some("alpn")
    {
        return fail(format!(
            "{addr} switched to another protocol than a WebSocket with subprotocol alpn"
        ));
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{}", keybound_teleport::wsframe::ACCEPT_GUID).as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    if header("sec-websocket-accept").as_deref() != Some(accept.as_str()) {
        return fail(format!(
            "{addr} sent a wrong Sec-WebSocket-Accept in the connection upgrade"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_var_applies_by_address_or_to_all() {
        let a = HostPort::parse("a.example.com:443", 443).unwrap();
        let b = HostPort::parse("b.example.com:443", 443).unwrap();
        let all = "0,a.example.com:443=yes";
        assert_eq!(forced_by(all, &a), Some(true));
        assert_eq!(forced_by(all, &b), Some(false));
        assert_eq!(forced_by("b.example.com:443=1", &a), None);
        assert_eq!(
            forced_by("b.example.com:443=1; a.example.com:443=off", &b),
            Some(true)
        );
        assert_eq!(forced_by("", &a), None);
    }
}
