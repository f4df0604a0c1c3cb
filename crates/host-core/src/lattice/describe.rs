//! This host as the lattice sees it: its `ping.hosts` answer, its
//! inventory (also the heartbeat's data), and the claims of its actors.

use lattice::{
    ctl::{ActorDescription, ActorInstance, Host, HostInventory, ProviderDescription},
    events::{uptime_human, ActorEventClaims},
    kv::{ActorClaims, StoredClaims},
};
use wire::control::{ActorSummary, ProcessState};

use super::Member;

/// The version this host reports.
pub(super) const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(super) fn ping(member: &Member) -> Host {
    let uptime = member.started.elapsed().as_secs();
    Host {
        id: member.host_id.clone(),
        friendly_name: member.friendly_name.clone(),
        uptime_seconds: uptime,
        cluster_issuers: Some(member.cluster_issuers.join(",")),
        ctl_host: None,
        js_domain: member.js_domain.clone(),
        labels: Some(member.labels.read().clone()),
        lattice: Some(member.lattice.clone()),
        lattice_prefix: Some(member.lattice.clone()),
        rpc_host: None,
        uptime_human: Some(uptime_human(uptime)),
        version: Some(VERSION.into()),
        issuer: Some(member.cluster_id.clone()),
    }
}

pub(super) fn inventory(member: &Member) -> HostInventory {
    let inventory = member.host.inventory();
    let uptime = member.started.elapsed().as_secs();
    let started = member.actors.lock().clone();
    let actors = inventory
        .actors
        .iter()
        .map(|actor| {
            let known = started.get(&actor.key).cloned().unwrap_or_default();
            // Started through the lattice, or pulled by a local start.
            let image_ref = Some(known.image_ref)
                .filter(|r| !r.is_empty())
                .or_else(|| actor.image_ref.clone());
            ActorDescription {
                id: actor.key.clone(),
                image_ref: image_ref.clone(),
                name: Some(actor.name.clone()),
                instances: vec![ActorInstance {
                    annotations: Some(known.annotations),
                    image_ref,
                    instance_id: if known.instance_id.is_empty() {
                        actor.key.clone()
                    } else {
                        known.instance_id
                    },
                    revision: actor.rev.unwrap_or(0),
                    max_instances: actor.count,
                }],
            }
        })
        .collect();
    let started = member.providers.lock().clone();
    let providers = inventory
        .providers
        .iter()
        .filter(|p| p.state != ProcessState::Failed)
        .map(|provider| {
            let known = started
                .get(&(provider.key.clone(), provider.link_name.clone()))
                .cloned()
                .unwrap_or_default();
            ProviderDescription {
                annotations: Some(known.annotations),
                id: provider.key.clone(),
                image_ref: Some(known.image_ref)
                    .filter(|r| !r.is_empty())
                    .or_else(|| provider.image_ref.clone()),
                contract_id: provider.contract_id.clone(),
                link_name: provider.link_name.clone(),
                name: Some(provider.name.clone()),
                revision: 0,
            }
        })
        .collect();
    HostInventory {
        actors,
        providers,
        host_id: member.host_id.clone(),
        issuer: member.cluster_id.clone(),
        friendly_name: member.friendly_name.clone(),
        labels: member.labels.read().clone(),
        version: VERSION.into(),
        uptime_human: uptime_human(uptime),
        uptime_seconds: uptime,
    }
}

/// An actor's claims as the lattice keeps them (`CLAIMS_{key}`).
pub(super) fn actor_claims(actor: &ActorSummary) -> StoredClaims {
    StoredClaims::Actor(ActorClaims {
        call_alias: actor.call_alias.clone(),
        capabilities: actor.caps.clone(),
        issuer: actor.issuer.clone(),
        name: Some(actor.name.clone()),
        revision: Some(actor.rev.unwrap_or(0).to_string()),
        subject: actor.key.clone(),
        tags: Vec::new(),
        version: actor.ver.clone(),
    })
}

/// The claims summary of `actors_started` and `actor_scaled`.
pub(super) fn event_claims(actor: &ActorSummary) -> ActorEventClaims {
    ActorEventClaims {
        call_alias: actor.call_alias.clone().unwrap_or_default(),
        caps: actor.caps.clone(),
        issuer: actor.issuer.clone(),
        tags: Vec::new(),
        name: actor.name.clone(),
        version: actor.ver.clone().unwrap_or_default(),
        revision: actor.rev.unwrap_or(0),
        not_before_human: "TODO".into(),
        expires_human: "TODO".into(),
    }
}
