//! Each running provider's health, asked every `health_interval`; a change
//! is logged and published as an event.

use std::{sync::Arc, time::Duration};

use wire::provider::ToProvider;

use super::{ProviderConn, ProviderId, ProviderSupervisor};

/// A provider has this long to answer a health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl ProviderSupervisor {
    pub(crate) async fn health_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.settings.health_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let conns: Vec<(ProviderId, Arc<ProviderConn>)> = self
                .providers
                .lock()
                .iter()
                .filter_map(|(id, r)| r.conn.clone().map(|c| (id.clone(), c)))
                .collect();
            for (id, conn) in conns {
                let verdict = conn
                    .health
                    .call("the provider", HEALTH_TIMEOUT, |call| {
                        conn.tx
                            .send_now(ToProvider::HealthCheck { id: call })
                            .map_err(|e| e.into_call_error("health check"))
                    })
                    .await;
                let health = match verdict {
                    Ok((true, _)) => "healthy".to_string(),
                    Ok((false, message)) => format!("unhealthy: {message}"),
                    Err(e) => format!("unhealthy: {e}"),
                };
                if let Some(record) = self.providers.lock().get_mut(&id) {
                    if record.health != health {
                        tracing::info!(provider = %id.0, "health: {health}");
                        let kind = if health == "healthy" {
                            "health_check_passed"
                        } else {
                            "health_check_failed"
                        };
                        self.events.publish(
                            kind,
                            serde_json::json!({"public_key": id.0, "link_name": id.1, "health": health}),
                        );
                    }
                    record.health = health;
                }
            }
        }
    }
}
