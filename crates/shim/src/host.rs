//! [`HostHandle`]: what a provider knows about its host, and its way to call
//! actors through it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use wire::calls::{CallTable, CancelOnDrop};
use wire::outbox::{Outbox, SendError};
use wire::provider::{Bootstrap, FromProvider};
use wire::worker::CallId;
use wire::{Bytes, CallError, CallResult};

use crate::ProviderError;

/// The provider's view of its host: the ids and config it was started with,
/// and [`call_actor`](Self::call_actor). Cheap to clone.
#[derive(Clone)]
pub struct HostHandle {
    inner: Arc<Inner>,
}

struct Inner {
    bootstrap: Bootstrap,
    /// The channel to the host.
    host: Arc<Channel>,
    /// A direct channel to the actor-runtime worker, when one is open: calls
    /// to actors go there and skip the hop through the host.
    direct: Mutex<Option<Arc<Channel>>>,
}

/// One channel that carries `CallActor` out and `CallActorResult` back.
pub(crate) struct Channel {
    out: Outbox<FromProvider>,
    /// Calls waiting for their `CallActorResult`.
    calls: CallTable<Bytes>,
    /// Set on direct channels; the host applies its own deadline.
    timeout: Option<Duration>,
    /// Why a call fails when the channel closes under it.
    gone: &'static str,
}

impl Channel {
    pub(crate) fn new(
        out: Outbox<FromProvider>,
        timeout: Option<Duration>,
        gone: &'static str,
    ) -> Self {
        Self {
            out,
            calls: CallTable::default(),
            timeout,
            gone,
        }
    }

    async fn call(
        &self,
        actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ProviderError> {
        wire::check_payload("request", payload.len())?;
        let pending = self.calls.register()?;
        let id = pending.id();
        self.out
            .send(FromProvider::CallActor {
                id,
                actor_id: actor_id.to_owned(),
                operation: operation.to_owned(),
                payload: Bytes::from(payload),
            })
            .await
            .map_err(|e| match e {
                SendError::Closed => CallError::unavailable(self.gone),
                other => other.into_call_error("request"),
            })?;
        // A call given up before its answer (its caller went away, or the
        // deadline passed) tells the other side to drop it.
        let cancel = CancelOnDrop::new(&self.out, FromProvider::CancelCall { id });
        let answer = match self.timeout {
            Some(limit) => pending.wait_for("the actor runtime", limit).await,
            None => pending.wait().await,
        };
        cancel.disarm();
        Ok(answer?.into_vec())
    }

    /// Hands a `CallActorResult` to the waiting call, if still there.
    pub(crate) fn complete(&self, id: CallId, result: CallResult<Bytes>) {
        if !self.calls.complete(id, result) {
            tracing::debug!(id, "result for an unknown or abandoned actor call");
        }
    }

    /// The channel is gone: fail every waiting call and refuse new ones.
    pub(crate) fn close(&self) {
        self.calls.fail_all(CallError::unavailable(self.gone));
    }

    fn is_open(&self) -> bool {
        self.calls.is_open()
    }
}

impl fmt::Debug for HostHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostHandle")
            .field("host_id", &self.host_id())
            .field("provider_key", &self.provider_key())
            .field("link_name", &self.link_name())
            .field("contract_id", &self.contract_id())
            .finish_non_exhaustive()
    }
}

impl HostHandle {
    pub(crate) fn new(bootstrap: Bootstrap, out: Outbox<FromProvider>) -> Self {
        Self {
            inner: Arc::new(Inner {
                bootstrap,
                host: Arc::new(Channel::new(out, None, HOST_GONE)),
                direct: Mutex::new(None),
            }),
        }
    }

    /// The `N...` key of the host that started this provider.
    pub fn host_id(&self) -> &str {
        &self.inner.bootstrap.host_id
    }

    /// This provider's `V...` key.
    pub fn provider_key(&self) -> &str {
        &self.inner.bootstrap.provider_key
    }

    /// The link name this instance serves (`default` unless set).
    pub fn link_name(&self) -> &str {
        &self.inner.bootstrap.link_name
    }

    /// The contract id this provider implements, such as `wasmcloud:keyvalue`.
    pub fn contract_id(&self) -> &str {
        &self.inner.bootstrap.contract_id
    }

    /// The configuration given to `start-provider --config`, as JSON text
    /// (possibly empty).
    pub fn config_json(&self) -> &str {
        &self.inner.bootstrap.config_json
    }

    /// An owner-only directory for this provider's persistent data, under the
    /// host's state directory; it survives restarts of the provider and host.
    pub fn data_dir(&self) -> &std::path::Path {
        std::path::Path::new(&self.inner.bootstrap.data_dir)
    }

    /// The configuration parsed as `T`; an empty config reads as `{}`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, ProviderError> {
        let json = self.config_json().trim();
        let json = if json.is_empty() { "{}" } else { json };
        serde_json::from_str(json).map_err(|e| ProviderError::new(format!("invalid config: {e}")))
    }

    /// Calls `operation` on the actor `actor_id` (provider to actor, e.g.
    /// `HttpServer.HandleRequest`) and waits for its answer: over the direct
    /// channel to the worker when one is open, else through the host. Many
    /// calls may be in flight at once. Fails if the actor fails, the deadline
    /// passes or the channel goes away.
    pub async fn call_actor(
        &self,
        actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ProviderError> {
        // The worker knows actors by key only; call aliases go via the host.
        if is_actor_key(actor_id) {
            if let Some(direct) = self.direct() {
                return direct.call(actor_id, operation, payload).await;
            }
        }
        self.inner.host.call(actor_id, operation, payload).await
    }

    /// Hands a `CallActorResult` from the host to the waiting `call_actor`.
    pub(crate) fn complete(&self, id: CallId, result: CallResult<Bytes>) {
        self.inner.host.complete(id, result);
    }

    /// The host's channel is gone: fail every waiting call and refuse new
    /// ones, on the direct channel too.
    pub(crate) fn close(&self) {
        self.inner.host.close();
        if let Some(direct) = self.inner.direct.lock().take() {
            direct.close();
        }
    }

    /// Makes `channel` the direct channel (replacing one that is gone).
    pub(crate) fn set_direct(&self, channel: Arc<Channel>) {
        if self.inner.host.is_open() {
            *self.inner.direct.lock() = Some(channel);
        } else {
            channel.close();
        }
    }

    /// `channel` closed: calls go through the host again, unless a newer
    /// direct channel already took its place.
    pub(crate) fn direct_closed(&self, channel: &Arc<Channel>) {
        channel.close();
        let mut direct = self.inner.direct.lock();
        if direct.as_ref().is_some_and(|d| Arc::ptr_eq(d, channel)) {
            *direct = None;
        }
    }

    fn direct(&self) -> Option<Arc<Channel>> {
        self.inner.direct.lock().clone()
    }
}

/// An actor's public key: 56 characters, starting with `M`.
fn is_actor_key(id: &str) -> bool {
    id.len() == 56 && id.starts_with('M')
}

const HOST_GONE: &str = "the connection to the host is closed";
