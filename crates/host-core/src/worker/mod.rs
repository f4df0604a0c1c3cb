//! Supervision of the `actor-runtime` worker process and the channel to it.
//!
//! The supervisor owns the worker's process handle (killed and reaped when
//! dropped), restarts the worker when it dies, and has its owner make the
//! new worker ready (every actor restored) before new calls are let
//! through. Calls in flight when the worker dies fail at once with the
//! reason.
//!
//! It knows nothing of the host above it: it reports up through the
//! [`WorkerOwner`] it is given, which answers the worker's host calls.

mod conn;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::anyhow;
use futures::future::BoxFuture;
use tokio::sync::watch;
use wire::socket::SocketReader;
use wire::tasks::CallTasks;
use wire::{
    handshake::Role,
    worker::{FromWorker, LogLevel, ToWorker, WorkerConfig},
    Bytes, CallError, CallResult, FrameReader,
};

pub use conn::WorkerConn;

use crate::{
    child::{self, Connected},
    events::Events,
    supervise::{self, Died, Exit, FirstReady, Lifetime, ProcessState, ProcessStatus, StatusCell},
};

/// How long the channel may stay open after the worker's reader ended,
/// waiting for the exit status that says why.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(200);
/// How long a worker asked to stop has before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// An actor's call out of the worker that the worker cannot answer itself.
#[derive(Debug)]
pub struct HostCall {
    pub actor: String,
    pub binding: String,
    pub namespace: String,
    pub operation: String,
    pub payload: Bytes,
    /// What is left of the calling invocation's deadline.
    pub timeout: Duration,
}

/// A provider's call, on its direct channel, to an actor the worker does
/// not run: for the owner to route (to another host of its lattice).
#[derive(Debug)]
pub struct ForwardedCall {
    pub provider_key: String,
    pub link_name: String,
    pub contract_id: String,
    pub actor: String,
    pub operation: String,
    pub payload: Bytes,
}

/// What the worker supervisor needs from whoever owns it.
pub trait WorkerOwner: Send + Sync + 'static {
    /// A new worker is connected: make it ready (every actor restored, the
    /// routes set) before calls reach it.
    fn worker_started<'a>(&'a self, conn: &'a Arc<WorkerConn>) -> BoxFuture<'a, ()>;

    /// Once the worker serves: anything that may run beside its calls
    /// (direct channels for providers).
    fn worker_serving(&self, conn: Arc<WorkerConn>);

    /// Answers an actor's call out of the worker.
    fn host_call(&self, call: HostCall) -> BoxFuture<'_, CallResult<Bytes>>;

    /// Answers a provider's call the worker could not take itself.
    fn forwarded_call(&self, call: ForwardedCall) -> BoxFuture<'_, CallResult<Bytes>>;

    /// The worker died (`exit`) with these actors' invocations in flight
    /// (one key per call). True when the owner puts the crash down to them
    /// (it then counts it against them, not the worker).
    fn worker_died(&self, exit: Exit, in_flight: Vec<Arc<str>>) -> bool;
}

pub struct WorkerSupervisor {
    current: watch::Sender<Option<Arc<WorkerConn>>>,
    status: StatusCell,
    runtime_path: PathBuf,
    socket_path: PathBuf,
    config: WorkerConfig,
    events: Arc<Events>,
}

impl WorkerSupervisor {
    pub fn new(
        runtime_path: PathBuf,
        socket_path: PathBuf,
        config: WorkerConfig,
        events: Arc<Events>,
    ) -> Self {
        Self {
            events,
            current: watch::Sender::new(None),
            status: StatusCell::default(),
            runtime_path,
            socket_path,
            config,
        }
    }

    /// The worker serving now, if one is.
    pub fn current(&self) -> Option<Arc<WorkerConn>> {
        self.current.borrow().clone()
    }

    /// Where workers listen for providers' direct channels, if anywhere.
    pub fn data_socket(&self) -> Option<String> {
        self.config.data_socket.clone()
    }

    pub fn status(&self) -> ProcessStatus {
        self.status.get()
    }

    /// The live worker connection, waiting up to `timeout` while the worker
    /// (re)starts.
    pub async fn connection(&self, timeout: Duration) -> CallResult<Arc<WorkerConn>> {
        // The common case, without a subscription or a timer.
        if let Some(conn) = self.current.borrow().as_ref() {
            return Ok(conn.clone());
        }
        let mut rx = self.current.subscribe();
        let wait = async {
            rx.wait_for(|conn| conn.is_some())
                .await
                .map(|conn| conn.clone())
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Some(conn))) => Ok(conn),
            Ok(Ok(None)) => Err(CallError::unavailable(
                "the actor-runtime worker is not ready",
            )),
            Ok(Err(_)) => Err(CallError::unavailable("the host is shutting down")),
            Err(_) => Err(CallError::unavailable(format!(
                "the actor-runtime worker is not ready after {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Runs the worker until `shutdown` turns true, restarting it whenever it
    /// dies. Returns once the last worker has been stopped and reaped.
    pub async fn supervise(
        self: Arc<Self>,
        owner: Arc<dyn WorkerOwner>,
        shutdown: watch::Receiver<bool>,
        first_ready: FirstReady,
    ) {
        let listener = match child::listen(&self.socket_path) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = first_ready.send(Err(e));
                return;
            }
        };
        let life = WorkerLife {
            supervisor: &self,
            owner,
            listener,
        };
        supervise::run_supervised(
            &life,
            supervise::WORKER,
            &self.status,
            &self.events,
            shutdown,
            first_ready,
        )
        .await;
        self.current.send_replace(None);
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

/// One worker process's life after another.
struct WorkerLife<'a> {
    supervisor: &'a WorkerSupervisor,
    owner: Arc<dyn WorkerOwner>,
    listener: interprocess::local_socket::tokio::Listener,
}

impl Lifetime for WorkerLife<'_> {
    fn name(&self) -> &'static str {
        "actor-runtime"
    }

    async fn run_once(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        first_ready: &mut Option<FirstReady>,
    ) -> Result<(), Died> {
        let this = self.supervisor;
        this.status.update(|s| s.state = ProcessState::Starting);
        let Connected {
            mut child,
            reader: recv,
            writer: send,
        } = child::spawn_and_accept(
            &self.listener,
            &this.runtime_path,
            &this.socket_path,
            "ACTOR_RUNTIME_TOKEN",
            Role::Worker,
        )
        .await?;
        this.status.update(|s| s.pid = child.id());
        let (tx, mut writer) = child::outbox(send, "the worker");
        let conn = Arc::new(WorkerConn::new(tx));
        conn.send(ToWorker::Configure(this.config.clone()))
            .map_err(|e| anyhow!("{e}"))?;
        let mut reader = tokio::spawn(read_loop(recv, conn.clone(), self.owner.clone()));

        // Every actor is back before new calls see this worker.
        self.owner.worker_started(&conn).await;
        this.current.send_replace(Some(conn.clone()));
        self.owner.worker_serving(conn.clone());
        let restarts = this.status.get().restarts;
        this.status.update(|s| s.state = ProcessState::Running);
        if restarts > 0 {
            this.events.publish(
                "process_restarted",
                serde_json::json!({"name": self.name(), "pid": child.id(), "restarts": restarts}),
            );
        }
        if let Some(tx) = first_ready.take() {
            let _ = tx.send(Ok(()));
        }

        let outcome: Result<(), (anyhow::Error, Exit)> = tokio::select! {
            status = child.wait() => Err(match status {
                Ok(status) => {
                    let exit = Exit::from_status(status);
                    (anyhow!("the worker {exit}"), exit)
                }
                Err(e) => (e.into(), Exit::Unknown),
            }),
            _ = &mut reader => {
                // The channel ended first; the exit status says more, if it
                // comes soon.
                match tokio::time::timeout(EXIT_STATUS_WAIT, child.wait()).await {
                    Ok(Ok(status)) => {
                        let exit = Exit::from_status(status);
                        Err((anyhow!("the worker {exit}"), exit))
                    }
                    _ => Err((anyhow!("the worker's channel broke"), Exit::Unknown)),
                }
            }
            // A write to the worker failed: the channel is half dead.
            _ = &mut writer => Err((anyhow!("writing to the worker failed"), Exit::Unknown)),
            _ = supervise::stopped(shutdown) => Ok(()),
        };
        // Stop routing to this worker, then fail what it had in flight.
        this.current.send_replace(None);
        let reason = match &outcome {
            Ok(()) => "the host is shutting down".to_string(),
            Err((e, _)) => format!("the actor-runtime worker died ({e}) while handling this call"),
        };
        let in_flight = conn.fail_all(CallError::unavailable(reason));
        reader.abort();
        writer.abort();
        match outcome {
            Ok(()) => {
                // Closing the channel makes the worker exit; kill it if it lingers.
                drop(conn);
                if tokio::time::timeout(STOP_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                Ok(())
            }
            Err((reason, exit)) => {
                let _ = child.kill().await;
                let explained = self.owner.worker_died(exit, in_flight);
                Err(Died { reason, explained })
            }
        }
    }
}

async fn read_loop(recv: SocketReader, conn: Arc<WorkerConn>, owner: Arc<dyn WorkerOwner>) {
    let mut reader = FrameReader::<_, FromWorker>::new(recv);
    // Host calls being answered, so the worker can cancel one.
    let mut running = CallTasks::default();
    loop {
        running.reap();
        match reader.recv().await {
            Ok(Some(FromWorker::Reply { id, result })) => conn.complete(id, result),
            Ok(Some(FromWorker::HostCall {
                id,
                actor,
                binding,
                namespace,
                operation,
                payload,
                timeout_ms,
            })) => {
                let call = HostCall {
                    actor,
                    binding,
                    namespace,
                    operation,
                    payload,
                    timeout: Duration::from_millis(timeout_ms),
                };
                let (owner, conn) = (owner.clone(), conn.clone());
                running.spawn(id, async move {
                    let result = owner.host_call(call).await;
                    conn.answer_host_call(id, result);
                });
            }
            Ok(Some(FromWorker::ForwardCall {
                id,
                provider_key,
                link_name,
                contract_id,
                actor,
                operation,
                payload,
            })) => {
                let call = ForwardedCall {
                    provider_key,
                    link_name,
                    contract_id,
                    actor,
                    operation,
                    payload,
                };
                let (owner, conn) = (owner.clone(), conn.clone());
                running.spawn(id, async move {
                    let result = owner.forwarded_call(call).await;
                    conn.answer_host_call(id, result);
                });
            }
            Ok(Some(FromWorker::CancelHostCall { id })) => running.cancel(id),
            Ok(Some(FromWorker::Log { actor, level, text })) => match level {
                LogLevel::Error => tracing::error!(actor = %actor, "{text}"),
                LogLevel::Warn => tracing::warn!(actor = %actor, "{text}"),
                LogLevel::Info => tracing::info!(actor = %actor, "{text}"),
                LogLevel::Debug => tracing::debug!(actor = %actor, "{text}"),
                LogLevel::Trace => tracing::trace!(actor = %actor, "{text}"),
            },
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("bad frame from the worker: {e}");
                break;
            }
        }
    }
    running.abort_all();
}
