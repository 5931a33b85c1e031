//! tbot's service statuses and the JSON its diagnostics service serves for them
//! (`lib/tbot/readyz`, `lib/tbot/internal/diagnostics/service.go`; see
//! `docs/teleport-source-notes.md`, "Health endpoints and start-up").
//!
//! Each service (keybound's: the identity renewal, `identity`, and each output that writes
//! files, by [`OutputConfig::service_name`](crate::output::OutputConfig::service_name)) is
//! `initializing` until it first reports, then `healthy` or `unhealthy` (with a reason) after
//! each attempt. `/readyz` answers `{"status", "services": {name: {"status", "reason",
//! "updated_at"}}}`, 200 when every service is healthy and 503 otherwise; `/readyz/{service}`
//! answers one service's entry with the same codes, or 404 and `{"error": "Service named \"x\"
//! not found."}`. Bodies are indented by two spaces and keys come in Go's order (a struct's
//! fields as declared, a map's sorted), as `json.MarshalIndent` writes them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

/// The identity renewal's name among tbot's services (`lib/tbot/bot/bot.go`:
/// `statusRegistry.AddService("internal/identity", "identity")`).
pub const IDENTITY: &str = "identity";

/// A service's health, in tbot's words (`lib/tbot/readyz/status.go`).
#[derive(Clone, Copy, Debug, Eq, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Health {
    /// No report yet.
    Initializing,
    /// Its last attempt worked.
    Healthy,
    /// Its last attempt failed.
    Unhealthy,
}

impl Health {
    /// The HTTP status that answers for it: 200 when healthy, else 503.
    pub(super) fn http_code(self) -> u16 {
        if self == Self::Healthy { 200 } else { 503 }
    }
}

/// One service's entry (tbot's `ServiceStatus`).
#[derive(Clone, Debug, Eq, PartialEq, Serialize)]
pub(super) struct ServiceStatus {
    /// Its health.
    pub(super) status: Health,
    /// Why, when it is not healthy (left out when empty, as tbot's `omitempty`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(super) reason: String,
    /// When it last reported (`null` before its first report).
    #[serde(serialize_with = "go_time")]
    pub(super) updated_at: Option<SystemTime>,
}

impl ServiceStatus {
    /// A status reported now.
    pub(super) fn now(status: Health, reason: String) -> Self {
        Self {
            status,
            reason,
            updated_at: Some(SystemTime::now()),
        }
    }
}

/// The services and their last reports.
#[derive(Default)]
pub(super) struct Registry {
    services: Mutex<BTreeMap<String, ServiceStatus>>,
}

impl Registry {
    /// Adds a service, `initializing` until it reports.
    pub(super) fn add(&self, name: &str) {
        self.lock()
            .entry(name.to_owned())
            .or_insert_with(|| ServiceStatus {
                status: Health::Initializing,
                reason: String::new(),
                updated_at: None,
            });
    }

    /// A service's report (a service not added is ignored).
    pub(super) fn report(&self, name: &str, status: Health, reason: String) {
        if let Some(entry) = self.lock().get_mut(name) {
            *entry = ServiceStatus::now(status, reason);
        }
    }

    /// Every service's last report.
    pub(super) fn all(&self) -> BTreeMap<String, ServiceStatus> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ServiceStatus>> {
        self.services.lock().expect("readyz lock")
    }
}

/// `/readyz`: the overall status (healthy when every service is) with every service's entry,
/// and its HTTP code.
pub(super) fn overall(services: &BTreeMap<String, ServiceStatus>) -> (u16, String) {
    #[derive(Serialize)]
    struct Overall<'a> {
        status: Health,
        services: &'a BTreeMap<String, ServiceStatus>,
    }
    let status = if services.values().all(|s| s.status == Health::Healthy) {
        Health::Healthy
    } else {
        Health::Unhealthy
    };
    (status.http_code(), pretty(&Overall { status, services }))
}

/// `/readyz/{service}`: `name`'s entry and its HTTP code, or tbot's 404 answer.
pub(super) fn one(name: &str, status: Option<&ServiceStatus>) -> (u16, String) {
    match status {
        Some(status) => (status.status.http_code(), pretty(status)),
        None => (
            404,
            pretty(&serde_json::json!({ "error": format!("Service named {name:?} not found.") })),
        ),
    }
}

fn pretty(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).expect("a status serializes")
}

/// A time as Go's `encoding/json` writes a `time.Time` (RFC 3339 with the fraction's trailing
/// zeros left out), in UTC; `null` for none.
fn go_time<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        None => s.serialize_none(),
        Some(t) => {
            let text = humantime::format_rfc3339_nanos(*t).to_string();
            let text = match text.trim_end_matches('Z').split_once('.') {
                Some((seconds, fraction)) => match fraction.trim_end_matches('0') {
                    "" => format!("{seconds}Z"),
                    fraction => format!("{seconds}.{fraction}Z"),
                },
                None => text,
            };
            s.serialize_str(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bodies_are_tbots() {
        let registry = Registry::default();
        registry.add(IDENTITY);
        registry.add("identity-output (directory: /out)");
        let (code, body) = overall(&registry.all());
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "{\n  \"status\": \"unhealthy\",\n  \"services\": {\n    \"identity\": {\n      \
             \"status\": \"initializing\",\n      \"updated_at\": null\n    },\n    \
             \"identity-output (directory: /out)\": {\n      \"status\": \"initializing\",\n      \
             \"updated_at\": null\n    }\n  }\n}"
        );

        registry.report(IDENTITY, Health::Healthy, String::new());
        registry.report(
            "identity-output (directory: /out)",
            Health::Unhealthy,
            "roles refused".into(),
        );
        let all = registry.all();
        assert_eq!(overall(&all).0, 503);
        let (code, body) = one(
            "identity-output (directory: /out)",
            all.get("identity-output (directory: /out)"),
        );
        assert_eq!(code, 503);
        let entry: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(entry["status"], "unhealthy");
        assert_eq!(entry["reason"], "roles refused");
        assert!(entry["updated_at"].as_str().unwrap().ends_with('Z'));

        registry.report(
            "identity-output (directory: /out)",
            Health::Healthy,
            String::new(),
        );
        let all = registry.all();
        assert_eq!(overall(&all).0, 200);
        let (code, body) = one(IDENTITY, all.get(IDENTITY));
        assert_eq!(code, 200);
        assert!(!body.contains("reason"), "{body}");

        assert_eq!(
            one("heartbeat", None),
            (
                404,
                "{\n  \"error\": \"Service named \\\"heartbeat\\\" not found.\"\n}".to_owned()
            )
        );
    }

    #[test]
    fn times_read_as_go_writes_them() {
        let at = |nanos| {
            let status = ServiceStatus {
                status: Health::Healthy,
                reason: String::new(),
                updated_at: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, nanos)),
            };
            serde_json::to_value(&status).unwrap()["updated_at"].clone()
        };
        assert_eq!(at(0), "2023-11-14T22:13:20Z");
        assert_eq!(at(120_000_000), "2023-11-14T22:13:20.12Z");
        assert_eq!(at(1), "2023-11-14T22:13:20.000000001Z");
    }
}
