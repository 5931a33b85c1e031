//! The diagnostics endpoint (`diag_addr`): tbot's `/livez`, `/readyz` and `/readyz/{service}`
//! (`lib/tbot/internal/diagnostics/service.go`, [`super::readyz`]), keybound's `/healthz` (503
//! once the agent halted) and `/metrics`, bounded so that no client can hold the agent: a cap on
//! connections, header and lifetime deadlines, and back-off on accept errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
    info!(addr = %listener.local_addr().map_or(addr, |a| a), "diagnostics listening (/livez, /readyz, /readyz/{{service}}, /healthz, /metrics)");
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
    let (code, content_type, body) = answer(status, path);
    hyper::Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is well-formed")
}

/// The answer to a request for `path`: its status code, content type and body.
fn answer(status: &Status, path: &str) -> (u16, &'static str, String) {
    let respond = |code: u16, content_type: &'static str, body: String| (code, content_type, body);
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
        // tbot answers liveness whatever its services do (a halted agent must not be restarted
        // into presenting a refused PIN again).
        "/livez" => respond(200, "text/plain; charset=utf-8", "OK".to_owned()),
        "/readyz" => {
            let (code, body) = status.readyz();
            respond(code, "application/json", body)
        }
        "/metrics" => respond(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            status.metrics.encode(),
        ),
        _ => match path.strip_prefix("/readyz/") {
            Some(name) => {
                let name = percent_decoded(name).unwrap_or_else(|| name.to_owned());
                let (code, body) = status.readyz_of(&name);
                respond(code, "application/json", body)
            }
            None => respond(
                404,
                "text/plain",
                "not found: try /livez, /readyz, /readyz/{service}, /healthz or /metrics\n"
                    .to_owned(),
            ),
        },
    }
}

/// A path segment with its `%XX` escapes decoded (a service's name may hold spaces and `/`), or
/// `None` when an escape is malformed or the result is not UTF-8.
fn percent_decoded(segment: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(segment.len());
    let mut rest = segment.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::agent::schedule::Outcome;
    use crate::agent::{IDENTITY, RENEWAL_RETRY_LIMIT};
    use crate::renewal::Report as _;
    use crate::{ExitKind, Failure};

    fn body(status: &Status, path: &str) -> (u16, String) {
        let (code, _, body) = answer(status, path);
        (code, body)
    }

    #[test]
    fn readiness_follows_the_identity() {
        let status = Status::new();
        status.add_service(IDENTITY);
        let (code, text) = body(&status, "/readyz");
        assert_eq!(code, 503, "initializing is not ready");
        assert!(text.contains("\"initializing\""), "{text}");
        assert_eq!(body(&status, "/livez"), (200, "OK".to_owned()));
        assert_eq!(diag(&status, "/healthz").status(), 200);

        status.record(
            &Outcome::Renewed(SystemTime::now() + Duration::from_secs(60)),
            "",
        );
        status.identity(Ok(()));
        assert_eq!(diag(&status, "/readyz").status(), 200);
        assert_eq!(diag(&status, "/readyz/identity").status(), 200);

        status.record(
            &Outcome::Renewed(SystemTime::now() - Duration::from_secs(1)),
            "",
        );
        let (code, text) = body(&status, "/readyz/identity");
        assert_eq!(code, 503, "an expired identity is not ready");
        assert!(text.contains("the bot identity expired at"), "{text}");

        // A dropped identity (the cluster no longer knew it) is not ready either.
        status.follow(None);
        let (code, text) = body(&status, "/readyz/identity");
        assert_eq!(code, 503);
        assert!(
            text.contains("keybound holds no valid bot identity"),
            "{text}"
        );

        assert_eq!(diag(&status, "/readyz/heartbeat").status(), 404);
        assert_eq!(diag(&status, "/nope").status(), 404);
    }

    #[test]
    fn the_identity_turns_unhealthy_as_tbots_does() {
        let status = Status::new();
        status.add_service(IDENTITY);
        status.follow(Some(SystemTime::now() + Duration::from_secs(3600)));
        status.identity(Ok(()));
        let unreachable =
            Failure::new(ExitKind::Unreachable, anyhow::anyhow!("cannot reach proxy"));
        for _ in 1..RENEWAL_RETRY_LIMIT {
            status.identity(Err(&unreachable));
            assert_eq!(
                diag(&status, "/readyz").status(),
                200,
                "retried within the limit, on a valid identity"
            );
        }
        status.identity(Err(&unreachable));
        let (code, text) = body(&status, "/readyz/identity");
        assert_eq!(code, 503);
        assert!(text.contains("cannot reach proxy"), "{text}");

        status.identity(Ok(()));
        assert_eq!(diag(&status, "/readyz").status(), 200);
        let rejected = Failure::new(
            ExitKind::Rejected,
            anyhow::anyhow!("token expired or not found"),
        );
        status.identity(Err(&rejected));
        assert_eq!(diag(&status, "/readyz").status(), 503, "a refusal at once");
    }

    #[test]
    fn a_service_name_may_be_percent_encoded() {
        let status = Status::new();
        let name = "identity-output (directory: /var/lib/out)";
        status.add_service(name);
        status.output(name, Ok(()));
        let (code, text) = body(
            &status,
            "/readyz/identity-output%20(directory:%20%2Fvar%2Flib%2Fout)",
        );
        assert_eq!(code, 200, "{text}");
        assert_eq!(percent_decoded("a%2"), None);
        assert_eq!(percent_decoded("%zz"), None);
        assert_eq!(
            percent_decoded("%C3%A9t%C3%A9").as_deref(),
            Some("\u{e9}t\u{e9}")
        );
    }
}
