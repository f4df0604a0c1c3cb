//! Messages on the control socket, between `host-core ctl` and a running host.
//! One request, one response, many requests per connection.

use serde::{Deserialize, Serialize};

use crate::Bytes;

/// Control frames carry whole actors, but nothing larger.
pub const CONTROL_MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlRequest {
    Inventory,
    StartActor {
        wasm: Bytes,
        count: u32,
    },
    ScaleActor {
        key: String,
        count: u32,
    },
    UpdateActor {
        key: String,
        wasm: Bytes,
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
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlResponse {
    Ok(ControlReply),
    Err(String),
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlReply {
    Done,
    ActorStarted { key: String },
    CallResult(Bytes),
    Inventory(Inventory),
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
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ProcessSummary {
    pub name: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub state: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Inventory {
    /// The host's public key (`N...`).
    pub host_id: String,
    pub uptime_secs: u64,
    pub processes: Vec<ProcessSummary>,
    pub actors: Vec<ActorSummary>,
}
