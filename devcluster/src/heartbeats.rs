//! `teleport.machineid.v1.BotInstanceService.SubmitHeartbeat`: what each bot instance says about
//! itself, kept per instance as Auth keeps it (`lib/auth/machineid/machineidv1/
//! bot_instance_service.go`): only a bot's own identity may submit, for its own instance; the
//! time recorded is the server's, whatever the bot sent. The heartbeats are logged, read by
//! tests ([`crate::DevCluster`]'s cluster, `heartbeats`) and listed by the admin socket
//! (`keybound dev-cluster bot-instances`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keybound_proto::teleport::machineid::v1 as machineid;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;

/// How the dev cluster answers heartbeats.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum HeartbeatService {
    /// Record them (Teleport 16+).
    #[default]
    Record,
    /// Answer Unimplemented, as an Auth without the service.
    Unimplemented,
    /// Fail each with Internal (a broken backend).
    Fail,
}

/// One heartbeat as recorded.
#[derive(Clone, Debug, Eq, PartialEq, Serialize)]
pub struct Heartbeat {
    /// The bot.
    pub bot_name: String,
    /// The bot instance (from the caller's certificate).
    pub instance_id: String,
    /// When the cluster recorded it (its own clock).
    #[serde(with = "humantime_serde_time")]
    pub recorded_at: SystemTime,
    /// The first after start-up.
    pub is_startup: bool,
    /// The bot's version.
    pub version: String,
    /// The bot's host name.
    pub hostname: String,
    /// How long the bot had been running.
    pub uptime: Duration,
    /// Its join method.
    pub join_method: String,
    /// Whether it ran with `--oneshot`.
    pub one_shot: bool,
    /// Go's GOARCH name of its host.
    pub architecture: String,
    /// Go's GOOS name of its host.
    pub os: String,
    /// `BotKind` (1: the tbot binary).
    pub kind: i32,
}

mod humantime_serde_time {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&keybound_teleport::time::format_time(*t))
    }
}

/// Every heartbeat received, oldest first.
#[derive(Default)]
pub(crate) struct Heartbeats(Mutex<Vec<Heartbeat>>);

impl Heartbeats {
    fn push(&self, heartbeat: Heartbeat) {
        self.0.lock().expect("heartbeat lock").push(heartbeat);
    }

    pub(crate) fn all(&self) -> Vec<Heartbeat> {
        self.0.lock().expect("heartbeat lock").clone()
    }
}

/// The service.
#[derive(Clone)]
pub(crate) struct BotInstanceApi(pub(crate) Arc<Cluster>);

#[tonic::async_trait]
impl machineid::bot_instance_service_server::BotInstanceService for BotInstanceApi {
    async fn submit_heartbeat(
        &self,
        request: Request<machineid::SubmitHeartbeatRequest>,
    ) -> Result<Response<machineid::SubmitHeartbeatResponse>, Status> {
        let cluster = &self.0;
        match cluster.config().heartbeats {
            HeartbeatService::Record => {}
            HeartbeatService::Unimplemented => {
                return Err(Status::unimplemented(
                    "unknown method SubmitHeartbeat for service teleport.machineid.v1.BotInstanceService",
                ));
            }
            HeartbeatService::Fail => return Err(Status::internal("backend unavailable")),
        }
        let caller = cluster.caller(&request)?;
        // Only a bot's own identity, not an output's role-impersonated one.
        let (Some(bot_name), Some(instance_id), None) = (
            caller.bot_name.clone(),
            caller.bot_instance_id.clone(),
            caller.impersonator.as_ref(),
        ) else {
            return Err(Status::permission_denied(
                "identity did not contain bot name or bot instance ID",
            ));
        };
        let beat = request
            .into_inner()
            .heartbeat
            .ok_or_else(|| Status::invalid_argument("heartbeat: must be non-nil"))?;
        let uptime = beat.uptime.unwrap_or_default();
        let heartbeat = Heartbeat {
            bot_name,
            instance_id,
            recorded_at: cluster.now(),
            is_startup: beat.is_startup,
            version: beat.version,
            hostname: beat.hostname,
            uptime: Duration::new(
                u64::try_from(uptime.seconds).unwrap_or(0),
                u32::try_from(uptime.nanos).unwrap_or(0),
            ),
            join_method: beat.join_method,
            one_shot: beat.one_shot,
            architecture: beat.architecture,
            os: beat.os,
            kind: beat.kind,
        };
        tracing::info!(
            bot = %keybound_teleport::text::name(&heartbeat.bot_name),
            instance = %keybound_teleport::text::name(&heartbeat.instance_id),
            startup = heartbeat.is_startup,
            one_shot = heartbeat.one_shot,
            version = %keybound_teleport::text::name(&heartbeat.version),
            hostname = %keybound_teleport::text::name(&heartbeat.hostname),
            "bot instance heartbeat"
        );
        cluster.heartbeats.push(heartbeat);
        Ok(Response::new(machineid::SubmitHeartbeatResponse {}))
    }
}

impl Cluster {
    /// Every heartbeat received, oldest first.
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.heartbeats.all()
    }
}
