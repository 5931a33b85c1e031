//! Bot instance heartbeats: what the bot says about itself to the cluster, which `tctl bots
//! instances` and the web UI show (`BotInstanceService.SubmitHeartbeat`).
//!
//! As tbot's heartbeat service (`lib/tbot/internal/heartbeat/service.go`, wired in
//! `lib/tbot/tbot.go` `buildHeartbeatService`): sent on the bot's own identity (not an
//! impersonated one); in daemon mode once after start-up (`is_startup`) and then every 30
//! minutes, in `--oneshot` once (`is_startup` and `one_shot`). A cluster without the RPC
//! (Unimplemented: older Auth) is passed over without a word, and no heartbeat failure ever
//! fails a renewal: it is logged, and the next one is tried at its time.
//!
//! The agent sends it over the connection to Auth it keeps between renewals, as tbot submits it
//! on its bot client's connection (`lib/tbot/tbot.go`: `NewBotInstanceServiceClient(
//! b.botIdentitySvc.GetClient().GetConnection())`), and opens one of its own only when it keeps
//! none for the identity held (no output writes files) or the kept one has closed.

use std::time::{Duration, Instant, SystemTime};

use keybound_proto::teleport::machineid::v1 as machineid;
use tracing::{debug, info, warn};

use crate::auth::AuthClient;
use crate::identity::Identity;
use crate::renewal::Prepared;
use crate::storage::Held;

/// tbot's heartbeat interval in daemon mode.
pub const INTERVAL: Duration = Duration::from_secs(30 * 60);

/// What is reported, from the process's start.
#[derive(Clone, Debug)]
pub struct Heartbeats {
    started: Instant,
    one_shot: bool,
}

impl Heartbeats {
    /// Heartbeats of a process that starts now, in one-shot mode or not.
    pub fn new(one_shot: bool) -> Self {
        Self {
            started: Instant::now(),
            one_shot,
        }
    }

    /// The heartbeat message (`BotInstanceStatusHeartbeat`, fields 1–9 and 12).
    pub fn message(&self, is_startup: bool) -> machineid::BotInstanceStatusHeartbeat {
        let uptime = self.started.elapsed();
        machineid::BotInstanceStatusHeartbeat {
            recorded_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            is_startup,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: hostname(),
            uptime: Some(prost_types::Duration {
                seconds: i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(uptime.subsec_nanos()).unwrap_or(0),
            }),
            join_method: "bound_keypair".to_owned(),
            one_shot: self.one_shot,
            architecture: go_arch(std::env::consts::ARCH).to_owned(),
            os: std::env::consts::OS.to_owned(),
            kind: machineid::BotKind::TbotBinary as i32,
        }
    }

    /// Sends one heartbeat with `identity`, over `over` (a connection made with it, the outputs'
    /// or the agent's kept one, which saves a connection's TCP and TLS round trips) when there is
    /// one, else (or when it has gone) over a new connection; never fails, only logs.
    pub async fn send(
        &self,
        p: &Prepared,
        identity: &Identity,
        over: Option<AuthClient>,
        is_startup: bool,
    ) {
        match submit(p, identity, over, self.message(is_startup)).await {
            Ok(()) => debug!(
                is_startup,
                one_shot = self.one_shot,
                "sent the bot instance heartbeat"
            ),
            Err(Skipped::Unimplemented) => {
                debug!("the cluster has no BotInstanceService.SubmitHeartbeat; no heartbeat sent");
            }
            Err(Skipped::Failed(error)) => warn!(
                "the bot instance heartbeat was not sent: {error}; renewals go on, the next \
                 heartbeat is in {}",
                humantime::format_duration(INTERVAL)
            ),
        }
    }

    /// Daemon mode: the start-up heartbeat now, then one every [`INTERVAL`], each with the
    /// identity held at the time (none held: that one is skipped), over the agent's kept
    /// connection with it when there is one. Runs until dropped.
    pub async fn run(self, p: std::sync::Arc<Prepared>, held: std::sync::Arc<Held>) {
        let interval = interval_from_env();
        let mut is_startup = true;
        loop {
            let (identity, kept) = held.identity_and_connection().await;
            if let Some(identity) = identity {
                self.send(&p, &identity, kept, is_startup).await;
                is_startup = false;
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// [`INTERVAL`], or `KEYBOUND_HEARTBEAT_INTERVAL` (a duration: for tests, which cannot wait
/// half an hour; a value that is not a duration is said and ignored).
fn interval_from_env() -> Duration {
    let Ok(text) = std::env::var("KEYBOUND_HEARTBEAT_INTERVAL") else {
        return INTERVAL;
    };
    crate::values::parse_duration(&text).unwrap_or_else(|e| {
        warn!("KEYBOUND_HEARTBEAT_INTERVAL: {e}; heartbeats go every 30m");
        INTERVAL
    })
}

/// Why no heartbeat went.
enum Skipped {
    /// The cluster does not have the RPC.
    Unimplemented,
    /// Anything else, said in a line.
    Failed(String),
}

/// Submits `heartbeat` over `kept`, or over a new connection with `identity` when there is none
/// or it has closed (Auth restarted, or dropped it while idle): a status tonic made from a local
/// error, as the rejoin on a kept connection tells one (`crate::join`). What the cluster
/// answered there, or a deadline passed, is the heartbeat's result.
async fn submit(
    p: &Prepared,
    identity: &Identity,
    kept: Option<AuthClient>,
    heartbeat: machineid::BotInstanceStatusHeartbeat,
) -> Result<(), Skipped> {
    if let Some(kept) = kept {
        match submit_on(&kept, heartbeat.clone()).await {
            Err(status) if std::error::Error::source(&status).is_some() => {
                debug!(error = %crate::untrusted::message(status.message()), "the kept connection to Auth failed; sending the heartbeat on a new one");
            }
            result => return answered(result),
        }
    }
    let auth = AuthClient::connect(&p.auth_route, identity)
        .await
        .map_err(|e| Skipped::Failed(format!("{e:#}")))?
        .with_deadline(p.rpc_timeout);
    answered(submit_on(&auth, heartbeat).await)
}

async fn submit_on(
    auth: &AuthClient,
    heartbeat: machineid::BotInstanceStatusHeartbeat,
) -> Result<(), tonic::Status> {
    let mut client =
        machineid::bot_instance_service_client::BotInstanceServiceClient::new(auth.channel());
    let request = auth.request(machineid::SubmitHeartbeatRequest {
        heartbeat: Some(heartbeat),
    });
    auth.call("SubmitHeartbeat", client.submit_heartbeat(request))
        .await
        .map(|_| ())
}

/// How the cluster's answer to a heartbeat reads.
fn answered(result: Result<(), tonic::Status>) -> Result<(), Skipped> {
    match result {
        Ok(()) => {
            info!("bot instance heartbeat sent");
            Ok(())
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => Err(Skipped::Unimplemented),
        Err(status) => Err(Skipped::Failed(format!(
            "{:?}: {}",
            status.code(),
            crate::untrusted::message(status.message())
        ))),
    }
}

/// The host's name as Go's `os.Hostname` reads it on Linux (`/proc/sys/kernel/hostname`), empty
/// when it cannot be read, as tbot sends it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Go's `runtime.GOARCH` name for a Rust target architecture.
fn go_arch(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_has_tbots_fields() {
        let beat = Heartbeats::new(true).message(true);
        assert!(beat.is_startup && beat.one_shot);
        assert_eq!(beat.join_method, "bound_keypair");
        assert_eq!(beat.os, "linux");
        assert_eq!(beat.kind, 1);
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("riscv64"), "riscv64");
    }
}
