//! Messages on the control socket, between `host-core ctl` and a running host.
//! One request, one response, many requests per connection.

use serde::{Deserialize, Serialize};

use crate::{provider::Link, Bytes, CallError};

/// Control frames carry whole actors, but nothing larger.
pub const CONTROL_MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlRequest {
    Inventory,
    StartActor {
        actor: Artifact,
        count: u32,
    },
    ScaleActor {
        key: String,
        count: u32,
    },
    UpdateActor {
        key: String,
        actor: Artifact,
    },
    StopActor {
        key: String,
    },
    Call {
        key: String,
        operation: String,
        payload: Bytes,
    },
    StopHost,
    /// Start a provider from its archive (a path is read by the host).
    StartProvider {
        archive: Artifact,
        link_name: String,
        config_json: String,
    },
    StopProvider {
        key: String,
        link_name: String,
    },
    LinkPut(Link),
    LinkDel {
        actor_id: String,
        contract_id: String,
        link_name: String,
    },
    LinkList,
    /// Recent lifecycle events; with `follow`, the host then keeps sending
    /// each new event as its own reply until the client hangs up.
    Events {
        follow: bool,
    },
}

/// Where an actor's wasm or a provider's archive comes from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// The content itself (an actor read by the client).
    Bytes(Bytes),
    /// A file the host reads.
    Path(String),
    /// An OCI reference the host pulls (`registry/repo:tag`, `@sha256:`).
    Reference(String),
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlResponse {
    Ok(ControlReply),
    Err(CallError),
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlReply {
    Done,
    ActorStarted {
        key: String,
    },
    CallResult(Bytes),
    Inventory(Inventory),
    ProviderStarted {
        key: String,
    },
    Links(Vec<Link>),
    /// CloudEvents as JSON text, oldest first.
    Events(Vec<String>),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ActorKind {
    Module,
    Component,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ActorSummary {
    pub key: String,
    pub name: String,
    pub kind: ActorKind,
    pub issuer: String,
    pub rev: Option<i32>,
    pub ver: Option<String>,
    pub call_alias: Option<String>,
    pub caps: Vec<String>,
    pub count: u32,
    /// The OCI reference it was started from, if it came from a registry.
    pub image_ref: Option<String>,
}

/// Where a supervised process (or a provider) is in its life.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessState {
    Starting,
    Running,
    Restarting,
    Stopping,
    Stopped,
    /// Restarted more often than its restart intensity allows: left down.
    Failed,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Restarting => "restarting",
            ProcessState::Stopping => "stopping",
            ProcessState::Stopped => "stopped",
            ProcessState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ProcessSummary {
    pub name: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub state: ProcessState,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Inventory {
    /// The host's public key (`N...`).
    pub host_id: String,
    pub uptime_secs: u64,
    pub processes: Vec<ProcessSummary>,
    pub actors: Vec<ActorSummary>,
    pub providers: Vec<ProviderSummary>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ProviderSummary {
    pub key: String,
    pub name: String,
    pub link_name: String,
    pub contract_id: String,
    pub pid: Option<u32>,
    pub state: ProcessState,
    /// healthy, unhealthy: REASON, or unknown
    pub health: String,
    pub restarts: u32,
    /// The OCI reference it was started from, if it came from a registry.
    pub image_ref: Option<String>,
}
