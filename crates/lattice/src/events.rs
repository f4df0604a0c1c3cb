//! CloudEvents 1.0 as wasmCloud 0.82 publishes them on `wasmbus.evt.{lattice}`
//! and `wasmbus.evt.{lattice}.{name}`, and the payloads of their types.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ctl::{Annotations, Labels};

/// The CloudEvents `type` of wasmCloud's event `name`.
pub fn event_type(name: &str) -> String {
    format!("com.wasmcloud.lattice.{name}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub time: String,
    pub datacontenttype: String,
    pub data: Value,
}

impl CloudEvent {
    /// Event `name` (`actors_started`, ...) from host `source`, now.
    pub fn new(source: &str, name: &str, data: Value) -> Self {
        Self {
            specversion: "1.0".into(),
            id: crate::uuid_v4(),
            source: source.to_owned(),
            ty: event_type(name),
            time: now_rfc3339(),
            datacontenttype: "application/json".into(),
            data,
        }
    }

    /// The event's name: its type without wasmCloud's namespace.
    pub fn name(&self) -> Option<&str> {
        self.ty.strip_prefix("com.wasmcloud.lattice.")
    }
}

/// The claims summary of `actors_started` and `actor_scaled`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorEventClaims {
    pub call_alias: String,
    pub caps: Vec<String>,
    pub issuer: String,
    pub tags: Vec<String>,
    pub name: String,
    pub version: String,
    pub revision: i32,
    pub not_before_human: String,
    pub expires_human: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorsStarted {
    pub public_key: String,
    pub image_ref: String,
    pub annotations: Annotations,
    pub host_id: String,
    pub claims: ActorEventClaims,
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorsStopped {
    pub public_key: String,
    pub annotations: Annotations,
    pub host_id: String,
    pub count: u32,
    pub remaining: u32,
    pub image_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorScaled {
    pub public_key: String,
    pub claims: ActorEventClaims,
    pub annotations: Annotations,
    pub host_id: String,
    pub image_ref: String,
    pub max_instances: u32,
}

/// `actors_start_failed` and `actor_scale_failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorFailed {
    pub public_key: String,
    pub annotations: Annotations,
    pub host_id: String,
    pub image_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderEventClaims {
    pub issuer: String,
    pub tags: Option<Vec<String>>,
    pub name: String,
    pub version: String,
    pub not_before_human: String,
    pub expires_human: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStarted {
    pub host_id: String,
    pub public_key: String,
    pub image_ref: String,
    pub link_name: String,
    pub contract_id: String,
    pub instance_id: String,
    pub annotations: Annotations,
    pub claims: ProviderEventClaims,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStartFailed {
    pub provider_ref: String,
    pub link_name: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStopped {
    pub host_id: String,
    pub public_key: String,
    pub link_name: String,
    pub contract_id: String,
    pub instance_id: String,
    pub annotations: Annotations,
    pub reason: String,
}

/// `health_check_passed`, `health_check_failed`, `health_check_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub public_key: String,
    pub link_name: String,
    pub contract_id: String,
}

/// `linkdef_set` and `linkdef_deleted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkdefEvent {
    pub id: String,
    pub actor_id: String,
    pub provider_id: String,
    pub link_name: String,
    pub contract_id: String,
    pub values: BTreeMap<String, String>,
}

/// `config_set` and `config_deleted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEvent {
    pub entity_id: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStarted {
    pub friendly_name: String,
    pub labels: Labels,
    pub uptime_seconds: u64,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStopped {
    pub labels: Labels,
}

/// An uptime as 0.82 shows it (`humantime` without sub-seconds):
/// `1day 2h 3m 4s`, `0s` for none.
pub fn uptime_human(seconds: u64) -> String {
    if seconds == 0 {
        return "0s".into();
    }
    let units = [
        (365 * 86_400 + 20_952, "year", "years"),
        (30 * 86_400 + 37_746, "month", "months"),
        (86_400, "day", "days"),
        (3600, "h", "h"),
        (60, "m", "m"),
        (1, "s", "s"),
    ];
    let mut rest = seconds;
    let mut parts = Vec::new();
    for (size, one, many) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            parts.push(format!("{n}{}", if n == 1 { one } else { many }));
        }
    }
    parts.join(" ")
}

/// Now, in RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_millis())
}

/// UTC time as RFC 3339 with milliseconds, without a date crate.
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_cloudevents_of_wasmclouds_types() {
        let event = CloudEvent::new(
            "NH",
            "host_stopped",
            serde_json::to_value(HostStopped::default()).unwrap(),
        );
        let json: Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "com.wasmcloud.lattice.host_stopped");
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"], serde_json::json!({"labels": {}}));
        let back: CloudEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back.name(), Some("host_stopped"));
    }

    #[test]
    fn payloads_match_0_82() {
        let linkdef: LinkdefEvent = serde_json::from_str(
            r#"{"id":"AB","actor_id":"MA","provider_id":"VP","link_name":"default","contract_id":"wasmcloud:keyvalue","values":{"URL":"x"}}"#,
        )
        .unwrap();
        assert_eq!(linkdef.values["URL"], "x");
        let claims = serde_json::to_value(ProviderEventClaims::default()).unwrap();
        assert_eq!(claims["tags"], Value::Null);
    }

    #[test]
    fn times_and_uptimes() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_000_000, 5), "2026-11-30T00:53:20.005Z");
        assert_eq!(uptime_human(0), "0s");
        assert_eq!(uptime_human(61), "1m 1s");
        assert_eq!(uptime_human(90_061), "1day 1h 1m 1s");
    }
}
