//! `keybound dev-cluster`: a reference Teleport join server, for keybound's tests, its
//! quickstart, and anyone rehearsing an HSM or TPM setup without a real cluster.
//!
//! It listens on one TLS port and routes by ALPN as a Teleport Proxy does with TLS routing:
//! `teleport-proxy-grpc` goes to the gRPC join services (the unified
//! `teleport.join.v1.JoinService` and the legacy `proto.JoinService`), a first ALPN value of
//! `teleport-auth@<hex cluster>.teleport.cluster.local` to Auth's own TLS endpoint (the Proxy
//! passes that TLS session through to Auth, so the client's certificate reaches Auth), anything
//! else (`h2`, `http/1.1`, none) to the web API (`/webapi/find`, `/webapi/auth/export`). Auth's
//! endpoint may also listen on a port of its own (`auth_listen`, like Auth's `:3025`).
//!
//! Auth's endpoint verifies client certificates against the user CA and serves the join
//! services (where a bot's certificate makes a soft rejoin: same instance, generation + 1),
//! `proto.AuthService` (`Ping`, `GetRole`, `GetClusterCACert`, `GenerateUserCerts` with role
//! impersonation, `auth.rs`) and `teleport.trust.v1.TrustService` (CA reads, `trust.rs`).
//! Tokens, roles, bots and locks load from Teleport's resource YAML, at start or, while it runs,
//! through its admin socket (`admin/`: what `tctl create`, `get` and `rm` do, for the user
//! running it only); challenges, recovery, join state, rotation, generations and locks follow
//! Auth (`join/`); certificates are real X.509 and SSH certificates from in-memory CAs ([`ca`]).
//!
//! It is not Teleport: Auth and Proxy share one process, nothing persists past its exit, and
//! only the RPCs a bot makes exist.
//!
//! # The map
//!
//! Each module imports only modules listed before it:
//!
//! * `misbehave`: the test-only misbehaviours ([`Misbehaviour`]);
//! * [`ca`]: the certificate authorities; [`rules`]: a role's `rules` and their `where`;
//!   [`roles`], [`tokens`], [`locks`], [`nodes`]: resources from YAML, and as `tctl get` shows
//!   them (and how the Proxy finds a node); [`resources`]: YAML files of them, and their kinds;
//! * `config`: [`DevClusterConfig`];
//! * `cluster`: the state every connection shares ([`Cluster`]): the resources (tokens and
//!   their status, roles, bots, locks: `cluster/catalog.rs`), bot instances and generations,
//!   the clock, counters;
//! * `caller`: the identity in a verified client certificate; `subject_keys`: the keys a client
//!   sends for its certificates;
//! * the RPC services: `join/` (`JoinService` and the legacy `JoinService` over one
//!   bound-keypair handler), `auth.rs` (`AuthService`), `trust.rs` (`TrustService`, with
//!   `GenerateHostCert` in `host_certs.rs`), `transport.rs` (`TransportService.ProxySSH`, on the
//!   Proxy's `teleport-proxy-ssh-grpc` route: SSH bytes to a node);
//! * `front/`: TLS, routing by ALPN, the web API, the listeners, and `front/services.rs`, where
//!   every gRPC service is registered ([`DevCluster`]);
//! * [`admin`]: the admin socket ([`AdminServer`](admin::AdminServer)) and its client
//!   ([`AdminClient`](admin::AdminClient)), which `keybound dev-cluster create`, `get`, `ls`,
//!   `rm`, `lock` and `status` use;
//! * `run`: the `keybound dev-cluster` command ([`run()`]).
//!
//! # Adding an RPC
//!
//! 1. **The `.proto` subset** (`proto/teleport/...`, Teleport's own path): declare the method
//!    (and the messages and fields it uses) with Teleport's names and numbers, read in
//!    Teleport's source. A new file also goes into `PROTOS`/`OUR_FILES` of
//!    `proto/tests/bootstrap.rs` and gets a module in `proto/src/lib.rs`.
//! 2. **The generated code**: add the method path (and every new field) to the fact tables of
//!    `proto/tests/bootstrap.rs`, citing where it was read; run
//!    `KEYBOUND_PROTO_BLESS=1 cargo test -p keybound-proto --test bootstrap`, then
//!    `cargo test -p keybound-proto`, and commit `proto/src/gen/` (`proto/README.md`).
//! 3. **The service**: implement the method on its service (`join/v1.rs`, `join/legacy.rs`,
//!    `auth.rs`, `trust.rs`; the generated trait does not compile without it), or, for a new
//!    service, in a new file holding `pub(crate) struct XApi(pub(crate) Arc<Cluster>)`. Refuse
//!    a caller with `Cluster::caller` (Auth's endpoint) and reach the state through
//!    `Cluster`'s methods; keep Teleport's error texts and codes, with the Teleport path they
//!    come from.
//! 4. **The registration**, for a new service only: a field, a constructor line and a path
//!    prefix in `front/services.rs`, where the prefix's condition says whether the Proxy's
//!    route serves it or Auth's endpoint only.
//! 5. **A test**: a unit test next to the code for what stands alone, and an integration test
//!    (`tests/integration/`) that calls the RPC on a [`DevCluster`] the way a client does.

pub mod admin;
pub mod apps;
mod auth;
mod bot_instances;
pub mod ca;
mod caller;
mod cluster;
mod config;
pub mod databases;
mod federation;
mod front;
pub mod heartbeats;
mod host_certs;
mod join;
pub mod kube_clusters;
pub mod labels;
mod listing;
pub mod locks;
mod misbehave;
pub mod nodes;
pub mod resources;
pub mod roles;
mod routes;
pub mod rules;
mod run;
pub mod secret;
pub mod spiffe_federations;
mod subject_keys;
pub mod tokens;
mod transport;
mod trust;
pub mod workload_identities;
mod workload_identity;

pub use cluster::{Cluster, GaveUp};
pub use config::DevClusterConfig;
pub use front::DevCluster;
pub use misbehave::{Misbehaviour, OTHER_CLUSTER, STALLED_ROLE, default_hostile_text};
pub use run::{Serve, run};
