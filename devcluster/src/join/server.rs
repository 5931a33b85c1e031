//! What both join RPCs share, as `lib/join/server.go` does it before and around a join method's
//! handler: the client version check, the token checks, the stream bounded by the join timeout,
//! and the statuses that end a stream early.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use crate::cluster::Cluster;
use crate::tokens::Token;

/// `joinRequestTimeout`.
const JOIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub(super) fn remote_addr<T>(request: &Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<SocketAddr>()
        .map(|a| a.ip().to_string())
}

/// Runs `work` as the server side of one stream, bounded by the join timeout, and returns the
/// response stream.
pub(super) fn spawn_stream<T, F>(
    work: impl FnOnce(mpsc::Sender<Result<T, Status>>) -> F,
) -> Outbound<T>
where
    T: Send + 'static,
    F: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let fut = work(tx.clone());
    tokio::spawn(async move {
        let result = match tokio::time::timeout(JOIN_REQUEST_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(Status::resource_exhausted(
                "join attempt timed out after 1m0s, terminating the stream on the server",
            )),
        };
        if let Err(status) = result {
            tracing::info!(code = ?status.code(), message = status.message(), "join failed");
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

pub(super) fn drop_mid_join() -> Status {
    Status::unavailable("dev cluster: dropping the stream mid-join, as asked")
}

/// [`Misbehaviour::Stall`]: nothing was sent; whatever the client did next ends the stream.
pub(super) fn stall<T>(received: Result<T, Status>) -> Status {
    received.err().unwrap_or_else(|| {
        Status::invalid_argument("dev cluster: stalled, and the client spoke out of turn")
    })
}

pub(super) fn client_closed() -> Status {
    Status::cancelled("the client closed the join stream")
}

impl Cluster {
    /// `ValidateToken`, `checkJoinMethod` and `TokenAllowsRole` (`lib/join/server.go`).
    pub(super) fn check_token(
        &self,
        name: &str,
        join_method: Option<&str>,
        role: &str,
    ) -> Result<Token, Status> {
        let token = self
            .token(name)
            .filter(|t| t.expires.is_none_or(|e| e > self.now()))
            .ok_or_else(|| Status::permission_denied("token expired or not found"))?;
        let token_method = if token.join_method.is_empty() {
            "token"
        } else {
            token.join_method.as_str()
        };
        if let Some(requested) = join_method
            && requested != token_method
        {
            return Err(Status::invalid_argument(format!(
                "client requested join method {requested}, provision token only supports method {token_method}"
            )));
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
    pub(super) fn check_client_version(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), Status> {
        let values: Vec<_> = metadata.get_all("version").iter().collect();
        let Some(value) = values.first() else {
            return Ok(());
        };
        let server = semver::Version::parse(&self.config().server_version)
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
}
