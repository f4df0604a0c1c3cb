//! What the host asks of the lattice it joined: calls to actors and
//! providers that run on other hosts. The lattice implements [`Remote`];
//! without one (a host that runs alone) such calls fail here, as before.
//!
//! Local targets never come here: the router sends a call to the lattice
//! only when no actor or provider of this host can take it.

use std::time::Duration;

use futures::future::BoxFuture;
use wire::{Bytes, CallResult};

/// Who makes a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An actor (of this host).
    Actor(String),
    /// A provider (of this host), through its link.
    Provider {
        key: String,
        link_name: String,
        contract_id: String,
    },
    /// The control interface (`ctl call`).
    Control,
}

/// Where a call to another host goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteTarget {
    Actor(String),
    Provider {
        provider_id: String,
        link_name: String,
        contract_id: String,
    },
}

/// One call for another host.
#[derive(Debug)]
pub struct RemoteCall {
    pub origin: Origin,
    pub target: RemoteTarget,
    pub operation: String,
    pub payload: Bytes,
    pub timeout: Duration,
}

pub trait Remote: Send + Sync + 'static {
    /// Carries the call to a host that runs its target, and its answer back.
    fn invoke(&self, call: RemoteCall) -> BoxFuture<'_, CallResult<Bytes>>;

    /// The key of the actor with this call alias anywhere in the lattice.
    fn actor_by_alias(&self, alias: &str) -> Option<String>;
}
