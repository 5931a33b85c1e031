//! Bot instance heartbeats as the dev cluster keeps them (the service that receives them is
//! `crate::bot_instances`): what each bot instance says about itself, kept per instance as Auth
//! keeps it (`lib/auth/machineid/machineidv1/
//! bot_instance_service.go`): only a bot's own identity may submit, for its own instance; the
//! time recorded is the server's, whatever the bot sent. The heartbeats are logged, read by
//! tests ([`crate::DevCluster`]'s cluster, `heartbeats`) and listed by the admin socket
//! (`keybound dev-cluster bot-instances`).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

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
    pub(crate) fn push(&self, heartbeat: Heartbeat) {
        self.0.lock().expect("heartbeat lock").push(heartbeat);
    }

    pub(crate) fn all(&self) -> Vec<Heartbeat> {
        self.0.lock().expect("heartbeat lock").clone()
    }
}
