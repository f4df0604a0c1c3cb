//! [`HostHandle`]: what a provider knows about its host, and its way to call
//! actors through it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use wire::provider::{Bootstrap, FromProvider};
use wire::worker::CallId;
use wire::Bytes;

use crate::ProviderError;

type Reply = Result<Bytes, String>;

/// The provider's view of its host: the ids and config it was started with,
/// and [`call_actor`](Self::call_actor). Cheap to clone.
#[derive(Clone)]
pub struct HostHandle {
    inner: Arc<Inner>,
}

struct Inner {
    bootstrap: Bootstrap,
    out: mpsc::Sender<FromProvider>,
    next_id: AtomicU64,
    /// Calls to actors waiting for their `CallActorResult`. `None` once the
    /// channel to the host is gone: new calls fail at once.
    pending: Mutex<Option<HashMap<CallId, oneshot::Sender<Reply>>>>,
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
    pub(crate) fn new(bootstrap: Bootstrap, out: mpsc::Sender<FromProvider>) -> Self {
        Self {
            inner: Arc::new(Inner {
                bootstrap,
                out,
                next_id: AtomicU64::new(1),
                pending: Mutex::new(Some(HashMap::new())),
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

    /// Calls `operation` on the actor `actor_id` through the host (provider to
    /// actor, e.g. `HttpServer.HandleRequest`) and waits for its answer. Many
    /// calls may be in flight at once. Fails if the actor fails or the host
    /// goes away.
    pub async fn call_actor(
        &self,
        actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ProviderError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending().as_mut() {
            Some(pending) => {
                pending.insert(id, tx);
            }
            None => return Err(host_gone()),
        }
        // Forget the entry however this future ends (answered or dropped).
        let _entry = PendingEntry { host: self, id };
        self.inner
            .out
            .send(FromProvider::CallActor {
                id,
                actor_id: actor_id.to_owned(),
                operation: operation.to_owned(),
                payload: Bytes::from(payload),
            })
            .await
            .map_err(|_| host_gone())?;
        match rx.await {
            Ok(Ok(bytes)) => Ok(bytes.into_vec()),
            Ok(Err(message)) => Err(ProviderError::new(message)),
            Err(_) => Err(host_gone()),
        }
    }

    /// Hands a `CallActorResult` to the waiting `call_actor`, if still there.
    pub(crate) fn complete(&self, id: CallId, result: Reply) {
        let waiter = self.pending().as_mut().and_then(|p| p.remove(&id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => tracing::debug!(id, "result for an unknown or abandoned actor call"),
        }
    }

    /// The channel is gone: fail every waiting call and refuse new ones.
    pub(crate) fn close(&self) {
        // Dropping the senders wakes every waiter with an error.
        drop(self.pending().take());
    }

    fn pending(&self) -> MutexGuard<'_, Option<HashMap<CallId, oneshot::Sender<Reply>>>> {
        // The map stays consistent even if a holder panicked: every critical
        // section is a single insert, remove or take.
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct PendingEntry<'a> {
    host: &'a HostHandle,
    id: CallId,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.host.pending().as_mut() {
            pending.remove(&self.id);
        }
    }
}

fn host_gone() -> ProviderError {
    ProviderError::new("the connection to the host is closed")
}
