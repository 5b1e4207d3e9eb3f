//! Operator events a plugin emits (`weir:plugin/events`), as the host hands
//! them to the gateway: capped and truncated here, then logged, kept and
//! delivered by the gateway's [`EventSink`].

use serde::Serialize;
use weir_config::Severity;

/// One event, as logged, kept and POSTed.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The plugin instance that emitted it.
    pub plugin: String,
    /// Machine-readable kind, e.g. `anomaly.detected`.
    pub kind: String,
    /// Urgency.
    pub severity: Severity,
    /// A sentence for humans.
    pub message: String,
    /// Structured fields (at most 32).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Where a plugin's events go. Called on the plugin's call: it must only
/// enqueue, never wait.
pub trait EventSink: Send + Sync {
    /// Take one event.
    fn emit(&self, event: EventRecord);
}
