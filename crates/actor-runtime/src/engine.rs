//! The wasmtime engine (one per worker), its epoch ticker, and compiling
//! actors with an on-disk cache of precompiled artifacts.

use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};
use wire::worker::WorkerConfig;

/// How often the epoch advances: the granularity of deadlines, and how often
/// a busy guest yields its thread to other tasks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How linear memories sit in the address space, which decides whether
/// compiled code checks the bounds of every load and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryLayout {
    /// Each memory reserves all that a 32-bit index can reach, plus a guard
    /// region for the access's static offset, so an access out of bounds
    /// faults in the reservation and the code checks nothing (the wasmtime
    /// default). Under HTTP load (12 alternating runs against the compact
    /// layout) req/s was higher in 10, and the worker's CPU per request went
    /// from 14.0 to 13.5 us. See BENCHMARKS.md.
    Unchecked,
    /// Each memory reserves only its cap and a small guard; every access is
    /// bounds-checked. For when the pools would not fit the address space,
    /// or the cap is above 4 GiB.
    Compact,
}

const UNCHECKED_RESERVATION: u64 = 1 << 32;
const UNCHECKED_GUARD: u64 = 32 << 20;
/// The most the unchecked pools may reserve: a quarter of the 128 TiB user
/// address space of x86-64 (and of aarch64 with 48-bit addresses). 1,000
/// instances need 8 TiB. A smaller address space makes the reservation fail,
/// and the worker falls back then.
const UNCHECKED_ADDRESS_SPACE: u64 = 32 << 40;
/// Guard pages after each compact memory: small, because its accesses are
/// all checked.
const COMPACT_GUARD: u64 = 2 * 1024 * 1024;
const WASM_PAGE: u64 = 64 * 1024;

/// Components built by `wasm-component-ld` (Rust `wasm32-wasip2`) hold the
/// program, the WASI adapter and a few shim modules: several core instances,
/// up to two memories and a few tables each. Pools are sized for that.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// The unchecked layout when its pools fit, else (or if reserving them
/// fails, say under `ulimit -v`) the compact one.
pub(crate) fn build_engine(cfg: &WorkerConfig) -> wasmtime::Result<Engine> {
    let engine = if preferred_layout(cfg) == MemoryLayout::Compact {
        tracing::info!(
            max_instances = cfg.max_instances,
            max_memory_bytes = cfg.max_memory_bytes,
            "memories are not given 4 GiB each (too many instances, or a cap above 4 GiB): wasm memory accesses are bounds-checked"
        );
        engine_with(cfg, MemoryLayout::Compact)?
    } else {
        match engine_with(cfg, MemoryLayout::Unchecked) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(
                    "cannot reserve 4 GiB per memory ({e:#}): wasm memory accesses are bounds-checked"
                );
                engine_with(cfg, MemoryLayout::Compact)?
            }
        }
    };
    spawn_epoch_ticker(&engine);
    Ok(engine)
}

fn preferred_layout(cfg: &WorkerConfig) -> MemoryLayout {
    let memories = u64::from(cfg.max_instances.max(1)) * u64::from(MEMORIES_PER_COMPONENT);
    // A memory may not grow past its reservation.
    if cfg.max_memory_bytes > UNCHECKED_RESERVATION
        || memories.saturating_mul(UNCHECKED_RESERVATION + UNCHECKED_GUARD)
            > UNCHECKED_ADDRESS_SPACE
    {
        MemoryLayout::Compact
    } else {
        MemoryLayout::Unchecked
    }
}

/// An engine without its epoch ticker.
fn engine_with(cfg: &WorkerConfig, layout: MemoryLayout) -> wasmtime::Result<Engine> {
    let n = cfg.max_instances.max(1);
    let max_memory = usize::try_from(cfg.max_memory_bytes)
        .map_err(|_| wasmtime::Error::msg("max_memory_bytes does not fit in usize"))?;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(n.saturating_mul(4))
        // One fiber stack per call running at once, and calls run only in instances.
        .total_stacks(n)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(max_memory);

    let (reservation, guard) = match layout {
        MemoryLayout::Unchecked => (UNCHECKED_RESERVATION, UNCHECKED_GUARD),
        // Only what the cap allows, rounded to whole pages.
        MemoryLayout::Compact => (
            cfg.max_memory_bytes.div_ceil(WASM_PAGE) * WASM_PAGE,
            COMPACT_GUARD,
        ),
    };
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .wasm_component_model(true)
        .memory_reservation(reservation)
        .memory_guard_size(guard)
        .memory_reservation_for_growth(0)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// A plain thread, not a tokio task: deadlines must fire even if every
/// runtime thread is busy. It holds only a weak reference and ends with the engine.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        });
    if let Err(e) = spawned {
        // Deadlines still hold through the tokio timeout around each call.
        tracing::error!("could not start the epoch ticker: {e}");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Module,
    Component,
}

/// Core modules and components share the magic; bytes 4..8 are a u16
/// version and a u16 layer, the layer being 0 for modules, 1 for components.
pub(crate) fn detect_kind(wasm: &[u8]) -> Result<Kind, String> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err("not a WebAssembly binary".into());
    }
    match u16::from_le_bytes([wasm[6], wasm[7]]) {
        0 => Ok(Kind::Module),
        1 => Ok(Kind::Component),
        layer => Err(format!("unknown WebAssembly layer {layer}")),
    }
}

pub(crate) enum Compiled {
    Module(Module),
    Component(Component),
}

/// Precompiled artifacts, one file per (wasm hash, engine settings).
pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_tag: String,
}

impl DiskCache {
    /// Creates the directory owner-only. An existing directory must belong to
    /// us and allow nobody else in; otherwise the cache is off, because loading
    /// an artifact means trusting its bytes as machine code.
    pub(crate) fn open(dir: &str, engine: &Engine) -> Option<Self> {
        let dir = PathBuf::from(dir);
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            tracing::warn!(
                "compile cache disabled: cannot create {}: {e}",
                dir.display()
            );
            return None;
        }
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("compile cache disabled: {}: {e}", dir.display());
                return None;
            }
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != uid {
            tracing::warn!(
                "compile cache disabled: {} is not a directory owned by this user",
                dir.display()
            );
            return None;
        }
        if meta.mode() & 0o077 != 0 {
            if let Err(e) = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)) {
                tracing::warn!(
                    "compile cache disabled: cannot restrict {}: {e}",
                    dir.display()
                );
                return None;
            }
        }
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_tag = hex::encode(&hasher.0.finalize()[..16]);
        Some(Self { dir, engine_tag })
    }

    /// `None` for a hash that is not plain hex: it is part of a file name.
    fn path(&self, hash: &str, kind: Kind) -> Option<PathBuf> {
        if hash.is_empty() || hash.len() > 128 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let ext = match kind {
            Kind::Module => "cwasm",
            Kind::Component => "ccwasm",
        };
        Some(self.dir.join(format!(
            "{}-{}.{ext}",
            hash.to_ascii_uppercase(),
            self.engine_tag
        )))
    }

    fn load(&self, engine: &Engine, path: &Path, kind: Kind) -> Option<Compiled> {
        if !path.is_file() {
            return None;
        }
        // Files in this directory are written only by this worker (via
        // `store`, atomically) into a directory that only our user can write,
        // and their names carry the engine's compatibility hash, so the bytes
        // are an artifact this engine produced for this wasm. wasmtime still
        // checks the header and refuses incompatible or malformed files.
        let loaded = match kind {
            Kind::Module => {
                // SAFETY: see above: an owner-only directory written only by
                // this process, keyed by the engine's compatibility hash.
                unsafe { Module::deserialize_file(engine, path) }.map(Compiled::Module)
            }
            Kind::Component => {
                // SAFETY: as for modules just above.
                unsafe { Component::deserialize_file(engine, path) }.map(Compiled::Component)
            }
        };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "ignoring unusable cache file {}: {e}; recompiling",
                    path.display()
                );
                None
            }
        }
    }

    /// Temp file + rename, so a reader never sees half a file. Failure only
    /// costs a recompile next time.
    fn store(&self, path: &Path, bytes: &[u8]) {
        let tmp = self.dir.join(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("could not write cache file {}: {e}", path.display());
        }
    }
}

struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Only `finalize` is used; `Hasher` requires this.
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Loads the precompiled artifact if there is a usable one, else compiles
/// (and caches). CPU-heavy: call from a blocking thread.
pub(crate) fn load_or_compile(
    engine: &Engine,
    cache: Option<&DiskCache>,
    hash: &str,
    wasm: &[u8],
) -> Result<Compiled, String> {
    let kind = detect_kind(wasm)?;
    let path = cache.and_then(|c| c.path(hash, kind).map(|p| (c, p)));
    if let Some((cache, path)) = &path {
        if let Some(compiled) = cache.load(engine, path, kind) {
            tracing::debug!("loaded {} from the compile cache", path.display());
            return Ok(compiled);
        }
    }
    let compiled = match kind {
        Kind::Module => Module::new(engine, wasm).map(Compiled::Module),
        Kind::Component => Component::new(engine, wasm).map(Compiled::Component),
    }
    .map_err(|e| format!("does not compile: {}", crate::one_line(&e)))?;
    if let Some((cache, path)) = &path {
        let bytes = match &compiled {
            Compiled::Module(m) => m.serialize(),
            Compiled::Component(c) => c.serialize(),
        };
        match bytes {
            Ok(bytes) => cache.store(path, &bytes),
            Err(e) => tracing::warn!("could not serialize a compiled actor: {e}"),
        }
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(detect_kind(b"\0asm\x01\0\0\0"), Ok(Kind::Module));
        assert_eq!(detect_kind(b"\0asm\x0d\0\x01\0"), Ok(Kind::Component));
        assert!(detect_kind(b"\0asm").is_err());
        assert!(detect_kind(b"garbage!").is_err());
    }

    fn worker_config(max_instances: u32, max_memory_bytes: u64) -> WorkerConfig {
        WorkerConfig {
            max_memory_bytes,
            invocation_timeout_ms: 1_000,
            cache_dir: None,
            max_instances,
            data_socket: None,
            max_queued_calls: wire::worker::DEFAULT_MAX_QUEUED_CALLS,
        }
    }

    #[test]
    fn too_many_instances_or_too_large_a_cap_is_compact() {
        let layout = |n, cap| preferred_layout(&worker_config(n, cap));
        assert_eq!(layout(1_000, 64 << 20), MemoryLayout::Unchecked);
        assert_eq!(layout(4_000, 64 << 20), MemoryLayout::Unchecked);
        assert_eq!(layout(1_000, 4 << 30), MemoryLayout::Unchecked);
        assert_eq!(layout(5_000, 64 << 20), MemoryLayout::Compact);
        assert_eq!(layout(u32::MAX, 64 << 20), MemoryLayout::Compact);
        assert_eq!(layout(1, (4 << 30) + WASM_PAGE), MemoryLayout::Compact);
    }

    /// Without compiled checks, the reservation and its guard alone must stop
    /// a stray access; both layouts must also hold memory to its cap.
    #[tokio::test]
    async fn both_layouts_confine_memory_accesses() {
        const CAP: u64 = 4 * WASM_PAGE;
        let wasm = wat::parse_str(
            r#"(module
                (memory 1)
                (func (export "load") (param i32) (result i32)
                    (i32.load offset=16 (local.get 0)))
                (func (export "grow") (param i32) (result i32)
                    (memory.grow (local.get 0))))"#,
        )
        .unwrap();
        let cfg = worker_config(2, CAP);
        let mut code_sizes = Vec::new();
        for layout in [MemoryLayout::Unchecked, MemoryLayout::Compact] {
            let engine = engine_with(&cfg, layout).unwrap();
            let module = Module::new(&engine, &wasm).unwrap();
            // The first function is `load`.
            code_sizes.push(module.functions().next().unwrap().len);
            let mut store = wasmtime::Store::new(&engine, ());
            // No ticker advances the epoch here; the deadline is never reached.
            store.set_epoch_deadline(u64::MAX);
            let instance = wasmtime::Instance::new_async(&mut store, &module, &[])
                .await
                .unwrap();
            let load = instance
                .get_typed_func::<i32, i32>(&mut store, "load")
                .unwrap();
            let grow = instance
                .get_typed_func::<i32, i32>(&mut store, "grow")
                .unwrap();
            let last_word = i32::try_from(WASM_PAGE).unwrap() - 20;
            assert_eq!(load.call_async(&mut store, last_word).await.unwrap(), 0);
            for address in [last_word + 1, i32::MAX, -1] {
                let trap = load.call_async(&mut store, address).await.unwrap_err();
                assert_eq!(
                    trap.downcast_ref::<wasmtime::Trap>(),
                    Some(&wasmtime::Trap::MemoryOutOfBounds),
                    "{layout:?}: load at {address}"
                );
            }
            assert_eq!(
                grow.call_async(&mut store, 3).await.unwrap(),
                1,
                "{layout:?}"
            );
            assert_eq!(
                grow.call_async(&mut store, 1).await.unwrap(),
                -1,
                "{layout:?}"
            );
        }
        // The checks are really gone: the unchecked `load` is the shorter.
        assert!(code_sizes[0] < code_sizes[1], "code sizes {code_sizes:?}");
    }
}
