//! The admin side of a running dev cluster: what `tctl` does against Teleport's Auth (create,
//! get, list and remove tokens, bots, roles and locks), without a restart, so the identities
//! bots hold stay valid.
//!
//! It is local only: HTTP/1.1 over a Unix-domain socket, mode 0600, in a directory only its user
//! may enter (`socket`); the server also reads each client's user from the socket
//! (`SO_PEERCRED`) and refuses any but its own. Unless `--admin-socket` names one, the socket
//! is `<port>.sock` (the Proxy's port) in [`default_dir`], where `keybound dev-cluster`'s
//! subcommands look for it. The requests (`wire`, with the [`AdminClient`] that sends them):
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/status` | the cluster's name, version, addresses and counts |
//! | `POST /v1/resources`, `{"origin", "yaml", "force"}` | `tctl create [-f]`: every resource of the YAML, or none |
//! | `GET /v1/<kind>` | `tctl get tokens`: every resource of the kind, as Teleport shows them |
//! | `GET /v1/<kind>/<name>` | `tctl get tokens/NAME` |
//! | `DELETE /v1/<kind>/<name>` | `tctl rm tokens/NAME` |
//! | `POST /v1/tokens/<name>/request-rotation` | `tctl bound-keypair request-rotation NAME`: the token's `rotate_after` set to now |
//! | `POST /v1/sign-host`, `{"public_key", "principals"}` | `{"certificate"}`: an SSH host certificate from the host CA (`tctl auth sign --format=openssh`) |
//!
//! Answers are JSON; a refusal has a 4xx status and `{"error": "<one line>"}`.
//!
//! * `socket`: where the socket lives, its directory's checks, finding a running cluster's;
//! * `wire`: the requests' and answers' shapes, and names in paths;
//! * `server`: the listener ([`AdminServer`]);
//! * `client`: [`AdminClient`].

mod client;
mod server;
mod socket;
mod wire;

pub use client::AdminClient;
pub use server::AdminServer;
pub use socket::default_dir;
pub use wire::Applied;
