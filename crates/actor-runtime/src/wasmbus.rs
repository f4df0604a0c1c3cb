//! The wasmbus ABI of wasmbus-rpc 0.15 module actors: the `wasmbus` imports,
//! backed by per-invocation state in the store.

use wasmtime::{Caller, Extern, Linker, Memory};
use wire::worker::LogLevel;

use crate::instance::State;

/// A guest broke the ABI (bad pointer, no memory export, call out of turn).
/// Turned into a trap; the instance is then discarded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AbiViolation(pub(crate) &'static str);

/// Per-invocation buffers the guest reads and writes through the imports.
#[derive(Default)]
pub(crate) struct Exchange {
    /// The operation and message of the running invocation.
    pub(crate) request: Option<(String, Vec<u8>)>,
    pub(crate) response: Option<Vec<u8>>,
    pub(crate) error: Option<String>,
    /// The outcome of the guest's last `__host_call`.
    pub(crate) host_response: Option<Vec<u8>>,
    pub(crate) host_error: Option<String>,
}

impl Exchange {
    /// Drops everything an invocation left behind, so nothing from one call
    /// leaks into the next and big buffers are freed.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

fn memory(caller: &mut Caller<'_, State>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(AbiViolation("the actor does not export its memory").into()),
    }
}

fn range(ptr: i32, len: usize) -> wasmtime::Result<std::ops::Range<usize>> {
    // Guest pointers are unsigned 32-bit offsets.
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len)
        .ok_or(AbiViolation("the actor passed an out-of-bounds pointer"))?;
    Ok(start..end)
}

fn read(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller)?;
    let r = range(ptr, len as u32 as usize)?;
    mem.data(&*caller)
        .get(r)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| AbiViolation("the actor passed an out-of-bounds pointer").into())
}

fn read_string(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> wasmtime::Result<String> {
    String::from_utf8(read(caller, ptr, len)?)
        .map_err(|_| AbiViolation("the actor passed a string that is not UTF-8").into())
}

fn write(dst: &mut [u8], ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    dst.get_mut(range(ptr, bytes.len())?)
        .ok_or(AbiViolation("the actor passed an out-of-bounds pointer"))?
        .copy_from_slice(bytes);
    Ok(())
}

/// Lengths handed to the guest are i32 by the ABI.
fn len_i32(len: usize) -> wasmtime::Result<i32> {
    i32::try_from(len).map_err(|_| AbiViolation("a message is too large for the actor").into())
}

pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    const M: &str = "wasmbus";

    linker.func_wrap(
        M,
        "__guest_request",
        |mut caller: Caller<'_, State>, op_ptr: i32, msg_ptr: i32| -> wasmtime::Result<()> {
            let mem = memory(&mut caller)?;
            let (dst, state) = mem.data_and_store_mut(&mut caller);
            let (op, msg) = state
                .abi
                .request
                .as_ref()
                .ok_or(AbiViolation("__guest_request called outside an invocation"))?;
            write(dst, op_ptr, op.as_bytes())?;
            write(dst, msg_ptr, msg)
        },
    )?;

    linker.func_wrap(
        M,
        "__guest_response",
        |mut caller: Caller<'_, State>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read(&mut caller, ptr, len)?;
            caller.data_mut().abi.response = Some(bytes);
            Ok(())
        },
    )?;

    linker.func_wrap(
        M,
        "__guest_error",
        |mut caller: Caller<'_, State>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read(&mut caller, ptr, len)?;
            caller.data_mut().abi.error = Some(String::from_utf8_lossy(&bytes).into_owned());
            Ok(())
        },
    )?;

    linker.func_wrap_async(
        M,
        "__host_call",
        |mut caller: Caller<'_, State>,
         (bd_ptr, bd_len, ns_ptr, ns_len, op_ptr, op_len, ptr, len): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
        )| {
            Box::new(async move {
                let binding = read_string(&mut caller, bd_ptr, bd_len)?;
                let namespace = read_string(&mut caller, ns_ptr, ns_len)?;
                let operation = read_string(&mut caller, op_ptr, op_len)?;
                let payload = read(&mut caller, ptr, len)?;
                let ctx = caller.data().ctx.clone();
                let deadline = caller.data().deadline;
                let result = ctx
                    .call(binding, namespace, operation, payload, deadline)
                    .await;
                let abi = &mut caller.data_mut().abi;
                Ok(match result {
                    Ok(bytes) => {
                        abi.host_response = Some(bytes);
                        abi.host_error = None;
                        1i32
                    }
                    Err(e) => {
                        abi.host_response = None;
                        abi.host_error = Some(e.message);
                        0i32
                    }
                })
            })
        },
    )?;

    linker.func_wrap(
        M,
        "__host_response_len",
        |caller: Caller<'_, State>| -> wasmtime::Result<i32> {
            len_i32(caller.data().abi.host_response.as_ref().map_or(0, Vec::len))
        },
    )?;

    linker.func_wrap(
        M,
        "__host_response",
        |mut caller: Caller<'_, State>, ptr: i32| -> wasmtime::Result<()> {
            let mem = memory(&mut caller)?;
            let (dst, state) = mem.data_and_store_mut(&mut caller);
            match &state.abi.host_response {
                Some(bytes) => write(dst, ptr, bytes),
                None => Ok(()),
            }
        },
    )?;

    linker.func_wrap(
        M,
        "__host_error_len",
        |caller: Caller<'_, State>| -> wasmtime::Result<i32> {
            len_i32(caller.data().abi.host_error.as_ref().map_or(0, String::len))
        },
    )?;

    linker.func_wrap(
        M,
        "__host_error",
        |mut caller: Caller<'_, State>, ptr: i32| -> wasmtime::Result<()> {
            let mem = memory(&mut caller)?;
            let (dst, state) = mem.data_and_store_mut(&mut caller);
            match &state.abi.host_error {
                Some(e) => write(dst, ptr, e.as_bytes()),
                None => Ok(()),
            }
        },
    )?;

    linker.func_wrap_async(
        M,
        "__console_log",
        |mut caller: Caller<'_, State>, (ptr, len): (i32, i32)| {
            Box::new(async move {
                // Cut in place: only what is kept leaves the guest's memory.
                let mem = memory(&mut caller)?;
                let text = mem
                    .data(&caller)
                    .get(range(ptr, len as u32 as usize)?)
                    .map(crate::host::log_line)
                    .ok_or(AbiViolation("the actor passed an out-of-bounds pointer"))?;
                let ctx = caller.data().ctx.clone();
                ctx.outbound.log(&ctx.key, LogLevel::Info, text).await;
                Ok(())
            })
        },
    )?;

    Ok(())
}
