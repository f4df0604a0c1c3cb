//! Messages between `host-core` and a capability provider (through `shim`).
//!
//! The launcher writes a [`Bootstrap`] frame to the provider's standard input.
//! The provider then connects to `socket`, sends a handshake `Hello` with role
//! `Provider` and the per-launch `token`, and from then on the host sends
//! [`ToProvider`] and the provider answers with [`FromProvider`].
//!
//! The host may also open the provider a direct channel to the worker
//! ([`ToProvider::DataPath`]). On it the provider sends `CallActor` and gets
//! `CallActorResult`, and the worker sends actors' `Invoke`s (for the
//! provider's links) and gets `InvokeResult`; nothing else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::message::{len_of, WireMessage, ENVELOPE};
use crate::worker::result_len;
use crate::{worker::CallId, Bytes, CallError, CallResult};

/// Everything a provider needs to find and join its host. Sent on stdin, never
/// in the environment or on the command line, where other processes can read it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Bootstrap {
    pub socket: String,
    /// A secret for this launch only: without it nobody can pose as the provider.
    pub token: String,
    pub host_id: String,
    pub provider_key: String,
    pub link_name: String,
    pub contract_id: String,
    /// The provider's configuration, as given to `start-provider --config` (JSON text).
    pub config_json: String,
    /// An owner-only directory under the host's state directory for this
    /// provider's data (`{state}/data/{provider key}/{link name}`); it
    /// outlives provider restarts and host restarts.
    pub data_dir: String,
}

/// A link: (actor, contract, link name) to a provider, with values.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub actor_id: String,
    pub provider_id: String,
    pub contract_id: String,
    pub link_name: String,
    pub values: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ToProvider {
    /// The links that name this provider, sent once after the handshake.
    Init {
        links: Vec<Link>,
    },
    LinkPut(Link),
    LinkDel {
        actor_id: String,
        contract_id: String,
        link_name: String,
    },
    /// An actor calls the provider.
    Invoke {
        id: CallId,
        actor_id: String,
        operation: String,
        payload: Bytes,
    },
    HealthCheck {
        id: CallId,
    },
    /// The answer to [`FromProvider::CallActor`].
    CallActorResult {
        id: CallId,
        result: CallResult<Bytes>,
    },
    /// The caller of `Invoke` `id` went away: stop it; no answer is needed.
    Cancel {
        id: CallId,
    },
    /// Stop now: the provider cleans up and exits.
    Shutdown,
    /// A direct channel to the actor-runtime worker is open to this provider:
    /// connect to `socket`, hand over `token` with the provider key in the
    /// handshake, and send `CallActor` there instead of through the host (it
    /// saves a hop each way). Answers come back as `CallActorResult` on that
    /// channel; a call unanswered after `timeout_ms` fails. Actors' calls to
    /// the provider may arrive there too, as `Invoke`. Sent again with a
    /// new token whenever the worker restarts; until then, and whenever the
    /// direct channel is down, calls go through the host as before.
    DataPath {
        socket: String,
        token: String,
        timeout_ms: u64,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum FromProvider {
    /// `Init` was handled; the provider is serving.
    Ready,
    /// The answer to [`ToProvider::Invoke`].
    InvokeResult {
        id: CallId,
        result: CallResult<Bytes>,
    },
    Health {
        id: CallId,
        healthy: bool,
        message: String,
    },
    /// The provider calls an actor (for example an HTTP request to handle).
    CallActor {
        id: CallId,
        actor_id: String,
        operation: String,
        payload: Bytes,
    },
    /// The provider gave up on `CallActor` `id` (its own caller went away):
    /// drop it if it has not run yet.
    CancelCall { id: CallId },
}

fn link_len(link: &Link) -> usize {
    // Field names and the map's header.
    64 + len_of(&link.actor_id)
        + len_of(&link.provider_id)
        + len_of(&link.contract_id)
        + len_of(&link.link_name)
        + link
            .values
            .iter()
            .map(|(k, v)| len_of(k) + len_of(v))
            .sum::<usize>()
}

impl WireMessage for ToProvider {
    fn size_hint(&self) -> usize {
        ENVELOPE
            + match self {
                ToProvider::Init { links } => links.iter().map(link_len).sum(),
                ToProvider::LinkPut(link) => link_len(link),
                ToProvider::LinkDel {
                    actor_id,
                    contract_id,
                    link_name,
                } => len_of(actor_id) + len_of(contract_id) + len_of(link_name),
                ToProvider::Invoke {
                    actor_id,
                    operation,
                    payload,
                    ..
                } => len_of(actor_id) + len_of(operation) + len_of(payload),
                ToProvider::CallActorResult { result, .. } => result_len(result),
                ToProvider::DataPath { socket, token, .. } => len_of(socket) + len_of(token),
                ToProvider::HealthCheck { .. }
                | ToProvider::Cancel { .. }
                | ToProvider::Shutdown => 0,
            }
    }

    fn refuse(&self, error: CallError) -> Option<Self> {
        match self {
            ToProvider::CallActorResult { id, .. } => Some(ToProvider::CallActorResult {
                id: *id,
                result: Err(error),
            }),
            _ => None,
        }
    }
}

impl WireMessage for FromProvider {
    fn size_hint(&self) -> usize {
        ENVELOPE
            + match self {
                FromProvider::Ready | FromProvider::CancelCall { .. } => 0,
                FromProvider::InvokeResult { result, .. } => result_len(result),
                FromProvider::Health { message, .. } => len_of(message),
                FromProvider::CallActor {
                    actor_id,
                    operation,
                    payload,
                    ..
                } => len_of(actor_id) + len_of(operation) + len_of(payload),
            }
    }

    fn refuse(&self, error: CallError) -> Option<Self> {
        match self {
            FromProvider::InvokeResult { id, .. } => Some(FromProvider::InvokeResult {
                id: *id,
                result: Err(error),
            }),
            FromProvider::Health { id, .. } => Some(FromProvider::Health {
                id: *id,
                healthy: false,
                message: error.message,
            }),
            _ => None,
        }
    }
}
