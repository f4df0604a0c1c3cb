//! The actors this worker runs: versions of compiled code, pools of idle
//! instances, and how many may run at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wire::worker::{ActorSpec, WorkerConfig};
use wire::{CallError, CallResult};

use crate::engine::{self, DiskCache};
use crate::host::{ActorCtx, Outbound};
use crate::instance::{self, Code, Instance, Linkers};

/// Shared by every request task of one worker.
pub(crate) struct Runtime {
    engine: Engine,
    linkers: Linkers,
    cache: Option<Arc<DiskCache>>,
    pub(crate) outbound: Arc<Outbound>,
    actors: RwLock<HashMap<String, Arc<RunningActor>>>,
    timeout: Duration,
    max_memory: u64,
    max_instances: u32,
}

/// One version of an actor's code with its own idle instances. Calls hold an
/// `Arc` to the version they started on, so an update never disturbs them;
/// the old version (and its pool) goes away with its last call.
struct Version {
    code: Code,
    ctx: Arc<ActorCtx>,
    idle: Mutex<Vec<Instance>>,
}

struct RunningActor {
    key: String,
    current: RwLock<Arc<Version>>,
    permits: Arc<Semaphore>,
    /// The configured instance count; guarded so concurrent scalings apply
    /// their differences one at a time.
    instances: Mutex<u32>,
    /// Mirror of `instances` for the hot path (idle pool bound).
    pool_cap: AtomicU32,
}

fn not_running(key: &str) -> CallError {
    CallError::unavailable(format!("actor {key} is not running on this worker"))
}

impl Runtime {
    pub(crate) fn new(cfg: &WorkerConfig, outbound: Arc<Outbound>) -> wasmtime::Result<Self> {
        let engine = engine::build_engine(cfg)?;
        let linkers = Linkers::new(&engine)?;
        let cache = cfg
            .cache_dir
            .as_deref()
            .and_then(|dir| DiskCache::open(dir, &engine))
            .map(Arc::new);
        Ok(Self {
            engine,
            linkers,
            cache,
            outbound,
            actors: RwLock::new(HashMap::new()),
            timeout: Duration::from_millis(cfg.invocation_timeout_ms),
            max_memory: cfg.max_memory_bytes,
            max_instances: cfg.max_instances.max(1),
        })
    }

    fn get(&self, key: &str) -> Option<Arc<RunningActor>> {
        self.actors.read().get(key).cloned()
    }

    /// Compiles on a blocking thread so the request loop and other calls go on.
    async fn prepare(&self, spec: ActorSpec) -> CallResult<Arc<Version>> {
        let ActorSpec {
            key,
            wasm,
            hash,
            caps,
            ..
        } = spec;
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            engine::load_or_compile(&engine, cache.as_deref(), &hash, &wasm)
        })
        .await
        .map_err(|e| CallError::internal(format!("actor {key}: compilation did not finish: {e}")))?
        .map_err(|e| CallError::actor_fault(format!("actor {key} {e}")))?;
        let code = self
            .linkers
            .prepare(compiled)
            .map_err(|e| CallError::actor_fault(format!("actor {key} {e}")))?;
        Ok(Arc::new(Version {
            code,
            ctx: Arc::new(ActorCtx::new(key, caps, self.outbound.clone())),
            idle: Mutex::new(Vec::new()),
        }))
    }

    fn clamp(&self, instances: u32) -> u32 {
        instances.clamp(1, self.max_instances)
    }

    /// Starting an actor that already runs replaces its code, like an update.
    pub(crate) async fn start(&self, spec: ActorSpec) -> CallResult<()> {
        let key = spec.key.clone();
        let instances = self.clamp(spec.instances);
        let version = self.prepare(spec).await?;
        let existing = {
            let mut actors = self.actors.write();
            match actors.get(&key) {
                Some(a) => Some(a.clone()),
                None => {
                    actors.insert(
                        key.clone(),
                        Arc::new(RunningActor {
                            key: key.clone(),
                            current: RwLock::new(version.clone()),
                            permits: Arc::new(Semaphore::new(instances as usize)),
                            instances: Mutex::new(instances),
                            pool_cap: AtomicU32::new(instances),
                        }),
                    );
                    None
                }
            }
        };
        if let Some(actor) = existing {
            actor.swap(version);
            actor.scale(instances);
        }
        tracing::info!(actor = %key, instances, "actor started");
        Ok(())
    }

    pub(crate) async fn update(&self, spec: ActorSpec) -> CallResult<()> {
        let key = spec.key.clone();
        if self.get(&key).is_none() {
            return Err(not_running(&key));
        }
        let instances = spec.instances;
        let version = self.prepare(spec).await?;
        // Looked up again: the actor may have been stopped while compiling.
        let actor = self.get(&key).ok_or_else(|| not_running(&key))?;
        actor.swap(version);
        if instances > 0 {
            actor.scale(self.clamp(instances));
        }
        tracing::info!(actor = %key, "actor updated");
        Ok(())
    }

    pub(crate) fn scale(&self, key: &str, instances: u32) -> CallResult<()> {
        if instances == 0 {
            return Err(CallError::internal(format!(
                "actor {key}: cannot scale to 0 instances; stop the actor instead"
            )));
        }
        let actor = self.get(key).ok_or_else(|| not_running(key))?;
        actor.scale(self.clamp(instances));
        Ok(())
    }

    pub(crate) fn stop(&self, key: &str) -> CallResult<()> {
        let removed = self.actors.write().remove(key);
        let actor = removed.ok_or_else(|| not_running(key))?;
        // Calls still queued for a permit fail; running ones finish.
        actor.permits.close();
        tracing::info!(actor = %key, "actor stopped");
        Ok(())
    }

    /// A provider of `contract` may call the actor `key` when the actor's
    /// caps name that contract, as `host-core` requires on the host path.
    pub(crate) fn check_provider_call(
        &self,
        key: &str,
        contract: &str,
        provider: &str,
    ) -> CallResult<()> {
        let actor = self.get(key).ok_or_else(|| not_running(key))?;
        let current = actor.current.read().clone();
        if current.ctx.has_cap(contract) {
            Ok(())
        } else {
            Err(CallError::denied(format!(
                "actor {key} does not accept calls from {contract} (provider {provider}): the contract is not in its claims' caps"
            )))
        }
    }

    pub(crate) async fn invoke(
        &self,
        key: &str,
        operation: String,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> CallResult<Vec<u8>> {
        // The deadline counts from the call's arrival: time spent waiting
        // for an instance is part of it.
        let timeout = timeout.map_or(self.timeout, |t| t.min(self.timeout));
        let timeout_ms = timeout.as_millis() as u64;
        let deadline = Instant::now() + timeout;
        let actor = self.get(key).ok_or_else(|| not_running(key))?;
        let permit =
            tokio::time::timeout_at(deadline.into(), actor.permits.clone().acquire_owned());
        let _permit = match permit.await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(not_running(key)),
            Err(_) => {
                return Err(CallError::timeout(format!(
                "actor {key} exceeded its deadline of {timeout_ms} ms waiting for a free instance"
            )))
            }
        };
        // Taken after the permit: a call that waited sees the newest code.
        let version = actor.current.read().clone();
        let max_memory = usize::try_from(self.max_memory).unwrap_or(usize::MAX);
        let idle = version.idle.lock().pop();
        // The epoch deadline stops a guest that computes; this timeout also
        // covers time spent awaiting host calls, where no epoch ticks count.
        let run = async {
            let mut instance = match idle {
                Some(i) => i,
                None => {
                    version
                        .code
                        .instantiate(version.ctx.clone(), max_memory, deadline)
                        .await?
                }
            };
            let result = instance.call(operation, payload, deadline).await?;
            Ok::<_, instance::Fault>((instance, result))
        };
        match tokio::time::timeout_at(deadline.into(), run).await {
            Err(_) => Err(CallError::timeout(format!(
                "actor {key} exceeded its deadline of {timeout_ms} ms"
            ))),
            Ok(Err(fault)) => {
                // The instance (if any) is dropped here, never reused.
                let err = instance::describe(key, &fault, timeout_ms, self.max_memory);
                tracing::debug!(actor = %key, "invocation failed: {:?}", fault.error);
                Err(err)
            }
            Ok(Ok((instance, result))) => {
                let mut idle = version.idle.lock();
                if idle.len() < actor.pool_cap.load(Ordering::Relaxed) as usize {
                    idle.push(instance);
                }
                result
            }
        }
    }
}

impl RunningActor {
    fn swap(&self, version: Arc<Version>) {
        *self.current.write() = version;
    }

    fn scale(&self, target: u32) {
        let mut current = self.instances.lock();
        let old = *current;
        *current = target;
        self.pool_cap.store(target, Ordering::Relaxed);
        if target > old {
            self.permits.add_permits((target - old) as usize);
        } else if target < old {
            let surplus = (old - target) as usize;
            let forgotten = self.permits.forget_permits(surplus);
            if forgotten < surplus {
                // The rest are in use: retire them as their calls finish.
                let permits = self.permits.clone();
                let missing = (surplus - forgotten) as u32;
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(missing).await {
                        p.forget();
                    }
                });
            }
            let version = self.current.read().clone();
            version.idle.lock().truncate(target as usize);
        }
        tracing::info!(actor = %self.key, instances = target, "actor scaled");
    }
}
