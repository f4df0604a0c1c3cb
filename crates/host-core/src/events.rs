//! Lifecycle events, shaped as CloudEvents 1.0 with wasmCloud's type names
//! where one exists (`com.wasmcloud.lattice.actor_started`, ...), and our own
//! (`dev.wasmhost.process_exited`, ...) where wasmCloud has none.
//!
//! The host keeps the most recent events in memory for `ctl events` and
//! broadcasts new ones to `ctl events --follow`.

use std::{collections::VecDeque, sync::Mutex};

use serde_json::{json, Value};
use tokio::sync::broadcast;

const KEPT: usize = 2000;

pub struct Events {
    source: String,
    recent: Mutex<VecDeque<String>>,
    tx: broadcast::Sender<String>,
}

impl Events {
    pub fn new(host_id: String) -> Self {
        Self {
            source: host_id,
            recent: Mutex::new(VecDeque::new()),
            tx: broadcast::channel(1024).0,
        }
    }

    /// Records `kind` (`actor_started`, `process_exited`, ...) with `data`.
    pub fn publish(&self, kind: &str, data: Value) {
        let namespace = if WASMCLOUD_TYPES.contains(&kind) {
            "com.wasmcloud.lattice"
        } else {
            "dev.wasmhost"
        };
        let event = json!({
            "specversion": "1.0",
            "id": format!("{:032x}", rand::random::<u128>()),
            "source": self.source,
            "type": format!("{namespace}.{kind}"),
            "time": lattice::events::now_rfc3339(),
            "datacontenttype": "application/json",
            "data": data,
        })
        .to_string();
        tracing::debug!(target: "events", "{event}");
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.tx.send(event);
    }

    pub fn recent(&self) -> Vec<String> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }
}

/// Event kinds the wasmCloud 0.8x hosts publish under `com.wasmcloud.lattice`.
const WASMCLOUD_TYPES: &[&str] = &[
    "host_started",
    "host_stopped",
    "actor_started",
    "actor_stopped",
    "actor_scaled",
    "actor_updated",
    "provider_started",
    "provider_stopped",
    "provider_start_failed",
    "health_check_passed",
    "health_check_failed",
    "linkdef_set",
    "linkdef_deleted",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        let events = Events::new("NHOST".into());
        events.publish("actor_started", json!({"public_key": "M"}));
        events.publish("process_exited", json!({"name": "actor-runtime"}));
        let recent: Vec<Value> = events
            .recent()
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(recent[0]["type"], "com.wasmcloud.lattice.actor_started");
        assert_eq!(recent[1]["type"], "dev.wasmhost.process_exited");
        assert_eq!(recent[1]["specversion"], "1.0");
        assert_eq!(recent[1]["source"], "NHOST");
    }
}
