//! One live instance of an actor (its own store) and how an invocation runs
//! in it, for both core modules and components.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{
    Engine, InstancePre, Linker, ResourceLimiter, Store, Trap, TypedFunc, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtxBuilder, WasiCtxView, WasiView};

use crate::component::{self, Actor, ActorPre};
use crate::engine::Compiled;
use crate::host::ActorCtx;
use crate::wasmbus::{self, Exchange};
use wire::{CallError, CallResult};

/// The deadline of an invocation passed while the guest was running.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
pub(crate) struct DeadlineExceeded;

/// Largest table a guest may grow to, like the pooling allocator's default.
const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Caps linear memory. A refused growth is remembered so that the failure it
/// usually ends in (an allocator abort, i.e. a trap) is reported as what it is.
pub(crate) struct Limiter {
    max_memory: usize,
    pub(crate) memory_exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Store data, for modules and components alike.
pub(crate) struct State {
    pub(crate) ctx: Arc<ActorCtx>,
    pub(crate) abi: Exchange,
    pub(crate) limits: Limiter,
    /// Nothing granted: no preopens, no env, no args; stdio goes nowhere.
    wasi: WasiP1Ctx,
    /// When the running invocation must end; host calls get what is left.
    pub(crate) deadline: Instant,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

/// Linkers are built once per engine and shared by every actor.
pub(crate) struct Linkers {
    module: Linker<State>,
    component: wasmtime::component::Linker<State>,
}

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> wasmtime::Result<Self> {
        let mut module = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module, |s: &mut State| &mut s.wasi)?;
        wasmbus::add_to_linker(&mut module)?;
        let mut component = wasmtime::component::Linker::new(engine);
        component::add_to_linker(&mut component)?;
        Ok(Self { module, component })
    }

    /// Resolves imports once per actor version, so instantiating is cheap.
    pub(crate) fn prepare(&self, compiled: Compiled) -> Result<Code, String> {
        match compiled {
            Compiled::Module(module) => {
                let has_entry = module.exports().any(|e| {
                    e.name() == "__guest_call"
                        && e.ty().func().is_some_and(|f| {
                            f.params().len() == 2
                                && f.params().all(|p| p.is_i32())
                                && f.results().len() == 1
                                && f.results().all(|r| r.is_i32())
                        })
                });
                if !has_entry {
                    return Err(
                        "is not a wasmbus actor: it exports no `__guest_call(i32, i32) -> i32`"
                            .into(),
                    );
                }
                let pre = self
                    .module
                    .instantiate_pre(&module)
                    .map_err(|e| format!("cannot be linked: {}", crate::one_line(&e)))?;
                Ok(Code::Module(pre))
            }
            Compiled::Component(c) => {
                let pre = self
                    .component
                    .instantiate_pre(&c)
                    .and_then(ActorPre::new)
                    .map_err(|e| format!("cannot be linked: {}", crate::one_line(&e)))?;
                Ok(Code::Component(pre))
            }
        }
    }
}

/// An actor version, compiled and linked.
pub(crate) enum Code {
    Module(InstancePre<State>),
    Component(ActorPre<State>),
}

enum Entry {
    Module(TypedFunc<(i32, i32), i32>),
    Component(Actor),
}

pub(crate) struct Instance {
    store: Store<State>,
    entry: Entry,
}

/// What a failed instantiation or call leaves: the error, and whether the
/// guest had hit its memory cap.
pub(crate) struct Fault {
    pub(crate) error: wasmtime::Error,
    pub(crate) memory_exceeded: bool,
}

impl Code {
    pub(crate) async fn instantiate(
        &self,
        ctx: Arc<ActorCtx>,
        max_memory: usize,
        deadline: Instant,
    ) -> Result<Instance, Fault> {
        let engine = match self {
            Code::Module(pre) => pre.module().engine(),
            Code::Component(pre) => pre.engine(),
        };
        let mut store = Store::new(
            engine,
            State {
                ctx,
                abi: Exchange::default(),
                limits: Limiter {
                    max_memory,
                    memory_exceeded: false,
                },
                wasi: WasiCtxBuilder::new().build_p1(),
                deadline,
            },
        );
        store.limiter(|s| &mut s.limits);
        // Each tick the guest yields to the tokio scheduler (a busy actor does
        // not hold a thread) until its deadline passes, then it traps.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(DeadlineExceeded.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        match self.instantiate_in(&mut store).await {
            Ok(entry) => Ok(Instance { store, entry }),
            Err(error) => Err(Fault {
                error,
                memory_exceeded: store.data().limits.memory_exceeded,
            }),
        }
    }

    async fn instantiate_in(&self, store: &mut Store<State>) -> wasmtime::Result<Entry> {
        match self {
            Code::Module(pre) => {
                let instance = pre.instantiate_async(&mut *store).await?;
                // A WASI reactor must be initialised before any other export runs.
                if let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
                    init.call_async(&mut *store, ()).await?;
                }
                if let Ok(version) =
                    instance.get_typed_func::<(), i32>(&mut *store, "__wasmbus_rpc_version")
                {
                    let v = version.call_async(&mut *store, ()).await?;
                    tracing::trace!(actor = %store.data().ctx.key, "wasmbus rpc version {v}");
                }
                let guest_call =
                    instance.get_typed_func::<(i32, i32), i32>(&mut *store, "__guest_call")?;
                Ok(Entry::Module(guest_call))
            }
            Code::Component(pre) => Ok(Entry::Component(pre.instantiate_async(&mut *store).await?)),
        }
    }
}

impl Instance {
    /// Runs one invocation. `Ok(Err(_))` is an error the actor returned
    /// itself (the instance stays usable); `Err(_)` is a trap or fault.
    pub(crate) async fn call(
        &mut self,
        operation: String,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<CallResult<Vec<u8>>, Fault> {
        let store = &mut self.store;
        store.data_mut().deadline = deadline;
        store.data_mut().limits.memory_exceeded = false;
        store.set_epoch_deadline(1);
        let result = match &self.entry {
            Entry::Module(guest_call) => call_module(store, guest_call, operation, payload).await,
            Entry::Component(actor) => actor
                .wasmhost_actor_guest()
                .call_call(&mut *store, &operation, &payload)
                .await
                .map(|answer| answer.map_err(CallError::actor_fault)),
        };
        result.map_err(|error| Fault {
            error,
            memory_exceeded: store.data().limits.memory_exceeded,
        })
    }
}

async fn call_module(
    store: &mut Store<State>,
    guest_call: &TypedFunc<(i32, i32), i32>,
    operation: String,
    payload: Vec<u8>,
) -> wasmtime::Result<CallResult<Vec<u8>>> {
    let (Ok(op_len), Ok(msg_len)) = (i32::try_from(operation.len()), i32::try_from(payload.len()))
    else {
        return Ok(Err(CallError::too_large(
            "the message is too large for a wasmbus actor",
        )));
    };
    store.data_mut().abi.request = Some((operation, payload));
    let outcome = guest_call.call_async(&mut *store, (op_len, msg_len)).await;
    let abi = &mut store.data_mut().abi;
    let response = abi.response.take();
    let error = abi.error.take();
    abi.reset();
    Ok(if outcome? == 1 {
        Ok(response.unwrap_or_default())
    } else {
        Err(CallError::actor_fault(error.unwrap_or_else(|| {
            "the actor failed without an error message".into()
        })))
    })
}

/// A one-line description of why an invocation failed.
pub(crate) fn describe(key: &str, fault: &Fault, timeout_ms: u64, max_memory: u64) -> CallError {
    let err = &fault.error;
    if err.is::<DeadlineExceeded>() {
        return CallError::timeout(format!(
            "actor {key} exceeded its deadline of {timeout_ms} ms"
        ));
    }
    CallError::actor_fault(if fault.memory_exceeded {
        format!("actor {key} exceeded its memory limit of {max_memory} bytes")
    } else if let Some(trap) = err.downcast_ref::<Trap>() {
        let text = trap.to_string();
        let text = text.strip_prefix("wasm trap: ").unwrap_or(&text);
        format!("actor {key} trapped: {text}")
    } else if let Some(v) = err.downcast_ref::<wasmbus::AbiViolation>() {
        format!("actor {key} broke the wasmbus ABI: {v}")
    } else {
        format!("actor {key} failed: {}", crate::one_line(err))
    })
}
