//! Messages between `host-core` and the `actor-runtime` worker.
//!
//! Both directions carry correlated requests: the host sends [`ToWorker::Request`]s
//! (ids chosen by the host) and answers the worker's [`FromWorker::HostCall`]s
//! (ids chosen by the worker), so any number of calls are in flight at once
//! and a slow actor never holds up another.

use serde::{Deserialize, Serialize};

use crate::Bytes;

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
    Invoke {
        actor: String,
        operation: String,
        payload: Bytes,
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
        result: Result<Bytes, String>,
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
        result: Result<Bytes, String>,
    },
    /// An actor calls out (`__host_call` or the component's `host.call`) to
    /// something the worker cannot answer itself: a provider or another actor.
    HostCall {
        id: CallId,
        actor: String,
        binding: String,
        namespace: String,
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
