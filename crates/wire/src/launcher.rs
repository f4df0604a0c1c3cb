//! Messages between `host-core` and the `provider-launcher` process.
//!
//! The launcher only starts, signals and reaps processes; it knows nothing of
//! links or invocations. Each launch has an `instance` id chosen by the host.

use serde::{Deserialize, Serialize};

use crate::message::{len_of, WireMessage, ENVELOPE};
use crate::{worker::CallId, Bytes, CallError, CallResult};

/// Identifies one launch of one provider process.
pub type InstanceId = u64;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LaunchSpec {
    pub instance: InstanceId,
    /// Used to name the provider's cgroup and to prefix its output.
    pub provider_key: String,
    pub link_name: String,
    /// The extracted provider binary; also the provider's `argv[0]`.
    pub binary: String,
    /// SHA-256 of the binary, upper-case hex, as the archive's signed claims
    /// have it. The launcher hashes what it reads and runs exactly those
    /// bytes (from a sealed in-memory copy), or refuses the launch.
    pub binary_sha256: String,
    /// The provider's own data directory: the only place it may write.
    pub data_dir: String,
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

/// How a provider process is confined, reported once per launch, before the
/// launch's reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// The Landlock sandbox is fully in force (files, signals, abstract
    /// sockets; ptrace of anything outside the sandbox).
    Landlock { abi: u32 },
    /// Landlock is missing or only partly enforced by this kernel: the
    /// provider runs with what is said here.
    Partial { reason: String },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum FromLauncher {
    /// `Ok(pid)` for a launch, `Ok(0)` for a stop.
    Reply { id: CallId, result: CallResult<u32> },
    /// A provider process ended (planned or not) and was reaped.
    Exited {
        instance: InstanceId,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// How the provider of a launch is confined; sent before its reply.
    Confined {
        instance: InstanceId,
        confinement: Confinement,
    },
    /// One line a provider wrote to stdout or stderr.
    Output {
        instance: InstanceId,
        stream: OutputStream,
        line: String,
    },
}

impl WireMessage for ToLauncher {
    fn size_hint(&self) -> usize {
        ENVELOPE
            + match self {
                ToLauncher::Request {
                    request: LauncherRequest::Launch(spec),
                    ..
                } => {
                    len_of(&spec.provider_key)
                        + len_of(&spec.link_name)
                        + len_of(&spec.binary)
                        + len_of(&spec.binary_sha256)
                        + len_of(&spec.data_dir)
                        + len_of(&spec.stdin)
                        + spec
                            .env
                            .iter()
                            .map(|(k, v)| len_of(k) + len_of(v))
                            .sum::<usize>()
                }
                ToLauncher::Request {
                    request: LauncherRequest::Stop { .. },
                    ..
                } => 0,
            }
    }
}

impl WireMessage for FromLauncher {
    fn size_hint(&self) -> usize {
        ENVELOPE
            + match self {
                FromLauncher::Reply { result, .. } => match result {
                    Ok(_) => 0,
                    Err(e) => len_of(&e.message),
                },
                FromLauncher::Exited { .. } => 0,
                FromLauncher::Confined { confinement, .. } => match confinement {
                    Confinement::Landlock { .. } => 0,
                    Confinement::Partial { reason } => len_of(reason),
                },
                FromLauncher::Output { line, .. } => len_of(line),
            }
    }

    fn refuse(&self, error: CallError) -> Option<Self> {
        match self {
            FromLauncher::Reply { id, .. } => Some(FromLauncher::Reply {
                id: *id,
                result: Err(error),
            }),
            _ => None,
        }
    }
}
