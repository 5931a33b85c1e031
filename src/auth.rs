//! The bot's authenticated connection to Teleport's Auth Service: mutual TLS with the bot's own
//! certificate, and gRPC on top, for the soft rejoin and for the RPCs identity outputs make.
//!
//! Two routes, both ending in one TLS session with Auth itself:
//!
//! * through the Proxy (`proxy_server`): TLS to the Proxy's web port whose first ALPN value is
//!   `teleport-auth@<hex(cluster)>.teleport.cluster.local`, then `h2`. The Proxy's ALPN router
//!   passes such a connection through to Auth untouched (`ForwardTLS`, `lib/service/service.go`
//!   `setupALPNRouter`; `lib/srv/alpnproxy/auth/auth_proxy.go`), whether or not the cluster
//!   uses TLS routing. It is the route `tsh` and `tctl` take (`api/client` `ConfigureALPN`).
//!   tbot itself tunnels SSH through the Proxy's reverse-tunnel listener to reach the same
//!   endpoint (`lib/reversetunnelclient`); see `docs/teleport-source-notes.md`, "The
//!   authenticated connection", for why keybound does not.
//! * straight to Auth (`auth_server`): the same TLS session without the routing ALPN value.
//!
//! Either way the server name is the encoded cluster name, which Auth uses to pick the CAs it
//! trusts (`GetConfigForClient` in `lib/auth/middleware.go`), and Auth's certificate is verified
//! against the cluster CAs the join returned (it is issued by the host CA and names
//! `*.teleport.cluster.local`). The client certificate is the bot's.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use keybound_proto::proto as legacy;
use keybound_proto::teleport::trust::v1 as trust;
use keybound_proto::teleport::workloadidentity::v1 as wi;
use keybound_proto::types;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::identity::Identity;
use crate::subject_key::SubjectKey;
use crate::transport::{self, API_DOMAIN, Dial};
use crate::untrusted;
use crate::values::HostPort;
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// The ALPN prefix of the Proxy's pass-through route to Auth (`ProtocolAuth`).
pub const ALPN_AUTH_PREFIX: &str = "teleport-auth@";

/// How long one RPC on the Auth connection may take, its answer included, unless
/// [`RPC_TIMEOUT_ENV`] says otherwise. Teleport answers these in milliseconds; a cluster that
/// has not answered in half a minute is stalled, and waiting longer would hold up the outputs
/// (and, in the agent, the next renewal) for nothing.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// The environment variable that changes [`RPC_TIMEOUT`] (a duration: `10s`, `2m`).
pub const RPC_TIMEOUT_ENV: &str = "KEYBOUND_RPC_TIMEOUT";

/// The deadline of each Auth RPC: [`RPC_TIMEOUT_ENV`] when set, else [`RPC_TIMEOUT`].
pub fn rpc_timeout_from_env() -> Result<Duration, String> {
    let Some(value) = std::env::var_os(RPC_TIMEOUT_ENV) else {
        return Ok(RPC_TIMEOUT);
    };
    let text = value.to_string_lossy();
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!(
            "{RPC_TIMEOUT_ENV}={text:?}: the deadline must be longer than zero (e.g. 30s)"
        )),
        Err(e) => Err(format!(
            "{RPC_TIMEOUT_ENV}={text:?} is not a duration ({e}); use e.g. 30s or 2m"
        )),
    }
}

/// How keybound reaches Auth with its bot identity.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum AuthRoute {
    /// Through the Proxy's web port, passed through to Auth by ALPN.
    Proxy(HostPort),
    /// Straight to Auth (`auth_server`).
    Direct(HostPort),
}

impl AuthRoute {
    /// The address keybound dials.
    pub fn addr(&self) -> &HostPort {
        match self {
            Self::Proxy(a) | Self::Direct(a) => a,
        }
    }
}

impl fmt::Display for AuthRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Proxy(p) => write!(f, "Auth through proxy {p}"),
            Self::Direct(a) => write!(f, "Auth at {a}"),
        }
    }
}

/// `apiutils.EncodeClusterName`: `hex(cluster).teleport.cluster.local`.
pub fn encoded_cluster_name(cluster: &str) -> String {
    let hex: String = cluster.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.{API_DOMAIN}")
}

/// Why keybound could not open its authenticated connection.
#[derive(Debug)]
pub enum ConnectError {
    /// The network, the Proxy or Auth did not answer.
    Unreachable(String),
    /// Auth's certificate is not one the cluster's CAs issued: not Auth, or not this cluster.
    Untrusted(String),
    /// Auth's certificate comes from a CA the identity does not hold: the cluster's CAs are not
    /// the ones the identity was issued with (the cluster was rebuilt, or rotated its CAs while
    /// keybound was away), or something between keybound and Auth answers in its place.
    UnknownAuthority(String),
    /// The stored identity cannot be used for TLS.
    Identity(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(m)
            | Self::Untrusted(m)
            | Self::UnknownAuthority(m)
            | Self::Identity(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConnectError {}

/// An authenticated gRPC channel to Auth, and the calls keybound makes on it.
///
/// Every unary call goes through [`AuthClient::call`], which bounds it, answer included, by the
/// client's deadline: a cluster that accepts a call and never answers fails that call alone
/// (the HTTP/2 stream is reset; the connection and the other calls go on). A new RPC gets the
/// same bound by going through `call` too. The join streams on [`AuthClient::channel`] are
/// bounded as a whole by the join's own timeout instead.
#[derive(Clone)]
pub struct AuthClient {
    channel: Channel,
    route: AuthRoute,
    deadline: Duration,
    /// A suite whose subject key type is that of the identity's key: what a rejoin will most
    /// likely need, so that it can send its key without waiting for the suite.
    subject_suite: Suite,
}

impl fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthClient")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl AuthClient {
    /// Opens mutual TLS to Auth over `route` with `identity`'s certificate.
    pub async fn connect(route: &AuthRoute, identity: &Identity) -> Result<Self, ConnectError> {
        Self::connect_over(route, identity, None).await
    }

    /// [`AuthClient::connect`], over the TCP connection `ahead` opened to
    /// [`AuthRoute::addr`] when it is usable (else a fresh one).
    pub async fn connect_over(
        route: &AuthRoute,
        identity: &Identity,
        ahead: Option<transport::Preconnect>,
    ) -> Result<Self, ConnectError> {
        let encoded = encoded_cluster_name(identity.info.cluster_name.as_str());
        // A cluster name over 31 bytes makes a label longer than DNS allows, which rustls
        // will not send; Auth then trusts every CA it has, as for a bare API domain.
        let server_name = ServerName::try_from(encoded.clone())
            .or_else(|_| ServerName::try_from(API_DOMAIN))
            .expect("the API domain is a valid server name");
        let (addr, alpn) = match route {
            AuthRoute::Proxy(p) => (
                p,
                vec![
                    format!("{ALPN_AUTH_PREFIX}{encoded}").into_bytes(),
                    b"h2".to_vec(),
                ],
            ),
            AuthRoute::Direct(a) => (a, vec![b"h2".to_vec()]),
        };
        let tls = tls_config(identity, alpn).map_err(|e| {
            ConnectError::Identity(format!("the bot identity cannot be used for TLS: {e:#}"))
        })?;
        let channel = transport::connect_over(
            addr,
            tls,
            Dial {
                server_name: Some(server_name),
                accept: &[b"h2"],
                expected: "h2; is this a Teleport proxy or Auth Service?",
                proxy: matches!(route, AuthRoute::Proxy(_)),
            },
            ahead,
        )
        .await
        .map_err(|e| connect_error(route, &e))?;
        Ok(Self {
            channel,
            route: route.clone(),
            deadline: RPC_TIMEOUT,
            subject_suite: SubjectKey::suite_like(&identity.ssh_public_key),
        })
    }

    /// The same client with another deadline for each RPC (default [`RPC_TIMEOUT`]).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// A suite calling for the key type of the identity this client presents (see
    /// [`crate::join::rejoin`]).
    pub fn subject_suite(&self) -> Suite {
        self.subject_suite
    }

    /// The gRPC channel, for the join streams (bounded by the join's timeout). Unary calls go
    /// through [`AuthClient::call`].
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Where the connection goes.
    pub fn route(&self) -> &AuthRoute {
        &self.route
    }

    /// The deadline of each RPC.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// `message` as a request carrying the deadline (`grpc-timeout`), so that Auth may give up
    /// on it too.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        request
    }

    /// Runs one unary call, `rpc` by name, made with [`AuthClient::request`]: its answer, or
    /// `DEADLINE_EXCEEDED` naming the call once the deadline has passed (the call is then
    /// dropped, which resets its stream). Every RPC of this client goes through here.
    pub async fn call<T>(
        &self,
        rpc: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        let passed = || {
            Status::deadline_exceeded(format!(
                "{} did not answer {rpc} within {}",
                self.route,
                humantime::format_duration(self.deadline)
            ))
        };
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            // tonic's own `grpc-timeout` check, which covers the wait for the answer's headers
            // only, may fire first.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled
                    && status.message() == "Timeout expired" =>
            {
                Err(passed())
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(passed()),
        }
    }

    fn auth_service(&self) -> legacy::auth_service_client::AuthServiceClient<Channel> {
        legacy::auth_service_client::AuthServiceClient::new(self.channel())
    }

    /// `AuthService.Ping`.
    pub async fn ping(&self) -> Result<legacy::PingResponse, Status> {
        let request = self.request(legacy::PingRequest {});
        self.call("Ping", self.auth_service().ping(request)).await
    }

    /// `AuthService.GetRole`.
    pub async fn get_role(&self, name: &str) -> Result<types::RoleV6, Status> {
        let request = self.request(legacy::GetRoleRequest {
            name: name.to_owned(),
        });
        self.call("GetRole", self.auth_service().get_role(request))
            .await
    }

    /// `AuthService.GetClusterCACert`: the local cluster's host CA certificates, PEM.
    pub async fn cluster_ca_cert(&self) -> Result<Vec<u8>, Status> {
        let request = self.request(());
        let answer = self
            .call(
                "GetClusterCACert",
                self.auth_service().get_cluster_ca_cert(request),
            )
            .await?;
        Ok(answer.tlsca)
    }

    /// `AuthService.GenerateUserCerts`.
    pub async fn generate_user_certs(
        &self,
        request: legacy::UserCertsRequest,
    ) -> Result<legacy::Certs, Status> {
        let request = self.request(request);
        self.call(
            "GenerateUserCerts",
            self.auth_service().generate_user_certs(request),
        )
        .await
    }

    /// `AuthService.ListResources`: one page.
    pub async fn list_resources(
        &self,
        request: legacy::ListResourcesRequest,
    ) -> Result<legacy::ListResourcesResponse, Status> {
        let request = self.request(request);
        self.call("ListResources", self.auth_service().list_resources(request))
            .await
    }

    /// `TrustService.GetCertAuthorities(type, include_key = false)`.
    pub async fn cert_authorities(
        &self,
        kind: &str,
    ) -> Result<Vec<types::CertAuthorityV2>, Status> {
        let request = self.request(trust::GetCertAuthoritiesRequest {
            r#type: kind.to_owned(),
            include_key: false,
        });
        let mut client = trust::trust_service_client::TrustServiceClient::new(self.channel());
        let answer = self
            .call("GetCertAuthorities", client.get_cert_authorities(request))
            .await?;
        Ok(answer.cert_authorities_v2)
    }

    /// `TrustService.GenerateHostCert`: an SSH host certificate, for the `ssh_host` output.
    pub async fn generate_host_cert(
        &self,
        request: trust::GenerateHostCertRequest,
    ) -> Result<trust::GenerateHostCertResponse, Status> {
        let request = self.request(request);
        let mut client = trust::trust_service_client::TrustServiceClient::new(self.channel());
        self.call("GenerateHostCert", client.generate_host_cert(request))
            .await
    }

    /// `TrustService.GetCertAuthority(type, domain, include_key = false)`.
    pub async fn cert_authority(
        &self,
        kind: &str,
        domain: &str,
    ) -> Result<types::CertAuthorityV2, Status> {
        let request = self.request(trust::GetCertAuthorityRequest {
            r#type: kind.to_owned(),
            domain: domain.to_owned(),
            include_key: false,
        });
        let mut client = trust::trust_service_client::TrustServiceClient::new(self.channel());
        self.call("GetCertAuthority", client.get_cert_authority(request))
            .await
    }

    /// Every SPIFFE federation, `SPIFFEFederationService.ListSPIFFEFederations` page by page
    /// (100 a page, as tbot's `listAllSPIFFEFederations` in
    /// `lib/tbot/workloadidentity/trust_bundle_cache.go`).
    pub async fn spiffe_federations(
        &self,
    ) -> Result<Vec<keybound_proto::teleport::machineid::v1::SpiffeFederation>, Status> {
        use keybound_proto::teleport::machineid::v1 as machineid;
        let mut client =
            machineid::spiffe_federation_service_client::SpiffeFederationServiceClient::new(
                self.channel(),
            );
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = self.request(machineid::ListSpiffeFederationsRequest {
                page_size: 100,
                page_token: page_token.clone(),
            });
            let page = self
                .call(
                    "ListSPIFFEFederations",
                    client.list_spiffe_federations(request),
                )
                .await?;
            out.extend(page.spiffe_federations);
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    fn issuance(
        &self,
    ) -> wi::workload_identity_issuance_service_client::WorkloadIdentityIssuanceServiceClient<Channel>
    {
        wi::workload_identity_issuance_service_client::WorkloadIdentityIssuanceServiceClient::new(
            self.channel(),
        )
    }

    /// `WorkloadIdentityIssuanceService.IssueWorkloadIdentity`: one SVID, by resource name.
    pub async fn issue_workload_identity(
        &self,
        request: wi::IssueWorkloadIdentityRequest,
    ) -> Result<wi::IssueWorkloadIdentityResponse, Status> {
        let request = self.request(request);
        self.call(
            "IssueWorkloadIdentity",
            self.issuance().issue_workload_identity(request),
        )
        .await
    }

    /// `WorkloadIdentityIssuanceService.IssueWorkloadIdentities`: SVIDs, by resource labels.
    pub async fn issue_workload_identities(
        &self,
        request: wi::IssueWorkloadIdentitiesRequest,
    ) -> Result<wi::IssueWorkloadIdentitiesResponse, Status> {
        let request = self.request(request);
        self.call(
            "IssueWorkloadIdentities",
            self.issuance().issue_workload_identities(request),
        )
        .await
    }
}

/// TLS trusting the cluster's CAs, presenting the bot's certificate.
fn tls_config(identity: &Identity, alpn: Vec<Vec<u8>>) -> anyhow::Result<Arc<ClientConfig>> {
    // Auth's certificate comes from the host CA; the user CA issues clients' certificates only.
    let mut roots = RootCertStore::empty();
    for pem in &identity.host_ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.context("a cluster CA certificate")?)
                .context("a cluster CA certificate")?;
        }
    }
    let chain = CertificateDer::pem_slice_iter(identity.tls_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the bot's TLS certificate")?;
    let key = PrivateKeyDer::from_pem_slice(identity.private_key_pem.as_bytes())
        .map_err(|_| anyhow!("the bot's private key is not a PEM private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the bot's certificate and key")?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

fn connect_error(route: &AuthRoute, error: &(dyn std::error::Error + 'static)) -> ConnectError {
    use rustls::{CertificateError, Error as Tls};
    let mut message = transport::describe(format!("cannot reach {route}"), error);
    match tls_error(error) {
        Some(Tls::InvalidCertificate(
            CertificateError::Expired | CertificateError::NotValidYet,
        )) => {
            message.push_str(
                "; Auth's certificate is outside its validity period by this machine's clock: \
                 check the clock",
            );
            ConnectError::Unreachable(message)
        }
        Some(Tls::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            message.push_str(
                "; Auth's certificate was not issued by the cluster CAs the bot identity holds: \
                 the cluster was rebuilt or changed its CAs, or something between keybound and \
                 the proxy answers in Auth's place (a TLS-terminating load balancer cannot pass \
                 this connection through)",
            );
            ConnectError::UnknownAuthority(message)
        }
        Some(Tls::InvalidCertificate(_)) => {
            message.push_str(
                "; the server's certificate was not issued by the cluster's host CA, so it is \
                 not this cluster's Auth Service: check proxy_server, and what sits between \
                 keybound and the proxy (a TLS-terminating load balancer cannot pass this \
                 connection through)",
            );
            ConnectError::Untrusted(message)
        }
        _ => ConnectError::Unreachable(message),
    }
}

/// The TLS error in `error`'s chain, if any (tokio-rustls carries it inside an `io::Error`,
/// whose own `source` skips it).
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// A failed Auth call made for the outputs: `what`, the cluster's message (sanitized), `hint`.
/// A call that could not reach Auth is worth retrying soon; any other is a refusal.
pub fn status_failure(what: &str, status: &Status, hint: &str) -> Failure {
    let kind = match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            ExitKind::Unreachable
        }
        _ => ExitKind::Rejected,
    };
    Failure::new(
        kind,
        anyhow!("{what}: {}{hint}", untrusted::message(status.message())),
    )
}

/// The exit kind of a connection that could not be made.
impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        let kind = match &e {
            ConnectError::Unreachable(_) => ExitKind::Unreachable,
            // Not this cluster's Auth: retrying soon will not change that.
            ConnectError::Untrusted(_) | ConnectError::UnknownAuthority(_) => ExitKind::Rejected,
            ConnectError::Identity(_) => ExitKind::Software,
        };
        Self::new(kind, anyhow::Error::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_encode_as_teleport_does() {
        // apiutils.EncodeClusterName("example.com").
        assert_eq!(
            encoded_cluster_name("example.com"),
            "6578616d706c652e636f6d.teleport.cluster.local"
        );
    }
}
