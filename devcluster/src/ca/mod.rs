//! The in-memory certificate authorities of keybound's dev cluster.
//!
//! The dev cluster stands in for a Teleport cluster in tests and the quickstart, so the
//! certificates made here follow what Teleport's Auth service issues to a Machine ID bot after a
//! `bound_keypair` join (see `docs/teleport-source-notes.md` Q6 and the protocol spec §8.1):
//!
//! * two authorities, the **user CA** and the **host CA**, each with a TLS part (ECDSA P-256,
//!   self-signed, subject `O=<cluster>, CN=<cluster>, serialNumber=<serial>` as made by
//!   `tlsca.GenerateSelfSignedCAWithConfig` in `lib/tlsca/parsegen.go`) and an SSH part (Ed25519);
//! * the bot's X.509 certificate, signed by the user CA, whose subject carries the identity the way
//!   `Identity.Subject()` in `lib/tlsca/ca.go` encodes it (CN, O, L, street, postalCode, then
//!   Teleport's custom `1.3.9999.x.y` attributes), with the template of
//!   `CertAuthority.GenerateCertificate` (same file);
//! * the bot's SSH user certificate, signed by the user CA's SSH key, with the key id, principals
//!   and extensions of `Identity.Encode` in `lib/sshca/identity.go`;
//! * a TLS server certificate for the dev proxy, signed by the host CA.
//!
//! String attributes are encoded as Go's `encoding/asn1` does for `pkix.AttributeTypeAndValue`
//! values: `PrintableString` when every character allows it, `UTF8String` otherwise. A client
//! must therefore accept both string types (Go's `FromSubject` reads either as a string).
//!
//! The modules, from the bottom up:
//!
//! * `template`: what every certificate shares (validity in Unix seconds, back-dating,
//!   random serials, Go's string types);
//! * `keys`: the subject keys a request carries, parsed and checked to be one key;
//! * `x509`: Go's layout of a user certificate (multi-valued RDNs), signed with the CA's key;
//! * `authority`: the user, host and database CAs ([`ClusterCa`]) and their public parts;
//! * `request`: what Auth asks for ([`UserCertRequest`], [`BotCertRequest`]) and gets
//!   ([`BotCerts`]);
//! * `ssh`: SSH user and host certificates; `host_cert`: the host certificates of
//!   `TrustService.GenerateHostCert`; `user`: a user's (or bot's) X.509 and SSH pair;
//! * `server`: the Proxy's and Auth's TLS certificates; `export`: the public CA export;
//! * `spiffe`: the SPIFFE CA, X.509 and JWT SVIDs.

mod authority;
mod export;
mod host_cert;
mod keys;
mod request;
mod server;
mod spiffe;
mod ssh;
mod template;
mod user;
mod x509;

#[cfg(test)]
mod tests;

pub use authority::ClusterCa;
pub use host_cert::{EXT_AUTHORITY, EXT_ROLE, HostCertRequest};
pub use request::{BotCertRequest, BotCerts, BotFields, UserCertRequest, bot_resource_name};
pub use server::CLUSTER_LOCAL_NAMES;
pub use spiffe::X509SvidRequest;
pub use ssh::ssh_ext;
pub use user::{JOIN_METHOD_BOUND_KEYPAIR, JOIN_PRINCIPAL};

/// Teleport's X.509 subject attribute types, shared with the agent.
pub use keybound_teleport::subject::oid;
