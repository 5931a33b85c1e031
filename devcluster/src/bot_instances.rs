//! `teleport.machineid.v1.BotInstanceService.SubmitHeartbeat`: a bot instance's heartbeat,
//! checked and recorded ([`crate::heartbeats`]).

use std::sync::Arc;
use std::time::Duration;

use keybound_proto::teleport::machineid::v1 as machineid;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::heartbeats::{Heartbeat, HeartbeatService};

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
