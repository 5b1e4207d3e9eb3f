//! The plugin host's typed errors: why a module did not load, and why a
//! phase call produced no answer. The gateway decides what each becomes
//! (a config error with the file and line, or an HTTP status).

use std::time::Duration;

pub use crate::schema::SchemaError;

/// Why a module could not become a loaded plugin. The messages are written
/// for the operator; the gateway prefixes the plugin's name and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a component this engine can compile.
    #[error("{0}")]
    Compile(String),
    /// Built against another series of the `weir:plugin` contract.
    #[error("{0}")]
    Contract(String),
    /// Its imports cannot be satisfied.
    #[error("cannot link module: {0}")]
    Link(String),
    /// It does not export the plugin world.
    #[error("module is not a weir plugin: {0}")]
    NotAPlugin(String),
    /// Instantiation failed (e.g. the instance pool is full).
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// Its `init` trapped or overran its deadline.
    #[error("init trapped: {0}")]
    InitTrapped(String),
    /// Its `init` refused the configuration, for this reason.
    #[error("config rejected by the plugin: {0}")]
    ConfigRejected(String),
    /// The configuration breaks the schema the plugin declares (contract
    /// `0.2.5`): every mismatch, with its key path.
    #[error("config does not match the plugin's schema: {}", list(.0))]
    ConfigSchema(Vec<SchemaError>),
    /// The schema the plugin declares is not a usable JSON Schema.
    #[error("the plugin's config schema is {0}")]
    BadSchema(String),
}

fn list(errors: &[SchemaError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Why a plugin call produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    /// The guest trapped (panic, out of memory, unreachable, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline.
    #[error("plugin exceeded its {0:?} deadline")]
    Deadline(Duration),
    /// No instance could be made (pool exhausted, init failed).
    #[error("plugin unavailable: {0}")]
    Unavailable(String),
    /// The plugin returned something the gateway refuses to forward.
    #[error("plugin returned invalid output: {0}")]
    InvalidOutput(String),
    /// The plugin kept trapping and is paused for this long.
    #[error("plugin is in crash-loop backoff after repeated traps; next try in {0:?}")]
    CrashLoop(Duration),
    /// The plugin cut a body off in a chunk call (`abort`), for this reason.
    #[error("plugin aborted the body: {0}")]
    Aborted(String),
}
