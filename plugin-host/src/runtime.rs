//! The plugin runtime a gateway process keeps for its whole life: the
//! engine, the linker with weir's imports, the compiled components and the
//! state store. Snapshots load their plugins through it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use weir_config::RuntimeConfig;

use crate::component::{Compiled, contract_mismatch, imports_interface};
use crate::engine::{EngineError, PluginEngine};
use crate::error::LoadError;
use crate::events::EventSink;
use crate::imports::{PluginHost, StoreData};
use crate::metrics::{CallObserver, HostMetrics};
use crate::outbound::{Grant, Outbound};
use crate::plugin::{LoadedPlugin, PluginSpec};
use crate::state::StateStore;

/// A module compiled by the runtime, ready to be loaded under any name.
#[derive(Clone)]
pub struct Module {
    pub(crate) component: Component,
}

/// The engine, linker, compiled components and state store.
pub struct PluginRuntime {
    engine: Arc<PluginEngine>,
    linker: Linker<StoreData>,
    compiled: Compiled,
    state: Arc<StateStore>,
    metrics: HostMetrics,
    /// Config schemas by module sha256.
    schemas: crate::schema::SchemaCache,
}

impl PluginRuntime {
    /// Build the engine from `[runtime]` (`config_dir` anchors a relative
    /// compile cache) and link weir's imports.
    pub fn new(
        rt: &RuntimeConfig,
        config_dir: &Path,
        state: Arc<StateStore>,
        metrics: HostMetrics,
    ) -> Result<Self, EngineError> {
        let engine = PluginEngine::new(rt, config_dir)?;
        let linker = crate::imports::linker(&engine)?;
        Ok(Self { engine, linker, compiled: Compiled::default(), state, metrics, schemas: Default::default() })
    }

    /// Largest `limits.memory` a plugin may ask for (`[runtime] max_memory`).
    pub fn max_memory(&self) -> u64 {
        self.engine.max_memory()
    }

    /// The state store behind the plugins' `state` imports.
    pub fn state(&self) -> &Arc<StateStore> {
        &self.state
    }

    /// The plugin metric families.
    pub fn metrics(&self) -> &HostMetrics {
        &self.metrics
    }

    /// Compile `bytes`, whose digest is `sha256` (see [`sha256_hex`]),
    /// unless a module with that digest is compiled already. Compilation
    /// runs on a blocking thread.
    pub async fn compile(&self, sha256: &str, bytes: Vec<u8>) -> Result<Module, LoadError> {
        let component = self.compiled.get_or_compile(&self.engine, sha256, bytes).await.map_err(LoadError::Compile)?;
        Ok(Module { component })
    }

    /// Forget compiled modules whose digest is not in `used`.
    pub fn retain_modules(&self, used: &HashSet<String>) {
        self.compiled.retain(used);
        self.schemas.lock().unwrap_or_else(|p| p.into_inner()).retain(|sha, _| used.contains(sha));
    }

    /// The engine.
    pub(crate) fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// Link `component` against weir's imports.
    pub(crate) fn instantiate_pre(
        &self,
        component: &Component,
    ) -> Result<wasmtime::component::InstancePre<StoreData>, LoadError> {
        let engine = self.engine.engine();
        self.linker.instantiate_pre(component).map_err(|e| {
            contract_mismatch(engine, component).map_or_else(|| LoadError::Link(format!("{e:#}")), LoadError::Contract)
        })
    }

    /// Pre-link `module` as the plugin `spec` describes, create a first
    /// instance and hand it its config. Events go to `events`; every call
    /// is also recorded in `live`.
    pub async fn load(
        &self,
        spec: PluginSpec,
        module: &Module,
        events: Arc<dyn EventSink>,
        live: Arc<dyn CallObserver>,
        outbound: Arc<dyn Outbound>,
    ) -> Result<LoadedPlugin, LoadError> {
        let engine = self.engine.engine();
        let component = &module.component;
        let grant = Grant {
            sender: outbound,
            upstreams: spec.outbound.clone(),
            max_calls: spec.limits.outbound_calls,
            max_body: spec.limits.outbound_body,
        };
        let metrics = self.metrics.plugin(&spec.label(), live);
        let host = Arc::new(PluginHost::new(
            spec.name.clone(),
            self.state.clone(),
            self.metrics.clone(),
            events,
            grant,
            metrics.outbound.clone(),
        ));
        let pre = self.instantiate_pre(component)?;
        let awaits_host = imports_interface(engine, component, "weir:plugin/state")
            || imports_interface(engine, component, "weir:plugin/outbound");
        LoadedPlugin::load(spec, self.engine.clone(), pre, host, metrics, awaits_host, &self.schemas).await.map_err(
            |e| match e {
                LoadError::NotAPlugin(_) => contract_mismatch(engine, component).map_or(e, LoadError::Contract),
                e => e,
            },
        )
    }
}

/// The SHA-256 of `bytes` as lowercase hex: the form weir pins modules by
/// and shows digests in.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
