//! The control interface on `wasmbus.ctl.{lattice}.*`, as the 0.82 host
//! answers it: queries at once, commands acked `{accepted, error}` at once
//! and finished in the background (their outcome is an event), a bad
//! payload or an unknown subject acked `accepted: false` with the reason.

use std::sync::Arc;

use async_nats::jetstream::kv;
use futures::StreamExt;
use lattice::{
    ctl::{
        self, ActorAuctionAck, ActorAuctionRequest, CtlOperationAck, GetClaimsResponse,
        GetConfigKeyResponse, HostLabel, LinkDefinition, LinkDefinitionList, ProviderAuctionAck,
        ProviderAuctionRequest, RegistryCredentialMap, RemoveLinkDefinitionRequest,
        ScaleActorCommand, StartProviderCommand, StopActorCommand, StopHostCommand,
        StopProviderCommand, UpdateActorCommand,
    },
    events::{ActorFailed, ConfigEvent, ProviderStartFailed},
    kv::{config_bucket, config_key},
    subjects::{self, CtlVerb},
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::task::JoinHandle;
use wire::ErrorKind;

use super::{describe, publish, store, LatticeError, Member, Started};
use crate::claims;

/// Labels the host sets itself; the control interface cannot change them.
const PLATFORM_LABEL_PREFIX: &str = "hostcore.";

/// Subscribes every control subject of this host and answers each
/// message in a task of its own.
pub(super) async fn serve(member: Arc<Member>) -> Result<JoinHandle<()>, LatticeError> {
    let mut subscribers = Vec::new();
    for sub in subjects::ctl_subscriptions(&member.lattice, &member.host_id) {
        let subscribed = match sub.queue_group {
            Some(group) => {
                member
                    .client
                    .queue_subscribe(sub.subject.clone(), group)
                    .await
            }
            None => member.client.subscribe(sub.subject.clone()).await,
        };
        subscribers.push(subscribed.map_err(|e| LatticeError::Subscribe {
            subject: sub.subject,
            message: e.to_string(),
        })?);
    }
    let mut messages = futures::stream::select_all(subscribers);
    Ok(tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            tokio::spawn(answer(member.clone(), message));
        }
    }))
}

async fn answer(member: Arc<Member>, message: async_nats::Message) {
    let (verb, _) = subjects::parse_ctl(&member.lattice, message.subject.as_str());
    let stop_host = verb == CtlVerb::StopHost;
    let reply = handle(&member, verb, &message.payload).await;
    if let (Some(to), Some(body)) = (message.reply, reply) {
        if let Err(e) = member.client.publish(to, body.into()).await {
            tracing::debug!("cannot answer {}: {e}", message.subject);
        }
    }
    if stop_host {
        // The ack goes out before the host stops.
        let _ = member.client.flush().await;
        tracing::info!("stop requested through the lattice: stopping");
        member.host.request_shutdown();
    }
}

/// The answer to one control message: `None` for no answer (an auction
/// this host does not bid in, a publish).
async fn handle(member: &Arc<Member>, verb: CtlVerb, payload: &[u8]) -> Option<Vec<u8>> {
    let answer = match verb {
        CtlVerb::PingHosts => json(&describe::ping(member)),
        CtlVerb::Inventory => json(&describe::inventory(member)),
        CtlVerb::Links => json(&LinkDefinitionList {
            links: member
                .host
                .links()
                .iter()
                .map(store::definition_of)
                .collect(),
        }),
        CtlVerb::Claims => json(&GetClaimsResponse {
            claims: member
                .links
                .all_claims()
                .iter()
                .map(|c| c.to_map())
                .collect(),
        }),
        CtlVerb::LinkPut => ack(link_put(member, payload).await),
        CtlVerb::LinkDel => ack(link_del(member, payload).await),
        CtlVerb::Scale => ack(scale(member, payload)),
        CtlVerb::StopActor => ack(stop_actor(member, payload)),
        CtlVerb::UpdateActor => ack(update_actor(member, payload)),
        CtlVerb::StartProvider => ack(start_provider(member, payload)),
        CtlVerb::StopProvider => ack(stop_provider(member, payload)),
        CtlVerb::StopHost => ack(parse::<StopHostCommand>(payload).map(|_| ())),
        CtlVerb::LabelPut => ack(label(member, payload, true)),
        CtlVerb::LabelDel => ack(label(member, payload, false)),
        CtlVerb::AuctionActor => return auction_actor(member, payload),
        CtlVerb::AuctionProvider => return auction_provider(member, payload),
        CtlVerb::RegistriesPut => {
            ack(parse::<RegistryCredentialMap>(payload)
                .and_then(|creds| registries_put(member, creds)))
        }
        CtlVerb::ConfigPut { entity, key } => {
            ack(config_put(member, &entity, &key, payload.to_vec()).await)
        }
        CtlVerb::ConfigDel { entity, key } => ack(config_del(member, &entity, Some(&key)).await),
        CtlVerb::ConfigClear { entity } => ack(config_del(member, &entity, None).await),
        CtlVerb::GetConfig { entity, key } => return config_get(member, &entity, key).await,
        CtlVerb::Unsupported => ack(Err("unsupported subject".into())),
    };
    Some(answer)
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn ack(result: Result<(), String>) -> Vec<u8> {
    json(&match result {
        Ok(()) => CtlOperationAck::ok(),
        Err(e) => CtlOperationAck::refused(e),
    })
}

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("bad payload: {e}"))
}

fn nonempty<'a>(value: &'a str, what: &str) -> Result<&'a str, String> {
    let value = value.trim();
    if value.is_empty() {
        Err(format!("{what} is empty"))
    } else {
        Ok(value)
    }
}

async fn link_put(member: &Member, payload: &[u8]) -> Result<(), String> {
    let definition: LinkDefinition = parse(payload)?;
    let link = store::link_of_definition(definition);
    member
        .host
        .link_put(link.clone())
        .await
        .map_err(|e| e.message)?;
    publish::emit(member, "linkdef_set", &publish::linkdef(&link)).await;
    Ok(())
}

async fn link_del(member: &Member, payload: &[u8]) -> Result<(), String> {
    let request: RemoveLinkDefinitionRequest = parse(payload)?;
    let existing = member.host.links().into_iter().find(|l| {
        l.actor_id == request.actor_id
            && l.contract_id == request.contract_id
            && l.link_name == request.link_name
    });
    match member
        .host
        .link_del(&request.actor_id, &request.contract_id, &request.link_name)
        .await
    {
        Ok(()) => {}
        // As 0.82: deleting a link there is not is done already.
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.message),
    }
    if let Some(link) = existing {
        publish::emit(member, "linkdef_deleted", &publish::linkdef(&link)).await;
    }
    Ok(())
}

/// The key of the running actor `reference` names: its key, or the
/// reference it was started from.
fn running_actor(member: &Member, reference: &str) -> Option<String> {
    let inventory = member.host.inventory();
    if inventory.actors.iter().any(|a| a.key == reference) {
        return Some(reference.to_owned());
    }
    let started = member.actors.lock();
    inventory
        .actors
        .iter()
        .find(|a| {
            started
                .get(&a.key)
                .is_some_and(|s| s.image_ref == reference)
        })
        .map(|a| a.key.clone())
}

fn runs_actor(member: &Member, key: &str) -> bool {
    member.host.inventory().actors.iter().any(|a| a.key == key)
}

fn scale(member: &Arc<Member>, payload: &[u8]) -> Result<(), String> {
    let command: ScaleActorCommand = parse(payload)?;
    let reference = nonempty(&command.actor_ref, "actor_ref")?.to_owned();
    let count = command.max_instances;
    let annotations = command.annotations.unwrap_or_default();
    if let Some(key) = running_actor(member, &reference) {
        let member = member.clone();
        tokio::spawn(async move {
            let scaled = if count == 0 {
                member.host.stop_actor(&key).await
            } else {
                member.host.scale_actor(&key, count).await
            };
            if let Err(e) = scaled {
                let failed = ActorFailed {
                    public_key: key,
                    annotations,
                    host_id: member.host_id.clone(),
                    image_ref: reference,
                    max_instances: Some(count),
                    error: e.to_string(),
                };
                publish::emit(&member, "actor_scale_failed", &failed).await;
            }
        });
        return Ok(());
    }
    if count == 0 {
        return Err(format!("no actor {reference} runs on this host"));
    }
    let located = member.artifacts.locate(&reference).map_err(|e| e.message)?;
    let member = member.clone();
    tokio::spawn(async move {
        let mut key = String::new();
        let started: wire::CallResult<()> = async {
            let source = member.host.actor_source(located).await?;
            key = claims::read_claims(&source.wasm)
                .map(|(_, claims)| claims.subject)
                .map_err(|e| wire::CallError::denied(format!("actor refused: {e}")))?;
            if runs_actor(&member, &key) {
                return member.host.scale_actor(&key, count).await;
            }
            member.actors.lock().insert(
                key.clone(),
                Started {
                    image_ref: reference.clone(),
                    annotations: annotations.clone(),
                    instance_id: lattice::uuid_v4(),
                },
            );
            let started = member
                .host
                .start_actor_source(source, count)
                .await
                .map(|_| ());
            if started.is_err() {
                member.actors.lock().remove(&key);
            }
            started
        }
        .await;
        if let Err(e) = started {
            tracing::warn!(actor = %reference, "scale through the lattice failed: {e}");
            let failed = ActorFailed {
                public_key: key,
                annotations,
                host_id: member.host_id.clone(),
                image_ref: reference,
                max_instances: None,
                error: e.to_string(),
            };
            publish::emit(&member, "actors_start_failed", &failed).await;
        }
    });
    Ok(())
}

fn stop_actor(member: &Arc<Member>, payload: &[u8]) -> Result<(), String> {
    let command: StopActorCommand = parse(payload)?;
    let reference = nonempty(&command.actor_ref, "actor_ref")?;
    let key = running_actor(member, reference)
        .ok_or_else(|| format!("no actor {reference} runs on this host"))?;
    let member = member.clone();
    tokio::spawn(async move {
        if let Err(e) = member.host.stop_actor(&key).await {
            tracing::warn!(actor = %key, "stop through the lattice failed: {e}");
        }
    });
    Ok(())
}

fn update_actor(member: &Arc<Member>, payload: &[u8]) -> Result<(), String> {
    let command: UpdateActorCommand = parse(payload)?;
    let key = nonempty(&command.actor_id, "actor_id")?.to_owned();
    let reference = nonempty(&command.new_actor_ref, "new_actor_ref")?.to_owned();
    if !runs_actor(member, &key) {
        return Err(format!("no actor {key} runs on this host"));
    }
    let located = member.artifacts.locate(&reference).map_err(|e| e.message)?;
    let member = member.clone();
    tokio::spawn(async move {
        let updated = async { member.host.update_actor_from(&key, located).await }.await;
        match updated {
            Ok(()) => {
                if let Some(started) = member.actors.lock().get_mut(&key) {
                    started.image_ref = reference;
                }
            }
            Err(e) => tracing::warn!(actor = %key, "update through the lattice failed: {e}"),
        }
    });
    Ok(())
}

fn start_provider(member: &Arc<Member>, payload: &[u8]) -> Result<(), String> {
    let command: StartProviderCommand = parse(payload)?;
    let reference = nonempty(&command.provider_ref, "provider_ref")?.to_owned();
    let link_name = nonempty(&command.link_name, "link_name")?.to_owned();
    let config = command.configuration.unwrap_or_else(|| "{}".into());
    if serde_json::from_str::<serde_json::Value>(&config).is_err() {
        return Err("the provider configuration is not valid JSON".into());
    }
    let located = member.artifacts.locate(&reference).map_err(|e| e.message)?;
    let annotations = command.annotations.unwrap_or_default();
    let member = member.clone();
    tokio::spawn(async move {
        let started = async {
            member
                .host
                .start_provider_from(located, link_name.clone(), config)
                .await
        }
        .await;
        match started {
            Ok(key) => {
                member.providers.lock().insert(
                    (key, link_name),
                    Started {
                        image_ref: reference,
                        annotations,
                        instance_id: lattice::uuid_v4(),
                    },
                );
            }
            Err(e) => {
                tracing::warn!(provider = %reference, "start through the lattice failed: {e}");
                let failed = ProviderStartFailed {
                    provider_ref: reference,
                    link_name,
                    error: e.to_string(),
                };
                publish::emit(&member, "provider_start_failed", &failed).await;
            }
        }
    });
    Ok(())
}

/// The key of the running provider `reference` names under `link_name`.
fn running_provider(member: &Member, reference: &str, link_name: &str) -> Option<String> {
    let inventory = member.host.inventory();
    let started = member.providers.lock();
    inventory
        .providers
        .iter()
        .filter(|p| p.link_name == link_name && p.state != wire::control::ProcessState::Failed)
        .find(|p| {
            p.key == reference
                || started
                    .get(&(p.key.clone(), p.link_name.clone()))
                    .is_some_and(|s| s.image_ref == reference)
        })
        .map(|p| p.key.clone())
}

fn stop_provider(member: &Arc<Member>, payload: &[u8]) -> Result<(), String> {
    let command: StopProviderCommand = parse(payload)?;
    let reference = nonempty(&command.provider_ref, "provider_ref")?;
    let link_name = nonempty(&command.link_name, "link_name")?.to_owned();
    let key = running_provider(member, reference, &link_name).ok_or_else(|| {
        format!("no provider {reference} with link name {link_name} runs on this host")
    })?;
    let member = member.clone();
    tokio::spawn(async move {
        match member.host.stop_provider(&key, &link_name).await {
            Ok(()) => {
                member.providers.lock().remove(&(key, link_name));
            }
            Err(e) => tracing::warn!(provider = %key, "stop through the lattice failed: {e}"),
        }
    });
    Ok(())
}

fn label(member: &Member, payload: &[u8], put: bool) -> Result<(), String> {
    let label: HostLabel = parse(payload)?;
    let key = nonempty(&label.key, "the label's key")?;
    if key.starts_with(PLATFORM_LABEL_PREFIX) {
        return Err(format!(
            "the label {key} is the host's own ({PLATFORM_LABEL_PREFIX}*) and cannot be changed"
        ));
    }
    let mut labels = member.labels.write();
    if put {
        labels.insert(key.to_owned(), label.value);
    } else {
        labels.remove(key);
    }
    Ok(())
}

/// A bid when this host's labels meet the constraints (0.82 bid always).
fn auction_actor(member: &Member, payload: &[u8]) -> Option<Vec<u8>> {
    let request: ActorAuctionRequest = parse(payload)
        .map_err(|e| tracing::debug!("an actor auction was ignored: {e}"))
        .ok()?;
    if !ctl::satisfies(&member.labels.read(), &request.constraints) {
        return None;
    }
    Some(json(&ActorAuctionAck {
        actor_ref: request.actor_ref,
        host_id: member.host_id.clone(),
        constraints: request.constraints,
    }))
}

/// A bid when the labels meet the constraints and this host does not run
/// the provider under that link name already.
fn auction_provider(member: &Member, payload: &[u8]) -> Option<Vec<u8>> {
    let request: ProviderAuctionRequest = parse(payload)
        .map_err(|e| tracing::debug!("a provider auction was ignored: {e}"))
        .ok()?;
    if !ctl::satisfies(&member.labels.read(), &request.constraints)
        || running_provider(member, &request.provider_ref, &request.link_name).is_some()
    {
        return None;
    }
    Some(json(&ProviderAuctionAck {
        host_id: member.host_id.clone(),
        link_name: request.link_name,
        provider_ref: request.provider_ref,
        constraints: request.constraints,
    }))
}

async fn config_store(member: &Member) -> Result<kv::Store, String> {
    let bucket = config_bucket(&member.lattice);
    if let Ok(store) = member.js.get_key_value(bucket.as_str()).await {
        return Ok(store);
    }
    member
        .js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            history: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the lattice's configuration ({bucket}) is not reachable: {e}"))
}

async fn config_put(
    member: &Member,
    entity: &str,
    key: &str,
    value: Vec<u8>,
) -> Result<(), String> {
    let store = config_store(member).await?;
    store
        .put(config_key(entity, key), value.into())
        .await
        .map_err(|e| format!("cannot store the configuration: {e}"))?;
    let event = ConfigEvent {
        entity_id: entity.to_owned(),
        key: key.to_owned(),
    };
    publish::emit(member, "config_set", &event).await;
    Ok(())
}

/// Deletes one key of an entity's configuration, or (`None`) all of it.
async fn config_del(member: &Member, entity: &str, key: Option<&str>) -> Result<(), String> {
    let store = config_store(member).await?;
    let keys = match key {
        Some(key) => vec![key.to_owned()],
        None => entity_keys(&store, entity).await?,
    };
    for key in keys {
        store
            .delete(config_key(entity, &key))
            .await
            .map_err(|e| format!("cannot delete the configuration: {e}"))?;
        let event = ConfigEvent {
            entity_id: entity.to_owned(),
            key,
        };
        publish::emit(member, "config_deleted", &event).await;
    }
    Ok(())
}

/// The keys of an entity's configuration (without the entity's prefix).
async fn entity_keys(store: &kv::Store, entity: &str) -> Result<Vec<String>, String> {
    let prefix = config_key(entity, "");
    let Ok(mut keys) = store.keys().await else {
        // No keys at all (an empty bucket has no consumer to list them).
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| format!("cannot list the configuration: {e}"))?;
        if let Some(rest) = key.strip_prefix(&prefix) {
            found.push(rest.to_owned());
        }
    }
    Ok(found)
}

async fn config_get(member: &Member, entity: &str, key: Option<String>) -> Option<Vec<u8>> {
    let store = match config_store(member).await {
        Ok(store) => store,
        Err(e) => return Some(ack(Err(e))),
    };
    match key {
        Some(key) => {
            let value = store.get(config_key(entity, &key)).await.ok().flatten();
            Some(json(&GetConfigKeyResponse {
                found: value.is_some(),
                data: value.map(|v| v.to_vec()).unwrap_or_default(),
            }))
        }
        None => {
            let mut all = std::collections::BTreeMap::new();
            for key in entity_keys(&store, entity).await.unwrap_or_default() {
                if let Ok(Some(value)) = store.get(config_key(entity, &key)).await {
                    all.insert(key, value.to_vec());
                }
            }
            Some(json(&all))
        }
    }
}

/// `registries.put`: the credentials the host's registry client uses from
/// now on, per registry (a token, or a user name and password).
fn registries_put(member: &Member, creds: RegistryCredentialMap) -> Result<(), String> {
    let client = member
        .host
        .artifacts()
        .ok_or("this host has no registry client")?
        .client();
    for (registry, cred) in creds {
        if cred.registry_type != "oci" {
            return Err(format!(
                "registry {registry}: type `{}` is not supported (only oci)",
                cred.registry_type
            ));
        }
        let credentials = match (cred.token, cred.username) {
            (Some(token), _) => oci::Credentials::Token(token),
            (None, Some(username)) => oci::Credentials::Basic {
                username,
                password: cred.password.unwrap_or_default(),
            },
            (None, None) => {
                client.remove_credentials(&registry);
                continue;
            }
        };
        tracing::info!(registry = %registry, "registry credentials set");
        client.set_credentials(&registry, credentials);
    }
    Ok(())
}
