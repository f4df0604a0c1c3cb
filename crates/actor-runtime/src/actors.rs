//! The actors this worker runs: versions of compiled code, pools of idle
//! instances, how many may run at once and how many may wait.
//!
//! Every actor draws its instances from the worker's shared [`Slots`], and
//! none can keep the others out:
//!
//! - an actor runs at most `max_instances - (other actors)` instances at
//!   once, whatever its count, so each of the others always has a slot;
//! - when a new instance is needed and every slot is taken, the least
//!   recently used idle instance of another actor is dropped; with none
//!   idle the call waits (within its deadline) for a slot, and while it
//!   waits instances that finish are dropped instead of kept idle;
//! - at most `max_queued_calls` calls of one actor wait for an instance;
//!   more are answered "busy" at once.
//!
//! None of this costs anything while the pool has room and the actor an
//! instance free: one atomic operation takes the permit, as before.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};
use wasmtime::Engine;
use wire::worker::{ActorSpec, WorkerConfig};
use wire::{CallError, CallResult};

use crate::engine::{self, DiskCache};
use crate::host::{ActorCtx, Outbound};
use crate::instance::{self, Code, Instance, Linkers};
use crate::slots::{Slot, Slots};

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
    max_queued: u32,
    slots: Arc<Slots>,
}

/// One version of an actor's code with its own idle instances. Calls hold an
/// `Arc` to the version they started on, so an update never disturbs them;
/// the old version (and its pool) goes away with its last call.
struct Version {
    code: Code,
    ctx: Arc<ActorCtx>,
    /// Idle instances, least recently used first, each with the arrival
    /// of the last call it served.
    idle: Mutex<VecDeque<(Instant, Live)>>,
}

/// An instance and the slot it holds. The instance is dropped first
/// (fields drop in order), so its room in the pool is free before the slot
/// says so.
struct Live {
    instance: Instance,
    _slot: Slot,
}

struct RunningActor {
    key: String,
    current: RwLock<Arc<Version>>,
    permits: Arc<Semaphore>,
    /// Guarded so that concurrent changes apply their differences to
    /// `permits` one at a time.
    instances: Mutex<Instances>,
    /// Mirror of `Instances::effective` for the hot path: the idle pool's
    /// bound.
    pool_cap: AtomicU32,
    /// Calls waiting for a permit now; bounded by `max_queued_calls`.
    queued: AtomicU32,
}

/// How many instances of an actor may run at once.
#[derive(Debug, Clone, Copy)]
struct Instances {
    /// As configured (start, scale, update).
    count: u32,
    /// Its share of the worker's slots (see [`Runtime::rebalance`]).
    share: u32,
    /// `min(count, share)`: the permits the actor has.
    effective: u32,
}

impl Instances {
    fn new(count: u32, share: u32) -> Self {
        Self {
            count,
            share,
            effective: count.min(share),
        }
    }
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
            max_queued: cfg.max_queued_calls,
            slots: Slots::new(cfg.max_instances),
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
            idle: Mutex::new(VecDeque::new()),
        }))
    }

    fn clamp(&self, instances: u32) -> u32 {
        instances.clamp(1, self.max_instances)
    }

    /// One actor's share of the slots when `actors` run: all but one for
    /// each of the others, and at least one.
    fn share(&self, actors: usize) -> u32 {
        let others = u32::try_from(actors.saturating_sub(1)).unwrap_or(u32::MAX);
        self.max_instances.saturating_sub(others).max(1)
    }

    /// Holds every actor to its share after actors came or went. Under the
    /// map's lock, so each pass sees the set it applies.
    fn rebalance(&self) {
        let actors = self.actors.read();
        let share = self.share(actors.len());
        for actor in actors.values() {
            actor.change(|i| i.share = share);
        }
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
                    let counts = Instances::new(instances, self.share(actors.len() + 1));
                    actors.insert(
                        key.clone(),
                        Arc::new(RunningActor {
                            key: key.clone(),
                            current: RwLock::new(version.clone()),
                            permits: Arc::new(Semaphore::new(counts.effective as usize)),
                            instances: Mutex::new(counts),
                            pool_cap: AtomicU32::new(counts.effective),
                            queued: AtomicU32::new(0),
                        }),
                    );
                    None
                }
            }
        };
        match existing {
            Some(actor) => {
                actor.swap(version);
                actor.scale(instances);
            }
            // One more actor: the others' shares shrink by one.
            None => self.rebalance(),
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
        self.rebalance();
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
        // Not running here is `NotFound`: the call then goes to the host.
        let actor = self.get(key).ok_or_else(|| {
            CallError::not_found(format!("actor {key} is not running on this worker"))
        })?;
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
        let arrived = Instant::now();
        let deadline = arrived + timeout;
        let actor = self.get(key).ok_or_else(|| not_running(key))?;
        let _permit = match actor.permits.try_acquire() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(not_running(key)),
            Err(TryAcquireError::NoPermits) => self.queue(&actor, deadline, timeout_ms).await?,
        };
        // Taken after the permit: a call that waited sees the newest code.
        let version = actor.current.read().clone();
        let max_memory = usize::try_from(self.max_memory).unwrap_or(usize::MAX);
        let idle = version.idle.lock().pop_back();
        // The epoch deadline stops a guest that computes; this timeout also
        // covers time spent awaiting host calls, where no epoch ticks count,
        // and waiting for a slot in the pool.
        let run = async {
            let mut live = match idle {
                Some((_, live)) => live,
                None => {
                    self.instantiate(key, &version, max_memory, deadline)
                        .await?
                }
            };
            let result = live.instance.call(operation, payload, deadline).await?;
            Ok::<_, instance::Fault>((live, result))
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
            Ok(Ok((live, result))) => {
                self.keep(&actor, &version, arrived, live);
                result
            }
        }
    }

    /// Waits for a permit of `actor`, if fewer than `max_queued_calls`
    /// calls wait already (else the call is busy), until `deadline`. A call
    /// given up while it waits (its deadline, a cancellation) leaves the
    /// queue, and one whose deadline passed by the time its permit came
    /// never starts.
    async fn queue<'a>(
        &self,
        actor: &'a RunningActor,
        deadline: Instant,
        timeout_ms: u64,
    ) -> CallResult<SemaphorePermit<'a>> {
        let key = &actor.key;
        let queued = Queued::join(&actor.queued);
        if queued.ahead >= self.max_queued {
            return Err(CallError::busy(format!(
                "actor {key} is busy: {} calls are waiting for its {} instances",
                queued.ahead,
                actor.pool_cap.load(Ordering::Relaxed)
            )));
        }
        let waited = tokio::time::timeout_at(deadline.into(), actor.permits.acquire()).await;
        let late = || {
            CallError::timeout(format!(
                "actor {key} exceeded its deadline of {timeout_ms} ms waiting for a free instance"
            ))
        };
        match waited {
            // The permit may come as the deadline passes, or this task may
            // run only later on a busy worker: too late to start either way.
            Ok(Ok(_)) if Instant::now() >= deadline => Err(late()),
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(not_running(key)),
            Err(_) => Err(late()),
        }
    }

    /// A new instance of `version`, in a slot of the pool: a free one, else
    /// one given back by evicting another actor's idle instance, else the
    /// next one given back. Bounded by the caller's deadline.
    async fn instantiate(
        &self,
        key: &str,
        version: &Version,
        max_memory: usize,
        deadline: Instant,
    ) -> Result<Live, instance::Fault> {
        loop {
            let Some(slot) = self.slots.try_take() else {
                if !self.evict_idle(key) {
                    self.slots.wait(|| self.slots.has_room()).await;
                }
                continue;
            };
            match version
                .code
                .instantiate(version.ctx.clone(), max_memory, deadline)
                .await
            {
                Ok(instance) => {
                    return Ok(Live {
                        instance,
                        _slot: slot,
                    })
                }
                // One of wasmtime's own pools (core instances, memories,
                // tables) ran out before the count of slots did: make room
                // the same way, and try again.
                Err(fault) if fault.error.is::<wasmtime::PoolConcurrencyLimitError>() => {
                    drop(slot);
                    tracing::debug!(actor = %key, "the instance pool is full: {:#}", fault.error);
                    if !self.evict_idle(key) {
                        self.slots.wait(|| false).await;
                    }
                }
                Err(fault) => return Err(fault),
            }
        }
    }

    /// Drops the least recently used idle instance of an actor other than
    /// `except`; false if no other actor has one.
    fn evict_idle(&self, except: &str) -> bool {
        let mut oldest: Option<(Instant, Arc<Version>)> = None;
        for (key, actor) in self.actors.read().iter() {
            if key == except {
                continue;
            }
            let version = actor.current.read().clone();
            let used = version.idle.lock().front().map(|(used, _)| *used);
            if let Some(used) = used {
                if oldest.as_ref().is_none_or(|(t, _)| used < *t) {
                    oldest = Some((used, version));
                }
            }
        }
        let Some((_, version)) = oldest else {
            return false;
        };
        // Dropped outside the lock; its slot is free then.
        let evicted = version.idle.lock().pop_front();
        evicted.is_some()
    }

    /// Keeps an instance that served a call (which arrived at `used`) for
    /// the next one, unless the pool holds as many as may run, or calls
    /// wait for room in the worker's pool: then its slot is given back.
    fn keep(&self, actor: &RunningActor, version: &Version, used: Instant, live: Live) {
        let surplus = {
            let mut idle = version.idle.lock();
            if self.slots.under_pressure()
                || idle.len() >= actor.pool_cap.load(Ordering::Relaxed) as usize
            {
                Some(live)
            } else {
                idle.push_back((used, live));
                None
            }
        };
        drop(surplus);
    }
}

/// One call waiting for a permit; it leaves the count when dropped, however
/// its wait ends (permit, deadline, busy, cancellation).
struct Queued<'a> {
    count: &'a AtomicU32,
    /// How many were waiting before it.
    ahead: u32,
}

impl<'a> Queued<'a> {
    fn join(count: &'a AtomicU32) -> Self {
        let ahead = count.fetch_add(1, Ordering::Relaxed);
        Self { count, ahead }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RunningActor {
    fn swap(&self, version: Arc<Version>) {
        *self.current.write() = version;
    }

    fn scale(&self, target: u32) {
        self.change(|i| i.count = target);
        tracing::info!(actor = %self.key, instances = target, "actor scaled");
    }

    /// Applies a change of count or share: the permits follow the new
    /// `min(count, share)`, and surplus idle instances are dropped.
    fn change(&self, f: impl FnOnce(&mut Instances)) {
        let mut instances = self.instances.lock();
        let old = instances.effective;
        f(&mut instances);
        let target = instances.count.min(instances.share);
        instances.effective = target;
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
            let dropped: Vec<_> = {
                let mut idle = version.idle.lock();
                let extra = idle.len().saturating_sub(target as usize);
                idle.drain(..extra).collect()
            };
            drop(dropped);
        }
        if target != old {
            tracing::debug!(actor = %self.key, instances = target, count = instances.count, share = instances.share, "instances that may run at once");
        }
    }
}
