//! Invocations between hosts, as wasmCloud 0.82 carries them: MessagePack
//! `Invocation`s on `wasmbus.rpc.{lattice}.{actor}` and
//! `wasmbus.rpc.{lattice}.{provider}.{link}`, signed by the cluster key and
//! checked against the cluster issuers on arrival. Each subject has its
//! own queue group (providers' is `rpc`), so calls spread over every host
//! that runs the same actor or provider. Payloads too large for one NATS
//! message travel through the lattice's object store.
//!
//! The receiving host checks a call exactly as a local one
//! ([`Host::serve_actor_call`], [`Host::serve_provider_call`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::{jetstream, HeaderMap};
use bytes::Bytes as NatsBytes;
use futures::{future::BoxFuture, StreamExt};
use lattice::{
    kv::StoredClaims,
    rpc::{Invocation, InvocationResponse, WasmCloudEntity},
    subjects, ProtocolError,
};
use nkeys::KeyPair;
use tokio::{io::AsyncReadExt, task::JoinHandle};
use wire::{Bytes, CallError, CallResult, ErrorKind};

use super::{store::NatsLinks, Member};
use crate::host::remote::{Origin, Remote, RemoteCall, RemoteTarget};

/// The NATS header that carries an error's kind between our hosts
/// (wasmCloud's own hosts read only the response's `error` text).
const ERROR_KIND_HEADER: &str = "x-error-kind";
/// The longest a call that arrives over the lattice may run here.
const SERVE_TIMEOUT: Duration = Duration::from_secs(60);

/// This host's calls to actors and providers of other hosts.
pub(super) struct RpcClient {
    client: async_nats::Client,
    js: jetstream::Context,
    lattice: String,
    host_id: String,
    cluster_key: KeyPair,
    links: Arc<NatsLinks>,
}

impl RpcClient {
    pub(super) fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        lattice: &str,
        host_id: String,
        cluster_key: KeyPair,
        links: Arc<NatsLinks>,
    ) -> Self {
        Self {
            client,
            js,
            lattice: lattice.to_owned(),
            host_id,
            cluster_key,
            links,
        }
    }

    async fn call(&self, call: RemoteCall) -> CallResult<Bytes> {
        let origin = match &call.origin {
            Origin::Actor(key) => WasmCloudEntity::actor(key),
            Origin::Provider {
                key,
                link_name,
                contract_id,
            } => WasmCloudEntity::provider(key, contract_id, link_name),
            // `ctl call`: the host itself asks.
            Origin::Control => WasmCloudEntity::actor(&self.host_id),
        };
        let (target, subject) = match &call.target {
            RemoteTarget::Actor(key) => (
                WasmCloudEntity::actor(key),
                subjects::rpc_actor(&self.lattice, key),
            ),
            RemoteTarget::Provider {
                provider_id,
                link_name,
                contract_id,
            } => (
                WasmCloudEntity::provider(provider_id, contract_id, link_name),
                subjects::rpc_provider(&self.lattice, provider_id, link_name),
            ),
        };
        let payload = call.payload.into_vec();
        let length = payload.len();
        // The claims' hash covers the whole payload, chunked or not.
        let mut invocation = Invocation::new(
            &self.cluster_key,
            &self.host_id,
            origin,
            target,
            &call.operation,
            payload,
        )
        .map_err(protocol_error)?;
        invocation.content_length = length as u64;
        if lattice::rpc::needs_chunking(length) {
            let name = lattice::rpc::chunk_object_name(&invocation.id);
            put_chunk(&self.js, &self.lattice, &name, &invocation.msg).await?;
            invocation.msg = Vec::new();
        }
        let body = invocation.encode().map_err(protocol_error)?;
        let request = async_nats::Request::new()
            .payload(NatsBytes::from(body))
            .timeout(Some(call.timeout));
        let reply = self
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| request_error(&subject, &e, call.timeout))?;
        let response = InvocationResponse::decode(&reply.payload).map_err(protocol_error)?;
        if let Some(message) = response.error.filter(|e| !e.is_empty()) {
            let kind = reply
                .headers
                .as_ref()
                .and_then(|h| h.get(ERROR_KIND_HEADER))
                .and_then(|v| parse_kind(v.as_str()))
                .unwrap_or(ErrorKind::Unavailable);
            return Err(CallError::new(kind, message));
        }
        if response.msg.is_empty() && response.content_length > 0 {
            let name = lattice::rpc::reply_chunk_object_name(&invocation.id);
            let body = take_chunk(&self.js, &self.lattice, &name).await?;
            return Ok(Bytes::from(body));
        }
        Ok(Bytes::from(response.msg))
    }
}

impl Remote for RpcClient {
    fn invoke(&self, call: RemoteCall) -> BoxFuture<'_, CallResult<Bytes>> {
        Box::pin(self.call(call))
    }

    fn actor_by_alias(&self, alias: &str) -> Option<String> {
        self.links.all_claims().into_iter().find_map(|c| match c {
            StoredClaims::Actor(a) if a.call_alias.as_deref() == Some(alias) => {
                Some(a.subject.clone())
            }
            _ => None,
        })
    }
}

fn request_error(subject: &str, e: &async_nats::RequestError, timeout: Duration) -> CallError {
    use async_nats::RequestErrorKind;
    match e.kind() {
        RequestErrorKind::NoResponders => {
            CallError::not_found(format!("no host of the lattice serves {subject}"))
        }
        RequestErrorKind::TimedOut => CallError::timeout(format!(
            "no answer on {subject} within {} ms",
            timeout.as_millis()
        )),
        RequestErrorKind::Other => CallError::unavailable(format!(
            "the lattice cannot carry the call to {subject}: {e}"
        )),
    }
}

/// What a payload the lattice refused is, as a kind of error.
fn protocol_error(e: ProtocolError) -> CallError {
    match e {
        ProtocolError::Forged(_) => CallError::denied(e.to_string()),
        ProtocolError::Claims(_) | ProtocolError::Encode(_) => CallError::internal(e.to_string()),
        ProtocolError::Json(_) | ProtocolError::Decode(_) => CallError::internal(e.to_string()),
    }
}

fn parse_kind(text: &str) -> Option<ErrorKind> {
    ErrorKind::ALL.into_iter().find(|k| k.as_str() == text)
}

async fn chunk_store(
    js: &jetstream::Context,
    lattice: &str,
) -> CallResult<jetstream::object_store::ObjectStore> {
    let bucket = lattice::rpc::chunk_bucket(lattice);
    if let Ok(store) = js.get_object_store(&bucket).await {
        return Ok(store);
    }
    js.create_object_store(jetstream::object_store::Config {
        bucket: bucket.clone(),
        ..Default::default()
    })
    .await
    .map_err(|e| CallError::unavailable(format!("cannot open the object store {bucket}: {e}")))
}

async fn put_chunk(
    js: &jetstream::Context,
    lattice: &str,
    name: &str,
    body: &[u8],
) -> CallResult<()> {
    let store = chunk_store(js, lattice).await?;
    let mut reader = body;
    store
        .put(name, &mut reader)
        .await
        .map(|_| ())
        .map_err(|e| CallError::unavailable(format!("cannot store the payload {name}: {e}")))
}

async fn take_chunk(js: &jetstream::Context, lattice: &str, name: &str) -> CallResult<Vec<u8>> {
    let store = chunk_store(js, lattice).await?;
    let mut object = store
        .get(name)
        .await
        .map_err(|e| CallError::unavailable(format!("cannot fetch the payload {name}: {e}")))?;
    let mut body = Vec::new();
    object
        .read_to_end(&mut body)
        .await
        .map_err(|e| CallError::unavailable(format!("cannot read the payload {name}: {e}")))?;
    let _ = store.delete(name).await;
    Ok(body)
}

/// Serves the RPC subjects of every actor and provider this host runs,
/// following its inventory as actors and providers come and go.
pub(super) fn serve(member: Arc<Member>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = member.host.events.subscribe();
        let mut served = Served::default();
        loop {
            reconcile(&member, &mut served).await;
            match events.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

/// The subscription task of each subject served; aborted with the map
/// (when the lattice's RPC task ends).
#[derive(Default)]
struct Served(HashMap<String, JoinHandle<()>>);

impl Drop for Served {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

async fn reconcile(member: &Arc<Member>, served: &mut Served) {
    let served = &mut served.0;
    let inventory = member.host.inventory();
    // Each subject is its own queue group.
    let mut wanted: Vec<String> = Vec::new();
    for actor in &inventory.actors {
        wanted.push(subjects::rpc_actor(&member.lattice, &actor.key));
    }
    for provider in &inventory.providers {
        if provider.state == wire::control::ProcessState::Failed {
            continue;
        }
        wanted.push(subjects::rpc_provider(
            &member.lattice,
            &provider.key,
            &provider.link_name,
        ));
    }
    served.retain(|subject, task| {
        let keep = wanted.contains(subject) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    for actor in &inventory.actors {
        if !served.contains_key(&subjects::rpc_actor(&member.lattice, &actor.key)) {
            let claims = super::describe::actor_claims(actor);
            if let Err(e) = member.links.put_claims(&claims).await {
                tracing::warn!(actor = %actor.key, "cannot publish the actor's claims: {e}");
            }
        }
    }
    for subject in wanted {
        if served.contains_key(&subject) {
            continue;
        }
        match member
            .client
            .queue_subscribe(subject.clone(), subject.clone())
            .await
        {
            Ok(mut subscriber) => {
                let member = member.clone();
                let task = tokio::spawn(async move {
                    while let Some(message) = subscriber.next().await {
                        tokio::spawn(answer(member.clone(), message));
                    }
                });
                served.insert(subject, task);
            }
            Err(e) => tracing::warn!(%subject, "cannot serve invocations: {e}"),
        }
    }
}

async fn answer(member: Arc<Member>, message: async_nats::Message) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let (id, result) = match Invocation::decode(&message.payload) {
        Ok(invocation) => {
            let id = invocation.id.clone();
            (id, serve_invocation(&member, invocation).await)
        }
        Err(e) => (String::new(), Err(protocol_error(e))),
    };
    let (response, headers) = match result {
        Ok(body) => {
            if lattice::rpc::needs_chunking(body.len()) {
                let name = lattice::rpc::reply_chunk_object_name(&id);
                match put_chunk(&member.js, &member.lattice, &name, &body).await {
                    Ok(()) => {
                        let mut response = InvocationResponse::success(&id, Vec::new());
                        response.content_length = body.len() as u64;
                        (response, HeaderMap::new())
                    }
                    Err(e) => failure(&id, &e),
                }
            } else {
                (
                    InvocationResponse::success(&id, body.into_vec()),
                    HeaderMap::new(),
                )
            }
        }
        Err(e) => failure(&id, &e),
    };
    let body = match response.encode() {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!("cannot encode an invocation response: {e}");
            return;
        }
    };
    if let Err(e) = member
        .client
        .publish_with_headers(reply, headers, NatsBytes::from(body))
        .await
    {
        tracing::debug!("cannot answer an invocation: {e}");
    }
}

fn failure(id: &str, e: &CallError) -> (InvocationResponse, HeaderMap) {
    let mut headers = HeaderMap::new();
    headers.insert(ERROR_KIND_HEADER, e.kind.as_str());
    (InvocationResponse::failure(id, &e.message), headers)
}

async fn serve_invocation(member: &Member, mut invocation: Invocation) -> CallResult<Bytes> {
    if invocation.msg.is_empty() && invocation.content_length > 0 {
        let name = lattice::rpc::chunk_object_name(&invocation.id);
        invocation.msg = take_chunk(&member.js, &member.lattice, &name).await?;
    }
    invocation
        .validate(&member.cluster_issuers)
        .map_err(protocol_error)?;
    let payload = Bytes::from(std::mem::take(&mut invocation.msg));
    let target = &invocation.target;
    let origin = &invocation.origin;
    if target.public_key.starts_with('M') {
        let origin = if origin.public_key.starts_with('V') {
            Origin::Provider {
                key: origin.public_key.clone(),
                link_name: origin.link_name.clone(),
                contract_id: origin.contract_id.clone(),
            }
        } else if origin.public_key.starts_with('M') {
            Origin::Actor(origin.public_key.clone())
        } else {
            Origin::Control
        };
        member
            .host
            .serve_actor_call(
                origin,
                &target.public_key,
                &invocation.operation,
                payload,
                SERVE_TIMEOUT,
            )
            .await
    } else if target.public_key.starts_with('V') {
        let actor = &origin.public_key;
        let caps = match member.links.claims_of(actor) {
            Some(StoredClaims::Actor(claims)) => claims.capabilities,
            _ => {
                return Err(CallError::denied(format!(
                    "the lattice holds no claims of actor {actor}"
                )))
            }
        };
        member
            .host
            .serve_provider_call(
                actor,
                &caps,
                &target.public_key,
                &target.link_name,
                &target.contract_id,
                &invocation.operation,
                payload,
                SERVE_TIMEOUT,
            )
            .await
    } else {
        Err(CallError::not_found(format!(
            "{} is neither an actor nor a provider",
            target.public_key
        )))
    }
}
