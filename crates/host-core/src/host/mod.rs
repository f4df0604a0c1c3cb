//! The virtual host: the actors this host runs, the links, the routing of
//! every call, and the supervision tree under it (as in the seed's Elixir
//! host): an actor supervisor (the worker process and the actors restored
//! onto it) and a provider supervisor (the launcher and each provider).
//!
//! The supervisors know nothing of this module; they report up through
//! the owner traits they define ([`WorkerOwner`], [`ProviderOwner`]),
//! which [`Host`] implements in [`calls`].
//!
//! Its parts: [`registry`] (the actors), [`links`] (the link store),
//! [`router`] (where a call goes), [`lifecycle`] (starting, updating,
//! scaling and stopping actors, and their supervision), [`calls`] (calls
//! into and out of the worker and providers), [`linking`] (link changes,
//! the worker's routes and providers' direct channels), [`artifacts`]
//! (files and OCI references).
//!
//! [`WorkerOwner`]: crate::worker::WorkerOwner
//! [`ProviderOwner`]: crate::providers::ProviderOwner

pub mod artifacts;
mod calls;
mod lifecycle;
mod linking;
pub mod links;
pub mod registry;
pub mod remote;
pub mod router;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use anyhow::Result;
use nkeys::KeyPair;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use wire::{
    control::{Inventory, ProcessState},
    worker::WorkerConfig,
    CallResult,
};

use crate::{
    events::Events,
    providers::{ProviderSettings, ProviderSupervisor},
    supervise::Supervisor,
    worker::{WorkerConn, WorkerSupervisor},
};

use self::{
    links::{LinkStore, MemoryLinks},
    registry::Registry,
};

pub use crate::supervise::stopped;

/// Compiling a large actor in a debug build can take a while.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Added to an invocation's deadline before the host gives up on the worker.
const REPLY_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub allowed_issuers: Vec<String>,
    pub invocation_timeout: Duration,
    pub max_memory_bytes: u64,
    pub max_instances: u32,
    /// Calls of one actor that may wait for a free instance; more are
    /// answered "busy" at once.
    pub max_queued_calls: u32,
    pub health_interval: Duration,
}

/// Where the host's children live and talk.
pub struct HostPaths {
    pub runtime_binary: PathBuf,
    pub launcher_binary: PathBuf,
    pub worker_socket: PathBuf,
    pub launcher_socket: PathBuf,
    pub provider_socket: PathBuf,
    pub compile_cache: Option<PathBuf>,
    pub provider_cache: PathBuf,
    pub provider_data: PathBuf,
}

pub struct Host {
    /// This host, for the background work its owner interfaces start.
    me: Weak<Host>,
    pub key: KeyPair,
    config: HostConfig,
    started: Instant,
    actors: Registry,
    links: Box<dyn LinkStore>,
    /// Each actor's record of worker crashes put down to it.
    strikes: Mutex<HashMap<String, Supervisor>>,
    /// Serialises start/update/scale/stop so that two changes to the registry
    /// never interleave.
    lifecycle: tokio::sync::Mutex<()>,
    /// Serialises route updates to the worker, so an older table never
    /// arrives after a newer one.
    routes_push: tokio::sync::Mutex<()>,
    worker: Arc<WorkerSupervisor>,
    providers: Arc<ProviderSupervisor>,
    /// The lattice, once the host has joined one.
    remote: std::sync::OnceLock<Arc<dyn remote::Remote>>,
    /// The registry client for OCI references, once the host has one.
    artifacts: std::sync::OnceLock<Arc<artifacts::Artifacts>>,
    pub events: Arc<Events>,
    shutdown: watch::Sender<bool>,
}

impl Host {
    /// A host that runs alone, with a new key: its links in memory.
    pub fn new(config: HostConfig, paths: HostPaths) -> Arc<Self> {
        Self::with_parts(
            config,
            paths,
            KeyPair::new_server(),
            Box::new(MemoryLinks::default()),
        )
    }

    /// A host with its own key (`N...`) and link store.
    pub fn with_parts(
        config: HostConfig,
        paths: HostPaths,
        key: KeyPair,
        links: Box<dyn LinkStore>,
    ) -> Arc<Self> {
        let data_socket = paths.worker_socket.with_file_name("worker-data.sock");
        let worker_config = WorkerConfig {
            max_memory_bytes: config.max_memory_bytes,
            invocation_timeout_ms: config.invocation_timeout.as_millis() as u64,
            cache_dir: paths.compile_cache.map(|d| d.display().to_string()),
            max_instances: config.max_instances,
            max_queued_calls: config.max_queued_calls,
            data_socket: Some(data_socket.display().to_string()),
        };
        let events = Arc::new(Events::new(key.public_key()));
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            key,
            events: events.clone(),
            worker: Arc::new(WorkerSupervisor::new(
                paths.runtime_binary,
                paths.worker_socket,
                worker_config,
                events.clone(),
            )),
            providers: Arc::new(ProviderSupervisor::new(
                ProviderSettings {
                    launcher_binary: paths.launcher_binary,
                    launcher_socket: paths.launcher_socket,
                    provider_socket: paths.provider_socket,
                    cache_dir: paths.provider_cache,
                    data_dir: paths.provider_data,
                    health_interval: config.health_interval,
                    allowed_issuers: config.allowed_issuers.clone(),
                },
                events,
            )),
            config,
            started: Instant::now(),
            actors: Registry::default(),
            links,
            strikes: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            routes_push: tokio::sync::Mutex::new(()),
            remote: std::sync::OnceLock::new(),
            artifacts: std::sync::OnceLock::new(),
            shutdown: watch::Sender::new(false),
        })
    }

    /// Starts the supervision tree; resolves once the first worker and the
    /// launcher are ready. The task ends when both supervisors have stopped.
    pub async fn start(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>> {
        let (worker_tx, worker_rx) = oneshot::channel();
        let worker = tokio::spawn(self.worker.clone().supervise(
            self.clone(),
            self.shutdown.subscribe(),
            worker_tx,
        ));
        let (launcher_tx, launcher_rx) = oneshot::channel();
        let launcher = tokio::spawn(self.providers.clone().supervise(
            self.clone(),
            self.shutdown.subscribe(),
            launcher_tx,
        ));
        let ready = async {
            worker_rx.await.map_err(|_| {
                anyhow::anyhow!("the worker supervisor ended before it was ready")
            })??;
            launcher_rx.await.map_err(|_| {
                anyhow::anyhow!("the provider supervisor ended before it was ready")
            })??;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = ready {
            self.request_shutdown();
            let _ = worker.await;
            let _ = launcher.await;
            return Err(e);
        }
        if let Some(mut changes) = self.links.take_changes() {
            // Links changed anywhere in the lattice reach this host's
            // providers and worker in the store's order.
            let host = self.clone();
            tokio::spawn(async move {
                while let Some(revisioned) = changes.recv().await {
                    host.apply_link_change(revisioned.change).await;
                    host.links.applied(revisioned.revision);
                }
            });
        }
        Ok(tokio::spawn(async move {
            // Providers stop first (they may still call actors while shutting down).
            let _ = launcher.await;
            let _ = worker.await;
        }))
    }

    /// Joins a lattice: calls no part of this host can take go to
    /// `remote`. Once; a second call is refused.
    pub fn set_remote(&self, remote: Arc<dyn remote::Remote>) -> Result<()> {
        self.remote
            .set(remote)
            .map_err(|_| anyhow::anyhow!("the host has joined a lattice already"))
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// How long the host waits for a worker that is (re)starting.
    fn call_timeout(&self) -> Duration {
        self.config.invocation_timeout + REPLY_MARGIN
    }

    async fn conn(&self) -> CallResult<Arc<WorkerConn>> {
        self.worker.connection(self.call_timeout()).await
    }

    /// Whether the host's own children are up (for the systemd watchdog).
    pub fn is_healthy(&self) -> bool {
        self.worker.status().state == ProcessState::Running
            && self.providers.launcher_summary().state == ProcessState::Running
    }

    /// The launcher's pid while it runs (every provider process descends
    /// from it).
    pub fn launcher_pid(&self) -> Option<u32> {
        self.providers.launcher_pid()
    }

    pub fn inventory(&self) -> Inventory {
        let worker = self.worker.status();
        Inventory {
            host_id: self.key.public_key(),
            uptime_secs: self.started.elapsed().as_secs(),
            processes: vec![
                wire::control::ProcessSummary {
                    name: "actor-runtime".into(),
                    pid: worker.pid,
                    restarts: worker.restarts,
                    state: worker.state,
                },
                self.providers.launcher_summary(),
            ],
            providers: self.providers.summaries(),
            actors: self.actors.summaries(),
        }
    }
}
