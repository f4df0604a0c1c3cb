//! The provider supervisor: the `provider-launcher` process, each provider
//! launched through it, the socket providers connect to, links, and calls to
//! and from providers.
//!
//! A provider is identified by (provider key, link name): one running
//! instance each per host. Each launch gets a fresh instance id and a secret
//! token, handed to the provider on its stdin; only a connection presenting
//! that token becomes that provider's channel.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};
use wire::calls::CallTable;
use wire::outbox::Outbox;
use wire::socket::SocketReader;
use wire::{
    control::{ProcessState, ProcessSummary, ProviderSummary},
    handshake::{self, Role},
    launcher::{
        Confinement, FromLauncher, InstanceId, LaunchSpec, LauncherRequest, OutputStream,
        ToLauncher,
    },
    provider::{Bootstrap, FromProvider, Link, ToProvider},
    Bytes, CallError, CallResult, FrameReader, FrameWriter,
};

use crate::{
    child::{self, Backoff, Connected, RestartIntensity},
    events::Events,
    host::{stopped, Host},
    par,
};

/// (provider key, link name)
type ProviderId = (String, String);
/// (actor key, contract id, link name)
type LinkKey = (String, String, String);
/// (device, inode, size, mtime seconds, mtime nanoseconds) of an archive file.
type ArchiveStamp = (u64, u64, u64, i64, i64);

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a provider has to exit after its shutdown message, before SIGTERM.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Restart intensity: more restarts than this within the window marks the
/// provider failed instead of restarting it again.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A running provider that can be given a direct channel to the worker.
pub struct DataPathTarget {
    pub key: String,
    pub link_name: String,
    pub contract_id: String,
    pub tx: Outbox<ToProvider>,
}

pub struct ProviderConn {
    tx: Outbox<ToProvider>,
    calls: CallTable<Bytes>,
    health: CallTable<(bool, String)>,
}

struct LauncherConn {
    tx: Outbox<ToLauncher>,
    calls: CallTable<u32>,
}

impl LauncherConn {
    async fn request(&self, request: LauncherRequest, timeout: Duration) -> CallResult<u32> {
        self.calls
            .call("the provider launcher", timeout, |id| {
                self.tx
                    .send_now(ToLauncher::Request { id, request })
                    .map_err(|e| e.into_call_error("request"))
            })
            .await
    }
}

struct ProviderRecord {
    name: String,
    contract_id: String,
    binary: PathBuf,
    /// The binary's hash from the verified claims: the launcher runs these
    /// bytes or nothing.
    binary_sha256: String,
    config_json: String,
    instance: InstanceId,
    pid: Option<u32>,
    state: ProcessState,
    health: String,
    restarts: u32,
    intensity: RestartIntensity,
    backoff: Backoff,
    conn: Option<Arc<ProviderConn>>,
    /// Whoever waits for the first start to finish.
    ready: Option<oneshot::Sender<CallResult<()>>>,
}

#[derive(Clone)]
struct LauncherStatus {
    pid: Option<u32>,
    restarts: u32,
    state: ProcessState,
}

pub struct ProviderSupervisor {
    launcher_binary: PathBuf,
    launcher_socket: PathBuf,
    provider_socket: PathBuf,
    cache_dir: PathBuf,
    data_dir: PathBuf,
    health_interval: Duration,
    /// Archives must be signed by one of these, when any are given.
    allowed_issuers: Vec<String>,
    launcher: watch::Sender<Option<Arc<LauncherConn>>>,
    launcher_status: Mutex<LauncherStatus>,
    providers: Mutex<BTreeMap<ProviderId, ProviderRecord>>,
    /// Outstanding launch tokens: token -> (provider, instance).
    tokens: Mutex<HashMap<String, (ProviderId, InstanceId)>>,
    /// Stops waiting for the launcher to report that a provider they asked
    /// to shut down has exited; a list, because two stops of one instance
    /// (a stop-provider racing stop-host) each wait.
    exit_waiters: Mutex<HashMap<InstanceId, Vec<oneshot::Sender<()>>>>,
    links: RwLock<BTreeMap<LinkKey, Link>>,
    /// Archives verified before, by path: (file stamp, what it gave).
    verified: Mutex<HashMap<PathBuf, (ArchiveStamp, par::ExtractedProvider)>>,
    next_instance: AtomicU64,
    events: Arc<Events>,
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

/// Where the provider supervisor's processes, sockets and files are, and its policy.
pub struct ProviderSettings {
    pub launcher_binary: PathBuf,
    pub launcher_socket: PathBuf,
    pub provider_socket: PathBuf,
    /// Extracted provider binaries, by hash.
    pub cache_dir: PathBuf,
    /// Each provider's persistent data directory goes below this.
    pub data_dir: PathBuf,
    pub health_interval: Duration,
    pub allowed_issuers: Vec<String>,
}

impl ProviderSupervisor {
    pub fn new(settings: ProviderSettings, events: Arc<Events>) -> Self {
        let ProviderSettings {
            launcher_binary,
            launcher_socket,
            provider_socket,
            cache_dir,
            data_dir,
            health_interval,
            allowed_issuers,
        } = settings;
        Self {
            allowed_issuers,
            events,
            data_dir,
            launcher_binary,
            launcher_socket,
            provider_socket,
            cache_dir,
            health_interval,
            launcher: watch::Sender::new(None),
            launcher_status: Mutex::new(LauncherStatus {
                pid: None,
                restarts: 0,
                state: ProcessState::Starting,
            }),
            providers: Mutex::new(BTreeMap::new()),
            tokens: Mutex::new(HashMap::new()),
            exit_waiters: Mutex::new(HashMap::new()),
            links: RwLock::new(BTreeMap::new()),
            verified: Mutex::new(HashMap::new()),
            next_instance: AtomicU64::new(1),
        }
    }

    // ---- the launcher ------------------------------------------------------

    /// Runs the launcher until shutdown, restarting it (and every provider,
    /// with its links) whenever it dies.
    pub async fn supervise(
        self: Arc<Self>,
        host: Arc<Host>,
        mut shutdown: watch::Receiver<bool>,
        first_ready: oneshot::Sender<Result<()>>,
    ) {
        let listener = match child::listen(&self.launcher_socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = first_ready.send(Err(e));
                return;
            }
        };
        let provider_listener = match child::listen(&self.provider_socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = first_ready.send(Err(e));
                return;
            }
        };
        let acceptor = tokio::spawn(
            self.clone()
                .accept_providers(provider_listener, host.clone()),
        );
        let health = tokio::spawn(self.clone().health_loop());
        let mut first_ready = Some(first_ready);
        let mut backoff = Backoff::new(Duration::from_millis(50), BACKOFF_MAX);
        let mut intensity = RestartIntensity::new(10, RESTART_WINDOW);
        loop {
            let started = Instant::now();
            match self
                .run_launcher(&listener, &mut shutdown, &mut first_ready)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!("provider-launcher: {e:#}");
                    if let Some(tx) = first_ready.take() {
                        let _ = tx.send(Err(e));
                        break;
                    }
                    self.events.publish(
                        "process_exited",
                        serde_json::json!({"name": "provider-launcher", "reason": format!("{e:#}")}),
                    );
                    if !intensity.allow() {
                        tracing::error!(
                            "provider-launcher failed: more than {}",
                            intensity.describe()
                        );
                        self.events.publish(
                            "process_failed",
                            serde_json::json!({"name": "provider-launcher", "reason": format!("more than {}", intensity.describe())}),
                        );
                        {
                            let mut status = lock(&self.launcher_status);
                            status.state = ProcessState::Failed;
                            status.pid = None;
                        }
                        stopped(&mut shutdown).await;
                        break;
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            {
                let mut status = lock(&self.launcher_status);
                status.state = ProcessState::Restarting;
                status.pid = None;
                status.restarts += 1;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        acceptor.abort();
        health.abort();
        self.launcher.send_replace(None);
        lock(&self.launcher_status).state = ProcessState::Stopped;
        let _ = std::fs::remove_file(&self.launcher_socket);
        let _ = std::fs::remove_file(&self.provider_socket);
    }

    async fn run_launcher(
        self: &Arc<Self>,
        listener: &Listener,
        shutdown: &mut watch::Receiver<bool>,
        first_ready: &mut Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        lock(&self.launcher_status).state = ProcessState::Starting;
        let Connected {
            mut child,
            reader,
            writer,
        } = child::spawn_and_accept(
            listener,
            &self.launcher_binary,
            &self.launcher_socket,
            "PROVIDER_LAUNCHER_TOKEN",
            Role::Launcher,
        )
        .await?;
        let restarts = {
            let mut status = lock(&self.launcher_status);
            status.pid = child.id();
            status.state = ProcessState::Running;
            status.restarts
        };
        if restarts > 0 {
            self.events.publish(
                "process_restarted",
                serde_json::json!({"name": "provider-launcher", "pid": child.id(), "restarts": restarts}),
            );
        }
        let (tx, writer_task) = child::outbox(writer, "the launcher");
        let conn = Arc::new(LauncherConn {
            tx,
            calls: CallTable::default(),
        });
        let mut reader_task = tokio::spawn(self.clone().launcher_read_loop(reader, conn.clone()));
        self.launcher.send_replace(Some(conn.clone()));
        if let Some(tx) = first_ready.take() {
            let _ = tx.send(Ok(()));
        } else {
            // A new launcher after a crash: bring every provider back.
            let ids: Vec<ProviderId> = lock(&self.providers).keys().cloned().collect();
            for id in ids {
                let this = self.clone();
                tokio::spawn(async move { this.relaunch(id).await });
            }
        }
        let outcome = tokio::select! {
            status = child.wait() => Err(anyhow!("the launcher {}", child::describe_exit(status?))),
            _ = &mut reader_task => match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
                Ok(status) => Err(anyhow!("the launcher {}", child::describe_exit(status?))),
                Err(_) => Err(anyhow!("the launcher's channel broke")),
            },
            _ = stopped(shutdown) => Ok(()),
        };
        if outcome.is_ok() {
            self.stop_all(&conn).await;
        }
        self.launcher.send_replace(None);
        conn.calls
            .fail_all(CallError::unavailable("the provider launcher is gone"));
        reader_task.abort();
        writer_task.abort();
        drop(conn);
        if outcome.is_ok() {
            // Closing the channel makes the launcher end what is left and exit.
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        } else {
            let _ = child.kill().await;
            self.launcher_died();
        }
        outcome
    }

    /// The launcher died: its providers died with it (parent-death signal).
    /// Make sure of it by their process groups, then mark them for relaunch.
    fn launcher_died(&self) {
        let mut providers = lock(&self.providers);
        for record in providers.values_mut() {
            if let Some(pid) = record.pid.take() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Some(conn) = record.conn.take() {
                conn.calls.fail_all(CallError::unavailable(
                    "the provider died with its launcher",
                ));
            }
            if record.state != ProcessState::Failed {
                record.state = ProcessState::Restarting;
            }
        }
    }

    async fn launcher_read_loop(self: Arc<Self>, reader: SocketReader, conn: Arc<LauncherConn>) {
        self.read_launcher(reader, &conn).await;
        // Nothing more will be answered: fail what waits at once rather than
        // at each call's timeout (a shutdown would otherwise sit them out).
        conn.calls.fail_all(CallError::unavailable(
            "the provider launcher's channel closed",
        ));
    }

    async fn read_launcher(self: &Arc<Self>, reader: SocketReader, conn: &LauncherConn) {
        let mut reader = FrameReader::<_, FromLauncher>::new(reader);
        loop {
            match reader.recv().await {
                Ok(Some(FromLauncher::Reply { id, result })) => {
                    conn.calls.complete(id, result);
                }
                Ok(Some(FromLauncher::Exited {
                    instance,
                    pid,
                    code,
                    signal,
                })) => self.clone().on_exit(instance, pid, code, signal),
                Ok(Some(FromLauncher::Confined {
                    instance,
                    confinement,
                })) => {
                    if let Confinement::Partial { reason } = confinement {
                        let key = self.key_of(instance).unwrap_or_else(|| "?".into());
                        tracing::warn!(provider = %key, "providers run without a Landlock sandbox: {reason}");
                    }
                }
                Ok(Some(FromLauncher::Output {
                    instance,
                    stream,
                    line,
                })) => {
                    let key = self.key_of(instance).unwrap_or_else(|| "?".into());
                    match stream {
                        OutputStream::Stdout => tracing::info!(provider = %key, "{line}"),
                        OutputStream::Stderr => tracing::info!(provider = %key, "{line}"),
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("bad frame from the launcher: {e}");
                    return;
                }
            }
        }
    }

    fn key_of(&self, instance: InstanceId) -> Option<String> {
        lock(&self.providers)
            .iter()
            .find(|(_, r)| r.instance == instance)
            .map(|((key, _), _)| key.clone())
    }

    async fn launcher_conn(&self, timeout: Duration) -> CallResult<Arc<LauncherConn>> {
        let mut rx = self.launcher.subscribe();
        let wait = async { rx.wait_for(|c| c.is_some()).await.map(|c| c.clone()) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Some(conn))) => Ok(conn),
            _ => Err(CallError::unavailable(
                "the provider launcher is not running",
            )),
        }
    }

    // ---- provider lifecycle ------------------------------------------------

    pub async fn start_provider(
        self: &Arc<Self>,
        path: PathBuf,
        link_name: String,
        config_json: String,
    ) -> CallResult<String> {
        if serde_json::from_str::<serde_json::Value>(&config_json).is_err() {
            return Err(CallError::denied(
                "the provider configuration is not valid JSON",
            ));
        }
        let extracted = self.verified_archive(path).await?;
        let id: ProviderId = (extracted.key.clone(), link_name.clone());
        let (ready_tx, ready_rx) = oneshot::channel();
        {
            let mut providers = lock(&self.providers);
            if providers.contains_key(&id) {
                return Err(CallError::denied(format!(
                    "provider {} is already running with link name {link_name}",
                    id.0
                )));
            }
            providers.insert(
                id.clone(),
                ProviderRecord {
                    name: extracted
                        .metadata
                        .name
                        .clone()
                        .unwrap_or_else(|| "Unnamed Provider".into()),
                    contract_id: extracted.metadata.capid.clone(),
                    binary: extracted.binary.clone(),
                    binary_sha256: extracted.sha256.clone(),
                    config_json,
                    instance: 0,
                    pid: None,
                    state: ProcessState::Starting,
                    health: "unknown".into(),
                    restarts: 0,
                    intensity: RestartIntensity::new(MAX_RESTARTS, RESTART_WINDOW),
                    backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_MAX),
                    conn: None,
                    ready: Some(ready_tx),
                },
            );
        }
        let started = async {
            self.launch(&id).await?;
            match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CallError::unavailable("the provider start was abandoned")),
                Err(_) => Err(CallError::timeout(format!(
                    "the provider did not connect within {READY_TIMEOUT:?}"
                ))),
            }
        }
        .await;
        match started {
            Ok(()) => {
                tracing::info!(provider = %id.0, link_name = %id.1, "provider started");
                let pid = lock(&self.providers).get(&id).and_then(|r| r.pid);
                self.events.publish(
                    "provider_started",
                    serde_json::json!({"public_key": id.0, "link_name": id.1, "contract_id": extracted.metadata.capid, "pid": pid}),
                );
                Ok(id.0)
            }
            Err(reason) => {
                self.remove_and_stop(&id).await;
                self.events.publish(
                    "provider_start_failed",
                    serde_json::json!({"public_key": id.0, "link_name": id.1, "error": reason.message}),
                );
                Err(reason.context(format_args!("provider {} could not start", id.0)))
            }
        }
    }

    /// Verifies the archive at `path` and takes its binary out, or reuses the
    /// result of an earlier start of the very same file (same device, inode,
    /// size and modification time) whose claims have not expired since and
    /// whose extracted binary is still in place: a start from an unchanged
    /// archive then costs a `stat`, not a read, a gunzip and a hash.
    async fn verified_archive(&self, path: PathBuf) -> CallResult<par::ExtractedProvider> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path)
            .map_err(|e| CallError::not_found(format!("cannot read {}: {e}", path.display())))?;
        let stamp = (
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some((seen, extracted)) = lock(&self.verified).get(&path) {
            if *seen == stamp && !extracted.expired() && extracted.binary.exists() {
                return Ok(extracted.clone());
            }
        }
        let cache = self.cache_dir.clone();
        let allowed = self.allowed_issuers.clone();
        let read_path = path.clone();
        let extracted = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&read_path).map_err(|e| {
                CallError::not_found(format!("cannot read {}: {e}", read_path.display()))
            })?;
            par::verify_and_extract(&bytes, &cache, &allowed)
                .map_err(|e| CallError::denied(format!("provider refused: {e}")))
        })
        .await
        .map_err(|e| CallError::internal(format!("reading the archive failed: {e}")))??;
        lock(&self.verified).insert(path, (stamp, extracted.clone()));
        Ok(extracted)
    }

    /// Launches a new instance of a registered provider.
    async fn launch(&self, id: &ProviderId) -> CallResult<()> {
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let token = format!("{:032x}", rand::random::<u128>());
        let (binary, binary_sha256, contract_id, config_json) = {
            let mut providers = lock(&self.providers);
            let record = providers
                .get_mut(id)
                .ok_or_else(|| CallError::unavailable("the provider was stopped"))?;
            record.instance = instance;
            record.pid = None;
            (
                record.binary.clone(),
                record.binary_sha256.clone(),
                record.contract_id.clone(),
                record.config_json.clone(),
            )
        };
        let data_dir = self.data_dir.join(&id.0).join(&id.1);
        // Its sandbox lets a provider write its data directory and nothing
        // else, so its temporary files go in there too.
        let tmp_dir = data_dir.join("tmp");
        crate::paths::ensure_private_dir(&tmp_dir).map_err(|e| {
            CallError::internal(format!(
                "cannot prepare the provider's data directory: {e:#}"
            ))
        })?;
        let bootstrap = Bootstrap {
            data_dir: data_dir.display().to_string(),
            socket: self.provider_socket.display().to_string(),
            token: token.clone(),
            host_id: String::new(),
            provider_key: id.0.clone(),
            link_name: id.1.clone(),
            contract_id,
            config_json,
        };
        let mut stdin = Vec::new();
        FrameWriter::<_, Bootstrap>::new(&mut stdin)
            .send(&bootstrap)
            .await
            .map_err(|e| CallError::internal(e.to_string()))?;
        lock(&self.tokens).insert(token, (id.clone(), instance));
        let env = vec![
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
            (
                "RUST_LOG".to_string(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
            ("TMPDIR".to_string(), tmp_dir.display().to_string()),
        ];
        let launcher = self.launcher_conn(READY_TIMEOUT).await?;
        let pid = launcher
            .request(
                LauncherRequest::Launch(LaunchSpec {
                    instance,
                    provider_key: id.0.clone(),
                    link_name: id.1.clone(),
                    binary: binary.display().to_string(),
                    binary_sha256,
                    data_dir: data_dir.display().to_string(),
                    env,
                    stdin: Bytes::from(stdin),
                }),
                READY_TIMEOUT,
            )
            .await?;
        if let Some(record) = lock(&self.providers).get_mut(id) {
            if record.instance == instance {
                record.pid = Some(pid);
            }
        }
        Ok(())
    }

    async fn relaunch(self: Arc<Self>, id: ProviderId) {
        if let Err(e) = self.launch(&id).await {
            tracing::warn!(provider = %id.0, "relaunch failed: {e}");
            let instance = lock(&self.providers).get(&id).map(|r| r.instance);
            if let Some(instance) = instance {
                self.on_exit(instance, 0, None, None);
            }
        }
    }

    pub async fn stop_provider(&self, key: &str, link_name: &str) -> CallResult<()> {
        let id = (key.to_owned(), link_name.to_owned());
        if !lock(&self.providers).contains_key(&id) {
            return Err(CallError::not_found(format!(
                "no provider {key} with link name {link_name} is running on this host"
            )));
        }
        self.remove_and_stop(&id).await;
        tracing::info!(provider = %key, link_name, "provider stopped");
        self.events.publish(
            "provider_stopped",
            serde_json::json!({"public_key": key, "link_name": link_name, "reason": "stop requested"}),
        );
        Ok(())
    }

    /// Forgets a provider, then asks it to shut down and has the launcher end
    /// its process group.
    async fn remove_and_stop(&self, id: &ProviderId) {
        let Some(record) = lock(&self.providers).remove(id) else {
            return;
        };
        if let Some(conn) = &record.conn {
            self.shut_down_in_order(record.instance, conn).await;
        }
        if let Ok(launcher) = self.launcher_conn(Duration::from_millis(100)).await {
            if record.pid.is_some() {
                let _ = launcher
                    .request(
                        LauncherRequest::Stop {
                            instance: record.instance,
                            grace_ms: STOP_GRACE.as_millis() as u64,
                        },
                        STOP_GRACE + Duration::from_secs(3),
                    )
                    .await;
            }
        }
        if let Some(conn) = record.conn {
            conn.calls
                .fail_all(CallError::unavailable("the provider was stopped"));
        }
    }

    /// Sends a provider its Shutdown and waits, at most [`SHUTDOWN_WAIT`], for
    /// the launcher to report its exit. A closed channel is not enough: a
    /// provider closes it and then winds down (an HTTP server drains its
    /// connections), and the launcher's stop would signal it mid-way.
    async fn shut_down_in_order(&self, instance: InstanceId, conn: &ProviderConn) {
        let (exited, exit_reported) = oneshot::channel();
        lock(&self.exit_waiters)
            .entry(instance)
            .or_default()
            .push(exited);
        if conn.tx.send_now(ToProvider::Shutdown).is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, exit_reported).await;
        } else {
            drop(exit_reported);
        }
        // Our receiver is gone now, so our sender reads as closed; forget it
        // (and any left by a stop that was dropped mid-wait).
        let mut waiters = lock(&self.exit_waiters);
        if let Some(waiting) = waiters.get_mut(&instance) {
            waiting.retain(|w| !w.is_closed());
            if waiting.is_empty() {
                waiters.remove(&instance);
            }
        }
    }

    /// Every provider gets its shutdown message first, then its group ends.
    async fn stop_all(&self, launcher: &LauncherConn) {
        let records: Vec<(InstanceId, Option<Arc<ProviderConn>>)> = {
            let mut providers = lock(&self.providers);
            providers
                .values_mut()
                .map(|r| {
                    r.state = ProcessState::Stopping;
                    (r.instance, r.conn.clone())
                })
                .collect()
        };
        // Every provider gets its Shutdown at once and a moment to exit on its own.
        futures::future::join_all(
            records
                .iter()
                .filter_map(|(instance, conn)| Some((*instance, conn.as_ref()?)))
                .map(|(instance, conn)| self.shut_down_in_order(instance, conn)),
        )
        .await;
        let stops = records.iter().map(|(instance, _)| {
            launcher.request(
                LauncherRequest::Stop {
                    instance: *instance,
                    grace_ms: STOP_GRACE.as_millis() as u64,
                },
                STOP_GRACE + Duration::from_secs(3),
            )
        });
        futures::future::join_all(stops).await;
        lock(&self.providers).clear();
    }

    /// The launcher reaped a provider.
    fn on_exit(
        self: Arc<Self>,
        instance: InstanceId,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
    ) {
        for stop in lock(&self.exit_waiters)
            .remove(&instance)
            .unwrap_or_default()
        {
            let _ = stop.send(());
        }
        let how = child::describe_code_signal(code, signal);
        let mut providers = lock(&self.providers);
        let Some((id, record)) = providers.iter_mut().find(|(_, r)| r.instance == instance) else {
            return; // a planned stop: already forgotten
        };
        let id = id.clone();
        if record.state == ProcessState::Stopping {
            return;
        }
        tracing::warn!(provider = %id.0, link_name = %id.1, pid, "provider {how}");
        if let Some(conn) = record.conn.take() {
            conn.calls.fail_all(CallError::provider_fault(format!(
                "provider {} {how}",
                id.0
            )));
        }
        record.pid = None;
        if let Some(ready) = record.ready.take() {
            let _ = ready.send(Err(CallError::provider_fault(format!(
                "it {how} before it was ready"
            ))));
            return;
        }
        self.events.publish(
            "provider_exited",
            serde_json::json!({"public_key": id.0, "link_name": id.1, "pid": pid, "code": code, "signal": signal}),
        );
        if !record.intensity.allow() {
            record.state = ProcessState::Failed;
            record.health = format!(
                "failed: it {how}; more than {}",
                record.intensity.describe()
            );
            tracing::error!(provider = %id.0, "provider failed: more than {}", record.intensity.describe());
            self.events.publish(
                "provider_failed",
                serde_json::json!({"public_key": id.0, "link_name": id.1, "reason": record.health}),
            );
            return;
        }
        record.restarts += 1;
        record.state = ProcessState::Restarting;
        let delay = record.backoff.next_delay();
        drop(providers);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let still = lock(&this.providers)
                .get(&id)
                .is_some_and(|r| r.state == ProcessState::Restarting && r.instance == instance);
            if still {
                this.relaunch(id).await;
            }
        });
    }

    // ---- the provider socket -----------------------------------------------

    async fn accept_providers(self: Arc<Self>, listener: Listener, host: Arc<Host>) {
        let our_uid = nix::unistd::geteuid().as_raw();
        loop {
            let stream: Stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("provider socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if stream.peer_creds().ok().and_then(|c| c.euid()) != Some(our_uid) {
                tracing::warn!("refused a provider connection from another user");
                continue;
            }
            let this = self.clone();
            let host = host.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_provider(stream, host).await {
                    tracing::warn!("provider connection: {e}");
                }
            });
        }
    }

    async fn serve_provider(self: Arc<Self>, stream: Stream, host: Arc<Host>) -> Result<()> {
        let (mut reader, mut writer) = wire::socket::split_local(stream)?;
        let mut claimed = None;
        handshake::accept(&mut reader, &mut writer, |hello| {
            if hello.role != Role::Provider {
                return Err("this socket is for capability providers".into());
            }
            match lock(&self.tokens).remove(&hello.token) {
                Some(found) if found.0 .0 == hello.key => {
                    claimed = Some(found);
                    Ok(())
                }
                Some(found) => Err(format!(
                    "this token was issued to provider {}, not `{}`",
                    found.0 .0, hello.key
                )),
                None => Err("unknown provider token".into()),
            }
        })
        .await?;
        let (id, instance) = claimed.expect("set by the accepted handshake");
        let links: Vec<Link> = self
            .read_links()
            .values()
            .filter(|l| l.provider_id == id.0 && l.link_name == id.1)
            .cloned()
            .collect();
        let (tx, writer_task) = child::outbox(writer, "a provider");
        let conn = Arc::new(ProviderConn {
            tx: tx.clone(),
            calls: CallTable::default(),
            health: CallTable::default(),
        });
        tx.send_now(ToProvider::Init { links })?;
        let mut frames = FrameReader::<_, FromProvider>::new(reader);
        // A provider may already call actors while it starts (an HTTP request
        // reaching a listener its links just opened), so everything it sends
        // is served from the start; `Ready` marks it running.
        let ready_by = tokio::time::sleep(READY_TIMEOUT);
        tokio::pin!(ready_by);
        let mut ready = false;
        loop {
            let frame = tokio::select! {
                frame = frames.recv() => frame,
                _ = &mut ready_by, if !ready => {
                    writer_task.abort();
                    return Err(anyhow!("provider {} did not get ready within {READY_TIMEOUT:?}", id.0));
                }
            };
            match frame {
                Ok(Some(FromProvider::Ready)) if !ready => {
                    ready = true;
                    let mut providers = lock(&self.providers);
                    let Some(record) = providers.get_mut(&id).filter(|r| r.instance == instance)
                    else {
                        break; // stopped meanwhile
                    };
                    record.conn = Some(conn.clone());
                    record.state = ProcessState::Running;
                    record.health = "healthy".into();
                    tokio::spawn({
                        let host = host.clone();
                        let target = DataPathTarget {
                            key: id.0.clone(),
                            link_name: id.1.clone(),
                            contract_id: record.contract_id.clone(),
                            tx: conn.tx.clone(),
                        };
                        async move { host.open_data_path(target).await }
                    });
                    if let Some(waiter) = record.ready.take() {
                        let _ = waiter.send(Ok(()));
                    } else {
                        self.events.publish(
                            "provider_restarted",
                            serde_json::json!({"public_key": id.0, "link_name": id.1, "pid": record.pid, "restarts": record.restarts}),
                        );
                    }
                }
                Ok(Some(FromProvider::InvokeResult { id, result })) => {
                    conn.calls.complete(id, result);
                }
                Ok(Some(FromProvider::Health {
                    id,
                    healthy,
                    message,
                })) => {
                    conn.health.complete(id, Ok((healthy, message)));
                }
                // A call the provider gave up on: its answer is dropped.
                Ok(Some(FromProvider::CancelCall { .. })) => {}
                Ok(Some(FromProvider::CallActor {
                    id: call_id,
                    actor_id,
                    operation,
                    payload,
                })) => {
                    let host = host.clone();
                    let conn = conn.clone();
                    let provider = id.0.clone();
                    let contract = lock(&self.providers)
                        .get(&id)
                        .map(|r| r.contract_id.clone())
                        .unwrap_or_default();
                    tokio::spawn(async move {
                        let result = host
                            .call_actor_from_provider(
                                &provider, &contract, &actor_id, &operation, payload,
                            )
                            .await;
                        let _ = conn.tx.send_reply_now(ToProvider::CallActorResult {
                            id: call_id,
                            result,
                        });
                    });
                }
                Ok(Some(FromProvider::Ready)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(provider = %id.0, "bad frame from the provider: {e}");
                    break;
                }
            }
        }
        conn.calls.fail_all(CallError::unavailable(format!(
            "provider {} closed its connection",
            id.0
        )));
        if let Some(record) = lock(&self.providers).get_mut(&id) {
            if record.instance == instance {
                record.conn = None;
            }
        }
        writer_task.abort();
        Ok(())
    }

    // ---- calls ---------------------------------------------------------------

    /// An actor calls a provider through its link.
    pub async fn invoke(
        &self,
        actor: &str,
        contract: &str,
        link_name: &str,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        let link_key = (actor.to_owned(), contract.to_owned(), link_name.to_owned());
        let provider = self
            .read_links()
            .get(&link_key)
            .map(|l| l.provider_id.clone())
            .ok_or_else(|| {
                CallError::not_found(format!(
                    "no link for actor {actor} to {contract} (link name {link_name})"
                ))
            })?;
        let conn = {
            let providers = lock(&self.providers);
            let record = providers
                .get(&(provider.clone(), link_name.to_owned()))
                .ok_or_else(|| {
                    CallError::unavailable(format!(
                        "provider {provider} (link name {link_name}) is not running"
                    ))
                })?;
            record.conn.clone().ok_or_else(|| {
                CallError::unavailable(format!(
                    "provider {provider} (link name {link_name}) is not ready: {}",
                    record.state
                ))
            })?
        };
        wire::check_payload("request", payload.len())?;
        let pending = conn.calls.register()?;
        let id = pending.id();
        conn.tx
            .send_now(ToProvider::Invoke {
                id,
                actor_id: actor.to_owned(),
                operation: operation.to_owned(),
                payload,
            })
            .map_err(|e| e.into_call_error("request"))?;
        let result = pending
            .wait_for(&format!("provider {provider}"), timeout)
            .await;
        if matches!(&result, Err(e) if e.kind == wire::ErrorKind::Timeout) {
            // Given up: the provider may stop the work.
            let _ = conn.tx.send_now(ToProvider::Cancel { id });
        }
        result.map_err(|e| e.context(format_args!("provider {provider}")))
    }

    async fn health_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.health_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let conns: Vec<(ProviderId, Arc<ProviderConn>)> = lock(&self.providers)
                .iter()
                .filter_map(|(id, r)| r.conn.clone().map(|c| (id.clone(), c)))
                .collect();
            for (id, conn) in conns {
                let verdict = conn
                    .health
                    .call("the provider", HEALTH_TIMEOUT, |call| {
                        conn.tx
                            .send_now(ToProvider::HealthCheck { id: call })
                            .map_err(|e| e.into_call_error("health check"))
                    })
                    .await;
                let health = match verdict {
                    Ok((true, _)) => "healthy".to_string(),
                    Ok((false, message)) => format!("unhealthy: {message}"),
                    Err(e) => format!("unhealthy: {e}"),
                };
                if let Some(record) = lock(&self.providers).get_mut(&id) {
                    if record.health != health {
                        tracing::info!(provider = %id.0, "health: {health}");
                        let kind = if health == "healthy" {
                            "health_check_passed"
                        } else {
                            "health_check_failed"
                        };
                        self.events.publish(
                            kind,
                            serde_json::json!({"public_key": id.0, "link_name": id.1, "health": health}),
                        );
                    }
                    record.health = health;
                }
            }
        }
    }

    // ---- links ---------------------------------------------------------------

    pub fn link_put(&self, link: Link) -> CallResult<()> {
        if !(link.actor_id.len() == 56 && link.actor_id.starts_with('M')) {
            return Err(CallError::denied(format!(
                "`{}` is not an actor key (M...)",
                link.actor_id
            )));
        }
        if !(link.provider_id.len() == 56 && link.provider_id.starts_with('V')) {
            return Err(CallError::denied(format!(
                "`{}` is not a provider key (V...)",
                link.provider_id
            )));
        }
        if link.contract_id.is_empty() || link.link_name.is_empty() {
            return Err(CallError::denied(
                "a link needs a contract id and a link name",
            ));
        }
        let key = (
            link.actor_id.clone(),
            link.contract_id.clone(),
            link.link_name.clone(),
        );
        let previous = self.links.write().insert(key, link.clone());
        // A link moved to another provider: the old one forgets it.
        if let Some(old) = previous.filter(|old| old.provider_id != link.provider_id) {
            self.send_to(
                &old.provider_id,
                &old.link_name,
                ToProvider::LinkDel {
                    actor_id: old.actor_id.clone(),
                    contract_id: old.contract_id.clone(),
                    link_name: old.link_name.clone(),
                },
            );
        }
        let (provider, link_name) = (link.provider_id.clone(), link.link_name.clone());
        self.events.publish(
            "linkdef_set",
            serde_json::to_value(&link).unwrap_or_default(),
        );
        self.send_to(&provider, &link_name, ToProvider::LinkPut(link));
        Ok(())
    }

    pub fn link_del(&self, actor: &str, contract: &str, link_name: &str) -> CallResult<()> {
        let removed = self
            .links
            .write()
            .remove(&(actor.to_owned(), contract.to_owned(), link_name.to_owned()))
            .ok_or_else(|| {
                CallError::not_found(format!(
                    "no link for actor {actor} to {contract} (link name {link_name})"
                ))
            })?;
        self.send_to(
            &removed.provider_id,
            link_name,
            ToProvider::LinkDel {
                actor_id: actor.to_owned(),
                contract_id: contract.to_owned(),
                link_name: link_name.to_owned(),
            },
        );
        Ok(())
    }

    /// Every provider that is running now, to open direct channels for.
    pub fn data_path_targets(&self) -> Vec<DataPathTarget> {
        lock(&self.providers)
            .iter()
            .filter_map(|(id, record)| {
                let conn = record.conn.as_ref()?;
                Some(DataPathTarget {
                    key: id.0.clone(),
                    link_name: id.1.clone(),
                    contract_id: record.contract_id.clone(),
                    tx: conn.tx.clone(),
                })
            })
            .collect()
    }

    pub fn links(&self) -> Vec<Link> {
        self.read_links().values().cloned().collect()
    }

    fn send_to(&self, provider: &str, link_name: &str, message: ToProvider) {
        let conn = lock(&self.providers)
            .get(&(provider.to_owned(), link_name.to_owned()))
            .and_then(|r| r.conn.clone());
        if let Some(conn) = conn {
            let _ = conn.tx.send_now(message);
        }
    }

    fn read_links(&self) -> parking_lot::RwLockReadGuard<'_, BTreeMap<LinkKey, Link>> {
        self.links.read()
    }

    // ---- inventory -----------------------------------------------------------

    pub fn summaries(&self) -> Vec<ProviderSummary> {
        lock(&self.providers)
            .iter()
            .map(|((key, link_name), r)| ProviderSummary {
                key: key.clone(),
                name: r.name.clone(),
                link_name: link_name.clone(),
                contract_id: r.contract_id.clone(),
                pid: r.pid,
                state: r.state,
                health: r.health.clone(),
                restarts: r.restarts,
            })
            .collect()
    }

    pub fn launcher_summary(&self) -> ProcessSummary {
        let status = lock(&self.launcher_status).clone();
        ProcessSummary {
            name: "provider-launcher".into(),
            pid: status.pid,
            restarts: status.restarts,
            state: status.state,
        }
    }
}
