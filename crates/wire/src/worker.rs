//! Messages between `host-core` and the `actor-runtime` worker.
//!
//! Both directions carry correlated requests: the host sends [`ToWorker::Request`]s
//! (ids chosen by the host) and answers the worker's [`FromWorker::HostCall`]s
//! (ids chosen by the worker), so any number of calls are in flight at once
//! and a slow actor never holds up another.

use serde::{Deserialize, Serialize};

use crate::message::{len_of, WireMessage, ENVELOPE};
use crate::{Bytes, CallError, CallResult};

/// Identifies one request on a channel; the reply carries the same id.
pub type CallId = u64;

/// Settings the host sends once, right after the handshake.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WorkerConfig {
    /// Upper bound for one instance's linear memory, in bytes.
    pub max_memory_bytes: u64,
    /// Deadline for one invocation, in milliseconds, enforced by epoch interruption.
    pub invocation_timeout_ms: u64,
    /// Directory for precompiled artifacts, keyed by content hash and engine
    /// settings; `None` disables the on-disk cache.
    pub cache_dir: Option<String>,
    /// How many instances the pooling allocator reserves room for.
    pub max_instances: u32,
    /// Where the worker listens for providers' direct channels (see
    /// [`WorkerRequest::AdmitProvider`]); `None` turns the direct path off.
    pub data_socket: Option<String>,
    /// How many invocations of one actor may wait for a free instance; a
    /// call beyond that is answered at once with
    /// [`ErrorKind::Busy`](crate::ErrorKind::Busy). Absent (a host that
    /// predates it): [`DEFAULT_MAX_QUEUED_CALLS`].
    #[serde(default = "default_max_queued_calls")]
    pub max_queued_calls: u32,
}

/// The default of [`WorkerConfig::max_queued_calls`]: well above the 64
/// concurrent calls a benchmark or an HTTP burst makes, low enough that a
/// stuck actor answers "busy" rather than piling up work it cannot finish
/// before the deadlines.
pub const DEFAULT_MAX_QUEUED_CALLS: u32 = 256;

fn default_max_queued_calls() -> u32 {
    DEFAULT_MAX_QUEUED_CALLS
}

/// A verified actor, ready to compile. `host-core` has checked its claims.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ActorSpec {
    /// The actor's public key (`M...`).
    pub key: String,
    /// The signed wasm, a core module or a component.
    pub wasm: Bytes,
    /// SHA-256 of `wasm`, upper-case hex: the compile cache key.
    pub hash: String,
    /// Contracts the actor may call (`caps` in its claims).
    pub caps: Vec<String>,
    /// How many instances may run at once.
    pub instances: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum WorkerRequest {
    /// Compile (or load from cache) and make ready to serve.
    StartActor(ActorSpec),
    /// Replace a running actor's code; calls already running finish on the old
    /// code, calls after the reply use the new one.
    UpdateActor(ActorSpec),
    /// Change how many instances may run at once.
    ScaleActor {
        key: String,
        instances: u32,
    },
    StopActor {
        key: String,
    },
    /// Run `operation` in the actor; the reply carries the actor's response.
    /// The call must be answered within `timeout_ms` of its arrival, time
    /// spent waiting for an instance included; a call still waiting then
    /// is dropped before it runs.
    Invoke {
        actor: String,
        operation: String,
        payload: Bytes,
        timeout_ms: u64,
    },
    /// Lets one provider open a direct channel to the worker's data socket:
    /// the connection whose handshake carries this provider key and this
    /// single-use token may call actors whose caps name `contract`, without
    /// a hop through the host. A later admission for the same provider and
    /// link name replaces the token.
    AdmitProvider {
        provider_key: String,
        link_name: String,
        contract_id: String,
        token: String,
    },
    /// Every link, replacing the ones sent before: an actor's call to a
    /// linked provider goes over that provider's direct channel when it is
    /// open (through `host-core` otherwise). Sent after each link change and
    /// when a worker starts.
    SetRoutes {
        routes: Vec<Route>,
    },
}

/// One link as the worker routes it: calls from `actor_id` to `contract_id`
/// under `link_name` go to the provider `provider_key` (link name
/// `link_name`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub actor_id: String,
    pub contract_id: String,
    pub link_name: String,
    pub provider_key: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ToWorker {
    Configure(WorkerConfig),
    Request {
        id: CallId,
        request: WorkerRequest,
    },
    /// The answer to a [`FromWorker::HostCall`].
    HostCallResult {
        id: CallId,
        result: CallResult<Bytes>,
    },
    /// The caller of request `id` went away: drop it if it has not run yet,
    /// stop it if it runs. No reply is sent for it after this.
    Cancel {
        id: CallId,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum FromWorker {
    /// The answer to a [`ToWorker::Request`]; `Ok` holds the actor's response
    /// for an invocation and is empty otherwise.
    Reply {
        id: CallId,
        result: CallResult<Bytes>,
    },
    /// An actor calls out (`__host_call` or the component's `host.call`) to
    /// something the worker cannot answer itself: a provider or another actor.
    /// `timeout_ms` is what is left of the calling invocation's deadline:
    /// the host gives the call no longer.
    HostCall {
        id: CallId,
        actor: String,
        binding: String,
        namespace: String,
        operation: String,
        payload: Bytes,
        timeout_ms: u64,
    },
    /// The worker gave up on host call `id` (its invocation ended): the
    /// host may drop the work.
    CancelHostCall { id: CallId },
    /// A provider's call on its direct channel to an actor this worker
    /// does not run: the host routes it (to another host of its lattice).
    /// Answered with a `HostCallResult` of the same id, cancelled with
    /// `CancelHostCall`.
    ForwardCall {
        id: CallId,
        provider_key: String,
        link_name: String,
        contract_id: String,
        actor: String,
        operation: String,
        payload: Bytes,
    },
    /// A log line from an actor (console log or the logging builtin).
    Log {
        actor: String,
        level: LogLevel,
        text: String,
    },
}

impl WireMessage for WorkerRequest {
    fn size_hint(&self) -> usize {
        ENVELOPE
            + match self {
                WorkerRequest::StartActor(spec) | WorkerRequest::UpdateActor(spec) => {
                    len_of(&spec.key)
                        + len_of(&spec.wasm)
                        + len_of(&spec.hash)
                        + spec.caps.iter().map(len_of).sum::<usize>()
                }
                WorkerRequest::ScaleActor { key, .. } | WorkerRequest::StopActor { key } => {
                    len_of(key)
                }
                WorkerRequest::Invoke {
                    actor,
                    operation,
                    payload,
                    ..
                } => len_of(actor) + len_of(operation) + len_of(payload),
                WorkerRequest::AdmitProvider {
                    provider_key,
                    link_name,
                    contract_id,
                    token,
                } => len_of(provider_key) + len_of(link_name) + len_of(contract_id) + len_of(token),
                WorkerRequest::SetRoutes { routes } => routes
                    .iter()
                    .map(|r| {
                        len_of(&r.actor_id)
                            + len_of(&r.contract_id)
                            + len_of(&r.link_name)
                            + len_of(&r.provider_key)
                            + 64
                    })
                    .sum::<usize>(),
            }
    }
}

impl WireMessage for ToWorker {
    fn size_hint(&self) -> usize {
        match self {
            ToWorker::Configure(c) => {
                ENVELOPE
                    + c.cache_dir.as_ref().map_or(0, len_of)
                    + c.data_socket.as_ref().map_or(0, len_of)
            }
            ToWorker::Request { request, .. } => request.size_hint(),
            ToWorker::HostCallResult { result, .. } => ENVELOPE + result_len(result),
            ToWorker::Cancel { .. } => ENVELOPE,
        }
    }

    fn refuse(&self, error: CallError) -> Option<Self> {
        match self {
            ToWorker::HostCallResult { id, .. } => Some(ToWorker::HostCallResult {
                id: *id,
                result: Err(error),
            }),
            _ => None,
        }
    }
}

impl WireMessage for FromWorker {
    fn size_hint(&self) -> usize {
        ENVELOPE
            + match self {
                FromWorker::Reply { result, .. } => result_len(result),
                FromWorker::HostCall {
                    actor,
                    binding,
                    namespace,
                    operation,
                    payload,
                    ..
                } => {
                    len_of(actor)
                        + len_of(binding)
                        + len_of(namespace)
                        + len_of(operation)
                        + len_of(payload)
                }
                FromWorker::CancelHostCall { .. } => 0,
                FromWorker::ForwardCall {
                    provider_key,
                    link_name,
                    contract_id,
                    actor,
                    operation,
                    payload,
                    ..
                } => {
                    len_of(provider_key)
                        + len_of(link_name)
                        + len_of(contract_id)
                        + len_of(actor)
                        + len_of(operation)
                        + len_of(payload)
                }
                FromWorker::Log { actor, text, .. } => len_of(actor) + len_of(text),
            }
    }

    fn refuse(&self, error: CallError) -> Option<Self> {
        match self {
            FromWorker::Reply { id, .. } => Some(FromWorker::Reply {
                id: *id,
                result: Err(error),
            }),
            _ => None,
        }
    }
}

/// The encoded size of a call's result.
pub(crate) fn result_len(result: &CallResult<Bytes>) -> usize {
    match result {
        Ok(bytes) => len_of(bytes),
        Err(e) => len_of(&e.message) + 16,
    }
}
