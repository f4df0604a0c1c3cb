//! Messages between `host-core` and the `provider-launcher` process.
//!
//! The launcher only starts, signals and reaps processes; it knows nothing of
//! links or invocations. Each launch has an `instance` id chosen by the host.

use serde::{Deserialize, Serialize};

use crate::{worker::CallId, Bytes};

/// Identifies one launch of one provider process.
pub type InstanceId = u64;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LaunchSpec {
    pub instance: InstanceId,
    /// Used to name the provider's cgroup and to prefix its output.
    pub provider_key: String,
    pub link_name: String,
    /// The extracted, hash-checked provider binary.
    pub binary: String,
    /// The whole environment of the provider: nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Written to the provider's standard input, which is then closed.
    pub stdin: Bytes,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum LauncherRequest {
    /// Fork and exec a provider in its own process group. Replies with its pid.
    Launch(LaunchSpec),
    /// SIGTERM to the provider's group, SIGKILL after `grace_ms`; replies once
    /// every process of the group is gone.
    Stop { instance: InstanceId, grace_ms: u64 },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ToLauncher {
    Request {
        id: CallId,
        request: LauncherRequest,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum FromLauncher {
    /// `Ok(pid)` for a launch, `Ok(0)` for a stop.
    Reply {
        id: CallId,
        result: Result<u32, String>,
    },
    /// A provider process ended (planned or not) and was reaped.
    Exited {
        instance: InstanceId,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// One line a provider wrote to stdout or stderr.
    Output {
        instance: InstanceId,
        stream: OutputStream,
        line: String,
    },
}
