//! One plugin outside any gateway, in a local engine with the gateway's
//! limits: what `weir plugin schema` and `weir plugin replay` run. No
//! network (outbound calls are refused), state in memory, events kept for
//! the caller to show.

use std::path::Path;
use std::sync::{Arc, Mutex};

use wasmtime::component::Component;
use weir_config::{CrashLoopConfig, FailurePolicy, Isolation, PluginLimits, RuntimeConfig};

use crate::bindings::DescribeIndices;
use crate::error::LoadError;
use crate::events::{EventRecord, EventSink};
use crate::imports::{PluginHost, StoreData};
use crate::metrics::{CallObserver, HostMetrics};
use crate::outbound::{Grant, Outbound, OutboundCall, OutboundError, OutboundFuture};
use crate::plugin::{LoadedPlugin, PluginSpec};
use crate::runtime::{Module, PluginRuntime, sha256_hex};
use crate::state::{MemoryState, StateStore};
use crate::store::{PeakLimits, describe_trap, new_store};

/// A module compiled by a local engine.
pub struct LocalPlugin {
    runtime: PluginRuntime,
    module: Module,
    sha256: String,
    events: Arc<KeptEvents>,
}

/// How a local plugin is loaded: the gateway's `[plugins.NAME]` settings
/// that matter outside it.
pub struct LocalSpec {
    /// The instance name.
    pub name: String,
    /// The module file name (for messages).
    pub module: String,
    /// The `config` table as JSON.
    pub config_json: String,
    /// Memory and deadline.
    pub limits: PluginLimits,
}

impl LocalPlugin {
    /// Compile `bytes` in an engine built from `rt` (the gateway's
    /// `[runtime]`, or its defaults; its compile cache too).
    pub async fn compile(bytes: Vec<u8>, rt: &RuntimeConfig) -> Result<Self, LoadError> {
        let runtime = PluginRuntime::new(
            rt,
            Path::new("."),
            Arc::new(StateStore::Memory(MemoryState::new(10_000))),
            HostMetrics::register(&mut prometheus_client::registry::Registry::default()),
        )
        .map_err(|e| LoadError::Compile(e.to_string()))?;
        let sha256 = sha256_hex(&bytes);
        let module = runtime.compile(&sha256, bytes).await?;
        Ok(Self { runtime, module, sha256, events: Arc::default() })
    }

    /// The module's sha256 (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The JSON Schema the module declares for its config (contract
    /// `0.2.5`), read from a fresh instance without calling `init`. `None`
    /// when it declares none or predates `describe`.
    pub async fn config_schema(&self) -> Result<Option<String>, LoadError> {
        let component: &Component = &self.module.component;
        let pre = self.runtime.instantiate_pre(component)?;
        let Ok(describe) = DescribeIndices::new(&pre) else { return Ok(None) };
        let host = Arc::new(self.host("schema", &[]));
        let data = StoreData::new(host, PeakLimits::new(PluginLimits::default().memory));
        let mut store = new_store(self.runtime.engine(), data, PluginLimits::default().deadline);
        let failed = |e: wasmtime::Error| LoadError::Instantiate(format!("{e:#}"));
        let instance = pre.instantiate_async(&mut store).await.map_err(failed)?;
        let guest = describe.load(&mut store, &instance).map_err(failed)?;
        guest
            .call_config_schema(&mut store)
            .await
            .map_err(|e| LoadError::InitTrapped(format!("config-schema: {}", describe_trap(&e))))
    }

    /// Load it as the gateway would (config schema checked, `init` called),
    /// with one pooled instance, failing closed.
    pub async fn load(&self, spec: LocalSpec) -> Result<LoadedPlugin, LoadError> {
        let spec = PluginSpec {
            name: spec.name.into(),
            module: spec.module,
            sha256: self.sha256.clone(),
            config_json: spec.config_json,
            failure: FailurePolicy::Closed,
            limits: spec.limits,
            isolation: Isolation::Pool,
            max_idle: 1,
            crash_loop: CrashLoopConfig::default(),
            outbound: Vec::new(),
            canary: false,
        };
        let events: Arc<dyn EventSink> = self.events.clone();
        self.runtime.load(spec, &self.module, events, Arc::new(Unobserved), Arc::new(NoNetwork)).await
    }

    /// The events the plugin emitted so far, oldest first.
    pub fn take_events(&self) -> Vec<EventRecord> {
        std::mem::take(&mut *self.events.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn host(&self, name: &str, outbound: &[String]) -> PluginHost {
        let events: Arc<dyn EventSink> = self.events.clone();
        PluginHost::new(
            name.into(),
            self.runtime.state().clone(),
            self.runtime.metrics().clone(),
            events,
            Grant { sender: Arc::new(NoNetwork), upstreams: outbound.to_vec(), max_calls: 0, max_body: 0 },
            Default::default(),
        )
    }
}

/// Events kept for the caller.
#[derive(Default)]
struct KeptEvents(Mutex<Vec<EventRecord>>);

impl EventSink for KeptEvents {
    fn emit(&self, event: EventRecord) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < 1000 {
            kept.push(event);
        }
    }
}

struct Unobserved;

impl CallObserver for Unobserved {
    fn record(&self, _: bool, _: f64) {}
}

/// Outbound calls are not made outside the gateway.
struct NoNetwork;

impl Outbound for NoNetwork {
    fn send(&self, upstream: &str, _: OutboundCall) -> OutboundFuture {
        let upstream = upstream.to_owned();
        Box::pin(async move { Err(OutboundError::Unavailable(format!("{upstream}: no network outside the gateway"))) })
    }
}
