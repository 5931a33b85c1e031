//! What the bound-keypair handler needs of an RPC: a [`Peer`] that carries a challenge or a
//! rotation request to the client and brings back its answer, what the client sent
//! ([`JoinInput`]) and what a join returns ([`JoinOutput`]).

use std::time::SystemTime;

use keybound_teleport::suite::Suite;
use tonic::Status;

use crate::caller::Caller;
use crate::cluster::{Cluster, unix};
use crate::misbehave::{Misbehaviour, challenge_to_send, second_challenge};

/// Carries the server's half of the conversation to the client.
pub(crate) trait Peer {
    /// The cluster, whose misbehaviour the peer follows.
    fn cluster(&self) -> &Cluster;

    /// Sends one challenge (`public_key` as an `authorized_keys` line, the JSON `document`) and
    /// returns the client's compact JWS.
    async fn ask(&mut self, public_key: &str, document: &str) -> Result<Vec<u8>, Status>;

    /// Waits for the client's next message and returns the status that ends the stream.
    async fn wait_for_client(&mut self) -> Status;

    /// Challenges the client as the cluster's misbehaviour says (normally: [`ask`](Self::ask)
    /// once) and returns its solution.
    async fn challenge(&mut self, public_key: &str, document: &str) -> Result<Vec<u8>, Status> {
        if self.cluster().misbehaviour() == Some(Misbehaviour::Stall) {
            return Err(self.wait_for_client().await);
        }
        let (public_key, document) = challenge_to_send(
            self.cluster().misbehaviour(),
            unix(self.cluster().now()),
            public_key,
            document,
        );
        let solution = self.ask(&public_key, &document).await?;
        if self.cluster().misbehaviour() == Some(Misbehaviour::ChallengeTwice) {
            self.ask(&public_key, &second_challenge(&document)).await?;
            self.cluster().record_solution();
        }
        Ok(solution)
    }

    /// Asks the client for a new key under `suite`; returns its `authorized_keys` line.
    async fn rotate(&mut self, suite: Suite) -> Result<String, Status>;
}

/// What the client sent in its init message.
pub(crate) struct JoinInput {
    pub(crate) remote_addr: Option<String>,
    /// PKIX DER of the subject key.
    pub(crate) tls_public_key: Vec<u8>,
    /// SSH wire blob of the subject key.
    pub(crate) ssh_public_key: Vec<u8>,
    pub(crate) expires: Option<SystemTime>,
    /// Zeroized when the attempt ends.
    pub(crate) initial_join_secret: zeroize::Zeroizing<String>,
    pub(crate) previous_join_state: Vec<u8>,
    /// The bot identity the stream authenticated with, on Auth's own endpoint (a soft rejoin);
    /// `None` through the Proxy, which drops any authentication (`forwarded_by_proxy`).
    pub(crate) caller: Option<Caller>,
}

/// What a successful join returns.
pub(crate) struct JoinOutput {
    pub(crate) tls_cert: Vec<u8>,
    pub(crate) ssh_cert: Vec<u8>,
    pub(crate) tls_ca_certs: Vec<Vec<u8>>,
    pub(crate) ssh_ca_keys: Vec<Vec<u8>>,
    pub(crate) join_state: Vec<u8>,
    pub(crate) bound_public_key: String,
}
