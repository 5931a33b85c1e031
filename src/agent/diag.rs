//! The diagnostics endpoint (`diag_addr`): `/healthz`, `/readyz` and `/metrics`, bounded so
//! that no client can hold the agent: a cap on connections, header and lifetime deadlines, and
//! back-off on accept errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use super::status::Status;
use crate::{ExitKind, Failure};

/// How long a client has to send a request's headers, from the connection (or the previous
/// response) on: an idle or slow-header connection is closed after this.
pub const DIAG_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a diagnostics connection lives, whatever it does (a client that sends its
/// headers in time but never reads the answer, say).
pub const DIAG_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The most diagnostics connections open at once, when the file-descriptor limit allows.
pub const DIAG_MAX_CONNECTIONS: usize = 64;

/// How many diagnostics connections may be open at once: [`DIAG_MAX_CONNECTIONS`], but never
/// more than a quarter of the open-file limit, so that the endpoint cannot take the descriptors
/// a renewal needs (its sockets, the files it writes).
pub fn diag_connection_cap() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let quarter = limit.map_or(usize::MAX, |l| usize::try_from(l / 4).unwrap_or(usize::MAX));
    quarter.clamp(1, DIAG_MAX_CONNECTIONS)
}

/// Listens on `addr` and serves the diagnostics endpoint on its own task.
pub(super) async fn listen(addr: &str, status: Arc<Status>) -> Result<(), Failure> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        Failure::new(
            ExitKind::Config,
            anyhow::anyhow!("diag_addr {addr:?} is not HOST:PORT: {e}"),
        )
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::new(
            ExitKind::Config,
            anyhow::anyhow!("cannot listen on diag_addr {addr}: {e}"),
        )
    })?;
    info!(addr = %listener.local_addr().map_or(addr, |a| a), "diagnostics listening (/healthz, /readyz, /metrics)");
    tokio::spawn(serve_diag(listener, status));
    Ok(())
}

/// Serves the diagnostics endpoint. Connections are capped (a new one is accepted only once a
/// slot is free; until then it waits in the kernel's backlog, holding no descriptor of ours),
/// each is bounded in time, and a failing `accept` (out of descriptors, say) is retried after a
/// growing pause instead of at once, as Go's `http.Server.Serve` does (5 ms doubling to 1 s):
/// the endpoint can neither spin nor starve the renewals that share its runtime.
pub(super) async fn serve_diag(listener: tokio::net::TcpListener, status: Arc<Status>) {
    let cap = diag_connection_cap();
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let mut pause = Duration::ZERO;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                pause = Duration::ZERO;
                tcp
            }
            Err(e) => {
                pause = (pause * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if pause == Duration::from_millis(5) {
                    warn!(error = %e, "diagnostics: cannot accept a connection; pausing the listener");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let status = status.clone();
                    async move { Ok::<_, std::convert::Infallible>(diag(&status, request.uri().path())) }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(DIAG_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(DIAG_CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

/// Answers one diagnostics request.
pub fn diag(status: &Status, path: &str) -> hyper::Response<Full<Bytes>> {
    let respond = |code: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is well-formed")
    };
    match path {
        "/healthz" => {
            if status.healthy.load(Ordering::Relaxed) {
                respond(200, "text/plain", "ok\n".to_owned())
            } else {
                let why = status
                    .halted_because
                    .lock()
                    .expect("status lock")
                    .clone()
                    .unwrap_or_default();
                respond(503, "text/plain", format!("unhealthy: {why}\n"))
            }
        }
        "/readyz" => {
            let expiry = status.expiry();
            let now = SystemTime::now();
            let ready = expiry.is_some_and(|e| e > now);
            let body = serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "expires": expiry.map(keybound_teleport::time::format_time),
                "expires_in_seconds": expiry.map(|e| e.duration_since(now).map_or(0, |d| d.as_secs())),
                "healthy": status.healthy.load(Ordering::Relaxed),
            });
            respond(
                if ready { 200 } else { 503 },
                "application/json",
                format!("{body}\n"),
            )
        }
        "/metrics" => respond(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            status.metrics.encode(),
        ),
        _ => respond(
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::schedule::Outcome;

    #[test]
    fn readiness_follows_the_identity() {
        let status = Status::new();
        assert_eq!(diag(&status, "/readyz").status(), 503);
        assert_eq!(diag(&status, "/healthz").status(), 200);
        status.record(
            &Outcome::Renewed(SystemTime::now() + Duration::from_secs(60)),
            "",
        );
        assert_eq!(diag(&status, "/readyz").status(), 200);
        status.record(
            &Outcome::Renewed(SystemTime::now() - Duration::from_secs(1)),
            "",
        );
        assert_eq!(
            diag(&status, "/readyz").status(),
            503,
            "an expired identity is not ready"
        );
        assert_eq!(diag(&status, "/nope").status(), 404);
    }
}
