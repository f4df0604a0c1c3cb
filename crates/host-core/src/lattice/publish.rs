//! Events on `wasmbus.evt.{lattice}` and `wasmbus.evt.{lattice}.{name}`,
//! as 0.82's CloudEvents: the host's own events translated to wasmCloud's
//! types and payloads, `host_started` on joining, `host_heartbeat` (the
//! inventory) and `health_check_status` of each running provider every
//! heartbeat interval, and `host_stopped` last.

use std::{collections::HashMap, sync::Arc};

use lattice::{
    ctl::Annotations,
    events::{
        ActorScaled, ActorsStarted, ActorsStopped, CloudEvent, HealthCheck, HostStarted,
        HostStopped, LinkdefEvent, ProviderEventClaims, ProviderStarted, ProviderStopped,
    },
    kv::link_id,
    subjects,
};
use serde::Serialize;
use serde_json::Value;
use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};
use wire::{
    control::{ActorSummary, ProviderSummary},
    provider::Link,
};

use super::{describe, Member};

/// Publishes event `name` with `data` from this host, on both subjects.
pub(super) async fn emit<T: Serialize>(member: &Member, name: &str, data: &T) {
    let data = serde_json::to_value(data).unwrap_or(Value::Null);
    let event = CloudEvent::new(&member.host_id, name, data);
    let Ok(body) = serde_json::to_vec(&event) else {
        return;
    };
    let body = bytes::Bytes::from(body);
    for subject in [
        subjects::events(&member.lattice),
        subjects::event(&member.lattice, name),
    ] {
        if let Err(e) = member.client.publish(subject, body.clone()).await {
            tracing::debug!("cannot publish event {name}: {e}");
        }
    }
}

pub(super) fn linkdef(link: &Link) -> LinkdefEvent {
    LinkdefEvent {
        id: link_id(&link.actor_id, &link.contract_id, &link.link_name),
        actor_id: link.actor_id.clone(),
        provider_id: link.provider_id.clone(),
        link_name: link.link_name.clone(),
        contract_id: link.contract_id.clone(),
        values: link.values.clone(),
    }
}

/// `host_started` now, then the heartbeat and the host's events until
/// the task is aborted.
pub(super) fn run(member: Arc<Member>) -> JoinHandle<()> {
    let mut host_events = member.host.events.subscribe();
    tokio::spawn(async move {
        let started = HostStarted {
            friendly_name: member.friendly_name.clone(),
            labels: member.labels.read().clone(),
            uptime_seconds: 0,
            version: describe::VERSION.into(),
        };
        emit(&member, "host_started", &started).await;
        let period = member.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut seen = Seen::default();
        seen.refresh(&member);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    emit(&member, "host_heartbeat", &describe::inventory(&member)).await;
                    health_status(&member).await;
                }
                event = host_events.recv() => match event {
                    Ok(event) => translate(&member, &mut seen, &event).await,
                    Err(RecvError::Lagged(n)) => tracing::warn!("{n} host events were not published to the lattice"),
                    Err(RecvError::Closed) => break,
                },
            }
        }
    })
}

/// `health_check_status` for each running provider, with the heartbeat
/// (a change of health is `health_check_passed` or `_failed` at once).
async fn health_status(member: &Member) {
    for provider in member.host.inventory().providers {
        if provider.state != wire::control::ProcessState::Running {
            continue;
        }
        let status = HealthCheck {
            public_key: provider.key,
            link_name: provider.link_name,
            contract_id: provider.contract_id,
        };
        emit(member, "health_check_status", &status).await;
    }
}

pub(super) async fn host_stopped(member: &Member) {
    let stopped = HostStopped {
        labels: member.labels.read().clone(),
    };
    emit(member, "host_stopped", &stopped).await;
    let _ = member.client.flush().await;
}

/// What ran on this host when last looked at: the events of a stop need
/// what the inventory no longer has.
#[derive(Default)]
struct Seen {
    actors: HashMap<String, ActorSummary>,
    providers: HashMap<(String, String), ProviderSummary>,
}

impl Seen {
    fn refresh(&mut self, member: &Member) {
        let inventory = member.host.inventory();
        for actor in inventory.actors {
            self.actors.insert(actor.key.clone(), actor);
        }
        for provider in inventory.providers {
            self.providers
                .insert((provider.key.clone(), provider.link_name.clone()), provider);
        }
    }
}

fn provider_summary(member: &Member, key: &str, link_name: &str) -> Option<ProviderSummary> {
    member
        .host
        .inventory()
        .providers
        .into_iter()
        .find(|p| p.key == key && p.link_name == link_name)
}

fn text(data: &Value, field: &str) -> String {
    data[field].as_str().unwrap_or_default().to_owned()
}

/// One host event as wasmCloud's, if wasmCloud has one for it. Links and
/// failed starts are published where the control interface handles them.
async fn translate(member: &Member, seen: &mut Seen, event: &str) {
    let Ok(event) = serde_json::from_str::<CloudEvent>(event) else {
        return;
    };
    let Some(name) = event.name() else {
        return;
    };
    let data = &event.data;
    let key = text(data, "public_key");
    let host_id = member.host_id.clone();
    let known = member.actors.lock().get(&key).cloned().unwrap_or_default();
    let annotations: Annotations = known.annotations.clone();
    match name {
        "actor_started" | "actor_scaled" => {
            seen.refresh(member);
            let Some(actor) = seen.actors.get(&key) else {
                return;
            };
            let claims = describe::event_claims(actor);
            if name == "actor_started" {
                let started = ActorsStarted {
                    public_key: key,
                    image_ref: known.image_ref,
                    annotations,
                    host_id,
                    claims,
                    count: actor.count,
                };
                emit(member, "actors_started", &started).await;
            } else {
                let scaled = ActorScaled {
                    public_key: key,
                    claims,
                    annotations,
                    host_id,
                    image_ref: known.image_ref,
                    max_instances: actor.count,
                };
                emit(member, "actor_scaled", &scaled).await;
            }
        }
        "actor_stopped" => {
            let count = seen.actors.remove(&key).map_or(0, |a| a.count);
            member.actors.lock().remove(&key);
            let stopped = ActorsStopped {
                public_key: key,
                annotations,
                host_id,
                count,
                remaining: 0,
                image_ref: known.image_ref,
            };
            emit(member, "actors_stopped", &stopped).await;
        }
        "provider_started" => {
            seen.refresh(member);
            let link_name = text(data, "link_name");
            let summary = provider_summary(member, &key, &link_name);
            let started = member
                .providers
                .lock()
                .get(&(key.clone(), link_name.clone()))
                .cloned()
                .unwrap_or_default();
            let started = ProviderStarted {
                host_id,
                public_key: key,
                image_ref: started.image_ref,
                link_name,
                contract_id: text(data, "contract_id"),
                instance_id: started.instance_id,
                annotations: started.annotations,
                claims: ProviderEventClaims {
                    name: summary.map(|s| s.name).unwrap_or_default(),
                    not_before_human: "TODO".into(),
                    expires_human: "TODO".into(),
                    ..Default::default()
                },
            };
            emit(member, "provider_started", &started).await;
        }
        "provider_stopped" => {
            let link_name = text(data, "link_name");
            let contract_id = seen
                .providers
                .remove(&(key.clone(), link_name.clone()))
                .map(|p| p.contract_id)
                .unwrap_or_default();
            let started = member
                .providers
                .lock()
                .remove(&(key.clone(), link_name.clone()))
                .unwrap_or_default();
            let stopped = ProviderStopped {
                host_id,
                public_key: key,
                link_name,
                contract_id,
                instance_id: started.instance_id,
                annotations: started.annotations,
                reason: text(data, "reason"),
            };
            emit(member, "provider_stopped", &stopped).await;
        }
        "health_check_passed" | "health_check_failed" => {
            let link_name = text(data, "link_name");
            let contract_id = provider_summary(member, &key, &link_name)
                .map(|p| p.contract_id)
                .unwrap_or_default();
            let check = HealthCheck {
                public_key: key,
                link_name,
                contract_id,
            };
            emit(member, name, &check).await;
        }
        _ => {}
    }
}
