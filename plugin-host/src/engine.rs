//! Every wasmtime policy decision, in one commented module.
//!
//! * One [`Engine`] per gateway process, shared by every snapshot, so a
//!   module compiled for one snapshot can be reused by the next.
//! * **Pooling allocator**: instance slots (memories, tables, fiber stacks)
//!   are reserved once at start and recycled, and linear memories are
//!   initialised copy-on-write from the module's image. Creating an instance
//!   is then a few microseconds, which is what makes both the instance pool
//!   and `isolation = "request"` cheap. `[runtime] max_instances` sizes it.
//! * **CPU deadline by epoch interruption**: a dedicated OS thread bumps the
//!   engine epoch every [`EPOCH_TICK`]; each plugin call sets its deadline in
//!   ticks and traps with `Trap::Interrupt` when it passes. The ticker is a
//!   thread, not a tokio task, on purpose: with one runtime worker a task
//!   could never run while that worker is stuck in a guest loop.
//! * **Memory limit** per instance through `StoreLimits` (wrapped in
//!   `store::PeakLimits`, which also records the high-water mark): `memory.grow`
//!   beyond the plugin's `limits.memory` fails (the guest sees an allocation
//!   failure, which for Rust is an abort, i.e. a trap).
//! * **Stack**: wasm stack capped at [`MAX_WASM_STACK`] so runaway recursion
//!   traps cleanly long before the fiber stack is exhausted.
//! * **Async**: guest calls run on fibers (`call_async`), so host imports
//!   that do I/O await without blocking a runtime thread.
//! * **WASI grants nothing**: see `store::sandbox_wasi`.
//! * **Stores** are built in one place, `store`, with these limits and
//!   deadlines; nothing else creates a `wasmtime::Store`.
//! * **Compile cache**: compiled components are kept in `[runtime]
//!   compile_cache` (wasmtime's cache, keyed by a hash of the module bytes
//!   and of every engine setting), so a restart does not compile unchanged
//!   plugins again. The folder is created private (0700): its contents are
//!   native code that is loaded without recompiling.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use weir_config::RuntimeConfig;

/// Granularity of plugin deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Deepest wasm stack a plugin may use.
pub(crate) const MAX_WASM_STACK: usize = 512 << 10;

/// Core instances, memories and tables one plugin component may contain.
/// A Rust `wasm32-wasip2` component has one memory and a handful of core
/// instances (the module plus small shims); these leave ample room.
pub(crate) const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
pub(crate) const MEMORIES_PER_COMPONENT: u32 = 2;
pub(crate) const TABLES_PER_COMPONENT: u32 = 8;

/// Dirty linear memory reset in place when a slot is reused (see
/// `pagemap_scan` below); beyond it, madvise.
const KEEP_RESIDENT: usize = 1 << 20;
/// Likewise for tables and async (fiber) stacks.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
const KEEP_RESIDENT_STACK: usize = 128 << 10;

/// The engine and the ticker that drives its deadlines.
pub(crate) struct PluginEngine {
    engine: Engine,
    max_memory: u64,
}

impl PluginEngine {
    /// Build the engine from `[runtime]` and start the epoch ticker.
    /// `config_dir` anchors a relative `compile_cache` folder.
    pub(crate) fn new(rt: &RuntimeConfig, config_dir: &Path) -> Result<Arc<Self>, EngineError> {
        let mut pool = PoolingAllocationConfig::default();
        let n = rt.max_instances.max(1);
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
            .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
            .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
            // One fiber stack per instance in a call at once.
            .total_stacks(n)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            // The slot size caps what any plugin's `limits.memory` can be.
            .max_memory_size(rt.max_memory as usize)
            // A slot given back (a per-request instance, a trapped one) is
            // reset by finding its dirty pages with PAGEMAP_SCAN (Linux 6.7+;
            // off elsewhere) and rewriting those, up to these sizes, instead
            // of madvise: the next instance in the slot then takes no page
            // faults for them. A fresh instance per request (instantiate,
            // init, one call) went from 35 to 11 µs in `bench/benches`.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .async_stack_keep_resident(KEEP_RESIDENT_STACK);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(MAX_WASM_STACK)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `WEIR_WASM_PROFILER=perfmap`: name the plugins' compiled functions
        // in /tmp/perf-PID.map, so `perf record`/`perf report` see inside
        // the guests (how bench/README.md's plugin profiles were made).
        if std::env::var_os("WEIR_WASM_PROFILER").is_some_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }

        if let Some(dir) = rt.compile_cache.dir(config_dir) {
            match compile_cache(&dir) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "compile cache disabled: {e:#}"),
            }
        }
        let engine = Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;
        spawn_ticker(&engine);
        Ok(Arc::new(Self { engine, max_memory: rt.max_memory }))
    }

    /// The wasmtime engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Largest `limits.memory` a plugin may ask for.
    pub(crate) fn max_memory(&self) -> u64 {
        self.max_memory
    }

    /// Compile a component. CPU-heavy: call from a blocking thread.
    pub(crate) fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        Component::new(&self.engine, bytes)
    }
}

/// Ticks for a deadline, rounded up, at least one.
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    (deadline.as_micros().div_ceil(EPOCH_TICK.as_micros())).max(1) as u64
}

/// The engine could not be created from `[runtime]`.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the plugin engine: {0}")]
pub struct EngineError(String);

impl EngineError {
    /// weir's imports could not be linked.
    pub(crate) fn link(e: &wasmtime::Error) -> Self {
        Self(format!("cannot link the plugin host: {e:#}"))
    }
}

/// wasmtime's compile cache in `dir`, created private if missing.
fn compile_cache(dir: &Path) -> wasmtime::Result<Cache> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut cfg = CacheConfig::new();
    cfg.with_directory(dir);
    Cache::new(cfg)
}

/// Drive epochs until the engine is dropped.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = thread::Builder::new().name("weir-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(e) = spawned {
        // Without a ticker deadlines never fire: refuse to run half-safe.
        panic!("cannot start the epoch ticker thread: {e}");
    }
}
