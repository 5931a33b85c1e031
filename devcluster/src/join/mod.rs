//! The join: the two gRPC join services over one bound-keypair handler, as Teleport's Auth
//! runs them.
//!
//! From the bottom up:
//!
//! * `peer`: what the handler needs of an RPC (a `Peer` carrying challenges and rotation
//!   requests to the client), what the client sent and what a join returns;
//! * `challenge`: the challenge document and the checks of the client's answer;
//! * `join_state`: the signed join state a recovering client presents;
//! * `bound_keypair`: `HandleBoundKeypairJoin`, step by step, and `audit`: its audit events
//!   as log lines;
//! * `server`: what both RPCs share (client version and token checks, the stream and its
//!   timeout);
//! * `v1` (`teleport.join.v1.JoinService/Join`) and `legacy`
//!   (`proto.JoinService/RegisterUsingBoundKeypairMethod`): the RPCs, each a `Peer`.

mod audit;
mod bound_keypair;
mod challenge;
mod join_state;
mod legacy;
mod peer;
mod server;
mod v1;

pub(crate) use legacy::JoinLegacy;
pub(crate) use v1::JoinV1;
