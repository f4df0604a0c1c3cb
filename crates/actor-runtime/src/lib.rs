//! The `actor-runtime` worker: runs WebAssembly actors (wasmbus-ABI core
//! modules and `wasmhost:actor` components) in wasmtime on behalf of
//! `host-core`, over the protocol in [`wire::worker`].
//!
//! [`run`] is the whole server after the handshake, over any byte stream, so
//! tests drive it in memory.

mod actors;
mod component;
mod direct;
mod engine;
mod host;
mod instance;
mod slots;
mod wasmbus;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use wire::outbox::Outbox;
use wire::tasks::CallTasks;
use wire::worker::{ToWorker, WorkerRequest};
use wire::{Bytes, CallError, CallResult, FrameReader, FrameWriter, WireError};

use crate::actors::Runtime;
use crate::host::Outbound;

/// Why [`run`] stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("protocol violation by the host: {0}")]
    Protocol(String),
    #[error("invalid worker configuration: {0}")]
    Config(String),
    #[error("could not set up the wasm engine: {0}")]
    Engine(String),
    #[error("the writer task died: {0}")]
    Writer(String),
}

/// Outgoing frames queued for the writer; enough to absorb bursts without
/// letting a stalled host make the worker buffer without bound.
pub(crate) const OUTBOUND_QUEUE: usize = 1024;

/// Serves `host-core` after the handshake: the first frame must be
/// [`ToWorker::Configure`], then requests are served concurrently, each in
/// its own task. Returns `Ok` when the host closes the channel, an error on a
/// malformed frame or protocol violation.
pub async fn run<R, W>(reader: R, writer: W) -> Result<(), RuntimeError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    serve(reader, writer, None).await
}

/// [`run`] on the socket `host-core` connected, which quiet calls then
/// answer on from their own task (see [`wire::outbox`]).
pub async fn run_on_socket(
    reader: wire::socket::SocketReader,
    writer: wire::socket::SocketWriter,
) -> Result<(), RuntimeError> {
    // Without the duplicate descriptor every message goes through the pump.
    let direct = writer.direct().ok();
    serve(reader, writer, direct).await
}

async fn serve<R, W>(
    reader: R,
    writer: W,
    direct: Option<std::os::unix::net::UnixStream>,
) -> Result<(), RuntimeError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = FrameReader::<_, ToWorker>::new(reader);
    let config = match reader.recv().await? {
        Some(ToWorker::Configure(c)) => c,
        Some(_) => {
            return Err(RuntimeError::Protocol(
                "the first message must be Configure".into(),
            ))
        }
        None => return Ok(()),
    };
    if config.max_memory_bytes == 0 || config.invocation_timeout_ms == 0 {
        return Err(RuntimeError::Config(
            "max_memory_bytes and invocation_timeout_ms must be positive".into(),
        ));
    }

    let (tx, pump) = Outbox::new(FrameWriter::new(writer), direct, Some(OUTBOUND_QUEUE));
    let mut writer_task = tokio::spawn(pump.run());
    let routes = Arc::new(direct::Routes::default());
    let outbound = Arc::new(Outbound::new(tx, routes.clone()));
    let runtime = match Runtime::new(&config, outbound.clone()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            writer_task.abort();
            return Err(RuntimeError::Engine(one_line(&e)));
        }
    };
    let admissions = Arc::new(direct::Admissions::default());
    // Without the data socket providers still reach actors through the host.
    let direct_task = config.data_socket.as_deref().and_then(|path| {
        direct::listen(path, runtime.clone(), admissions.clone(), routes.clone())
            .inspect_err(|e| tracing::warn!(socket = path, "no direct channels for providers: {e}"))
            .ok()
    });
    let direct_open = direct_task.is_some();
    tracing::info!(
        max_instances = config.max_instances,
        max_memory_bytes = config.max_memory_bytes,
        timeout_ms = config.invocation_timeout_ms,
        max_queued_calls = config.max_queued_calls,
        "worker configured"
    );

    // Dropping the set on return aborts the calls still running: their
    // replies would have nowhere to go.
    let mut calls = CallTasks::default();
    let result = loop {
        let msg = tokio::select! {
            msg = reader.recv() => msg,
            done = &mut writer_task => {
                break Err(RuntimeError::Writer(match done {
                    Ok(Ok(())) => "the outbound queue closed".into(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                }));
            }
        };
        match msg {
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
            Ok(Some(ToWorker::Configure(_))) => {
                break Err(RuntimeError::Protocol("Configure sent twice".into()))
            }
            Ok(Some(ToWorker::HostCallResult { id, result })) => outbound.complete(id, result),
            Ok(Some(ToWorker::Cancel { id })) => calls.cancel(id),
            Ok(Some(ToWorker::Request {
                id,
                request:
                    request @ (WorkerRequest::AdmitProvider { .. } | WorkerRequest::SetRoutes { .. }),
            })) => {
                // Applied here, in arrival order: a route change is in force
                // before the host's next request.
                let result = if direct_open {
                    apply_direct(request, &admissions, &routes);
                    Ok(Bytes::new())
                } else {
                    Err(CallError::unavailable(
                        "this worker has no data socket for direct channels",
                    ))
                };
                runtime.outbound.reply(id, result).await;
            }
            Ok(Some(ToWorker::Request { id, request })) => {
                let runtime = runtime.clone();
                calls.spawn(id, async move {
                    // Boxed: the invocation's future is large, and unboxed it
                    // would be copied whole each time the task moves.
                    let result = Box::pin(handle(&runtime, request)).await;
                    runtime.outbound.reply(id, result).await;
                });
            }
        }
        // Reap finished calls so the set does not grow with every request.
        calls.reap();
    };
    writer_task.abort();
    if let Some(task) = direct_task {
        task.abort();
    }
    result
}

fn apply_direct(request: WorkerRequest, admissions: &direct::Admissions, routes: &direct::Routes) {
    match request {
        WorkerRequest::AdmitProvider {
            provider_key,
            link_name,
            contract_id,
            token,
        } => admissions.admit(provider_key, link_name, contract_id, token),
        WorkerRequest::SetRoutes { routes: table } => routes.set(table),
        _ => {}
    }
}

async fn handle(runtime: &Runtime, request: WorkerRequest) -> CallResult<Bytes> {
    match request {
        WorkerRequest::StartActor(spec) => runtime.start(spec).await.map(|()| Bytes::new()),
        WorkerRequest::UpdateActor(spec) => runtime.update(spec).await.map(|()| Bytes::new()),
        WorkerRequest::ScaleActor { key, instances } => {
            runtime.scale(&key, instances).map(|()| Bytes::new())
        }
        WorkerRequest::StopActor { key } => runtime.stop(&key).map(|()| Bytes::new()),
        WorkerRequest::Invoke {
            actor,
            operation,
            payload,
            timeout_ms,
        } => runtime
            .invoke(
                &actor,
                operation,
                payload.into_vec(),
                Some(Duration::from_millis(timeout_ms)),
            )
            .await
            .map(Bytes::from),
        // Answered by the request loop, which holds the admissions.
        WorkerRequest::AdmitProvider { .. } | WorkerRequest::SetRoutes { .. } => Err(
            CallError::internal("a direct-channel request reached a call task"),
        ),
    }
}

/// wasmtime errors carry context and backtraces over several lines; replies
/// and logs want one.
pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    let mut out = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        // Backtrace contexts ("error while executing at wasm backtrace: ...")
        // say where, not what.
        if text.contains("wasm backtrace") {
            continue;
        }
        if i > 0 && !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text.replace('\n', " "));
    }
    if out.is_empty() {
        out = e.root_cause().to_string().replace('\n', " ");
    }
    out
}
