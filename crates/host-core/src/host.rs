//! The virtual host: the registry of actors, their lifecycle, and the routing
//! of calls between the control socket, the worker and (later) providers.
//!
//! Supervision tree (as in the seed's Elixir host): the virtual host owns an
//! actor supervisor (the worker process and the actors restored onto it).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::Result;
use nkeys::KeyPair;
use tokio::sync::{oneshot, watch, Mutex};
use wire::{
    control::{ActorKind, ActorSummary, Inventory, ProcessState, ProcessSummary},
    provider::{Link, ToProvider},
    worker::{ActorSpec, Route, WorkerConfig, WorkerRequest},
    Bytes, CallError, CallResult,
};

use crate::{
    claims::{self, VerifiedActor},
    events::Events,
    providers::{DataPathTarget, ProviderSettings, ProviderSupervisor},
    worker::{WorkerConn, WorkerSupervisor},
};

/// Compiling a large actor in a debug build can take a while.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often, and after what first pause, the host tries again to admit a
/// provider to the worker or to give the worker its routes.
const DATA_PATH_ATTEMPTS: u32 = 5;
const DATA_PATH_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Added to the actor's own deadline before the host gives up on the worker.
const REPLY_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub allowed_issuers: Vec<String>,
    pub invocation_timeout: Duration,
    pub max_memory_bytes: u64,
    pub max_instances: u32,
    pub max_queued_calls: u32, // runtime: per-actor queue bound (issue 15)
    pub health_interval: Duration,
}

struct ActorRecord {
    spec: ActorSpec,
    summary: ActorSummary,
}

pub struct Host {
    pub key: KeyPair,
    config: HostConfig,
    started: Instant,
    actors: RwLock<BTreeMap<String, ActorRecord>>,
    /// Serialises start/update/scale/stop so that two changes to the registry
    /// never interleave.
    lifecycle: Mutex<()>,
    /// Serialises route updates to the worker, so an older table never
    /// arrives after a newer one.
    routes_push: Mutex<()>,
    worker: Arc<WorkerSupervisor>,
    pub providers: Arc<ProviderSupervisor>,
    pub events: Arc<Events>,
    shutdown: watch::Sender<bool>,
}

/// Where the host's children live and talk.
pub struct HostPaths {
    pub runtime_binary: std::path::PathBuf,
    pub launcher_binary: std::path::PathBuf,
    pub worker_socket: std::path::PathBuf,
    pub launcher_socket: std::path::PathBuf,
    pub provider_socket: std::path::PathBuf,
    pub compile_cache: Option<std::path::PathBuf>,
    pub provider_cache: std::path::PathBuf,
    pub provider_data: std::path::PathBuf,
}

impl Host {
    pub fn new(config: HostConfig, paths: HostPaths) -> Arc<Self> {
        let data_socket = paths.worker_socket.with_file_name("worker-data.sock");
        let worker_config = WorkerConfig {
            max_memory_bytes: config.max_memory_bytes,
            invocation_timeout_ms: config.invocation_timeout.as_millis() as u64,
            cache_dir: paths.compile_cache.map(|d| d.display().to_string()),
            max_instances: config.max_instances,
            data_socket: Some(data_socket.display().to_string()),
            max_queued_calls: config.max_queued_calls, // runtime: issue 15
        };
        let health_interval = config.health_interval;
        let allowed_issuers = config.allowed_issuers.clone();
        let key = KeyPair::new_server();
        let events = Arc::new(Events::new(key.public_key()));
        Arc::new(Self {
            key,
            events: events.clone(),
            config,
            started: Instant::now(),
            actors: RwLock::new(BTreeMap::new()),
            lifecycle: Mutex::new(()),
            routes_push: Mutex::new(()),
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
                    health_interval,
                    allowed_issuers,
                },
                events,
            )),
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
        Ok(tokio::spawn(async move {
            // Providers stop first (they may still call actors while shutting down).
            let _ = launcher.await;
            let _ = worker.await;
        }))
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn call_timeout(&self) -> Duration {
        self.config.invocation_timeout + REPLY_MARGIN
    }

    async fn conn(&self) -> CallResult<Arc<WorkerConn>> {
        self.worker.connection(self.call_timeout()).await
    }

    /// Opens one provider a direct channel to the worker: the worker admits
    /// a fresh single-use token for it, then the provider is told where to
    /// connect. Until it has, and whenever the channel is down, its calls
    /// come through the host as before, so a failure here only costs speed.
    pub async fn open_data_path(&self, provider: DataPathTarget) {
        let Some(socket) = self.worker.data_socket() else {
            return;
        };
        // A request can fail without the worker dying (a reply that came
        // after its deadline, for instance), so try again a few times.
        let mut delay = DATA_PATH_RETRY_FIRST;
        for attempt in 1..=DATA_PATH_ATTEMPTS {
            if provider.tx.is_closed() {
                return; // the provider is gone
            }
            let Ok(conn) = self.conn().await else {
                return; // the next worker opens it
            };
            let token = format!("{:032x}", rand::random::<u128>());
            let admitted = conn
                .request(
                    WorkerRequest::AdmitProvider {
                        provider_key: provider.key.clone(),
                        link_name: provider.link_name.clone(),
                        contract_id: provider.contract_id.clone(),
                        token: token.clone(),
                    },
                    self.call_timeout(),
                )
                .await;
            match admitted {
                Ok(_) => {
                    let _ = provider.tx.send_now(ToProvider::DataPath {
                        socket,
                        token,
                        timeout_ms: self.call_timeout().as_millis() as u64,
                    });
                    return;
                }
                Err(e) => tracing::debug!(
                    provider = %provider.key,
                    attempt,
                    "no direct channel to the worker yet: {e}"
                ),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// Opens every running provider a direct channel (after a worker start).
    pub async fn open_data_paths(self: Arc<Self>) {
        self.push_routes().await;
        for provider in self.providers.data_path_targets() {
            self.open_data_path(provider).await;
        }
    }

    /// Sets or replaces a link, then tells the worker, so the next call
    /// through the link takes the new route.
    pub async fn link_put(&self, link: Link) -> CallResult<()> {
        self.providers.link_put(link)?;
        self.push_routes().await;
        Ok(())
    }

    /// Deletes a link, then tells the worker, so no call after this returns
    /// takes the old route.
    pub async fn link_del(&self, actor: &str, contract: &str, link_name: &str) -> CallResult<()> {
        self.providers.link_del(actor, contract, link_name)?;
        self.push_routes().await;
        Ok(())
    }

    /// Sends the worker every link as a route for actors' direct calls to
    /// providers. Without a worker there is nothing to update: the next one
    /// gets the routes when it starts.
    async fn push_routes(&self) {
        if self.worker.data_socket().is_none() {
            return;
        }
        let _serialised = self.routes_push.lock().await;
        let Some(conn) = self.worker.current() else {
            return;
        };
        let routes: Vec<Route> = self
            .providers
            .links()
            .into_iter()
            .map(|l| Route {
                actor_id: l.actor_id,
                contract_id: l.contract_id,
                link_name: l.link_name,
                provider_key: l.provider_id,
            })
            .collect();
        let request = || WorkerRequest::SetRoutes {
            routes: routes.clone(),
        };
        let mut delay = DATA_PATH_RETRY_FIRST;
        for attempt in 1..=DATA_PATH_ATTEMPTS {
            match conn.request(request(), self.call_timeout()).await {
                Ok(_) => return,
                Err(e) if attempt == DATA_PATH_ATTEMPTS => {
                    tracing::warn!("cannot give the worker the routes to providers: {e}")
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Re-creates every registered actor on a new worker. Failures are logged
    /// and the actor stays registered so the next restart tries again.
    pub async fn restore_actors(&self, conn: &WorkerConn) {
        let specs: Vec<ActorSpec> = self
            .actors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.spec.clone())
            .collect();
        let restores = specs.into_iter().map(|spec| async move {
            let key = spec.key.clone();
            if let Err(e) = conn
                .request(WorkerRequest::StartActor(spec), START_TIMEOUT)
                .await
            {
                tracing::error!(actor = %key, "could not restore the actor: {e}");
            }
        });
        let count = restores.len();
        futures::future::join_all(restores).await;
        if count > 0 {
            tracing::info!("restored {count} actor(s) on the new worker");
        }
    }

    pub async fn start_actor(&self, wasm: Vec<u8>, count: u32) -> CallResult<String> {
        if count == 0 {
            return Err(CallError::denied("the instance count must be at least 1"));
        }
        let verified = claims::verify(&wasm, &self.config.allowed_issuers)
            .map_err(|e| CallError::denied(format!("actor refused: {e}")))?;
        let _guard = self.lifecycle.lock().await;
        let key = verified.key().to_owned();
        if self.has_actor(&key) {
            return Err(CallError::denied(format!(
                "actor {key} is already running; use scale-actor or update-actor"
            )));
        }
        if let Some(alias) = &verified.metadata.call_alias {
            if let Some(owner) = self.resolve_actor(alias) {
                return Err(CallError::denied(format!(
                    "call alias `{alias}` is already used by actor {owner}"
                )));
            }
        }
        let record = self.record(&verified, wasm, count);
        let conn = self.conn().await?;
        conn.request(
            WorkerRequest::StartActor(record.spec.clone()),
            START_TIMEOUT,
        )
        .await
        .map_err(|e| e.context(format_args!("actor {key} could not start")))?;
        tracing::info!(actor = %key, name = %record.summary.name, count, "actor started");
        self.events.publish(
            "actor_started",
            serde_json::json!({"public_key": key, "name": record.summary.name, "count": count, "issuer": record.summary.issuer}),
        );
        self.write_actors().insert(key.clone(), record);
        Ok(key)
    }

    pub async fn update_actor(&self, key: &str, wasm: Vec<u8>) -> CallResult<()> {
        let verified = claims::verify(&wasm, &self.config.allowed_issuers)
            .map_err(|e| CallError::denied(format!("update refused: {e}")))?;
        let _guard = self.lifecycle.lock().await;
        if verified.key() != key {
            return Err(CallError::denied(format!(
                "update refused: the new wasm is actor {}, not {key}",
                verified.key()
            )));
        }
        let (count, old_rev) = {
            let actors = self.read_actors();
            let record = actors.get(key).ok_or_else(|| not_running(key))?;
            (record.summary.count, record.summary.rev.unwrap_or(0))
        };
        let new_rev = verified.metadata.rev.unwrap_or(0);
        if new_rev <= old_rev {
            return Err(CallError::denied(format!(
                "update refused: revision {new_rev} is not higher than the running revision {old_rev}"
            )));
        }
        let record = self.record(&verified, wasm, count);
        let conn = self.conn().await?;
        conn.request(
            WorkerRequest::UpdateActor(record.spec.clone()),
            START_TIMEOUT,
        )
        .await
        .map_err(|e| e.context(format_args!("actor {key} could not be updated")))?;
        tracing::info!(actor = %key, rev = new_rev, "actor updated");
        self.events.publish(
            "actor_updated",
            serde_json::json!({"public_key": key, "rev": new_rev}),
        );
        self.write_actors().insert(key.to_owned(), record);
        Ok(())
    }

    pub async fn scale_actor(&self, key: &str, count: u32) -> CallResult<()> {
        if count == 0 {
            return self.stop_actor(key).await;
        }
        let _guard = self.lifecycle.lock().await;
        if !self.has_actor(key) {
            return Err(not_running(key));
        }
        let conn = self.conn().await?;
        conn.request(
            WorkerRequest::ScaleActor {
                key: key.to_owned(),
                instances: count,
            },
            self.call_timeout(),
        )
        .await?;
        if let Some(record) = self.write_actors().get_mut(key) {
            record.summary.count = count;
            record.spec.instances = count;
        }
        tracing::info!(actor = %key, count, "actor scaled");
        self.events.publish(
            "actor_scaled",
            serde_json::json!({"public_key": key, "count": count}),
        );
        Ok(())
    }

    pub async fn stop_actor(&self, key: &str) -> CallResult<()> {
        let _guard = self.lifecycle.lock().await;
        if !self.has_actor(key) {
            return Err(not_running(key));
        }
        // Forget it first: if the worker dies now, it is not restored.
        self.write_actors().remove(key);
        if let Ok(conn) = self.conn().await {
            if let Err(e) = conn
                .request(
                    WorkerRequest::StopActor {
                        key: key.to_owned(),
                    },
                    self.call_timeout(),
                )
                .await
            {
                tracing::warn!(actor = %key, "stopping on the worker: {e}");
            }
        }
        tracing::info!(actor = %key, "actor stopped");
        self.events
            .publish("actor_stopped", serde_json::json!({"public_key": key}));
        Ok(())
    }

    /// Invokes an actor by key or call alias.
    pub async fn call_actor(
        &self,
        target: &str,
        operation: &str,
        payload: Bytes,
    ) -> CallResult<Bytes> {
        self.call_actor_within(target, operation, payload, self.config.invocation_timeout)
            .await
    }

    /// Invokes an actor by key or call alias, the call to end within `timeout`.
    pub async fn call_actor_within(
        &self,
        target: &str,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        let key = self
            .resolve_actor(target)
            .ok_or_else(|| not_running(target))?;
        wire::check_payload("request", payload.len())?;
        let conn = self.conn().await?;
        let timeout = timeout.min(self.config.invocation_timeout);
        conn.request(
            WorkerRequest::Invoke {
                actor: key,
                operation: operation.to_owned(),
                payload,
                timeout_ms: timeout.as_millis() as u64,
            },
            timeout + REPLY_MARGIN,
        )
        .await
    }

    /// Answers an actor's call out of the worker: another actor, or a
    /// capability contract (checked against the caller's claims), within
    /// `timeout` (what is left of the calling invocation's deadline).
    pub async fn route_host_call(
        &self,
        caller: &str,
        binding: &str,
        namespace: &str,
        operation: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> CallResult<Bytes> {
        if self.resolve_actor(namespace).is_some() {
            return Box::pin(self.call_actor_within(namespace, operation, payload, timeout)).await;
        }
        let allowed = self
            .read_actors()
            .get(caller)
            .map(|r| r.summary.caps.iter().any(|c| c == namespace));
        match allowed {
            None => Err(CallError::unavailable(format!(
                "actor {caller} is not running on this host"
            ))),
            Some(false) if looks_like_actor(namespace) => Err(not_running(namespace)),
            Some(false) => Err(CallError::denied(format!(
                "actor {caller} is not allowed to call {namespace}: the contract is not in its claims' caps"
            ))),
            Some(true) => {
                let link = if binding.is_empty() { "default" } else { binding };
                self.providers
                    .invoke(caller, namespace, link, operation, payload, timeout)
                    .await
            }
        }
    }

    /// A provider calls an actor: allowed when the actor's caps name the
    /// provider's contract, as the 0.8x host required.
    pub async fn call_actor_from_provider(
        &self,
        provider: &str,
        contract: &str,
        actor: &str,
        operation: &str,
        payload: Bytes,
    ) -> CallResult<Bytes> {
        // The provider's link names the actor: one that is not running is
        // unavailable, not unknown.
        let key = self
            .resolve_actor(actor)
            .ok_or_else(|| CallError::unavailable(not_running(actor).message))?;
        let allowed = self
            .read_actors()
            .get(&key)
            .is_some_and(|r| r.summary.caps.iter().any(|c| c == contract));
        if !allowed {
            return Err(CallError::denied(format!(
                "actor {key} does not accept calls from {contract} (provider {provider}): the contract is not in its claims' caps"
            )));
        }
        self.call_actor(&key, operation, payload).await
    }

    /// Whether the host's own children are up (for the systemd watchdog).
    pub fn is_healthy(&self) -> bool {
        let worker = self.worker.status();
        worker.state == ProcessState::Running
            && self.providers.launcher_summary().state == ProcessState::Running
    }

    pub fn inventory(&self) -> Inventory {
        let worker = self.worker.status();
        Inventory {
            host_id: self.key.public_key(),
            uptime_secs: self.started.elapsed().as_secs(),
            processes: vec![
                ProcessSummary {
                    name: "actor-runtime".into(),
                    pid: worker.pid,
                    restarts: worker.restarts,
                    state: worker.state,
                },
                self.providers.launcher_summary(),
            ],
            providers: self.providers.summaries(),
            actors: self
                .read_actors()
                .values()
                .map(|r| r.summary.clone())
                .collect(),
        }
    }

    fn record(&self, verified: &VerifiedActor, wasm: Vec<u8>, count: u32) -> ActorRecord {
        let meta = &verified.metadata;
        ActorRecord {
            summary: ActorSummary {
                key: verified.key().to_owned(),
                name: meta.name.clone().unwrap_or_else(|| "Anonymous".into()),
                kind: if verified.is_component {
                    ActorKind::Component
                } else {
                    ActorKind::Module
                },
                issuer: verified.claims.issuer.clone(),
                rev: meta.rev,
                ver: meta.ver.clone(),
                call_alias: meta.call_alias.clone(),
                caps: verified.caps(),
                count,
            },
            spec: ActorSpec {
                key: verified.key().to_owned(),
                hash: claims::content_hash(&wasm),
                wasm: Bytes::from(wasm),
                caps: verified.caps(),
                instances: count,
            },
        }
    }

    fn has_actor(&self, key: &str) -> bool {
        self.read_actors().contains_key(key)
    }

    /// The key of the actor with this key or call alias.
    fn resolve_actor(&self, target: &str) -> Option<String> {
        let actors = self.read_actors();
        if actors.contains_key(target) {
            return Some(target.to_owned());
        }
        actors
            .values()
            .find(|r| r.summary.call_alias.as_deref() == Some(target))
            .map(|r| r.summary.key.clone())
    }

    fn read_actors(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ActorRecord>> {
        self.actors.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_actors(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ActorRecord>> {
        self.actors.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn not_running(key: &str) -> CallError {
    CallError::not_found(format!("no actor {key} is running on this host"))
}

fn looks_like_actor(namespace: &str) -> bool {
    namespace.len() == 56 && namespace.starts_with('M')
}

/// Resolves once the shutdown flag is set (or its sender is gone). Returns
/// nothing, so no watch guard is held across an await by `select!`.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
