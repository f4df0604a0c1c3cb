//! Component actors: the `wasmhost:actor/actor` world plus WASI preview 2
//! with nothing granted.

use wasmtime::component::{HasSelf, Linker};

use crate::instance::State;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "actor",
        imports: { default: async },
        exports: { default: async },
    });
}

pub(crate) use bindings::{Actor, ActorPre};

impl bindings::wasmhost::actor::host::Host for State {
    /// Same routing as the wasmbus `__host_call`.
    async fn call(
        &mut self,
        binding: String,
        namespace: String,
        operation: String,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let ctx = self.ctx.clone();
        ctx.call(binding, namespace, operation, payload, self.deadline)
            .await
            .map_err(|e| e.message)
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Actor::add_to_linker::<State, HasSelf<State>>(linker, |s| s)
}
