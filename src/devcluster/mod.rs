//! `keybound dev-cluster`: a reference Teleport join server, for keybound's tests, its
//! quickstart, and anyone rehearsing an HSM or TPM setup without a real cluster.
//!
//! It listens on one TLS port and routes by ALPN as a Teleport Proxy does with TLS routing:
//! `teleport-proxy-grpc` goes to the gRPC join services (the unified
//! `teleport.join.v1.JoinService` and the legacy `proto.JoinService`), anything else (`h2`,
//! `http/1.1`, none) to the web API (`/webapi/find`, `/webapi/auth/export`). Tokens load from
//! Teleport's token YAML; challenges, recovery, join state, rotation and locks follow Auth
//! (`handler.rs`); certificates are real X.509 and SSH certificates from in-memory CAs ([`ca`]).
//!
//! It is not Teleport: there is no Auth/Proxy split, no authenticated API, no persistence.

pub mod ca;
mod handler;
mod service;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use keybound_signer::{Algorithm, PublicKey, Signer as _};
use keybound_signer_soft::SoftSigner;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::suite::Suite;
use ca::ClusterCa;
use tokens::{Status as TokenStatus, Token};

/// Ways the dev cluster can misbehave on purpose, for testing clients.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Misbehaviour {
    /// Challenge a key the client does not hold.
    ChallengeOtherKey,
    /// Drop the stream right after sending the first challenge.
    DropMidJoin,
}

/// How to run a dev cluster.
#[derive(Clone, Debug)]
pub struct DevClusterConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The cluster's name (CA subjects, challenge issuer).
    pub cluster_name: String,
    /// The signature algorithm suite it announces.
    pub suite: Suite,
    /// Serve only the legacy RPC (like clusters before bound keypair reached `JoinService.Join`).
    pub legacy_only: bool,
    /// Send a second, suite-less `ServerInit`, as builds before teleport#60291 did.
    pub duplicate_server_init: bool,
    /// Misbehave on purpose.
    pub misbehave: Option<Misbehaviour>,
    /// The Teleport version it claims (`/webapi/find`, client version check).
    pub server_version: String,
    /// Join tokens.
    pub tokens: Vec<Token>,
}

impl Default for DevClusterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_name: "dev.keybound.test".to_owned(),
            suite: Suite::BalancedV1,
            legacy_only: false,
            duplicate_server_init: false,
            misbehave: None,
            server_version: "18.2.10".to_owned(),
            tokens: Vec::new(),
        }
    }
}

struct Entry {
    token: Token,
    status: TokenStatus,
    revision: u64,
}

/// The cluster's state, shared by every connection.
pub struct Cluster {
    config: DevClusterConfig,
    ca: ClusterCa,
    /// The bound-keypair CA's JWT key, which signs join state documents.
    join_state_key: SoftSigner,
    tokens: Mutex<HashMap<String, Entry>>,
    locks: Mutex<HashMap<String, String>>,
    clock_offset: AtomicI64,
    solutions: AtomicUsize,
    joins: AtomicUsize,
}

impl Cluster {
    fn new(config: DevClusterConfig) -> anyhow::Result<Self> {
        let ca = ClusterCa::generate(&config.cluster_name)?;
        // `BoundKeypairCAJWT` per suite (spec §5.1): Ed25519 for balanced-v1, P-256 otherwise.
        let jwt_algorithm = match config.suite {
            Suite::BalancedV1 => Algorithm::Ed25519,
            _ => Algorithm::EcdsaP256Sha256,
        };
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Entry {
                        token: t.clone(),
                        status: TokenStatus::default(),
                        revision: 0,
                    },
                )
            })
            .collect();
        Ok(Self {
            ca,
            join_state_key: SoftSigner::generate(jwt_algorithm)?,
            tokens: Mutex::new(tokens),
            locks: Mutex::new(HashMap::new()),
            clock_offset: AtomicI64::new(0),
            solutions: AtomicUsize::new(0),
            joins: AtomicUsize::new(0),
            config,
        })
    }

    /// The cluster's clock: the system clock moved by [`advance_clock`](Self::advance_clock).
    pub fn now(&self) -> SystemTime {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        if offset >= 0 {
            SystemTime::now() + Duration::from_secs(offset as u64)
        } else {
            SystemTime::now() - Duration::from_secs(offset.unsigned_abs())
        }
    }

    /// Moves the cluster's clock forward (tests of expiry).
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset
            .fetch_add(by.as_secs() as i64, Ordering::Relaxed);
    }

    /// The CAs.
    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// A token's bound-keypair status.
    pub fn token_status_of(&self, name: &str) -> Option<TokenStatus> {
        self.tokens
            .lock()
            .expect("token lock")
            .get(name)
            .map(|e| e.status.clone())
    }

    /// Adds or replaces a token (its status starts empty).
    pub fn put_token(&self, token: Token) {
        let mut tokens = self.tokens.lock().expect("token lock");
        let revision = tokens.get(&token.name).map_or(0, |e| e.revision + 1);
        tokens.insert(
            token.name.clone(),
            Entry {
                token,
                status: TokenStatus::default(),
                revision,
            },
        );
    }

    /// How many challenge solutions clients have sent.
    pub fn solutions_received(&self) -> usize {
        self.solutions.load(Ordering::Relaxed)
    }

    /// How many joins succeeded.
    pub fn joins_completed(&self) -> usize {
        self.joins.load(Ordering::Relaxed)
    }

    /// Whether a lock targets the token, and its message.
    pub fn lock_on(&self, token: &str) -> Option<String> {
        self.locks.lock().expect("lock lock").get(token).cloned()
    }

    fn record_solution(&self) {
        self.solutions.fetch_add(1, Ordering::Relaxed);
    }

    fn record_join(&self) {
        self.joins.fetch_add(1, Ordering::Relaxed);
    }

    fn token_status(&self, name: &str) -> (TokenStatus, u64) {
        let tokens = self.tokens.lock().expect("token lock");
        tokens
            .get(name)
            .map_or_else(Default::default, |e| (e.status.clone(), e.revision))
    }

    /// The token's compare-and-swap update (`PatchToken` with mutators).
    fn commit_status(&self, name: &str, revision: u64, status: TokenStatus) -> Result<(), Status> {
        let mut tokens = self.tokens.lock().expect("token lock");
        match tokens.get_mut(name) {
            Some(entry) if entry.revision == revision => {
                entry.status = status;
                entry.revision += 1;
                Ok(())
            }
            _ => Err(Status::permission_denied(
                "committing updated token state, please try again: unexpected backend state",
            )),
        }
    }

    fn lock(&self, token: &str, message: String) {
        warn!(token, %message, "locking join token");
        self.locks
            .lock()
            .expect("lock lock")
            .insert(token.to_owned(), message);
    }

    fn check_lock(&self, token: &str) -> Result<(), Status> {
        match self.lock_on(token) {
            Some(message) => Err(Status::permission_denied(format!(
                "lock targeting JoinToken:{token:?} is in force: {message}"
            ))),
            None => Ok(()),
        }
    }

    /// `ValidateToken`, `checkJoinMethod` and `TokenAllowsRole` (`lib/join/server.go`).
    fn check_token(
        &self,
        name: &str,
        join_method: Option<&str>,
        role: &str,
    ) -> Result<Token, Status> {
        let token = {
            let tokens = self.tokens.lock().expect("token lock");
            tokens.get(name).map(|e| e.token.clone())
        };
        let token = token
            .filter(|t| t.expires.is_none_or(|e| e > self.now()))
            .ok_or_else(|| Status::permission_denied("token expired or not found"))?;
        let token_method = if token.join_method.is_empty() {
            "token"
        } else {
            token.join_method.as_str()
        };
        if let Some(requested) = join_method {
            if requested != token_method {
                return Err(Status::invalid_argument(format!(
                    "client requested join method {requested}, provision token only supports method {token_method}"
                )));
            }
        }
        if !token.roles.iter().any(|r| r.eq_ignore_ascii_case(role)) {
            return Err(Status::invalid_argument(format!(
                "can not join the cluster, the token does not allow role {role}"
            )));
        }
        Ok(token)
    }

    /// `validateClientVersion`: no `version` is fine; one that does not parse, or is older than
    /// (major − 1).0.0-aa, is refused.
    fn check_client_version(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let values: Vec<_> = metadata.get_all("version").iter().collect();
        let Some(value) = values.first() else {
            return Ok(());
        };
        let server = semver::Version::parse(&self.config.server_version)
            .unwrap_or_else(|_| semver::Version::new(18, 0, 0));
        let minimum = semver::Version::parse(&format!("{}.0.0-aa", server.major.saturating_sub(1)))
            .expect("a fixed version parses");
        let ok = values.len() == 1
            && value
                .to_str()
                .ok()
                .and_then(|v| semver::Version::parse(v).ok())
                .is_some_and(|v| v >= minimum);
        if ok {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "client version is unsupported, minimum supported version is {}.0.0",
                minimum.major
            )))
        }
    }

    /// A well-formed challenge for a key nobody holds (misbehaviour).
    fn other_key_challenge(&self) -> (String, String) {
        let other =
            SoftSigner::generate(Algorithm::Ed25519).expect("Ed25519 generation cannot fail");
        let key: &PublicKey = other.public_key();
        let now = handler::unix(self.now());
        let document = format!(
            r#"{{"iss":"{c}","sub":"{}","aud":"{c}","exp":{},"nbf":{},"iat":{now},"nonce":"00112233445566778899aabbccddeeff"}}"#,
            key.key_id(),
            now + 60,
            now - 10,
            c = self.ca.cluster_name()
        );
        (key.to_openssh(), document)
    }

    fn find_document(&self, local: SocketAddr) -> serde_json::Value {
        let web = format!("{}:{}", "localhost", local.port());
        let mut auth = serde_json::json!({
            "type": "local", "private_key_policy": "none", "piv_slot": "", "piv_pin_cache_duration": 0,
            "device_trust": {}, "has_motd": false, "default_session_ttl": "12h0m0s",
        });
        if self.config.suite != Suite::Unspecified {
            auth["signature_algorithm_suite"] =
                serde_json::Value::String(self.config.suite.to_string());
        }
        serde_json::json!({
            "auth": auth,
            "proxy": {
                "kube": {},
                "ssh": {"listen_addr": web, "web_listen_addr": web, "public_addr": web},
                "db": {},
                "tls_routing_enabled": true,
            },
            "server_version": self.config.server_version,
            "min_client_version": format!("{}.0.0-aa", semver::Version::parse(&self.config.server_version).map(|v| v.major.saturating_sub(1)).unwrap_or(17)),
            "cluster_name": self.ca.cluster_name(),
            "automatic_upgrades": false,
            "edition": "community",
            "fips": false,
        })
    }
}

// === Serving ===

const ALPN_GRPC: &[u8] = b"teleport-proxy-grpc";

/// A running dev cluster. Dropping it stops the server.
pub struct DevCluster {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub cluster: Arc<Cluster>,
    task: JoinHandle<()>,
}

impl DevCluster {
    /// Starts serving on `config.listen`.
    pub async fn start(config: DevClusterConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let cluster = Arc::new(Cluster::new(config)?);
        let mut names = vec![
            "localhost".to_owned(),
            addr.ip().to_string(),
            cluster.ca.cluster_name().to_owned(),
        ];
        names.dedup();
        let (chain, key) = cluster.ca.server_cert(&names)?;
        let mut tls =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![ALPN_GRPC.to_vec(), b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(serve(listener, acceptor, cluster.clone()));
        info!(%addr, cluster = cluster.ca.cluster_name(), "dev cluster listening");
        Ok(Self {
            addr,
            cluster,
            task,
        })
    }

    /// `host:port` for `proxy_server` (`localhost`, which the certificate names).
    pub fn proxy_addr(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// The CA bundle a client trusts to reach it.
    pub fn ca_pem(&self) -> String {
        self.cluster.ca.host_ca_pem()
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, cluster: Arc<Cluster>) {
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    let v1 = v1::join_service_server::JoinServiceServer::new(service::JoinV1(cluster.clone()));
    let old =
        legacy::join_service_server::JoinServiceServer::new(service::JoinLegacy(cluster.clone()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // gRPC writes small frames; without this, Nagle's algorithm and the peer's delayed ACKs
        // add 40 ms to every exchange.
        let _ = tcp.set_nodelay(true);
        let (acceptor, cluster, v1, old) =
            (acceptor.clone(), cluster.clone(), v1.clone(), old.clone());
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return debug!(%peer, "TLS handshake timed out"),
                };
            let grpc = tls.get_ref().1.alpn_protocol() == Some(ALPN_GRPC);
            let io = TokioIo::new(tls);
            let result = if grpc {
                let service =
                    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                        request.extensions_mut().insert(peer);
                        let (mut v1, mut old) = (v1.clone(), old.clone());
                        async move {
                            use tower::Service as _;
                            let path = request.uri().path();
                            if path.starts_with("/teleport.join.v1.JoinService/") {
                                v1.call(request).await
                            } else if path.starts_with("/proto.JoinService/") {
                                old.call(request).await
                            } else {
                                Ok(Status::unimplemented(format!("unknown method {path}"))
                                    .into_http())
                            }
                        }
                    });
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<Incoming>| {
                        let cluster = cluster.clone();
                        async move { Ok::<_, std::convert::Infallible>(web(&cluster, local, &request)) }
                    },
                );
                auto::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The web API subset: `/webapi/find` and the public CA export.
fn web(
    cluster: &Cluster,
    local: SocketAddr,
    request: &hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let respond = |status: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is well-formed")
    };
    match request.uri().path() {
        "/webapi/find" | "/webapi/ping" => respond(
            200,
            "application/json",
            cluster.find_document(local).to_string(),
        ),
        "/webapi/auth/export" => {
            let kind = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("type=")))
                .unwrap_or("");
            match cluster.ca.export(kind) {
                Some(pem) => respond(200, "text/plain", pem),
                None => respond(
                    400,
                    "text/plain",
                    format!("unsupported authority type {kind:?}\n"),
                ),
            }
        }
        path => respond(
            404,
            "application/json",
            format!(r#"{{"error":{{"message":"not found: {path}"}}}}"#),
        ),
    }
}

// === The command ===

/// Runs `keybound dev-cluster` until SIGINT or SIGTERM.
pub async fn run(config: DevClusterConfig, ca_out: &std::path::Path) -> anyhow::Result<()> {
    let cluster = DevCluster::start(config).await?;
    crate::fsutil::write_atomic(
        ca_out,
        cluster.ca_pem().as_bytes(),
        0o644,
        crate::fsutil::Replace::Allow,
    )
    .with_context(|| format!("writing the CA bundle to {}", ca_out.display()))?;
    println!(
        "keybound dev cluster {:?} listening on {}",
        cluster.cluster.ca.cluster_name(),
        cluster.addr
    );
    println!("proxy_server: {}", cluster.proxy_addr());
    println!("CA bundle: {}", ca_out.display());
    let tokens = cluster.cluster.tokens.lock().expect("token lock").len();
    println!("tokens: {tokens}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("dev cluster stopping");
    Ok(())
}

/// The dev cluster configuration `keybound dev-cluster` flags describe.
pub fn config_from_args(args: &crate::cli::DevClusterArgs) -> anyhow::Result<DevClusterConfig> {
    let mut tokens = Vec::new();
    for path in &args.tokens {
        tokens.extend(tokens::load(path)?);
    }
    Ok(DevClusterConfig {
        listen: args.listen,
        cluster_name: args.cluster_name.clone(),
        suite: Suite::parse(&args.suite).map_err(|e| anyhow::anyhow!("--suite: {e}"))?,
        legacy_only: args.legacy_only,
        duplicate_server_init: args.duplicate_server_init,
        misbehave: args.misbehave.map(|m| match m {
            crate::cli::MisbehaveArg::ChallengeOtherKey => Misbehaviour::ChallengeOtherKey,
            crate::cli::MisbehaveArg::DropMidJoin => Misbehaviour::DropMidJoin,
        }),
        server_version: args.server_version.clone(),
        tokens,
    })
}
