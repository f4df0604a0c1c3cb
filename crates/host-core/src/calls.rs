//! A table of calls in flight on one channel, correlated by id.
//!
//! Each call registers a one-shot waiter before its request is sent; the
//! channel's read loop completes it by id. When the peer dies, every waiter
//! fails at once with the reason and no new call can be added.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use tokio::sync::oneshot;
use wire::worker::CallId;

type Waiters<T> = HashMap<CallId, oneshot::Sender<Result<T, String>>>;

pub struct CallTable<T> {
    /// `None` once the peer is gone.
    waiters: Mutex<Option<Waiters<T>>>,
    next_id: AtomicU64,
}

impl<T> Default for CallTable<T> {
    fn default() -> Self {
        Self {
            waiters: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
        }
    }
}

impl<T> CallTable<T> {
    /// Registers a call, lets `send` send the request with its id, and waits
    /// for the reply at most `timeout`. `peer` names the other side in errors.
    pub async fn call(
        &self,
        peer: &str,
        timeout: Duration,
        send: impl FnOnce(CallId) -> bool,
    ) -> Result<T, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.lock().as_mut() {
            Some(waiters) => waiters.insert(id, tx),
            None => return Err(format!("{peer} is not connected")),
        };
        if !send(id) {
            self.forget(id);
            return Err(format!("{peer} is not connected"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("{peer} dropped the call")),
            Err(_) => {
                self.forget(id);
                Err(format!(
                    "no reply from {peer} within {} ms",
                    timeout.as_millis()
                ))
            }
        }
    }

    pub fn complete(&self, id: CallId, result: Result<T, String>) {
        let waiter = self.lock().as_mut().and_then(|w| w.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    /// Fails every call in flight with `reason` and refuses new ones.
    pub fn fail_all(&self, reason: &str) {
        let waiters = self.lock().take();
        for (_, waiter) in waiters.into_iter().flatten() {
            let _ = waiter.send(Err(reason.to_owned()));
        }
    }

    fn forget(&self, id: CallId) {
        if let Some(waiters) = self.lock().as_mut() {
            waiters.remove(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiters<T>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}
