//! The Proxy's unauthenticated web API: `GET /webapi/find` (Go `webclient.Find`,
//! `api/client/webclient/webclient.go`), which tells a client the cluster's signature algorithm
//! suite before it makes keys.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::values::HostPort;
use keybound_teleport::suite::Suite;

/// How long one web API request may take, connection included.
const FIND_TIMEOUT: Duration = Duration::from_secs(15);
/// The most we read of a response: `/webapi/find` answers are a few kilobytes.
const MAX_BODY: usize = 1 << 20;

/// What keybound reads from `/webapi/find`.
#[derive(Clone, Debug)]
pub struct FindResponse {
    /// `auth.signature_algorithm_suite`; absent means unspecified (`omitempty`).
    pub suite: Suite,
    /// `server_version`, for messages.
    pub server_version: Option<String>,
    /// The whole document, for later use by callers.
    pub raw: serde_json::Value,
    /// The response's HTTP `Date` header: the proxy's clock, to the second (`keybound doctor`
    /// compares it with ours). `None` when absent or unreadable, and from [`parse_find`].
    pub date: Option<std::time::SystemTime>,
}

impl FindResponse {
    /// `cluster_name`, when the proxy gives a non-empty one.
    pub fn cluster_name(&self) -> Option<String> {
        self.raw
            .get("cluster_name")
            .and_then(|v| v.as_str())
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
    }
}

/// Asks the Proxy at `addr` for `/webapi/find` over TLS configured by `tls`.
pub async fn find(addr: &HostPort, tls: Arc<ClientConfig>) -> anyhow::Result<FindResponse> {
    let (body, date) = get(addr, tls, "/webapi/find").await?;
    let mut found = parse_find(&body).with_context(|| format!("proxy {addr}: /webapi/find"))?;
    found.date = date;
    Ok(found)
}

/// A response body and its `Date` header.
type Answer = (Bytes, Option<std::time::SystemTime>);

/// One HTTPS GET to the proxy's web API, bounded by [`FIND_TIMEOUT`].
async fn get(addr: &HostPort, tls: Arc<ClientConfig>, path: &str) -> anyhow::Result<Answer> {
    tokio::time::timeout(FIND_TIMEOUT, get_inner(addr, tls, path))
        .await
        .map_err(|_| {
            anyhow!(
                "proxy {addr} did not answer {path} within {}s; check the address and the network",
                FIND_TIMEOUT.as_secs()
            )
        })?
}

async fn get_inner(addr: &HostPort, tls: Arc<ClientConfig>, path: &str) -> anyhow::Result<Answer> {
    let tcp = TcpStream::connect((addr.host(), addr.port()))
        .await
        .with_context(|| format!("cannot connect to proxy {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(addr.host().to_owned())
        .with_context(|| format!("{:?} is not a valid TLS server name", addr.host()))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(addr, e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with proxy {addr} failed"))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(
            hyper::header::USER_AGENT,
            concat!("keybound/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .expect("a request from a valid path is well-formed");
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET https://{addr}{path} failed"))?;
    let status = response.status();
    let date = response
        .headers()
        .get(hyper::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow!("reading {path} from {addr}: {e}"))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        bail!("proxy {addr} answered {path} with HTTP {status}; is it a Teleport proxy?");
    }
    Ok((body, date))
}

fn tls_error(addr: &HostPort, e: std::io::Error) -> anyhow::Error {
    let hint = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => {
            "; if the proxy uses a private CA pass its bundle with --ca-path \
             (or --insecure, for development only)"
        }
        _ => "",
    };
    anyhow!("TLS handshake with proxy {addr} failed: {e}{hint}")
}

/// Reads the fields keybound uses from a `/webapi/find` body.
pub fn parse_find(body: &[u8]) -> anyhow::Result<FindResponse> {
    let raw: serde_json::Value =
        serde_json::from_slice(body).context("answer is not JSON; is this a Teleport proxy?")?;
    if !raw.is_object() {
        bail!("answer is not a JSON object; is this a Teleport proxy?");
    }
    let suite = match raw.pointer("/auth/signature_algorithm_suite") {
        None | Some(serde_json::Value::Null) => Suite::Unspecified,
        Some(serde_json::Value::String(s)) => Suite::parse(s).map_err(|e| anyhow!(e))?,
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| anyhow!("auth.signature_algorithm_suite {n} is not a suite number"))
            .and_then(|n| Suite::from_number(n).map_err(|e| anyhow!(e)))?,
        Some(other) => bail!(
            "auth.signature_algorithm_suite has unexpected value {}",
            crate::untrusted::name(&other.to_string())
        ),
    };
    let server_version = raw
        .get("server_version")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Ok(FindResponse {
        suite,
        server_version,
        raw,
        date: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_forms() {
        let suite = |body: &str| parse_find(body.as_bytes()).map(|f| f.suite);
        assert_eq!(
            suite(r#"{"auth":{"signature_algorithm_suite":"fips-v1"}}"#).unwrap(),
            Suite::FipsV1
        );
        assert_eq!(
            suite(r#"{"auth":{"signature_algorithm_suite":2}}"#).unwrap(),
            Suite::BalancedV1
        );
        assert_eq!(suite(r#"{"auth":{}}"#).unwrap(), Suite::Unspecified);
        assert_eq!(suite(r#"{}"#).unwrap(), Suite::Unspecified);
        assert!(suite(r#"{"auth":{"signature_algorithm_suite":"rot13"}}"#).is_err());
        let cluster = |body: &str| parse_find(body.as_bytes()).unwrap().cluster_name();
        assert_eq!(
            cluster(r#"{"cluster_name":"example.com"}"#).as_deref(),
            Some("example.com")
        );
        assert_eq!(cluster(r#"{"cluster_name":""}"#), None);
        assert_eq!(cluster(r#"{"cluster_name":7}"#), None);
        assert!(
            suite("<html>")
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
    }
}
