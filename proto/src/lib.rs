//! Protocol buffers and gRPC stubs for the parts of Teleport's join protocol
//! that keybound speaks.
//!
//! keybound joins a Teleport cluster as a Machine ID bot with the
//! `bound_keypair` join method, in place of `tbot`. That takes one of two
//! bidirectional-streaming RPCs:
//!
//! - [`teleport::join::v1`]: the unified join service,
//!   `/teleport.join.v1.JoinService/Join` (Teleport 18.x after the backport of
//!   bound keypair to it, and later);
//! - [`proto`] (with [`types`]): the legacy service,
//!   `/proto.JoinService/RegisterUsingBoundKeypairMethod`, which Teleport keeps
//!   until v20.
//!
//! Each module holds [prost] messages plus both a [tonic] client
//! (`join_service_client`) and server (`join_service_server`), the latter for
//! keybound's development join server.
//!
//! After the join, a bot reads what its identity outputs need over an
//! authenticated connection to Auth: [`proto`]'s `AuthService` (role
//! impersonation with `GenerateUserCerts`, the bot's role, the host CA, the
//! cluster's suite) and [`teleport::trust::v1`]'s `TrustService` (the CAs).
//!
//! # Where this comes from
//!
//! The `.proto` files under `proto/teleport/` are written for keybound, not
//! copied. They declare only the messages and fields a bound-keypair bot uses,
//! under Teleport's own package, service, method, message and field names and
//! field numbers, so the wire format is Teleport's. Upstream:
//! <https://github.com/gravitational/teleport> (Apache-2.0), files
//! `api/proto/teleport/join/v1/joinservice.proto`,
//! `api/proto/teleport/legacy/client/proto/{joinservice,certs}.proto` and
//! `api/proto/teleport/legacy/types/types.proto`.
//!
//! Every name and number was checked against Teleport's source; each `.proto`
//! file names, at its top, the files, commits and read ids it was checked
//! against. For `teleport.join.v1` the newest version read is the descriptor
//! embedded in `api/gen/proto/go/teleport/join/v1/joinservice_protoopaque.pb.go`
//! at commit `4a816d99c5578340e30ab5f4abee6a21acd4a53f`; for the legacy service,
//! `api/client/proto/joinservice.pb.go` at
//! `9494e64f91aab4ae3789bd37a4f5965c3d2f47e9` and `joinservice_grpc.pb.go` at
//! `2ee3af94400fe2a45347d0b720ec0843dcb61d06`. `tests/bootstrap.rs` restates
//! those facts as a table and checks the `.proto` files against it.
//!
//! # Generated code
//!
//! The Rust code lives in `src/gen/`, checked in, so building this crate needs
//! neither `protoc` nor a build script. `tests/bootstrap.rs` regenerates it
//! (pure Rust: `protox` and `tonic-prost-build`) and fails if it differs; run
//! `KEYBOUND_PROTO_BLESS=1 cargo test -p keybound-proto --test bootstrap` after
//! editing a `.proto` file. See `proto/README.md`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// Wraps one generated file in a module. The generated code leaves oneof enums
// and some fields undocumented, spells out paths such as
// `::prost::alloc::string::String`, and trips clippy (`large_enum_variant`);
// those lints stay on for the hand-written code of this crate.
macro_rules! generated {
    ($(#[$attr:meta])* $name:ident, $file:literal) => {
        $(#[$attr])*
        #[allow(missing_docs, unused_qualifications, clippy::all)]
        pub mod $name {
            include!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/gen/", $file));
        }
    };
}

/// Teleport's current protobuf packages (`teleport.*`).
pub mod teleport {
    /// Joining a cluster (`teleport.join.*`).
    pub mod join {
        generated!(
            /// Package `teleport.join.v1`: the unified `JoinService.Join` RPC.
            ///
            /// Full method path: `/teleport.join.v1.JoinService/Join`.
            v1,
            "teleport.join.v1.rs"
        );
    }
    /// Certificate authorities (`teleport.trust.*`).
    pub mod trust {
        generated!(
            /// Package `teleport.trust.v1`: reading the cluster's certificate
            /// authorities (`TrustService.GetCertAuthority`,
            /// `TrustService.GetCertAuthorities`).
            v1,
            "teleport.trust.v1.rs"
        );
    }
    /// Resource headers (`teleport.header.*`).
    pub mod header {
        generated!(
            /// Package `teleport.header.v1`: the metadata of newer resources.
            v1,
            "teleport.header.v1.rs"
        );
    }
    /// Machine ID (`teleport.machineid.*`).
    pub mod machineid {
        generated!(
            /// Package `teleport.machineid.v1`: a bot instance's heartbeat
            /// (`BotInstanceService.SubmitHeartbeat`), and SPIFFE federations
            /// (`SPIFFEFederationService.ListSPIFFEFederations`), whose bundles
            /// a `workload-identity-x509` output may add to its own.
            v1,
            "teleport.machineid.v1.rs"
        );
    }
    /// Workload identity (`teleport.workloadidentity.*`).
    pub mod workloadidentity {
        generated!(
            /// Package `teleport.workloadidentity.v1`: X.509 and JWT SVIDs
            /// (`WorkloadIdentityIssuanceService.IssueWorkloadIdentity`,
            /// `IssueWorkloadIdentities`) and the workload attributes they take.
            v1,
            "teleport.workloadidentity.v1.rs"
        );
    }
    /// Proxied connections (`teleport.transport.*`).
    pub mod transport {
        generated!(
            /// Package `teleport.transport.v1`: an SSH connection's bytes
            /// through the Proxy to a node (`TransportService.ProxySSH`).
            ///
            /// Full method path: `/teleport.transport.v1.TransportService/ProxySSH`.
            v1,
            "teleport.transport.v1.rs"
        );
    }
}

generated!(
    /// Package `proto`: the legacy `JoinService.RegisterUsingBoundKeypairMethod`
    /// RPC and `Certs`, and the four `AuthService` RPCs an identity output
    /// calls (`Ping`, `GetRole`, `GetClusterCACert`, `GenerateUserCerts`).
    ///
    /// Full method paths: `/proto.JoinService/RegisterUsingBoundKeypairMethod`,
    /// `/proto.AuthService/<method>`.
    proto,
    "proto.rs"
);

generated!(
    /// The SPIFFE Workload API (upstream `workload.proto`, no package): the
    /// `SpiffeWorkloadAPI` service keybound's `workload-identity-api` serves,
    /// with its three server-streaming RPCs.
    ///
    /// Full method paths: `/SpiffeWorkloadAPI/<method>`.
    spiffe_workload,
    "_.rs"
);

generated!(
    /// Package `types`: `RegisterUsingTokenRequest` and
    /// `SignatureAlgorithmSuite` for the legacy RPC in [`proto`], and the parts
    /// of roles (`RoleV6`) and certificate authorities (`CertAuthorityV2`) a
    /// bot reads.
    types,
    "types.rs"
);

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::teleport::join::v1::{ClientInit, JoinRequest, join_request};
    use crate::types::SignatureAlgorithmSuite;

    #[test]
    fn join_request_client_init_wire_bytes() {
        let msg = JoinRequest {
            payload: Some(join_request::Payload::ClientInit(ClientInit {
                join_method: Some("bound_keypair".into()),
                token_name: "t".into(),
                system_role: "Bot".into(),
                ..Default::default()
            })),
        };
        let mut want = vec![0x0a, 23]; // client_init = 1, 23 bytes follow
        want.extend([0x0a, 13]); // join_method = 1
        want.extend(b"bound_keypair");
        want.extend([0x12, 1, b't']); // token_name = 2
        want.extend([0x1a, 3]); // system_role = 3
        want.extend(b"Bot");
        assert_eq!(msg.encode_to_vec(), want);
        assert_eq!(JoinRequest::decode(want.as_slice()).unwrap(), msg);
    }

    #[test]
    fn user_certs_request_wire_bytes() {
        use crate::proto::UserCertsRequest;
        let msg = UserCertsRequest {
            username: "bot-a".into(),
            role_requests: vec!["r".into()],
            use_role_requests: true,
            ssh_public_key: b"k".to_vec(),
            ..Default::default()
        };
        let mut want = vec![0x12, 5]; // Username = 2
        want.extend(b"bot-a");
        want.extend([0x62, 1, b'r']); // RoleRequests = 12
        want.extend([0x70, 1]); // UseRoleRequests = 14 (varint)
        want.extend([0xb2, 0x01, 1, b'k']); // SSHPublicKey = 22 (two-byte tag)
        assert_eq!(msg.encode_to_vec(), want);
    }

    #[test]
    fn legacy_rotation_request_suite_is_a_varint() {
        use crate::proto::{
            RegisterUsingBoundKeypairMethodResponse, RegisterUsingBoundKeypairRotationRequest,
            register_using_bound_keypair_method_response::Response,
        };
        let msg = RegisterUsingBoundKeypairMethodResponse {
            response: Some(Response::Rotation(
                RegisterUsingBoundKeypairRotationRequest {
                    signature_algorithm_suite: SignatureAlgorithmSuite::BalancedV1.into(),
                },
            )),
        };
        // rotation = 3 (length-delimited), holding signature_algorithm_suite = 1 (varint 2).
        assert_eq!(msg.encode_to_vec(), [0x1a, 2, 0x08, 2]);
    }
}
