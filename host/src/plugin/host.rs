//! The host side of the plugin imports: logging, clocks, state, metrics and
//! events. One [`StoreData`] per instance carries the sandboxed WASI context,
//! the memory limits and a handle to the plugin's shared host services.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::StoreLimits;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, clock, events, log, metrics, state, types};
use crate::metrics::Metrics;
use crate::state::{StateError, StateStore};

/// Longest log line kept from a plugin.
const MAX_LOG_LINE: usize = 4096;
/// Distinct plugin-defined metric names (and event kinds) kept per plugin.
const MAX_METRIC_NAMES: usize = 32;

/// Services shared by all instances of one named plugin.
pub(crate) struct PluginHost {
    pub(crate) name: Arc<str>,
    state: Arc<StateStore>,
    metrics: Arc<Metrics>,
    /// Metric names and event kinds seen, to cap label cardinality.
    names: Mutex<HashSet<String>>,
}

impl PluginHost {
    pub(crate) fn new(name: Arc<str>, state: Arc<StateStore>, metrics: Arc<Metrics>) -> Self {
        Self { name, state, metrics, names: Mutex::new(HashSet::new()) }
    }

    fn key(&self, key: &str) -> Result<String, state::Error> {
        if key.is_empty() || key.len() > crate::state::MAX_KEY_LEN {
            return Err(state::Error::Invalid(format!(
                "key length must be 1..={} bytes, got {}",
                crate::state::MAX_KEY_LEN,
                key.len()
            )));
        }
        Ok(format!("{}\u{1f}{key}", self.name))
    }

    /// Whether `name` may become a label value: valid and within the cap.
    fn admit_name(&self, name: &str) -> bool {
        let valid = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !valid {
            tracing::debug!(plugin = %self.name, name, "plugin metric name refused");
            return false;
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.contains(name) {
            return true;
        }
        if names.len() >= MAX_METRIC_NAMES {
            return false;
        }
        names.insert(name.to_owned());
        true
    }
}

/// The data of one instance's `Store`.
pub(crate) struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    host: Arc<PluginHost>,
}

impl StoreData {
    pub(crate) fn new(host: Arc<PluginHost>, limits: StoreLimits) -> Self {
        Self { wasi: crate::engine::sandbox_wasi(), table: ResourceTable::new(), limits, host }
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Add the weir imports to a linker.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    bindings::PluginWorld::add_to_linker::<StoreData, HasSelf<StoreData>>(linker, |d| d)
}

impl types::Host for StoreData {}

impl log::Host for StoreData {
    fn log(&mut self, level: log::Level, mut message: String) -> wasmtime::Result<()> {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.host.name;
        match level {
            log::Level::Trace => tracing::trace!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "weir::plugin", plugin, "{message}"),
        }
        Ok(())
    }
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl clock::Host for StoreData {
    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(process_start().elapsed().as_nanos() as u64)
    }

    fn wall_now(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
    }
}

fn to_wit(e: StateError) -> state::Error {
    match e {
        StateError::Unavailable(m) => state::Error::Unavailable(m),
        StateError::Invalid(m) => state::Error::Invalid(m),
    }
}

impl state::Host for StoreData {
    async fn incr(&mut self, key: String, delta: i64, ttl_ms: u64) -> wasmtime::Result<Result<i64, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.state.incr(&key, delta, ttl_ms).await.map_err(to_wit)
        }
        .await)
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.state.get(&key).await.map_err(to_wit)
        }
        .await)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<Result<(), state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.state.set(&key, &value, ttl_ms).await.map_err(to_wit)
        }
        .await)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<bool, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.state.compare_and_swap(&key, expected.as_deref(), &value, ttl_ms).await.map_err(to_wit)
        }
        .await)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.state.delete(&key).await.map_err(to_wit)
        }
        .await)
    }
}

impl metrics::Host for StoreData {
    fn counter_add(&mut self, name: String, value: u64) -> wasmtime::Result<()> {
        if self.host.admit_name(&name) {
            self.host.metrics.plugin_counter_add(&self.host.name, &name, value);
        }
        Ok(())
    }

    fn gauge_set(&mut self, name: String, value: i64) -> wasmtime::Result<()> {
        if self.host.admit_name(&name) {
            self.host.metrics.plugin_gauge_set(&self.host.name, &name, value);
        }
        Ok(())
    }
}

impl events::Host for StoreData {
    fn emit(&mut self, event: events::Event) -> wasmtime::Result<()> {
        let severity = match event.severity {
            events::Severity::Info => "info",
            events::Severity::Warning => "warning",
            events::Severity::Critical => "critical",
        };
        let plugin = &*self.host.name;
        let attributes: Vec<String> = event.attributes.iter().take(32).map(|(k, v)| format!("{k}={v}")).collect();
        tracing::warn!(
            target: "weir::event",
            plugin,
            kind = %event.kind,
            severity,
            attributes = %attributes.join(" "),
            "{}",
            event.message
        );
        let kind = if self.host.admit_name(&event.kind) { event.kind.as_str() } else { "other" };
        self.host.metrics.plugin_event(plugin, kind, severity);
        Ok(())
    }
}
