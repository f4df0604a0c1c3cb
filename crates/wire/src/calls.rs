//! The table of calls in flight on one channel, correlated by id: every
//! channel of every process uses this one.
//!
//! A call [`register`](CallTable::register)s a waiter before its request is
//! sent; the channel's read loop [`complete`](CallTable::complete)s it by id.
//! A waiter that goes away (its caller gave up, or its deadline passed)
//! removes itself, and may tell the peer to drop the work (see
//! [`Pending::abandoned`]). When the peer dies, every waiter fails at once
//! with the reason and no new call can be added.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{CallError, CallResult};
use crate::message::WireMessage;
use crate::outbox::Outbox;
use crate::worker::CallId;

/// A waiter, and what it is a call to (an actor's key, say), if it said.
type Waiters<T> = HashMap<CallId, (oneshot::Sender<CallResult<T>>, Option<Arc<str>>)>;

pub struct CallTable<T> {
    /// `None` once the peer is gone; the error every later call gets.
    waiters: Mutex<Result<Waiters<T>, CallError>>,
    next_id: AtomicU64,
}

impl<T> std::fmt::Debug for CallTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTable")
            .field("in_flight", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> Default for CallTable<T> {
    fn default() -> Self {
        Self {
            waiters: Mutex::new(Ok(HashMap::new())),
            next_id: AtomicU64::new(1),
        }
    }
}

impl<T> CallTable<T> {
    /// A new waiter with a fresh id, or the error of a closed table.
    pub fn register(&self) -> CallResult<Pending<'_, T>> {
        self.register_tagged(None)
    }

    /// [`register`](Self::register), remembering what the call is to:
    /// [`fail_all`](Self::fail_all) says whose calls it failed.
    pub fn register_tagged(&self, tag: Option<Arc<str>>) -> CallResult<Pending<'_, T>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let alone = match &mut *self.waiters.lock() {
            Ok(waiters) => {
                waiters.insert(id, (tx, tag));
                waiters.len() == 1
            }
            Err(closed) => return Err(closed.clone()),
        };
        Ok(Pending {
            table: self,
            id,
            rx: Some(rx),
            alone,
            answered: false,
        })
    }

    /// Registers a call, lets `send` send the request with its id, and waits
    /// for the reply, at most `timeout`. `peer` names the other side in
    /// errors; `send` returns the error of a send that failed.
    pub async fn call(
        &self,
        peer: &str,
        timeout: Duration,
        send: impl FnOnce(CallId) -> CallResult<()>,
    ) -> CallResult<T> {
        let pending = self.register()?;
        send(pending.id())?;
        pending.wait_for(peer, timeout).await
    }

    /// Hands `result` to the waiter of `id`; `false` if nobody waits (it
    /// gave up, or the id is unknown).
    pub fn complete(&self, id: CallId, result: CallResult<T>) -> bool {
        let waiter = match &mut *self.waiters.lock() {
            Ok(waiters) => waiters.remove(&id),
            Err(_) => None,
        };
        match waiter {
            Some((waiter, _)) => waiter.send(result).is_ok(),
            None => false,
        }
    }

    /// Fails every call in flight with `error` and refuses new ones with
    /// it. Returns the tags of the calls it failed, one per call.
    pub fn fail_all(&self, error: CallError) -> Vec<Arc<str>> {
        let waiters = std::mem::replace(&mut *self.waiters.lock(), Err(error.clone()));
        let mut tags = Vec::new();
        for (_, (waiter, tag)) in waiters.into_iter().flatten() {
            tags.extend(tag);
            let _ = waiter.send(Err(error.clone()));
        }
        tags
    }

    /// Calls waiting for their answers now.
    pub fn len(&self) -> usize {
        self.waiters.lock().as_ref().map_or(0, HashMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// False once [`fail_all`](Self::fail_all) closed the table.
    pub fn is_open(&self) -> bool {
        self.waiters.lock().is_ok()
    }

    fn forget(&self, id: CallId) {
        if let Ok(waiters) = &mut *self.waiters.lock() {
            waiters.remove(&id);
        }
    }
}

/// One registered call. Dropped unanswered (its caller gave up), it leaves
/// the table.
#[derive(Debug)]
pub struct Pending<'a, T> {
    table: &'a CallTable<T>,
    id: CallId,
    rx: Option<oneshot::Receiver<CallResult<T>>>,
    alone: bool,
    answered: bool,
}

impl<T> Pending<'_, T> {
    pub fn id(&self) -> CallId {
        self.id
    }

    /// Whether this was the only call in flight when it was registered: its
    /// request can be written at once (see `Outbox::send_alone`).
    pub fn alone(&self) -> bool {
        self.alone
    }

    /// Waits for the answer. If the table is closed under it, the error is
    /// the table's reason.
    pub async fn wait(mut self) -> CallResult<T> {
        let rx = self.rx.take().expect("waited once");
        let result = match rx.await {
            Ok(result) => result,
            Err(_) => Err(self.closed_error()),
        };
        self.answered = true;
        result
    }

    /// [`wait`](Self::wait), at most `timeout`; `peer` names the other
    /// side in the timeout's message.
    pub async fn wait_for(self, peer: &str, timeout: Duration) -> CallResult<T> {
        let id = self.id;
        let table = self.table;
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(result) => result,
            Err(_) => {
                table.forget(id);
                Err(CallError::timeout(format!(
                    "no reply from {peer} within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }

    /// True while the call is still unanswered: a guard that sends the peer
    /// a cancellation when it drops can ask this first.
    pub fn abandoned(&self) -> bool {
        !self.answered
    }

    fn closed_error(&self) -> CallError {
        match &*self.table.waiters.lock() {
            Err(reason) => reason.clone(),
            Ok(_) => CallError::unavailable("the channel closed while handling this call"),
        }
    }
}

impl<T> Drop for Pending<'_, T> {
    fn drop(&mut self) {
        if !self.answered {
            self.table.forget(self.id);
        }
    }
}

/// Sends a cancellation on a channel when dropped, unless disarmed: a call
/// given up before its answer (its caller went away, its deadline passed)
/// tells the peer to drop the work.
pub struct CancelOnDrop<'a, T: WireMessage> {
    tx: &'a Outbox<T>,
    cancel: Option<T>,
}

impl<'a, T: WireMessage> CancelOnDrop<'a, T> {
    /// Arms `cancel` (the channel's cancel message for this call) on `tx`.
    pub fn new(tx: &'a Outbox<T>, cancel: T) -> Self {
        Self {
            tx,
            cancel: Some(cancel),
        }
    }

    /// The call was answered: nothing to cancel.
    pub fn disarm(mut self) {
        self.cancel = None;
    }
}

impl<T: WireMessage> Drop for CancelOnDrop<'_, T> {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = self.tx.send_now(cancel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[tokio::test]
    async fn answered_timed_out_abandoned_and_closed() {
        let table = CallTable::<u32>::default();
        let pending = table.register().unwrap();
        assert!(pending.alone());
        let id = pending.id();
        assert!(table.complete(id, Ok(7)));
        assert_eq!(pending.wait().await, Ok(7));
        assert!(table.is_empty());

        let err = table
            .call("the peer", Duration::from_millis(10), |_| Ok(()))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(err.message.contains("the peer"), "{err}");
        assert!(table.is_empty(), "a timed-out call leaves the table");

        let pending = table.register().unwrap();
        let id = pending.id();
        drop(pending);
        assert!(!table.complete(id, Ok(1)), "nobody waits for it");

        let pending = table.register_tagged(Some("MACTOR".into())).unwrap();
        let untagged = table.register().unwrap();
        let failed = table.fail_all(CallError::unavailable("the worker died"));
        assert_eq!(failed, vec![Arc::<str>::from("MACTOR")]);
        drop(untagged);
        assert_eq!(pending.wait().await.unwrap_err().message, "the worker died");
        assert_eq!(
            table.register().unwrap_err().message,
            "the worker died",
            "a closed table refuses new calls with its reason"
        );
        assert!(!table.is_open());
    }

    #[tokio::test]
    async fn a_failed_send_leaves_no_waiter() {
        let table = CallTable::<u32>::default();
        let err = table
            .call("p", Duration::from_secs(5), |_| {
                Err(CallError::unavailable("not connected"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert!(table.is_empty());
    }
}
