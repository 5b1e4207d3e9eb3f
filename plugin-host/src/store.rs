//! One `Store` per plugin instance, built here and nowhere else: the
//! memory limiter, the epoch deadline, the empty WASI sandbox, and the
//! mapping of what a guest call ended with to a [`PluginFailure`].

use std::time::Duration;

use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::engine::{
    CORE_INSTANCES_PER_COMPONENT, MEMORIES_PER_COMPONENT, PluginEngine, TABLES_PER_COMPONENT, deadline_ticks,
};

/// Store data that carries its instance's limits.
pub(crate) trait Limited: Send + 'static {
    /// The limits the store's limiter enforces.
    fn limits(&mut self) -> &mut PeakLimits;

    /// The guest called a host function (any import, WASI's included).
    fn host_call(&mut self) {}
}

/// A store for one instance, limited by its data's [`PeakLimits`], whose
/// first deadline is the one for `init` (see [`init_deadline`]).
pub(crate) fn new_store<T: Limited>(engine: &PluginEngine, data: T, call_deadline: Duration) -> Store<T> {
    let mut store = Store::new(engine.engine(), data);
    store.limiter(|d| d.limits());
    // Host calls counted per phase call (`weir_plugin_host_calls_total`),
    // when asked for: the hook runs on every crossing (about 1% of a
    // plugin route's CPU), so it is for profiling, not always on.
    if count_host_calls() {
        store.call_hook(|mut cx, hook| {
            if matches!(hook, wasmtime::CallHook::CallingHost) {
                cx.data_mut().host_call();
            }
            Ok(())
        });
    }
    store.epoch_deadline_trap();
    store.set_epoch_deadline(deadline_ticks(init_deadline(call_deadline)));
    store
}

/// `WEIR_COUNT_HOST_CALLS=1`: count plugins' host calls (read once).
fn count_host_calls() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("WEIR_COUNT_HOST_CALLS").is_some_and(|v| v == "1"))
}

/// Deadline used while an instance runs its `init` (config parsing can be
/// heavier than a request phase, e.g. PEM keys).
pub(crate) fn init_deadline(call_deadline: Duration) -> Duration {
    (call_deadline * 10).max(Duration::from_secs(1))
}

/// [`StoreLimits`] that also remember the largest linear memory the
/// instance was allowed to grow to (the plugin's memory high-water mark).
pub(crate) struct PeakLimits {
    limits: StoreLimits,
    peak: usize,
}

impl PeakLimits {
    /// Per-instance limits with `memory` bytes of linear memory at most.
    pub(crate) fn new(memory: u64) -> Self {
        Self { limits: store_limits(memory), peak: 0 }
    }

    /// The largest memory size granted so far, in bytes.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }
}

impl wasmtime::ResourceLimiter for PeakLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let granted = self.limits.memory_growing(current, desired, maximum)?;
        if granted {
            self.peak = self.peak.max(desired);
        }
        Ok(granted)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Per-instance resource limits.
fn store_limits(memory: u64) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(memory as usize)
        .memories(MEMORIES_PER_COMPONENT as usize)
        .tables(TABLES_PER_COMPONENT as usize)
        .instances(CORE_INSTANCES_PER_COMPONENT as usize)
        // A refused `memory.grow` returns -1 to the guest (its allocator
        // decides); a refused table growth likewise.
        .trap_on_grow_failure(false)
        .build()
}

/// The WASI context a plugin gets: nothing. No preopened directories, no
/// environment, no arguments, stdin closed, stdout/stderr discarded, no TCP,
/// no UDP, no name lookups, every socket address denied. Clocks and random
/// numbers are left working: Rust's std needs them and they reveal nothing
/// a plugin could not get from the host clock import.
pub(crate) fn sandbox_wasi() -> WasiCtx {
    WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build()
}

/// Whether a guest error is the epoch deadline firing.
pub(crate) fn is_deadline(e: &wasmtime::Error) -> bool {
    matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt))
}

/// A one-line description of a guest error: the trap code when there is one.
pub(crate) fn describe_trap(e: &wasmtime::Error) -> String {
    let what = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return "deadline exceeded".into(),
        Some(trap) => trap.to_string(),
        None => format!("{e:#}").lines().next().unwrap_or_default().to_string(),
    };
    match e.downcast_ref::<wasmtime::WasmBacktrace>().map(guest_frames).filter(|f| !f.is_empty()) {
        Some(frames) => format!("{what}, in {frames}"),
        None => what,
    }
}

/// The innermost guest functions of a trap's backtrace (named when the
/// module kept its name section), past the panic machinery: where the
/// plugin's own code failed, on one line.
fn guest_frames(bt: &wasmtime::WasmBacktrace) -> String {
    const MACHINERY: [&str; 8] =
        ["__rust", "rust_panic", "std::", "core::", "alloc::", "panic_abort", "__rdl", "abort"];
    bt.frames()
        .iter()
        .filter_map(|f| f.func_name())
        .filter(|n| !MACHINERY.iter().any(|m| n.starts_with(m) || n.starts_with(&format!("<{m}"))))
        .take(3)
        .collect::<Vec<_>>()
        .join(" \u{2190} ")
}
