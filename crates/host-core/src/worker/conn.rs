//! One live connection to one worker process: requests out, their replies
//! back, and the answers to the worker's host calls.

use std::sync::Arc;
use std::time::Duration;

use wire::calls::{CallTable, CancelOnDrop};
use wire::outbox::Outbox;
use wire::worker::{CallId, ToWorker, WorkerRequest};
use wire::{Bytes, CallError, CallResult};

pub struct WorkerConn {
    tx: Outbox<ToWorker>,
    calls: CallTable<Bytes>,
}

impl WorkerConn {
    pub(super) fn new(tx: Outbox<ToWorker>) -> Self {
        Self {
            tx,
            calls: CallTable::default(),
        }
    }

    /// Sends a request and waits for its reply, at most `timeout`. A call
    /// given up before its reply (its caller went away, or the timeout)
    /// tells the worker to drop it.
    pub async fn request(&self, request: WorkerRequest, timeout: Duration) -> CallResult<Bytes> {
        self.send_and_wait(request, None, timeout).await
    }

    /// Invokes `operation` on `actor`; the call ends within `timeout`
    /// (the worker applies it from its arrival), and is tagged with the
    /// actor so that a worker crash under it counts against the actor.
    pub async fn invoke(
        &self,
        actor: &Arc<str>,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
        margin: Duration,
    ) -> CallResult<Bytes> {
        wire::check_payload("request", payload.len())?;
        let request = WorkerRequest::Invoke {
            actor: actor.to_string(),
            operation: operation.to_owned(),
            payload,
            timeout_ms: timeout.as_millis() as u64,
        };
        self.send_and_wait(request, Some(actor.clone()), timeout + margin)
            .await
    }

    async fn send_and_wait(
        &self,
        request: WorkerRequest,
        tag: Option<Arc<str>>,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        let pending = self.calls.register_tagged(tag)?;
        let id = pending.id();
        self.tx
            .send_now(ToWorker::Request { id, request })
            .map_err(|e| e.into_call_error("request"))?;
        let cancel = CancelOnDrop::new(&self.tx, ToWorker::Cancel { id });
        let result = pending.wait_for("the actor-runtime worker", timeout).await;
        cancel.disarm();
        result
    }

    pub(super) fn complete(&self, id: CallId, result: CallResult<Bytes>) {
        self.calls.complete(id, result);
    }

    /// Answers a host call; one too large for the channel goes as its error.
    pub(super) fn answer_host_call(&self, id: CallId, result: CallResult<Bytes>) {
        let _ = self
            .tx
            .send_reply_now(ToWorker::HostCallResult { id, result });
    }

    /// Fails every call in flight; returns the actor of each invocation
    /// among them.
    pub(super) fn fail_all(&self, error: CallError) -> Vec<Arc<str>> {
        self.calls.fail_all(error)
    }

    pub(super) fn send(&self, message: ToWorker) -> CallResult<()> {
        self.tx
            .send_now(message)
            .map_err(|e| e.into_call_error("message"))
    }
}
