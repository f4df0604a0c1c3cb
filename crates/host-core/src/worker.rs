//! Supervision of the `actor-runtime` worker process and the channel to it.
//!
//! The supervisor owns the worker's process handle (killed and reaped when
//! dropped), restarts the worker when it dies, and restores every actor on the
//! new worker before new calls are let through. Calls in flight when the
//! worker dies fail at once with the reason.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use wire::calls::{CallTable, CancelOnDrop};
use wire::control::ProcessState;
use wire::outbox::Outbox;
use wire::socket::SocketReader;
use wire::{
    handshake::Role,
    worker::{CallId, FromWorker, LogLevel, ToWorker, WorkerConfig, WorkerRequest},
    Bytes, CallError, CallResult, FrameReader,
};

use crate::{
    child::{self, Backoff, Connected, RestartIntensity},
    events::Events,
    host::Host,
};

/// Restart backoff: the first restart is quick, later ones wait longer.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that ran this long without dying resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// Restart intensity: more restarts than this within the window and the
/// worker is marked failed instead of being restarted again.
const MAX_RESTARTS: usize = 10;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// One live connection to one worker process.
pub struct WorkerConn {
    tx: Outbox<ToWorker>,
    calls: CallTable<Bytes>,
}

impl WorkerConn {
    fn new(tx: Outbox<ToWorker>) -> Self {
        Self {
            tx,
            calls: CallTable::default(),
        }
    }

    /// Sends a request and waits for its reply, at most `timeout`. A call
    /// given up before its reply (its caller went away, or the timeout)
    /// tells the worker to drop it.
    pub async fn request(&self, request: WorkerRequest, timeout: Duration) -> CallResult<Bytes> {
        let pending = self.calls.register()?;
        let id = pending.id();
        self.tx
            .send_now(ToWorker::Request { id, request })
            .map_err(|e| e.into_call_error("request"))?;
        let cancel = CancelOnDrop::new(&self.tx, ToWorker::Cancel { id });
        let result = pending.wait_for("the actor-runtime worker", timeout).await;
        cancel.disarm();
        result
    }

    pub fn answer_host_call(&self, id: CallId, result: CallResult<Bytes>) {
        let _ = self
            .tx
            .send_reply_now(ToWorker::HostCallResult { id, result });
    }
}

/// What `inventory` shows about the worker.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub state: ProcessState,
}

pub struct WorkerSupervisor {
    current: watch::Sender<Option<Arc<WorkerConn>>>,
    status: Mutex<WorkerStatus>,
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
            status: Mutex::new(WorkerStatus {
                pid: None,
                restarts: 0,
                state: ProcessState::Starting,
            }),
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

    pub fn status(&self) -> WorkerStatus {
        self.status.lock().clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut WorkerStatus)) {
        f(&mut self.status.lock());
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
        host: Arc<Host>,
        mut shutdown: watch::Receiver<bool>,
        first_ready: oneshot::Sender<Result<()>>,
    ) {
        let listener = match child::listen(&self.socket_path) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = first_ready.send(Err(e));
                return;
            }
        };
        let mut first_ready = Some(first_ready);
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut intensity = RestartIntensity::new(MAX_RESTARTS, RESTART_WINDOW);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let started = Instant::now();
            match self
                .run_once(&host, &listener, &mut shutdown, &mut first_ready)
                .await
            {
                Ok(()) => break,
                Err(reason) => {
                    tracing::warn!("actor-runtime worker: {reason:#}");
                    if let Some(tx) = first_ready.take() {
                        let _ = tx.send(Err(reason));
                        break;
                    }
                    self.events.publish(
                        "process_exited",
                        serde_json::json!({"name": "actor-runtime", "reason": format!("{reason:#}")}),
                    );
                    if !intensity.allow() {
                        tracing::error!(
                            "actor-runtime worker failed: more than {}",
                            intensity.describe()
                        );
                        self.events.publish(
                            "process_failed",
                            serde_json::json!({"name": "actor-runtime", "reason": format!("more than {}", intensity.describe())}),
                        );
                        self.set_status(|s| {
                            s.state = ProcessState::Failed;
                            s.pid = None;
                        });
                        crate::host::stopped(&mut shutdown).await;
                        break;
                    }
                }
            }
            if started.elapsed() > BACKOFF_RESET_AFTER {
                backoff.reset();
            }
            self.set_status(|s| {
                s.state = ProcessState::Restarting;
                s.pid = None;
                s.restarts += 1;
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = crate::host::stopped(&mut shutdown) => break,
            }
        }
        self.current.send_replace(None);
        self.set_status(|s| {
            s.state = ProcessState::Stopped;
            s.pid = None;
        });
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// One worker's life. `Ok` means a planned stop; `Err` says why it died.
    async fn run_once(
        &self,
        host: &Arc<Host>,
        listener: &interprocess::local_socket::tokio::Listener,
        shutdown: &mut watch::Receiver<bool>,
        first_ready: &mut Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        self.set_status(|s| s.state = ProcessState::Starting);
        let Connected {
            mut child,
            reader: recv,
            writer: send,
        } = child::spawn_and_accept(
            listener,
            &self.runtime_path,
            &self.socket_path,
            "ACTOR_RUNTIME_TOKEN",
            Role::Worker,
        )
        .await?;
        self.set_status(|s| s.pid = child.id());
        let (tx, mut writer) = child::outbox(send, "the worker");
        let conn = Arc::new(WorkerConn::new(tx.clone()));
        tx.send_now(ToWorker::Configure(self.config.clone()))
            .map_err(|_| anyhow!("worker channel closed"))?;
        let mut reader = tokio::spawn(read_loop(recv, conn.clone(), host.clone()));

        // Restore every actor before new calls see this worker.
        host.restore_actors(&conn).await;
        self.current.send_replace(Some(conn.clone()));
        // Providers running now get direct channels to this worker.
        tokio::spawn(host.clone().open_data_paths());
        let restarts = self.status().restarts;
        self.set_status(|s| s.state = ProcessState::Running);
        if restarts > 0 {
            self.events.publish(
                "process_restarted",
                serde_json::json!({"name": "actor-runtime", "pid": child.id(), "restarts": restarts}),
            );
        }
        if let Some(tx) = first_ready.take() {
            let _ = tx.send(Ok(()));
        }

        let outcome = tokio::select! {
            status = child.wait() => Err(anyhow!("the worker {}", child::describe_exit(status?))),
            _ = &mut reader => {
                // The channel ended first; the exit status says more, if it
                // comes soon.
                match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
                    Ok(status) => Err(anyhow!("the worker {}", child::describe_exit(status?))),
                    Err(_) => Err(anyhow!("the worker's channel broke")),
                }
            }
            // A write to the worker failed: the channel is half dead.
            _ = &mut writer => Err(anyhow!("writing to the worker failed")),
            _ = crate::host::stopped(shutdown) => Ok(()),
        };
        // Stop routing to this worker, then fail what it had in flight.
        self.current.send_replace(None);
        let reason = match &outcome {
            Ok(()) => "the host is shutting down".to_string(),
            Err(e) => format!("the actor-runtime worker died ({e}) while handling this call"),
        };
        conn.calls.fail_all(CallError::unavailable(reason));
        reader.abort();
        writer.abort();
        if outcome.is_ok() {
            // Closing the channel makes the worker exit; kill it if it lingers.
            drop(tx);
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        } else {
            let _ = child.kill().await;
        }
        outcome
    }
}

async fn read_loop(recv: SocketReader, conn: Arc<WorkerConn>, host: Arc<Host>) {
    let mut reader = FrameReader::<_, FromWorker>::new(recv);
    // Host calls being answered, so the worker can cancel one; each entry
    // goes when its call is answered.
    let running: Arc<Mutex<HashMap<CallId, tokio::task::AbortHandle>>> = Arc::default();
    loop {
        match reader.recv().await {
            Ok(Some(FromWorker::Reply { id, result })) => {
                conn.calls.complete(id, result);
            }
            Ok(Some(FromWorker::HostCall {
                id,
                actor,
                binding,
                namespace,
                operation,
                payload,
                timeout_ms,
            })) => {
                let host = host.clone();
                let conn = conn.clone();
                let answered = running.clone();
                let mut table = running.lock();
                let task = tokio::spawn(async move {
                    let timeout = Duration::from_millis(timeout_ms);
                    let result = host
                        .route_host_call(&actor, &binding, &namespace, &operation, payload, timeout)
                        .await;
                    answered.lock().remove(&id);
                    conn.answer_host_call(id, result);
                });
                if !task.is_finished() {
                    table.insert(id, task.abort_handle());
                }
            }
            Ok(Some(FromWorker::CancelHostCall { id })) => {
                if let Some(task) = running.lock().remove(&id) {
                    task.abort();
                }
            }
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
    for (_, task) in running.lock().drain() {
        task.abort();
    }
}
