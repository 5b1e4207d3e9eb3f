//! The host side of the plugin imports: logging, clocks, state, metrics and
//! events. One [`StoreData`] per instance carries the sandboxed WASI context,
//! the memory limits and a handle to the plugin's shared host services.

mod lent;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use weir_config::Severity;

use crate::bindings::{self, chain_data, clock, events, log, metrics, outbound, request_local, state, types};
use crate::engine::{EngineError, PluginEngine};
use crate::events::{EventRecord, EventSink};
use crate::heads::OutboundRecord;
use crate::metrics::HostMetrics;
use crate::outbound::{Grant, OutboundError};
use crate::state::{StateError, StateStore};
use crate::store::{Limited, PeakLimits, sandbox_wasi};

/// Longest log line kept from a plugin.
const MAX_LOG_LINE: usize = 4096;
/// Distinct plugin-defined metric names (and event kinds) kept per plugin.
const MAX_METRIC_NAMES: usize = 32;
/// Attributes kept per event.
const MAX_EVENT_ATTRIBUTES: usize = 32;
/// Request-local limits, per plugin per request (documented in the WIT).
const MAX_LOCAL_KEYS: usize = 32;
const MAX_LOCAL_KEY_LEN: usize = 128;
const MAX_LOCAL_BYTES: usize = 16 * 1024;

/// Services shared by all instances of one named plugin.
pub(crate) struct PluginHost {
    pub(crate) name: Arc<str>,
    state: Arc<StateStore>,
    metrics: HostMetrics,
    /// Where the plugin's events go (the snapshot's sink).
    events: Arc<dyn EventSink>,
    /// Metric names and event kinds seen, to cap label cardinality.
    names: Mutex<HashSet<String>>,
    /// The plugin's own metrics by name, resolved once: a call then costs
    /// a lookup by `&str`, not a label set built and hashed.
    own: Mutex<OwnMetrics>,
    /// What it may call, and how much.
    outbound: Grant,
    /// Its outbound calls, for the admin API.
    tally: Arc<crate::metrics::OutboundTally>,
    /// Refused upstream names already logged (at most
    /// [`MAX_METRIC_NAMES`], so a plugin cannot flood the log).
    refused_logged: Mutex<HashSet<String>>,
}

impl PluginHost {
    pub(crate) fn new(
        name: Arc<str>,
        state: Arc<StateStore>,
        metrics: HostMetrics,
        events: Arc<dyn EventSink>,
        outbound: Grant,
        tally: Arc<crate::metrics::OutboundTally>,
    ) -> Self {
        Self {
            name,
            state,
            metrics,
            events,
            names: Mutex::new(HashSet::new()),
            own: Mutex::default(),
            outbound,
            tally,
            refused_logged: Mutex::new(HashSet::new()),
        }
    }

    /// Count a failed state call on its way back to the plugin.
    fn counted<T>(&self, r: Result<T, StateError>) -> Result<T, state::Error> {
        r.map_err(|e| {
            self.metrics.state_error(match e {
                StateError::Unavailable(_) => "unavailable",
                StateError::Invalid(_) => "invalid",
            });
            to_wit(e)
        })
    }

    fn key(&self, key: &str) -> Result<String, state::Error> {
        if key.is_empty() || key.len() > crate::state::MAX_KEY_LEN {
            return Err(state::Error::Invalid(format!(
                "key length must be 1..={} bytes, got {}",
                crate::state::MAX_KEY_LEN,
                key.len()
            )));
        }
        Ok(format!("{}:{key}", self.name))
    }

    /// Apply `apply` to the plugin's metric `name`, taken from its family
    /// once (`make`), when the name is admitted, and kept in `cache`.
    fn with_own_metric<M>(
        &self,
        cache: fn(&mut OwnMetrics) -> &mut HashMap<String, M>,
        name: String,
        make: impl FnOnce(&str) -> M,
        apply: impl FnOnce(&M),
    ) {
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        let map = cache(&mut own);
        if let Some(m) = map.get(&name) {
            return apply(m);
        }
        if self.admit_name(&name) {
            let m = make(&name);
            apply(&m);
            map.insert(name, m);
        }
    }

    /// Whether `name` may become a label value: valid (the SDK's
    /// metric-name rule, `weir_plugin_sdk::is_metric_name`, which the book
    /// states; `tests/it/chain.rs` checks the two agree) and within the cap.
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
    pub(crate) limits: PeakLimits,
    host: Arc<PluginHost>,
    /// The request-local values of the request being served, lent to the
    /// instance for one call (see [`crate::RequestSlot`]).
    pub(crate) locals: Locals,
    /// The heads lent for the current phase call (see [`crate::heads`]).
    pub(crate) lent: Option<crate::heads::Lent>,
    /// Names this instance's next lent heads (see `Lent::rep`).
    pub(crate) next_rep: u32,
    /// Outbound calls made in the current phase call.
    pub(crate) outbound_calls: u32,
    /// Host calls made since the counter was last taken.
    pub(crate) host_calls: u64,
}

impl StoreData {
    pub(crate) fn new(host: Arc<PluginHost>, limits: PeakLimits) -> Self {
        Self {
            wasi: sandbox_wasi(),
            table: ResourceTable::new(),
            limits,
            host,
            locals: Locals::default(),
            lent: None,
            next_rep: 0,
            host_calls: 0,
            outbound_calls: 0,
        }
    }
}

impl Limited for StoreData {
    fn limits(&mut self) -> &mut PeakLimits {
        &mut self.limits
    }

    fn host_call(&mut self) {
        self.host_calls += 1;
    }
}

/// One plugin's request-local values for one request: a short list, since
/// plugins keep a handful of keys.
#[derive(Debug, Default, Clone)]
pub(crate) struct Locals {
    entries: Vec<(String, Vec<u8>)>,
    bytes: usize,
}

impl Locals {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> bool {
        let existing = self.entries.iter().position(|(k, _)| *k == key);
        let freed = existing.map_or(0, |i| self.entries[i].0.len() + self.entries[i].1.len());
        let bytes = self.bytes - freed + key.len() + value.len();
        if key.is_empty()
            || key.len() > MAX_LOCAL_KEY_LEN
            || bytes > MAX_LOCAL_BYTES
            || (existing.is_none() && self.entries.len() >= MAX_LOCAL_KEYS)
        {
            return false;
        }
        self.bytes = bytes;
        match existing {
            Some(i) => self.entries[i].1 = value,
            None => self.entries.push((key, value)),
        }
        true
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A linker with the sandboxed WASI and the weir imports.
pub(crate) fn linker(engine: &PluginEngine) -> Result<Linker<StoreData>, EngineError> {
    let mut linker = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| EngineError::link(&e))?;
    bindings::PluginWorld::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |d| d)
        .map_err(|e| EngineError::link(&e))?;
    Ok(linker)
}

impl types::Host for StoreData {}

impl log::Host for StoreData {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let message = truncate(message, MAX_LOG_LINE);
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

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl clock::Host for StoreData {
    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::clock::process_start().elapsed().as_nanos() as u64)
    }

    fn wall_now(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::clock::unix_ms())
    }
}

fn to_wit(e: StateError) -> state::Error {
    match e {
        StateError::Unavailable(m) => state::Error::Unavailable(m),
        StateError::Invalid(m) => state::Error::Invalid(m),
    }
}

impl StoreData {
    /// Check one outbound call and start it; the future owns what it needs
    /// and gives back the call's record with its result.
    fn start_call(
        &mut self,
        upstream: String,
        call: outbound::Call,
    ) -> impl Future<Output = (Result<outbound::Answer, outbound::Error>, OutboundRecord)> + Send + use<> {
        let host = self.host.clone();
        let started = std::time::Instant::now();
        let start_ns = crate::clock::unix_ns();
        let grant = &host.outbound;
        let allowed = grant.upstreams.contains(&upstream);
        let trace = self.lent.as_ref().and_then(|l| l.heads.outbound.trace);
        let span_id = trace.as_ref().map(|_| crate::clock::span_id());
        let checked = if !allowed {
            host.refused(&upstream);
            Err(OutboundError::NotAllowed(format!("upstream `{upstream}` is not in this plugin's `outbound` list")))
        } else if self.outbound_calls >= grant.max_calls {
            Err(OutboundError::Limit(format!(
                "more than limits.outbound_calls ({}) calls in one phase",
                grant.max_calls
            )))
        } else {
            self.outbound_calls += 1;
            crate::outbound::check(call, grant.max_body).map(|mut c| {
                // The call joins the request's trace as a child of this
                // plugin's span.
                if let (Some(t), Some(id)) = (&trace, &span_id) {
                    let flags = if t.sampled { "01" } else { "00" };
                    if let Ok(v) = http::HeaderValue::try_from(format!("00-{:032x}-{id}-{flags}", t.trace_id)) {
                        c.headers.insert("traceparent", v);
                    }
                }
                c
            })
        };
        let sent = checked.map(|c| grant.sender.send(&upstream, c));
        // Only names the plugin may call become label values.
        let label = if allowed { upstream } else { "-".to_owned() };
        async move {
            let result = match sent {
                Ok(answer) => answer.await,
                Err(e) => Err(e),
            };
            let outcome = result.as_ref().map_or_else(OutboundError::outcome, |_| "answered");
            let took = started.elapsed().as_secs_f64();
            host.metrics.outbound(&host.name, &label, outcome, took);
            host.tally.record(&label, outcome, took);
            let record = OutboundRecord {
                upstream: label,
                outcome,
                status: result.as_ref().ok().map(|a| a.status),
                span_id,
                start_ns,
                end_ns: crate::clock::unix_ns(),
            };
            (result.map(crate::outbound::to_answer).map_err(crate::outbound::to_error), record)
        }
    }

    /// Keep a call's record for the chain runner.
    fn log_call(&mut self, record: OutboundRecord) {
        if let Some(l) = self.lent.as_mut() {
            l.heads.outbound.calls.push(record);
        }
    }
}

impl PluginHost {
    /// Log a refused upstream name, once per name (and for a bounded
    /// number of names).
    fn refused(&self, upstream: &str) {
        let mut logged = self.refused_logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() < MAX_METRIC_NAMES && logged.insert(upstream.to_owned()) {
            tracing::warn!(
                plugin = %self.name,
                upstream,
                allowed = ?self.outbound.upstreams,
                "outbound call refused: the upstream is not in the plugin's `outbound` list"
            );
        }
    }
}

impl outbound::Host for StoreData {
    async fn send(
        &mut self,
        upstream: String,
        call: outbound::Call,
    ) -> wasmtime::Result<Result<outbound::Answer, outbound::Error>> {
        let (result, record) = self.start_call(upstream, call).await;
        self.log_call(record);
        Ok(result)
    }

    async fn send_all(
        &mut self,
        calls: Vec<(String, outbound::Call)>,
    ) -> wasmtime::Result<Vec<Result<outbound::Answer, outbound::Error>>> {
        let started: Vec<_> = calls.into_iter().map(|(upstream, call)| self.start_call(upstream, call)).collect();
        let mut results = Vec::with_capacity(started.len());
        for (result, record) in futures::future::join_all(started).await {
            self.log_call(record);
            results.push(result);
        }
        Ok(results)
    }
}

impl state::Host for StoreData {
    async fn incr(&mut self, key: String, delta: i64, ttl_ms: u64) -> wasmtime::Result<Result<i64, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.counted(self.host.state.incr(&key, delta, ttl_ms).await)
        }
        .await)
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.counted(self.host.state.get(&key).await)
        }
        .await)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<Result<(), state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.counted(self.host.state.set(&key, &value, ttl_ms).await)
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
            self.host.counted(self.host.state.compare_and_swap(&key, expected.as_deref(), &value, ttl_ms).await)
        }
        .await)
    }

    async fn throttle(
        &mut self,
        key: String,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: i64,
    ) -> wasmtime::Result<Result<state::ThrottleDecision, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            let d = self.host.counted(self.host.state.throttle(&key, rate, period_ms, burst, cost).await)?;
            Ok(state::ThrottleDecision {
                allowed: d.allowed,
                remaining: d.remaining,
                retry_after_ms: d.retry_after_ms,
                reset_after_ms: d.reset_after_ms,
            })
        }
        .await)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, state::Error>> {
        Ok(async {
            let key = self.host.key(&key)?;
            self.host.counted(self.host.state.delete(&key).await)
        }
        .await)
    }
}

impl chain_data::Host for StoreData {
    fn publish(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<bool> {
        let name = self.host.name.clone();
        Ok(self.lent.as_mut().is_some_and(|l| l.heads.chain.publish(&name, key, value)))
    }

    fn read(&mut self, plugin: String, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        // An empty name is this plugin's own namespace.
        let plugin = if plugin.is_empty() { &*self.host.name } else { plugin.as_str() };
        Ok(self.lent.as_ref().and_then(|l| l.heads.chain.read(plugin, &key)).map(<[u8]>::to_vec))
    }
}

impl request_local::Host for StoreData {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.locals.get(&key).map(<[u8]>::to_vec))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<bool> {
        Ok(self.locals.set(key, value))
    }
}

/// A plugin's counters and gauges, by name.
#[derive(Default)]
struct OwnMetrics {
    counters: HashMap<String, prometheus_client::metrics::counter::Counter>,
    gauges: HashMap<String, prometheus_client::metrics::gauge::Gauge>,
}

impl metrics::Host for StoreData {
    fn counter_add(&mut self, name: String, value: u64) -> wasmtime::Result<()> {
        let host = &self.host;
        host.with_own_metric(
            |o| &mut o.counters,
            name,
            |n| host.metrics.counter(&host.name, n),
            |c| {
                c.inc_by(value);
            },
        );
        Ok(())
    }

    fn gauge_set(&mut self, name: String, value: i64) -> wasmtime::Result<()> {
        let host = &self.host;
        host.with_own_metric(
            |o| &mut o.gauges,
            name,
            |n| host.metrics.gauge(&host.name, n),
            |g| {
                g.set(value);
            },
        );
        Ok(())
    }
}

impl events::Host for StoreData {
    fn emit(&mut self, event: events::Event) -> wasmtime::Result<()> {
        let severity = match event.severity {
            events::Severity::Info => Severity::Info,
            events::Severity::Warning => Severity::Warning,
            events::Severity::Critical => Severity::Critical,
        };
        let host = &self.host;
        let kind = truncate(event.kind, 128);
        // The label is capped (cardinality); the record keeps the real kind.
        let label = if host.admit_name(&kind) { kind.as_str() } else { "other" };
        host.metrics.event(&host.name, label, severity.as_str());
        let attributes = event
            .attributes
            .into_iter()
            .take(MAX_EVENT_ATTRIBUTES)
            .map(|(k, v)| (truncate(k, 128), serde_json::Value::String(truncate(v, 1024))))
            .collect();
        let record = EventRecord {
            time_ms: crate::clock::unix_ms(),
            plugin: host.name.to_string(),
            kind,
            severity,
            message: truncate(event.message, MAX_LOG_LINE),
            attributes,
        };
        host.events.emit(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locals_limits() {
        let mut l = Locals::default();
        assert!(l.set("a".into(), vec![1; 100]));
        assert_eq!(l.get("a"), Some(&[1u8; 100][..]));
        assert!(l.set("a".into(), vec![2; 10]), "replacing frees the old value");
        assert_eq!(l.bytes, 11);
        assert!(!l.set(String::new(), vec![]), "empty key");
        assert!(!l.set("k".repeat(MAX_LOCAL_KEY_LEN + 1), vec![]), "long key");
        assert!(!l.set("big".into(), vec![0; MAX_LOCAL_BYTES]), "over the byte budget");
        for i in 1..MAX_LOCAL_KEYS {
            assert!(l.set(format!("k{i}"), vec![]));
        }
        assert!(!l.set("one-too-many".into(), vec![]));
        assert!(l.set("a".into(), vec![3]), "an existing key can still be replaced");
    }
}
