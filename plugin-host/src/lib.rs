//! # weir-plugin-host — the sandbox weir runs plugins in
//!
//! The only crate of the workspace that names wasmtime: like spin-core, it
//! narrows wasmtime to what weir allows, so every engine decision lives
//! here and nowhere else.
//!
//! | room | module |
//! |------|--------|
//! | engine settings: pooling, epochs, compile cache | `engine` |
//! | one store per instance: limits, deadline, the empty WASI sandbox, traps → [`PluginFailure`] | `store` |
//! | components: the compile cache by sha256, the contract version check | `component` |
//! | the generated bindings of `wit/plugin.wit`, quarantined | `bindings` |
//! | a loaded plugin: instance pool, isolation, crash loop, phase calls | [`LoadedPlugin`] |
//! | the heads lent to a phase call, and what a plugin may set | [`heads`] |
//! | the host imports: log, clock, request-local, state, metrics, events | `imports` |
//! | plugin state shared across requests and nodes (memory, Redis) | [`state`] |
//! | the plugin metric families | [`HostMetrics`] |
//!
//! The gateway uses it in two steps: a [`PluginRuntime`] lives as long as
//! the process (engine, linker, compiled components, state store), and each
//! snapshot asks it to [`PluginRuntime::load`] its plugins. A request then
//! calls a [`LoadedPlugin`]'s phases with the [`Heads`] it lends.

mod bindings;
pub mod clock;
mod component;
mod engine;
mod error;
mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod heads;
mod imports;
mod local;
mod metrics;
pub mod outbound;
mod plugin;
mod runtime;
mod schema;
pub mod state;
mod store;

pub use bindings::{Action, BodyAction, ChunkAction, Header, Phases, Reply, StreamPhases};
pub use engine::EngineError;
pub use error::{LoadError, PluginFailure, SchemaError};
pub use events::{EventRecord, EventSink};
pub use heads::{
    ChainData, ConnectionTls, Heads, LentRequest, LentResponse, OutboundLog, OutboundRecord, RequestInfo, TraceContext,
};
pub use local::{LocalPlugin, LocalSpec};
pub use metrics::{CallCounts, CallObserver, HostMetrics, OutboundCount, PluginMetrics};
pub use plugin::{CrashLoopStatus, LoadedPlugin, PluginSpec, RequestSlot};
pub use runtime::{Module, PluginRuntime, sha256_hex};
pub use state::{StateConfigError, StateStore};
