//! The plugin host's Prometheus families, registered into the gateway's
//! registry by [`HostMetrics::register`]: calls by outcome and latency,
//! instances, memory, the pool, crash loops, plugin-defined counters,
//! gauges and events, and failed state calls.
//!
//! Labels are instance names from the configuration and plugin-defined
//! names, which the host caps per plugin (see `imports`): a plugin cannot
//! grow the label space without bound.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOutcome {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginNamed {
    plugin: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginEvent {
    plugin: String,
    kind: String,
    severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundOutcome {
    plugin: String,
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabel {
    plugin: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateErrorKind {
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50µs .. ~26s, the gateway's latency buckets.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Where a plugin call's outcome goes besides Prometheus: the gateway's
/// live series (the dashboard's last minutes).
pub trait CallObserver: Send + Sync {
    /// One phase call finished, `failed` or not, after `seconds`.
    fn record(&self, failed: bool, seconds: f64);
}

/// The plugin host's metric families.
#[derive(Clone)]
pub struct HostMetrics {
    calls: Family<PluginOutcome, Counter>,
    duration: HistogramFamily<PluginLabel>,
    instances: Family<PluginLabel, Counter>,
    memory_peak: Family<PluginLabel, Gauge>,
    pool_idle: Family<PluginLabel, Gauge>,
    crash_looping: Family<PluginLabel, Gauge>,
    crash_loops: Family<PluginLabel, Counter>,
    counters: Family<PluginNamed, Counter>,
    gauges: Family<PluginNamed, Gauge>,
    events: Family<PluginEvent, Counter>,
    state_errors: Family<StateErrorKind, Counter>,
    outbound_calls: Family<OutboundOutcome, Counter>,
    outbound_duration: HistogramFamily<OutboundLabel>,
    host_calls: Family<PluginLabel, Counter>,
}

impl HostMetrics {
    /// Register the families into `registry` (the gateway's, prefixed
    /// `weir_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            calls: Family::default(),
            duration: HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram),
            instances: Family::default(),
            memory_peak: Family::default(),
            pool_idle: Family::default(),
            crash_looping: Family::default(),
            crash_loops: Family::default(),
            counters: Family::default(),
            gauges: Family::default(),
            events: Family::default(),
            state_errors: Family::default(),
            outbound_calls: Family::default(),
            outbound_duration: HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram),
            host_calls: Family::default(),
        };
        registry.register("plugin_calls", "Plugin phase calls by outcome", m.calls.clone());
        registry.register("plugin_call_duration_seconds", "Plugin phase call latency", m.duration.clone());
        registry.register("plugin_instances_created", "Plugin instances created", m.instances.clone());
        registry.register(
            "plugin_memory_peak_bytes",
            "Largest linear memory any instance of the plugin grew to",
            m.memory_peak.clone(),
        );
        registry.register("plugin_pool_idle", "Idle initialised instances in the plugin's pool", m.pool_idle.clone());
        registry.register(
            "plugin_crash_looping",
            "1 while the plugin is in crash-loop backoff or probing after one",
            m.crash_looping.clone(),
        );
        registry.register("plugin_crash_loops", "Crash-loop backoffs started", m.crash_loops.clone());
        registry.register("plugin_custom", "Plugin-defined counters", m.counters.clone());
        registry.register("plugin_custom_gauge", "Plugin-defined gauges", m.gauges.clone());
        registry.register("plugin_events", "Events emitted by plugins", m.events.clone());
        registry.register("state_errors", "Failed plugin state calls by kind", m.state_errors.clone());
        registry.register(
            "plugin_outbound_calls",
            "Plugins' outbound calls by plugin, upstream and outcome (answered, not_allowed, invalid, limit, timeout, unavailable)",
            m.outbound_calls.clone(),
        );
        registry.register(
            "plugin_outbound_duration_seconds",
            "Time plugins' outbound calls took, by plugin and upstream",
            m.outbound_duration.clone(),
        );
        registry.register(
            "plugin_host_calls",
            "Calls plugins made into the host (every import, WASI's included) during phase calls; counted only with WEIR_COUNT_HOST_CALLS=1",
            m.host_calls.clone(),
        );
        m
    }

    /// Handles for one plugin instance name; `live` receives every call.
    pub fn plugin(&self, plugin: &str, live: Arc<dyn CallObserver>) -> PluginMetrics {
        // Each handle is taken in a closure of its own: a family's read guard
        // lives to the end of the statement that took it.
        let by = |outcome| self.calls.get_or_create(&PluginOutcome { plugin: plugin.to_owned(), outcome }).clone();
        let label = PluginLabel { plugin: plugin.to_owned() };
        PluginMetrics {
            ok: by("ok"),
            respond: by("respond"),
            trap: by("trap"),
            timeout: by("timeout"),
            invalid: by("invalid_output"),
            duration: self.duration.get_or_create(&label).clone(),
            instances: self.instances.get_or_create(&label).clone(),
            memory_peak: self.memory_peak.get_or_create(&label).clone(),
            pool_idle: self.pool_idle.get_or_create(&label).clone(),
            crash_looping: self.crash_looping.get_or_create(&label).clone(),
            crash_loops: self.crash_loops.get_or_create(&label).clone(),
            host_calls: self.host_calls.get_or_create(&label).clone(),
            live,
            outbound: Arc::default(),
        }
    }

    /// The handle of a plugin-defined counter (kept by the caller: a
    /// family lookup allocates its label set and hashes it).
    pub(crate) fn counter(&self, plugin: &str, name: &str) -> Counter {
        self.counters.get_or_create(&PluginNamed { plugin: plugin.to_owned(), name: name.to_owned() }).clone()
    }

    /// The handle of a plugin-defined gauge.
    pub(crate) fn gauge(&self, plugin: &str, name: &str) -> Gauge {
        self.gauges.get_or_create(&PluginNamed { plugin: plugin.to_owned(), name: name.to_owned() }).clone()
    }

    /// A plugin event.
    pub(crate) fn event(&self, plugin: &str, kind: &str, severity: &'static str) {
        self.events.get_or_create(&PluginEvent { plugin: plugin.to_owned(), kind: kind.to_owned(), severity }).inc();
    }

    /// A failed state call: `unavailable` or `invalid`.
    pub(crate) fn state_error(&self, kind: &'static str) {
        self.state_errors.get_or_create(&StateErrorKind { kind }).inc();
    }

    /// One outbound call of `plugin` to `upstream` ended with `outcome`
    /// after `seconds` (the upstream label only for names the plugin may
    /// call, so a plugin cannot grow the label space).
    pub(crate) fn outbound(&self, plugin: &str, upstream: &str, outcome: &'static str, seconds: f64) {
        let (plugin, upstream) = (plugin.to_owned(), upstream.to_owned());
        self.outbound_calls
            .get_or_create(&OutboundOutcome { plugin: plugin.clone(), upstream: upstream.clone(), outcome })
            .inc();
        if outcome == "answered" {
            self.outbound_duration.get_or_create(&OutboundLabel { plugin, upstream }).observe(seconds);
        }
    }
}

/// Per-plugin handles, resolved once per snapshot so a call records with a
/// few atomic adds.
#[derive(Clone)]
pub struct PluginMetrics {
    pub(crate) ok: Counter,
    pub(crate) respond: Counter,
    pub(crate) trap: Counter,
    pub(crate) timeout: Counter,
    pub(crate) invalid: Counter,
    pub(crate) duration: Histogram,
    pub(crate) instances: Counter,
    pub(crate) memory_peak: Gauge,
    pub(crate) pool_idle: Gauge,
    pub(crate) crash_looping: Gauge,
    pub(crate) crash_loops: Counter,
    pub(crate) host_calls: Counter,
    pub(crate) live: Arc<dyn CallObserver>,
    /// Its outbound calls by upstream and outcome, for the admin API.
    pub(crate) outbound: Arc<OutboundTally>,
}

/// A plugin's outbound calls so far, by upstream and outcome, with their
/// total time: what `/admin/plugins` and the dashboard show (the labelled
/// Prometheus family cannot be read back). A handful of keys per plugin.
#[derive(Debug, Default)]
pub(crate) struct OutboundTally(std::sync::Mutex<Tally>);

/// (upstream, outcome) → (calls, total seconds).
type Tally = std::collections::BTreeMap<(String, &'static str), (u64, f64)>;

impl OutboundTally {
    pub(crate) fn record(&self, upstream: &str, outcome: &'static str, seconds: f64) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map.entry((upstream.to_owned(), outcome)).or_default();
        entry.0 += 1;
        entry.1 += seconds;
    }
}

/// One line of a plugin's outbound calls (as `/admin/plugins` shows them).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboundCount {
    /// The upstream called (`-` for names the plugin may not call).
    pub upstream: String,
    /// `answered`, `not_allowed`, `invalid`, `limit`, `timeout`, `unavailable`.
    pub outcome: &'static str,
    /// Calls so far.
    pub calls: u64,
    /// Their mean duration, milliseconds.
    pub mean_ms: f64,
}

impl std::fmt::Debug for PluginMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginMetrics").field("ok", &self.ok.get()).field("trap", &self.trap.get()).finish()
    }
}

impl PluginMetrics {
    /// Raise the memory high-water mark to `bytes` if it is higher.
    pub(crate) fn memory_peak(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if bytes > self.memory_peak.get() {
            self.memory_peak.set(bytes);
        }
    }

    /// The memory high-water mark, bytes.
    pub fn memory_peak_bytes(&self) -> i64 {
        self.memory_peak.get()
    }

    /// Instances created so far.
    pub fn instances_created(&self) -> u64 {
        self.instances.get()
    }

    /// Calls so far, by outcome.
    /// Its outbound calls so far, by upstream and outcome.
    pub fn outbound_calls(&self) -> Vec<OutboundCount> {
        let map = self.outbound.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|((upstream, outcome), (calls, seconds))| OutboundCount {
                upstream: upstream.clone(),
                outcome,
                calls: *calls,
                mean_ms: if *calls == 0 { 0.0 } else { seconds * 1000.0 / *calls as f64 },
            })
            .collect()
    }

    pub fn calls(&self) -> CallCounts {
        CallCounts {
            ok: self.ok.get(),
            respond: self.respond.get(),
            trap: self.trap.get(),
            timeout: self.timeout.get(),
            invalid_output: self.invalid.get(),
        }
    }
}

/// A plugin's calls so far, by outcome (as `/admin/plugins` shows them).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CallCounts {
    /// Continued.
    pub ok: u64,
    /// Answered the client itself.
    pub respond: u64,
    /// Trapped.
    pub trap: u64,
    /// Ran past the deadline.
    pub timeout: u64,
    /// Returned something the gateway refused.
    pub invalid_output: u64,
}
