//! Supervision of the `actor-runtime` worker process and the channel to it.
//!
//! The supervisor owns the worker's process handle (killed and reaped when
//! dropped), restarts the worker when it dies, and restores every actor on the
//! new worker before new calls are let through. Calls in flight when the
//! worker dies fail at once with the reason.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use interprocess::local_socket::{
    tokio::{prelude::*, Stream},
    GenericFilePath, ListenerOptions, ToFsName,
};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use wire::{
    handshake::{self, Role},
    worker::{CallId, FromWorker, LogLevel, ToWorker, WorkerConfig, WorkerRequest},
    Bytes, FrameReader, FrameWriter,
};

use crate::host::Host;

/// How long a freshly started worker has to connect and say hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Restart backoff: the first restart is quick, later ones wait longer.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that ran this long without dying resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

type Pending = HashMap<CallId, oneshot::Sender<Result<Bytes, String>>>;

/// One live connection to one worker process.
pub struct WorkerConn {
    tx: mpsc::UnboundedSender<ToWorker>,
    /// `None` once the worker is gone: no call can be added after that.
    pending: Mutex<Option<Pending>>,
    next_id: AtomicU64,
}

impl WorkerConn {
    fn new(tx: mpsc::UnboundedSender<ToWorker>) -> Self {
        Self {
            tx,
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends a request and waits for its reply, at most `timeout`.
    pub async fn request(
        &self,
        request: WorkerRequest,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let Some(map) = pending.as_mut() else {
                return Err("the actor-runtime worker is restarting".into());
            };
            map.insert(id, reply_tx);
        }
        if self.tx.send(ToWorker::Request { id, request }).is_err() {
            self.forget(id);
            return Err("the actor-runtime worker is restarting".into());
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the actor-runtime worker dropped the call".into()),
            Err(_) => {
                self.forget(id);
                Err(format!(
                    "no reply from the actor-runtime worker within {} ms",
                    timeout.as_millis()
                ))
            }
        }
    }

    fn forget(&self, id: CallId) {
        if let Some(map) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            map.remove(&id);
        }
    }

    fn complete(&self, id: CallId, result: Result<Bytes, String>) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|map| map.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    /// Fails every call in flight with `reason` and refuses new ones.
    fn fail_all(&self, reason: &str) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for (_, waiter) in pending.into_iter().flatten() {
            let _ = waiter.send(Err(reason.to_owned()));
        }
    }

    pub fn answer_host_call(&self, id: CallId, result: Result<Bytes, String>) {
        let _ = self.tx.send(ToWorker::HostCallResult { id, result });
    }
}

/// What `inventory` shows about the worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub state: &'static str,
}

pub struct WorkerSupervisor {
    current: watch::Sender<Option<Arc<WorkerConn>>>,
    status: Mutex<WorkerStatus>,
    runtime_path: PathBuf,
    socket_path: PathBuf,
    config: WorkerConfig,
}

impl WorkerSupervisor {
    pub fn new(runtime_path: PathBuf, socket_path: PathBuf, config: WorkerConfig) -> Self {
        Self {
            current: watch::Sender::new(None),
            status: Mutex::new(WorkerStatus {
                state: "starting",
                ..Default::default()
            }),
            runtime_path,
            socket_path,
            config,
        }
    }

    pub fn status(&self) -> WorkerStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut WorkerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The live worker connection, waiting up to `timeout` while the worker
    /// (re)starts.
    pub async fn connection(&self, timeout: Duration) -> Result<Arc<WorkerConn>, String> {
        let mut rx = self.current.subscribe();
        let wait = async {
            rx.wait_for(|conn| conn.is_some())
                .await
                .map(|conn| conn.clone())
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Some(conn))) => Ok(conn),
            Ok(Ok(None)) => Err("the actor-runtime worker is not ready".into()),
            Ok(Err(_)) => Err("the host is shutting down".into()),
            Err(_) => Err(format!(
                "the actor-runtime worker is not ready after {} ms",
                timeout.as_millis()
            )),
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
        let listener = match ListenerOptions::new()
            .name(
                match self.socket_path.as_path().to_fs_name::<GenericFilePath>() {
                    Ok(name) => name,
                    Err(e) => {
                        let _ = first_ready.send(Err(anyhow!("bad worker socket path: {e}")));
                        return;
                    }
                },
            )
            .mode(0o600)
            .try_overwrite(true)
            .create_tokio()
        {
            Ok(listener) => listener,
            Err(e) => {
                let _ = first_ready.send(Err(anyhow!(
                    "cannot listen on {}: {e}",
                    self.socket_path.display()
                )));
                return;
            }
        };
        let mut first_ready = Some(first_ready);
        let mut backoff = BACKOFF_FIRST;
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
                }
            }
            if started.elapsed() > BACKOFF_RESET_AFTER {
                backoff = BACKOFF_FIRST;
            }
            self.set_status(|s| {
                s.state = "restarting";
                s.pid = None;
                s.restarts += 1;
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = crate::host::stopped(&mut shutdown) => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.current.send_replace(None);
        self.set_status(|s| {
            s.state = "stopped";
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
        let token = format!("{:032x}", rand::random::<u128>());
        let mut child = tokio::process::Command::new(&self.runtime_path)
            .arg("--socket")
            .arg(&self.socket_path)
            // A clean environment: the worker gets nothing of the host's but
            // what it needs to log.
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| k == "RUST_LOG" || k == "PATH"))
            .env("ACTOR_RUNTIME_TOKEN", &token)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.runtime_path.display()))?;
        let pid = child.id();
        self.set_status(|s| {
            s.pid = pid;
            s.state = "starting";
        });

        let stream = tokio::select! {
            accepted = tokio::time::timeout(CONNECT_TIMEOUT, accept_worker(listener, pid, &token)) => {
                accepted.map_err(|_| anyhow!("the worker did not connect within {CONNECT_TIMEOUT:?}"))??
            }
            status = child.wait() => bail!("the worker exited before connecting: {}", describe_exit(status?)),
        };
        let (recv, send) = stream;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(WorkerConn::new(tx.clone()));
        tx.send(ToWorker::Configure(self.config.clone()))
            .map_err(|_| anyhow!("worker channel closed"))?;
        let writer = tokio::spawn(write_loop(send, rx));
        let mut reader = tokio::spawn(read_loop(recv, conn.clone(), host.clone()));

        // Restore every actor before new calls see this worker.
        host.restore_actors(&conn).await;
        self.current.send_replace(Some(conn.clone()));
        self.set_status(|s| s.state = "running");
        if let Some(tx) = first_ready.take() {
            let _ = tx.send(Ok(()));
        }

        let outcome = tokio::select! {
            status = child.wait() => Err(anyhow!("the worker {}", describe_exit(status?))),
            _ = &mut reader => {
                // The channel ended first; the exit status says more, if it
                // comes soon.
                match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
                    Ok(status) => Err(anyhow!("the worker {}", describe_exit(status?))),
                    Err(_) => Err(anyhow!("the worker's channel broke")),
                }
            }
            _ = crate::host::stopped(shutdown) => Ok(()),
        };
        // Stop routing to this worker, then fail what it had in flight.
        self.current.send_replace(None);
        let reason = match &outcome {
            Ok(()) => "the host is shutting down".to_string(),
            Err(e) => format!("the actor-runtime worker died ({e}) while handling this call"),
        };
        conn.fail_all(&reason);
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

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".into(),
    }
}

/// Accepts connections until the one from our child, with our token, arrives.
async fn accept_worker(
    listener: &interprocess::local_socket::tokio::Listener,
    pid: Option<u32>,
    token: &str,
) -> Result<(ReadHalf<Stream>, WriteHalf<Stream>)> {
    loop {
        let stream: Stream = listener.accept().await?;
        let peer_pid = stream.peer_creds().ok().and_then(|c| c.pid());
        if pid.is_some() && peer_pid.map(|p| p as u32) != pid {
            tracing::warn!("refused a worker connection from pid {peer_pid:?}: not our worker");
            continue;
        }
        let (mut recv, mut send) = tokio::io::split(stream);
        let checked = handshake::accept(&mut recv, &mut send, |hello| {
            if hello.role != Role::Worker {
                Err("this socket is for the actor-runtime worker".into())
            } else if hello.token != token {
                Err("wrong worker token".into())
            } else {
                Ok(())
            }
        })
        .await;
        match checked {
            Ok(_) => return Ok((recv, send)),
            Err(e) => tracing::warn!("refused a worker connection: {e}"),
        }
    }
}

async fn write_loop(send: WriteHalf<Stream>, mut rx: mpsc::UnboundedReceiver<ToWorker>) {
    let mut writer = FrameWriter::<_, ToWorker>::new(send);
    while let Some(msg) = rx.recv().await {
        if let Err(e) = writer.send(&msg).await {
            tracing::warn!("writing to the worker failed: {e}");
            return;
        }
    }
}

async fn read_loop(recv: ReadHalf<Stream>, conn: Arc<WorkerConn>, host: Arc<Host>) {
    let mut reader = FrameReader::<_, FromWorker>::new(recv);
    loop {
        match reader.recv().await {
            Ok(Some(FromWorker::Reply { id, result })) => conn.complete(id, result),
            Ok(Some(FromWorker::HostCall {
                id,
                actor,
                binding,
                namespace,
                operation,
                payload,
            })) => {
                let host = host.clone();
                let conn = conn.clone();
                tokio::spawn(async move {
                    let result = host
                        .route_host_call(&actor, &binding, &namespace, &operation, payload)
                        .await;
                    conn.answer_host_call(id, result);
                });
            }
            Ok(Some(FromWorker::Log { actor, level, text })) => match level {
                LogLevel::Error => tracing::error!(actor = %actor, "{text}"),
                LogLevel::Warn => tracing::warn!(actor = %actor, "{text}"),
                LogLevel::Info => tracing::info!(actor = %actor, "{text}"),
                LogLevel::Debug => tracing::debug!(actor = %actor, "{text}"),
                LogLevel::Trace => tracing::trace!(actor = %actor, "{text}"),
            },
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("bad frame from the worker: {e}");
                return;
            }
        }
    }
}
