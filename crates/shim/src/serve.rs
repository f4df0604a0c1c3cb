//! The provider's side of the channel after the handshake.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use wire::outbox::Outbox;
use wire::provider::{Bootstrap, FromProvider, Link, ToProvider};
use wire::worker::CallId;
use wire::{Bytes, CallError, FrameReader, FrameWriter};

use crate::{Health, HostHandle, Provider, ShimError};

/// Frames waiting for the writer task; senders wait when it is full.
pub(crate) const OUT_QUEUE: usize = 1024;

enum LinkOp {
    Put(Link),
    Del {
        actor_id: String,
        contract_id: String,
        link_name: String,
    },
}

/// Serves the host on an established channel (after the handshake): waits
/// for `Init`, calls [`Provider::init`] and `link_added` for each initial
/// link in order, sends `Ready`, then handles the host's messages until a
/// `Shutdown` or the end of the stream, and calls [`Provider::shutdown`].
///
/// Every `Invoke` and `HealthCheck` runs in its own task; link changes run
/// one at a time in arrival order, on a task of their own, so they never hold
/// up invocations. One writer task sends every outgoing frame.
///
/// `run` calls this on the host's socket; tests can call it on an in-memory
/// pipe (`tokio::io::duplex`).
pub async fn serve<P, R, W>(
    provider: Arc<P>,
    bootstrap: Bootstrap,
    reader: R,
    writer: W,
) -> Result<(), ShimError>
where
    P: Provider,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    serve_with(provider, bootstrap, reader, writer, None).await
}

/// [`serve`], with `direct` the socket under `writer` when it is one, so a
/// quiet channel's messages are written by their own task.
pub(crate) async fn serve_with<P, R, W>(
    provider: Arc<P>,
    bootstrap: Bootstrap,
    reader: R,
    writer: W,
    direct: Option<std::os::unix::net::UnixStream>,
) -> Result<(), ShimError>
where
    P: Provider,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, writer_task) = spawn_outbox(writer, direct);
    let host = HostHandle::new(bootstrap, out.clone());
    let mut frames = FrameReader::<_, ToProvider>::new(reader);

    let result = serve_inner(&provider, &host, &out, &mut frames).await;

    host.close();
    provider.shutdown().await;
    writer_task.abort();
    match &result {
        Ok(()) => tracing::debug!("provider stopped"),
        Err(e) => tracing::error!("provider stopped: {e}"),
    }
    result
}

async fn serve_inner<P, R>(
    provider: &Arc<P>,
    host: &HostHandle,
    out: &Outbox<FromProvider>,
    frames: &mut FrameReader<R, ToProvider>,
) -> Result<(), ShimError>
where
    P: Provider,
    R: AsyncRead + Unpin,
{
    let links = match frames.recv().await? {
        Some(ToProvider::Init { links }) => links,
        // Stopped before it started.
        None | Some(ToProvider::Shutdown) => return Ok(()),
        Some(other) => {
            return Err(ShimError::Protocol(format!(
                "expected Init as the first message, got {}",
                message_name(&other)
            )))
        }
    };
    provider.init(host).await.map_err(ShimError::Init)?;
    for link in links {
        apply_link(&**provider, LinkOp::Put(link)).await;
    }
    if out.send(FromProvider::Ready).await.is_err() {
        // The writer failed: the channel is gone.
        return Ok(());
    }

    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let link_task = tokio::spawn(apply_links(provider.clone(), link_rx));
    // Invocations apart from the rest (health checks, the direct channel),
    // so that "no call in flight" means what it says.
    let mut calls = Invocations::default();
    let mut tasks = JoinSet::new();

    let result = loop {
        // Reap finished tasks so the sets only hold what is in flight.
        calls.reap();
        while tasks.try_join_next().is_some() {}
        let received = tokio::select! {
            received = frames.recv() => received,
            // The writer died (a write to the host failed): the channel is
            // half dead, so end it rather than read on.
            _ = out.closed() => break Err(ShimError::Protocol(
                "the channel to the host can no longer be written".into(),
            )),
        };
        let msg = match received {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                tracing::debug!("the host closed the channel");
                break Ok(());
            }
            Err(e) => break Err(ShimError::from(e)),
        };
        match msg {
            ToProvider::Invoke {
                id,
                actor_id,
                operation,
                payload,
            } => {
                let call = invoke(
                    provider.clone(),
                    out.clone(),
                    id,
                    actor_id,
                    operation,
                    payload,
                );
                calls.start(id, call).await;
            }
            ToProvider::Cancel { id } => calls.cancel(id),
            ToProvider::HealthCheck { id } => {
                let provider = provider.clone();
                let out = out.clone();
                tasks.spawn(async move {
                    let health = CatchUnwind(Box::pin(provider.health()))
                        .await
                        .unwrap_or_else(|()| Health::unhealthy("the health check panicked"));
                    let _ = out
                        .send(FromProvider::Health {
                            id,
                            healthy: health.healthy,
                            message: health.message,
                        })
                        .await;
                });
            }
            ToProvider::CallActorResult { id, result } => host.complete(id, result),
            ToProvider::LinkPut(link) => {
                let _ = link_tx.send(LinkOp::Put(link));
            }
            ToProvider::LinkDel {
                actor_id,
                contract_id,
                link_name,
            } => {
                let _ = link_tx.send(LinkOp::Del {
                    actor_id,
                    contract_id,
                    link_name,
                });
            }
            ToProvider::DataPath {
                socket,
                token,
                timeout_ms,
            } => {
                // Ends on its own when the channel closes; aborted with the
                // other tasks when the host goes away.
                tasks.spawn(crate::direct::run(
                    provider.clone(),
                    host.clone(),
                    socket,
                    token,
                    timeout_ms,
                ));
            }
            ToProvider::Init { .. } => tracing::warn!("ignoring a second Init from the host"),
            ToProvider::Shutdown => {
                tracing::debug!("shutdown requested by the host");
                break Ok(());
            }
        }
    };

    // Link changes already received are applied before the provider shuts
    // down; calls still in flight are abandoned (the host fails them).
    drop(link_tx);
    let _ = link_task.await;
    host.close();
    calls.abort_all();
    tasks.abort_all();
    result
}

/// The invocations in flight on one channel, by call id, so that a
/// `Cancel` can stop one.
#[derive(Default)]
pub(crate) struct Invocations {
    tasks: JoinSet<CallId>,
    running: HashMap<CallId, AbortHandle>,
}

impl Invocations {
    /// Starts one [`invoke`] (see [`start_invoke`]).
    pub(crate) async fn start<F>(&mut self, id: CallId, call: F)
    where
        F: Future<Output = CallId> + Send + 'static,
    {
        if let Some(handle) = start_invoke(&mut self.tasks, call).await {
            self.running.insert(id, handle);
        }
    }

    /// Stops call `id` if it still runs; its answer is not sent.
    pub(crate) fn cancel(&mut self, id: CallId) {
        if let Some(handle) = self.running.remove(&id) {
            handle.abort();
        }
    }

    /// Forgets the calls that finished.
    pub(crate) fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(id) = done {
                self.running.remove(&id);
            }
        }
    }

    pub(crate) fn abort_all(&mut self) {
        self.tasks.abort_all();
        self.running.clear();
    }
}

thread_local! {
    /// True while [`start_invoke`] polls a call on the reading task with no
    /// other call in flight. An answer ready within that poll is then the
    /// channel's only message, and [`invoke`] sends it alone.
    static POLLING_ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Restores [`POLLING_ALONE`] when the poll ends, even by unwinding.
struct PollingAlone {
    before: bool,
}

impl PollingAlone {
    fn begin() -> Self {
        Self {
            before: POLLING_ALONE.replace(true),
        }
    }
}

impl Drop for PollingAlone {
    fn drop(&mut self) {
        POLLING_ALONE.set(self.before);
    }
}

/// Starts one [`invoke`]. When no other call is in flight, its first poll
/// runs right here, on the reading task: a call that completes without
/// waiting (a keyvalue get) answers with no task hand-off on the hop's
/// critical path, and its answer is sent alone (written at once, see
/// [`Outbox::send_alone`]). Otherwise, or if it must wait, it gets a task of
/// its own, so under concurrency a slow first poll never holds up the
/// other calls.
async fn start_invoke<F>(tasks: &mut JoinSet<CallId>, call: F) -> Option<AbortHandle>
where
    F: Future<Output = CallId> + Send + 'static,
{
    if !tasks.is_empty() {
        return Some(tasks.spawn(call));
    }
    let mut call = Box::pin(call);
    // Polled with the reader's waker; the task it may move to polls it
    // again at once and registers its own.
    let first = std::future::poll_fn(|cx| {
        let _alone = PollingAlone::begin();
        Poll::Ready(call.as_mut().poll(cx))
    })
    .await;
    first.is_pending().then(|| tasks.spawn(call))
}

/// Runs one `Invoke` and sends its `InvokeResult` on `out` (the host's
/// channel or a direct one, wherever the call came from). Ends with the
/// call's id.
pub(crate) async fn invoke<P: Provider>(
    provider: Arc<P>,
    out: Outbox<FromProvider>,
    id: CallId,
    actor_id: String,
    operation: String,
    payload: Bytes,
) -> CallId {
    // Created inside the catch: code before the provider's first await may
    // panic too, and may run on the reading task (see `start_invoke`).
    let call = async {
        provider
            .invoke(&actor_id, &operation, payload.into_vec())
            .await
    };
    let result = match CatchUnwind(Box::pin(call)).await {
        Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
        Ok(Err(e)) => Err(e.into_call_error()),
        Err(()) => Err(CallError::provider_fault(format!(
            "the provider panicked in {operation}"
        ))),
    };
    // One too large for the channel goes as its error.
    if let Ok(answer) = out.fit(FromProvider::InvokeResult { id, result }) {
        let _ = if POLLING_ALONE.get() {
            out.send_alone(answer).await
        } else {
            out.send(answer).await
        };
    }
    id
}

async fn apply_links<P: Provider>(provider: Arc<P>, mut ops: mpsc::UnboundedReceiver<LinkOp>) {
    while let Some(op) = ops.recv().await {
        apply_link(&*provider, op).await;
    }
}

async fn apply_link<P: Provider>(provider: &P, op: LinkOp) {
    match op {
        LinkOp::Put(link) => {
            let (actor, link_name) = (link.actor_id.clone(), link.link_name.clone());
            tracing::debug!(actor = %actor, link_name = %link_name, "link added");
            match CatchUnwind(Box::pin(provider.link_added(link))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(actor = %actor, link_name = %link_name, "link_added failed: {e}")
                }
                Err(()) => {
                    tracing::error!(actor = %actor, link_name = %link_name, "link_added panicked")
                }
            }
        }
        LinkOp::Del {
            actor_id,
            contract_id,
            link_name,
        } => {
            tracing::debug!(actor = %actor_id, link_name = %link_name, "link removed");
            let call = provider.link_removed(&actor_id, &contract_id, &link_name);
            if CatchUnwind(Box::pin(call)).await.is_err() {
                tracing::error!(actor = %actor_id, link_name = %link_name, "link_removed panicked");
            }
        }
    }
}

/// The outbox of a channel on `writer`, with its pump spawned.
pub(crate) fn spawn_outbox<W: AsyncWrite + Unpin + Send + 'static>(
    writer: W,
    direct: Option<std::os::unix::net::UnixStream>,
) -> (Outbox<FromProvider>, tokio::task::JoinHandle<()>) {
    let (out, pump) = Outbox::new(FrameWriter::new(writer), direct, Some(OUT_QUEUE));
    let task = tokio::spawn(async move {
        if let Err(e) = pump.run().await {
            tracing::warn!("cannot write to the host: {e}");
        }
    });
    (out, task)
}

fn message_name(msg: &ToProvider) -> &'static str {
    match msg {
        ToProvider::Init { .. } => "Init",
        ToProvider::LinkPut(_) => "LinkPut",
        ToProvider::LinkDel { .. } => "LinkDel",
        ToProvider::Invoke { .. } => "Invoke",
        ToProvider::HealthCheck { .. } => "HealthCheck",
        ToProvider::CallActorResult { .. } => "CallActorResult",
        ToProvider::Cancel { .. } => "Cancel",
        ToProvider::Shutdown => "Shutdown",
        ToProvider::DataPath { .. } => "DataPath",
    }
}

/// Polls a future, turning a panic into `Err(())` so that one failing call
/// is answered with an error instead of leaving the host waiting.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
