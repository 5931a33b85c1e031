//! `type: workload-identity-api`: the SPIFFE Workload API served on a unix socket (or TCP), as
//! tbot's service (`lib/tbot/services/workloadidentity/workload_api.go`,
//! `workload_api_config.go`): each request is issued its SVIDs from the configured
//! `workload_identity` resources, on the bot's role-impersonated connection, with the caller's
//! unix attributes (`SO_PEERCRED`: pid, uid, gid) for the resource's templates.
//!
//! The SPIFFE spec's rules kept here (`standards/SPIFFE_Workload_API.md`): every request carries
//! the metadata `workload.spiffe.io: true`, else `InvalidArgument`; the X.509 stream re-sends on
//! each renewal of the bot identity, every `renewal_interval` and on a change of the trust
//! domain's CA; the bundle streams send again when the CA changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keybound_proto::spiffe_workload as api;
use keybound_proto::teleport::workloadidentity::v1 as wi;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::bundle;
use crate::output::workload_identity::{Params, RawSelector, Selector, checked_spiffe_id};
use crate::output::workload_identity_x509::SvidKey;
use crate::values::GoDuration;
use crate::{ExitKind, Failure};

/// What the services serve from, made after each renewal: the bot's role-impersonated
/// connection, and the trust domain's bundle.
pub(super) struct Live {
    /// The impersonated connection the SVIDs are issued on.
    pub(super) session: Arc<crate::output::workload_identity::Session>,
    /// The SPIFFE CA, as served.
    pub(super) bundle: Arc<bundle::Bundle>,
    /// The cluster's suite (the SVID keys' type).
    pub(super) suite: keybound_teleport::suite::Suite,
    /// The bot's own connection (to read the CA again).
    pub(super) auth: Arc<crate::auth::AuthClient>,
}

/// The metadata every Workload API request must carry (SPIFFE Workload API spec, §5.2).
const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Where the Workload API listens.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Listen {
    /// `unix:///path`: a unix socket (the workload's pid, uid and gid attested).
    Unix(PathBuf),
    /// `tcp://host:port`: no attestation (as tbot).
    Tcp(String),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl Listen {
    /// Reads `listen:`; `at` names the service.
    fn parse(raw: Option<&str>, at: &str) -> Result<Self, String> {
        let forms = "unix:///path/to/socket or tcp://host:port";
        let raw = raw.unwrap_or_default();
        if raw.trim().is_empty() {
            return Err(format!(
                "{at}.listen: should not be empty; set it to {forms}"
            ));
        }
        if let Some(path) = raw.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{at}.listen: the socket path in {raw:?} is not absolute; write {forms}"
                ));
            }
            return Ok(Self::Unix(path));
        }
        if let Some(addr) = raw.strip_prefix("tcp://") {
            let port = addr
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty())
                .and_then(|(_, port)| port.parse::<u16>().ok());
            if port.is_none() {
                return Err(format!(
                    "{at}.listen: {raw:?} names no host and port; write {forms}"
                ));
            }
            return Ok(Self::Tcp(addr.to_owned()));
        }
        Err(format!(
            "{at}.listen: unsupported scheme in {raw:?}; write {forms}"
        ))
    }
}

/// A `type: workload-identity-api` service.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WorkloadApiConfig {
    /// Its `name:`, for logs.
    pub name: Option<String>,
    /// Where it listens.
    pub listen: Listen,
    /// Which workload identities a workload is issued.
    pub selector: Selector,
    /// The SVIDs' lifetime; the top-level `credential_ttl` when unset.
    pub credential_ttl: Option<Duration>,
    /// How often the X.509 stream re-sends fresh SVIDs; the top-level `renewal_interval` when
    /// unset.
    pub renewal_interval: Option<Duration>,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkloadApi {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    name: Option<String>,
    listen: Option<String>,
    selector: Option<RawSelector>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

impl RawWorkloadApi {
    /// Checks the YAML; `at` names the service (`services[0]`).
    pub fn check(self, at: &str) -> Result<WorkloadApiConfig, String> {
        let listen = Listen::parse(self.listen.as_deref(), at)?;
        let selector = Selector::from_raw(self.selector, at)?;
        let (credential_ttl, renewal_interval) = match (self.credential_ttl, self.renewal_interval)
        {
            (Some(ttl), Some(interval)) => (Some(ttl.0), Some(interval.0)),
            (None, None) => (None, None),
            _ => {
                return Err(format!(
                    "{at}: credential_ttl and renewal_interval must both be specified if either is"
                ));
            }
        };
        if let (Some(ttl), Some(interval)) = (credential_ttl, renewal_interval)
            && interval >= ttl
        {
            return Err(format!(
                "{at}.renewal_interval: must be shorter than credential_ttl, or the SVIDs expire \
                 before they are renewed"
            ));
        }
        Ok(WorkloadApiConfig {
            name: self.name,
            listen,
            selector,
            credential_ttl,
            renewal_interval,
        })
    }
}

impl WorkloadApiConfig {
    /// How logs name it: its `name:`, else `workload-identity-api (<listen>)`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("workload-identity-api ({})", self.listen),
        }
    }
}

/// The gRPC service: what each request is served from.
pub(super) struct WorkloadApi {
    pub(super) config: Arc<WorkloadApiConfig>,
    /// The SVIDs' lifetime.
    pub(super) ttl: Duration,
    /// How often the X.509 stream re-sends.
    pub(super) interval: Duration,
    /// The bot's impersonated connection and the trust bundle, after each renewal.
    pub(super) live: watch::Receiver<Option<Arc<Live>>>,
}

/// The SPIFFE header, as the spec requires it.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: the Workload API requires the metadata \
             `workload.spiffe.io: true`",
        )),
    }
}

/// The caller's attributes: its pid, uid and gid from the unix socket (`SO_PEERCRED`); none
/// over TCP, or when the kernel gives no pid (tbot's soft failure: issued without them).
fn workload_attrs<T>(request: &Request<T>) -> Option<wi::WorkloadAttrs> {
    let cred = request.extensions().get::<PeerCred>()?;
    let pid = cred.pid.filter(|p| *p > 0)?;
    Some(wi::WorkloadAttrs {
        unix: Some(wi::WorkloadAttrsUnix {
            attested: true,
            pid,
            gid: cred.gid,
            uid: cred.uid,
        }),
    })
}

/// The caller on a unix socket, from the kernel (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug)]
pub(super) struct PeerCred {
    pub(super) pid: Option<i32>,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// A failure of the issuance as a gRPC status for the workload.
fn status(failure: &Failure) -> Status {
    let message = format!("{:#}", failure.error);
    match failure.kind {
        ExitKind::Rejected => Status::permission_denied(message),
        ExitKind::Unreachable => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

/// The first (or current) renewal's state; `None` when the service is stopping.
async fn current(live: &mut watch::Receiver<Option<Arc<Live>>>) -> Option<Arc<Live>> {
    let got = live.wait_for(Option::is_some).await.ok()?;
    got.clone()
}

/// No SVID for the workload: tbot's answer (`workload_api.go`).
fn none_issued() -> Status {
    Status::permission_denied("workload did not pass attestation for any SVIDs")
}

impl WorkloadApi {
    /// The X.509 SVIDs for a workload, each with a fresh key of the cluster's suite.
    async fn x509_svids(
        &self,
        live: &Live,
        attrs: Option<wi::WorkloadAttrs>,
    ) -> Result<api::X509svidResponse, Status> {
        let suite = live.suite;
        let key = tokio::task::spawn_blocking(move || SvidKey::generate(suite))
            .await
            .map_err(|e| Status::internal(format!("key generation failed: {e}")))?
            .map_err(|e| Status::internal(format!("key generation failed: {e:#}")))?;
        let credentials = live
            .session
            .issue(
                &self.config.selector,
                Params::X509(key.spki_der.clone()),
                attrs,
                self.ttl,
            )
            .await
            .map_err(|f| status(&f))?;
        if credentials.is_empty() {
            return Err(none_issued());
        }
        let (_, key_der) = pem_rfc7468::decode_vec(key.private_pem.as_bytes())
            .map_err(|e| Status::internal(format!("the SVID key's PEM: {e}")))?;
        let key_der = Zeroizing::new(key_der);
        let mut svids = Vec::with_capacity(credentials.len());
        for credential in &credentials {
            let spiffe_id =
                checked_spiffe_id(credential, &live.session.cluster).map_err(|f| status(&f))?;
            let Some(wi::credential::Credential::X509Svid(svid)) = &credential.credential else {
                return Err(Status::internal(
                    "the cluster answered an X.509 SVID request with another credential",
                ));
            };
            let mut chain = svid.cert.clone();
            for der in &svid.chain {
                chain.extend_from_slice(der);
            }
            svids.push(api::X509svid {
                spiffe_id,
                x509_svid: chain,
                x509_svid_key: key_der.to_vec(),
                bundle: live.bundle.x509_der.clone(),
                hint: credential.hint.clone(),
            });
        }
        Ok(api::X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: Default::default(),
        })
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// The service as the gRPC server holds it.
#[derive(Clone)]
pub(super) struct Shared(pub(super) Arc<WorkloadApi>);

impl std::ops::Deref for Shared {
    type Target = Arc<WorkloadApi>;
    fn deref(&self) -> &Arc<WorkloadApi> {
        &self.0
    }
}

#[tonic::async_trait]
impl api::spiffe_workload_api_server::SpiffeWorkloadApi for Shared {
    type FetchX509SVIDStream = Stream<api::X509svidResponse>;
    type FetchX509BundlesStream = Stream<api::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<api::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<api::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let attrs = workload_attrs(&request);
        let (tx, rx) = mpsc::channel(2);
        let this = self.0.clone();
        tokio::spawn(async move {
            let mut live = this.live.clone();
            loop {
                let Some(now) = current(&mut live).await else {
                    return;
                };
                live.borrow_and_update();
                let answer = this.x509_svids(&now, attrs).await;
                let failed = answer.is_err();
                if let Ok(a) = &answer {
                    let ids: Vec<&str> = a.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
                    info!(service = %this.config.label(), spiffe_ids = %ids.join(","), "sent X.509 SVIDs");
                }
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
                tokio::select! {
                    changed = live.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(this.interval) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<api::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        Ok(Response::new(self.bundle_stream(|b| {
            api::X509BundlesResponse {
                crl: Vec::new(),
                bundles: [(b.trust_domain_id.clone(), b.x509_der.clone())].into(),
            }
        })))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<api::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        Ok(Response::new(self.bundle_stream(|b| {
            api::JwtBundlesResponse {
                bundles: [(b.trust_domain_id.clone(), b.jwks.clone())].into(),
            }
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<api::JwtsvidRequest>,
    ) -> Result<Response<api::JwtsvidResponse>, Status> {
        check_header(&request)?;
        let attrs = workload_attrs(&request);
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(|a| a.is_empty()) {
            return Err(Status::invalid_argument(
                "audience: must have at least one value",
            ));
        }
        let mut live = self.live.clone();
        let now = current(&mut live)
            .await
            .ok_or_else(|| Status::unavailable("the Workload API is stopping"))?;
        let credentials = now
            .session
            .issue(
                &self.config.selector,
                Params::Jwt(request.audience),
                attrs,
                self.ttl,
            )
            .await
            .map_err(|f| status(&f))?;
        let mut svids = Vec::new();
        for credential in &credentials {
            let spiffe_id =
                checked_spiffe_id(credential, &now.session.cluster).map_err(|f| status(&f))?;
            if !request.spiffe_id.is_empty() && request.spiffe_id != spiffe_id {
                continue;
            }
            let Some(wi::credential::Credential::JwtSvid(svid)) = &credential.credential else {
                return Err(Status::internal(
                    "the cluster answered a JWT SVID request with another credential",
                ));
            };
            svids.push(api::Jwtsvid {
                spiffe_id,
                svid: svid.jwt.clone(),
                hint: credential.hint.clone(),
            });
        }
        if svids.is_empty() {
            return Err(none_issued());
        }
        Ok(Response::new(api::JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<api::ValidateJwtsvidRequest>,
    ) -> Result<Response<api::ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let mut live = self.live.clone();
        let now = current(&mut live)
            .await
            .ok_or_else(|| Status::unavailable("the Workload API is stopping"))?;
        let (spiffe_id, claims) = now
            .bundle
            .validate_jwt(&request.svid, &request.audience, SystemTime::now())
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(api::ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(bundle::to_struct(claims)),
        }))
    }
}

impl WorkloadApi {
    /// A bundle stream: the bundle now, then again each time it changes.
    fn bundle_stream<T: Send + 'static>(
        self: &Arc<Self>,
        make: fn(&bundle::Bundle) -> T,
    ) -> Stream<T> {
        let (tx, rx) = mpsc::channel(2);
        let mut live = self.live.clone();
        tokio::spawn(async move {
            let mut sent: Option<Arc<bundle::Bundle>> = None;
            loop {
                let Some(now) = current(&mut live).await else {
                    return;
                };
                live.borrow_and_update();
                if sent.as_ref() != Some(&now.bundle) {
                    if tx.send(Ok(make(&now.bundle))).await.is_err() {
                        return;
                    }
                    sent = Some(now.bundle.clone());
                }
                tokio::select! {
                    changed = live.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Logs a failure to refresh what the service serves; the last good state stays.
pub(super) fn refresh_failed(label: &str, failure: &Failure) {
    warn!(
        service = %label,
        error = %format!("{:#}", failure.error),
        "the Workload API could not refresh its connection or trust bundle; it keeps serving from the last one"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<WorkloadApiConfig, String> {
        let raw: RawWorkloadApi = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        raw.check("services[3]")
    }

    #[test]
    fn bad_listen_values_are_one_line_naming_the_service_and_key() {
        for (yaml, starts) in [
            (
                "selector: {name: a}\n",
                "services[3].listen: should not be empty",
            ),
            (
                "listen: ''\nselector: {name: a}\n",
                "services[3].listen: should not be empty",
            ),
            (
                "listen: http://x:1\nselector: {name: a}\n",
                "services[3].listen: unsupported scheme in \"http://x:1\"",
            ),
            (
                "listen: /run/x.sock\nselector: {name: a}\n",
                "services[3].listen: unsupported scheme in \"/run/x.sock\"",
            ),
            (
                "listen: unix://x.sock\nselector: {name: a}\n",
                "services[3].listen: the socket path in \"unix://x.sock\" is not absolute",
            ),
            (
                "listen: tcp://:80\nselector: {name: a}\n",
                "services[3].listen: \"tcp://:80\" names no host and port",
            ),
            (
                "listen: unix:///run/x.sock\nselector: {name: a, labels: {a: [b]}}\n",
                "services[3].selector: at most one of ['name', 'labels'] can be set",
            ),
            (
                "listen: unix:///run/x.sock\nselector: {name: a}\ncredential_ttl: 1h\n",
                "services[3]: credential_ttl and renewal_interval must both be specified",
            ),
            (
                "listen: unix:///run/x.sock\nselector: {name: a}\ncredential_ttl: 1h\nrenewal_interval: 2h\n",
                "services[3].renewal_interval: must be shorter than credential_ttl",
            ),
        ] {
            let err = check(yaml).unwrap_err();
            assert!(err.starts_with(starts), "{yaml}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let ok = check("listen: unix:///run/k/w.sock\nselector: {labels: {env: [dev]}}\n").unwrap();
        assert_eq!(ok.listen, Listen::Unix("/run/k/w.sock".into()));
        assert_eq!(ok.label(), "workload-identity-api (unix:///run/k/w.sock)");
        let ok = check("listen: tcp://127.0.0.1:9000\nselector: {name: a}\nname: api\n").unwrap();
        assert_eq!(ok.listen, Listen::Tcp("127.0.0.1:9000".into()));
        assert_eq!(ok.label(), "api");
    }

    #[test]
    fn requests_without_the_spiffe_header_are_invalid_arguments() {
        let mut request = Request::new(());
        assert_eq!(
            check_header(&request).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, "false".parse().unwrap());
        assert!(check_header(&request).is_err());
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        assert!(check_header(&request).is_ok());
    }
}
